"""The planner's answer for one recipe on one card: memory per process, step time, and whether it fits.

[`Verdict`] compares a [`Plan`] with a card's memory less an allowance for what `max_memory_allocated` does not
count (the CUDA context and the caching allocator's reserve and fragmentation: [`allowance_bytes`], 1.5 GB + 5 %
of the card), finds the largest batch that fits, and, when the recipe does not fit, lists the changes that would
make it fit with their estimated savings. [`render`] writes the report `srpo-trl plan` prints.

Step time is model FLOPs / (MFU x the card's dense bf16 peak), at a stated MFU (40 % by default; the recorded
FLUX.1-dev runs on an H200 reached 20 to 30 %, see docs/benchmarks.md).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .estimate import QUANT_BYTES, Plan

GB = 10**9

#: GPU kind -> (memory in GB, dense bf16 peak in TFLOP/s).
GPUS: dict[str, tuple[float, float]] = {
    "H100": (80, 989.4),
    "H200": (141, 989.4),
    "A100-80GB": (80, 312),
    "A100-40GB": (40, 312),
    "L40S": (48, 362),
    "RTX4090": (24, 165),
}
DEFAULT_MFU = 0.40
ALLOWANCE_FIXED = 1.5 * GB
ALLOWANCE_FRACTION = 0.05


def allowance_bytes(memory: float) -> int:
    """What the CUDA context and the allocator take beyond the tensors: 1.5 GB + 5 % of the card."""
    return int(ALLOWANCE_FIXED + ALLOWANCE_FRACTION * memory)


def gpu_kind(name: str) -> tuple[str, float, float]:
    """(name, memory bytes, peak FLOP/s) of a GPU kind, matched without case, dashes or spaces."""

    def norm(s):
        return s.lower().replace("-", "").replace(" ", "").replace("_", "")

    for kind, (memory, tflops) in GPUS.items():
        if norm(kind) == norm(name) or norm(kind).startswith(norm(name)):
            return kind, memory * GB, tflops * 1e12
    raise ValueError(f"plan: unknown GPU kind {name!r}; known: {', '.join(GPUS)} (or give --memory_gb)")


@dataclass
class Change:
    what: str
    saves: int  # bytes per process, estimated
    new_peak: int

    @property
    def fits(self) -> bool:
        return self.new_peak >= 0


@dataclass
class Verdict:
    memory: int
    allowance: int
    peak: int
    largest_batch: int
    changes: list[Change] = field(default_factory=list)

    @property
    def budget(self) -> int:
        return self.memory - self.allowance

    @property
    def fits(self) -> bool:
        return self.peak <= self.budget


def largest_batch(plan: Plan, budget: int, limit: int = 256) -> int:
    """The largest per-process batch whose estimated peak fits `budget` (activations scale with the batch)."""
    best = 0
    for batch in range(1, limit + 1):
        if plan.overall_peak(batch=batch) > budget:
            break
        best = batch
    return best


def _state_width(plan: Plan) -> int:
    return torch.tensor([], dtype=getattr(torch, plan.recipe.trainable_dtype)).element_size()


def changes(plan: Plan, budget: int) -> list[Change]:
    """Changes that lower the peak per process, each with its estimated saving (one at a time, not combined)."""
    r, peak, out = plan.recipe, plan.peak_bytes(), []
    width = _state_width(plan)
    state = sum(plan.state.values())
    shard = r.processes if r.engine in ("fsdp2", "zero3") else 1

    caching = (
        plan.caching_peak or 0
    )  # caching the prompts comes first: a change that does not lower it is bounded by it

    def add(what, saves, caching=caching):
        if saves > 0:
            out.append(Change(what, int(saves), int(max(peak - saves, caching))))

    if r.use_peft and r.lora_r > 16:
        add(f"LoRA rank {r.lora_r} -> 16 (--lora_r 16)", state * (1 - 16 / r.lora_r))
    if not r.use_peft:
        lora = getattr(plan, "lora_r64_params", 0)
        add("LoRA r=64 instead of full fine-tuning (--use_peft --lora_r 64)", state - 4 * lora * width // shard)
    if r.use_peft and not r.quantize_base:
        n, size = plan.quantisable
        saves = size - n * QUANT_BYTES["nf4"]
        in_caching = saves if r.engine in ("none", "ddp") else 0  # the base is on the card while caching
        add("NF4 frozen base (--quantize_base nf4; the step about 1.8x slower)", saves / shard, caching - in_caching)
    if "8bit" not in r.optim and plan.state.get("AdamW states"):
        add("8-bit AdamW (--optim adamw_torch_8bit)", plan.state["AdamW states"] * (1 - 1 / width))
    with_ckpt = getattr(plan, "with_checkpointing", None)
    if not r.transformer_gradient_checkpointing and with_ckpt is not None:
        add(
            "transformer gradient checkpointing (--transformer_gradient_checkpointing)",
            peak - plan.peak_bytes(with_ckpt),
        )
    if r.engine in ("none", "ddp"):
        n = max(r.processes, 8) if r.processes > 1 else 8
        resident = plan.resident.get(plan.trainable, 0)
        gathered = 2 * plan.largest_block
        ddp = plan.extras.get("DDP gradient buckets", 0)
        add(
            f"FSDP2 over {n} processes (--engine fsdp2 --num_processes {n})",
            (resident + state) * (1 - 1 / n) + ddp - gathered,
            caching=caching - sum(size for name, *_, size in plan.weights if name == plan.trainable),
        )
    if r.batch_size > 1:
        add("batch 1 (--per_device_train_batch_size 1)", peak - plan.peak_bytes(batch=1))
    height, width_px = r.resolution
    if max(height, width_px) > 512:
        smaller = 512 if max(height, width_px) <= 768 else 720
        ratio = smaller**2 / (height * width_px)
        add(
            f"resolution {smaller} (--resolution {smaller}; activations scale with the pixels)",
            plan.dynamic_bytes() * (1 - ratio),
        )
    return sorted(out, key=lambda c: -c.saves)


def verdict(plan: Plan, memory: float) -> Verdict:
    allowance = allowance_bytes(memory)
    budget = int(memory - allowance)
    return Verdict(int(memory), allowance, plan.overall_peak(), largest_batch(plan, budget), changes(plan, budget))


def step_seconds(plan: Plan, peak_flops: float, mfu: float = DEFAULT_MFU) -> float:
    """One step's time per process at `mfu` of `peak_flops`."""
    return plan.step_flops() / (mfu * peak_flops)


