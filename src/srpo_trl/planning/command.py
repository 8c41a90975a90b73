"""`srpo-trl plan`: the memory and time of a `srpo-trl train` recipe, before anything is downloaded.

    srpo-trl plan --config examples/configs/flux_dev_hpsv2.yaml --gpu H100
    srpo-trl plan --model_name_or_path Qwen/Qwen-Image --dtype bfloat16 --engine fsdp2 --num_processes 8 --gpu H100

It reads the recipe exactly as `srpo-trl train` does (`--config` YAML and any `ScriptArguments`, `SRPOConfig` or
`ModelConfig` flag, through the training script's own `TrlParser`), plus the planner's own flags below, and prints
the report of `srpo_trl.planning.report`. Models are sized from the component configs shipped for published Hub
ids, or from a local pipeline folder; anything else stops with `CannotSize` and nothing is downloaded.
"""

from __future__ import annotations

import argparse
import sys
import time

from .estimate import ENGINES, Recipe, estimate
from .meta import CannotSize
from .report import DEFAULT_MFU, GB, GPUS, gpu_kind, render


def plan_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="srpo-trl plan",
        add_help=False,
        description="Estimate memory per process and step time of a `srpo-trl train` recipe; every train flag "
        "(--config, --model_name_or_path, --resolution, --use_peft, --lora_r, --quantize_base, ...) is read as "
        "train reads it.",
    )
    parser.add_argument("--engine", default="none", choices=ENGINES, help="Distributed engine (default: none).")
    parser.add_argument("--num_processes", type=int, default=1, help="Processes (GPUs) the engine spans.")
    parser.add_argument("--gpu", help=f"GPU kind: {', '.join(GPUS)} (memory and bf16 peak).")
    parser.add_argument("--memory_gb", type=float, help="Memory per GPU in GB (overrides --gpu's).")
    parser.add_argument("--mfu", type=float, default=DEFAULT_MFU, help="Model-FLOPs utilisation for the step time.")
    parser.add_argument("--peak_tflops", type=float, help="Dense bf16 peak of the card (overrides --gpu's).")
    parser.add_argument(
        "--no_checkpointing_trace",
        action="store_true",
        help="Skip the second trace that sizes the step without transformer gradient checkpointing (faster).",
    )
    parser.add_argument("-h", "--help", action="store_true")
    return parser


def recipe_from_args(script_args, training_args, model_args, engine="none", processes=1) -> Recipe:
    """The planner's `Recipe` from `srpo-trl train`'s three argument dataclasses."""
    dtype = model_args.dtype if model_args.dtype not in (None, "auto") else "float32"
    optim = getattr(training_args.optim, "value", training_args.optim)
    return Recipe(
        model=model_args.model_name_or_path,
        resolution=tuple(training_args.image_size),  # an int or [height, width] in the recipe
        batch_size=training_args.per_device_train_batch_size,
        use_peft=model_args.use_peft,
        lora_r=model_args.lora_r,
        lora_alpha=model_args.lora_alpha,
        lora_target_modules=model_args.lora_target_modules,
        quantize_base=training_args.quantize_base,
        dtype=dtype,
        trainable_dtype=training_args.trainable_dtype,
        transformer_gradient_checkpointing=training_args.transformer_gradient_checkpointing,
        vae_gradient_checkpointing=training_args.vae_gradient_checkpointing,
        vae_slicing=training_args.vae_slicing,
        reward=script_args.reward_funcs[0],
        reward_dtype=training_args.reward_dtype,
        rollout_steps=training_args.rollout_steps,
        max_sequence_length=training_args.max_sequence_length,
        release_text_encoders=training_args.release_text_encoders,
        use_inversion_branch=training_args.use_inversion_branch,
        rollout_guidance_scale=training_args.rollout_guidance_scale,
        train_guidance_scale=training_args.train_guidance_scale,
        engine=engine,
        processes=processes,
        optim=str(optim),
    )


def main(argv: list[str]) -> int:
    from ..scripts.train import make_parser

    own, rest = plan_parser().parse_known_args(argv)
    if own.help:
        plan_parser().print_help()
        print("\nRecipe flags (as srpo-trl train; only those that change memory or time matter):\n")
        make_parser().print_help()
        return 0
    if "--dataset_name" not in rest:  # the data never matters to the plan
        rest = [*rest, "--dataset_name", "unused-by-plan"]
    script_args, training_args, model_args = make_parser().parse_args_and_config(args=rest)
    if model_args.model_name_or_path is None:
        raise SystemExit("srpo-trl plan: --model_name_or_path is required (on the command line or in --config)")
    if own.engine == "none" and own.num_processes > 1:
        raise SystemExit("srpo-trl plan: --num_processes > 1 needs an --engine (ddp, fsdp2, zero2, zero3)")
    memory, peak, kind = own.memory_gb, own.peak_tflops, None
    if own.gpu:
        try:
            kind, kind_memory, kind_peak = gpu_kind(own.gpu)
        except ValueError as error:
            raise SystemExit(str(error)) from None
        memory = memory or kind_memory / GB
        peak = peak or kind_peak / 1e12
    recipe = recipe_from_args(script_args, training_args, model_args, own.engine, own.num_processes)
    if len(script_args.reward_funcs) > 1:
        print(f"note: sizing the first reward only ({script_args.reward_funcs[0]}); the others are not counted")
    start = time.perf_counter()
    try:
        plan = estimate(recipe, without_checkpointing=not own.no_checkpointing_trace)
    except CannotSize as error:
        raise SystemExit(f"error: {error}") from None
    print(render(plan, memory and memory * GB, kind, own.mfu, peak and peak * 1e12))
    print(f"\n(planned in {time.perf_counter() - start:.1f} s on the meta device; nothing was downloaded)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
