"""`torch_compile=True` (TrainingArguments) compiles the transformer the rollout and both branches run through."""

import torch
from datasets import Dataset
from peft import LoraConfig

from srpo_trl import ColorWordReward, SRPOTrainer
from srpo_trl.demo import demo_pipeline


def test_torch_compile_wraps_the_transformer_and_trains(config):
    # aot_eager: the compiled graph without a C++ toolchain, so the test exercises dynamo's capture of our calls.
    args = config(max_steps=3, learning_rate=0.05, torch_compile=True, torch_compile_backend="aot_eager")
    trainer = SRPOTrainer(
        demo_pipeline(0),
        ColorWordReward(),
        args=args,
        train_dataset=Dataset.from_dict({"prompt": ["a cat", "a dog"]}),
        peft_config=LoraConfig(r=4, lora_alpha=4, init_lora_weights="gaussian"),
    )
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if p.requires_grad}
    trainer.train()
    assert type(trainer.model_wrapped).__name__ == "OptimizedModule"
    assert any(not torch.equal(p, before[n]) for n, p in trainer.model.named_parameters() if p.requires_grad)
