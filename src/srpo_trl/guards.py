"""Guards that keep a long run from losing work: reward contract checks, non-finite steps, interruption.

- [`check_reward_output`], [`check_rewards_on_first_batch`]: on the first batch, each reward's own output must
  be `[B]`, finite, and differentiable in the images; otherwise the error names the reward. A reward that
  ignores the control words is reported.
- [`InactiveHingeWatch`]: warns when a reward's hinge has been inactive on every sample for a few batches.
- [`NonFiniteGuard`]: wraps the optimizer's `step`. A step whose loss or gradient is NaN or inf is
  skipped (the weights do not change), logged and counted; too many in a row stop training with a
  clear message, before anything is saved, so the last checkpoint stays the last good one.
- [`InterruptionHandler`]: SIGTERM/SIGINT set a flag; the trainer finishes the current step, writes a
  checkpoint (atomically) and stops, then exits as the signal asked.
"""

from __future__ import annotations

import logging
import signal

import torch

logger = logging.getLogger(__name__)


def check_reward_output(name: str, value, batch: int) -> None:
    """Raise a `ValueError` naming the reward if its output breaks the reward contract."""
    if not isinstance(value, torch.Tensor):
        raise ValueError(
            f"reward {name!r} returned a {type(value).__name__}; it must return a tensor of shape [{batch}]"
        )
    if tuple(value.shape) != (batch,):
        raise ValueError(
            f"reward {name!r} returned shape {tuple(value.shape)}; it must return one score per image, shape [{batch}]"
        )
    if not torch.isfinite(value).all():
        raise ValueError(f"reward {name!r} returned NaN or inf on the first batch: {value.detach().cpu().tolist()}")
    if not value.requires_grad:
        raise ValueError(
            f"reward {name!r} has no gradient path to the images: its output does not require grad (is it computed "
            "under torch.no_grad(), detached, or converted through numpy/PIL?)"
        )


def check_rewards_on_first_batch(
    rewards, images: torch.Tensor, prompts: list[str], positive: str, negative: str, conditions: dict | None = None
):
    """Each reward's own scores on the first batch, before SRP combines them.

    SRP's `(1 + k) * f` with `k` of shape `[B]` would broadcast one scalar for the whole batch into a valid-looking
    `[B]`, so the contract (`[B]`, finite, differentiable) is checked on `f` itself. A text-conditioned reward
    whose scores do not change with the control words is reported: SRP then reduces it to `k * f(x)`.
    """
    from .rewards.base import with_control_word

    for reward in rewards:
        texts = with_control_word(positive, prompts) if reward.text_conditioned else list(prompts)
        score = reward.conditioned_score(images, texts, conditions)
        check_reward_output(reward.name, score, len(prompts))
        if not reward.text_conditioned:
            continue
        with torch.no_grad():
            other = reward.score(images.detach(), with_control_word(negative, prompts))
        if torch.equal(score.detach(), other):
            logger.warning(
                "reward %r gave identical scores for %r and %r before the prompts: it ignores the control words, so "
                "SRP's (1 + k) f(x, pos) - f(x, neg) collapses to k * f(x). If it ignores the text, declare it "
                "image-only (srpo_trl.rewards.image_only(fn), or CallableReward(fn, text_conditioned=False)); if it "
                "reads the text, choose control words it understands (SRPOConfig.positive_control_words / "
                "negative_control_words)",
                reward.name,
                f"{positive}. ",
                f"{negative}. ",
            )


class InactiveHingeWatch:
    """Warn, once per reward, when its hinge `relu(tau - R)` has been zero on every sample for `patience` batches.

    Such a reward gives no gradient: with a threshold below its scores from the start, silently none at all. It
    reads the per-reward fractions the trainer logs anyway (`rewards/{name}/{branch}_hinge_active`, averaged over
    the logging window and every process), so it costs no extra synchronisation.
    """

    def __init__(self, thresholds: dict[str, float], patience: int = 3):
        self.thresholds = thresholds
        self.patience = patience
        self.inactive_batches = dict.fromkeys(thresholds, 0)
        self.warned: set[str] = set()

    def update(self, metrics: dict[str, float], batches: int) -> None:
        """`metrics`: one logging window's means; `batches`: how many batches that window held."""
        for name, tau in self.thresholds.items():
            fractions = [
                v for k, v in metrics.items() if k.startswith(f"rewards/{name}/") and k.endswith("_hinge_active")
            ]
            if not fractions:
                continue
            if max(fractions) > 0:
                self.inactive_batches[name] = 0
                continue
            self.inactive_batches[name] += batches
            if self.inactive_batches[name] >= self.patience and name not in self.warned:
                self.warned.add(name)
                logger.warning(
                    "reward %r: its hinge relu(%s - R) has been zero on every sample for %d batches, so it gives no "
                    "gradient: its scores (logged as rewards/%s/denoise) are all above hinge_threshold=%s. If they "
                    "were above it from the start, the threshold is not on this reward's scale: set "
                    "SRPOConfig.hinge_threshold above the scores it gives",
                    name,
                    tau,
                    self.inactive_batches[name],
                    name,
                    tau,
                )


