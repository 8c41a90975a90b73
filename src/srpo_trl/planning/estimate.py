"""The estimate itself: weights, training state, activations, FLOPs, per process, for one recipe.

Everything is counted on the meta device (no weights exist): parameters and buffers from the modules the configs
build; the training state from the trainable parameters the trainer's own set-up (`prepare_trainable`,
`cast_trainable_parameters`) leaves; activations by running the trainer's own step (`SRPOStep`) on meta tensors
under [`MemoryTimeline`] and [`SavedBytes`]; FLOPs with `FlopCounterMode`. Phases run as the trainer runs them:
one transformer call of the rollout at the batch (no gradient), then the branch batch with gradient, recovery,
VAE decode, reward, and the backward pass.

bf16 autocast is replayed (`planning.autocast`: CUDA's casts by default, `Recipe.autocast`), so activations take
the dtypes a real bf16 run gives them: float32 out of the norms, softmax and upsampling, bf16 copies of float32
weights and inputs for the matrix products. Not simulated: the quantised base's storage (its bytes are computed
from the formats below, its activations are the bf16 base's), and the text encoders' forward (text is cached).
"""

from __future__ import annotations

import contextlib
import dataclasses
import re
from dataclasses import dataclass, field

import torch
from torch import nn

from .autocast import POLICIES, EmulatedAutocast
from .measure import MemoryTimeline, SavedBytes, count_flops, fused_attention_on_meta, storage_keys
from .meta import CannotSize, meta_pipeline, meta_reward, text_conditioning, with_reference

GIB = 2**30
#: Bytes per weight of the quantised formats: NF4 (4 bits, an int8 scale per 64 weights, an fp32 factor per 256
#: blocks), int8 weight-only (1 byte + one bf16 scale per output row, about 0 per weight), int4 (4 bits + bf16
#: scale and zero point per group of 128).
QUANT_BYTES = {"nf4": 0.5 + 1 / 64 + 4 / (64 * 256), "int8": 1.0, "int4": 0.5 + 4 / 128}
ENGINES = ("none", "ddp", "fsdp2", "zero2", "zero3")


@dataclass
class Recipe:
    """What `srpo-trl train` would run, as far as memory and time depend on it."""

    model: object
    resolution: tuple[int, int] = (720, 720)
    batch_size: int = 1
    use_peft: bool = True
    lora_r: int = 64
    lora_alpha: int = 64
    lora_target_modules: list[str] | None = None
    quantize_base: str | None = None
    dtype: str | None = "bfloat16"  # the pipeline's load dtype; None: an object's own
    trainable_dtype: str = "float32"
    transformer_gradient_checkpointing: bool = True
    vae_gradient_checkpointing: bool = True
    vae_slicing: bool = True
    reward: object = "hpsv2.1"
    reward_dtype: str | None = None  # defaults to `dtype`
    rollout_steps: int = 25
    max_sequence_length: int = 512
    text_tokens: int | None = None  # tokens per cached prompt; defaults to max_sequence_length
    release_text_encoders: bool = True
    cache_text_embeddings: bool = (
        True  # False: the text encoders run at every step (their forward joins the rollout's)
    )
    use_inversion_branch: bool = True
    rollout_guidance_scale: float | None = None
    train_guidance_scale: float | None = None
    #: The device whose bf16 autocast the trace replays ("cuda", "cpu"), or None for none (see `planning.autocast`).
    autocast: str | None = "cuda"
    # Video families (Wan): frames per video (the family's default when None), the latent frames the rewards'
    # decode covers (None: all), every how many frames an image reward scores, and the Direct-Align window
    # (grid steps, start, end; None: SRPOConfig's), which picks the expert that trains in Wan 2.2 A14B.
    num_frames: int | None = None
    decode_latent_frames: int | None = None
    reward_frame_stride: int = 4
    window: tuple[int, int, int] | None = None
    engine: str = "none"
    processes: int = 1
    optim: str = "adamw_torch"

    def __post_init__(self):
        if isinstance(self.resolution, int):
            self.resolution = (self.resolution, self.resolution)
        self.resolution = tuple(self.resolution)
        if self.engine not in ENGINES:
            raise ValueError(f"plan: engine {self.engine!r} is not one of {list(ENGINES)}")


