"""Train, save and resume the tiny pipeline with 2 processes, unsharded (DDP) and sharded (FSDP2), in one launch.

    ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes 2 tests/scripts/save_resume.py \
        RECORDS ROOT lora [full]

For each kind (a LoRA, or full fine-tuning, of the tiny FLUX.1; `<family>-lora`: a LoRA of the tiny FLUX.3 [klein],
Z-Image, SD3, Qwen-Image 2.1 or Wan 2.1, its blocks wrapped as the family's packaged `fsdp2_<family>.yaml` does),
three trainings run one after the other, each with a new pipeline, trainer and accelerator, in its own folder
`ROOT/{kind}-{phase}`:

- `ddp`: the unsharded reference, 2 steps;
- `fsdp2`: the same 2 steps with the transformer sharded by FSDP2, and a checkpoint after the first;
- `resumed`: FSDP2 again, resumed from `ROOT/{kind}-fsdp2/checkpoint-1` for step 2, then `save_model()`.

One step before the checkpoint is enough for it to matter: AdamW's second step depends on the moments of the
first, so a resume that lost the optimizer's state (or the weights) would end elsewhere.

Rank 0 writes `RECORDS/{kind}-{phase}.pt`: the gathered trainable weights before training, after the checkpoint
was loaded (when resuming) and at the end, and the losses. Every process records what it writes in
`RECORDS/writes-rank{r}.jsonl` (tests/scripts/write_recorder.py). RECORDS is outside ROOT.

One launch for all of it, as starting 2 processes costs far more on a CPU than these steps do.

FSDP2 on CPUs: accelerate switches FSDP on only for GPU-type backends (`AcceleratorState` sets
`DistributedType.FSDP` for MULTI_GPU and the like, never for MULTI_CPU). Here, and only in this script, that one
decision is made for MULTI_CPU as well ([`enable_fsdp_on_cpu`]), so that the Trainer, accelerate's FSDP2
preparation (`fully_shard` over a gloo CPU mesh), its checkpointing and our saving and loading run as on GPUs.

Used by tests/test_fsdp2.py.
"""

import os
import sys
import time

import write_recorder

if __name__ == "__main__":  # before anything writes
    RANK = int(os.environ.get("RANK", "0"))  # set by the launcher
    os.makedirs(sys.argv[1], exist_ok=True)
    write_recorder.install(os.path.join(sys.argv[1], f"writes-rank{RANK}.jsonl"), RANK)

import torch  # noqa: E402
from accelerate.state import AcceleratorState, GradientState, PartialState  # noqa: E402
from accelerate.utils import DistributedType  # noqa: E402
from transformers import TrainerCallback  # noqa: E402

PROMPTS = ["a cat", "a dog on a hill", "a house", "the sea", "a bird", "a tree"]
STEPS, CHECKPOINT_STEP = 2, 1
FSDP2 = dict(
    fsdp="full_shard",
    fsdp_config={
        "version": 2,
        "transformer_layer_cls_to_wrap": ["FluxTransformerBlock", "FluxSingleTransformerBlock"],
        "state_dict_type": "FULL_STATE_DICT",  # as src/srpo_trl/accelerate_configs/fsdp2.yaml
        "reshard_after_forward": True,
    },
)


def enable_fsdp_on_cpu() -> None:
    """Make accelerate choose FSDP for a multi-CPU run given an FSDP plugin, as it does for multi-GPU runs."""
    original = AcceleratorState.__init__

    def init(self, *args, fsdp_plugin=None, **kwargs):
        original(self, *args, fsdp_plugin=fsdp_plugin, **kwargs)
        if fsdp_plugin is not None and self.distributed_type == DistributedType.MULTI_CPU:
            # What AcceleratorState does for MULTI_GPU, including the copy into PartialState's shared state (which
            # every later AcceleratorState() copies back).
            self.distributed_type = DistributedType.FSDP
            self.fsdp_plugin = fsdp_plugin
            PartialState._shared_state["distributed_type"] = DistributedType.FSDP

    AcceleratorState.__init__ = init


def fresh_accelerate_state() -> None:
    """Forget the previous training's accelerator (the process group stays), as between separate launches."""
    AcceleratorState._reset_state()
    GradientState._reset_state()
    PartialState._shared_state["distributed_type"] = DistributedType.MULTI_CPU
    os.environ.pop("ACCELERATE_USE_FSDP", None)  # set by Accelerator when given an FSDP plugin


def trainable_weights(trainer) -> dict[str, torch.Tensor]:
    """The whole trainable weights (on rank 0 at least); a collective when sharded, so called on every process."""
    from torch.distributed.tensor import DTensor

    model = trainer.accelerator.unwrap_model(trainer.model)
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    sharded = any(isinstance(p, DTensor) for p in model.parameters())
    state = trainer.accelerator.get_state_dict(trainer.model) if sharded else model.state_dict()
    return {n: t.detach().cpu().clone() for n, t in state.items() if n in names}


class WeightsAtStart(TrainerCallback):
    """The trainable weights when training begins: after the Trainer has loaded the checkpoint it resumes from."""

    def __init__(self, trainer):
        self.trainer, self.weights = trainer, None

    def on_train_begin(self, args, state, control, **kwargs):
        self.weights = trainable_weights(self.trainer)


