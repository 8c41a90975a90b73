"""benchmarks/gpu_validation.py end to end on the CPU (`--dry_run`): the one-shot device script must not rot
between the sessions that get a GPU."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_validation.py"


def _dry_run(tmp_path, *extra: str, timeout: int) -> tuple[dict, list[dict]]:
    """The benchmark (1), VAE slicing (6) and rollout-sync (11) cases; their results and bench records."""
    env = {**os.environ, "OUT": str(tmp_path), "OMP_NUM_THREADS": "2"}
    budget = ["--budget_s", str(timeout)]  # the skip guard budgets a GPU lease: here the timeout is the limit
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--dry_run", *extra, *budget, "--only", "1", "6", "11"],
        env=env, capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-4000:]
    results = json.loads((tmp_path / "gpu_validation.json").read_text())
    records = [json.loads(line) for line in (tmp_path / "bench_step.jsonl").read_text().splitlines()]
    return results, records


def _check_cases(results: dict, records: list[dict], model: str, dtype: str) -> None:
    assert results["statuses"] == {"1": "ok", "6": "ok", "11": "ok"}, results["statuses"]
    slicing = next(c for c in results["cases"] if c["id"] == "6")["variants"]
    assert [v["status"] for v in slicing.values()] == ["ok", "ok"]
    assert [v["record"]["config"]["vae_slicing"] for v in slicing.values()] == [True, False]
    assert "rollout ran" in next(c for c in results["cases"] if c["id"] == "11")["note"]
    # One record per timed case (1, and both variants of 6; 11 times nothing), each with the case's LoRA rank and
    # step structure, shrunk to toy sizes.
    assert len(records) == 3 and all(r["config"]["model"] == model for r in records)
    for record in records:
        config = record["config"]
        assert config["lora_rank"] == 64 and config["resolution"] == 64 and config["device"] == "cpu"
        assert config["rollout_steps"] == 2 and config["warmup"] == 1 and config["repeats"] == 1
        assert config["dtype"] == config["reward_dtype"] == dtype
        assert record["params"]["trainable_dtype"] == f"torch.{dtype}"
        assert 0 < record["last_grad_norm"] < float("inf")


@pytest.mark.extended  # runs the benchmark script as its own process (about 12 s on 2 cores): the second tier
def test_dry_run_of_the_benchmark_and_rollout_sync_cases(tmp_path):
    """The default dry run: the tiny model in fp32, every case's logic in about a minute on any CPU."""
    results, records = _dry_run(tmp_path, timeout=600)
    _check_cases(results, records, "tiny", "float32")
    assert results["options"]["dry_run_model"] == "tiny"


@pytest.mark.slow  # bf16 at FLUX.1-dev's widths: minutes with AVX512-BF16, hours on an AVX2-only CPU
def test_dry_run_at_flux_dev_widths(tmp_path):
    """The same cases at FLUX.1-dev's widths (1 + 1 blocks) in the device run's bf16."""
    results, records = _dry_run(tmp_path, "--dry_run_model", "flux-dev", timeout=6 * 3600)
    _check_cases(results, records, "flux-dev", "bfloat16")
    assert all(5e8 < r["params"]["transformer"] < 6e8 for r in records)  # 1 double + 1 single block


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
