"""The memory tables of docs/distributed.md, produced by the planner (`srpo-trl plan`'s estimate).

    python benchmarks/plan_tables.py [--write docs/distributed.md] [--families FLUX.1-dev ...]

For each published family whose configs ship with srpo-trl: LoRA r=64 and full fine-tuning at the recipe's
defaults (bf16 weights, fp32 master weights, AdamW, 720 px, one prompt per process, HPSv2.1 in bf16, every memory
saver on, the step under CUDA's bf16 autocast; Wan at its recipes' 81 frames of 480 x 832, the rewards decoding
the first latent frame), on one GPU and on 8 with DDP, FSDP2, ZeRO-2 and ZeRO-3. Each family
and mode is traced once on the meta device; the engines only change what each process holds (`retarget`). A cell
says whether the peak per process, plus the allowance for the CUDA context and the allocator (1.5 GB + 5 % of the
card), fits a 24, 48, 80 or 141 GB card. CPU only, nothing downloaded, a few minutes on 2 cores.

`--write FILE` replaces what lies between `<!-- plan-tables:start -->` and `<!-- plan-tables:end -->` in FILE.
"""

from __future__ import annotations

import argparse
import re
import time

from srpo_trl.planning.estimate import Recipe, estimate, retarget
from srpo_trl.planning.report import GB, allowance_bytes

FAMILIES = {
    "FLUX.1-dev": "black-forest-labs/FLUX.1-dev",
    "FLUX.2-dev": "black-forest-labs/FLUX.2-dev",
    "Qwen-Image": "Qwen/Qwen-Image",
    "Chroma1-HD": "lodestones/Chroma1-HD",
    "SD3.5 Large": "stabilityai/stable-diffusion-3.5-large",
    "Z-Image-Turbo": "Tongyi-MAI/Z-Image-Turbo",
    "Wan 2.1 T2V 1.3B": "Wan-AI/Wan2.1-T2V-1.3B-Diffusers",
    "Wan 2.1 T2V 14B": "Wan-AI/Wan2.1-T2V-14B-Diffusers",
    "Wan 2.2 T2V A14B": "Wan-AI/Wan2.2-T2V-A14B-Diffusers",
}
#: The video recipes' settings (examples/configs/wan*.yaml): 81 frames at 480 x 832, the rewards' decode of the first
#: latent frame, and for A14B the window in the low-noise expert's levels.
VIDEO = {"resolution": (480, 832), "num_frames": 81, "decode_latent_frames": 1}
SETTINGS = {
    "Wan 2.1 T2V 1.3B": VIDEO,
    "Wan 2.1 T2V 14B": VIDEO,
    "Wan 2.2 T2V A14B": {**VIDEO, "window": (50, 16, 25)},
}
ENGINES = [("1 GPU", "none", 1), ("DDP x 8", "ddp", 8), ("FSDP2 x 8", "fsdp2", 8), ("ZeRO-2 x 8", "zero2", 8), ("ZeRO-3 x 8", "zero3", 8)]  # fmt: skip
CARDS = (24, 48, 80, 141)
START, END = "<!-- plan-tables:start -->", "<!-- plan-tables:end -->"


def family_table(label: str, model: str) -> list[str]:
    rows = [
        f"**{label}** (`{model}`)",
        "",
        f"| mode | engine | peak per process | {' | '.join(f'{c} GB' for c in CARDS)} |",
        "| --- | --- | --- | " + " | ".join("---" for _ in CARDS) + " |",
    ]
    for mode, use_peft in (("LoRA r=64", True), ("full", False)):
        settings = {"resolution": 720, **SETTINGS.get(label, {})}
        base = estimate(Recipe(model=model, use_peft=use_peft, **settings), without_checkpointing=False)
        for engine_label, engine, processes in ENGINES:
            plan = retarget(base, engine, processes)
            peak = plan.overall_peak()
            cells = ["fits" if peak + allowance_bytes(c * GB) <= c * GB else "-" for c in CARDS]
            mark = " (caching)" if plan.caching_peak and plan.caching_peak > plan.peak_bytes() else ""
            rows.append(f"| {mode} | {engine_label} | {peak / GB:.1f} GB{mark} | {' | '.join(cells)} |")
    return [*rows, ""]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--write", help="the Markdown file whose marked section to replace")
    parser.add_argument("--families", nargs="*", default=list(FAMILIES), choices=list(FAMILIES))
    args = parser.parse_args()
    start = time.perf_counter()
    lines = [START, ""]
    for label in args.families:
        lines += family_table(label, FAMILIES[label])
        print(f"{label}: {time.perf_counter() - start:.0f} s", flush=True)
    lines.append(f"(`python benchmarks/plan_tables.py`, {time.perf_counter() - start:.0f} s on a 2-core CPU.)")
    lines += ["", END]
    text = "\n".join(lines)
    if args.write:
        with open(args.write) as f:
            document = f.read()
        if START not in document or END not in document:
            raise SystemExit(f"{args.write} has no {START} ... {END} section")
        document = re.sub(re.escape(START) + ".*?" + re.escape(END), lambda _: text, document, flags=re.S)
        with open(args.write, "w") as f:
            f.write(document)
    print(text)


if __name__ == "__main__":
    main()
