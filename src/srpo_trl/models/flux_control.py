"""FLUX.1 Control adapter: `diffusers.FluxControlPipeline` (FLUX.1 Canny [dev], FLUX.1 Depth [dev]) and its Img2Img /
Inpaint variants.

A Control model is a FLUX.1 transformer whose input has twice the channels: the noisy latents' tokens and, beside them
on the channel axis, the tokens of the control image's VAE latents (an edge or depth map), normalised and packed as the
generated ones (128 = 2 x 64 input channels for the real models). So in SRPO the control image is conditioning, like the
text: the dataset gives one per prompt (`dataset_control_image_column`), it is encoded once per batch, and only the
generated half is noised, stepped, recovered and rewarded.

The control latents are the VAE posterior's mean. The stock pipeline draws one sample of the posterior per call (with
the call's generator, before the noise). The mean is that sample's expectation, and deterministic, so the same control
image always conditions training the same way. The tests' tiny VAE has a posterior of negligible spread, so that the
stock sampler can be matched exactly.
"""

from __future__ import annotations

from typing import ClassVar

import torch

from .flux import FluxAdapter


class FluxControlAdapter(FluxAdapter):
    """Adapter for `FluxControlPipeline` (FLUX.1 Canny / Depth [dev] and fine-tunes)."""

    family: ClassVar[str] = "flux-control"
    requires_reference_image: ClassVar[bool] = True
    reference_image_column_field: ClassVar[str] = "dataset_control_image_column"
    reference_role: ClassVar[str] = "control_images"

    @classmethod
    def pipeline_condition_kwargs(cls, references, masks):
        """The stock pipeline takes the map as `control_image=`."""
        return {"control_image": references}

    @torch.no_grad()
    def add_reference(self, conditioning, reference_images, height, width):
        """Conditioning plus the control images' packed latents (`[B, tokens, C]`), at the training size."""
        return {**conditioning, "control_latents": self.encode_images(reference_images, height, width)}

    def velocity(self, transformer, latents, sigma, text, guidance_scale, height, width, target=None) -> torch.Tensor:
        control = text.get("control_latents")
        if control is None:
            raise ValueError("FluxControlAdapter.velocity: the conditioning has no control image latents")
        lh, lw = self._latent_size(height, width)
        hidden_states = torch.cat([latents, control.to(latents.dtype)], dim=2)  # channels: generated, then control
        image_ids = self._image_ids(lh, lw, latents.device)
        return self._call_transformer(transformer, hidden_states, image_ids, sigma, text, guidance_scale)
