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


def qwen_vl_video_frame_indices(
    total_frames: int,
    video_fps: float,
    *,
    fps: float | None = 2.0,
    num_frames: int | None = None,
    min_frames: int = 4,
    max_frames: int = 768,
    frame_factor: int = 2,
) -> list[int]:
    """Which frames of a `total_frames`-frame video at `video_fps` Qwen2-VL's uniform video sampling keeps.

    The rule is qwen-vl-utils' (which VideoAlign's loader uses; transformers' own `sample_frames` floors where it
    rounds and steps where it spaces, so it keeps other frames): `num_frames` rounded to a multiple of
    `frame_factor`, or else `total_frames / video_fps * fps` clamped to `[min_frames, min(max_frames, total_frames)]`
    (each bound rounded inwards to a multiple of `frame_factor`) and rounded to one; then that many indices evenly
    spaced from the first frame to the last, rounded (half to even, as torch rounds).
    """
    if total_frames < frame_factor:
        raise ValueError(f"qwen_vl_video_frame_indices: {total_frames} frames; Qwen2-VL needs at least {frame_factor}")
    if num_frames is not None:
        count = round(num_frames / frame_factor) * frame_factor
    elif fps is not None:
        low = math.ceil(min_frames / frame_factor) * frame_factor
        high = math.floor(min(max_frames, total_frames) / frame_factor) * frame_factor
        count = min(max(total_frames / video_fps * fps, low), high)
        count = round(count / frame_factor) * frame_factor
    else:
        raise ValueError("qwen_vl_video_frame_indices: give fps or num_frames")
    count = min(count, total_frames)
    if count < frame_factor:
        raise ValueError(f"qwen_vl_video_frame_indices: {count} frames sampled; at least {frame_factor} are needed")
    return torch.linspace(0, total_frames - 1, count).round().long().tolist()


def qwen_vl_video_preprocess(
    videos: torch.Tensor,
    *,
    min_pixels: int,
    max_pixels: int,
    patch_size: int = 14,
    merge_size: int = 2,
    temporal_patch_size: int = 2,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Float videos `[B, T, 3, H, W]` in [0, 1] (frames already sampled) -> `(pixel_values_videos, video_grid_thw)`.

    As Qwen2-VL's video path gives them: every frame resized to `qwen_vl_resized_size(H, W)` with one antialiased
    bicubic pass (qwen-vl-utils resizes video frames as tensors with torchvision, which is this `F.interpolate`
    call; its uint8 output is clamped, so this clamps to [0, 1] too, and skips its rounding to keep the gradient),
    CLIP mean and std, a last frame repeated while `T` is not a multiple of `temporal_patch_size` (as transformers'
    video processor pads), then `temporal_patch_size` consecutive frames per patch. Returns `pixel_values_videos`
    `[B * grid_t * grid_h * grid_w, 3 * temporal_patch_size * patch_size**2]` (float32), each row `[C, T, p, p]`
    flattened and each merged 2 x 2 block's rows contiguous, frame pair after frame pair; `video_grid_thw` `[B, 3]`.
    """
    if videos.ndim != 5 or videos.shape[2] != 3 or not videos.is_floating_point():
        raise ValueError(
            f"qwen_vl_video_preprocess: expected float videos [B, T, 3, H, W] in [0, 1], got {tuple(videos.shape)} "
            f"of dtype {videos.dtype}"
        )
    batch, frames, channels, height, width = videos.shape
    resized_height, resized_width = qwen_vl_resized_size(
        height, width, factor=patch_size * merge_size, min_pixels=min_pixels, max_pixels=max_pixels
    )
    x = videos.float().flatten(0, 1)
    if (resized_height, resized_width) != (height, width):
        x = F.interpolate(x, size=(resized_height, resized_width), mode="bicubic", antialias=True, align_corners=False)
        x = x.clamp(0, 1)
    mean = torch.tensor(CLIP_MEAN, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD, device=x.device).view(1, 3, 1, 1)
    x = ((x - mean) / std).view(batch, frames, channels, resized_height, resized_width)
    if pad := -frames % temporal_patch_size:
        x = torch.cat([x, x[:, -1:].expand(batch, pad, *x.shape[2:])], dim=1)
    grid_t = x.shape[1] // temporal_patch_size
    grid_h, grid_w = resized_height // patch_size, resized_width // patch_size
    m, p = merge_size, patch_size
    x = x.reshape(batch, grid_t, temporal_patch_size, channels, grid_h // m, m, p, grid_w // m, m, p)
    # -> [B, t, gh/m, gw/m, m, m, C, T, p, p]: a frame pair's merged blocks in a row, each patch's two frames inside.
    x = x.permute(0, 1, 4, 7, 5, 8, 3, 2, 6, 9)
    pixel_values = x.reshape(batch * grid_t * grid_h * grid_w, channels * temporal_patch_size * p * p)
    grid_thw = torch.tensor([[grid_t, grid_h, grid_w]] * batch, dtype=torch.long, device=videos.device)
    return pixel_values, grid_thw
