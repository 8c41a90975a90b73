"""The step's metrics: kept on the device as they come, reduced once per log.

Recording never synchronises with the device and never talks to the other processes; the log gathers every
metric in one collective. Metrics recorded `with_std` also get their standard deviation over every sample of the
logging window on every process, from the mean of squares (TRL's `reward_std`, `rewards/{name}/std`).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable

import torch

_SQUARES = "::squares"  # suffix of the recorded mean squares a metric's standard deviation is computed from


def std_name(key: str) -> str:
    """TRL's names: `reward` -> `reward_std`, `rewards/{name}/mean` -> `rewards/{name}/std`."""
    return key.removesuffix("/mean") + "/std" if key.endswith("/mean") else key + "_std"


class MetricsBuffer(defaultdict):
    """`{key: [this process's mean of each recorded batch]}`, on the device."""

    def __init__(self):
        super().__init__(list)

    def record(self, key: str, values: torch.Tensor, with_std: bool = False) -> None:
        """Keep this process's mean of `values` (and its mean square, `with_std`); no host sync."""
        values = values.detach().float()
        self[key].append(values.mean())
        if with_std:
            self[key + _SQUARES].append(values.square().mean())

    def batches(self, key: str) -> int:
        """How many batches recorded `key` since the last clear."""
        return len(self.get(key, []))

    def gathered(self, gather: Callable[[torch.Tensor], torch.Tensor]) -> dict[str, float]:
        """Each metric averaged over its batches and over all processes (`gather`: one collective)."""
        keys = sorted(k for k, v in self.items() if v)
        if not keys:
            return {}
        local = torch.stack([torch.stack(self[k]).mean() for k in keys])
        # Every process records the same keys each step (and the same number of samples), so the mean of
        # the processes' means is the mean over all samples.
        means = dict(zip(keys, gather(local).reshape(-1, len(keys)).mean(0).tolist()))
        for key in [k for k in keys if k.endswith(_SQUARES)]:  # std over all samples: sqrt(E[x^2] - E[x]^2)
            base = key.removesuffix(_SQUARES)
            means[std_name(base)] = max(means.pop(key) - means[base] ** 2, 0.0) ** 0.5
        return means
