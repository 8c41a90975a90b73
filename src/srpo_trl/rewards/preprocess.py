"""Differentiable CLIP image preprocessing, in torch and float32.

Matches the reference (torchvision `Resize` + `CenterCrop` + `Normalize` on tensors): shortest
side to 224 with antialiased bicubic interpolation, centre crop, CLIP mean and std. Antialias
matters: without it the result is far from the reference.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def clip_preprocess(images: torch.Tensor, size: int = 224) -> torch.Tensor:
    """Images `[B, 3, H, W]` in [0, 1] -> normalised CLIP input `[B, 3, size, size]` (float32)."""
    # Antialiased bicubic has no bf16 kernel on the CPU, and float32 keeps the reward exact.
    images = images.float()
    h, w = images.shape[-2:]
    scale = size / min(h, w)
    new_h, new_w = max(size, round(h * scale)), max(size, round(w * scale))
    if (new_h, new_w) != (h, w):
        images = F.interpolate(images, size=(new_h, new_w), mode="bicubic", align_corners=False, antialias=True)
    top, left = (new_h - size) // 2, (new_w - size) // 2
    images = images[..., top : top + size, left : left + size]
    mean = torch.tensor(CLIP_MEAN, device=images.device).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD, device=images.device).view(1, 3, 1, 1)
    return (images - mean) / std
