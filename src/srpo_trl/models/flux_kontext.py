"""FLUX.1 Kontext adapter: `diffusers.FluxKontextPipeline` (image editing with a reference image).

Kontext is a FLUX.1 transformer that also sees a reference image: the reference's VAE latents,
packed like the generated ones, are appended to the image tokens with positional ids whose first
coordinate is 1 (the generated tokens have 0). The transformer's output for the reference tokens
is dropped. So in SRPO the reference is conditioning, like the text: only the generated image is
noised, stepped, recovered and rewarded. The dataset gives the reference image per prompt.
"""

from __future__ import annotations

from typing import ClassVar

import torch

from .flux import FluxAdapter


class FluxKontextAdapter(FluxAdapter):
    """Adapter for `FluxKontextPipeline` (FLUX.1 Kontext [dev] and fine-tunes)."""

    family: ClassVar[str] = "flux-kontext"
    requires_reference_image: ClassVar[bool] = True

    @torch.no_grad()
    def add_reference(self, conditioning, reference_images, height, width):
        """Conditioning plus the reference images' packed latents (`[B, tokens, C]`) and ids (`[B, tokens, 3]`).

        The reference is resized to the training size by the data pipeline, so its ids match a same-size grid.
        """
        latents = self.encode_images(reference_images, height, width)
        lh, lw = self._latent_size(height, width)
        ids = self._image_ids(lh, lw, latents.device).clone()
        ids[:, 0] = 1  # Kontext marks reference tokens with a first coordinate of 1
        batch = latents.shape[0]
        return {**conditioning, "reference_latents": latents, "reference_ids": ids.expand(batch, -1, -1)}

    def velocity(self, transformer, latents, sigma, text, guidance_scale, height, width, target=None) -> torch.Tensor:
        reference = text.get("reference_latents")
        if reference is None:
            raise ValueError("FluxKontextAdapter.velocity: the conditioning has no reference image latents")
        lh, lw = self._latent_size(height, width)
        hidden_states = torch.cat([latents, reference.to(latents.dtype)], dim=1)
        image_ids = torch.cat([self._image_ids(lh, lw, latents.device), text["reference_ids"][0]], dim=0)
        out = self._call_transformer(transformer, hidden_states, image_ids, sigma, text, guidance_scale)
        return out[:, : latents.shape[1]]  # the reference tokens' outputs are not part of the image
