"""Will the run fit? The planner's estimate, checked against the device before any weights load.

`SRPOTrainer` runs [`check_before_loading`] when it is given a model by id or path and CUDA is available
(`SRPOConfig.memory_check`: `"warn"` by default, `"strict"`, `"off"`). It sizes the recipe exactly as `srpo-trl
plan` does (`srpo_trl.planning`: the model's configs on the meta device, the trainer's own step traced under bf16
autocast; nothing is downloaded for the published models whose configs ship, a local folder's configs are read),
adds the allowance for the CUDA context and the allocator (1.5 GB + 5 % of the card), and compares that with the
device's free memory. Over it, `"warn"` logs the estimate and the changes that would fit, `"strict"` stops with the
same text. A model the planner cannot size is logged and the run goes on: the check never blocks a run it cannot
judge. [`MemoryCheck.metrics`] puts the estimate and `torch.cuda.max_memory_allocated` in every training log, so
every real run also checks the planner.

The engine and the number of processes come from the environment `accelerate launch` sets (FSDP, DeepSpeed and
its ZeRO stage, `WORLD_SIZE`), read before the accelerator exists.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass

import torch

logger = logging.getLogger(__name__)
GB = 10**9


def engine_from_environment(env=os.environ) -> tuple[str, int]:
    """(planner engine, processes) of the launch this process belongs to."""
    processes = int(env.get("WORLD_SIZE", "1"))
    if env.get("ACCELERATE_USE_FSDP", "").lower() == "true":
        return "fsdp2", processes
    if env.get("ACCELERATE_USE_DEEPSPEED", "").lower() == "true":
        stage = int(env.get("ACCELERATE_DEEPSPEED_ZERO_STAGE", "2"))
        return ("zero3" if stage == 3 else "zero2" if stage in (1, 2) else "ddp"), processes
    return ("ddp" if processes > 1 else "none"), processes


def recipe_for_run(model, reward_funcs, args, peft_config, engine="none", processes=1, autocast="from_args"):
    """The planner's `Recipe` of a `SRPOTrainer` run: its model, first reward, `SRPOConfig` and LoRA."""
    from .planning.estimate import Recipe

    dtype = (args.model_init_kwargs or {}).get("torch_dtype")
    dtype = str(dtype).replace("torch.", "") if dtype not in (None, "auto") else "float32"
    reward = reward_funcs[0] if isinstance(reward_funcs, (list, tuple)) else reward_funcs
    optim = getattr(args.optim, "value", args.optim)
    targets = getattr(peft_config, "target_modules", None)
    return Recipe(
        model=model,
        resolution=tuple(args.image_size),
        batch_size=args.per_device_train_batch_size,
        use_peft=peft_config is not None,
        lora_r=getattr(peft_config, "r", 64),
        lora_alpha=getattr(peft_config, "lora_alpha", 64),
        lora_target_modules=sorted(targets) if isinstance(targets, (set, list, tuple)) else None,
        quantize_base=args.quantize_base,
        dtype=dtype,
        trainable_dtype=dtype if args.trainable_dtype == "auto" else args.trainable_dtype,
        transformer_gradient_checkpointing=args.transformer_gradient_checkpointing,
        vae_gradient_checkpointing=args.vae_gradient_checkpointing,
        vae_slicing=args.vae_slicing,
        reward=reward,
        reward_dtype=args.reward_dtype,
        rollout_steps=args.rollout_steps,
        max_sequence_length=args.max_sequence_length,
        release_text_encoders=args.release_text_encoders,
        cache_text_embeddings=args.cache_text_embeddings,
        use_inversion_branch=args.use_inversion_branch,
        rollout_guidance_scale=args.rollout_guidance_scale,
        train_guidance_scale=args.train_guidance_scale,
        autocast=("cuda" if args.bf16 else None) if autocast == "from_args" else autocast,
        engine=engine,
        processes=processes,
        optim=str(optim),
        num_frames=args.num_frames,
        decode_latent_frames=args.decode_latent_frames,
        reward_frame_stride=args.reward_frame_stride,
        window=(args.window_grid_steps, args.window_start_index, args.window_end_index),
    )


@dataclass
class MemoryCheck:
    """What the check found: the estimated peak per process (None when not estimated) and the verdict."""

    planned_peak: int | None = None
    budget: int | None = None
    message: str = ""

    @property
    def fits(self) -> bool | None:
        return None if self.planned_peak is None or self.budget is None else self.planned_peak <= self.budget

    def metrics(self) -> dict[str, float]:
        """The estimate and, on CUDA, the measured peak, in GB, for the training logs."""
        out = {}
        if self.planned_peak is not None:
            out["memory/planned_peak_gb"] = round(self.planned_peak / GB, 3)
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            out["memory/max_allocated_gb"] = round(torch.cuda.max_memory_allocated() / GB, 3)
        return out


def device_memory() -> tuple[int, int] | None:
    """(free, total) bytes of this process's CUDA device, or None without CUDA."""
    if not torch.cuda.is_available():
        return None
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    return torch.cuda.mem_get_info(local_rank % max(torch.cuda.device_count(), 1))


def check_before_loading(model, reward_funcs, args, peft_config, memory: tuple[int, int] | None = None) -> MemoryCheck:
    """The check of the module docstring; `memory` is (free, total) bytes, this process's CUDA device's by default.
    Raises `MemoryError` under `memory_check="strict"` when the estimate exceeds the free memory."""
    from .planning.meta import CannotSize

    memory = memory if memory is not None else device_memory()
    if args.memory_check == "off" or memory is None or not isinstance(model, str):
        return MemoryCheck()
    from .planning.estimate import estimate
    from .planning.report import allowance_bytes, changes

    engine, processes = engine_from_environment()
    recipe = recipe_for_run(model, reward_funcs, args, peft_config, engine, processes)
    start = time.perf_counter()
    try:
        plan = estimate(recipe, without_checkpointing=False)
    except CannotSize as error:
        logger.warning("memory_check: not checked (%s)", error)
        return MemoryCheck()
    free, total = memory
    peak, budget = plan.overall_peak(), free - allowance_bytes(total)
    check = MemoryCheck(peak, budget)
    head = (
        f"memory_check: estimated peak {peak / GB:.2f} GB per process ({engine}, {processes} process(es)), "
        f"{free / GB:.2f} GB free less {allowance_bytes(total) / GB:.2f} GB allowance = {budget / GB:.2f} GB "
        f"(planned in {time.perf_counter() - start:.0f} s)"
    )
    if check.fits:
        check.message = head + ": fits"
        logger.info(check.message)
        return check
    fixes = [c for c in changes(plan, budget) if c.new_peak <= budget]
    lines = [head + f": does NOT fit, {(peak - budget) / GB:.2f} GB over (srpo-trl plan has the whole report)"]
    lines += [f"  - {c.what}: -{c.saves / GB:.2f} GB -> {c.new_peak / GB:.2f} GB" for c in fixes]
    if not fixes:
        lines.append("  no single change fits; srpo-trl plan lists the savings of each")
    check.message = "\n".join(lines)
    if args.memory_check == "strict":
        raise MemoryError(check.message + "\n(memory_check='strict'; 'warn' would try anyway)")
    if int(os.environ.get("LOCAL_RANK", "0")) == 0:
        logger.warning(check.message)
    return check
