"""LoRA on an int8 or NF4 (torchao) frozen base: trains, the reward rises, and the LoRA loads onto the plain base."""

import pytest
import torch
from datasets import Dataset
from peft import LoraConfig

from srpo_trl import ColorWordReward, SRPOTrainer
from srpo_trl.demo import demo_pipeline

TRAIN = Dataset.from_dict({"prompt": ["a cat", "a dog on a hill", "a house", "the sea"]})
HELD_OUT = Dataset.from_dict({"prompt": ["a bird", "a tree", "a car"]})


@pytest.mark.parametrize("kind", ["int8", "nf4"])
def test_lora_on_a_quantised_base_raises_reward_and_loads_onto_the_plain_base(config, tmp_path, kind):
    from torchao.quantization import Int8Tensor, NF4Tensor

    args = config(
        max_steps=30, learning_rate=0.1, max_grad_norm=1.0, per_device_train_batch_size=2, rollout_steps=4,
        quantize_base=kind, output_dir=str(tmp_path / "lora"),
    )  # fmt: skip
    trainer = SRPOTrainer(
        demo_pipeline(0),
        ColorWordReward(),
        args=args,
        train_dataset=TRAIN,
        eval_dataset=HELD_OUT,
        peft_config=LoraConfig(r=8, lora_alpha=8, init_lora_weights="gaussian"),
    )
    base = trainer.pipeline.transformer.transformer_blocks[0].attn.to_q.base_layer
    assert isinstance(base.weight, {"int8": Int8Tensor, "nf4": NF4Tensor}[kind])
    before = trainer.evaluate()["eval_reward"]
    trainer.train()
    after = trainer.evaluate()["eval_reward"]
    assert after > before + 0.05, (before, after)
    trainer.save_model()
    plain = demo_pipeline(0)
    plain.load_lora_weights(args.output_dir)  # QLoRA: the LoRA applies to the unquantised base
    assert any("lora" in n for n, _ in plain.transformer.named_parameters())


def test_a_quantised_base_needs_a_lora(config):
    with pytest.raises(ValueError, match=r"quantize_base='int8' needs a LoRA"):
        SRPOTrainer(demo_pipeline(0), ColorWordReward(), args=config(quantize_base="int8"), train_dataset=TRAIN)
    with pytest.raises(ValueError, match=r"quantize_base='int2' is invalid"):
        config(quantize_base="int2")


@pytest.mark.parametrize(("kind", "at_most"), [("int8", 0.6), ("nf4", 0.3)])
def test_a_quantised_base_shrinks_the_transformer_weights(kind, at_most):
    from srpo_trl.quantization import quantize_frozen_base
    from srpo_trl.testing import tiny_flux_pipeline

    transformer = tiny_flux_pipeline(0, attention_head_dim=64, num_attention_heads=4).transformer.to(torch.bfloat16)

    def tensor_bytes(t):  # a torchao tensor is a wrapper around its quantised data and scales
        if hasattr(t, "__tensor_flatten__"):
            return sum(tensor_bytes(getattr(t, name)) for name in t.__tensor_flatten__()[0])
        return t.numel() * t.element_size()

    def linear_bytes(module):
        return sum(tensor_bytes(m.weight) for m in module.modules() if isinstance(m, torch.nn.Linear))

    before = linear_bytes(transformer)
    quantize_frozen_base(transformer, kind)
    after = linear_bytes(transformer)
    assert after < at_most * before, (before, after)
    # bf16 weights are 2 bytes each; int8 is 1 byte plus a scale per row, NF4 half a byte plus its block scales.
    x = torch.randn(2, 7, 256, dtype=torch.bfloat16)
    layer = transformer.transformer_blocks[0].attn.to_q
    assert layer(x).shape == (2, 7, 256)


def test_8bit_adamw_from_torchao(config):
    """TrainingArguments' `optim="adamw_torch_8bit"`: AdamW with 8-bit states (torchao), guarded like any optimizer."""
    trainer = SRPOTrainer(
        demo_pipeline(0),
        ColorWordReward(),
        args=config(max_steps=3, learning_rate=0.05, optim="adamw_torch_8bit"),
        train_dataset=TRAIN,
        peft_config=LoraConfig(r=4, lora_alpha=4, init_lora_weights="gaussian"),
    )
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if p.requires_grad}
    trainer.train()
    assert type(trainer.optimizer.optimizer).__name__ == "AdamW8bit"
    assert trainer._nonfinite_guard is not None and trainer._nonfinite_guard.optimizer is not None
    assert any(not torch.equal(p, before[n]) for n, p in trainer.model.named_parameters() if p.requires_grad)


def test_nf4_refuses_a_model_with_nothing_to_quantise():
    from srpo_trl.quantization import quantize_frozen_base

    with pytest.raises(ValueError, match=r"quantize_base='nf4': none of the 1 linear layers"):
        quantize_frozen_base(torch.nn.Sequential(torch.nn.Linear(3, 5)), "nf4")


def test_quantising_leaves_the_compiler_settings_alone():
    """torchao's default would switch on inductor's coordinate-descent autotuning for the whole process."""
    import torch._inductor.config as inductor_config

    from srpo_trl.quantization import quantize_frozen_base

    saved = inductor_config.coordinate_descent_tuning
    inductor_config.coordinate_descent_tuning = False
    try:
        quantize_frozen_base(torch.nn.Sequential(torch.nn.Linear(64, 64)).to(torch.bfloat16), "int8")
        assert inductor_config.coordinate_descent_tuning is False
    finally:
        inductor_config.coordinate_descent_tuning = saved
