"""A tiny offline depth-estimation model (Depth Anything's architecture) for the depth preprocessor and reward."""

from __future__ import annotations

import json
import os

import torch

#: The image processor settings saved with the tiny model: Depth Anything V2's, at the tiny model's 56 px.
TINY_DEPTH_PROCESSOR = {
    "image_processor_type": "DPTImageProcessor",
    "size": {"height": 56, "width": 56},
    "keep_aspect_ratio": True,
    "ensure_multiple_of": 14,
    "do_resize": True,
    "do_rescale": True,
    "do_normalize": True,
    "image_mean": [0.485, 0.456, 0.406],
    "image_std": [0.229, 0.224, 0.225],
}


def tiny_depth_model(seed: int = 0):
    """A random `DepthAnythingForDepthEstimation` (24 k parameters, a 2-layer DINOv2 backbone, patch 14).

    Initialised with a wider spread (0.2) than transformers' default (0.02), under which the head's output is ~1e-9
    and flat: this one gives depth maps that vary with the image and gradients that reach it."""
    from transformers import DepthAnythingConfig, DepthAnythingForDepthEstimation, Dinov2Config

    backbone = Dinov2Config(
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=32,
        image_size=56,
        patch_size=14,
        out_features=["stage1", "stage2"],
        reshape_hidden_states=False,
        initializer_range=0.2,
    )
    config = DepthAnythingConfig(
        backbone_config=backbone,
        reassemble_hidden_size=16,
        neck_hidden_sizes=[8, 16],
        reassemble_factors=[2, 1],
        fusion_hidden_size=8,
        head_hidden_size=8,
        patch_size=14,
        initializer_range=0.2,
        depth_estimation_type="relative",
    )
    torch.manual_seed(seed)
    return DepthAnythingForDepthEstimation(config).eval()


def save_tiny_depth_model(folder: str, seed: int = 0) -> str:
    """[`tiny_depth_model`] saved as a local model folder (weights, config, `preprocessor_config.json`) that
    `control_image_preprocessor="depth"` and the `depth-consistency` reward load by path. Returns `folder`."""
    tiny_depth_model(seed).save_pretrained(folder)
    with open(os.path.join(folder, "preprocessor_config.json"), "w") as f:
        json.dump(TINY_DEPTH_PROCESSOR, f, indent=2)
    return folder
