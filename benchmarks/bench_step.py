"""Time, memory and model-FLOPs utilisation of ONE SRPO training step, phase by phase.

The step is the trainer's own: `srpo_trl.step.SRPOStep`, whose phases (`rollout`, `draw_levels`,
`branch_batch`, `recover`, `decode`, `reward_losses`) `SRPOTrainer.compute_loss` runs in one go and this script
times one by one from outside, plus the backward pass and the optimiser step:

| phase | what runs |
| --- | --- |
| `rollout` | draw `eps`, `--rollout_steps` Euler steps of the transformer at batch B, no gradient |
| `transformer_forward` | levels, noise injection, ONE transformer call on both branches (batch 2B) with gradient, Euler step, recovery of x0 |
| `vae_decode_forward` | VAE decode of the 2B recovered latents, with gradient |
| `reward_forward` | SRP reward of each branch (image tower on 2B images, text tower on 4B texts) and the hinge loss |
| `reward_backward` | loss -> gradient of the images |
| `vae_backward` | images' gradient -> latents' gradient (VAE recomputation included when checkpointing) |
| `transformer_backward` | latents' gradient -> parameter gradients (recomputation included when checkpointing) |
| `optimizer_step` | gradient clipping (max norm 0.1) and AdamW step, `zero_grad` |

The backward pass is measured stage by stage: the graph is cut at the phase boundaries with
`.detach().requires_grad_()` and `torch.autograd.backward(output, grad)` runs one stage at a time (reward ->
images' grad -> VAE -> latents' grad -> transformer); the gradients are the same as one `loss.backward()`.
Every phase is bracketed by device synchronisations. Text encoding is NOT timed: the prompts' embeddings are
computed once per case, as the trainer's text cache (`srpo_trl.text_cache`) computes them once per prompt.

Precision (`--dtype bfloat16`): every model's weights are bf16 (the trainable LoRA or transformer too) and the
step runs under `torch.autocast(bfloat16)`: pure bf16, what `SRPOTrainer(trainable_dtype="bfloat16")` does;
AdamW then keeps its states in bf16. The trainer's default since 2026-12 keeps the trainable weights in fp32
(fp32 master weights: 8 more bytes per trainable parameter), so the GPU figures recorded with this script
before then are for pure bf16; see `full_finetune_memory_estimate`. `--reward_dtype` (default: `--dtype`) sets the reward model's weights.

Model FLOPs and MFU. Forward FLOPs are counted once per case with `torch.utils.flop_counter.FlopCounterMode`
(matrix products, convolutions and attention; attention through the math SDPA backend so that it is counted on
every device; element-wise work is not counted), under `no_grad`, on the real shapes: F_T(B) the transformer at
batch B (rollout), F_T(2B) at batch 2B (training call), F_V the VAE decode of 2B latents, F_R the reward of both
branches (image tower on 2B images + text tower on 4B texts) and F_Ri its image tower alone. Then

    model FLOPs of a step = rollout_steps * F_T(B) + (1 + bwd) * F_T(2B) + 2 * F_V + F_R + F_Ri

with bwd = 2 for full fine-tuning (input and weight gradients) and bwd = 1 for LoRA (input gradients only; the
LoRA weight gradients are negligible); the frozen VAE and reward need input gradients only (1x their forward;
the reward's text tower runs without gradient). Activation-checkpointing recomputation is NOT counted: it is
hardware FLOPs, not model FLOPs, so checkpointing lowers MFU. MFU = model FLOPs / median time / peak, against
the card's dense bf16 peak (H100 SXM and H200: 989.4 TFLOP/s; `--peak_tflops` overrides); null on a CPU unless
`--peak_tflops` is given. `mfu_rollout` is the rollout's own: rollout_steps * F_T(B) / rollout time / peak.

Examples:

    OMP_NUM_THREADS=1 python benchmarks/bench_step.py --model tiny --repeats 5
    python benchmarks/bench_step.py --model flux-dev --resolution 720 --lora_rank 64 --json_out runs.jsonl
    python benchmarks/bench_step.py --model flux-dev --device cpu --dtype bfloat16 --num_layers 1 \\
        --num_single_layers 1 --reward_layers 1 --resolution 64 --max_sequence_length 16 --rollout_steps 2
    OMP_NUM_THREADS=1 python benchmarks/bench_step.py --compare_trainer --warmup 3 --repeats 20
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import os
import platform
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field

import torch

PHASES = (
    "rollout",
    "transformer_forward",
    "vae_decode_forward",
    "reward_forward",
    "reward_backward",
    "vae_backward",
    "transformer_backward",
    "optimizer_step",
)
# Dense bf16 tensor-core peak of the SXM H100 and of the H200 (same chip), in TFLOP/s.
HOPPER_BF16_DENSE_TFLOPS = 989.4
KNOWN_PEAKS = {"H100": HOPPER_BF16_DENSE_TFLOPS, "H200": HOPPER_BF16_DENSE_TFLOPS}

PROMPTS = [
    "a cat sitting on a windowsill in the afternoon sun",
    "a lighthouse on a cliff above a stormy sea",
    "a bowl of fruit on a wooden kitchen table",
    "a mountain lake at dawn with mist over the water",
    "an old car parked in a dusty garage",
    "a portrait of a fisherman with a grey beard",
    "a forest path in autumn with fallen leaves",
    "a city street at night in the rain",
]
# The recipe's control words (cycled by step). Their length does not change the cost: texts are padded.
POSITIVE_WORDS = ["Natural-lighting", "Detail", "Detailed", "Real"]
NEGATIVE_WORDS = ["Concept art", "Painting", "Anime", "Flat", "Oil"]
FLOPS_CONVENTION = (
    "model FLOPs = rollout_steps*F_T(B) + (1+bwd)*F_T(2B) + 2*F_V(2B) + F_R(2B) + F_R_image(2B); forward FLOPs "
    "counted by torch.utils.flop_counter (matmul, conv, attention via math SDPA); bwd=2 full, 1 LoRA; frozen "
    "VAE/reward backward = input grads only; checkpoint recomputation not counted"
)


# ----------------------------------------------------------------------------------------------- options


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model", choices=["tiny", "flux-dev"], default="tiny")
    p.add_argument("--device", default=None, help="cuda when available, else cpu")
    p.add_argument("--dtype", choices=["float32", "bfloat16"], default=None, help="bfloat16 on cuda, else float32")
    p.add_argument("--reward_dtype", choices=["float32", "bfloat16"], default=None, help="defaults to --dtype")
    p.add_argument("--resolution", type=int, default=None, help="square side, multiple of 16 (tiny: 64, dev: 720)")
    p.add_argument("--batch_size", type=int, default=1, help="prompts per step (B); the training call sees 2B")
    p.add_argument("--rollout_steps", type=int, default=25)
    trainable = p.add_mutually_exclusive_group()
    trainable.add_argument("--lora_rank", type=int, default=None, help="LoRA rank (tiny: 8, dev: 64)")
    trainable.add_argument("--full", action="store_true", help="full fine-tuning of the transformer")
    p.add_argument("--transformer_checkpointing", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--vae_checkpointing", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--json_out", default=None, help="append one JSON record per case (JSON Lines)")
    p.add_argument("--peak_tflops", type=float, default=None, help="peak for MFU (default: known GPUs' bf16 peak)")
    p.add_argument("--num_layers", type=int, default=None, help="flux-dev: double-stream blocks (19)")
    p.add_argument("--num_single_layers", type=int, default=None, help="flux-dev: single-stream blocks (38)")
    p.add_argument("--reward_layers", type=int, default=None, help="flux-dev: vision and text layers (32 / 24)")
    p.add_argument("--max_sequence_length", type=int, default=None, help="T5 tokens (tiny: 32, dev: 512)")
    p.add_argument("--learning_rate", type=float, default=5e-6)
    p.add_argument("--max_grad_norm", type=float, default=0.1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--quantize_base",
        choices=["int8", "nf4", "int4"],
        default=None,
        help="LoRA only: the frozen transformer in int8/nf4/int4 (torchao), as SRPOConfig.quantize_base",
    )
    p.add_argument(
        "--vae_slicing",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="decode one image at a time, as SRPOConfig.vae_slicing (on by default, as in the trainer)",
    )
    p.add_argument(
        "--compile",
        choices=["none", "regions", "model"],
        default="none",
        help="torch.compile the transformer: each repeated block (as torch_compile=True with the default "
        "torch_compile_regions) or the whole model; compile time lands in the warm-up steps (warmup_s)",
    )
    p.add_argument(
        "--compile_backend",
        default="inductor",
        help="torch.compile backend with --compile (the tests use aot_eager, which needs no C++ toolchain)",
    )
    p.add_argument(
        "--allow_cudnn_attention",
        action="store_true",
        help="let attention use cuDNN's fused kernel (excluded by default, as in the trainer: srpo_trl.attention)",
    )
    p.add_argument(
        "--compare_trainer",
        action="store_true",
        help="tiny model: SRPOTrainer.train() step time against a bare loop of the same maths",
    )
    return resolve_defaults(p.parse_args(argv))


def resolve_defaults(args: argparse.Namespace) -> argparse.Namespace:
    """Fill the model- and device-dependent defaults, and check what cannot work."""
    dev = args.model == "flux-dev"
    if args.device is None:
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.dtype is None:
        args.dtype = "bfloat16" if args.device.startswith("cuda") else "float32"
    if args.reward_dtype is None:
        args.reward_dtype = args.dtype
    if args.resolution is None:
        args.resolution = 720 if dev else 64
    if args.max_sequence_length is None:
        args.max_sequence_length = 512 if dev else 32
    if args.full:
        args.lora_rank = None
    elif args.lora_rank is None:
        args.lora_rank = 64 if dev else 8
    if dev:
        args.num_layers = 19 if args.num_layers is None else args.num_layers
        args.num_single_layers = 38 if args.num_single_layers is None else args.num_single_layers
    if args.resolution % 16:
        raise SystemExit(f"--resolution must be a multiple of 16, got {args.resolution}")
    if args.repeats < 1 or args.warmup < 0 or args.batch_size < 1 or args.rollout_steps < 1:
        raise SystemExit("--repeats, --batch_size and --rollout_steps must be >= 1 and --warmup >= 0")
    if args.compare_trainer and args.model != "tiny":
        raise SystemExit("--compare_trainer runs on the tiny model only")
    return args


def _dtype(name: str) -> torch.dtype:
    return getattr(torch, name)


# ------------------------------------------------------------------------------------------------ models


@dataclass
class Models:
    """The pipeline, its adapter and the reward, built once and reusable across cases of one configuration."""

    key: tuple
    pipe: object
    adapter: object
    reward: object
    device: torch.device
    trainable: list[torch.nn.Parameter] = field(default_factory=list)
    build_seconds: float = 0.0

    compiled: object = None  # the transformer under torch.compile, when --compile is set
    compile_kind: tuple = ("none", "inductor")

    @property
    def transformer(self):
        return self.pipe.transformer

    @property
    def runner(self):
        """What the step calls: the compiled transformer when there is one (it shares the parameters)."""
        return self.compiled if self.compiled is not None else self.pipe.transformer


def model_key(args) -> tuple:
    """What `build_models` depends on (the reward's dtype excepted: `set_reward` swaps the reward alone)."""
    return (
        args.model,
        args.device,
        args.dtype,
        args.num_layers,
        args.num_single_layers,
        args.reward_layers,
        args.max_sequence_length,
        args.lora_rank,
        args.full,
        args.seed,
        args.quantize_base,
    )


def build_reward(args):
    device, dtype = torch.device(args.device), _dtype(args.reward_dtype)
    if args.model == "tiny":
        from srpo_trl.testing import tiny_clip_reward

        return tiny_clip_reward(args.seed, scale=1.0, name="hps", dtype=dtype).to(device)
    from full_size_models import vit_h_clip_reward

    layers = (
        {} if args.reward_layers is None else dict(vision_layers=args.reward_layers, text_layers=args.reward_layers)
    )
    return vit_h_clip_reward(args.seed, device=device, dtype=dtype, **layers)


def build_models(args) -> Models:
    """Build the pipeline and the reward, freeze them, and make the LoRA (or the whole transformer) trainable."""
    from peft import LoraConfig

    from srpo_trl.models import get_adapter

    start = time.perf_counter()
    device, dtype = torch.device(args.device), _dtype(args.dtype)
    if args.model == "tiny":
        from srpo_trl.testing import tiny_flux_pipeline

        pipe = tiny_flux_pipeline(args.seed, dtype=dtype)
        pipe.to(device)
    else:
        from full_size_models import flux_dev_pipeline

        pipe = flux_dev_pipeline(
            args.seed,
            device=device,
            dtype=dtype,
            num_layers=args.num_layers,
            num_single_layers=args.num_single_layers,
            max_sequence_length=args.max_sequence_length,
        )
    adapter = get_adapter(pipe, max_sequence_length=args.max_sequence_length)
    for component in pipe.components.values():  # as SRPOTrainer._prepare_trainable does
        if isinstance(component, torch.nn.Module):
            component.requires_grad_(False).eval()
    transformer = pipe.transformer
    if args.full:
        transformer.requires_grad_(True)
    else:
        if args.quantize_base is not None:  # as SRPOTrainer does with SRPOConfig.quantize_base
            from srpo_trl.quantization import quantize_frozen_base

            quantize_frozen_base(transformer, args.quantize_base)
        config = LoraConfig(
            r=args.lora_rank, lora_alpha=args.lora_rank, target_modules=list(adapter.default_lora_target_modules)
        )
        transformer.add_adapter(config)
    transformer.train()  # the Trainer's training_step does this; the rollout then runs in train mode too
    reward = build_reward(args)
    trainable = [p for p in transformer.parameters() if p.requires_grad]
    _sync(device)
    return Models(model_key(args), pipe, adapter, reward, device, trainable, time.perf_counter() - start)


def set_reward(models: Models, args) -> None:
    """Swap the reward for one in `args.reward_dtype` (frees the old one first)."""
    if models.reward is not None and next(models.reward.parameters()).dtype == _dtype(args.reward_dtype):
        return
    models.reward = None
    free_memory()
    models.reward = build_reward(args)


def set_checkpointing(models: Models, args) -> None:
    transformer, vae = models.transformer, models.pipe.vae
    if args.transformer_checkpointing:
        transformer.enable_gradient_checkpointing()
    else:
        transformer.disable_gradient_checkpointing()
    if args.vae_checkpointing:
        vae.enable_gradient_checkpointing()
    else:
        vae.disable_gradient_checkpointing()


def set_vae_slicing(models: Models, args) -> None:
    if args.vae_slicing:
        models.pipe.vae.enable_slicing()
    else:
        models.pipe.vae.disable_slicing()


def set_compile(models: Models, args) -> None:
    """Compile the transformer as the trainer does with `torch_compile=True` (kept across cases of one kind)."""
    kind = (args.compile, args.compile_backend)
    if kind == models.compile_kind:
        return
    models.compiled, models.compile_kind = None, kind
    # Static shapes: the rollout (batch B, no gradient) and the training call (batch 2B) each get their own graph.
    if args.compile == "regions":
        from accelerate.utils import compile_regions

        models.compiled = compile_regions(models.transformer, backend=args.compile_backend, dynamic=False)
    elif args.compile == "model":
        models.compiled = torch.compile(models.transformer, backend=args.compile_backend, dynamic=False)


def make_optimizer(params, args, device: torch.device) -> torch.optim.Optimizer:
    """AdamW with the recipe's settings; fused, as the Trainer's default `adamw_torch_fused`."""
    kwargs = dict(lr=args.learning_rate, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-4)
    try:
        return torch.optim.AdamW(params, fused=True, **kwargs)
    except (RuntimeError, ValueError):  # no fused kernel for this device / dtype
        return torch.optim.AdamW(params, **kwargs)


# ----------------------------------------------------------------------------------------------- helpers


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def free_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def _bytes(tensors) -> int:
    return int(sum(t.numel() * t.element_size() for t in tensors))


def _module_params(module) -> int:
    return int(sum(p.numel() for p in module.parameters())) if module is not None else 0


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), model)
    except OSError:
        pass
    return f"{model} ({os.cpu_count()} cores, {torch.get_num_threads()} torch threads)"


