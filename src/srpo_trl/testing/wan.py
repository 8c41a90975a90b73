"""Tiny offline Wan pipelines: a `WanPipeline` of Wan 2.1's layout, of Wan 2.2 A14B's (two experts) or of Wan 2.2
TI2V-5B's (per-token timesteps, the 48-channel VAE that compresses 16x), built in code with random weights.

The real models sample with `UniPCMultistepScheduler(flow_shift=...)`; the tiny ones use the Euler scheduler the
pipeline is typed with (`FlowMatchEulerDiscreteScheduler`, static shift 3, Wan 2.1's 480p flow shift), so that the
stock pipeline samples exactly as SRPO's Euler rollout does and the two can be compared.
"""

from __future__ import annotations

import torch

#: Width of the tiny UMT5's hidden states (the transformer's `text_dim`).
TEXT_DIM = 32


def _tiny_transformer(in_channels: int, seed: int):
    from diffusers import WanTransformer3DModel

    torch.manual_seed(seed)
    return WanTransformer3DModel(
        patch_size=(1, 2, 2),
        num_attention_heads=2,
        attention_head_dim=12,
        in_channels=in_channels,
        out_channels=in_channels,
        text_dim=TEXT_DIM,
        freq_dim=32,
        ffn_dim=32,
        num_layers=2,
        cross_attn_norm=True,
        qk_norm="rms_norm_across_heads",
        rope_max_seq_len=32,
    )


def _tiny_vae(ti2v: bool):
    """Wan 2.1's VAE layout (16 channels, 8x, 4x in time), or Wan 2.2's (48 channels, 2x2 patches: 16x), tiny."""
    from diffusers import AutoencoderKLWan

    common = dict(base_dim=4, dim_mult=[1, 1, 1, 1], num_res_blocks=1, temperal_downsample=[False, True, True])
    if not ti2v:
        return AutoencoderKLWan(z_dim=16, **common)  # the VAE config's own latents_mean / latents_std
    generator = torch.Generator().manual_seed(1)
    return AutoencoderKLWan(
        z_dim=48,
        is_residual=True,
        in_channels=12,
        out_channels=12,
        patch_size=2,
        scale_factor_spatial=16,
        latents_mean=(0.3 * torch.randn(48, generator=generator)).tolist(),
        latents_std=(1 + torch.rand(48, generator=generator)).tolist(),
        **common,
    )


def tiny_wan_pipeline(seed: int = 0, *, variant: str = "2.1", dtype: torch.dtype = torch.float32):
    """A tiny random [`~diffusers.WanPipeline`] built entirely in code.

    Args:
        seed (`int`, *optional*, defaults to `0`): seed of the random weights.
        variant (`str`, *optional*, defaults to `"2.1"`): `"2.1"` (one transformer), `"2.2-a14b"` (a high-noise
            `transformer` and a low-noise `transformer_2`, `boundary_ratio=0.875` as Wan2.2-T2V-A14B) or `"2.2-ti2v"`
            (`expand_timesteps=True` and Wan 2.2's 48-channel, 16x VAE, as Wan2.2-TI2V-5B).
        dtype (`torch.dtype`, *optional*, defaults to `torch.float32`): dtype of every component.

    The VAE's decoder output is scaled up (as `tiny_colour_flux_pipeline`'s) so that its videos carry visible colour
    and colour rewards respond to the weights. Sizes: multiples of 16 px (32 for TI2V), `4k + 1` frames.
    """
    from diffusers import FlowMatchEulerDiscreteScheduler, WanPipeline
    from transformers import UMT5Config, UMT5EncoderModel

    from . import tiny_t5_tokenizer

    if variant not in ("2.1", "2.2-a14b", "2.2-ti2v"):
        raise ValueError(f"variant must be '2.1', '2.2-a14b' or '2.2-ti2v', got {variant!r}")
    ti2v = variant == "2.2-ti2v"
    torch.manual_seed(seed)
    vae = _tiny_vae(ti2v)
    with torch.no_grad():
        vae.decoder.conv_out.weight.mul_(5.0)
        vae.decoder.conv_out.bias.zero_()
    tokenizer = tiny_t5_tokenizer()
    text_encoder = UMT5EncoderModel(
        UMT5Config(
            vocab_size=len(tokenizer),
            d_model=TEXT_DIM,
            d_kv=8,
            d_ff=2 * TEXT_DIM,
            num_layers=2,
            num_heads=4,
            relative_attention_num_buckets=8,
            decoder_start_token_id=0,
            pad_token_id=0,
            eos_token_id=1,
        )
    )
    channels = vae.config.z_dim
    transformer = _tiny_transformer(channels, seed)
    transformer_2 = _tiny_transformer(channels, seed + 1000) if variant == "2.2-a14b" else None
    pipe = WanPipeline(
        tokenizer=tokenizer,
        text_encoder=text_encoder,
        vae=vae,
        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
        transformer=transformer,
        transformer_2=transformer_2,
        boundary_ratio=0.875 if variant == "2.2-a14b" else None,
        expand_timesteps=ti2v,
    )
    if dtype != torch.float32:
        pipe.to(dtype=dtype)
    for module in (vae, text_encoder, transformer, transformer_2):
        if module is not None:
            module.eval()
    return pipe
