"""Full-size models with random weights, for benchmarks: FLUX.1-dev's transformer and VAE, and a ViT-H-14 CLIP
reward (HPSv2's architecture), built directly on a device (nothing is downloaded).

Built from the same parts as the tiny test models of `srpo_trl.testing`; kept beside the benchmarks because
nothing in the package or its tests needs full-size models.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
from transformers import (
    CLIPConfig,
    CLIPModel,
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTokenizer,
    CLIPVisionConfig,
    T5EncoderModel,
)

from srpo_trl.testing import flux1_pipeline, t5_config, tiny_clip_tokenizer, tiny_t5_tokenizer


@contextmanager
def _default_device_and_dtype(device, dtype: torch.dtype):
    """Create parameters directly on `device` in `dtype` (a 12B-parameter model initialises in seconds on a GPU)."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            yield
    finally:
        torch.set_default_dtype(previous)


def _to_device_and_dtype(module: torch.nn.Module, device, dtype: torch.dtype) -> torch.nn.Module:
    """`module.to(device, dtype)` only where a constructor left a floating tensor elsewhere (usually a no-op)."""
    device = torch.device(device)
    tensors = [*module.parameters(), *module.buffers()]
    if any(t.is_floating_point() and (t.dtype != dtype or t.device.type != device.type) for t in tensors):
        module.to(device=device, dtype=dtype)
    return module


def flux_dev_pipeline(
    seed: int = 0,
    *,
    device="cpu",
    dtype: torch.dtype = torch.bfloat16,
    num_layers: int = 19,
    num_single_layers: int = 38,
    max_sequence_length: int = 512,
):
    """A [`~diffusers.FluxPipeline`] with FLUX.1-dev's transformer and VAE architecture and random weights.

    For benchmarks (time, memory, FLOPs), not for images: nothing is downloaded. The transformer and the VAE
    are FLUX.1-dev's (11.9 B and 84 M parameters; `num_layers` / `num_single_layers` shrink the transformer
    for smoke tests), the scheduler config is FLUX.1-dev's (static shift 3). The text encoders are
    one-layer stand-ins with the real output widths (T5: 4096 per token, CLIP: 768 pooled) and the
    character-level tokenizers of this module, so prompt encoding works and yields FLUX.1-dev's shapes.

    Every parameter is created directly on `device` in `dtype`.
    """
    from diffusers import AutoencoderKL, FluxTransformer2DModel

    torch.manual_seed(seed)
    clip_tokenizer = tiny_clip_tokenizer()
    t5_tokenizer = tiny_t5_tokenizer(model_max_length=max_sequence_length)
    with _default_device_and_dtype(device, dtype):
        transformer = FluxTransformer2DModel(
            patch_size=1,
            in_channels=64,
            out_channels=None,
            num_layers=num_layers,
            num_single_layers=num_single_layers,
            attention_head_dim=128,
            num_attention_heads=24,
            joint_attention_dim=4096,
            pooled_projection_dim=768,
            guidance_embeds=True,
            axes_dims_rope=(16, 56, 56),
        )
        vae = AutoencoderKL(
            in_channels=3,
            out_channels=3,
            down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4,
            block_out_channels=(128, 256, 512, 512),
            layers_per_block=2,
            latent_channels=16,
            norm_num_groups=32,
            sample_size=1024,
            scaling_factor=0.3611,
            shift_factor=0.1159,
            use_quant_conv=False,
            use_post_quant_conv=False,
        )
        text_encoder = CLIPTextModel(
            CLIPTextConfig(
                vocab_size=len(clip_tokenizer),
                hidden_size=768,
                intermediate_size=64,
                num_hidden_layers=1,
                num_attention_heads=12,
                max_position_embeddings=77,
                projection_dim=768,
                bos_token_id=clip_tokenizer.bos_token_id,
                eos_token_id=clip_tokenizer.eos_token_id,
                pad_token_id=clip_tokenizer.pad_token_id,
            )
        )
        text_encoder_2 = T5EncoderModel(t5_config(t5_tokenizer, 4096, d_kv=64, d_ff=64, layers=1, heads=2))
    pipe = flux1_pipeline(transformer, vae, text_encoder, clip_tokenizer, text_encoder_2, t5_tokenizer)
    for module in (vae, text_encoder, text_encoder_2, transformer):
        _to_device_and_dtype(module, device, dtype).eval()
    return pipe


def vit_h_clip_model(
    seed: int = 0, *, device="cpu", dtype: torch.dtype = torch.float32, vision_layers: int = 32, text_layers: int = 24
) -> tuple[CLIPModel, CLIPTokenizer]:
    """A transformers `CLIPModel` with the ViT-H-14 architecture of HPSv2 / PickScore, random weights.

    Vision: width 1280, 32 layers, 16 heads, MLP 5120, patch 14, 224 px; text: width 1024, 24 layers, 16 heads,
    MLP 4096, 77 tokens, the 49408-token vocabulary size; projection 1024 (986 M parameters). The tokenizer is
    this module's character-level one (its ids are a subset of the vocabulary). `vision_layers` / `text_layers`
    shrink it for smoke tests. Parameters are created directly on `device` in `dtype`.
    """
    torch.manual_seed(seed)
    tokenizer = tiny_clip_tokenizer()
    config = CLIPConfig(
        text_config=CLIPTextConfig(
            vocab_size=49408,
            hidden_size=1024,
            intermediate_size=4096,
            num_hidden_layers=text_layers,
            num_attention_heads=16,
            max_position_embeddings=77,
            hidden_act="gelu",
            projection_dim=1024,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        ).to_dict(),
        vision_config=CLIPVisionConfig(
            hidden_size=1280,
            intermediate_size=5120,
            num_hidden_layers=vision_layers,
            num_attention_heads=16,
            image_size=224,
            patch_size=14,
            hidden_act="gelu",
            projection_dim=1024,
        ).to_dict(),
        projection_dim=1024,
    )
    with _default_device_and_dtype(device, dtype):
        model = CLIPModel(config)
    return _to_device_and_dtype(model, device, dtype).eval(), tokenizer


def vit_h_clip_reward(
    seed: int = 0,
    *,
    device="cpu",
    dtype: torch.dtype = torch.float32,
    vision_layers: int = 32,
    text_layers: int = 24,
    **kwargs,
):
    """A [`~srpo_trl.rewards.CLIPReward`] over [`vit_h_clip_model`], HPS-style (`scale=1`) unless `kwargs` say
    otherwise; `kwargs` go to `CLIPReward`."""
    from srpo_trl.rewards import CLIPReward

    model, tokenizer = vit_h_clip_model(
        seed, device=device, dtype=dtype, vision_layers=vision_layers, text_layers=text_layers
    )
    kwargs.setdefault("scale", 1.0)
    kwargs.setdefault("name", "hps")
    return CLIPReward(model, tokenizer, **kwargs)
