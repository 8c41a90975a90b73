"""Peak RSS and time to the first training step of `SRPOTrainer` with many prompts: the text-embedding cache.

The tiny test pipeline (`srpo_trl.testing.tiny_flux_pipeline`) with its T5 at `--max_sequence_length` (512, as
FLUX.1) and `--prompts` synthetic prompts made in code. Each (variant, count, run) runs in a fresh Python process,
which reports its peak RSS (`resource.getrusage(RUSAGE_SELF).ru_maxrss`), its RSS before the trainer is built
(imports, pipeline and dataset: the same in every variant) and the wall time from `SRPOTrainer(...)` to the end of
the first training step (`max_steps=1`).

Variants:

| variant | what runs |
| --- | --- |
| `head` | the original cache: `git show OLD_REF:src/srpo_trl/text_cache.py` (`--old_ref`, default `HEAD`; `4776f9a` has it), loaded from a temporary file; every prompt encoded and kept in RAM before training |
| `eager` | today's cache with an unbounded budget (`text_embedding_cache_memory_mb=1e9`): the same all-in-RAM behaviour |
| `lazy` | today's cache at its default budget: prompts encoded when first needed, in an LRU |
| `disk` | today's cache with `text_embedding_cache_dir` (a temporary folder): every prompt precomputed to disk, one batch in RAM at a time |

Encoding every prompt (`head`, `eager`, `disk`) takes about 40 ms a prompt at 512 tokens on 2 CPU cores, so at
100,000 prompts over an hour: give those variants smaller counts, and `--extrapolate_to` fits time and peak RSS
linearly in the count (through the counts measured) and reports them at that count.

Examples:

    python benchmarks/bench_text_cache.py --variants lazy --prompts 100000 --runs 3
    python benchmarks/bench_text_cache.py --variants head disk --prompts 1000 3000 --extrapolate_to 100000
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence

VARIANTS = ("head", "eager", "lazy", "disk")
WORDS = ("red", "blue", "quiet", "ancient", "neon", "misty", "golden", "tiny", "vast", "broken")
THINGS = ("cat", "lighthouse", "forest", "robot", "city street", "mountain lake", "portrait", "bowl of fruit")


def synthetic_prompts(count: int) -> list[str]:
    """`count` distinct prompts of 60-90 characters, like HPDv2's."""
    return [
        f"a {WORDS[i % 10]} {THINGS[i % 8]} at dusk, {WORDS[(i // 10) % 10]} light, detailed, photo number {i}"
        for i in range(count)
    ]


def rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def use_head_cache(old_ref: str) -> None:
    """Make the trainer build `old_ref`'s `TextEmbeddingCache` (the original, unbounded one)."""
    import importlib.util

    import srpo_trl.trainer

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    source = subprocess.run(
        ["git", "show", f"{old_ref}:src/srpo_trl/text_cache.py"], cwd=root, capture_output=True, text=True, check=True
    ).stdout
    if "memory_budget_mb" in source:
        raise SystemExit(f"{old_ref}'s text_cache.py already has the budget: give --old_ref 4776f9a")
    folder = tempfile.mkdtemp()
    path = os.path.join(folder, "head_text_cache.py")
    with open(path, "w") as f:
        f.write(source)
    spec = importlib.util.spec_from_file_location("head_text_cache", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)

    class HeadCache(module.TextEmbeddingCache):
        """The old class behind today's constructor and `precompute` contract (which it always completed)."""

        def __init__(self, adapter, device, cache_dir=None, memory_budget_mb=None):
            super().__init__(adapter, device, cache_dir)

        def precompute(self, prompts, rank=0, world_size=1) -> bool:
            super().precompute(prompts, rank, world_size)
            return True

    srpo_trl.trainer.TextEmbeddingCache = HeadCache


def child(variant: str, count: int, max_sequence_length: int, budget_mb: float | None, old_ref: str) -> dict:
    """One measurement, in this (fresh) process."""
    import torch
    from datasets import Dataset

    from srpo_trl import ColorWordReward, SRPOTrainer
    from srpo_trl.testing import tiny_flux_pipeline, tiny_srpo_config

    if variant == "head":
        use_head_cache(old_ref)
    work = tempfile.mkdtemp()
    overrides = {"max_steps": 1, "max_sequence_length": max_sequence_length}
    if variant == "eager":
        overrides["text_embedding_cache_memory_mb"] = 1e9
    elif budget_mb is not None:
        overrides["text_embedding_cache_memory_mb"] = budget_mb
    if variant == "disk":
        overrides["text_embedding_cache_dir"] = os.path.join(work, "cache")
    args = tiny_srpo_config(os.path.join(work, "out"), **overrides)
    pipe = tiny_flux_pipeline(0)
    dataset = Dataset.from_dict({"prompt": synthetic_prompts(count)})
    rss_before = rss_mib()

    start = time.perf_counter()
    trainer = SRPOTrainer(pipe, ColorWordReward(), args=args, train_dataset=dataset)
    built = time.perf_counter()
    trainer.train()
    end = time.perf_counter()
    cache = trainer.text_cache
    return {
        "variant": variant,
        "prompts": count,
        "max_sequence_length": max_sequence_length,
        "threads": torch.get_num_threads(),
        "seconds_to_first_step": end - start,
        "seconds_to_build_trainer": built - start,
        "rss_before_trainer_mib": rss_before,
        "peak_rss_mib": peak_rss_mib(),
        "cache_entries_in_memory": len(cache.memory),
        "cache_memory_mib": getattr(cache, "memory_bytes", None) and cache.memory_bytes / 2**20,
        "cache_peak_memory_mib": getattr(cache, "peak_memory_bytes", None) and cache.peak_memory_bytes / 2**20,
        "encoders_released": cache.encoders_released,
    }


