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
        "--autocast",
        default="cuda",
        choices=["cuda", "none"],
        help="Trace the step under CUDA's bf16 autocast (default: what bf16=True, the GPU default, runs) or without.",
    )
    parser.add_argument(
        "--no_checkpointing_trace",
        action="store_true",
        help="Skip the second trace that sizes the step without transformer gradient checkpointing (faster).",
    )
    parser.add_argument("-h", "--help", action="store_true")
    return parser


def recipe_from_args(script_args, training_args, model_args, engine="none", processes=1, autocast="cuda") -> Recipe:
    """The planner's `Recipe` from `srpo-trl train`'s three argument dataclasses (as `SRPOTrainer` sees them)."""
    from ..memory_check import recipe_for_run
    from ..scripts.train import lora_config

    if model_args.dtype not in (None, "auto"):  # as `srpo-trl train` passes it on
        training_args.model_init_kwargs = {**(training_args.model_init_kwargs or {}), "torch_dtype": model_args.dtype}
    return recipe_for_run(
        model_args.model_name_or_path,
        script_args.reward_funcs,
        training_args,
        lora_config(model_args),
        engine,
        processes,
        autocast,
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
    autocast = None if own.autocast == "none" else own.autocast
    recipe = recipe_from_args(script_args, training_args, model_args, own.engine, own.num_processes, autocast)
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
