"""Trainer callbacks for what surrounds the SRPO step: stopping on a signal, sample images, the reward curve.

- [`StopOnSignal`]: after each step, if any process got SIGTERM/SIGINT, save a checkpoint now and stop.
- [`SamplesAndRewardCurve`]: sample images every `sample_steps` and at the end of training, to every tracker of
  `report_to` that shows images (TensorBoard, Weights & Biases, Trackio) and to `output_dir/samples/` for the
  model card; the reward-curve plot at the end of training.
"""

from __future__ import annotations

import os

import torch
from transformers import TrainerCallback

from .plotting import reward_curve, to_pil

REWARD_CURVE_KEYS = ["reward/denoise", "reward/inversion", "eval_reward"]


def log_images_to_trackers(callbacks, images: torch.Tensor, prompts: list[str], step: int) -> list[str]:
    """Log `images` (`[B, 3, H, W]` in [0, 1]) to the trackers among transformers' `callbacks`; their names."""
    logged = []
    for callback in callbacks:
        writer = getattr(callback, "tb_writer", None)  # transformers' TensorBoardCallback
        if writer is not None:
            writer.add_images("samples", images.float().cpu(), step)
            writer.flush()
            logged.append("tensorboard")
        if not getattr(callback, "_initialized", False):
            continue
        run = getattr(callback, "_wandb", None)  # transformers' WandbCallback
        if run is not None:
            run.log({"samples": [run.Image(to_pil(x), caption=p) for x, p in zip(images, prompts)]}, commit=False)
            logged.append("wandb")
        trackio = getattr(callback, "_trackio", None)  # transformers' TrackioCallback
        if trackio is not None:
            # One key per image: Trackio drops lists of images.
            trackio.log(
                {f"samples/{i}": trackio.Image(to_pil(x), caption=p) for i, (x, p) in enumerate(zip(images, prompts))},
                step=step,
            )
            logged.append("trackio")
    return logged


def write_reward_curve(log_history: list[dict], output_dir: str) -> str | None:
    """`output_dir/reward_curve.png`: the logged rewards against the step; `None` when nothing was logged."""
    if not any(k in row for row in log_history for k in REWARD_CURVE_KEYS):
        return None
    path = os.path.join(output_dir, "reward_curve.png")
    reward_curve(log_history, REWARD_CURVE_KEYS, title="SRPO reward").save(path)
    return path


class StopOnSignal(TrainerCallback):
    """After each step: if any process got SIGTERM/SIGINT, save a checkpoint now and stop."""

    def __init__(self, trainer):
        self.trainer = trainer

    def on_step_end(self, args, state, control, **kwargs):
        if self.trainer._on_any_process(self.trainer._interruption.received is not None):
            control.should_save = True
            control.should_training_stop = True
        return control


class SamplesAndRewardCurve(TrainerCallback):
    """Sample images every `sample_steps` and at the end; the reward-curve plot at the end of training.

    Put first in the callback list, so that at the end of training the trackers' writers are still open.
    """

    def __init__(self, trainer):
        self.trainer = trainer

    def on_step_end(self, args, state, control, **kwargs):
        if args.sample_prompts and args.sample_steps and state.global_step % args.sample_steps == 0:
            self.trainer.log_samples()
        return control

    def on_train_end(self, args, state, control, **kwargs):
        if args.sample_prompts:
            self.trainer.log_samples()
            self.trainer.save_samples(args.sample_prompts, seed=args.seed)
        if args.plot_reward_curve and state.is_world_process_zero:
            write_reward_curve(state.log_history, args.output_dir)
        return control
