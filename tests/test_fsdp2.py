"""FSDP2 for real on CPUs: 2 processes (gloo), the transformer sharded by accelerate's `fully_shard` through the
Trainer, for a LoRA and for full fine-tuning (tests/scripts/save_resume.py; it explains how FSDP is switched on for
a CPU run). Checked: the sharded steps equal the unsharded (DDP) ones; the checkpoint and the final result hold the
whole, gathered model and load with stock diffusers; a resume restores the sharded weights and the optimizer and
ends where the uninterrupted run did; only the main process writes.

First, on one process, what `_save` does with the state dict the Trainer hands over under FSDP and DeepSpeed."""

import json
import os
import subprocess
import sys

import pytest
import torch
from distributed_saving import allowed_for_other_ranks, files_in, lora_loaded_by_diffusers, read_records, writers

SCRIPT = os.path.join(os.path.dirname(__file__), "scripts", "save_resume.py")
KINDS = ["lora", "full"]
#: A LoRA of each family besides FLUX.1, its blocks wrapped as its packaged `fsdp2_<family>.yaml` (its transformer's
#: `_no_split_modules`).
FAMILY_BLOCKS = {
    "flux3-lora": {"Flux3ModeTransformerBlock", "Flux3SingleTransformerBlock"},
    "z-image-lora": {"ZImageTransformerBlock"},
    "sd3-lora": {"JointTransformerBlock"},
    "qwen-image21-lora": {"QwenImage21TransformerBlock"},
    "wan-lora": {"WanTransformerBlock"},
}
FAMILY_KINDS = list(FAMILY_BLOCKS)


def _trainer(config, tmp_path, kind: str):
    from datasets import Dataset
    from peft import LoraConfig

    from srpo_trl import ColorWordReward, SRPOTrainer
    from srpo_trl.testing import tiny_colour_flux_pipeline

    lora = LoraConfig(r=4, lora_alpha=4, init_lora_weights="gaussian") if kind == "lora" else None
    prompts = Dataset.from_dict({"prompt": ["a cat", "a dog"]})
    return SRPOTrainer(
        tiny_colour_flux_pipeline(0), ColorWordReward(), args=config(), train_dataset=prompts, peft_config=lora
    )


@pytest.mark.parametrize("kind", KINDS)
def test_save_writes_the_state_dict_it_is_handed(config, tmp_path, kind):
    """Under FSDP2 and ZeRO-3 the module holds shards and the Trainer hands over the gathered whole: that is saved."""
    trainer = _trainer(config, tmp_path, kind)
    trainable = {n for n, p in trainer.model.named_parameters() if p.requires_grad}
    handed = {n: t + 0.5 for n, t in trainer.model.state_dict().items()}  # unlike the module's own weights
    trainer._save(str(tmp_path / "saved"), state_dict=handed)
    loaded = _loaded_by_diffusers(kind, tmp_path / "saved")
    assert set(loaded) == trainable
    assert all(torch.equal(loaded[n], handed[n]) for n in loaded)


def test_save_without_gathered_weights_writes_no_weights(config, tmp_path, caplog):
    """ZeRO-3 without `stage3_gather_16bit_weights_on_model_save`: the Trainer hands over `{}` and saves DeepSpeed's
    own checkpoint; an empty LoRA file must not stand in for the model."""
    trainer = _trainer(config, tmp_path, "lora")
    trainer._save(str(tmp_path / "saved"), state_dict={})
    assert sorted(os.listdir(tmp_path / "saved")) == ["README.md", "training_args.bin"]
    assert "no gathered weights" in caplog.text


def test_save_writes_nothing_on_other_processes(config, tmp_path, monkeypatch):
    trainer = _trainer(config, tmp_path, "lora")
    monkeypatch.setattr(type(trainer.args), "should_save", property(lambda self: False))  # as on rank 1
    trainer.save_model(str(tmp_path / "saved"))
    assert not (tmp_path / "saved").exists()


def _kinds_to_launch(request) -> list[str]:
    """The kinds the selected tests of this module read, so that `-k wan` launches Wan's runs alone: a test with a
    `kind` reads that one, the others every FLUX.1 kind."""
    wanted = set()
    for item in request.session.items:
        if getattr(item, "module", None) is not request.module or "launched" not in item.fixturenames:
            continue
        callspec = getattr(item, "callspec", None)
        kind = callspec.params.get("kind") if callspec is not None else None
        wanted.update([kind] if kind is not None else KINDS)
    return [kind for kind in KINDS + FAMILY_KINDS if kind in wanted]


@pytest.fixture(scope="module")
def launched(tmp_path_factory, request):
    root = tmp_path_factory.mktemp("fsdp2")
    command = [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines",
        "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "29541", SCRIPT,
        str(root / "records"), str(root / "runs"), *_kinds_to_launch(request),
    ]  # fmt: skip
    # ACCELERATE_USE_CPU: accelerate's multi-process launcher, on CPUs with the gloo backend.
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    return root


def _record(root, kind: str, phase: str) -> dict:
    return torch.load(root / "records" / f"{kind}-{phase}.pt")


