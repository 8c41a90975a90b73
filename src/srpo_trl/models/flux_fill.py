"""FLUX.1 Fill adapter: `diffusers.FluxFillPipeline` (FLUX.1 Fill [dev]), inpainting and outpainting.

A Fill model is a FLUX.1 transformer whose input carries, beside the noisy latents' tokens on the channel axis, the
tokens of the *masked* source image's VAE latents (the source with the repainted region set to grey, normalised and
packed as the generated latents) and the mask itself, each latent pixel's `8 x 8` block of mask pixels laid out as 64
channels and packed in 2x2 patches (384 = 64 + 64 + 256 input channels for the real model). So in SRPO the source image
and its mask are conditioning, like the text: the dataset gives a source image per prompt
(`dataset_reference_image_column`) and a mask (`dataset_mask_column`; seeded random masks without it), they are
encoded once per batch, and only the generated latents are noised, stepped, recovered and rewarded. The whole
generated image is rewarded: like the stock pipeline, nothing pastes the source's unmasked pixels back.

The masked image's latents are the VAE posterior's mean. The stock pipeline draws one sample of the posterior per call
(with the call's generator). The mean is that sample's expectation, and deterministic, so the same image and mask
always condition training the same way. The tests' tiny VAE has a posterior of negligible spread, so that the stock
sampler can be matched exactly.

Guidance is the distilled-guidance input. FLUX.1 Fill [dev] runs at 30 (`FluxFillPipeline`'s default and the model
card's example), far above FLUX.1 [dev]'s 3.5; the FLUX recipe's 1.0 (rollout) / 3.5 (training) are values for that
model, so the rollout, both training calls and the samples all default to 30 here.
"""

from __future__ import annotations

from typing import ClassVar

import torch

from .flux import FluxAdapter, pack_latents


class FluxFillAdapter(FluxAdapter):
    """Adapter for `FluxFillPipeline` (FLUX.1 Fill [dev] and fine-tunes)."""

    family: ClassVar[str] = "flux-fill"
    requires_reference_image: ClassVar[bool] = True
    reference_role: ClassVar[str] = "source_images"
    uses_mask: ClassVar[bool] = True
    #: FluxFillPipeline's default `guidance_scale` (30) everywhere: see the module docstring.
    default_guidance: ClassVar[dict[str, float]] = {"rollout": 30.0, "train": 30.0, "sample": 30.0}

    @torch.no_grad()
    def add_reference(self, conditioning, reference_images, height, width, masks=None, **extra):
        """Conditioning plus `"fill_latents"` (`[B, tokens, 4C + 4 f^2]`, `f` the VAE's scale factor): the masked source
        images' packed latents, then the packed masks, as the stock pipeline builds them at the training size.

        `reference_images` are `[B, 3, H, W]` in [0, 1]; `masks` `[B, 1, H, W]`, 1 where the image is repainted
        (binarised at 0.5, as the stock pipeline's mask processor does)."""
        if masks is None:
            raise ValueError(
                "FluxFillAdapter.add_reference: FLUX.1 Fill repaints a masked region of the source image; give "
                "masks= ([B, 1, H, W], 1 where the image is repainted) with the source images"
            )
        b = reference_images.shape[0]
        if tuple(masks.shape) != (b, 1, height, width) or tuple(reference_images.shape[-2:]) != (height, width):
            raise ValueError(
                f"FluxFillAdapter.add_reference: source images {tuple(reference_images.shape)} and masks "
                f"{tuple(masks.shape)} must be [B, 3, {height}, {width}] and [B, 1, {height}, {width}]"
            )
        vae = self.pipeline.vae
        masks = (masks.to(reference_images.device, torch.float32) >= 0.5).float()
        masked = (reference_images.float() * 2 - 1) * (1 - masks)  # the repainted region becomes 0 (grey) in [-1, 1]
        # The posterior's mean, normalised as `encode_images` does (the stock pipeline draws a sample of it).
        z = vae.encode(masked.to(vae.device, vae.dtype)).latent_dist.mode()
        z = (z.float() - vae.config.shift_factor) * vae.config.scaling_factor
        f = self.vae_scale_factor
        lh, lw = self._latent_size(height, width)
        # Each latent pixel's f x f block of mask pixels as f^2 channels (row-major within the block), then packed.
        blocks = masks[:, 0].reshape(b, lh, f, lw, f).permute(0, 2, 4, 1, 3).reshape(b, f * f, lh, lw)
        fill = torch.cat([pack_latents(z), pack_latents(blocks.to(z.device))], dim=2)
        return {**conditioning, "fill_latents": fill}

    def velocity(self, transformer, latents, sigma, text, guidance_scale, height, width, target=None) -> torch.Tensor:
        fill = text.get("fill_latents")
        if fill is None:
            raise ValueError("FluxFillAdapter.velocity: the conditioning has no masked image latents and mask")
        lh, lw = self._latent_size(height, width)
        hidden_states = torch.cat([latents, fill.to(latents.dtype)], dim=2)  # channels: generated, masked image, mask
        image_ids = self._image_ids(lh, lw, latents.device)
        return self._call_transformer(transformer, hidden_states, image_ids, sigma, text, guidance_scale)
