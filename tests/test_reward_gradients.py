"""Every reward, at the recipe's defaults, gives a gradient, and both branches pull the same way.

The defaults are the shipped ones: each reward's own hinge threshold, the inversion branch on. The inversion
branch steps *up* in noise, so its recovered image moves with the velocity in the opposite direction to the
denoise branch's; its reward has the opposite sign too (SRP's swapped control words; `-f(x)` for an image-only
reward), so the two gradients agree. Measured on the demo pipeline, batch 4, seeds 0-3, 1 and 2 threads: cosine
0.68-0.98 for every reward kind here; with `+f(x)` in both branches an image-only reward gave -0.93 to -0.98.
The tiny HPSv3 copy (a random Qwen2-VL and head) agrees less on some draws: 0.17-0.86 over config seeds 0-5, the
same at 1 and 2 threads (0.75 at the tested seed); its one-step uphill test holds on all six.
"""

import logging

import pytest
import torch
from datasets import Dataset
from peft import LoraConfig
from reward_copies import save_copy

from srpo_trl import ColorWordReward, SRPOTrainer
from srpo_trl.rewards import REWARDS, CallableReward, image_only
from srpo_trl.testing import tiny_colour_flux_pipeline

PROMPTS = ["a cat", "a dog on a hill", "a house", "the sea"]
TRAIN = Dataset.from_dict({"prompt": PROMPTS})


def brightness(images, prompts):
    """A prompt-ignoring reward: the mean brightness of each image."""
    return images.mean(dim=(1, 2, 3))


def _reward(kind, tmp_path):
    if kind == "image-only callable":
        return image_only(brightness)
    if kind == "color":
        return ColorWordReward()
    return f"{kind}:{save_copy(kind, str(tmp_path / 'reward'))}"


def _trainer(reward, config, **overrides):
    return SRPOTrainer(
        tiny_colour_flux_pipeline(0),
        reward,
        args=config(per_device_train_batch_size=4, reward_dtype="float32", **overrides),
        train_dataset=TRAIN,
        peft_config=LoraConfig(r=4, lora_alpha=8, init_lora_weights="gaussian"),
    )


def _branch_gradients(trainer) -> dict[str, torch.Tensor]:
    """Each branch's loss gradient over all trainable parameters, flattened, for one batch of the 4 prompts."""
    params = [p for p in trainer.model.parameters() if p.requires_grad]
    losses = trainer.branch_losses(trainer.model, trainer._collate([{"prompt": p} for p in PROMPTS]))
    gradients = {}
    for branch, loss in losses.items():
        grads = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
        gradients[branch] = torch.cat(
            [(g if g is not None else torch.zeros_like(p)).flatten() for g, p in zip(grads, params)]
        )
    return gradients


# Rewards that compare with a condition: tests/test_consistency_rewards.py measures their branches on such pipelines.
@pytest.mark.parametrize(
    "kind",
    [*sorted(n for n, s in REWARDS.items() if not s.conditions and not s.video), "image-only callable", "color"],
)
def test_both_branches_give_aligned_gradients_at_the_defaults(tmp_path, config, kind):
    trainer = _trainer(_reward(kind, tmp_path), config)
    args = trainer.args
    assert args.use_inversion_branch and args.hinge_threshold is None and args.learning_rate == 5e-6
    expected_tau = {"laion-aesthetic": 10.0, "hpsv3": 10.0}.get(kind, 0.7)
    assert trainer.hinge_thresholds == [expected_tau]
    g = _branch_gradients(trainer)
    assert set(g) == {"denoise", "inversion"}
    assert g["denoise"].norm() > 0 and g["inversion"].norm() > 0, kind
    cosine = torch.nn.functional.cosine_similarity(g["denoise"], g["inversion"], dim=0).item()
    assert cosine > (0.1 if kind == "hpsv3" else 0.5), (kind, cosine)  # hpsv3: see the module docstring


