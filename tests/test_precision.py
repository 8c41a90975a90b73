"""fp32 master weights on a bf16-loaded pipeline (every recipe loads FLUX in bf16).

diffusers creates a LoRA in its base layer's dtype, and a bf16 weight does not move under the recipe's lr 5e-6
(a bf16 number has 8 bits of mantissa: an update below about 1/256 of the weight rounds away). The trainer keeps
the trainable weights, and so AdamW's states, in fp32; the frozen weights stay bf16.
"""

import pytest
import torch
from datasets import Dataset
from peft import LoraConfig

from srpo_trl import ColorWordReward, SRPOTrainer
from srpo_trl.testing import tiny_flux_pipeline

TRAIN = Dataset.from_dict({"prompt": ["a cat", "a dog on a hill", "a house", "the sea"]})


def _train_three_steps(config, trainable_dtype: str, lora: bool):
    pipe = tiny_flux_pipeline(0).to(torch.bfloat16)
    trainer = SRPOTrainer(
        pipe,
        ColorWordReward(),
        args=config(max_steps=3, per_device_train_batch_size=2, trainable_dtype=trainable_dtype),
        train_dataset=TRAIN,
        peft_config=LoraConfig(r=4, lora_alpha=8, init_lora_weights="gaussian") if lora else None,
    )
    assert trainer.args.learning_rate == 5e-6  # the recipe's
    trainable = {n: p for n, p in trainer.model.named_parameters() if p.requires_grad}
    before = {n: p.detach().clone() for n, p in trainable.items()}
    trainer.train()
    changed = {n: not torch.equal(p.detach(), before[n]) for n, p in trainable.items()}
    return trainer, trainable, changed


@pytest.mark.parametrize("lora", [True, False], ids=["lora", "full"])
def test_bf16_pipeline_trains_fp32_master_weights_that_all_move_at_the_recipe_lr(config, lora):
    trainer, trainable, changed = _train_three_steps(config, "float32", lora)
    assert all(p.dtype == torch.float32 for p in trainable.values())
    assert all(changed.values()), [n for n, c in changed.items() if not c]
    states = [s for state in trainer.optimizer.state.values() for s in state.values() if torch.is_tensor(s)]
    assert all(s.dtype == torch.float32 for s in states if s.numel() > 1)  # AdamW's moments follow the weights
    frozen = [p for p in trainer.pipeline.vae.parameters()] + [p for p in trainer.pipeline.text_encoder.parameters()]
    assert all(p.dtype == torch.bfloat16 for p in frozen)  # only the trainable weights are widened
    if lora:
        base = [p for n, p in trainer.model.named_parameters() if "base_layer" in n]
        assert base and all(p.dtype == torch.bfloat16 for p in base)


def test_pure_bf16_is_an_opt_in_that_loses_small_updates(config):
    """`trainable_dtype="bfloat16"`: the documented cost: LoRA A matrices (about 0.1-0.5 in size) never move."""
    _, trainable, changed = _train_three_steps(config, "bfloat16", lora=True)
    assert all(p.dtype == torch.bfloat16 for p in trainable.values())
    unchanged = [n for n, c in changed.items() if not c]
    assert unchanged and all("lora_A" in n for n in unchanged), unchanged
