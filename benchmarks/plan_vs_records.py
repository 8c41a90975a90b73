"""`srpo-trl plan`'s estimates against the peaks recorded on an H200 (docs/benchmarks.md, "Planner estimates").

    python benchmarks/plan_vs_records.py [--autocast cuda|none] [--only N ...]

Each case is the FLUX.1-dev configuration one recorded run measured (`docs/gpu/2026-11-26-h200-run*.json`,
`torch.cuda.max_memory_allocated`, GB = 10^9 bytes): random weights in bf16, LoRA r=64 with its weights and AdamW
states in bf16 (`trainable_dtype="bfloat16"`, as `bench_step.py` ran then), the ViT-H-14 reward in bf16, B = 1,
the savers on unless the case says otherwise, the step under bf16 autocast (the planner replays CUDA's casts;
`--autocast none` gives the trace without them). Prints the markdown table, one row per case, and the time taken.
Runs on the CPU, nothing downloaded (about 30 s per case on 2 cores).
"""

from __future__ import annotations

import argparse
import time

from srpo_trl.planning.estimate import Recipe, estimate

GB = 1e9
FLUX = "black-forest-labs/FLUX.1-dev"
#: (label, recorded peak in GB, the record, the recipe's changes from the base case).
CASES = [
    ("LoRA, 720 px, 25-step rollout, VAE slicing", 36.26, "run 5, case 1", {}),
    ("LoRA, 720 px, 2-step rollout, VAE slicing", 36.25, "run 5, case 6", {"rollout_steps": 2}),
    ("same, VAE slicing off", 40.76, "run 5, case 6", {"rollout_steps": 2, "vae_slicing": False}),
    ("same, NF4 base", 18.62, "run 5, case 7", {"rollout_steps": 2, "quantize_base": "nf4"}),
    ("same, int8 base", 26.13, "run 5, case 7", {"rollout_steps": 2, "quantize_base": "int8"}),
    ("slicing off, VAE checkpointing off", 50.15, "run 3, case 4", {"vae_slicing": False, "vae_gradient_checkpointing": False}),
    ("slicing off, reward in fp32", 42.80, "run 3, case 4", {"vae_slicing": False, "reward_dtype": "float32"}),
    ("slicing off, transformer checkpointing off", 77.81, "run 3, case 4", {"vae_slicing": False, "transformer_gradient_checkpointing": False}),
    ("LoRA, 1024 px, 25-step rollout, slicing off", 53.83, "run 2, case 2", {"resolution": 1024, "vae_slicing": False}),
    ("full fine-tuning, pure bf16, 720 px, slicing off", 97.94, "run 3, case 3", {"use_peft": False, "vae_slicing": False}),
]  # fmt: skip


def recipe(changes: dict, autocast: str | None) -> Recipe:
    base = dict(
        model=FLUX,
        resolution=720,
        dtype="bfloat16",
        trainable_dtype="bfloat16",
        lora_r=64,
        lora_alpha=64,
        reward="hpsv2.1",
        reward_dtype="bfloat16",
        autocast=autocast,
    )
    return Recipe(**{**base, **changes})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--autocast", default="cuda", choices=["cuda", "none"])
    parser.add_argument("--only", type=int, nargs="*", help="case numbers (0-based) to run")
    args = parser.parse_args()
    autocast = None if args.autocast == "none" else args.autocast
    print("| case (record) | estimate | record | estimate / record |")
    print("| --- | --- | --- | --- |")
    start = time.perf_counter()
    for i, (label, record, source, changes) in enumerate(CASES):
        if args.only and i not in args.only:
            continue
        plan = estimate(recipe(changes, autocast), without_checkpointing=False)
        peak = plan.peak_bytes() / GB
        print(f"| {label} ({source}) | {peak:.2f} GB | {record:.2f} GB | {peak / record:.3f} |", flush=True)
    print(f"\n({time.perf_counter() - start:.0f} s, autocast {args.autocast})")


if __name__ == "__main__":
    main()
