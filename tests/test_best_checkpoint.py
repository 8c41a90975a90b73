"""Checkpoints chosen by the held-out reward: metric_for_best_model, load_best_model_at_end, early stopping, and
rewards that are only watched."""

import json
import os

import pytest
import torch
from datasets import Dataset
from peft import LoraConfig
from safetensors.torch import load_file
from transformers import EarlyStoppingCallback

from srpo_trl import ColorWordReward, SRPOTrainer
from srpo_trl.rewards import image_only
from srpo_trl.testing import tiny_colour_flux_pipeline

TRAIN = Dataset.from_dict({"prompt": ["a cat", "a dog on a hill", "a house", "the sea"]})
HELD_OUT = Dataset.from_dict({"prompt": ["a boat", "a tree"]})


def redness(images, prompts):
    return images[:, 0].mean(dim=(1, 2))


def _trainer(config, tmp_path, callbacks=None, **overrides):
    settings = dict(eval_strategy="steps", eval_steps=1, save_strategy="steps", save_steps=1)
    args = config(per_device_train_batch_size=2, output_dir=str(tmp_path / "run"), **{**settings, **overrides})
    return SRPOTrainer(
        tiny_colour_flux_pipeline(0),
        ColorWordReward(),
        args=args,
        train_dataset=TRAIN,
        eval_dataset=HELD_OUT,
        callbacks=callbacks,
        peft_config=LoraConfig(r=4, lora_alpha=8, init_lora_weights="gaussian"),
        eval_reward_funcs=[image_only(redness)],
    )


def _lora_state(trainer) -> dict[str, torch.Tensor]:
    from peft.utils import get_peft_model_state_dict

    return {k: v.detach().clone() for k, v in get_peft_model_state_dict(trainer.model).items()}


def _saved_lora(checkpoint) -> dict[str, torch.Tensor]:
    return {
        k.removeprefix("transformer."): v
        for k, v in load_file(os.path.join(checkpoint, "pytorch_lora_weights.safetensors")).items()
    }


@pytest.mark.parametrize("greater_is_better", [True, False], ids=["highest", "lowest"])
def test_load_best_model_at_end_loads_the_checkpoint_with_the_best_held_out_reward(
    config, tmp_path, greater_is_better
):
    trainer = _trainer(config, tmp_path, max_steps=3, load_best_model_at_end=True, greater_is_better=greater_is_better)
    assert trainer.args.metric_for_best_model == "reward"  # srpo-trl's default: the held-out reward
    trainer.train()
    evals = {row["step"]: row["eval_reward"] for row in trainer.state.log_history if "eval_reward" in row}
    assert sorted(evals) == [1, 2, 3] and len(set(evals.values())) > 1
    best_step = (max if greater_is_better else min)(evals, key=evals.get)
    best = os.path.join(str(tmp_path / "run"), f"checkpoint-{best_step}")
    assert trainer.state.best_model_checkpoint == best and trainer.state.best_metric == evals[best_step]
    # The state saved with the checkpoints names the published folder, not the staging one it was written in.
    saved_state = json.loads((tmp_path / "run" / "checkpoint-3" / "trainer_state.json").read_text())
    assert saved_state["best_model_checkpoint"] == best
    loaded, saved = _lora_state(trainer), _saved_lora(best)
    assert loaded.keys() == saved.keys() and all(torch.equal(loaded[k], saved[k].to(loaded[k].dtype)) for k in saved)
    if best_step != 3:  # a checkpoint before the last was loaded, not the last weights kept
        last = _saved_lora(os.path.join(str(tmp_path / "run"), "checkpoint-3"))
        assert any(not torch.equal(loaded[k], last[k].to(loaded[k].dtype)) for k in last)


def test_early_stopping_on_the_held_out_reward(config, tmp_path):
    # A threshold no change can pass: no evaluation counts as an improvement, so patience 1 stops at the 2nd.
    stop = EarlyStoppingCallback(early_stopping_patience=1, early_stopping_threshold=10.0)
    trainer = _trainer(config, tmp_path, callbacks=[stop], max_steps=6, load_best_model_at_end=True)
    trainer.train()
    assert trainer.state.global_step == 2
    assert trainer.state.best_model_checkpoint.endswith("checkpoint-1")


def test_watched_rewards_are_scored_but_never_trained_on(config, tmp_path):
    trainer = _trainer(config, tmp_path, max_steps=1, save_strategy="no", eval_strategy="no")
    metrics = trainer.evaluate()
    assert {"eval_rewards/redness/srp", "eval_rewards/redness/plain", "eval_rewards/color/srp"} <= set(metrics)
    assert metrics["eval_reward"] == pytest.approx(metrics["eval_rewards/color/srp"])  # only the trained reward
    images = trainer.generate(HELD_OUT["prompt"], seed=trainer.args.seed)
    assert metrics["eval_rewards/redness/plain"] == pytest.approx(redness(images, []).mean().item(), rel=1e-5)
    trainer.train()
    logged = {k for row in trainer.state.log_history for k in row}
    assert "rewards/color/denoise" in logged and not any("redness" in k for k in logged)


def test_a_watched_reward_that_is_also_trained_is_refused(config, tmp_path):
    with pytest.raises(ValueError, match=r"eval_reward_funcs: \['color'\] are trained on already"):
        SRPOTrainer(
            str(tmp_path / "never-loaded"),
            ColorWordReward(),
            args=config(),
            train_dataset=TRAIN,
            eval_reward_funcs=[ColorWordReward()],
        )
