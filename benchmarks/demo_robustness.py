"""`srpo-trl demo` across seeds and thread counts: does the held-out gain hold everywhere?

Each (seed, thread count, words) runs the demo CLI in a fresh process with `OMP_NUM_THREADS` set, and the
table reports from its `demo_results.json`: the held-out SRP reward before and after, the fraction of
held-out samples the shipped reward reads as photos, the fraction whose shape, colour and position all read
as prompted, and the wall time. `--parallel 2` runs two single-thread processes at once on a 2-core machine
(the rewards do not depend on it; only their times do, so time single-thread runs without it).

Examples:

    python benchmarks/demo_robustness.py --seeds 0 1 2 --threads 1 2 --output docs/assets/demo_robustness.json
    python benchmarks/demo_robustness.py --seeds 0 --threads 2 --words drawing photo
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor


def run_one(seed: int, threads: int, words: list[str], max_steps: int, workdir: str, extra: list[str]) -> dict:
    out = os.path.join(workdir, f"seed{seed}-threads{threads}-{'-'.join(words)}")
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    command = [sys.executable, "-m", "srpo_trl.cli", "demo", "--output_dir", out, "--seed", str(seed)]
    command += ["--max_steps", str(max_steps), "--words", *words, *extra]
    subprocess.run(command, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    with open(os.path.join(out, "demo_results.json")) as f:
        return json.load(f)


def row(result: dict) -> str:
    reward = result["held_out_srp_reward"]
    before, after = result["held_out_content"]["before"], result["held_out_content"]["after"]
    return (
        f"| {result['seed']} | {result['threads']} | +{result['words']['positive']} / -{result['words']['negative']} | "
        f"{reward['before']:.4f} | {reward['after']:.4f} | {reward['after'] - reward['before']:+.4f} | "
        f"{before['photo']:.0%} -> {after['photo']:.0%} | {before['content']:.0%} -> {after['content']:.0%} | "
        f"{before['shape']:.0%} / {before['colour']:.0%} -> {after['shape']:.0%} / {after['colour']:.0%} | "
        f"{result['seconds']:.0f} |"
    )


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--words", nargs=2, default=["photo", "drawing"])
    parser.add_argument("--max_steps", type=int, default=300, help="The demo's --max_steps (default: the demo's).")
    parser.add_argument("--parallel", type=int, default=1, help="Processes at once (single-thread runs only).")
    parser.add_argument("--output", help="Write every run's results to this JSON file.")
    parser.add_argument("--content_weight", type=float, help="The demo's --content_weight (default: the demo's).")
    parser.add_argument("--learning_rate", type=float, help="The demo's --learning_rate (default: the demo's).")
    args = parser.parse_args(argv)
    extra = []
    for name in ("content_weight", "learning_rate"):
        if getattr(args, name) is not None:
            extra += [f"--{name}", str(getattr(args, name))]
    jobs = [(seed, threads) for threads in args.threads for seed in args.seeds]
    with tempfile.TemporaryDirectory() as workdir:
        with ThreadPoolExecutor(max_workers=args.parallel) as pool:
            results = list(
                pool.map(lambda job: run_one(job[0], job[1], args.words, args.max_steps, workdir, extra), jobs)
            )
    print(
        "| seed | threads | words | SRP before | SRP after | gain | read as photo | content as prompted | "
        "shape / colour | seconds |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for result in results:
        print(row(result))
    if args.output:
        with open(args.output, "w") as f:
            json.dump(results, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
