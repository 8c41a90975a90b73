"""Train the tiny pipeline a few steps and record, per process, the final trainable weights and the losses.

    ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes 2 tests/scripts/distributed_train.py \
        OUT BATCH [--shared_noise] [--qwen_image]
    python tests/scripts/distributed_train.py OUT BATCH [--qwen_image]

`--qwen_image` trains the tiny Qwen-Image pipeline instead (true CFG in the rollout, masked text), with a text
cache on disk under OUT/text-cache that the processes fill together.

The training writes into OUT/run (a checkpoint after step 2, then `save_model()` on every process, as users call
it); each process records there what it writes in OUT/writes-rank{r}.jsonl (tests/scripts/write_recorder.py).

Used by tests/test_distributed.py.
"""

import json
import os
import sys

import write_recorder

if __name__ == "__main__":  # before anything writes
    RANK = int(os.environ.get("RANK", "0"))  # set by the launcher
    write_recorder.install(os.path.join(sys.argv[1], f"writes-rank{RANK}.jsonl"), RANK)

import torch  # noqa: E402
from datasets import Dataset  # noqa: E402
from peft import LoraConfig  # noqa: E402

from srpo_trl import ColorWordReward, SRPOTrainer  # noqa: E402
from srpo_trl.testing import (  # noqa: E402
    tiny_colour_flux_pipeline,
    tiny_qwen_image_pipeline,
    tiny_srpo_config,
)


def vivid_qwen_image():
    """The tiny Qwen-Image pipeline with a VAE whose images carry visible colour (as the Qwen-Image tests')."""
    pipe = tiny_qwen_image_pipeline(0)
    with torch.no_grad():
        pipe.vae.decoder.conv_out.weight.mul_(5)
        pipe.vae.decoder.conv_out.bias.zero_()
    return pipe


def main():
    out, batch = sys.argv[1], int(sys.argv[2])
    shared = "--shared_noise" in sys.argv
    qwen_image = "--qwen_image" in sys.argv
    family = {"max_sequence_length": 256, "text_embedding_cache_dir": os.path.join(out, "text-cache")}
    args = tiny_srpo_config(
        os.path.join(out, "run"),
        save_strategy="steps",
        save_steps=2,
        max_steps=3,
        learning_rate=0.05,
        max_grad_norm=1.0,
        per_device_train_batch_size=batch,
        rollout_steps=3,
        per_process_noise=not shared,
        **(family if qwen_image else {"max_sequence_length": 16}),
    )
    torch.manual_seed(0)  # the same initial LoRA on every process and in every run
    trainer = SRPOTrainer(
        vivid_qwen_image() if qwen_image else tiny_colour_flux_pipeline(0),
        ColorWordReward(),
        args=args,
        train_dataset=Dataset.from_dict(
            {"prompt": ["a cat", "a dog on a hill", "a house", "the sea", "a bird", "a tree"]}
        ),
        peft_config=LoraConfig(r=4, lora_alpha=4, init_lora_weights="gaussian"),
    )
    first_noise = {}
    rollout = trainer.step.rollout

    def recording_rollout(model, eps, text, guidance_scale=None):  # eps as this process uses it
        first_noise.setdefault("eps", eps.detach().clone())
        return rollout(model, eps, text, guidance_scale)

    trainer.step.rollout = recording_rollout
    seen_prompts = []
    collate = trainer.data_collator

    def recording_collate(features):
        batch_ = collate(features)
        seen_prompts.extend(batch_["prompt"])
        return batch_

    trainer.data_collator = recording_collate
    trainer.train()
    trainer.save_model()
    rank = trainer.accelerator.process_index
    weights = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if p.requires_grad}
    torch.save({"weights": weights, "eps": first_noise["eps"]}, f"{out}/rank{rank}.pt")
    losses = [row["loss"] for row in trainer.state.log_history if "loss" in row]
    with open(f"{out}/rank{rank}.json", "w") as f:
        json.dump({"losses": losses, "prompts": seen_prompts, "world": trainer.accelerator.num_processes}, f)


if __name__ == "__main__":
    main()