def peak_tflops_for(device: torch.device, override: float | None) -> float | None:
    if override is not None:
        return override
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in KNOWN_PEAKS.items() if k in name), None)


def versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {"python": platform.python_version(), "torch": torch.__version__}
    for name in ("diffusers", "transformers", "peft", "accelerate", "srpo-trl"):
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            out[name] = None
    return out


def peak_rss_bytes() -> int:
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024  # Linux: KiB


class PhaseTimer:
    """Wall time (between device synchronisations) and peak allocated memory of each phase of one step."""

    def __init__(self, device: torch.device):
        self.device = device
        self.seconds: dict[str, float] = {}
        self.peak: dict[str, int | None] = {}

    @contextmanager
    def __call__(self, name: str):
        _sync(self.device)
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        start = time.perf_counter()
        yield
        _sync(self.device)
        self.seconds[name] = time.perf_counter() - start
        self.peak[name] = torch.cuda.max_memory_allocated(self.device) if self.device.type == "cuda" else None


# ---------------------------------------------------------------------------------------------- the step


@dataclass
class StepContext:
    """Everything one case's steps share: models, cached text, the SRPO step itself, optimiser."""

    models: Models
    args: argparse.Namespace
    prompts: list[str]
    text: dict[str, torch.Tensor]
    step: object  # srpo_trl.step.SRPOStep: the trainer's own step, timed phase by phase from outside
    optimizer: torch.optim.Optimizer | None

    def autocast(self):
        if self.args.dtype == "bfloat16":
            return torch.autocast(self.models.device.type, dtype=torch.bfloat16)
        return nullcontext()


