"""Checkpoints: exact resume, atomic writes."""

import os

import pytest
import torch
from datasets import Dataset
from peft import LoraConfig

from srpo_trl import ColorWordReward, SRPOTrainer
from srpo_trl.testing import tiny_colour_flux_pipeline

TRAIN = Dataset.from_dict({"prompt": ["a cat", "a dog on a hill", "a house", "the sea", "a bird", "a tree"]})


def _trainer(config, out, lora: bool, **overrides):
    kwargs = dict(
        output_dir=str(out),
        max_steps=4,
        learning_rate=0.05 if lora else 1e-3,
        max_grad_norm=1.0,
        per_device_train_batch_size=2,
        rollout_steps=3,
        save_strategy="steps",
        save_steps=2,
        positive_control_words=["blue", "cyan"],  # a cycle longer than one step
        negative_control_words=["red", "yellow", "dark"],
    )
    args = config(**{**kwargs, **overrides})
    torch.manual_seed(0)  # the same initial LoRA in every trainer
    peft = LoraConfig(r=4, lora_alpha=4, init_lora_weights="gaussian") if lora else None
    return SRPOTrainer(
        tiny_colour_flux_pipeline(0), ColorWordReward(), args=args, train_dataset=TRAIN, peft_config=peft
    )


def _trainable(trainer):
    return {n: p.detach().clone() for n, p in trainer.model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("lora", [True, False], ids=["lora", "full"])
def test_resume_continues_exactly(tmp_path, config, lora):
    straight = _trainer(config, tmp_path / "straight", lora)
    straight.train()
    expected = _trainable(straight)

    first = _trainer(config, tmp_path / "split", lora, max_steps=2)
    first.train()
    checkpoint = tmp_path / "split" / "checkpoint-2"
    assert {"optimizer.pt", "scheduler.pt", "trainer_state.json", "rng_state.pth"} <= set(os.listdir(checkpoint))
    assert not (tmp_path / "split" / ".srpo-staging").exists()  # staged, published, and the staging folder gone

    resumed = _trainer(config, tmp_path / "split", lora)
    resumed.train(resume_from_checkpoint=str(checkpoint))
    assert resumed.state.global_step == 4
    got = _trainable(resumed)
    diff = max((got[n] - expected[n]).abs().max().item() for n in expected)
    print(f"largest difference after resume: {diff:.3e}")
    assert diff <= 1e-6
    # and training did move the weights (the comparison is not between two untouched models)
    start = _trainable(_trainer(config, tmp_path / "fresh", lora))
    assert max((got[n] - start[n]).abs().max().item() for n in start) > 1e-4


def test_interrupted_checkpoint_save_leaves_the_previous_one_usable(tmp_path, config, monkeypatch):
    trainer = _trainer(config, tmp_path / "run", True)

    original = SRPOTrainer._save_optimizer_and_scheduler

    def crash_at_step_4(self, output_dir):
        if self.state.global_step == 4:
            raise KeyboardInterrupt("simulated crash mid-save")
        return original(self, output_dir)

    monkeypatch.setattr(SRPOTrainer, "_save_optimizer_and_scheduler", crash_at_step_4)
    with pytest.raises(KeyboardInterrupt):
        trainer.train()
    names = sorted(os.listdir(tmp_path / "run"))
    assert "checkpoint-2" in names and "checkpoint-4" not in names
    from transformers.trainer_utils import get_last_checkpoint

    assert get_last_checkpoint(str(tmp_path / "run")).endswith("checkpoint-2")
    monkeypatch.undo()
    resumed = _trainer(config, tmp_path / "run", True)
    resumed.train(resume_from_checkpoint=True)  # picks checkpoint-2, and finishes
    assert resumed.state.global_step == 4
    assert (tmp_path / "run" / "checkpoint-4" / "optimizer.pt").is_file()