class SaveAt(TrainerCallback):
    """A checkpoint after step `step` only (on a CPU, each FSDP2 checkpoint's gathers cost about a second)."""

    def __init__(self, step: int):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        control.should_save = state.global_step == self.step
        return control


#: The families besides FLUX.1 (kind `<family>-lora`): their tiny builder, their packaged FSDP2 config and the config
#: fields their runs set besides `run_config`'s (Wan 2.1: 5 frames at 32 px).
FAMILIES = {
    "flux3": ("tiny_flux3_pipeline", "fsdp2_flux3", {}),
    "z-image": ("tiny_z_image_pipeline", "fsdp2_z_image", {}),
    "sd3": ("tiny_sd3_pipeline", "fsdp2_sd3", {}),
    "qwen-image21": ("tiny_qwen_image21_pipeline", "fsdp2_qwen_image21", {}),
    "wan": ("tiny_wan_pipeline", "fsdp2_wan", {"num_frames": 5, "resolution": 32}),
}


def packaged_blocks(config_name: str) -> list[str]:
    """The block classes a packaged accelerate config wraps (the transformer's `_no_split_modules`)."""
    import yaml

    from srpo_trl.cli import accelerate_config_path

    with open(accelerate_config_path(config_name)) as f:
        return yaml.safe_load(f)["fsdp_config"]["fsdp_transformer_layer_cls_to_wrap"].split(",")


def wrapped_classes(model) -> list[str]:
    """The classes FSDP2's `fully_shard` wrapped inside the model (it subclasses each as `FSDP<name>`)."""
    from torch.distributed.fsdp import FSDPModule

    inner = [m for m in model.modules() if isinstance(m, FSDPModule) and m is not model]
    return sorted({type(m).__name__.removeprefix("FSDP") for m in inner})


def run_config(run_dir: str, **engine):
    """The config of every launched run (here and in zero_save_resume.py): 2 steps at lr 1e-3 each (large enough that
    the steps move the weights visibly), batch 1 per process, each process its slice of one noise draw."""
    from srpo_trl.testing import tiny_srpo_config

    return tiny_srpo_config(
        run_dir,
        max_steps=STEPS,
        learning_rate=1e-3,
        max_grad_norm=1.0,
        per_device_train_batch_size=1,
        rollout_steps=3,
        max_sequence_length=16,
        per_process_noise=True,
        **engine,
    )


def train(records: str, root: str, kind: str, phase: str) -> None:
    from datasets import Dataset
    from peft import LoraConfig

    from srpo_trl import ColorWordReward, SRPOTrainer, testing

    fresh_accelerate_state()
    run_dir = os.path.join(root, f"{kind}-{phase}")
    family = FAMILIES.get(kind.removesuffix("-lora"))
    sharded = FSDP2 if phase != "ddp" else {}
    if sharded and family is not None:
        blocks = packaged_blocks(family[1])
        sharded = {**FSDP2, "fsdp_config": {**FSDP2["fsdp_config"], "transformer_layer_cls_to_wrap": blocks}}
    args = run_config(run_dir, **sharded, **(family[2] if family else {}))
    torch.manual_seed(0)  # the same initial LoRA on every process and in every run
    lora = LoraConfig(r=4, lora_alpha=4, init_lora_weights="gaussian") if kind.endswith("lora") else None
    pipeline = getattr(testing, family[0] if family else "tiny_colour_flux_pipeline")(0)
    trainer = SRPOTrainer(
        pipeline, ColorWordReward(), args=args, train_dataset=Dataset.from_dict({"prompt": PROMPTS}), peft_config=lora,
    )  # fmt: skip
    initial = trainable_weights(trainer)
    at_start = WeightsAtStart(trainer)
    resume = None
    if phase == "fsdp2":
        trainer.add_callback(SaveAt(CHECKPOINT_STEP))
    if phase == "resumed":
        trainer.add_callback(at_start)
        resume = os.path.join(root, f"{kind}-fsdp2", f"checkpoint-{CHECKPOINT_STEP}")
    trainer.train(resume_from_checkpoint=resume)
    if phase == "resumed":
        trainer.save_model()  # on every process, as users call it
    final = trainable_weights(trainer)
    if trainer.accelerator.is_main_process:
        model = trainer.accelerator.unwrap_model(trainer.model)
        torch.save(
            {
                "initial": initial,
                "at_start": at_start.weights,
                "final": final,
                "losses": [row["loss"] for row in trainer.state.log_history if "loss" in row],
                "global_step": trainer.state.global_step,
                "world": trainer.accelerator.num_processes,
                "fsdp2": trainer.accelerator.is_fsdp2,
                "model_class": type(model).__name__,
                "wrapped": wrapped_classes(model) if trainer.accelerator.is_fsdp2 else [],
            },
            os.path.join(records, f"{kind}-{phase}.pt"),
        )
    trainer.accelerator.wait_for_everyone()


def main():
    records, root, kinds = sys.argv[1], sys.argv[2], sys.argv[3:]
    enable_fsdp_on_cpu()
    # DDP first: an FSDP accelerator leaves traces (environment variables) that fresh_accelerate_state clears, but
    # the reference runs need nothing of it.
    for phase in ("ddp", "fsdp2", "resumed"):
        for kind in kinds:
            started = time.perf_counter()
            train(records, root, kind, phase)
            print(f"{kind}-{phase}: {time.perf_counter() - started:.1f} s", file=sys.stderr)


if __name__ == "__main__":
    main()
