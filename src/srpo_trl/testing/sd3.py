"""A tiny Stable Diffusion 3.5 pipeline built offline (see `srpo_trl.testing`)."""

from __future__ import annotations

import torch


def tiny_sd3_pipeline(seed: int = 0, *, dtype: torch.dtype = torch.float32):
    """A tiny random [`~diffusers.StableDiffusion3Pipeline`] built in code, laid out as SD3.5's:

    - two `CLIPTextModelWithProjection`s of different widths (16 and 24, so the pooled vector is 40 wide) over the
      character-level CLIP tokenizer (77 tokens), and a T5 encoder 48 wide (wider than the two CLIPs together, as
      T5-XXL's 4096 is wider than CLIP-L + bigG's 2048: the pipeline pads the CLIP features to T5's width);
    - an `SD3Transformer2DModel` with two joint blocks (the last one `context_pre_only`), SD3.5's `qk_norm="rms_norm"`
      and SD3.5 Medium's dual attention in the first block (`dual_attention_layers=(0,)`);
    - a 16-channel VAE downsampling 8x with SD3's `shift_factor` / `scaling_factor`, its output layer scaled up so
      that images carry visible colour (colour rewards then respond to the weights);
    - SD3.5's scheduler config (static shift 3.0).

    Resolutions must be multiples of 16 (8x VAE, 2x2 patches), at most 256 px (the positional table's 16 patches).
    """
    from diffusers import (
        FlowMatchEulerDiscreteScheduler,
        SD3Transformer2DModel,
        StableDiffusion3Pipeline,
    )
    from transformers import CLIPTextModelWithProjection, T5EncoderModel

    from . import _tiny_clip_text_config, t5_config, tiny_clip_tokenizer, tiny_t5_tokenizer, tiny_vae

    torch.manual_seed(seed)
    latent_channels = 16
    tokenizer, tokenizer_2 = tiny_clip_tokenizer(), tiny_clip_tokenizer()
    text_encoder = CLIPTextModelWithProjection(_tiny_clip_text_config(tokenizer, 16))
    text_encoder_2 = CLIPTextModelWithProjection(_tiny_clip_text_config(tokenizer_2, 24))
    tokenizer_3 = tiny_t5_tokenizer()
    text_encoder_3 = T5EncoderModel(t5_config(tokenizer_3, 48, d_kv=8, d_ff=64, layers=2, heads=4))
    pooled_dim = text_encoder.config.projection_dim + text_encoder_2.config.projection_dim
    transformer = SD3Transformer2DModel(
        sample_size=8,  # the pipeline's default size: 8 latent pixels, 64 px
        patch_size=2,
        in_channels=latent_channels,
        out_channels=latent_channels,
        num_layers=2,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=text_encoder_3.config.d_model,
        caption_projection_dim=32,  # the text stream's width: the blocks' (2 heads x 16)
        pooled_projection_dim=pooled_dim,
        pos_embed_max_size=16,
        dual_attention_layers=(0,),
        qk_norm="rms_norm",
    )
    vae = tiny_vae(latent_channels, scaling_factor=1.5305, shift_factor=0.0609)
    with torch.no_grad():
        vae.decoder.conv_out.weight.mul_(5.0)
        vae.decoder.conv_out.bias.zero_()
    pipe = StableDiffusion3Pipeline(
        transformer=transformer,
        scheduler=FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0),
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        text_encoder_2=text_encoder_2,
        tokenizer_2=tokenizer_2,
        text_encoder_3=text_encoder_3,
        tokenizer_3=tokenizer_3,
    )
    if dtype != torch.float32:
        pipe.to(dtype=dtype)
    for module in (vae, text_encoder, text_encoder_2, text_encoder_3, transformer):
        module.eval()
    return pipe
