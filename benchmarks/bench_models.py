"""The models `bench_step.py` times, and what it measures them with: building the tiny or full-size pipeline and
reward once per configuration, the memory savers and compilation switched per case, the optimizer, parameter and
FLOP-count bookkeeping, device facts and the phase timer.

Kept apart from `bench_step.py` (which imports everything here under its own names) so that each file stays short.
"""

from __future__ import annotations

import gc
import os
import platform
import resource
import time
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch

# Dense bf16 tensor-core peak of the SXM H100 and of the H200 (same chip), in TFLOP/s.
HOPPER_BF16_DENSE_TFLOPS = 989.4
KNOWN_PEAKS = {"H100": HOPPER_BF16_DENSE_TFLOPS, "H200": HOPPER_BF16_DENSE_TFLOPS}


def _dtype(name: str) -> torch.dtype:
    return getattr(torch, name)


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
