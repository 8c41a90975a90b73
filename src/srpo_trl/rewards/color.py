"""A cheap, interpretable text-conditioned reward: colour and brightness words.

`f(x, text)` is how far the image's mean colour lies along the direction of the colour words the
text contains (`"red. a cat"` -> towards red). With SRP, positive `red` and negative `blue`, the
reward is high for red, not blue, images: a person sees at a glance whether training worked. Used by the
unit tests (with `srpo_trl.testing.tiny_colour_flux_pipeline`); it stands in for a real reward model, it is not one.
"""

from __future__ import annotations

import re

import torch

from .base import Reward

COLORS: dict[str, tuple[float, float, float]] = {
    "red": (1.0, 0.0, 0.0),
    "green": (0.0, 1.0, 0.0),
    "blue": (0.0, 0.0, 1.0),
    "yellow": (1.0, 1.0, 0.0),
    "cyan": (0.0, 1.0, 1.0),
    "magenta": (1.0, 0.0, 1.0),
    "bright": (1.0, 1.0, 1.0),
    "dark": (0.0, 0.0, 0.0),
}


class ColorWordReward(Reward):
    """`f(x, text) = <mean_rgb(x) - 0.5, mean of (colour - 0.5) over the colour words in text>`.

    Zero for texts without colour words. A pure red image scores 0.75 for "red".
    """

    name = "color"

    def __init__(self):
        super().__init__()
        self._pattern = re.compile(r"\b(" + "|".join(COLORS) + r")\b", re.IGNORECASE)

    def direction(self, text: str) -> torch.Tensor:
        words = [w.lower() for w in self._pattern.findall(text)]
        if not words:
            return torch.zeros(3)
        return torch.tensor([COLORS[w] for w in words]).mean(0) - 0.5

    def score(self, images, prompts):
        mean_rgb = images.float().mean(dim=(-2, -1)) - 0.5  # [B, 3]
        directions = torch.stack([self.direction(p) for p in prompts]).to(mean_rgb.device)
        return (mean_rgb * directions).sum(-1)
