"""Direct-Align maths: pure tensor functions, no model code.

Notation follows docs/method.md: a latent at noise level `s` (0 = clean, 1 = noise) is
`x_s = (1 - s) * x0 + s * eps`; the transformer predicts a velocity `v ~ eps - x0`; an Euler step
from level `a` to `b` is `x_b = x_a + (b - a) * v`. Knowing `eps`, the clean latent is recovered
from any state in one step: `x0 = (x_s - s * eps) / (1 - s)`.

Levels are per sample: a level argument is a float or a tensor of shape `[B]`, broadcast over the
remaining dimensions of the latent.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

# First and last level index that may be drawn for `m`, as in the recipe: uniform on [5, L - 5].
LEVEL_MARGIN = 5


def time_shift(t: torch.Tensor, shift: float) -> torch.Tensor:
    """FLUX's static time shift `k t / (1 + (k - 1) t)`; `shift = 1` is the identity."""
    return shift * t / (1 + (shift - 1) * t)


def shifted_grid(num_steps: int, shift: float) -> torch.Tensor:
    """The `num_steps + 1` levels of an evenly spaced grid from 1 to 0, time-shifted (float64)."""
    return time_shift(torch.linspace(1.0, 0.0, num_steps + 1, dtype=torch.float64), shift)


def _per_sample(level: float | torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Broadcast a scalar or `[B]` level against a `[B, ...]` latent, in the latent's dtype."""
    level = torch.as_tensor(level, device=like.device, dtype=like.dtype)
    return level.reshape(level.shape + (1,) * (like.ndim - level.ndim))


def add_noise(x0: torch.Tensor, eps: torch.Tensor, sigma: float | torch.Tensor) -> torch.Tensor:
    """The flow-matching state at level `sigma`: `(1 - sigma) * x0 + sigma * eps`."""
    s = _per_sample(sigma, x0)
    return (1 - s) * x0 + s * eps


def euler_step(x: torch.Tensor, velocity: torch.Tensor, sigma_from, sigma_to) -> torch.Tensor:
    """One Euler step `x + (sigma_to - sigma_from) * v`; denoises when `sigma_to < sigma_from`."""
    return x + (_per_sample(sigma_to, x) - _per_sample(sigma_from, x)) * velocity


def recover_x0(x: torch.Tensor, eps: torch.Tensor, sigma) -> torch.Tensor:
    """The clean latent implied by state `x` at level `sigma` made from noise `eps`."""
    s = _per_sample(sigma, x)
    return (x - s * eps) / (1 - s)


def euler_sample(
    velocity_fn: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor],
    eps: torch.Tensor,
    sigmas: torch.Tensor,
) -> torch.Tensor:
    """Integrate from `eps` at `sigmas[0]` down the grid `sigmas` with Euler steps.

    `velocity_fn(x, sigma, target)` receives the step's level and the level it goes to (the next one on the grid,
    which a flow map needs) as `[B]` tensors. `sigmas` is a 1-D tensor; it is read on the host once, so the loop
    itself never synchronises with the device.
    """
    levels = sigmas.tolist()
    x = eps
    batch = eps.shape[0]
    for a, b in zip(levels[:-1], levels[1:]):
        sigma = torch.full((batch,), a, device=eps.device, dtype=torch.float32)
        target = torch.full((batch,), b, device=eps.device, dtype=torch.float32)
        x = x + (b - a) * velocity_fn(x, sigma, target).to(x.dtype)
    return x


def flow_map_target(start: torch.Tensor, end: torch.Tensor) -> torch.Tensor:
    """The level a flow map is told a Direct-Align step jumps to: the end of a step down (the denoise branch), and
    for a step up (the inversion branch, which a flow map never learned) the start itself, so that it gives its
    instantaneous velocity."""
    return torch.where(end < start, end, start)


def hinge_loss(reward: torch.Tensor, threshold: float) -> torch.Tensor:
    """ReFL-style hinge per sample: `relu(threshold - reward) / 2`."""
    return torch.relu(threshold - reward) / 2