@dataclass
class Measured:
    """One traced step (at the recipe's batch)."""

    rollout_peak: int
    forward_peak: int
    train_peak: int  # the step's own live bytes at their highest, gradients of the trainable weights included
    grad_bytes: int
    saved: dict[str, int]  # bytes autograd saves: transformer call, VAE decode, reward
    graded_params: int = 0  # trainable parameters the step gives a gradient (and AdamW a state)
    # The peaks without autocast's bf16 casts of the trainable weights: under FSDP2 and ZeRO-3 the engine gathers
    # each block's weights in bf16 and frees them after use (counted as "gathered blocks" instead). The rollout's
    # casts matter as much: autocast caches them for its whole region, gradient or not.
    forward_peak_sharded: int | None = None
    train_peak_sharded: int | None = None
    rollout_peak_sharded: int | None = None


@dataclass
class Plan:
    recipe: Recipe
    pipeline_class: str
    weights: list[tuple[str, str, str, int, int]]  # component, dtype, role, parameters, bytes (unsharded)
    resident: dict[str, int]  # component -> bytes on each process's card
    trainable_params: int
    state: dict[str, int]  # per process
    measured: Measured
    no_checkpointing: Measured | None
    flops: dict[str, int]
    extras: dict[str, int] = field(default_factory=dict)  # gathered blocks, DDP buckets
    text_forward: int | None = None  # the text encoders' forward at the step's batch, no gradient (None: not sized)
    caching_peak: int | None = None  # the prompts' caching before training: weights on the card + that forward

    @property
    def static_bytes(self) -> int:
        return sum(self.resident.values()) + sum(self.state.values()) - self.state.get("gradients", 0)

    def dynamic_bytes(self, measured: Measured | None = None, batch: int | None = None) -> int:
        m = measured or self.measured
        scale = (batch or self.recipe.batch_size) / self.recipe.batch_size
        gradients = self.state.get("gradients", 0)
        rollout_peak, forward_peak, train_peak = self.phase_peaks(m)
        activations = (train_peak - m.grad_bytes) * scale  # at the traced peak, gradients taken out
        if gradients < m.grad_bytes:  # sharded gradients: the traced peak (end of backward) is no longer the peak;
            activations = max(activations, forward_peak * scale)  # bound: the forward's peak + every shard
        rollout = rollout_peak * scale
        if not self.recipe.cache_text_embeddings and self.text_forward:  # prompts encoded at every step
            rollout = max(rollout, self.text_forward * scale)
        return int(max(rollout, activations + gradients) + sum(self.extras.values()))

    def phase_peaks(self, measured: Measured | None = None) -> tuple[int, int, int]:
        """The rollout call's, the forward's and the training step's peaks as this recipe's engine holds them."""
        m = measured or self.measured
        if self.recipe.engine in ("fsdp2", "zero3") and m.train_peak_sharded is not None:
            return m.rollout_peak_sharded, m.forward_peak_sharded, m.train_peak_sharded
        return m.rollout_peak, m.forward_peak, m.train_peak

    def peak_bytes(self, measured: Measured | None = None, batch: int | None = None) -> int:
        return self.static_bytes + self.dynamic_bytes(measured, batch)

    def overall_peak(self, batch: int | None = None) -> int:
        """The run's peak: the training step's, or caching the prompts before training when that is higher."""
        return max(self.peak_bytes(batch=batch), self.caching_peak or 0)

    def step_flops(self) -> int:
        return self.flops["step"]


def _module_bytes(module: nn.Module) -> list[tuple[str, str, int, int]]:
    """(dtype, role, parameters, bytes) of a module's parameters and buffers, grouped."""
    rows: dict[tuple[str, str], list[int]] = {}
    for tensors, is_buffer in ((module.parameters(), False), (module.buffers(), True)):
        for t in tensors:
            role = "buffer" if is_buffer else ("trainable" if t.requires_grad else "frozen")
            row = rows.setdefault((str(t.dtype).replace("torch.", ""), role), [0, 0])
            row[0] += t.numel()
            row[1] += t.numel() * t.element_size()
    return [(dtype, role, n, b) for (dtype, role), (n, b) in sorted(rows.items())]


def quantised_linear_weights(transformer: nn.Module) -> tuple[int, int]:
    """(weights, bytes) of the frozen linear layers' weights a quantised base stores in fewer bits."""
    n = b = 0
    for module in transformer.modules():
        if isinstance(module, nn.Linear) and not module.weight.requires_grad and module.weight.ndim == 2:
            n += module.weight.numel()
            b += module.weight.numel() * module.weight.element_size()
    return n, b


