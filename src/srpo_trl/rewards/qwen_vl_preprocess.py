"""Qwen2-VL's image preprocessing in torch, differentiable in the images.

transformers' `Qwen2VLImageProcessor` takes PIL images or uint8 arrays: it resizes each image (bicubic)
to a size whose sides are multiples of `patch_size * merge_size` (28) and whose area lies within
`[min_pixels, max_pixels]`, normalises it with CLIP's mean and std, repeats it `temporal_patch_size`
times (a still image is a two-frame clip to the vision tower), and cuts it into flat patches ordered so
that each 2 x 2 block of patches the tower later merges into one token is contiguous. This module does
the same on float images in [0, 1], so that a reward's gradient reaches the pixels.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .preprocess import CLIP_MEAN, CLIP_STD


def qwen_vl_resized_size(
    height: int, width: int, *, factor: int = 28, min_pixels: int = 56 * 56, max_pixels: int = 28 * 28 * 1280
) -> tuple[int, int]:
    """The `(height, width)` Qwen2-VL's processor resizes an image to (its `smart_resize`).

    Both sides become multiples of `factor`, the area lands within `[min_pixels, max_pixels]` and the aspect
    ratio is kept as far as the rounding allows. The arithmetic is the processor's, float for float, so that
    the sizes agree exactly (a side off by 28 px would change the number of image tokens).
    """
    if min(height, width) < 1:
        raise ValueError(f"qwen_vl_resized_size: image size {height}x{width} is empty")
    if max(height, width) / min(height, width) > 200:
        raise ValueError(f"qwen_vl_resized_size: aspect ratio of {height}x{width} is above 200, the processor's limit")
    resized_height = round(height / factor) * factor
    resized_width = round(width / factor) * factor
    if resized_height * resized_width > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        resized_height = max(factor, math.floor(height / beta / factor) * factor)
        resized_width = max(factor, math.floor(width / beta / factor) * factor)
    elif resized_height * resized_width < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        resized_height = math.ceil(height * beta / factor) * factor
        resized_width = math.ceil(width * beta / factor) * factor
    return resized_height, resized_width


def qwen_vl_preprocess(
    images: torch.Tensor,
    *,
    min_pixels: int,
    max_pixels: int,
    patch_size: int = 14,
    merge_size: int = 2,
    temporal_patch_size: int = 2,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Float images `[B, 3, H, W]` in [0, 1] -> `(pixel_values, image_grid_thw)` as Qwen2-VL's processor gives them.

    Returns `pixel_values` `[B * grid_h * grid_w, 3 * temporal_patch_size * patch_size**2]` (float32) and
    `image_grid_thw` `[B, 3]` (`[1, grid_h, grid_w]` per image). Resizing is antialiased bicubic, which is
    PIL's bicubic filter (the processor resizes with PIL), and the result is clamped to [0, 1] as PIL's uint8
    output is; the processor also rounds to uint8 there, which this skips to keep the gradient.
    """
    if images.ndim != 4 or images.shape[1] != 3 or not images.is_floating_point():
        raise ValueError(
            f"qwen_vl_preprocess: expected float images [B, 3, H, W] in [0, 1], got {tuple(images.shape)} "
            f"of dtype {images.dtype}"
        )
    factor = patch_size * merge_size
    batch, channels, height, width = images.shape
    resized_height, resized_width = qwen_vl_resized_size(
        height, width, factor=factor, min_pixels=min_pixels, max_pixels=max_pixels
    )
    x = images.float()
    # PIL resizes in two passes, width then height, clipping to [0, 255] after each: clamping between the passes
    # as well keeps the overshoot of upsampled sharp edges where PIL's is (without it: 0.3 off at edges).
    if resized_width != width:
        x = F.interpolate(x, size=(height, resized_width), mode="bicubic", antialias=True, align_corners=False)
        x = x.clamp(0, 1)
    if resized_height != height:
        x = F.interpolate(x, size=(resized_height, resized_width), mode="bicubic", antialias=True, align_corners=False)
        x = x.clamp(0, 1)
    mean = torch.tensor(CLIP_MEAN, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD, device=x.device).view(1, 3, 1, 1)
    x = (x - mean) / std

    grid_h, grid_w = resized_height // patch_size, resized_width // patch_size
    # [B, C, gh/m, m, p, gw/m, m, p] -> [B, gh/m, gw/m, m, m, C, p, p]: each merged 2 x 2 block's patches in a row.
    x = x.reshape(
        batch, channels, grid_h // merge_size, merge_size, patch_size, grid_w // merge_size, merge_size, patch_size
    )
    x = x.permute(0, 2, 5, 3, 6, 1, 4, 7)
    # The still image fills every temporal slot of a patch: [..., C, T, p, p].
    x = x.unsqueeze(6).expand(*x.shape[:6], temporal_patch_size, patch_size, patch_size)
    pixel_values = x.reshape(batch * grid_h * grid_w, channels * temporal_patch_size * patch_size * patch_size)
    grid_thw = torch.tensor([[1, grid_h, grid_w]] * batch, dtype=torch.long, device=images.device)
    return pixel_values, grid_thw
