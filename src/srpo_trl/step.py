"""One SRPO step, top to bottom (docs/method.md; the trainer, the benchmark and the tests all run this code):

    rollout (no grad) -> levels -> one batched transformer call on both branches -> exact recovery of x0
    -> VAE decode -> SRP reward per branch -> each reward's hinge

[`SRPOStep`] holds what does not change between steps (the family adapter, the training window, the rewards
with their weights and hinge thresholds, the guidance and size); its methods are the phases, so that a
benchmark can time each one from outside and a reader can follow the step in [`SRPOStep.losses`].
Randomness comes in through one `torch.Generator` per step; data, processes and metrics stay with the caller.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from . import direct_align
from .guards import check_reward_output, check_rewards_on_first_batch
from .rewards import Reward

Record = Callable[..., None]  # record(key, values, with_std=False): where the step's metrics go


def _no_record(key: str, values: torch.Tensor, with_std: bool = False) -> None:
    pass


@dataclass
class BranchBatch:
    """Both branches of a batch as one batch of `n * B` samples, denoise first."""

    names: list[str]  # "denoise", then "inversion" when that branch is on
    words: list[tuple[str, str]]  # (positive, negative) control words per branch: swapped for the inversion
    levels: list[direct_align.BranchLevels]  # per sample of the batch
    start: torch.Tensor  # [n * B] level each branch's Euler step starts from
    end: torch.Tensor  # [n * B] its recovery level
    x_start: torch.Tensor  # noised latents at `start`
    eps: torch.Tensor  # the noise, repeated per branch
    text: dict[str, torch.Tensor]  # the conditioning, repeated per branch


@dataclass
class SRPOStep:
    """The SRPO step for one model family, window and set of rewards (see the module docstring)."""

    adapter: object
    window: direct_align.TrainingWindow
    rewards: Sequence[Reward]
    reward_weights: Sequence[float]
    hinge_thresholds: Sequence[float]
    rollout_sigmas: torch.Tensor
    height: int
    width: int
    rollout_guidance_scale: float = 1.0
    train_guidance_scale: float = 3.5
    use_inversion_branch: bool = True
    #: Wan 2.2 A14B: the low-noise expert's guidance in the rollout (and the samples made with it); `None`: the same.
    guidance_scale_2: float | None = None

    @classmethod
    def from_config(cls, adapter, args, rewards, reward_weights, hinge_thresholds) -> SRPOStep:
        """The step an `SRPOConfig` describes: its window, shift (the family's at the resolution unless given),
        rollout grid, guidance and branches."""
        height, width = args.image_size
        guidance_scale_2 = getattr(args, "guidance_scale_2", None)
        if guidance_scale_2 is not None and not getattr(adapter, "two_experts", False):
            raise ValueError(
                f"SRPOConfig.guidance_scale_2={guidance_scale_2!r} is the guidance of the low-noise expert of a "
                "pipeline with two experts (Wan 2.2 A14B: transformer_2, below boundary_ratio); this "
                f"{type(getattr(adapter, 'pipeline', adapter)).__name__} has one transformer: leave it unset and "
                "use rollout_guidance_scale / sample_guidance_scale"
            )
        shift = args.time_shift or adapter.default_time_shift(height, width)
        # The family's own grid (Qwen-Image 2.1's authors set theirs) unless the config sets the shift.
        rollout_sigmas = None if args.time_shift else adapter.rollout_sigmas(args.rollout_steps, height, width)
        if rollout_sigmas is None:
            rollout_sigmas = direct_align.shifted_grid(args.rollout_steps, shift).float()
        window = direct_align.TrainingWindow(
            grid_steps=args.window_grid_steps,
            start_index=args.window_start_index,
            end_index=args.window_end_index,
            shift=shift,
            num_levels=args.num_levels,
            rho=args.rho,
            denoise_discount=tuple(args.denoise_discount),
            inversion_discount=tuple(args.inversion_discount),
        )
        return cls(
            adapter=adapter,
            window=window,
            rewards=rewards,
            reward_weights=reward_weights,
            hinge_thresholds=hinge_thresholds,
            rollout_sigmas=rollout_sigmas,
            height=height,
            width=width,
            rollout_guidance_scale=args.rollout_guidance_scale,
            train_guidance_scale=args.train_guidance_scale,
            use_inversion_branch=args.use_inversion_branch,
            guidance_scale_2=guidance_scale_2,
        )

    @torch.no_grad()
    def rollout(self, model, eps: torch.Tensor, text: dict, guidance_scale: float | None = None) -> torch.Tensor:
        """Clean latents `x0` from `eps` along the shifted rollout grid, without gradient. With `guidance_scale_2`
        (two experts) the adapter is given `(guidance, guidance_scale_2)`: the high- and low-noise experts'."""
        guidance = self.rollout_guidance_scale if guidance_scale is None else guidance_scale
        if self.guidance_scale_2 is not None:
            guidance = (guidance, self.guidance_scale_2)

        def velocity(x, sigma, target):
            return self.adapter.velocity(model, x, sigma, text, guidance, self.height, self.width, target=target)

        return direct_align.euler_sample(velocity, eps, self.rollout_sigmas)

    def draw_levels(self, generator: torch.Generator, draws: int, offset: int, batch: int) -> list:
        """`draws` level draws (one per sample of the global batch); this batch's are `[offset, offset + batch)`."""
        ms = [self.window.sample_m(generator) for _ in range(draws)]
        return [self.window.levels_for(m) for m in ms[offset : offset + batch]]

    def branch_batch(self, x0, eps, text: dict, levels: list, words: tuple[str, str]) -> BranchBatch:
        """Both branches' noised starting states, as one batch (denoise first)."""
        positive, negative = words
        names, branch_words = ["denoise"], [(positive, negative)]
        if self.use_inversion_branch:  # control words swapped: the regulariser against reward hacking
            names.append("inversion")
            branch_words.append((negative, positive))
        n, device = len(names), x0.device
        start = torch.tensor([getattr(lv, f"{b}_from") for b in names for lv in levels], device=device)
        end = torch.tensor([getattr(lv, f"{b}_to") for b in names for lv in levels], device=device)
        x0_rep, eps_rep = (t.repeat(n, *[1] * (t.ndim - 1)) for t in (x0, eps))  # any latent layout
        text_rep = {k: v.repeat(n, *[1] * (v.ndim - 1)) for k, v in text.items()}
        x_start = direct_align.add_noise(x0_rep, eps_rep, start)
        return BranchBatch(names, branch_words, levels, start, end, x_start, eps_rep, text_rep)

    def recover(self, model, branches: BranchBatch) -> torch.Tensor:
        """One Euler step of each branch WITH gradient, then the exact recovery of `x0` from the noise."""
        b = branches
        target = direct_align.flow_map_target(b.start, b.end)  # read by flow maps only
        v = self.adapter.velocity(
            model, b.x_start, b.start, b.text, self.train_guidance_scale, self.height, self.width, target=target
        )
        x_end = direct_align.euler_step(b.x_start, v.float(), b.start, b.end)
        return direct_align.recover_x0(x_end, b.eps, b.end)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Images `[n * B, 3, H, W]` (videos `[n * B, F, 3, H, W]`) in [0, 1], differentiably: what the adapter lets
        the rewards see (a video family may decode only its first frames)."""
        return self.adapter.decode(self.adapter.reward_latents(latents), self.height, self.width)

    def reward_losses(
        self,
        images: torch.Tensor,
        prompts: list[str],
        branches: BranchBatch,
        record: Record = _no_record,
        check: bool = False,
        conditions: dict | None = None,
    ) -> dict[str, torch.Tensor]:
        """SRP reward per branch with its words and discount `k`, and each reward's hinge on its own scale.

        `check`: on the first batch, check each reward's own output before SRP combines it. `conditions`: the
        batch's conditioning images for the rewards that compare with them (`Reward.conditions`), the same for both
        branches.
        """
        batch = len(prompts)
        if check:
            check_rewards_on_first_batch(self.rewards, images[:batch], prompts, *branches.words[0], conditions)
        losses = {}
        for i, (branch, words) in enumerate(zip(branches.names, branches.words)):
            branch_images = images[i * batch : (i + 1) * batch]
            discount = torch.tensor(
                [getattr(lv, f"{branch}_discount") for lv in branches.levels], device=images.device
            )
            total = torch.zeros(batch, device=images.device)
            hinge = torch.zeros(batch, device=images.device)
            active = []
            for reward, weight, tau in zip(self.rewards, self.reward_weights, self.hinge_thresholds):
                # Only a reward that reads the condition is given it (an `srp` override may not take it).
                given = {"conditions": conditions} if reward.conditions else {}
                r = reward.srp(branch_images, prompts, *words, discount, inversion=branch == "inversion", **given)
                if check:
                    check_reward_output(reward.name, r, batch)
                r = r.float()
                total = total + weight * r
                hinge = hinge + weight * direct_align.hinge_loss(r, tau)
                active.append(r < tau)
                record(f"rewards/{reward.name}/{branch}", r)
                record(f"rewards/{reward.name}/{branch}_hinge_active", active[-1])
                if branch == "denoise":  # TRL's names for the reward being maximised
                    record(f"rewards/{reward.name}/mean", r, with_std=True)
            losses[branch] = hinge.mean()
            record(f"reward/{branch}", total)
            if branch == "denoise":
                record("reward", total, with_std=True)
            record(f"loss/{branch}", losses[branch])
            record(f"hinge_active/{branch}", torch.stack(active))
        return losses

    def losses(
        self,
        model,
        x0: torch.Tensor,
        eps: torch.Tensor,
        text: dict,
        prompts: list[str],
        levels: list,
        words: tuple[str, str],
        record: Record = _no_record,
        check: bool = False,
        conditions: dict | None = None,
    ) -> dict[str, torch.Tensor]:
        """Each branch's loss for clean latents `x0` made from noise `eps` (a rollout, or real images)."""
        branches = self.branch_batch(x0, eps, text, levels, words)
        images = self.decode(self.recover(model, branches))
        losses = self.reward_losses(images, prompts, branches, record, check, conditions)
        device = x0.device
        record("levels/m", torch.tensor([float(lv.m) for lv in levels], device=device))
        record("levels/gap", torch.tensor([float(lv.gap) for lv in levels], device=device))
        record("levels/sigma", branches.end[: len(prompts)])
        return losses
