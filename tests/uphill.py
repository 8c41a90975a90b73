"""One real training step, and whether it moved the weights uphill on each branch's reward.

On a random tiny model, "the reward rises over a run" is not a claim a test can make at the recipe's defaults:
at lr 5e-6 a few steps barely move the reward, and at a toy lr (0.1) Adam amplifies float differences between
thread counts and CPUs (about 1e-6 relative) into different end results, so a margin measured on one machine
can flip on another, and a toy hinge (`hinge_threshold=100`) or a switched-off inversion branch hides the bugs
users meet at the defaults. What does hold at the defaults is first-order: one real `trainer.train()` step
changes the weights by `d = theta_after - theta_before`, and for each branch `g . d < 0`, where `g` is that
branch's loss gradient at `theta_before` on the very batch, noise and levels the step used. The loss of a
branch is `mean(sum_i w_i relu(tau_i - R_i) / 2)`, so while its hinges are active `g . d < 0` means its reward went
up to first order. It is the sign of a dot product, not a tuned margin: AdamW's first step is about
`-lr * sign(g_denoise + g_inversion)` per element, so the sign only needs the two branches' gradients to agree
(`tests/test_reward_gradients.py` measures their cosine at 0.68-0.98). Measured for every test that uses this, seeds
0-2 (config and model), 1 and 2 threads: every dot negative, the cosine between the step and each branch's descent
direction 0.10-0.19 (0.66-0.74 for the 8-bit AdamW test), never near zero. Checked against finite differences on
the offline test (x0 does not depend on the weights there): a predicted loss change of -3.50e-5 (denoise) and
-1.40e-5 (inversion) against a measured -3.48e-5 and -1.40e-5 on the same draws.

`tests/test_trainer.py` runs it on the shipped trained model and reward (`srpo_trl.pretrained`, control words
+photo / -drawing), a model training can improve; that the reward then rises over a whole run is the demo test's
claim (`tests/test_demo_and_card.py`).

The gradients are taken inside the real step: `branch_losses` is wrapped so that its call in `compute_loss`
(with the model in the mode the Trainer set, under its autocast) also differentiates each branch's loss with
`retain_graph=True` before the Trainer back-propagates the same graph. Nothing is drawn twice, so the noise key,
the metrics and the first-batch reward checks are exactly those of a step without the spy.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class UphillStep:
    """What [`uphill_step`] measured; `dots[b]` is `grad(loss_b) . (theta_after - theta_before)`."""

    dots: dict[str, float]
    cosines: dict[str, float]  # cos(-grad(loss_b), theta_after - theta_before): the dot's sign, scale-free
    gradient_norms: dict[str, float]
    changed: dict[str, bool]  # per trainable tensor: did the step change it at all
    has_gradient: dict[str, bool]  # per trainable tensor: nonzero loss gradient (summed over the branches)
    dtypes: set[torch.dtype] = field(default_factory=set)

    @property
    def uphill(self) -> bool:
        """Every branch's loss went down (its reward up) to first order."""
        return bool(self.dots) and all(d < 0 for d in self.dots.values())

    @property
    def all_changed(self) -> bool:
        return all(self.changed.values())

    @property
    def unchanged_with_gradient(self) -> list[str]:
        """Tensors that had a gradient but kept their value: an update lost to rounding, or never applied."""
        return [n for n, c in self.changed.items() if not c and self.has_gradient[n]]


def uphill_step(trainer) -> UphillStep:
    """Run `trainer.train()` for exactly one optimizer step and measure it (see the module docstring).

    The trainer's config must ask for one step (`max_steps=1`) with one micro-batch
    (`gradient_accumulation_steps=1`): the measured gradient is that micro-batch's.
    """
    args = trainer.args
    if args.max_steps != 1 or args.gradient_accumulation_steps != 1:
        raise ValueError("uphill_step measures one optimizer step of one micro-batch: max_steps=1, no accumulation")
    named = [(n, p) for n, p in trainer.model.named_parameters() if p.requires_grad]
    params = [p for _, p in named]
    before = [p.detach().clone() for p in params]
    gradients: dict[str, list[torch.Tensor]] = {}
    original = trainer.branch_losses

    def spy(model, inputs):
        if gradients:  # a second call would mean that the step is not the one measured
            raise AssertionError("branch_losses was called more than once in a one-step run")
        losses = original(model, inputs)
        for branch, loss in losses.items():
            grads = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
            gradients[branch] = [(torch.zeros_like(p) if g is None else g).double() for g, p in zip(grads, params)]
        return losses

    trainer.branch_losses = spy
    try:
        trainer.train()
    finally:
        del trainer.branch_losses  # the instance attribute: the class's method is back
    assert trainer.state.global_step == 1 and gradients, "the step did not run"

    deltas = [(p.detach().double() - b.double()) for p, b in zip(params, before)]
    flat_delta = torch.cat([d.flatten() for d in deltas])
    dots, cosines, norms = {}, {}, {}
    for branch, grads in gradients.items():
        flat = torch.cat([g.flatten() for g in grads])
        dots[branch] = float(flat @ flat_delta)
        norms[branch] = float(flat.norm())
        denominator = flat.norm() * flat_delta.norm()
        cosines[branch] = float(-(flat @ flat_delta) / denominator) if denominator > 0 else 0.0
    total = [sum(gs) for gs in zip(*gradients.values())]
    return UphillStep(
        dots=dots,
        cosines=cosines,
        gradient_norms=norms,
        changed={n: not torch.equal(p.detach(), b) for (n, p), b in zip(named, before)},
        has_gradient={n: bool(g.abs().sum() > 0) for (n, _), g in zip(named, total)},
        dtypes={p.dtype for p in params},
    )
