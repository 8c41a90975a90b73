"""Rollouts and samples are deterministic (eval mode: no LoRA dropout), and samples say how they were made."""

import json

import torch
from datasets import Dataset
from huggingface_hub import ModelCard
from peft import LoraConfig

from srpo_trl import ColorWordReward, SRPOTrainer
from srpo_trl.testing import tiny_colour_flux_pipeline

TRAIN = Dataset.from_dict({"prompt": ["a cat", "a dog on a hill", "a house", "the sea"]})


def _trainer(config, **overrides):
    trainer = SRPOTrainer(
        tiny_colour_flux_pipeline(0),
        ColorWordReward(),
        args=config(per_device_train_batch_size=2, **overrides),
        train_dataset=TRAIN,
        # TRL's default LoRA dropout is 0.05; a large one makes any dropout in a rollout plain to see.
        peft_config=LoraConfig(r=4, lora_alpha=8, lora_dropout=0.5, init_lora_weights="gaussian"),
    )
    with torch.no_grad():  # a LoRA that matters, so that dropout on it would change the images
        for name, parameter in trainer.model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, 0.5, generator=torch.Generator().manual_seed(len(name)))
    return trainer


def _dropouts_training(model) -> list[bool]:
    return [m.training for m in model.modules() if isinstance(m, torch.nn.Dropout) and m.p > 0]


def test_generate_runs_without_dropout_and_restores_train_mode(config):
    trainer = _trainer(config, max_steps=1)
    trainer.model.train()
    first = trainer.generate(["a cat", "the sea"], seed=3)
    second = trainer.generate(["a cat", "the sea"], seed=3)
    assert torch.equal(first, second)
    assert trainer.model.training and all(_dropouts_training(trainer.model))  # back in train mode
    trainer.model.eval()
    torch.testing.assert_close(trainer.generate(["a cat", "the sea"], seed=3), first, rtol=0, atol=0)


def test_the_training_rollout_is_deterministic_while_the_branches_train(config):
    trainer = _trainer(config, max_steps=2)
    seen = []
    rollout = trainer.step.rollout

    def spy(model, eps, text, guidance_scale=None):
        seen.append(_dropouts_training(model))
        return rollout(model, eps, text, guidance_scale)

    trainer.step.rollout = spy
    trainer.train()
    assert len(seen) == 2 and all(flags and not any(flags) for flags in seen)  # dropout off in every rollout
    assert all(_dropouts_training(trainer.model))  # and on again for the training calls


def test_samples_use_the_cards_guidance_and_the_card_states_the_settings(config, tmp_path):
    trainer = _trainer(config, max_steps=1, sample_guidance_scale=2.5, output_dir=str(tmp_path / "out"))
    guidance = []
    velocity = trainer.adapter.velocity

    def spy(transformer, latents, sigma, text, guidance_scale, height, width, target=None):
        guidance.append(guidance_scale)
        return velocity(transformer, latents, sigma, text, guidance_scale, height, width, target=target)

    trainer.adapter.velocity = spy
    trainer.save_samples(["a red house"], seed=7)
    assert guidance == [2.5] * trainer.args.rollout_steps  # not the rollout's 1.0
    rows = json.loads((tmp_path / "out" / "samples" / "prompts.json").read_text())
    assert rows == [
        {
            "prompt": "a red house",
            "image": "samples/sample_0.png",
            "seed": 7,
            "guidance_scale": 2.5,
            "steps": 4,
            "resolution": "64x64",
        }
    ]
    trainer.save_model()
    card = ModelCard.load(tmp_path / "out" / "README.md")
    assert "Euler sampler, in eval mode: 4 steps, guidance 2.5, 64x64 px, seed 7." in card.text
    assert "guidance_scale=2.5," in card.text  # the loading snippet uses the samples' guidance
