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
import json
import os
import statistics
import sys
import time
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass

import torch
from bench_models import (  # noqa: F401  (re-exported: `bench_step.X` is how gpu_validation.py and the tests reach them)
    HOPPER_BF16_DENSE_TFLOPS,
    KNOWN_PEAKS,
    Models,
    PhaseTimer,
    _bytes,
    _dtype,
    _module_params,
    _sync,
    build_models,
    build_reward,
    device_name,
    flux_transformer_params,
    free_memory,
    full_finetune_memory_estimate,
    make_optimizer,
    model_flops,
    model_key,
    peak_rss_bytes,
    peak_tflops_for,
    set_checkpointing,
    set_compile,
    set_reward,
    set_vae_slicing,
    versions,
)

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


# -------------------------------------------------------------------------------------------------- main


def main(argv: Sequence[str] | None = None) -> list[dict]:
    args = parse_args(argv)
    if args.compare_trainer:
        # Its module imports this one by name: run as a script, this module is `__main__`, so register it under its
        # name first, or the import would run this file a second time.
        sys.modules.setdefault("bench_step", sys.modules[__name__])
        from bench_trainer_overhead import compare_trainer

        record = compare_trainer(args)
    else:
        record = run_case(args)
    append_json(args.json_out, record)
    print(summary(record), flush=True)
    return [record]


if __name__ == "__main__":
    main(sys.argv[1:])
