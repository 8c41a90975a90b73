"""Tiny, offline, randomly initialised models for tests, demos and users' own CI.

Everything here is built from configs in code: nothing is downloaded, so these work on a machine
with no network. The models are real diffusers / transformers classes, only very small, so code
that runs on them runs unchanged on FLUX.1-dev.

- [`tiny_flux_pipeline`]: a [`~diffusers.FluxPipeline`] with a FLUX.1-dev-like transformer (guidance
  embedding on), VAE, CLIP and T5 text encoders with their tokenizers, and a flow-matching scheduler.
- [`tiny_clip_reward`]: a [`~srpo_trl.rewards.CLIPReward`] over a tiny random `CLIPModel`.
"""

from __future__ import annotations

import string

import torch
from tokenizers import Tokenizer
from tokenizers.decoders import Metaspace as MetaspaceDecoder
from tokenizers.models import Unigram
from tokenizers.pre_tokenizers import Metaspace
from transformers import (
    CLIPConfig,
    CLIPModel,
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTokenizer,
    CLIPVisionConfig,
    T5Config,
    T5EncoderModel,
    T5TokenizerFast,
)

# Characters the tiny tokenizers know; anything else maps to the unknown token.
_ALPHABET = string.ascii_letters + string.digits + string.punctuation + " "
_CLIP_BOS, _CLIP_EOS = "<|startoftext|>", "<|endoftext|>"


def tiny_clip_tokenizer() -> CLIPTokenizer:
    """A character-level `CLIPTokenizer` (no merges) that needs no files."""
    chars = [c for c in _ALPHABET if not c.isspace()]
    vocab: dict[str, int] = {}
    for token in [_CLIP_BOS, _CLIP_EOS, *chars, *(c + "</w>" for c in chars)]:
        vocab.setdefault(token, len(vocab))
    return CLIPTokenizer(
        vocab=vocab,
        merges=[],
        unk_token=_CLIP_EOS,
        bos_token=_CLIP_BOS,
        eos_token=_CLIP_EOS,
        pad_token=_CLIP_EOS,
        model_max_length=77,
    )


def tiny_t5_tokenizer(model_max_length: int = 512) -> T5TokenizerFast:
    """A character-level `T5TokenizerFast` built from a `tokenizers` Unigram model of single characters.

    Unigram, as T5's own tokenizer, so that `save_pretrained` / `from_pretrained` round-trip.
    """
    pieces = ["<pad>", "</s>", "<unk>", "\u2581", *dict.fromkeys(_ALPHABET.replace(" ", ""))]
    backend = Tokenizer(Unigram([(p, -1.0) for p in pieces], unk_id=2))
    # T5's own word-boundary convention ("\u2581" for spaces), which a reloaded T5Tokenizer also applies.
    backend.pre_tokenizer = Metaspace(replacement="\u2581", prepend_scheme="always")
    backend.decoder = MetaspaceDecoder(replacement="\u2581", prepend_scheme="always")
    # Without model_max_length the pipeline's truncation to max_sequence_length overflows.
    return T5TokenizerFast(
        tokenizer_object=backend,
        pad_token="<pad>",
        eos_token="</s>",
        unk_token="<unk>",
        model_max_length=model_max_length,
        extra_ids=0,
    )


def _tiny_clip_text_config(tokenizer: CLIPTokenizer, hidden_size: int) -> CLIPTextConfig:
    return CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=77,
        projection_dim=hidden_size,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


