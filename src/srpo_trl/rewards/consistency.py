"""Rewards that keep the condition: the generated image checked against the pipeline's edge map, depth map or source.

A preference reward alone can be raised by ignoring the condition (a prettier image with other edges, another
layout, a repainted background). Trained beside it (`reward_funcs=["hpsv2.1", "edge-consistency"]`, with
`reward_weights`), these pull the other way. They read the condition (`Reward.conditions`), not the prompt: they are
image-only rewards, so SRP's control words do not apply to them (plain Direct-Align, `-f(x)` in the inversion branch;
docs/rewards.md says why that is the right pairing). Each score lies in [-1, 1] and each hinge threshold is 1.0: above
the score, and above its negation (the inversion branch's penalty), so the hinge switches off in neither branch and
the reward keeps pulling towards the condition with a strength its weight sets against the preference reward.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..control_maps import DEFAULT_DEPTH_MODEL, DepthEstimator, grayscale, scale_shift_aligned
from .base import Reward


def _gaussian_blur(maps: torch.Tensor, sigma: float) -> torch.Tensor:
    if sigma <= 0:
        return maps
    from ..control_maps import _kornia

    size = 2 * int(2 * sigma + 0.5) + 1
    return _kornia().filters.gaussian_blur2d(maps, (size, size), (sigma, sigma))


class EdgeConsistencyReward(Reward):
    """Correlation, in [-1, 1], of the generated image's edges with the control image's Canny edges.

    The image's edges are a differentiable soft map: `tanh(|Sobel(luma)| / edge_scale)` (kornia's normalised Sobel,
    the gradient kornia's Canny thresholds). The control edges are the control image's luma (white edges on black).
    Both are blurred by a Gaussian of `blur_sigma` pixels, so that an edge one or two pixels off still counts, and the
    score is their Pearson correlation over the image: 1 when the maps agree up to scale, about 0 when they share no
    edge. A correlation, unlike an overlap, does not reward painting edges everywhere: measured on images with a box
    and soft texture, 0.55 against the image's own Canny map and 0.04 against another image's (64 px, 8 images).
    Its denoise branch's hinge loss is `(1 - correlation) / 2`.

    Needs `kornia` (the `control` extra).
    """

    name = "edge-consistency"
    text_conditioned = False
    conditions = ("control_images",)
    hinge_threshold = 1.0

    def __init__(self, edge_scale: float = 0.1, blur_sigma: float = 1.0):
        super().__init__()
        self.edge_scale, self.blur_sigma = float(edge_scale), float(blur_sigma)

    def soft_edges(self, images: torch.Tensor) -> torch.Tensor:
        """Soft edge maps `[B, 1, H, W]` in [0, 1) of images `[B, 3, H, W]` in [0, 1], differentiable."""
        from ..control_maps import _kornia

        magnitude = _kornia().filters.sobel(grayscale(images.float()))
        return torch.tanh(magnitude / self.edge_scale)

    def score(self, images, prompts, control_images):
        edges = _gaussian_blur(self.soft_edges(images), self.blur_sigma)
        control = grayscale(control_images.to(images.device).float())
        if control.shape[-2:] != edges.shape[-2:]:
            control = F.interpolate(control, size=edges.shape[-2:], mode="bilinear", align_corners=False)
        control = _gaussian_blur(control, self.blur_sigma)
        edges, control = edges.flatten(1), control.flatten(1)
        edges = edges - edges.mean(1, keepdim=True)
        control = control - control.mean(1, keepdim=True)
        return (edges * control).sum(1) / (edges.norm(dim=1) * control.norm(dim=1)).clamp_min(1e-8)


class DepthConsistencyReward(Reward):
    """How much of the control depth map the generated image's estimated depth fails to explain: minus the mean
    squared difference after the scale and shift that align the estimate to the map best (MiDaS's scale- and
    shift-invariant comparison: relative depth has neither), over the map's variance, so that the map's own scale and
    offset do not matter either. That is `-(1 - r^2)` for their correlation `r`: in [-1, 0], 0 a perfect match.

    The depth model (`depth`, a [`~srpo_trl.control_maps.DepthEstimator`] or its hub id / local folder; Depth Anything
    V2 Small by default) should be the one that made the control maps, whose brightness it is compared with (near
    bright, as `control_image_preprocessor="depth"` makes them).
    """

    name = "depth-consistency"
    text_conditioned = False
    conditions = ("control_images",)
    hinge_threshold = 1.0

    def __init__(self, depth: DepthEstimator | str = DEFAULT_DEPTH_MODEL, dtype: torch.dtype | None = None):
        super().__init__()
        self.depth = depth if isinstance(depth, DepthEstimator) else DepthEstimator(depth, dtype=dtype)

    def score(self, images, prompts, control_images):
        depth = self.depth(images)  # [B, h, w]
        target = grayscale(control_images.to(images.device).float())
        target = F.interpolate(target, size=depth.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
        target = target.flatten(1)
        residual = (scale_shift_aligned(depth.flatten(1), target) - target).square().mean(1)
        return -residual / target.var(1, unbiased=False).clamp_min(1e-12)


class UnmaskedFidelityReward(Reward):
    """Minus the mean squared difference, over the kept (unmasked) pixels, between the generated image and the source
    image Fill or inpainting repaints: the model's raw output, before any compositing, should keep what it was not
    asked to change. In [-1, 0]; 0 is a perfect match."""

    name = "unmasked-fidelity"
    text_conditioned = False
    conditions = ("source_images", "masks")
    hinge_threshold = 1.0

    def score(self, images, prompts, source_images, masks):
        keep = 1 - masks.to(images.device).float()  # [B, 1, H, W]
        if keep.shape[-2:] != images.shape[-2:]:
            keep = F.interpolate(keep, size=images.shape[-2:], mode="nearest")
        source = source_images.to(images.device).float()
        error = (keep * (images.float() - source).square()).flatten(1).sum(1)
        return -error / (3 * keep.flatten(1).sum(1)).clamp_min(1.0)


__all__ = ["DepthConsistencyReward", "EdgeConsistencyReward", "UnmaskedFidelityReward"]
