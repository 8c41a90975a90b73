"""LoRA on an int8 or NF4 (torchao) frozen base: steps uphill at the recipe's defaults, loads onto the plain base."""

import pytest
import torch
from datasets import Dataset
from peft import LoraConfig
from uphill import uphill_step

from srpo_trl import ColorWordReward, SRPOTrainer
from srpo_trl.testing import tiny_colour_flux_pipeline

TRAIN = Dataset.from_dict({"prompt": ["a cat", "a dog on a hill", "a house", "the sea"]})


@pytest.mark.parametrize("kind", ["int8", "nf4"])
def test_lora_on_a_quantised_base_steps_uphill_at_the_recipe_defaults_and_loads_onto_the_plain_base(
    config, tmp_path, kind
):
    from torchao.quantization import Int8Tensor, NF4Tensor

    args = config(
        max_steps=1, per_device_train_batch_size=2, rollout_steps=4, quantize_base=kind,
        output_dir=str(tmp_path / "lora"),
    )  # fmt: skip
    assert args.learning_rate == 5e-6 and args.max_grad_norm == 0.1
    assert args.hinge_threshold is None and args.use_inversion_branch
    trainer = SRPOTrainer(
        tiny_colour_flux_pipeline(0),
        ColorWordReward(),
        args=args,
        train_dataset=TRAIN,
        peft_config=LoraConfig(r=8, lora_alpha=8, init_lora_weights="gaussian"),
    )
    base = trainer.pipeline.transformer.transformer_blocks[0].attn.to_q.base_layer
    assert isinstance(base.weight, {"int8": Int8Tensor, "nf4": NF4Tensor}[kind])
    step = uphill_step(trainer)
    assert set(step.dots) == {"denoise", "inversion"} and step.uphill, (kind, step.dots)
    # The LoRA on top trains in fp32 whatever the base's precision; B starts at zero, so A has no gradient yet.
    assert not step.unchanged_with_gradient and step.dtypes == {torch.float32}
    assert all(step.changed[n] for n in step.changed if "lora_B" in n)
    assert isinstance(base.weight, {"int8": Int8Tensor, "nf4": NF4Tensor}[kind])  # still quantised after the step
    trainer.save_model()
    plain = tiny_colour_flux_pipeline(0)
    plain.load_lora_weights(args.output_dir)  # QLoRA: the LoRA applies to the unquantised base
    assert any("lora" in n for n, _ in plain.transformer.named_parameters())


def test_a_quantised_base_needs_a_lora(config):
    with pytest.raises(ValueError, match=r"quantize_base='int8' needs a LoRA"):
        SRPOTrainer(
            tiny_colour_flux_pipeline(0), ColorWordReward(), args=config(quantize_base="int8"), train_dataset=TRAIN
        )
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


@pytest.mark.extended  # torchao compiles its 8-bit optimiser step (about 20 s cold on 2 cores): the second tier
def test_8bit_adamw_from_torchao_steps_uphill_with_8bit_states_and_is_guarded(config):
    """TrainingArguments' `optim="adamw_torch_8bit"`: torchao's AdamW with 8-bit states, guarded like any optimizer."""
    from torchao.optim.subclass_8bit import OptimState8bit

    trainer = SRPOTrainer(
        tiny_colour_flux_pipeline(0),
        ColorWordReward(),
        args=config(max_steps=1, optim="adamw_torch_8bit"),
        train_dataset=TRAIN,
        # torchao keeps 8-bit states only for tensors of at least 4096 values (a multiple of its 256-value block):
        # at r=64 the attention projections of this 64-wide model give 64 x 64 LoRA matrices, all 8-bit. One shape
        # only, because torchao compiles its step once per shape (the slow part of this test).
        peft_config=LoraConfig(
            r=64, lora_alpha=64, init_lora_weights="gaussian", target_modules=["to_q", "to_k", "to_v"]
        ),
    )
    assert trainer.args.learning_rate == 5e-6 and trainer.args.use_inversion_branch
    step = uphill_step(trainer)
    optimizer = trainer.optimizer.optimizer
    assert type(optimizer).__name__ == "AdamW8bit"
    assert set(step.dots) == {"denoise", "inversion"} and step.uphill, step.dots
    assert not step.unchanged_with_gradient and all(step.changed[n] for n in step.changed if "lora_B" in n)
    lora = [p for p in trainer.model.parameters() if p.requires_grad]
    for p in lora:
        state = optimizer.state[p]
        assert isinstance(state["exp_avg"], OptimState8bit) and isinstance(state["exp_avg_sq"], OptimState8bit)
        assert state["exp_avg"].codes.dtype == torch.uint8

    # Guarded: the step the Trainer calls goes through the non-finite guard, which skips it on a NaN loss.
    guard = trainer._nonfinite_guard
    assert guard.optimizer is optimizer and guard.skipped_total == 0
    weights = [p.detach().clone() for p in lora]
    codes = [optimizer.state[p]["exp_avg"].codes.clone() for p in lora]
    for p in lora:
        p.grad = torch.ones_like(p)  # finite gradients: only the loss is bad
    guard.observe_loss(torch.tensor(float("nan")))
    trainer.optimizer.step()
    assert guard.skipped_total == 1
    assert all(torch.equal(p, w) for p, w in zip(lora, weights))
    assert all(torch.equal(optimizer.state[p]["exp_avg"].codes, c) for p, c in zip(lora, codes))
    for p in lora:  # the same gradients with a finite loss: this time the 8-bit AdamW steps
        p.grad = torch.ones_like(p)
    trainer.optimizer.step()
    assert guard.skipped_total == 1 and all(not torch.equal(p, w) for p, w in zip(lora, weights))


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
