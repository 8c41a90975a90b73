"""A tiny Z-Image pipeline built offline (see `srpo_trl.testing`): a character-level tokenizer with Qwen3's chat
template, a tiny `Qwen3Model` text encoder, the Z-Image single-stream transformer, FLUX's VAE layout and Z-Image-Turbo's
scheduler settings."""

from __future__ import annotations

import torch

#: Qwen3's chat template as the Z-Image pipeline renders it (`add_generation_prompt=True`, `enable_thinking=True`):
#: `<|im_start|>user\n{prompt}<|im_end|>\n<|im_start|>assistant\n`. Even the empty negative prompt keeps these tokens.
QWEN3_CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def tiny_qwen3_chat_tokenizer():
    """A character-level tokenizer with Qwen's special tokens and Qwen3's chat template, standing in for Z-Image's."""
    from .qwen import tiny_qwen_tokenizer

    tokenizer = tiny_qwen_tokenizer()
    tokenizer.chat_template = QWEN3_CHAT_TEMPLATE
    return tokenizer


def tiny_z_image_pipeline(seed: int = 0, *, hidden_size: int = 16, vivid: bool = True, dtype=torch.float32):
    """A tiny random [`~diffusers.ZImagePipeline`] built in code: a 2-layer `Qwen3Model` text encoder (the pipeline reads
    its second-to-last hidden state), a `ZImageTransformer2DModel` (one noise- and one context-refiner block, two main
    blocks, dim 32), an `AutoencoderKL` downsampling 8x with 4 latent channels and FLUX's scaling / shift factors (Z-Image
    uses FLUX.1's VAE), and Z-Image-Turbo's scheduler (static shift 3). Resolutions must be multiples of 16.

    `vivid` scales the VAE decoder's output layer so that decoded images carry visible colour (colour rewards such as
    `ColorWordReward` then respond to the weights)."""
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, ZImagePipeline, ZImageTransformer2DModel
    from transformers import Qwen3Config, Qwen3Model

    torch.manual_seed(seed)
    tokenizer = tiny_qwen3_chat_tokenizer()
    ids = tokenizer.convert_tokens_to_ids
    text_encoder = Qwen3Model(
        Qwen3Config(
            vocab_size=len(tokenizer),
            hidden_size=hidden_size,
            intermediate_size=2 * hidden_size,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_key_value_heads=1,
            head_dim=hidden_size // 2,
            max_position_embeddings=1024,
            pad_token_id=ids("<|endoftext|>"),
            bos_token_id=ids("<|im_start|>"),
            eos_token_id=ids("<|im_end|>"),
        )
    )
    latent_channels = 4
    transformer = ZImageTransformer2DModel(
        all_patch_size=(2,),
        all_f_patch_size=(1,),
        in_channels=latent_channels,
        dim=32,
        n_layers=2,
        n_refiner_layers=1,
        n_heads=2,
        n_kv_heads=2,
        qk_norm=True,
        cap_feat_dim=hidden_size,
        axes_dims=[4, 6, 6],  # sums to the head dim, 16
        axes_lens=[512, 64, 64],
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
        scaling_factor=0.3611,  # FLUX.1's VAE, which Z-Image uses
        shift_factor=0.1159,
        use_quant_conv=False,
        use_post_quant_conv=False,
    )
    if vivid:
        with torch.no_grad():
            vae.decoder.conv_out.weight.mul_(5.0)
            vae.decoder.conv_out.bias.zero_()
    # Tongyi-MAI/Z-Image-Turbo's scheduler settings.
    scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=False)
    pipe = ZImagePipeline(
        scheduler=scheduler, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, transformer=transformer
    )
    if dtype != torch.float32:
        pipe.to(dtype=dtype)
    for module in (vae, text_encoder, transformer):
        module.eval()
    return pipe
