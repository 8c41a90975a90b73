"""DeepSpeed ZeRO-2 and ZeRO-3 for real on CPUs: 2 processes (gloo), the shipped accelerate configs launched as they
are (their mixed precision, their ZeRO settings), for a LoRA and for full fine-tuning (tests/scripts/zero_save_resume.py
explains what DeepSpeed needs on a CPU). Checked: the ZeRO steps equal plain DDP's; a resume restores the partitioned
weights and the optimizer and ends where the uninterrupted run did; the checkpoint and the final result hold the whole
model and load with stock diffusers; only the main process writes, except DeepSpeed's per-rank checkpoint shards.

Two launches of about half a minute each: in the `extended` tier (`.ci/run` runs it after the README's command)."""

import os
import subprocess
import sys

import pytest
import torch
from distributed_saving import allowed_for_other_ranks, files_in, lora_loaded_by_diffusers, read_records, writers

pytestmark = pytest.mark.extended

ROOT = os.path.join(os.path.dirname(__file__), "..")
SCRIPT = os.path.join(os.path.dirname(__file__), "scripts", "zero_save_resume.py")
CONFIGS = os.path.join(ROOT, "src", "srpo_trl", "accelerate_configs")
KINDS = ["lora", "full"]
STAGES = ["zero2", "zero3"]
PORTS = {"zero2": 29551, "zero3": 29552}


def zero_rank_shard(path: str, rank: int) -> bool:
    """DeepSpeed's own checkpoint, written by each process for its partition: `global_stepN/zero_pp_rank_{rank}_*`
    (optimizer states under ZeRO-2 and -3, and the parameters' partitions under ZeRO-3)."""
    return os.path.basename(os.path.dirname(path)).startswith("global_step") and os.path.basename(path).startswith(
        f"zero_pp_rank_{rank}_"
    )


@pytest.fixture(scope="module", params=STAGES)
def launched(request, tmp_path_factory):
    stage = request.param
    root = tmp_path_factory.mktemp(stage)
    command = [
        sys.executable, "-m", "accelerate.commands.launch", "--config_file", os.path.join(CONFIGS, f"deepspeed_{stage}.yaml"),
        "--num_processes", "2", "--main_process_port", str(PORTS[stage]), SCRIPT, str(root / "records"),
        str(root / "runs"), stage, *KINDS,
    ]  # fmt: skip
    # No ACCELERATE_USE_CPU: it would switch DeepSpeed off (the script sets the gloo backend itself).
    env = {k: v for k, v in os.environ.items() if k != "ACCELERATE_USE_CPU"}
    env["OMP_NUM_THREADS"] = "1"
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env, cwd=os.path.dirname(SCRIPT))
    assert result.returncode == 0, result.stderr[-3000:]
    return stage, root


def _record(root, kind: str, phase: str) -> dict:
    return torch.load(root / "records" / f"{kind}-{phase}.pt")


def _max_difference(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max((a[k] - b[k]).abs().max().item() for k in a)


def _loaded_by_diffusers(kind: str, folder) -> dict:
    if kind == "lora":
        return lora_loaded_by_diffusers(folder)
    from diffusers import FluxTransformer2DModel

    return dict(FluxTransformer2DModel.from_pretrained(str(folder), subfolder="transformer").state_dict())


@pytest.mark.parametrize("kind", KINDS)
def test_zero_steps_equal_ddp(launched, kind):
    stage, root = launched
    zero, ddp = _record(root, kind, stage), _record(root, kind, "ddp")
    assert zero["zero_stage"] == int(stage[-1]) and zero["world"] == 2
    assert zero["mixed_precision"] == "no"  # the shipped config leaves it to SRPOConfig.bf16 (off on a CPU)
    assert ddp["zero_stage"] is None and ddp["model_class"] == "DistributedDataParallel" and ddp["world"] == 2
    assert _max_difference(zero["initial"], ddp["initial"]) == 0.0
    difference = _max_difference(zero["final"], ddp["final"])
    print(f"{kind}: {stage} against DDP after 2 steps: {difference:.2e}")
    assert difference <= 2e-5
    assert _max_difference(ddp["final"], ddp["initial"]) > 1e-3  # the steps did move the weights (lr 1e-3 each)


@pytest.mark.parametrize("kind", KINDS)
def test_resume_under_zero_continues_exactly(launched, kind):
    stage, root = launched
    straight, resumed = _record(root, kind, stage), _record(root, kind, f"{stage}-resumed")
    assert resumed["global_step"] == 2
    # It started from the checkpoint's weights (one step in), not from the initial ones...
    assert _max_difference(resumed["at_start"], resumed["initial"]) > 5e-4
    # ...and the optimizer's state: AdamW's second step depends on the first one's moments.
    difference = _max_difference(resumed["final"], straight["final"])
    print(f"{kind}: {stage} resumed against uninterrupted: {difference:.2e}")
    assert difference <= 1e-6


@pytest.mark.parametrize("kind", KINDS)
def test_the_checkpoint_and_the_result_load_in_stock_diffusers(launched, kind):
    stage, root = launched
    resumed = _record(root, kind, f"{stage}-resumed")
    checkpoint = root / "runs" / f"{kind}-{stage}" / "checkpoint-1"
    result = root / "runs" / f"{kind}-{stage}-resumed"
    assert _max_difference(_loaded_by_diffusers(kind, checkpoint), resumed["at_start"]) == 0.0
    assert _max_difference(_loaded_by_diffusers(kind, result), resumed["final"]) == 0.0


def test_under_zero_only_the_main_process_writes_except_deepspeeds_shards(launched):
    stage, root = launched
    records = read_records(root / "records")
    for kind in KINDS:
        for phase in (stage, f"{stage}-resumed"):
            folder = root / "runs" / f"{kind}-{phase}"
            written, present = writers(records, folder), files_in(folder)
            assert present <= set(written)  # every file there was seen being written: the records miss no writer
            by_others = {path: ranks - {0} for path, ranks in written.items() if ranks - {0}}
            allowed = lambda path, rank: allowed_for_other_ranks(path, rank) or zero_rank_shard(path, rank)  # noqa: E731
            assert all(allowed(p, rank) for p, ranks in by_others.items() for rank in ranks), by_others
            assert all(written[path] == {0} for path in present if not allowed(path, 1))
            if phase == stage:
                shards = {p for p in by_others if zero_rank_shard(p, 1)}
                assert shards and all(p.startswith("checkpoint-1/global_step1/zero_pp_rank_1_") for p in shards)
                if stage == "zero3":  # the parameters themselves are partitioned: each rank saves its own
                    assert "checkpoint-1/global_step1/zero_pp_rank_1_mp_rank_00_model_states.pt" in shards
                assert by_others["checkpoint-1/rng_state_1.pth"] == {1}  # the Trainer's per-process RNG state