class NonFiniteGuard:
    """Skip optimizer steps with a non-finite loss or gradient; stop after `max_consecutive` in a row.

    The check costs one host synchronisation per optimizer step: losses are folded into a device-side flag as
    they come, and the gradients are checked through their total norm, which is finite exactly when every
    gradient is. The Trainer computes that norm anyway (for clipping and logging) and hands it over through
    [`observe_grad_norm`]; only a step without one computes it here.

    Args:
        optimizer: the optimizer whose `step` is wrapped (before accelerate wraps it).
        parameters: the trainable parameters whose gradients are checked.
        max_consecutive: stop training after this many skipped steps in a row (0: never stop).
        any_process: turns a local 0/1 flag tensor into "true on any process" (so every rank skips together).
        describe_last_checkpoint: tells, when stopping, which checkpoint is the last good one.
    """

    def __init__(self, optimizer, parameters, max_consecutive: int, any_process, describe_last_checkpoint):
        self.optimizer = optimizer
        self.parameters = [p for p in parameters if p.requires_grad]
        self.max_consecutive = max_consecutive
        self.any_process = any_process
        self.describe_last_checkpoint = describe_last_checkpoint
        self.loss_nonfinite: torch.Tensor | None = None  # device flag, OR-ed over the step's micro-batches
        self.grad_norm: torch.Tensor | float | None = None  # the step's total gradient norm, when already known
        self.skipped_total = 0
        self.streak = 0
        self._step = optimizer.step
        optimizer.step = self.step

    def observe_loss(self, loss: torch.Tensor) -> None:
        """Called once per micro-batch with its loss (before the optimizer step); never synchronises."""
        bad = ~torch.isfinite(loss.detach()).all()
        self.loss_nonfinite = bad if self.loss_nonfinite is None else self.loss_nonfinite | bad

    def observe_grad_norm(self, grad_norm: torch.Tensor | float) -> None:
        """Called with the step's total gradient norm (before the optimizer step), so it is not computed twice.

        Under FSDP2 the norm is a replicated DTensor, which the all-reduce of the non-finite flag cannot take:
        its local, full value is used instead.
        """
        full_tensor = getattr(grad_norm, "full_tensor", None)  # a DTensor
        self.grad_norm = full_tensor() if callable(full_tensor) else grad_norm

    def _nonfinite_flag(self) -> torch.Tensor | None:
        flags = [] if self.loss_nonfinite is None else [self.loss_nonfinite]
        if self.grad_norm is not None:
            flags.append(~torch.isfinite(torch.as_tensor(self.grad_norm)))
        else:
            grads = [p.grad for p in self.parameters if p.grad is not None]
            if grads:
                flags.append(~torch.isfinite(torch.nn.utils.get_total_norm(grads)))
        if not flags:
            return None
        device = flags[-1].device
        return torch.stack([f.to(device) for f in flags]).any().float()

    def step(self, *args, **kwargs):
        flag = self._nonfinite_flag()
        self.loss_nonfinite = self.grad_norm = None
        bad = flag is not None and self.any_process(flag)
        if not bad:
            self.streak = 0
            return self._step(*args, **kwargs)
        for p in self.parameters:  # the Trainer zeroes them too; dropping them here keeps nothing stale around
            p.grad = None
        self.skipped_total += 1
        self.streak += 1
        logger.warning(
            "non-finite loss or gradient: optimizer step skipped, weights unchanged (%d in a row, %d in total)",
            self.streak,
            self.skipped_total,
        )
        if self.max_consecutive and self.streak >= self.max_consecutive:
            raise FloatingPointError(
                f"training stopped: {self.streak} consecutive steps had a non-finite loss or gradient "
                f"(SRPOConfig.max_consecutive_nonfinite_steps={self.max_consecutive}); they were skipped without "
                f"changing the weights. {self.describe_last_checkpoint()} Lower the learning rate, or check the "
                "reward function and the data."
            )
        return None


class InterruptionHandler:
    """Turn SIGTERM/SIGINT into "checkpoint and stop after this step" while installed."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self):
        self.received: int | None = None
        self._previous: dict[int, object] = {}

    def _handle(self, signum, frame) -> None:
        if self.received is not None:  # a second signal: the user insists, stop at once
            raise KeyboardInterrupt
        self.received = signum
        logger.warning(
            "%s received: writing a checkpoint after the current step, then stopping", signal.Signals(signum).name
        )

    def __enter__(self):
        try:
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        except ValueError:  # not the main thread (signals cannot be caught there): leave the defaults
            self._previous.clear()
        return self

    def __exit__(self, *exc) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        self._previous.clear()

    def stop_if_received(self, step: int, last_checkpoint: str) -> None:
        """After training: when a signal stopped it, say where it stopped and exit as the signal asked.

        SIGTERM exits with status 143 (128 + 15); SIGINT raises `KeyboardInterrupt`.
        """
        if self.received is None:
            return
        message = (
            f"training stopped by {signal.Signals(self.received).name} at step {step}; {last_checkpoint} "
            "Resume with trainer.train(resume_from_checkpoint=True)."
        )
        logger.warning(message)
        if self.received == signal.SIGINT:
            raise KeyboardInterrupt(message)
        raise SystemExit(128 + self.received)
