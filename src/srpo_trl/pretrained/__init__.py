"""Tiny *trained* models shipped inside the package: a FLUX.1-architecture text-to-image pipeline and a
CLIP reward, both trained on the [shapes world](shapes.py) by `python -m srpo_trl.pretrained.build`.

They load offline, in seconds, and unlike the random builders of [`srpo_trl.testing`] they know
something: the pipeline draws the shape, colour, position and style a prompt asks for, and the reward
tells a `photo` from a `drawing`. `srpo-trl demo` fine-tunes the one against the other, and the tests
that claim training improves something use them.

- [`shapes_pipeline`]: the `FluxPipeline` (2.4 M transformer parameters, 64 px, 16-channel VAE).
- [`shapes_reward`]: the [`~srpo_trl.rewards.CLIPReward`] (`load_reward("shapes-clip")` gives the same).
"""

from __future__ import annotations

import os

import torch

WEIGHTS_DIR = os.path.join(os.path.dirname(__file__), "weights")
PIPELINE_DIR = os.path.join(WEIGHTS_DIR, "pipeline")
REWARD_DIR = os.path.join(WEIGHTS_DIR, "reward")
#: The resolution and T5 sequence length the pipeline was trained at.
RESOLUTION, MAX_SEQUENCE_LENGTH = 64, 16


def shapes_pipeline(dtype: torch.dtype = torch.float32):
    """The shipped tiny [`~diffusers.FluxPipeline`], loaded from the package's files (nothing is downloaded)."""
    from diffusers import FluxPipeline

    pipe = FluxPipeline.from_pretrained(PIPELINE_DIR, dtype=dtype, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def shapes_reward(**kwargs):
    """The shipped tiny [`~srpo_trl.rewards.CLIPReward`] (`name="shapes-clip"`); `kwargs` go to `CLIPReward`."""
    from ..rewards import CLIPReward

    kwargs.setdefault("name", "shapes-clip")
    return CLIPReward(REWARD_DIR, **kwargs)