def _gb(b: float) -> str:
    return f"{b / GB:,.2f} GB"


def render(plan: Plan, memory: float | None, gpu: str | None, mfu: float = DEFAULT_MFU, peak_flops=None) -> str:
    """The report `srpo-trl plan` prints (see the module docstring)."""
    r = plan.recipe
    lines = []
    res = "x".join(str(x) for x in r.resolution)
    mode = f"LoRA r={r.lora_r}" if r.use_peft else "full fine-tuning"
    if r.quantize_base:
        mode += f", {r.quantize_base} base"
    engine = r.engine if r.engine == "none" else f"{r.engine} x {r.processes} processes"
    lines.append(
        f"srpo-trl plan: {r.model if isinstance(r.model, str) else type(r.model).__name__} ({plan.pipeline_class})"
    )
    lines.append(
        f"  {mode}, {res} px, batch {r.batch_size} per process, {r.rollout_steps} rollout steps, "
        f"weights {r.dtype}, trainable {r.trainable_dtype}, reward {r.reward}, engine {engine}, "
        f"autocast {r.autocast + ' bf16' if r.autocast else 'off'}"
    )
    lines.append("")
    lines.append("Weights (whole model; 'on card' is per process):")
    lines.append(f"  {'component':<16}{'dtype':<10}{'role':<11}{'parameters':>16}{'bytes':>13}")
    for name, dtype, role, count, size in plan.weights:
        if count:
            lines.append(f"  {name:<16}{dtype:<10}{role:<11}{count:>16,}{_gb(size):>13}")
    for name, size in plan.resident.items():
        lines.append(f"  on card: {name:<20}{_gb(size):>13}")
    released = [n for n, *_ in plan.weights if n not in plan.resident]
    if released:
        lines.append(f"  released after the text cache: {', '.join(sorted(set(released)))}")
    lines.append("")
    lines.append(f"Training state per process ({plan.trainable_params:,} trainable parameters):")
    for name, size in plan.state.items():
        lines.append(f"  {name:<30}{_gb(size):>13}")
    for name, size in plan.extras.items():
        lines.append(f"  {name:<30}{_gb(size):>13}")
    m, other = plan.measured, plan.no_checkpointing
    rollout_peak, forward_peak, train_peak = plan.phase_peaks()  # as the engine holds them (see Measured)
    lines.append("")
    lines.append("Activations per process (traced on the meta device):")
    lines.append(f"  rollout call (no gradient), peak{_gb(rollout_peak):>20}")
    for phase, value in m.saved.items():
        extra = ""
        if other is not None:
            extra = f"   (without transformer checkpointing: {_gb(other.saved[phase])})"
        lines.append(f"  saved for backward: {phase:<13}{_gb(value):>13}{extra}")
    lines.append(f"  forward with gradient, peak{_gb(forward_peak):>25}")
    lines.append(f"  training, peak less the gradients{_gb(train_peak - m.grad_bytes):>19}")
    if plan.text_forward is not None:
        when = "at every step: text not cached" if not r.cache_text_embeddings else "while caching"
        lines.append(f"  text encoders' forward, batch {r.batch_size} ({when}){_gb(plan.text_forward):>12}")
    else:
        lines.append("  text encoders' forward: not sized (an encoder does not run on the meta device)")
    lines.append("")
    lines.append(
        f"Peak per process: {_gb(plan.peak_bytes())} (static {_gb(plan.static_bytes)} + "
        f"dynamic {_gb(plan.dynamic_bytes())})"
    )
    if other is not None:
        lines.append(f"  without transformer gradient checkpointing: {_gb(plan.peak_bytes(other))}")
    if plan.caching_peak is not None:
        lines.append(
            f"Caching the prompts before training: {_gb(plan.caching_peak)} (the weights on the card, the "
            f"transformer too unless an engine shards it, + the encoders' forward on 8 prompts)"
            + ("  <- the run's peak" if plan.caching_peak > plan.peak_bytes() else "")
        )
    flops = plan.step_flops()
    lines.append("")
    lines.append(
        f"Model FLOPs per step and process: {flops / 1e12:,.1f} TFLOP (rollout {plan.flops['rollout'] / 1e12:,.1f})"
    )
    if peak_flops:
        seconds = step_seconds(plan, peak_flops, mfu)
        images = r.batch_size * r.processes / seconds
        lines.append(
            f"  step time at {mfu:.0%} MFU of {peak_flops / 1e12:,.0f} TFLOP/s (dense bf16 peak): "
            f"{seconds:,.2f} s, {images:,.3f} {'videos' if getattr(plan, 'is_video', False) else 'images'}/s over "
            f"{r.processes} process(es)"
        )
    if memory:
        v = verdict(plan, memory)
        lines.append("")
        name = f"{gpu}, " if gpu else ""
        lines.append(
            f"Against {name}{_gb(v.memory)} less {_gb(v.allowance)} allowance (CUDA context and allocator: "
            f"1.5 GB + 5 %) = {_gb(v.budget)}:"
        )
        if v.fits:
            lines.append(
                f"  FITS: peak {_gb(v.peak)}, headroom {_gb(v.budget - v.peak)}; "
                f"largest batch per process that fits: {v.largest_batch}"
            )
        else:
            lines.append(f"  DOES NOT FIT: peak {_gb(v.peak)}, {_gb(v.peak - v.budget)} over")
        if not v.fits or r.batch_size == 1:
            lines.append("  changes, one at a time (estimated saving -> peak):")
            for c in v.changes:
                mark = "fits" if c.new_peak <= v.budget else "still over"
                lines.append(f"    - {c.what}: -{_gb(c.saves)} -> {_gb(c.new_peak)} ({mark})")
    return "\n".join(lines)


def gpu_table(plans: dict[str, Plan], memories=(24, 48, 80, 141)) -> list[str]:
    """Markdown rows: recipe, peak per process, and fits / does not fit per card size (GB)."""
    rows = [
        f"| recipe | peak per process | {' | '.join(f'{m} GB' for m in memories)} |",
        "| --- | --- | " + " | ".join("---" for _ in memories) + " |",
    ]
    for label, plan in plans.items():
        cells = []
        for memory in memories:
            budget = memory * GB - allowance_bytes(memory * GB)
            cells.append("fits" if plan.overall_peak() <= budget else "no")
        rows.append(f"| {label} | {_gb(plan.overall_peak())} | {' | '.join(cells)} |")
    return rows