def make_step(adapter, reward, args):
    """The trainer's `SRPOStep` for one reward at the recipe's settings (the reward's own hinge threshold)."""
    from srpo_trl import direct_align
    from srpo_trl.step import SRPOStep

    shift = adapter.default_time_shift(args.resolution, args.resolution)
    return SRPOStep(
        adapter=adapter,
        window=direct_align.TrainingWindow(shift=shift),
        rewards=[reward],
        reward_weights=[1.0],
        hinge_thresholds=[reward.hinge_threshold],
        rollout_sigmas=direct_align.shifted_grid(args.rollout_steps, shift).float(),
        height=args.resolution,
        width=args.resolution,
    )


def make_context(models: Models, args, optimizer=None) -> StepContext:
    prompts = [PROMPTS[i % len(PROMPTS)] for i in range(args.batch_size)]
    text = models.adapter.encode_prompts(prompts, models.device)  # once per case: text encoding is not timed
    step = make_step(models.adapter, models.reward, args)
    return StepContext(models=models, args=args, prompts=prompts, text=text, step=step, optimizer=optimizer)


def control_words(step_index: int) -> tuple[str, str]:
    """The step's (positive, negative) control words, cycled by step as the trainer does."""
    return POSITIVE_WORDS[step_index % len(POSITIVE_WORDS)], NEGATIVE_WORDS[step_index % len(NEGATIVE_WORDS)]


