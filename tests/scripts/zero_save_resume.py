"""Train, save and resume the tiny pipeline with 2 processes under DeepSpeed ZeRO, in one launch per stage.

    accelerate launch --config_file src/srpo_trl/accelerate_configs/deepspeed_zero3.yaml --num_processes 2 \
        tests/scripts/zero_save_resume.py RECORDS ROOT zero3 lora [full]

The shipped accelerate config is used as it is, with the number of processes and the port given on the command
line. For each kind (a LoRA, or full fine-tuning), two trainings run one after the other in `ROOT/{kind}-{phase}`,
at the settings of tests/scripts/save_resume.py (whose `ddp` records are the reference):

- `{stage}`: 2 steps with the transformer under ZeRO, and a checkpoint after the first;
- `{stage}-resumed`: resumed from `ROOT/{kind}-{stage}/checkpoint-1` for step 2, then `save_model()`;
- `ddp`: last, the reference: the same 2 steps with DeepSpeed switched off in this process (plain DDP).

Rank 0 writes `RECORDS/{kind}-{phase}.pt`: the gathered trainable weights before training, after the checkpoint was
loaded (when resuming) and at the end. Every process records what it writes in `RECORDS/writes-rank{r}.jsonl`
(tests/scripts/write_recorder.py). RECORDS is outside ROOT.

DeepSpeed on CPUs (gloo): the training arguments' `ddp_backend="gloo"` (without a GPU accelerate picks no backend,
and both ranks take themselves for rank 0), and `ACCELERATE_USE_CPU` unset (it switches DeepSpeed off). DeepSpeed
JIT-builds a shared-memory communication op at every start (about a minute of g++); training never uses it, so its
build is skipped here.

Used by tests/test_deepspeed.py.
"""

import importlib
import os
import sys
import time

import write_recorder

if __name__ == "__main__":  # before anything writes
    RANK = int(os.environ.get("RANK", "0"))  # set by the launcher
    os.makedirs(sys.argv[1], exist_ok=True)
    write_recorder.install(os.path.join(sys.argv[1], f"writes-rank{RANK}.jsonl"), RANK)
    importlib.import_module("deepspeed.comm.torch").build_shm_op = lambda: None  # before accelerate imports it

import torch  # noqa: E402
from save_resume import CHECKPOINT_STEP, PROMPTS, SaveAt, fresh_accelerate_state, run_config  # noqa: E402
from transformers import TrainerCallback  # noqa: E402


def trainable_weights(trainer) -> dict[str, torch.Tensor]:
    """The whole trainable weights, gathered from ZeRO-3's partitions (a collective, so on every process)."""
    import deepspeed

    model = trainer.accelerator.unwrap_model(trainer.model)
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    with deepspeed.zero.GatheredParameters([p for _, p in named], enabled=trainer.is_deepspeed_enabled):
        return {n: p.detach().cpu().float().clone() for n, p in named}


def switch_deepspeed_off() -> None:
    """What a launch without a DeepSpeed config would give the next trainer: plain DDP over the same processes, on
    CPUs as the other multi-process tests run it (`ACCELERATE_USE_CPU`: the gloo backend, `MULTI_CPU`)."""
    os.environ["ACCELERATE_USE_DEEPSPEED"] = "false"
    os.environ["ACCELERATE_USE_CPU"] = "1"
    fresh_accelerate_state()


class WeightsAtStart(TrainerCallback):
    """The trainable weights when training begins: after the Trainer has loaded the checkpoint it resumes from."""

    def __init__(self, trainer):
        self.trainer, self.weights = trainer, None

    def on_train_begin(self, args, state, control, **kwargs):
        self.weights = trainable_weights(self.trainer)


def train(records: str, root: str, stage: str, kind: str, phase: str) -> None:
    from datasets import Dataset
    from peft import LoraConfig

    from srpo_trl import ColorWordReward, SRPOTrainer
    from srpo_trl.testing import tiny_colour_flux_pipeline

    run_dir = os.path.join(root, f"{kind}-{phase}")
    args = run_config(run_dir, ddp_backend="gloo")
    torch.manual_seed(0)  # the same initial LoRA on every process and in every run
    lora = LoraConfig(r=4, lora_alpha=4, init_lora_weights="gaussian") if kind == "lora" else None
    trainer = SRPOTrainer(
        tiny_colour_flux_pipeline(0), ColorWordReward(), args=args, train_dataset=Dataset.from_dict({"prompt": PROMPTS}),
        peft_config=lora,
    )  # fmt: skip
    assert trainer.is_deepspeed_enabled == (phase != "ddp"), "DeepSpeed on where it should not be, or off"
    initial = trainable_weights(trainer)
    at_start = WeightsAtStart(trainer)
    resume = None
    if phase == stage:
        trainer.add_callback(SaveAt(CHECKPOINT_STEP))
    elif phase != "ddp":
        trainer.add_callback(at_start)
        resume = os.path.join(root, f"{kind}-{stage}", f"checkpoint-{CHECKPOINT_STEP}")
    trainer.train(resume_from_checkpoint=resume)
    if phase == f"{stage}-resumed":
        trainer.save_model()  # on every process, as users call it
    final = trainable_weights(trainer)
    if trainer.accelerator.is_main_process:
        plugin = trainer.accelerator.state.deepspeed_plugin
        torch.save(
            {
                "initial": initial,
                "at_start": at_start.weights,
                "final": final,
                "global_step": trainer.state.global_step,
                "world": trainer.accelerator.num_processes,
                "model_class": type(trainer.model_wrapped).__name__,
                "losses": [row["loss"] for row in trainer.state.log_history if "loss" in row],
                "zero_stage": plugin.zero_stage if plugin is not None else None,
                "mixed_precision": trainer.accelerator.mixed_precision,
            },
            os.path.join(records, f"{kind}-{phase}.pt"),
        )
    trainer.accelerator.wait_for_everyone()


def main():
    records, root, stage, kinds = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:]
    for phase in (stage, f"{stage}-resumed", "ddp"):
        if phase == "ddp":
            switch_deepspeed_off()
        for kind in kinds:
            started = time.perf_counter()
            train(records, root, stage, kind, phase)
            print(f"{kind}-{phase}: {time.perf_counter() - started:.1f} s", file=sys.stderr)


if __name__ == "__main__":
    main()
