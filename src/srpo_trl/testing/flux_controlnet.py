"""Tiny offline FLUX.1 ControlNet pipelines (see `srpo_trl.testing`)."""

from __future__ import annotations

import torch


def tiny_flux_controlnet(transformer, seed: int = 0, *, hint_block: bool = False, num_mode: int | None = None):
    """A tiny random `FluxControlNetModel` for the tiny FLUX.1 `transformer`: one double- and one single-stream block.

    Its output projections (the residual blocks, the control image's embedder and, with a hint block, the hint block's
    last convolution), which diffusers initialises at zero, are random, so that its residuals change the images.
    `hint_block=True` makes an XLabs-style net, which reads the control image's pixels through a convolutional hint
    block instead of its VAE latents; `num_mode` makes a union net with that many control modes."""
    from diffusers import FluxControlNetModel

    config = transformer.config
    torch.manual_seed(seed)
    extra = {}
    if hint_block:  # the hint block downsamples by 8 and patch_size 2 packs 2x2 of it: the latent tokens' grid
        extra = dict(patch_size=2, conditioning_embedding_channels=config.in_channels // 4)
    controlnet = FluxControlNetModel.from_config(
        config, num_layers=1, num_single_layers=1, num_mode=num_mode, **extra
    ).eval()
    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        zeroed = [
            *controlnet.controlnet_blocks,
            *controlnet.controlnet_single_blocks,
            controlnet.controlnet_x_embedder,
        ]
        for layer in zeroed:
            fan_in = layer.weight[0].numel()
            layer.weight.copy_(torch.randn(layer.weight.shape, generator=generator) / fan_in**0.5)
            layer.bias.copy_(0.1 * torch.randn(layer.bias.shape, generator=generator))
        if hint_block:  # its convolutions at a gain that carries the image through SiLUs; its output conv is zero too
            hint = controlnet.input_hint_block
            for conv in [hint.conv_in, *hint.blocks, hint.conv_out]:
                conv.weight.copy_(
                    2 * torch.randn(conv.weight.shape, generator=generator) / conv.weight[0].numel() ** 0.5
                )
    return controlnet


def tiny_flux_controlnet_pipeline(
    seed: int = 0, num_controlnets: int = 0, *, hint_block: bool = False, num_mode: int | None = None
):
    """A tiny random [`~diffusers.FluxControlNetPipeline`]: [`~srpo_trl.testing.tiny_flux_pipeline`]'s parts with a
    frozen-to-be ControlNet ([`tiny_flux_controlnet`]): one `FluxControlNetModel` (`num_controlnets=0`) or a
    `FluxMultiControlNetModel` of `num_controlnets` different ones. As in
    [`~srpo_trl.testing.tiny_flux_control_pipeline`], the VAE encoder's log-variance is pinned at the minimum, so that
    the stock pipeline's posterior sample of the control image equals the posterior mean srpo-trl uses."""
    from diffusers import FluxControlNetPipeline, FluxMultiControlNetModel

    from . import tiny_flux_pipeline

    if num_controlnets == 1 or num_controlnets < 0:
        raise ValueError(f"num_controlnets: 0 (one FluxControlNetModel) or >= 2, got {num_controlnets}")
    flux = tiny_flux_pipeline(seed)
    latent_channels = flux.vae.config.latent_channels
    with torch.no_grad():  # conv_out gives (mean, log-variance) per latent channel
        flux.vae.encoder.conv_out.weight[latent_channels:].zero_()
        flux.vae.encoder.conv_out.bias[latent_channels:].fill_(-30.0)
    nets = [
        tiny_flux_controlnet(flux.transformer, seed + 10 * i, hint_block=hint_block, num_mode=num_mode)
        for i in range(max(num_controlnets, 1))
    ]
    controlnet = FluxMultiControlNetModel(nets) if num_controlnets else nets[0]
    names = ("scheduler", "vae", "text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2", "transformer")
    return FluxControlNetPipeline(**{name: flux.components[name] for name in names}, controlnet=controlnet)
