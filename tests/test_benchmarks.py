"""benchmarks/bench_step.py on the CPU: the records' fields, never the timings' values."""

import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_step.py"
SMALL = ["--device", "cpu", "--warmup", "0", "--repeats", "1"]


@pytest.fixture(scope="module")
def bench_step():
    spec = importlib.util.spec_from_file_location("bench_step", BENCH)
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_step"] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def _check_record(record, bench_step, *, full=False):
    assert record["benchmark"] == "srpo_step"
    assert record["device"] and record["date"] and record["versions"]["torch"]
    assert set(record["phases"]) == set(bench_step.PHASES)
    for name, phase in record["phases"].items():
        assert phase["median_s"] > 0, name
        assert len(phase["all_s"]) == record["config"]["repeats"]
        assert phase["peak_memory_bytes"] is None  # CPU
    step = record["step_median_s"]
    assert step > 0 and record["images_per_s"] == pytest.approx(record["config"]["batch_size"] / step)
    # The phases cover the step; the little left outside them is bookkeeping.
    assert record["phases_sum_median_s"] <= step * 1.02 + 1e-3
    assert record["phases_sum_median_s"] >= 0.5 * step
    # MFU is null on a CPU (no peak given); model FLOPs are counted anyway.
    assert record["peak_tflops"] is None and record["mfu_step"] is None and record["mfu_rollout"] is None
    assert record["peak_memory_bytes"] is None and record["peak_rss_bytes"] > 0
    flops = record["flops"]
    for key in ["transformer_forward_B", "transformer_forward_2B", "vae_decode_forward_2B", "reward_forward_2B"]:
        assert flops[key] > 0, key
    assert flops["transformer_forward_2B"] == 2 * flops["transformer_forward_B"]
    assert 0 < flops["reward_image_forward_2B"] < flops["reward_forward_2B"]
    assert flops["transformer_backward_factor"] == (2 if full else 1)
    assert flops["rollout"] == record["config"]["rollout_steps"] * flops["transformer_forward_B"]
    assert flops["step"] > flops["rollout"]
    assert record["achieved_tflops_step"] > 0
    params = record["params"]
    assert 0 < params["trainable"] <= params["transformer"]
    assert record["optimizer_state_bytes"] >= 2 * record["trainable_param_bytes"]  # AdamW: two moments
    assert "excluded" in record["text_encoding"]
    assert all(math.isfinite(r) for r in record["last_rewards"])
    json.dumps(record)  # serialisable as it is


def test_tiny_bench_record(bench_step, tmp_path):
    out = tmp_path / "runs.jsonl"
    (record,) = bench_step.main(["--model", "tiny", "--rollout_steps", "3", "--json_out", str(out), *SMALL])
    _check_record(record, bench_step)
    assert record["config"]["lora_rank"] == 8 and record["config"]["resolution"] == 64
    assert 0 < record["last_grad_norm"] < math.inf  # the LoRA gets gradients through both checkpointed models
    assert json.loads(out.read_text().splitlines()[-1])["step_median_s"] == record["step_median_s"]
    assert "rollout" in bench_step.summary(record)


def test_compiled_blocks_and_vae_slicing_record(bench_step):
    argv = ["--model", "tiny", "--rollout_steps", "2", "--compile", "regions", "--compile_backend", "aot_eager"]
    (record,) = bench_step.main([*argv, "--no-vae_slicing", "--device", "cpu", "--warmup", "1", "--repeats", "1"])
    _check_record(record, bench_step)
    assert record["config"]["compile"] == "regions" and record["config"]["vae_slicing"] is False
    assert len(record["warmup_s"]) == 1 and record["warmup_s"][0] > 0
    assert record["dynamo_counters"]["stats"]["unique_graphs"] >= 2  # at least one graph per block kind
    assert 0 < record["last_grad_norm"] < math.inf  # gradients flow through the compiled, checkpointed blocks


def test_tiny_full_fine_tuning_record(bench_step):
    args = bench_step.parse_args(["--model", "tiny", "--full", "--rollout_steps", "2", *SMALL])
    record = bench_step.run_case(args)
    _check_record(record, bench_step, full=True)
    assert 0 < record["last_grad_norm"] < math.inf
    assert record["params"]["trainable"] == record["params"]["transformer"]
    estimate = record["full_finetune_memory_estimate"]
    assert estimate["pure_bf16"]["total"] == 8 * record["params"]["transformer"]


def test_flux_dev_architecture_builds_with_one_block_each(bench_step):
    """FLUX.1-dev's widths (3072, 24 heads, T5 width 4096, 16 latent channels), 1 + 1 blocks, 64 px."""
    argv = ["--model", "flux-dev", "--dtype", "bfloat16", "--num_layers", "1", "--num_single_layers", "1"]
    argv += ["--reward_layers", "1", "--resolution", "64", "--max_sequence_length", "16", "--rollout_steps", "1"]
    (record,) = bench_step.main([*argv, *SMALL])
    _check_record(record, bench_step)
    assert record["config"]["lora_rank"] == 64
    assert 5e8 < record["params"]["transformer"] < 6e8  # 1 double + 1 single block of FLUX.1-dev
    assert 8e7 < record["params"]["vae"] < 9e7  # FLUX.1-dev's VAE: 84 M
    assert record["params"]["trainable_dtype"] == "torch.bfloat16"


def test_compare_trainer_is_tiny_only(bench_step):
    with pytest.raises(SystemExit):
        bench_step.parse_args(["--model", "flux-dev", "--compare_trainer"])
    with pytest.raises(SystemExit):
        bench_step.parse_args(["--resolution", "72"])