def _max_difference(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max((a[k] - b[k]).abs().max().item() for k in a)


def _transformer_loaded_by_diffusers(folder) -> dict:
    from diffusers import FluxTransformer2DModel

    with open(os.path.join(folder, "transformer", "config.json")) as f:
        assert json.load(f)["_class_name"] == "FluxTransformer2DModel"  # not FSDP2's FSDPFluxTransformer2DModel
    return dict(FluxTransformer2DModel.from_pretrained(str(folder), subfolder="transformer").state_dict())


def _loaded_by_diffusers(kind: str, folder) -> dict:
    return lora_loaded_by_diffusers(folder) if kind == "lora" else _transformer_loaded_by_diffusers(folder)


@pytest.mark.extended
@pytest.mark.parametrize("kind", KINDS)
def test_sharded_steps_equal_the_unsharded_ones(launched, kind):
    ddp, sharded = _record(launched, kind, "ddp"), _record(launched, kind, "fsdp2")
    assert sharded["fsdp2"] and sharded["model_class"].startswith("FSDP") and sharded["world"] == 2
    assert not ddp["fsdp2"] and ddp["world"] == 2
    assert _max_difference(sharded["initial"], ddp["initial"]) == 0.0
    difference = _max_difference(sharded["final"], ddp["final"])
    print(f"{kind}: FSDP2 against DDP after 2 steps: {difference:.2e}")
    assert difference <= 1e-6
    assert _max_difference(ddp["final"], ddp["initial"]) > 1e-3  # the steps did move the weights (lr 1e-3 each)


@pytest.mark.extended
@pytest.mark.parametrize("kind", KINDS)
def test_resume_under_fsdp2_continues_exactly(launched, kind):
    ddp, sharded, resumed = (_record(launched, kind, phase) for phase in ("ddp", "fsdp2", "resumed"))
    assert resumed["fsdp2"] and resumed["global_step"] == 2
    # It started from the checkpoint's weights (one step in), not from the initial ones...
    assert _max_difference(resumed["at_start"], resumed["initial"]) > 5e-4
    # ...and the optimizer's state: AdamW's second step depends on the first one's moments.
    straight = _max_difference(resumed["final"], sharded["final"])
    unsharded = _max_difference(resumed["final"], ddp["final"])
    print(f"{kind}: resumed against uninterrupted FSDP2: {straight:.2e}, against DDP: {unsharded:.2e}")
    assert straight <= 1e-6 and unsharded <= 1e-6


@pytest.mark.extended
@pytest.mark.parametrize("kind", KINDS)
def test_the_checkpoint_and_the_result_are_the_whole_model_for_stock_diffusers(launched, kind):
    resumed = _record(launched, kind, "resumed")
    checkpoint = launched / "runs" / f"{kind}-fsdp2" / "checkpoint-1"
    result = launched / "runs" / f"{kind}-resumed"
    # The checkpoint's diffusers weights are those the resumed run started from; the result those it ended with.
    assert _max_difference(_loaded_by_diffusers(kind, checkpoint), resumed["at_start"]) == 0.0
    assert _max_difference(_loaded_by_diffusers(kind, result), resumed["final"]) == 0.0


@pytest.mark.extended
def test_under_fsdp2_only_the_main_process_writes(launched):
    records = read_records(launched / "records")
    for kind in KINDS:
        for phase in ("fsdp2", "resumed"):
            folder = launched / "runs" / f"{kind}-{phase}"
            written, present = writers(records, folder), files_in(folder)
            assert present <= set(written)  # every file there was seen being written: the records miss no writer
            by_others = {path: ranks - {0} for path, ranks in written.items() if ranks - {0}}
            assert all(allowed_for_other_ranks(p, rank) for p, ranks in by_others.items() for rank in ranks), by_others
            assert all(written[path] == {0} for path in present if not allowed_for_other_ranks(path, 1))
            if phase == "fsdp2":
                # accelerate's FSDP files (FULL_STATE_DICT: gathered, written by the main process), to resume from
                assert {"checkpoint-1/pytorch_model_fsdp.bin", "checkpoint-1/optimizer.bin"} <= present
                assert by_others["checkpoint-1/rng_state_1.pth"] == {1}  # the Trainer's per-process RNG state


@pytest.mark.extended
@pytest.mark.parametrize("kind", FAMILY_KINDS)
def test_fsdp2_wraps_each_familys_blocks_and_its_sharded_steps_and_resume_equal_the_unsharded_ones(launched, kind):
    """FLUX.3 [klein], Z-Image, SD3, Qwen-Image 2.1 and Wan 2.1 (5-frame videos) under FSDP2 with their packaged
    configs' blocks: `fully_shard` wrapped those blocks, two sharded steps equal two DDP steps, and a resume after step 1 ends where the
    uninterrupted run did."""
    ddp, sharded, resumed = (_record(launched, kind, phase) for phase in ("ddp", "fsdp2", "resumed"))
    assert sharded["fsdp2"] and sharded["world"] == 2
    print(f"{kind}: classes FSDP2 wrapped:", sharded["wrapped"])
    assert FAMILY_BLOCKS[kind] <= set(sharded["wrapped"])
    assert _max_difference(sharded["initial"], ddp["initial"]) == 0.0
    difference = _max_difference(sharded["final"], ddp["final"])
    straight = _max_difference(resumed["final"], sharded["final"])
    print(f"{kind}: FSDP2 against DDP {difference:.2e}, resumed against uninterrupted {straight:.2e}")
    assert difference <= 1e-6 and straight <= 1e-6
    assert _max_difference(ddp["final"], ddp["initial"]) > 1e-3
