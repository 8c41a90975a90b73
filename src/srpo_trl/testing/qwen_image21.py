"""A tiny Qwen-Image 2.1 pipeline built offline (see `srpo_trl.testing`): a character-level tokenizer with Qwen's
special tokens and chat template, a tiny Qwen3-VL text encoder and processor, and Qwen-Image 2.1's VAE (64 -> 16 latent
channels, 16x downsampling, RGBA in and out) and block-causal single-stream transformer."""

from __future__ import annotations

import torch

#: A Turbo-like author grid (8 steps, before the scheduler's shift), standing in for a checkpoint's `sample_sigmas`.
TINY_SAMPLE_SIGMAS = [1.0, 0.97, 0.94, 0.9, 0.84, 0.7, 0.42, 0.2]


def tiny_qwen_image21_pipeline(
    seed: int = 0,
    *,
    hidden_size: int = 16,
    latent_channels: int = 16,
    sample_sigmas: list[float] | None = None,
    dtype=torch.float32,
):
    """A tiny random `QwenImage21Pipeline` built in code: Qwen3-VL text encoder (2 layers, `hidden_size` wide), the
    2.1 VAE (`latent_channels`, 16x downsampling, RGBA as the real one), a 2-block transformer, and the scheduler
    settings the released checkpoints use (exponential dynamic shift; a terminal stretch to 0.02 here). Resolutions
    must be multiples of 32. `sample_sigmas`: the author grid the pipeline samples on (`None`: `num_inference_steps`
    evenly spaced levels, as the stock pipeline then does; `TINY_SAMPLE_SIGMAS` is a Turbo-like one)."""
    from diffusers import (
        AutoencoderKLQwenImage21,
        FlowMatchEulerDiscreteScheduler,
        QwenImage21Pipeline,
        QwenImage21Transformer2DModel,
    )

    from .flux3 import _QWEN_CHAT_TEMPLATE, _tiny_qwen3_vl, _tiny_qwen3_vl_processor
    from .qwen import tiny_qwen_tokenizer

    torch.manual_seed(seed)
    tokenizer = tiny_qwen_tokenizer()
    tokenizer.chat_template = _QWEN_CHAT_TEMPLATE
    text_encoder = _tiny_qwen3_vl(tokenizer, hidden_size, num_layers=2)  # 2.1 reads the last layer only
    transformer = QwenImage21Transformer2DModel(
        patch_size=1,
        in_channels=latent_channels,
        out_channels=latent_channels,
        num_layers=2,
        attention_head_dim=16,
        num_attention_heads=2,
        context_in_dim=hidden_size,
        mlp_ratio=3,
        axes_dims_rope=(4, 6, 6),
    )
    vae = AutoencoderKLQwenImage21(
        base_dim=8,
        decoder_base_dim=8,
        z_dim=latent_channels,
        dim_mult=[1, 1, 1, 1, 1],
        num_res_blocks=1,
        temperal_downsample=[False, True, True, True],
        latents_mean=[0.1 * ((i % 5) - 2) for i in range(latent_channels)],
        latents_std=[0.8 + 0.1 * (i % 7) for i in range(latent_channels)],
    )
    scheduler = FlowMatchEulerDiscreteScheduler(
        base_image_seq_len=256,
        base_shift=0.5,
        max_image_seq_len=4096,
        max_shift=1.15,
        shift=1.0,
        shift_terminal=0.02,
        time_shift_type="exponential",
        use_dynamic_shifting=True,
    )
    pipe = QwenImage21Pipeline(
        scheduler=scheduler,
        vae=vae,
        text_encoder=text_encoder,
        processor=_tiny_qwen3_vl_processor(tokenizer),
        transformer=transformer,
        sample_sigmas=sample_sigmas,
    )
    if dtype != torch.float32:
        pipe.to(dtype=dtype)
    for module in (vae, text_encoder, transformer):
        module.eval()
        module.requires_grad_(False)
    return pipe
