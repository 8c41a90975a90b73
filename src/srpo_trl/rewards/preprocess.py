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


def _resize(images: torch.Tensor, new_h: int, new_w: int) -> torch.Tensor:
    if (new_h, new_w) == tuple(images.shape[-2:]):
        return images
    return F.interpolate(images, size=(new_h, new_w), mode="bicubic", align_corners=False, antialias=True)


def clip_preprocess(images: torch.Tensor, size: int = 224, mode: str = "crop") -> torch.Tensor:
    """Images `[B, 3, H, W]` in [0, 1] -> normalised CLIP input `[B, 3, size, size]` (float32).

    Args:
        images: float images in [0, 1]; any dtype (computed in float32).
        size: side of the square model input.
        mode: `"crop"` (training, the reference CLIP transform): shortest side to `size`, centre crop.
            `"pad"` (the HPS evaluation's transform): longest side to `size`, centred on a black square.
    """
    # Antialiased bicubic has no bf16 kernel on the CPU, and float32 keeps the reward exact.
    images = images.float()
    h, w = images.shape[-2:]
    if mode == "crop":
        scale = size / min(h, w)
        new_h, new_w = max(size, round(h * scale)), max(size, round(w * scale))
        images = _resize(images, new_h, new_w)
        top, left = (new_h - size) // 2, (new_w - size) // 2
        images = images[..., top : top + size, left : left + size]
    elif mode == "pad":
        scale = size / max(h, w)
        new_h, new_w = min(size, round(h * scale)), min(size, round(w * scale))
        images = _resize(images, new_h, new_w)
        top, left = (size - new_h) // 2, (size - new_w) // 2
        images = F.pad(images, (left, size - new_w - left, top, size - new_h - top), value=0.0)
    else:
        raise ValueError(f"clip_preprocess: mode must be 'crop' or 'pad', got {mode!r}")
    mean = torch.tensor(CLIP_MEAN, device=images.device).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD, device=images.device).view(1, 3, 1, 1)
    return (images - mean) / std