def rollout(ctx: StepContext, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """The rollout phase: noise `eps` and the clean latents `x0` from it, without gradient."""
    models, size = ctx.models, (ctx.args.resolution, ctx.args.resolution)
    with torch.no_grad(), ctx.autocast():
        eps = models.adapter.sample_noise(len(ctx.prompts), *size, generator, models.device)
        return eps, ctx.step.rollout(models.runner, eps, ctx.text)


def timed_step(ctx: StepContext, step_index: int) -> dict:
    """One SRPO step, phase by phase; returns the phase times, peaks and the step's total."""
    models, args = ctx.models, ctx.args
    device, transformer = models.device, models.runner
    timer = PhaseTimer(device)
    generator = torch.Generator().manual_seed(args.seed * 100_003 + step_index)
    _sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    allocated_before = torch.cuda.memory_allocated(device) if device.type == "cuda" else None
    step_start = time.perf_counter()

    with timer("rollout"):
        eps, x0 = rollout(ctx, generator)

    # The trainer's step (`SRPOStep.losses`), phase by phase, with the graph cut between phases so that each
    # phase's backward is timed on its own.
    rewards = {}

    def record(key, values, with_std=False):
        rewards[key] = values.detach()

    with timer("transformer_forward"):
        with ctx.autocast():
            levels = ctx.step.draw_levels(generator, len(ctx.prompts), 0, len(ctx.prompts))
            branches = ctx.step.branch_batch(x0, eps, ctx.text, levels, control_words(step_index))
            latents = ctx.step.recover(transformer, branches)
        latents_cut = latents.detach().requires_grad_()

    with timer("vae_decode_forward"):
        with ctx.autocast():
            images = ctx.step.decode(latents_cut)
        images_cut = images.detach().requires_grad_()

    with timer("reward_forward"), ctx.autocast():
        loss = sum(ctx.step.reward_losses(images_cut, ctx.prompts, branches, record).values())

    with timer("reward_backward"):
        loss.backward()
    with timer("vae_backward"):
        torch.autograd.backward(images, images_cut.grad)
    with timer("transformer_backward"):
        torch.autograd.backward(latents, latents_cut.grad)
        del latents, images

    with timer("optimizer_step"):
        grad_norm = torch.nn.utils.clip_grad_norm_(models.trainable, args.max_grad_norm)
        ctx.optimizer.step()
        ctx.optimizer.zero_grad(set_to_none=True)

    _sync(device)
    total = time.perf_counter() - step_start
    peaks = [p for p in timer.peak.values() if p is not None]
    return {
        "seconds": dict(timer.seconds),
        "peak": dict(timer.peak),
        "total": total,
        "step_peak": max(peaks) if peaks else None,
        "allocated_before": allocated_before,
        "loss": float(loss.detach()),
        "grad_norm": float(grad_norm),  # before clipping
        "reward_denoise": float(rewards["reward/denoise"].mean()),
        "reward_inversion": float(rewards["reward/inversion"].mean()),
    }


# ------------------------------------------------------------------------------------------------- FLOPs


def count_forward_flops(ctx: StepContext) -> dict[str, int]:
    """Forward FLOPs of each model on the step's shapes, counted once (no gradient; math attention)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    models, args, adapter = ctx.models, ctx.args, ctx.models.adapter
    device, transformer, size = models.device, models.transformer, (args.resolution, args.resolution)
    generator = torch.Generator().manual_seed(args.seed)
    out = {}

    def counted(name, fn):
        with FlopCounterMode(display=False) as counter:
            result = fn()
        out[name] = int(counter.get_total_flops())
        return result

    with torch.no_grad(), ctx.autocast(), sdpa_kernel(SDPBackend.MATH):
        eps = adapter.sample_noise(len(ctx.prompts), *size, generator, device)
        sigma = torch.ones(eps.shape[0], device=device)
        counted("transformer_forward_B", lambda: adapter.velocity(transformer, eps, sigma, ctx.text, 1.0, *size))
        levels = ctx.step.draw_levels(generator, len(ctx.prompts), 0, len(ctx.prompts))
        branches = ctx.step.branch_batch(eps, eps, ctx.text, levels, control_words(0))
        latents = counted("transformer_forward_2B", lambda: ctx.step.recover(transformer, branches))
        images = counted("vae_decode_forward_2B", lambda: ctx.step.decode(latents))
        counted("reward_forward_2B", lambda: ctx.step.reward_losses(images, ctx.prompts, branches))
        counted("reward_image_forward_2B", lambda: models.reward.embed_images(images))
    return out


def model_flops(forward: dict[str, int], rollout_steps: int, full: bool) -> dict[str, int]:
    bwd = 2 if full else 1
    rollout = rollout_steps * forward["transformer_forward_B"]
    step = (
        rollout
        + (1 + bwd) * forward["transformer_forward_2B"]
        + 2 * forward["vae_decode_forward_2B"]
        + forward["reward_forward_2B"]
        + forward["reward_image_forward_2B"]
    )
    return {"rollout": rollout, "step": step, "transformer_backward_factor": bwd}


def flux_transformer_params(num_layers: int = 19, num_single_layers: int = 38) -> int:
    """Parameters of FLUX.1-dev's transformer (with these block counts), counted on the meta device."""
    from diffusers import FluxTransformer2DModel

    with torch.device("meta"):
        model = FluxTransformer2DModel(
            num_layers=num_layers, num_single_layers=num_single_layers, guidance_embeds=True
        )  # the class defaults are FLUX.1-dev's architecture
    return _module_params(model)


def full_finetune_memory_estimate(num_params: int, cards: int = 8) -> dict[str, int | str]:
    """Bytes of the transformer's weights, gradients and AdamW states for full fine-tuning (activations,
    VAE, reward and text encoders excluded)."""
    n = int(num_params)
    pure_bf16 = {"params_bf16": 2 * n, "grads_bf16": 2 * n, "adamw_states_bf16": 4 * n}
    mixed = {"params_bf16_compute": 2 * n, "master_fp32": 4 * n, "grads_fp32": 4 * n, "adamw_states_fp32": 8 * n}
    sharded = mixed["master_fp32"] + mixed["grads_fp32"] + mixed["adamw_states_fp32"]
    return {
        "num_params": n,
        "pure_bf16": {**pure_bf16, "total": sum(pure_bf16.values())},
        "fp32_master_mixed": {**mixed, "total": sum(mixed.values())},
        f"fsdp_{cards}_cards_per_card": sharded // cards,
        "fsdp_note": (
            f"FULL_SHARD over {cards} cards: fp32 master, fp32 grads and AdamW states sharded (16 bytes/param / "
            f"{cards}); plus per card the bf16 copy of the blocks being gathered (about 2 blocks), the frozen VAE, "
            "reward and text encoders, and activations"
        ),
    }


# -------------------------------------------------------------------------------------------------- case


def _median(values: list[float]) -> float:
    return float(statistics.median(values))


def run_case(args, models: Models | None = None) -> dict:
    """Warm up, time `--repeats` steps and return one record. Builds the models when none are given."""
    torch.manual_seed(args.seed)
    built_here = models is None
    if built_here:
        models = build_models(args)
    else:
        set_reward(models, args)
    device = models.device
    set_checkpointing(models, args)
    set_vae_slicing(models, args)
    set_compile(models, args)
    optimizer = make_optimizer(models.trainable, args, device)
    t = time.perf_counter()
    ctx = make_context(models, args, optimizer)
    _sync(device)
    text_seconds = time.perf_counter() - t
    static_bytes = torch.cuda.memory_allocated(device) if device.type == "cuda" else None

    forward = count_forward_flops(ctx)
    flops = {**forward, **model_flops(forward, args.rollout_steps, args.full)}

    from srpo_trl.attention import training_attention

    with training_attention(args.allow_cudnn_attention):  # the trainer's attention kernels
        steps = [timed_step(ctx, i) for i in range(args.warmup + args.repeats)]
    timed = steps[args.warmup :]
    phases = {
        name: {
            "median_s": _median([s["seconds"][name] for s in timed]),
            "all_s": [s["seconds"][name] for s in timed],
            "peak_memory_bytes": max(s["peak"][name] for s in timed) if device.type == "cuda" else None,
        }
        for name in PHASES
    }
    step_median = _median([s["total"] for s in timed])
    peak_tflops = peak_tflops_for(device, args.peak_tflops)
    rollout_median = phases["rollout"]["median_s"]

    def mfu(flop_count, seconds):
        return None if peak_tflops is None else flop_count / seconds / (peak_tflops * 1e12)

    transformer = models.transformer
    state_tensors = [v for s in optimizer.state.values() for v in s.values() if torch.is_tensor(v)]
    record = {
        "benchmark": "srpo_step",
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "device": device_name(device),
        "versions": versions(),
        "config": {k: v for k, v in vars(args).items()},
        "text_encoding": f"excluded from the step (embeddings cached; one-off {text_seconds:.3f} s)",
        "phases": phases,
        "phases_sum_median_s": float(sum(p["median_s"] for p in phases.values())),
        "step_median_s": step_median,
        "step_all_s": [s["total"] for s in timed],
        "warmup_s": [s["total"] for s in steps[: args.warmup]],  # compilation, with --compile
        "images_per_s": args.batch_size / step_median,
        "peak_memory_bytes": max(s["step_peak"] for s in timed) if device.type == "cuda" else None,
        "static_memory_bytes": static_bytes,
        "memory_before_step_bytes": timed[-1]["allocated_before"],
        "peak_rss_bytes": peak_rss_bytes(),
        "params": {
            "transformer": _module_params(transformer),
            "trainable": int(sum(p.numel() for p in models.trainable)),
            "trainable_dtype": str(models.trainable[0].dtype) if models.trainable else None,
            "vae": _module_params(models.pipe.vae),
            "reward": _module_params(models.reward),
            "text_encoders": _module_params(models.pipe.text_encoder) + _module_params(models.pipe.text_encoder_2),
        },
        "trainable_param_bytes": _bytes(models.trainable),
        "optimizer_state_bytes": _bytes(state_tensors),
        "flops": flops,
        "flops_convention": FLOPS_CONVENTION,
        "peak_tflops": peak_tflops,
        "achieved_tflops_step": flops["step"] / step_median / 1e12,
        "achieved_tflops_rollout": flops["rollout"] / rollout_median / 1e12,
        "mfu_step": mfu(flops["step"], step_median),
        "mfu_rollout": mfu(flops["rollout"], rollout_median),
        "build_seconds": models.build_seconds if built_here else None,
        "last_loss": timed[-1]["loss"],
        "last_grad_norm": timed[-1]["grad_norm"],
        "last_rewards": [timed[-1]["reward_denoise"], timed[-1]["reward_inversion"]],
    }
    if args.compile != "none":  # how many graphs dynamo built: one per block kind and shape, unless it recompiled
        from torch._dynamo.utils import counters

        record["dynamo_counters"] = {k: dict(counters[k]) for k in ("stats", "recompiles", "graph_break")}
    if args.full:
        record["full_finetune_memory_estimate"] = full_finetune_memory_estimate(record["params"]["transformer"])
    del ctx, optimizer, state_tensors, steps, timed
    for p in models.trainable:
        p.grad = None
    if built_here:
        del models
    free_memory()
    return record


def append_json(path: str | None, record: dict) -> None:
    if path:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with open(path, "a") as f:
            f.write(json.dumps(record) + "\n")


def summary(record: dict) -> str:
    """A short human-readable table of one record."""
    if record.get("benchmark") == "trainer_overhead":
        return (
            f"trainer step median {record['trainer_step_median_s'] * 1e3:.1f} ms, bare loop "
            f"{record['bare_step_median_s'] * 1e3:.1f} ms, ratio {record['ratio']:.3f} (target <= 1.10; median of "
            f"the paired ratios {record['paired_ratio_median']:.3f})"
        )
    c = record["config"]
    gib = 2**30

    def mem(b):
        return "-" if b is None else f"{b / gib:.2f} GiB"

    lines = [
        f"{c['model']} {c['resolution']}px B={c['batch_size']} "
        f"{'full' if c['full'] else 'LoRA r=' + str(c['lora_rank'])}"
        f"{' base=' + c['quantize_base'] if c.get('quantize_base') else ''} {c['dtype']} rollout={c['rollout_steps']} "
        f"compile={c.get('compile', 'none')} vae_slicing={c.get('vae_slicing')} "
        f"ckpt(T={c['transformer_checkpointing']}, VAE={c['vae_checkpointing']}) reward={c['reward_dtype']} "
        f"on {record['device']}",
        f"  {'phase':<22}{'median':>12}{'peak mem':>14}",
    ]
    for name, p in record["phases"].items():
        lines.append(f"  {name:<22}{p['median_s'] * 1e3:>10.1f}ms{mem(p['peak_memory_bytes']):>14}")
    mfu = record["mfu_step"]
    lines.append(
        f"  step {record['step_median_s']:.3f} s (phases sum {record['phases_sum_median_s']:.3f} s), "
        f"{record['images_per_s']:.3f} images/s, peak {mem(record['peak_memory_bytes'])}, "
        f"{record['achieved_tflops_step']:.3g} TFLOP/s, MFU step "
        f"{'null' if mfu is None else f'{mfu:.1%}'}, rollout "
        f"{'null' if record['mfu_rollout'] is None else format(record['mfu_rollout'], '.1%')}"
    )
    return "\n".join(lines)


# --------------------------------------------------------------------------------- trainer vs bare loop


def compare_trainer(args) -> dict:
    """Median step time of `SRPOTrainer.train()` against a bare loop of the same maths, tiny model, one run.

    The bare loop is what a hand-written script would do per step: look up the prompts' cached text embeddings,
    rollout, both branches in one transformer call, decode, SRP rewards, hinge loss, `loss.backward()`,
    `clip_grad_norm_`, fused AdamW step, `zero_grad`, on its own copy of the same model and config. The
    trainer's step is timed by a callback from `on_step_begin` to `on_step_end`, and the bare steps are
    interleaved with the trainer's: the callback runs one bare step after each trainer step (outside the
    trainer's timed window), so both see the same machine at the same moments (a shared machine's load drifts
    by 10 % and more between runs a minute apart).
    """
    from peft import LoraConfig
    from transformers import TrainerCallback

    from srpo_trl import SRPOConfig, SRPOTrainer
    from srpo_trl.testing import tiny_clip_reward, tiny_flux_pipeline

    device = torch.device(args.device)
    n_steps = args.warmup + args.repeats
    size = (args.resolution, args.resolution)

    # ---- bare loop
    torch.manual_seed(args.seed)
    bare_models = build_models(args)
    set_checkpointing(bare_models, args)
    bare_ctx = make_context(bare_models, args, make_optimizer(bare_models.trainable, args, device))
    adapter, transformer = bare_models.adapter, bare_models.transformer
    # Text conditioning cached per prompt on the host, stacked and moved per step (as the trainer's cache does).
    cache = {}
    for prompt in bare_ctx.prompts:
        cache[prompt] = {k: v[0].cpu() for k, v in adapter.encode_prompts([prompt], device).items()}

    def bare_step(step_index: int) -> float:
        _sync(device)
        start = time.perf_counter()
        with bare_ctx.autocast():
            entries = [cache[p] for p in bare_ctx.prompts]
            text = {k: torch.stack([e[k] for e in entries]).to(device) for k in entries[0]}
            bare_ctx.text = text
            generator = torch.Generator().manual_seed(step_index)
            eps = adapter.sample_noise(len(bare_ctx.prompts), *size, generator, device)
            x0 = bare_ctx.step.rollout(transformer, eps, text)
            batch = len(bare_ctx.prompts)
            levels = bare_ctx.step.draw_levels(generator, batch, 0, batch)
            words = control_words(step_index)
            loss = sum(bare_ctx.step.losses(transformer, x0, eps, text, bare_ctx.prompts, levels, words).values())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(bare_models.trainable, args.max_grad_norm)
        bare_ctx.optimizer.step()
        bare_ctx.optimizer.zero_grad(set_to_none=True)
        _sync(device)
        return time.perf_counter() - start

    # ---- SRPOTrainer, with one bare step after each of its steps
    class Interleave(TrainerCallback):
        def __init__(self):
            self.trainer_s: list[float] = []  # on_step_begin -> on_step_end
            self.bare_s: list[float] = []
            self._begin = 0.0

        def on_step_begin(self, *a, **k):
            _sync(device)
            self._begin = time.perf_counter()

        def on_step_end(self, *a, **k):
            _sync(device)
            self.trainer_s.append(time.perf_counter() - self._begin)
            self.bare_s.append(bare_step(len(self.bare_s)))

    torch.manual_seed(args.seed)
    pipe = tiny_flux_pipeline(args.seed, dtype=_dtype(args.dtype)).to(device)
    scratch = tempfile.TemporaryDirectory(prefix="srpo_bench_")
    config = SRPOConfig(
        output_dir=scratch.name,  # nothing is saved; removed at the end
        max_steps=n_steps,
        resolution=args.resolution,
        rollout_steps=args.rollout_steps,
        max_sequence_length=args.max_sequence_length,
        per_device_train_batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        max_grad_norm=args.max_grad_norm,
        positive_control_words=POSITIVE_WORDS,
        negative_control_words=NEGATIVE_WORDS,
        transformer_gradient_checkpointing=args.transformer_checkpointing,
        vae_gradient_checkpointing=args.vae_checkpointing,
        bf16=args.dtype == "bfloat16",
        use_cpu=device.type == "cpu",
        logging_strategy="no",
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        seed=args.seed,
    )
    timer = Interleave()
    prompts = [{"prompt": PROMPTS[i % len(PROMPTS)]} for i in range(max(len(PROMPTS), args.batch_size))]
    trainer = SRPOTrainer(
        pipe,
        tiny_clip_reward(args.seed, scale=1.0, name="hps", dtype=_dtype(args.reward_dtype)),
        args=config,
        train_dataset=_dataset(prompts),
        callbacks=[timer],
        peft_config=None if args.full else LoraConfig(r=args.lora_rank, lora_alpha=args.lora_rank),
    )
    trainer.train()
    scratch.cleanup()
    trainer_s, bare_s = timer.trainer_s[args.warmup :], timer.bare_s[args.warmup :]
    trainer_median, bare_median = _median(trainer_s), _median(bare_s)
    return {
        "benchmark": "trainer_overhead",
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "device": device_name(device),
        "versions": versions(),
        "config": {k: v for k, v in vars(args).items()},
        "trainer_step_median_s": trainer_median,
        "trainer_step_all_s": trainer_s,
        "bare_step_median_s": bare_median,
        "bare_step_all_s": bare_s,
        "ratio": trainer_median / bare_median,
        "paired_ratio_median": _median([t / b for t, b in zip(trainer_s, bare_s)]),
        "target_ratio": 1.10,
        "trainer_caches_text": hasattr(trainer, "text_cache"),
        "note": "same model and config, steps interleaved; the bare loop looks up cached text embeddings (the "
        "trainer caches them when trainer_caches_text is true, else it encodes per step)",
    }


def _dataset(rows: list[dict]):
    """A `datasets.Dataset` when the package is there, else the plain list (the Trainer takes both)."""
    try:
        from datasets import Dataset
    except ImportError:
        return rows
    return Dataset.from_list(rows)


# -------------------------------------------------------------------------------------------------- main


def main(argv: Sequence[str] | None = None) -> list[dict]:
    args = parse_args(argv)
    if args.compare_trainer:
        record = compare_trainer(args)
    else:
        record = run_case(args)
    append_json(args.json_out, record)
    print(summary(record), flush=True)
    return [record]


if __name__ == "__main__":
    main(sys.argv[1:])