def lora_parameter_count(transformer: nn.Module, targets: list[str], rank: int) -> int:
    """Parameters of a rank-`rank` LoRA on the linear layers whose names end with one of `targets`."""
    total = 0
    for name, module in transformer.named_modules():
        if isinstance(module, nn.Linear) and any(name == t or name.endswith("." + t) for t in targets):
            total += rank * (module.in_features + module.out_features)
    return total


def _dtype(name: str | None):
    return None if name is None else getattr(torch, name)


def prepare(recipe: Recipe):
    """The meta pipeline, its adapter and reward, with the trainable set-up of `prepare_trainable`."""
    from ..models import get_adapter
    from ..module_state import cast_trainable_parameters
    from ..preparation import prepare_trainable

    pipeline = meta_pipeline(recipe.model, _dtype(recipe.dtype))
    adapter = get_adapter(pipeline, max_sequence_length=recipe.max_sequence_length)
    if getattr(adapter, "is_video", False):
        _configure_video(adapter, recipe)
    peft_config = None
    if recipe.use_peft:
        from peft import LoraConfig

        peft_config = LoraConfig(
            r=recipe.lora_r, lora_alpha=recipe.lora_alpha, target_modules=recipe.lora_target_modules
        )

    class _Args:  # prepare_trainable's fields; the base is quantised arithmetically, not on meta tensors
        quantize_base = None
        transformer_gradient_checkpointing = recipe.transformer_gradient_checkpointing
        vae_gradient_checkpointing = recipe.vae_gradient_checkpointing
        vae_slicing = recipe.vae_slicing

    with torch.device("meta"):
        transformer, _ = prepare_trainable(pipeline, adapter, _Args, peft_config)
    cast_trainable_parameters(transformer, recipe.trainable_dtype)
    reward_dtype = _dtype(recipe.reward_dtype or recipe.dtype) or torch.float32
    reward = meta_reward(recipe.reward, reward_dtype)
    reward.eval().requires_grad_(False)
    return pipeline, adapter, transformer, reward


def _configure_video(adapter, recipe: Recipe) -> None:
    """The video adapter's own `configure`, from the recipe; then, for two experts (Wan 2.2 A14B), the trace runs
    the trained one alone: both experts have the same size, and the stock sampler calls one at a time (choosing it
    per sample reads the timestep's value, which meta tensors lack)."""
    from types import SimpleNamespace

    from ..config import SRPOConfig

    defaults = {f.name: f.default for f in dataclasses.fields(SRPOConfig)}
    steps, start, end = recipe.window or (
        defaults["window_grid_steps"],
        defaults["window_start_index"],
        defaults["window_end_index"],
    )
    adapter.configure(
        SimpleNamespace(
            num_frames=recipe.num_frames,
            decode_latent_frames=recipe.decode_latent_frames,
            vae_gradient_checkpointing=recipe.vae_gradient_checkpointing,
            image_size=recipe.resolution,
            time_shift=None,
            window_grid_steps=steps,
            window_start_index=start,
            window_end_index=end,
        )
    )
    adapter.boundary_ratio = None


def make_step(adapter, reward, recipe: Recipe):
    from .. import direct_align
    from ..step import SRPOStep

    height, width = recipe.resolution
    shift = adapter.default_time_shift(height, width)
    guidance = adapter.default_guidance
    rewards = [reward]
    if getattr(adapter, "is_video", False):  # as the trainer does: an image reward scores every k-th frame
        from ..rewards.video import for_videos

        rewards = for_videos(rewards, recipe.reward_frame_stride)
    return SRPOStep(
        adapter=adapter,
        window=direct_align.TrainingWindow(shift=shift),
        rewards=rewards,
        reward_weights=[1.0],
        hinge_thresholds=[reward.hinge_threshold],
        rollout_sigmas=direct_align.shifted_grid(2, shift).float(),
        height=height,
        width=width,
        rollout_guidance_scale=recipe.rollout_guidance_scale or guidance["rollout"],
        train_guidance_scale=recipe.train_guidance_scale or guidance["train"],
        use_inversion_branch=recipe.use_inversion_branch,
    )


PROMPTS = ["a photo of a red cat on a wooden table", "a drawing of a blue square"]


