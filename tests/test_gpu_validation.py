"""benchmarks/gpu_validation.py end to end on the CPU (`--dry_run`): the one-shot device script must not rot
between the sessions that get a GPU."""

import json
import os
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_validation.py"


def test_dry_run_of_the_benchmark_and_rollout_sync_cases(tmp_path):
    env = {**os.environ, "OUT": str(tmp_path), "OMP_NUM_THREADS": "2"}
    subprocess.run(
        [sys.executable, str(SCRIPT), "--dry_run", "--only", "1", "6", "11"],
        env=env, check=True, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    results = json.loads((tmp_path / "gpu_validation.json").read_text())
    assert results["statuses"] == {"1": "ok", "6": "ok", "11": "ok"}, results["statuses"]
    slicing = next(c for c in results["cases"] if c["id"] == "6")["variants"]
    assert [v["record"]["config"]["vae_slicing"] for v in slicing.values()] == [True, False]
    records = [json.loads(line) for line in (tmp_path / "bench_step.jsonl").read_text().splitlines()]
    assert len(records) == 3 and all(r["config"]["model"] == "flux-dev" for r in records)


def test_unknown_case_ids_are_refused(tmp_path):
    env = {**os.environ, "OUT": str(tmp_path)}
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--dry_run", "--only", "12"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode != 0 and "unknown case ids ['12']" in done.stderr
