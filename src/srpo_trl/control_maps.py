"""Control maps made from images: Canny edges and estimated depth, for FLUX.1 Canny / Depth and ControlNets.

The trainer makes a batch's control maps on the fly when `SRPOConfig.control_image_preprocessor` is set, and the
consistency rewards (`srpo_trl.rewards.consistency`) compare a generated image's own map with the control map.

- Canny: kornia's (`kornia.filters.canny`, the `control` extra), chosen over OpenCV's `cv2.Canny` because it is
  torch code: it runs batched on the accelerator the images are on, on float images in [0, 1], with the same Sobel
  gradients the edge reward differentiates, and it needs no torchvision. Its thresholds are on the gradient
  magnitude of [0, 1] images (kornia's defaults, 0.1 and 0.2), not on OpenCV's 0-255 scale.
- Depth: a transformers depth-estimation model (`AutoModelForDepthEstimation`: Depth Anything V2 by default, any
  DPT-style model), run differentiably by [`DepthEstimator`]. Maps are relative depth min-max normalised per image to
  [0, 1], near bright, as the depth maps FLUX.1 Depth and depth ControlNets are given.
"""

from __future__ import annotations

import json
import os

import torch
import torch.nn.functional as F
from torch import nn

#: Depth Anything V2 Small (Apache-2.0): the default depth model of the preprocessor and of the depth reward.
DEFAULT_DEPTH_MODEL = "depth-anything/Depth-Anything-V2-Small-hf"


def _kornia():
    try:
        import kornia
    except ImportError as error:
        raise ImportError(
            "Canny control maps and the edge-consistency reward need kornia: pip install 'srpo-trl[control]'"
        ) from error
    return kornia


def grayscale(images: torch.Tensor) -> torch.Tensor:
    """`[B, 3, H, W]` -> `[B, 1, H, W]` luma (ITU-R 601, as kornia and PIL)."""
    return _kornia().color.rgb_to_grayscale(images)


@torch.no_grad()
def canny_maps(images: torch.Tensor, low: float = 0.1, high: float = 0.2) -> torch.Tensor:
    """Canny edge maps `[B, 3, H, W]` (white edges on black, 0/1) of images `[B, 3, H, W]` in [0, 1]."""
    _, edges = _kornia().filters.canny(images.float(), low_threshold=low, high_threshold=high)
    return edges.expand(-1, 3, -1, -1).contiguous()


def _preprocessor_config(source: str) -> dict:
    """A depth model's `preprocessor_config.json` (local folder or hub id)."""
    if os.path.isdir(source):
        path = os.path.join(source, "preprocessor_config.json")
    else:
        from huggingface_hub import hf_hub_download

        path = hf_hub_download(source, "preprocessor_config.json")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"depth model {source!r} has no preprocessor_config.json")
    with open(path) as f:
        return json.load(f)


class DepthEstimator(nn.Module):
    """A transformers depth-estimation model as a differentiable function of images `[B, 3, H, W]` in [0, 1].

    The image processor's resize and normalisation are done in torch (bicubic resize to the model's size, a multiple of
    its patch, keeping the aspect ratio when the processor does; its mean and std), so gradients reach the image. The
    model is frozen.

    Args:
        model (`str` or `transformers.PreTrainedModel`): hub id or local folder of an `AutoModelForDepthEstimation`
            with its `preprocessor_config.json`, or the model itself (then `processor_config` is required).
        processor_config (`dict`, *optional*): the image processor's settings (`size`, `image_mean`, `image_std`,
            `keep_aspect_ratio`, `ensure_multiple_of`); read from the model's folder when not given.
        dtype (`torch.dtype`, *optional*): the model's dtype (default float32).
    """

    def __init__(self, model=DEFAULT_DEPTH_MODEL, processor_config=None, dtype=None):
        super().__init__()
        if isinstance(model, str):
            from transformers import AutoModelForDepthEstimation

            processor_config = processor_config or _preprocessor_config(model)
            model = AutoModelForDepthEstimation.from_pretrained(model, dtype=dtype or torch.float32)
        if processor_config is None:
            raise ValueError("DepthEstimator: give processor_config with a model object")
        self.model = model.eval().requires_grad_(False)
        size = processor_config.get("size", {"height": 518, "width": 518})
        self.size = (size.get("height", size.get("shortest_edge")), size.get("width", size.get("shortest_edge")))
        self.keep_aspect_ratio = bool(processor_config.get("keep_aspect_ratio", False))
        self.multiple = int(processor_config.get("ensure_multiple_of", 1))
        self.register_buffer("mean", torch.tensor(processor_config["image_mean"]).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(processor_config["image_std"]).view(1, 3, 1, 1), persistent=False)

    def model_size(self, height: int, width: int) -> tuple[int, int]:
        """The size images of `height x width` are resized to: the processor's, or, keeping the aspect ratio, the
        least scale that covers it, rounded to the patch multiple."""
        target_h, target_w = self.size
        if self.keep_aspect_ratio:
            scale = max(target_h / height, target_w / width)
            target_h, target_w = height * scale, width * scale
        m = self.multiple
        return max(m, round(target_h / m) * m), max(m, round(target_w / m) * m)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Relative depth `[B, h, w]` (larger is nearer for Depth Anything) of images in [0, 1], differentiably."""
        size = self.model_size(*images.shape[-2:])
        pixels = F.interpolate(images.float(), size=size, mode="bicubic", align_corners=False)
        pixels = (pixels - self.mean) / self.std
        dtype = next(self.model.parameters()).dtype
        return self.model(pixel_values=pixels.to(dtype)).predicted_depth.float()

    @torch.no_grad()
    def maps(self, images: torch.Tensor) -> torch.Tensor:
        """Depth control maps `[B, 3, H, W]` in [0, 1] (min-max per image, near bright) at the images' size."""
        depth = self(images)[:, None]
        depth = F.interpolate(depth, size=images.shape[-2:], mode="bilinear", align_corners=False)
        low = depth.amin(dim=(2, 3), keepdim=True)
        high = depth.amax(dim=(2, 3), keepdim=True)
        return ((depth - low) / (high - low).clamp_min(1e-8)).expand(-1, 3, -1, -1).contiguous()


def make_control_maps(kind: str, images: torch.Tensor, depth: DepthEstimator | None = None) -> torch.Tensor:
    """The `kind` (`"canny"` or `"depth"`) control maps of images `[B, 3, H, W]` in [0, 1]."""
    if kind == "canny":
        return canny_maps(images)
    if kind == "depth":
        if depth is None:
            raise ValueError("depth control maps need a DepthEstimator")
        return depth.maps(images)
    raise ValueError(f"control_image_preprocessor: expected 'canny' or 'depth', got {kind!r}")


def scale_shift_aligned(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """`prediction` (`[B, N]`) times the scale plus the shift that fit `target` best in least squares, per row: the
    alignment under which relative depths compare (MiDaS's scale- and shift-invariant loss)."""
    p_mean, t_mean = prediction.mean(1, keepdim=True), target.mean(1, keepdim=True)
    p, t = prediction - p_mean, target - t_mean
    scale = (p * t).sum(1, keepdim=True) / (p * p).sum(1, keepdim=True).clamp_min(1e-12)
    return scale * p + t_mean


__all__ = [
    "DEFAULT_DEPTH_MODEL",
    "DepthEstimator",
    "canny_maps",
    "grayscale",
    "make_control_maps",
    "scale_shift_aligned",
]
