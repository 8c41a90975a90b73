"""A tiny FLUX.1 Fill pipeline built offline (see `srpo_trl.testing`)."""

from __future__ import annotations

import torch


def tiny_flux_fill_pipeline(seed: int = 0):
    """A tiny random [`~diffusers.FluxFillPipeline`] (FLUX.1 Fill): [`~srpo_trl.testing.tiny_flux_pipeline`]'s parts
    with a transformer that reads the noisy latents, the masked image's latents and the mask (4 x 4 + 4 x 4 + 4 x 64 =
    288 packed channels for the tiny VAE's 4 latent channels and scale factor 8). Its VAE encoder's log-variance is
    pinned at the minimum, so that the posterior's spread (about 3e-7) is negligible and the stock pipeline's posterior
    sample of the masked image equals its mean, which srpo-trl uses."""
    from diffusers import FluxFillPipeline, FluxTransformer2DModel

    from . import tiny_flux_pipeline

    flux = tiny_flux_pipeline(seed)
    latent_channels = flux.vae.config.latent_channels
    scale = 2 ** (len(flux.vae.config.block_out_channels) - 1)
    with torch.no_grad():  # conv_out gives (mean, log-variance) per latent channel
        flux.vae.encoder.conv_out.weight[latent_channels:].zero_()
        flux.vae.encoder.conv_out.bias[latent_channels:].fill_(-30.0)
    torch.manual_seed(seed)
    transformer = FluxTransformer2DModel.from_config(
        flux.transformer.config,
        in_channels=4 * (2 * latent_channels + scale * scale),
        out_channels=4 * latent_channels,
    ).eval()
    names = ("scheduler", "vae", "text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2")
    return FluxFillPipeline(**{name: flux.components[name] for name in names}, transformer=transformer)