def run_step(
    adapter, transformer, reward, recipe: Recipe, device, text=None, exclude=None, keep_grads=False
) -> Measured:
    """One SRPO step of the recipe on `device` (meta, or real tensors in the tests), measured."""
    step = make_step(adapter, reward, recipe)
    batch, (height, width) = recipe.batch_size, recipe.resolution
    prompts = [PROMPTS[i % len(PROMPTS)] for i in range(batch)]
    if text is None:
        text = text_conditioning(
            adapter, batch, recipe.text_tokens or recipe.max_sequence_length, device, torch.float32
        )
    text = with_reference(adapter, text, batch, height, width, device)
    generator = torch.Generator().manual_seed(0)
    eps = adapter.sample_noise(batch, height, width, generator, device)
    saved = {}
    emulate = device.type == "meta" and recipe.autocast is not None
    region = EmulatedAutocast(POLICIES[recipe.autocast]) if emulate else contextlib.nullcontext()
    if device.type != "meta" and recipe.autocast is not None:  # the real thing, on the tests' CPU tensors
        region = torch.autocast(device.type, dtype=torch.bfloat16)
    with fused_attention_on_meta(), MemoryTimeline() as timeline, region:
        with torch.no_grad():
            sigma = torch.full((batch,), 0.5, device=device)
            v = adapter.velocity(
                transformer, eps, sigma, text, step.rollout_guidance_scale, height, width, target=sigma * 0
            )
            del v
        rollout_peak, rollout_sharded = timeline.peak, timeline.peak_sharded
        timeline.reset_peak()
        levels = step.draw_levels(generator, batch, 0, batch)
        with SavedBytes(exclude) as counter:
            branches = step.branch_batch(eps, eps, text, levels, ("Real", "Painting"))
            latents = step.recover(transformer, branches)
        saved["transformer"] = counter.bytes
        with SavedBytes(exclude) as counter:
            images = step.decode(latents)
        saved["vae_decode"] = counter.bytes
        with SavedBytes(exclude) as counter:
            loss = sum(step.reward_losses(images, prompts, branches).values())
        saved["reward"] = counter.bytes
        forward_peak, forward_sharded = timeline.peak, timeline.peak_sharded
        del latents, images, branches
        loss.backward()
        del loss
        train_peak, train_sharded = timeline.peak, timeline.peak_sharded
    graded = [p for p in transformer.parameters() if p.grad is not None]
    grads = sum(p.grad.numel() * p.grad.element_size() for p in graded)
    if not keep_grads:
        for p in graded:
            p.grad = None
    graded_params = sum(p.numel() for p in graded)
    return Measured(
        rollout_peak,
        forward_peak,
        train_peak,
        grads,
        saved,
        graded_params,
        forward_peak_sharded=forward_sharded,
        train_peak_sharded=train_sharded,
        rollout_peak_sharded=rollout_sharded,
    )


#: Prompts per text-encoder call while the cache is built (`TextEmbeddingCache.batch_size`).
CACHE_BATCH = 8


def text_encoder_peak(pipeline, adapter, batch: int, tokens: int) -> int | None:
    """Peak bytes of the text encoders' forward (one after the other, no gradient) on `batch` prompts of `tokens`
    tokens (CLIP's capped at its 77), on the meta device; None when an encoder cannot run there."""
    peak = 0
    for name in getattr(adapter, "text_components", ()):
        encoder = getattr(pipeline, name, None)
        if not isinstance(encoder, nn.Module):
            continue
        config = getattr(encoder.config, "text_config", encoder.config)
        length = min(tokens, getattr(config, "max_position_embeddings", tokens))
        ids = torch.zeros(batch, length, dtype=torch.long, device="meta")
        try:  # no attention mask: the models' mask code reads values, which meta tensors lack
            with torch.no_grad(), fused_attention_on_meta(), MemoryTimeline() as timeline:
                encoder(input_ids=ids, output_hidden_states=True)
        except (RuntimeError, TypeError, ValueError, NotImplementedError):
            return None
        peak = max(peak, timeline.peak)
    return peak