def tiny_flux_pipeline(
    seed: int = 0,
    *,
    guidance_embeds: bool = True,
    num_layers: int = 1,
    num_single_layers: int = 1,
    attention_head_dim: int = 16,
    num_attention_heads: int = 2,
    dtype: torch.dtype = torch.float32,
):
    """Build a tiny random [`~diffusers.FluxPipeline`] entirely in code.

    Args:
        seed (`int`, *optional*, defaults to `0`):
            Seed for the random weights; the same seed gives the same pipeline.
        guidance_embeds (`bool`, *optional*, defaults to `True`):
            `True` mimics guidance-distilled FLUX.1-dev, `False` mimics FLUX.1-schnell.
        num_layers, num_single_layers, attention_head_dim, num_attention_heads (`int`):
            Transformer size. `attention_head_dim` must be divisible by 4 (rotary axes).
        dtype (`torch.dtype`, *optional*, defaults to `torch.float32`):
            Dtype of all components.

    The VAE downsamples by 8 (as FLUX's does), so resolutions must be multiples of 16; 4 latent
    channels keep it cheap. The scheduler config copies FLUX.1-dev's (static shift 3).
    """
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel

    if attention_head_dim % 4:
        raise ValueError(f"attention_head_dim must be divisible by 4, got {attention_head_dim}")
    text_dim = 32
    latent_channels = 4
    torch.manual_seed(seed)

    rope_t = attention_head_dim // 4
    rope_hw = (attention_head_dim - rope_t) // 2
    axes = (attention_head_dim - 2 * rope_hw, rope_hw, rope_hw)
    transformer = FluxTransformer2DModel(
        patch_size=1,
        in_channels=4 * latent_channels,  # 2x2 packing of the VAE latent
        num_layers=num_layers,
        num_single_layers=num_single_layers,
        attention_head_dim=attention_head_dim,
        num_attention_heads=num_attention_heads,
        joint_attention_dim=text_dim,
        pooled_projection_dim=text_dim,
        guidance_embeds=guidance_embeds,
        axes_dims_rope=axes,
    )
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(8, 16, 16, 16),
        layers_per_block=1,
        latent_channels=latent_channels,
        norm_num_groups=8,
        sample_size=1024,  # large, so that tiling never kicks in on tiny images
        scaling_factor=1.5035,
        shift_factor=0.0609,
        use_quant_conv=False,
        use_post_quant_conv=False,
    )
    clip_tokenizer = tiny_clip_tokenizer()
    text_encoder = CLIPTextModel(_tiny_clip_text_config(clip_tokenizer, text_dim))
    t5_tokenizer = tiny_t5_tokenizer()
    text_encoder_2 = T5EncoderModel(
        T5Config(
            vocab_size=len(t5_tokenizer),
            d_model=text_dim,
            d_kv=8,
            d_ff=2 * text_dim,
            num_layers=2,
            num_heads=4,
            relative_attention_num_buckets=8,
            decoder_start_token_id=0,
            pad_token_id=0,
            eos_token_id=1,
        )
    )
    scheduler = FlowMatchEulerDiscreteScheduler(
        shift=3.0,
        use_dynamic_shifting=True,
        base_shift=0.5,
        max_shift=1.15,
        base_image_seq_len=256,
        max_image_seq_len=4096,
    )
    pipe = FluxPipeline(
        scheduler=scheduler,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=clip_tokenizer,
        text_encoder_2=text_encoder_2,
        tokenizer_2=t5_tokenizer,
        transformer=transformer,
    )
    if dtype != torch.float32:
        pipe.to(dtype=dtype)
    for module in (vae, text_encoder, text_encoder_2, transformer):
        module.eval()
    return pipe


def tiny_clip_model(seed: int = 0, hidden_size: int = 32, image_size: int = 224) -> tuple[CLIPModel, CLIPTokenizer]:
    """A tiny random transformers `CLIPModel` with a character-level tokenizer."""
    torch.manual_seed(seed)
    tokenizer = tiny_clip_tokenizer()
    config = CLIPConfig(
        text_config=_tiny_clip_text_config(tokenizer, hidden_size).to_dict(),
        vision_config=CLIPVisionConfig(
            hidden_size=hidden_size,
            intermediate_size=2 * hidden_size,
            num_hidden_layers=2,
            num_attention_heads=2,
            image_size=image_size,
            patch_size=32,
            projection_dim=hidden_size,
        ).to_dict(),
        projection_dim=hidden_size,
    )
    return CLIPModel(config).eval(), tokenizer


def tiny_clip_reward(seed: int = 0, **kwargs):
    """A [`~srpo_trl.rewards.CLIPReward`] over [`tiny_clip_model`]; `kwargs` go to `CLIPReward`."""
    from .rewards import CLIPReward

    model, tokenizer = tiny_clip_model(seed)
    return CLIPReward(model, tokenizer, **kwargs)