def run_child(variant: str, count: int, options: argparse.Namespace) -> dict:
    command = [
        sys.executable, os.path.abspath(__file__), "--child", variant, str(count),
        "--max_sequence_length", str(options.max_sequence_length), "--old_ref", options.old_ref,
    ]  # fmt: skip
    if options.budget_mb is not None:
        command += ["--budget_mb", str(options.budget_mb)]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"{variant} x {count} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def linear_fit(points: list[tuple[int, float]], at: int) -> float:
    """Least-squares line through (count, value), evaluated at `at`."""
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    mean_x, mean_y = statistics.fmean(xs), statistics.fmean(ys)
    slope = sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys)) / sum((x - mean_x) ** 2 for x in xs)
    return mean_y + slope * (at - mean_x)


def summarise(records: list[dict], extrapolate_to: int | None) -> list[dict]:
    """Medians per (variant, count), plus a linear extrapolation per variant measured at several counts."""
    rows = []
    for variant in dict.fromkeys(r["variant"] for r in records):
        mine = [r for r in records if r["variant"] == variant]
        medians = []
        for count in sorted({r["prompts"] for r in mine}):
            runs = [r for r in mine if r["prompts"] == count]
            row = {"variant": variant, "prompts": count, "runs": len(runs), "extrapolated": False}
            for key in ("seconds_to_first_step", "peak_rss_mib", "rss_before_trainer_mib"):
                row[key] = statistics.median(r[key] for r in runs)
            row["encoders_released"] = runs[0]["encoders_released"]
            medians.append(row)
        rows += medians
        if extrapolate_to and len(medians) >= 2 and extrapolate_to not in {m["prompts"] for m in medians}:
            row = {"variant": variant, "prompts": extrapolate_to, "runs": 0, "extrapolated": True}
            for key in ("seconds_to_first_step", "peak_rss_mib", "rss_before_trainer_mib"):
                row[key] = linear_fit([(m["prompts"], m[key]) for m in medians], extrapolate_to)
            row["encoders_released"] = medians[-1]["encoders_released"]
            rows.append(row)
    return rows


def print_table(rows: list[dict]) -> None:
    print(
        "| variant | prompts | runs | time to first step (s) | peak RSS (MiB) | RSS before trainer (MiB) | encoders released |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        count = f"{r['prompts']:,}" + (" (extrapolated)" if r["extrapolated"] else "")
        print(
            f"| {r['variant']} | {count} | {r['runs']} | {r['seconds_to_first_step']:.1f} | {r['peak_rss_mib']:.0f} | "
            f"{r['rss_before_trainer_mib']:.0f} | {r['encoders_released']} |"
        )


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--variants", nargs="+", choices=VARIANTS, default=["head", "lazy"])
    p.add_argument("--prompts", nargs="+", type=int, default=[100_000], help="prompt counts to measure")
    p.add_argument("--runs", type=int, default=1, help="runs per (variant, count); the table shows medians")
    p.add_argument("--max_sequence_length", type=int, default=512)
    p.add_argument("--budget_mb", type=float, default=None, help="text_embedding_cache_memory_mb (default: its own)")
    p.add_argument("--extrapolate_to", type=int, default=None, help="fit each variant linearly and report this count")
    p.add_argument("--old_ref", default="HEAD", help="git revision whose text_cache.py the `head` variant runs")
    p.add_argument("--json_out", default=None, help="append every run's record to this JSON-lines file")
    p.add_argument("--child", nargs=2, metavar=("VARIANT", "COUNT"), help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> list[dict]:
    options = parse_args(argv)
    if options.child:
        variant, count = options.child
        print(json.dumps(child(variant, int(count), options.max_sequence_length, options.budget_mb, options.old_ref)))
        return []
    records = []
    for variant in options.variants:
        for count in options.prompts:
            for _ in range(options.runs):
                record = run_child(variant, count, options)
                print(json.dumps(record), flush=True)
                records.append(record)
                if options.json_out:
                    with open(options.json_out, "a") as f:
                        f.write(json.dumps(record) + "\n")
    rows = summarise(records, options.extrapolate_to)
    print_table(rows)
    return rows


if __name__ == "__main__":
    main()
