"""Logged metric names: TRL's (`reward`, `reward_std`, `rewards/{name}/mean|std`) beside SRPO's per-branch ones."""

import torch
from datasets import Dataset

from srpo_trl import SRPOTrainer
from srpo_trl.rewards import image_only
from srpo_trl.testing import tiny_flux_pipeline


@image_only(hinge_threshold=10.0)
def one_and_three(images, prompts):
    """Scores 1 and 3 for the two images of a batch, whatever they show (differentiable through a zero)."""
    return images.mean(dim=(1, 2, 3)) * 0 + torch.tensor([1.0, 3.0])


def test_trl_reward_names_are_logged_with_the_std_over_all_samples(config):
    trainer = SRPOTrainer(
        tiny_flux_pipeline(0),
        one_and_three,
        args=config(max_steps=2, per_device_train_batch_size=2, logging_steps=2),
        train_dataset=Dataset.from_dict({"prompt": ["a cat", "a dog", "a house", "the sea"]}),
    )
    trainer.train()
    (row,) = [row for row in trainer.state.log_history if "reward" in row]
    assert row["reward"] == row["reward/denoise"] == 2.0  # the denoise branch's reward: the one maximised
    assert row["reward_std"] == 1.0  # population std of 1, 3, 1, 3 over both steps
    assert row["rewards/one_and_three/mean"] == 2.0 and row["rewards/one_and_three/std"] == 1.0
    assert row["reward/inversion"] == -2.0  # an image-only reward is a penalty in the inversion branch
    assert not any(key.endswith("::squares") for key in row)


def test_gradient_accumulation_divides_each_micro_batch_loss(config):
    """Pinned, not inferred from the transformer's `forward` signature: with 2 accumulation steps a micro-batch
    contributes half its gradient."""
    from peft import LoraConfig

    from srpo_trl.testing import tiny_flux_pipeline

    trainer = SRPOTrainer(
        tiny_flux_pipeline(0),
        one_and_three,
        args=config(per_device_train_batch_size=2, gradient_accumulation_steps=2),
        train_dataset=Dataset.from_dict({"prompt": ["a cat", "a dog"]}),
        peft_config=LoraConfig(r=4, lora_alpha=8, init_lora_weights="gaussian"),
    )
    assert trainer.loss_is_scaled_for_ga is False
    params = [p for p in trainer.model.parameters() if p.requires_grad]
    inputs = {"prompt": ["a cat", "a dog"]}
    full = torch.autograd.grad(trainer.compute_loss(trainer.model, inputs), params)
    trainer._noise_key = (-1, 0)  # the same noise and levels again
    trainer.current_gradient_accumulation_steps = 2
    trainer.training_step(trainer.model, inputs)
    for p, g in zip(params, full):
        torch.testing.assert_close(p.grad, g / 2)
