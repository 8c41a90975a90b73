"""Two processes for real (`accelerate launch`, CPU, gloo): identical weights on every rank,
2 processes x batch 1 equal to 1 process x batch 2 when each process takes its slice of the noise, and only the
main process writes the result and the checkpoints (each process's own RNG state aside)."""

import json
import os
import subprocess
import sys

import pytest
import torch
from distributed_saving import allowed_for_other_ranks, files_in, lora_loaded_by_diffusers, read_records, writers

SCRIPT = os.path.join(os.path.dirname(__file__), "scripts", "distributed_train.py")


def _launch(out, batch: int, processes: int, *extra: str, port: int = 29533):
    os.makedirs(out, exist_ok=True)
    if processes == 1:
        command = [sys.executable, SCRIPT, str(out), str(batch), *extra]
    else:
        command = [
            sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(processes),
            "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port",
            str(port), SCRIPT, str(out), str(batch), *extra,
        ]  # fmt: skip
    # ACCELERATE_USE_CPU: accelerate's multi-process launcher, on CPUs with the gloo backend.
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    ranks = []
    for rank in range(processes):
        with open(os.path.join(out, f"rank{rank}.json")) as f:
            record = json.load(f)
        record.update(torch.load(os.path.join(out, f"rank{rank}.pt")))
        ranks.append(record)
    return ranks


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("distributed")
    return {
        "two": _launch(root / "two", 1, 2, port=29533),
        "two_dir": root / "two",
        "one": _launch(root / "one", 2, 1),
        "shared": _launch(root / "shared", 1, 2, "--shared_noise", port=29534),
    }


def _max_difference(a, b):
    return max((a[k] - b[k]).abs().max().item() for k in a)


@pytest.mark.extended
def test_both_ranks_end_with_identical_weights_and_different_prompts(runs):
    rank0, rank1 = runs["two"]
    assert rank0["world"] == 2
    assert _max_difference(rank0["weights"], rank1["weights"]) == 0.0
    assert not set(rank0["prompts"]) & set(rank1["prompts"])  # each rank drew its own prompts


@pytest.mark.extended
def test_two_processes_of_batch_one_equal_one_process_of_batch_two(runs):
    rank0, _ = runs["two"]
    (single,) = runs["one"]
    assert single["world"] == 1
    # The same samples in the same order: rank r holds global sample r of each step.
    assert sorted(single["prompts"]) == sorted(runs["two"][0]["prompts"] + runs["two"][1]["prompts"])
    assert rank0["losses"] == pytest.approx(single["losses"], abs=1e-6)
    moved = _max_difference(single["weights"], rank0["weights"])
    start = _max_difference(single["weights"], {k: torch.zeros_like(v) for k, v in single["weights"].items()})
    # AdamW divides by the gradients' running RMS, so last-bit differences in all-reduced gradients show up at
    # about 1e-4 in 3 steps of lr 0.05; the weights themselves are of order 0.1.
    assert moved <= 1e-3 and start > 0.05


@pytest.mark.extended
def test_recipe_noise_is_shared_and_per_process_noise_is_not(runs):
    shared0, shared1 = runs["shared"]
    two0, two1 = runs["two"]
    assert torch.equal(shared0["eps"], shared1["eps"])
    assert not torch.equal(two0["eps"], two1["eps"])


@pytest.mark.extended
def test_only_the_main_process_writes_the_result_and_the_checkpoints(runs):
    folder = runs["two_dir"] / "run"
    written = writers(read_records(runs["two_dir"]), folder)
    present = files_in(folder)
    assert {"pytorch_lora_weights.safetensors", "README.md", "training_args.bin"} <= present
    assert {"checkpoint-2/pytorch_lora_weights.safetensors", "checkpoint-2/optimizer.pt"} <= present
    assert present <= set(written)  # every file there was seen being written: the records miss no writer
    by_others = {path: ranks - {0} for path, ranks in written.items() if ranks - {0}}
    assert all(allowed_for_other_ranks(path, rank) for path, ranks in by_others.items() for rank in ranks), by_others
    assert by_others["checkpoint-2/rng_state_1.pth"] == {1}  # the Trainer's per-process RNG state, by design
    assert all(written[path] == {0} for path in present if not allowed_for_other_ranks(path, 1))


@pytest.mark.extended
def test_the_saved_lora_loads_in_stock_diffusers_as_trained(runs):
    trained = runs["two"][0]["weights"]
    loaded = lora_loaded_by_diffusers(runs["two_dir"] / "run")
    assert loaded.keys() == trained.keys()
    assert all(torch.equal(loaded[name], trained[name]) for name in trained)


@pytest.mark.slow
def test_qwen_image_trains_on_two_processes_as_on_one(tmp_path):
    """Qwen-Image on two processes (half a minute on 2 cores: `-m slow`): a disk text cache of unpadded prompts
    that the ranks fill together, true CFG in the rollout; identical weights on both ranks, and 2 x batch 1
    equal to 1 x batch 2."""
    two = _launch(tmp_path / "two", 1, 2, "--qwen_image", port=29535)
    (one,) = _launch(tmp_path / "one", 2, 1, "--qwen_image")
    assert _max_difference(two[0]["weights"], two[1]["weights"]) == 0.0
    assert two[0]["losses"] == pytest.approx(one["losses"], abs=1e-6)
    assert _max_difference(one["weights"], two[0]["weights"]) <= 1e-3
    assert len(list((tmp_path / "two" / "text-cache").rglob("*.safetensors"))) == 6  # every prompt, once
