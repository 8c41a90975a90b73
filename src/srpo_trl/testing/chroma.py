"""A tiny Chroma pipeline built offline (see `srpo_trl.testing`)."""

from __future__ import annotations

import torch


def tiny_chroma_pipeline(seed: int = 0):
    """A tiny random [`~diffusers.ChromaPipeline`]: a `ChromaTransformer2DModel` (one double- and one single-stream
    block, a one-layer guidance approximator) over the T5 text encoder, tokenizer, VAE and scheduler of
    [`~srpo_trl.testing.tiny_flux_pipeline`]; resolutions must be multiples of 16."""
    from diffusers import ChromaPipeline, ChromaTransformer2DModel

    from . import tiny_flux_pipeline

    flux = tiny_flux_pipeline(seed)
    torch.manual_seed(seed)
    transformer = ChromaTransformer2DModel(
        patch_size=1,
        in_channels=flux.transformer.config.in_channels,
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=flux.text_encoder_2.config.d_model,
        axes_dims_rope=(4, 6, 6),
        approximator_num_channels=8,
        approximator_hidden_dim=32,
        approximator_layers=1,
    ).eval()
    return ChromaPipeline(
        scheduler=flux.scheduler,
        vae=flux.vae,
        text_encoder=flux.text_encoder_2,
        tokenizer=flux.tokenizer_2,
        transformer=transformer,
    )


def tiny_flux_control_pipeline(seed: int = 0):
    """A tiny random [`~diffusers.FluxControlPipeline`] (FLUX.1 Canny / Depth): [`~srpo_trl.testing.tiny_flux_pipeline`]'s
    parts with a transformer that reads twice the latent channels (the noisy latents' and the control image's). Its VAE
    encoder's log-variance is pinned at the minimum, so that the posterior's spread (about 3e-7) is negligible and the
    stock pipeline's posterior sample of the control image equals its mean, which srpo-trl uses."""
    from diffusers import FluxControlPipeline, FluxTransformer2DModel

    from . import tiny_flux_pipeline

    flux = tiny_flux_pipeline(seed)
    latent_channels = flux.vae.config.latent_channels
    with torch.no_grad():  # conv_out gives (mean, log-variance) per latent channel
        flux.vae.encoder.conv_out.weight[latent_channels:].zero_()
        flux.vae.encoder.conv_out.bias[latent_channels:].fill_(-30.0)
    torch.manual_seed(seed)
    transformer = FluxTransformer2DModel.from_config(
        flux.transformer.config, in_channels=8 * latent_channels, out_channels=4 * latent_channels
    ).eval()
    names = ("scheduler", "vae", "text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2")
    return FluxControlPipeline(**{name: flux.components[name] for name in names}, transformer=transformer)