def test_image_only_reward_is_a_penalty_in_the_inversion_branch():
    reward = image_only(brightness)
    images = torch.rand(3, 3, 8, 8)
    score = brightness(images, [])
    torch.testing.assert_close(reward.srp(images, ["p"] * 3, "Real", "Painting", 0.2), score)
    torch.testing.assert_close(reward.srp(images, ["p"] * 3, "Painting", "Real", 0.2, inversion=True), -score)
    assert not reward.text_conditioned and reward.name == "brightness"


def test_callables_declare_themselves_image_only_or_give_their_threshold():
    def aesthetic_like(images, prompts):
        return 5 + images.mean(dim=(1, 2, 3))

    aesthetic_like.text_conditioned = False
    aesthetic_like.hinge_threshold = 10.0
    wrapped = CallableReward(aesthetic_like)
    assert not wrapped.text_conditioned and wrapped.hinge_threshold == 10.0
    assert image_only(hinge_threshold=3.0)(brightness).hinge_threshold == 3.0
    assert CallableReward(brightness).text_conditioned and CallableReward(brightness).hinge_threshold == 0.7


def test_hinge_threshold_override_one_value_or_one_per_reward(config):
    rewards = [ColorWordReward(), image_only(brightness)]
    for value, expected in [(None, [0.7, 0.7]), (2.0, [2.0, 2.0]), ([1.0, 10.0], [1.0, 10.0])]:
        trainer = SRPOTrainer(
            tiny_colour_flux_pipeline(0), rewards, args=config(hinge_threshold=value, max_steps=1), train_dataset=TRAIN
        )
        assert trainer.hinge_thresholds == expected


def test_a_hinge_below_the_rewards_scale_is_reported_by_name(config, caplog):
    """An aesthetic-scale reward (scores about 5) with the recipe's 0.7: no sample trains, and the user is told."""

    @image_only(hinge_threshold=0.7)
    def five_ish(images, prompts):
        return 5 + images.mean(dim=(1, 2, 3))

    trainer = _trainer(five_ish, config, max_steps=4)
    with caplog.at_level(logging.WARNING, logger="srpo_trl"):
        trainer.train()
    logged = [row for row in trainer.state.log_history if "hinge_active/denoise" in row]
    assert len(logged) == 4 and all(row["hinge_active/denoise"] == 0 for row in logged)
    assert all(row["hinge_active/inversion"] == 1 for row in logged)  # -f(x) < 0.7: the penalty branch trains
    assert "its hinge" not in caplog.text  # the inversion branch still gives a gradient: nothing to report

    @image_only(hinge_threshold=-10.0)
    def never_active(images, prompts):
        return 5 + images.mean(dim=(1, 2, 3))

    trainer = _trainer(never_active, config, max_steps=4, use_inversion_branch=False, overwrite_output_dir=True)
    with caplog.at_level(logging.WARNING, logger="srpo_trl"):
        trainer.train()
    assert (
        "reward 'never_active': its hinge relu(-10.0 - R) has been zero on every sample for 3 batches" in caplog.text
    )
    assert "SRPOConfig.hinge_threshold" in caplog.text
    assert caplog.text.count("reward 'never_active': its hinge") == 1  # once, not every step
    active = [row["hinge_active/denoise"] for row in trainer.state.log_history if "hinge_active/denoise" in row]
    assert active == [0.0] * 4


def test_a_text_conditioned_callable_that_ignores_the_words_is_reported(config, caplog):
    trainer = _trainer(brightness, config, max_steps=1)  # not declared image-only
    with caplog.at_level(logging.WARNING, logger="srpo_trl"):
        trainer.train()
    assert "reward 'brightness' gave identical scores for 'blue. ' and 'red. '" in caplog.text
    assert "collapses to k * f(x)" in caplog.text and "image_only(fn)" in caplog.text
    caplog.clear()
    trainer = _trainer(ColorWordReward(), config, max_steps=1, overwrite_output_dir=True)
    with caplog.at_level(logging.WARNING, logger="srpo_trl"):
        trainer.train()
    assert "identical scores" not in caplog.text