def count_step_flops(adapter, transformer, reward, recipe: Recipe, device) -> dict[str, int]:
    """Model FLOPs of one step, as `benchmarks/bench_step.py` counts them (see docs/benchmarks.md)."""
    step = make_step(adapter, reward, recipe)
    batch, (height, width) = recipe.batch_size, recipe.resolution
    text = text_conditioning(adapter, batch, recipe.text_tokens or recipe.max_sequence_length, device, torch.float32)
    text = with_reference(adapter, text, batch, height, width, device)
    generator = torch.Generator().manual_seed(0)
    out = {}
    with torch.no_grad():
        eps = adapter.sample_noise(batch, height, width, generator, device)
        sigma = torch.full((batch,), 0.5, device=device)
        _, out["rollout_call"] = count_flops(
            lambda: adapter.velocity(transformer, eps, sigma, text, step.rollout_guidance_scale, height, width)
        )
        levels = step.draw_levels(generator, batch, 0, batch)
        branches = step.branch_batch(eps, eps, text, levels, ("Real", "Painting"))
        latents, out["transformer_2B"] = count_flops(lambda: step.recover(transformer, branches))
        images, out["vae_decode_2B"] = count_flops(lambda: step.decode(latents))
        prompts = [PROMPTS[i % len(PROMPTS)] for i in range(batch)]
        _, out["reward_2B"] = count_flops(lambda: step.reward_losses(images, prompts, branches))
        if images.ndim == 5:  # videos: the image reward's tower sees every k-th frame
            images = images[:, :: recipe.reward_frame_stride].flatten(0, 1)
        _, out["reward_image_2B"] = count_flops(lambda: reward.embed_images(images))
    backward = 1 if recipe.use_peft else 2
    out["rollout"] = recipe.rollout_steps * out["rollout_call"]
    out["step"] = (
        out["rollout"]
        + (1 + backward) * out["transformer_2B"]
        + 2 * out["vae_decode_2B"]
        + out["reward_2B"]
        + out["reward_image_2B"]
    )
    return out


def _largest_block_bytes(transformer: nn.Module, dtype_bytes: int) -> int:
    """Parameters of the largest repeated block (the unit FSDP2 and ZeRO-3 gather), in the compute dtype."""
    names = set(getattr(transformer, "_no_split_modules", None) or [])
    sizes = [sum(p.numel() for p in m.parameters()) for m in transformer.modules() if type(m).__name__ in names] or [0]
    return max(sizes) * dtype_bytes