@dataclass(frozen=True)
class BranchLevels:
    """The levels one training sample uses, from one draw of `m` (see [`TrainingWindow.levels_for`])."""

    m: int
    gap: int
    denoise_from: float  # a: noisier start of the denoise step
    denoise_to: float  # r: recovery level
    denoise_discount: float  # lam_den[m]
    inversion_from: float  # b: less noisy start of the inversion step
    inversion_to: float  # r': recovery level of the inversion branch
    inversion_discount: float  # lam_inv[m']


class TrainingWindow:
    """The discretised training window of Direct-Align and the level/gap/discount rules.

    Args:
        grid_steps (`int`): steps of the shifted grid the window is cut from (recipe: 50).
        start_index, end_index (`int`): window `S[start_index] .. S[end_index]` (recipe: 5, 25).
        shift (`float`): static time shift `k` of that grid (recipe: 3).
        num_levels (`int`): `L`, the number of levels in the window (recipe: 1000).
        rho (`float`): gap parameter in (0, 1); the gap is `min(int((1 - rho) L) + 1, L - m, m)`.
        denoise_discount, inversion_discount (`tuple[float, float]`): linear ramps over the `L`
            levels for the SRP `k` of each branch (recipe: (0.10, 0.25) and (0.30, 0.01)).
    """

    def __init__(
        self,
        grid_steps: int = 50,
        start_index: int = 5,
        end_index: int = 25,
        shift: float = 3.0,
        num_levels: int = 1000,
        rho: float = 0.9,
        denoise_discount: tuple[float, float] = (0.10, 0.25),
        inversion_discount: tuple[float, float] = (0.30, 0.01),
    ):
        if not 0 <= start_index < end_index <= grid_steps:
            raise ValueError(
                f"need 0 <= start_index < end_index <= grid_steps, got {start_index}, {end_index}, {grid_steps}"
            )
        if num_levels < 2 * LEVEL_MARGIN + 1:
            raise ValueError(f"num_levels must be at least {2 * LEVEL_MARGIN + 1}, got {num_levels}")
        if not 0 < rho < 1:
            raise ValueError(f"rho must be in (0, 1), got {rho}")
        grid = shifted_grid(grid_steps, shift)
        self.num_levels = num_levels
        self.rho = rho
        self.levels = torch.linspace(grid[start_index].item(), grid[end_index].item(), num_levels, dtype=torch.float64)
        self.denoise_discount = torch.linspace(*denoise_discount, num_levels, dtype=torch.float64)
        self.inversion_discount = torch.linspace(*inversion_discount, num_levels, dtype=torch.float64)

    def gap(self, m: int) -> int:
        """`K = min(int((1 - rho) * L) + 1, L - m, m)`, in Python floats (gives 100, not 101, for the recipe)."""
        L = self.num_levels
        return min(int((1 - self.rho) * L) + 1, L - m, m)

    def sample_m(self, generator: torch.Generator | None = None) -> int:
        """Draw `m` uniformly from `[5, L - 5]`, both ends included."""
        return int(torch.randint(LEVEL_MARGIN, self.num_levels - LEVEL_MARGIN + 1, (1,), generator=generator))

    def levels_for(self, m: int) -> BranchLevels:
        """All levels and discounts that one draw of `m` implies (docs/method.md, "One training sample", steps 3 to 5)."""
        L, W = self.num_levels, self.levels
        if not LEVEL_MARGIN <= m <= L - LEVEL_MARGIN:
            raise ValueError(f"m must be in [{LEVEL_MARGIN}, {L - LEVEL_MARGIN}], got {m}")
        K = self.gap(m)
        m_inv = max(m - K, 1)
        return BranchLevels(
            m=m,
            gap=K,
            denoise_from=W[L - m - K].item(),
            denoise_to=W[L - m].item(),
            denoise_discount=self.denoise_discount[m].item(),
            inversion_from=W[L - m_inv].item(),
            # r itself, except when m - K < 1: then one level noisier.
            inversion_to=W[L - min(m_inv + K, L)].item(),
            inversion_discount=self.inversion_discount[m_inv].item(),
        )
