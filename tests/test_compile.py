"""`torch_compile=True` (TrainingArguments) compiles the transformer the rollout and both branches run through."""

import pytest
import torch
from datasets import Dataset
from peft import LoraConfig

from srpo_trl import ColorWordReward, SRPOTrainer
from srpo_trl.testing import tiny_colour_flux_pipeline


# Regional compilation (the default with torch_compile) captures in about 30 s on 2 cores: the extended tier.
# Whole-model compilation (not the default) takes over a minute to capture on a 2-core CPU: `-m slow`.
@pytest.mark.parametrize(
    "regions",
    [pytest.param(True, marks=pytest.mark.extended), pytest.param(False, marks=pytest.mark.slow)],
    ids=["regional", "whole-model"],
)
def test_torch_compile_wraps_the_transformer_and_trains(config, tmp_path, regions):
    # aot_eager: the compiled graph without a C++ toolchain, so the test exercises dynamo's capture of our calls.
    args = config(
        max_steps=2, learning_rate=0.05, torch_compile=True, torch_compile_backend="aot_eager",
        torch_compile_regions=regions, transformer_gradient_checkpointing=True, output_dir=str(tmp_path / "out"),
    )  # fmt: skip
    trainer = SRPOTrainer(
        tiny_colour_flux_pipeline(0),
        ColorWordReward(),
        args=args,
        train_dataset=Dataset.from_dict({"prompt": ["a cat", "a dog"]}),
        eval_dataset=Dataset.from_dict({"prompt": ["a bird"]}),
        peft_config=LoraConfig(r=4, lora_alpha=4, init_lora_weights="gaussian"),
    )
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if p.requires_grad}
    trainer.evaluate()  # leaves the model in eval mode before training, as a run with an initial evaluation does
    trainer.train()
    wrapped = trainer.model_wrapped
    if regions:  # each block compiled on its own; the model around them stays a plain module
        assert type(wrapped).__name__ == type(trainer.model).__name__
        blocks = list(wrapped.transformer_blocks) + list(wrapped.single_transformer_blocks)
        assert blocks and all(type(b).__name__ == "OptimizedModule" for b in blocks)
    else:
        assert type(wrapped).__name__ == "OptimizedModule"
    changed = [n for n, p in trainer.model.named_parameters() if p.requires_grad and not torch.equal(p, before[n])]
    assert changed
    # The training metrics are logged every step (they once went missing: the Trainer sets train mode on the
    # regionally compiled copy, not on the module whose flag chose between train and eval metrics).
    logged = [r for r in trainer.state.log_history if "reward/denoise" in r]
    assert len(logged) == args.max_steps, trainer.state.log_history
    assert trainer._metrics["train"] == {} or not any(trainer._metrics["train"].values())
    # The trained LoRA is saved from the uncompiled model, under diffusers' names, and loads in a stock pipeline.
    trainer.save_model()
    plain = tiny_colour_flux_pipeline(0)
    plain.load_lora_weights(args.output_dir)
    assert any("lora" in n for n, _ in plain.transformer.named_parameters())


@pytest.mark.extended  # compiles the blocks (about 35 s on 2 cores): the extended tier, with the regional compile test
def test_resume_with_compiled_blocks_continues_exactly(config, tmp_path):
    """Checkpoints are written from, and loaded into, the uncompiled module that shares the compiled blocks."""

    def trainer(output_dir):
        torch.manual_seed(0)
        args = config(
            max_steps=4, learning_rate=0.05, torch_compile=True, torch_compile_backend="aot_eager",
            save_strategy="steps", save_steps=2, output_dir=str(output_dir),
        )  # fmt: skip
        return SRPOTrainer(
            tiny_colour_flux_pipeline(0),
            ColorWordReward(),
            args=args,
            train_dataset=Dataset.from_dict({"prompt": ["a cat", "a dog", "a house", "the sea"]}),
            peft_config=LoraConfig(r=4, lora_alpha=4, init_lora_weights="gaussian"),
        )

    straight = trainer(tmp_path / "run")
    straight.train()
    expected = {n: p.detach().clone() for n, p in straight.model.named_parameters() if p.requires_grad}
    resumed = trainer(tmp_path / "run")
    resumed.train(resume_from_checkpoint=str(tmp_path / "run" / "checkpoint-2"))
    got = {n: p.detach() for n, p in resumed.model.named_parameters() if p.requires_grad}
    assert max((got[n] - expected[n]).abs().max().item() for n in expected) <= 1e-6
    start = {n: p.detach() for n, p in trainer(tmp_path / "fresh").model.named_parameters() if p.requires_grad}
    assert max((got[n] - start[n]).abs().max().item() for n in start) > 1e-4  # training did move the weights