def _state(plan_trainable: int, graded: int, recipe: Recipe) -> dict[str, int]:
    width = torch.tensor([], dtype=getattr(torch, recipe.trainable_dtype)).element_size()
    moment = 1 if "8bit" in recipe.optim else width
    n, engine = recipe.processes, recipe.engine
    state = {
        "master weights": plan_trainable * width,
        "gradients": graded * width,  # only the parameters the step reaches get a gradient and AdamW states
        "AdamW states": 2 * graded * moment,
    }
    if engine in ("zero2",):
        state["gradients"] //= n
        state["AdamW states"] //= n
    if engine in ("fsdp2", "zero3"):
        state = {k: v // n for k, v in state.items()}
    return state


def _weight_rows(components: dict[str, nn.Module], adapter, recipe: Recipe) -> list[tuple[str, str, str, int, int]]:
    """(component, dtype, role, parameters, bytes) rows, the quantised base's linear weights in their format."""
    weights = []
    for name, module in components.items():
        for dtype, role, count, size in _module_bytes(module):
            quantised = name == adapter.trainable_component and role == "frozen" and dtype == recipe.dtype
            if quantised and recipe.quantize_base:
                q_count, q_bytes = quantised_linear_weights(module)
                weights.append(
                    (
                        name,
                        recipe.quantize_base,
                        "quantised",
                        q_count,
                        int(q_count * QUANT_BYTES[recipe.quantize_base]),
                    )
                )
                count, size = count - q_count, size - q_bytes
            weights.append((name, dtype, role, count, size))
    return weights


def distribute(plan: Plan) -> Plan:
    """Fill in what depends on the engine and the number of processes (the trace does not): the weights each
    process keeps on its card, the training state per process, gathered blocks or DDP buckets, and the caching
    phase's peak."""
    recipe = plan.recipe
    n = recipe.processes if recipe.engine in ("fsdp2", "zero3") else 1
    plan.resident = {}
    for name in dict.fromkeys(row[0] for row in plan.weights):
        if name in plan.text_components and recipe.release_text_encoders:
            continue  # cached text: the encoders leave the card before training
        # trainable weights are the master weights of the training state, not counted here
        on_card = sum(size for row_name, _, role, _, size in plan.weights if row_name == name and role != "trainable")
        plan.resident[name] = on_card // n if name == plan.trainable else on_card
    plan.state = _state(plan.trainable_params, plan.measured.graded_params, recipe)
    plan.extras = {}
    if recipe.engine in ("fsdp2", "zero3") and recipe.processes > 1:
        plan.extras["gathered blocks (2, prefetch)"] = 2 * plan.largest_block
    if recipe.engine == "ddp" and recipe.processes > 1:
        plan.extras["DDP gradient buckets"] = plan.state["gradients"]
    plan.caching_peak = None
    if plan.caching_forward is not None:  # every weight is on the card then, the transformer too unless an engine
        on_card = sum(size for *_, size in plan.weights)  # shards it later (the Trainer leaves it on the CPU)
        if recipe.engine in ("fsdp2", "zero2", "zero3"):
            on_card -= sum(size for name, *_, size in plan.weights if name == plan.trainable)
        plan.caching_peak = on_card + plan.caching_forward
    return plan


def retarget(plan: Plan, engine: str, processes: int) -> Plan:
    """`plan` for another engine or number of processes, without tracing again."""
    import copy

    other = copy.copy(plan)
    other.recipe = dataclasses.replace(plan.recipe, engine=engine, processes=processes)
    return distribute(other)


def estimate(recipe: Recipe, without_checkpointing: bool = True) -> Plan:
    """The plan of `recipe`: see the module docstring. A model the planner cannot size stops with `CannotSize`."""
    try:
        return _estimate(recipe, without_checkpointing)
    except CannotSize:
        raise
    except (RuntimeError, NotImplementedError, AttributeError, TypeError) as error:
        # A family whose code reads tensor values (meta tensors have none) or a pipeline the planner cannot rebuild
        # (FLUX.3's modular pipeline, Qwen-Image 2.1's transformer): say so, rather than a trace deep in a model.
        name = recipe.model if isinstance(recipe.model, str) else type(recipe.model).__name__
        raise CannotSize(
            f"plan: cannot size {name} on the meta device ({type(error).__name__}: {error}); nothing was downloaded"
        ) from error


def _estimate(recipe: Recipe, without_checkpointing: bool) -> Plan:
    pipeline, adapter, transformer, reward = prepare(recipe)
    components = {n: m for n, m in pipeline.components.items() if isinstance(m, nn.Module)}
    components["reward"] = reward
    trainable = sum(p.numel() for p in transformer.parameters() if p.requires_grad)
    device = torch.device("meta")
    exclude = storage_keys([*pipeline_tensors(components)])
    measured = run_step(adapter, transformer, reward, recipe, device, exclude=exclude)
    other = toggled = None
    if without_checkpointing and recipe.transformer_gradient_checkpointing:
        transformer.disable_gradient_checkpointing()
        other = run_step(adapter, transformer, reward, recipe, device, exclude=exclude)
        transformer.enable_gradient_checkpointing()
    elif without_checkpointing and getattr(transformer, "_supports_gradient_checkpointing", False):
        transformer.enable_gradient_checkpointing()  # what turning it on would save
        toggled = run_step(adapter, transformer, reward, recipe, device, exclude=exclude)
        transformer.disable_gradient_checkpointing()
    compute_bytes = torch.tensor([], dtype=_dtype(recipe.dtype) or torch.float32).element_size()
    tokens = recipe.text_tokens or recipe.max_sequence_length
    plan = Plan(
        recipe=recipe,
        pipeline_class=type(pipeline).__name__,
        weights=_weight_rows(components, adapter, recipe),
        resident={},
        trainable_params=trainable,
        state={},
        measured=measured,
        no_checkpointing=other,
        flops=count_step_flops(adapter, transformer, reward, recipe, device),
        text_forward=text_encoder_peak(pipeline, adapter, recipe.batch_size, tokens),
    )
    plan.caching_forward = text_encoder_peak(pipeline, adapter, CACHE_BATCH, tokens)
    plan.text_components = set(getattr(adapter, "text_components", ()))
    plan.trainable = adapter.trainable_component
    plan.is_video = bool(getattr(adapter, "is_video", False))
    plan.largest_block = _largest_block_bytes(transformer, compute_bytes)
    plan.lora_r64_params = lora_parameter_count(
        transformer, recipe.lora_target_modules or list(adapter.default_lora_target_modules), 64
    )
    plan.quantisable = quantised_linear_weights_all(transformer)
    plan.with_checkpointing = toggled
    return distribute(plan)


def quantised_linear_weights_all(transformer: nn.Module) -> tuple[int, int]:
    """(weights, bytes) of every linear layer's weight outside the LoRA: what a quantised base would store."""
    n = b = 0
    for name, module in transformer.named_modules():
        if isinstance(module, nn.Linear) and not re.search(r"lora_", name):
            n += module.weight.numel()
            b += module.weight.numel() * module.weight.element_size()
    return n, b


def pipeline_tensors(components: dict[str, nn.Module]):
    for module in components.values():
        yield from module.parameters()
        yield from module.buffers()
