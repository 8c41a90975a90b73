"""A second run never silently replaces the first: `SRPOTrainer.train()` and `srpo-trl train` refuse an output folder
that holds a previous result, before the first step (the command line before any model loads), leaving its bytes as
they were; a resumed run keeps the checkpoints it continues from; an explicit overwrite replaces the result and
nothing else. (`srpo-trl demo` and `srpo-trl eval` are checked on the demo's own folder in test_demo_and_card.py.)"""

import hashlib
import os

import pytest
import torch
from datasets import Dataset
from peft import LoraConfig
from tiny_recipe import write_tiny_recipe

from srpo_trl import ColorWordReward, SRPOTrainer
from srpo_trl.cli import main
from srpo_trl.output_folder import previous_result
from srpo_trl.testing import tiny_colour_flux_pipeline

PROMPTS = Dataset.from_dict({"prompt": ["a cat", "a dog on a hill", "a house", "the sea"]})


def folder_bytes(folder) -> dict[str, str]:
    """`{relative path: sha256}` of every file under `folder`."""
    digests = {}
    for root, _, names in os.walk(folder):
        for name in names:
            path = os.path.join(root, name)
            with open(path, "rb") as f:
                digests[os.path.relpath(path, folder)] = hashlib.sha256(f.read()).hexdigest()
    return digests


def _trainer(config, out, seed: int, **overrides):
    settings = dict(max_steps=2, save_strategy="steps", save_steps=1, learning_rate=5e-3, seed=seed)
    args = config(output_dir=str(out), **{**settings, **overrides})
    torch.manual_seed(seed)
    lora = LoraConfig(r=4, lora_alpha=8, init_lora_weights="gaussian")
    return SRPOTrainer(
        tiny_colour_flux_pipeline(0), ColorWordReward(), args=args, train_dataset=PROMPTS, peft_config=lora
    )


@pytest.fixture
def first_run(config, tmp_path):
    """A finished 2-step run with a checkpoint per step and its saved result, plus a file of the user's own."""
    out = tmp_path / "run"
    trainer = _trainer(config, out, seed=0)
    trainer.train()
    trainer.save_model()
    (out / "notes.txt").write_text("my notes")
    assert {"checkpoint-1", "checkpoint-2", "pytorch_lora_weights.safetensors"} <= set(previous_result(str(out)))
    return out


def test_a_second_run_into_a_used_folder_stops_before_its_first_step(config, first_run):
    before = folder_bytes(first_run)
    second = _trainer(config, first_run, seed=1)  # another seed, no resume: what silently replaced the first run
    steps = []
    second.compute_loss = lambda *a, **k: steps.append(1)  # noqa: ARG005 - never reached
    with pytest.raises(FileExistsError) as refusal:
        second.train()
    message = str(refusal.value)
    assert "holds a previous result (pytorch_lora_weights.safetensors, reward_curve.png" in message
    assert "checkpoint-1, checkpoint-2)" in message
    assert "train(resume_from_checkpoint=True)" in message and "SRPOConfig(overwrite_output_dir=True)" in message
    assert not steps and second.state.global_step == 0
    assert folder_bytes(first_run) == before


def test_a_resumed_run_keeps_the_checkpoints_it_continues_from(config, first_run):
    before = folder_bytes(first_run)
    resumed = _trainer(config, first_run, seed=0, max_steps=3)
    resumed.train(resume_from_checkpoint=True)
    assert resumed.state.global_step == 3
    after = folder_bytes(first_run)
    kept = {path: digest for path, digest in before.items() if path.startswith(("checkpoint-1", "checkpoint-2"))}
    assert kept and all(after[path] == digest for path, digest in kept.items())
    assert "checkpoint-3/pytorch_lora_weights.safetensors" in after


def test_the_config_s_resume_from_checkpoint_resumes_too(config, first_run):
    """`srpo-trl train --resume_from_checkpoint true` reaches `train()` through the config, as the string "true"."""
    resumed = _trainer(config, first_run, seed=0, max_steps=3, resume_from_checkpoint="true")
    resumed.train()
    assert resumed.state.global_step == 3


def test_overwrite_output_dir_replaces_the_previous_result_and_nothing_else(config, first_run):
    before = folder_bytes(first_run)
    second = _trainer(config, first_run, seed=1, max_steps=1, overwrite_output_dir=True)
    second.train()
    second.save_model()
    after = folder_bytes(first_run)
    assert not (first_run / "checkpoint-2").exists()  # the first run's, gone: it would be the "last" checkpoint
    assert (
        after["checkpoint-1/pytorch_lora_weights.safetensors"]
        != before["checkpoint-1/pytorch_lora_weights.safetensors"]
    )
    assert after["pytorch_lora_weights.safetensors"] != before["pytorch_lora_weights.safetensors"]
    assert after["notes.txt"] == before["notes.txt"]  # not a result: kept


def test_srpo_trl_train_refuses_a_used_folder_before_loading_anything_and_resumes_on_request(tmp_path, monkeypatch):
    recipe = write_tiny_recipe(
        tmp_path, reward_funcs=["color"], positive_control_words=["blue"], negative_control_words=["red"],
        save_strategy="steps", save_steps=1,
    )  # fmt: skip
    assert main(["train", "--config", str(recipe)]) == 0
    out = tmp_path / "out"
    before = folder_bytes(out)
    assert "checkpoint-2/trainer_state.json" in before and "pytorch_lora_weights.safetensors" in before

    import srpo_trl.scripts.train as script

    def no_loading(*args, **kwargs):
        raise AssertionError("loaded the prompts or a model before checking the output folder")

    with monkeypatch.context() as patched:
        patched.setattr(script, "load_prompt_dataset", no_loading)
        patched.setattr(script, "SRPOTrainer", no_loading)
        with pytest.raises(SystemExit) as refusal:
            main(["train", "--config", str(recipe), "--seed", "1"])
    assert refusal.value.code == 2
    assert folder_bytes(out) == before

    assert main(["train", "--config", str(recipe), "--max_steps", "3", "--resume_from_checkpoint", "true"]) == 0
    after = folder_bytes(out)
    assert after["checkpoint-2/trainer_state.json"] == before["checkpoint-2/trainer_state.json"]
    assert "checkpoint-3/trainer_state.json" in after
