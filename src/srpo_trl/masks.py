"""Inpainting masks: read from a dataset column, or drawn at random (seeded) when a dataset has images but no masks.

A mask is white (1) where the image is repainted and black (0) where it is kept, binarised at 0.5 as diffusers'
mask processor does. Random masks mix the two kinds inpainting models are trained and used with: a few boxes
(objects to replace) and a few thick brush strokes (things to paint out), together covering roughly 10-50% of the
image. PIL draws them, so they are exact and cheap; a row's mask depends only on the seed and the row's index.
"""

from __future__ import annotations

import numpy as np
import torch


def random_mask(height: int, width: int, seed: int):
    """A PIL `"L"` mask of `height x width`: 1-2 boxes and 1-3 brush strokes, white where repainted."""
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    mask = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(mask)
    for _ in range(rng.integers(1, 3)):  # boxes, each 15-45% of a side
        h, w = (rng.uniform(0.15, 0.45, 2) * (height, width)).astype(int) + 1
        top, left = rng.integers(0, height - h + 1), rng.integers(0, width - w + 1)
        draw.rectangle((left, top, left + w - 1, top + h - 1), fill=255)
    brush = max(2, round(0.06 * min(height, width)))
    for _ in range(rng.integers(1, 4)):  # strokes: a random walk of 3-6 segments
        point = rng.uniform(0, 1, 2) * (width, height)
        for _ in range(rng.integers(3, 7)):
            angle, length = rng.uniform(0, 2 * np.pi), rng.uniform(0.1, 0.3) * min(height, width)
            end = np.clip(point + length * np.array([np.cos(angle), np.sin(angle)]), 0, (width - 1, height - 1))
            draw.line((*point, *end), fill=255, width=brush)
            draw.ellipse((*(end - brush / 2), *(end + brush / 2)), fill=255)  # a round joint
            point = end
    return mask


def with_random_masks(dataset, column: str, height: int, width: int, seed: int):
    """`dataset` with a `column` of [`random_mask`]s, row `i`'s drawn with seed `(seed, i)`: the same on every
    process and on every resume."""

    def add_mask(row, index):
        row_seed = int(np.random.SeedSequence([seed, index]).generate_state(1)[0])
        return {column: random_mask(height, width, row_seed)}

    return dataset.map(add_mask, with_indices=True)


def mask_to_tensor(mask, height: int, width: int) -> torch.Tensor:
    """A PIL mask (any mode) or a path to one as `[1, height, width]` of 0/1, resized and centre-cropped exactly as
    the image it belongs to ([`srpo_trl.data.image_to_tensor`])."""
    from .data import image_to_tensor

    return (image_to_tensor(mask, height, width).mean(0, keepdim=True) >= 0.5).float()
