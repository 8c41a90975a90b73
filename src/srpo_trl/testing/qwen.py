"""Tiny Qwen-Image pipelines built offline (see `srpo_trl.testing`): a character-level tokenizer with Qwen's special
tokens, a tiny Qwen2.5-VL text encoder and processor, the Qwen-Image transformer and VAE."""

from __future__ import annotations

import torch
from tokenizers import Tokenizer

from . import _ALPHABET

#: Qwen2.5-VL's chat and vision marker tokens, kept whole by [`tiny_qwen_tokenizer`] (the pipelines' templates use them).
QWEN_SPECIAL_TOKENS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
)


def tiny_qwen_tokenizer(model_max_length: int = 2048):
    """A character-level fast tokenizer with Qwen2.5-VL's special tokens, standing in for Qwen-Image's."""
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import Split
    from transformers import PreTrainedTokenizerFast

    vocab = {token: i for i, token in enumerate(QWEN_SPECIAL_TOKENS)}
    vocab.update({c: len(vocab) + i for i, c in enumerate(dict.fromkeys(_ALPHABET + "\n"))})  # templates hold newlines
    vocab["<unk>"] = len(vocab)
    backend = Tokenizer(WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = Split(pattern="", behavior="isolated")
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="<|endoftext|>", unk_token="<unk>", model_max_length=model_max_length
    )
    tokenizer.add_special_tokens({"additional_special_tokens": list(QWEN_SPECIAL_TOKENS[1:])})
    return tokenizer


def _tiny_qwen_vl_encoder(tokenizer, hidden_size: int):
    """A tiny `Qwen2_5_VLForConditionalGeneration` whose vision tower reads 28-px-merged patches, as the real one."""
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    ids = tokenizer.convert_tokens_to_ids
    config = Qwen2_5_VLConfig(
        text_config=dict(
            vocab_size=len(tokenizer),
            hidden_size=hidden_size,
            intermediate_size=2 * hidden_size,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_key_value_heads=1,
            max_position_embeddings=4096,
            bos_token_id=ids("<|im_start|>"),
            eos_token_id=ids("<|im_end|>"),
            pad_token_id=ids("<|endoftext|>"),
            rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 1, 1]},
        ),
        vision_config=dict(
            depth=2,
            hidden_size=16,
            intermediate_size=32,
            num_heads=2,
            out_hidden_size=hidden_size,
            fullatt_block_indexes=[1],
            window_size=56,
        ),
        image_token_id=ids("<|image_pad|>"),
        video_token_id=ids("<|video_pad|>"),
        vision_start_token_id=ids("<|vision_start|>"),
    )
    return Qwen2_5_VLForConditionalGeneration(config)


def _tiny_qwen_image_parts(hidden_size: int, latent_channels: int = 4, zero_cond_t: bool = False):
    from diffusers import AutoencoderKLQwenImage, FlowMatchEulerDiscreteScheduler, QwenImageTransformer2DModel

    transformer = QwenImageTransformer2DModel(
        patch_size=2,
        in_channels=4 * latent_channels,
        out_channels=latent_channels,
        num_layers=2,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=hidden_size,
        axes_dims_rope=(4, 6, 6),
        zero_cond_t=zero_cond_t,
    )
    vae = AutoencoderKLQwenImage(
        base_dim=8,
        z_dim=latent_channels,
        dim_mult=[1, 2, 2, 2],
        num_res_blocks=1,
        temperal_downsample=[False, True, True],
        latents_mean=[0.1, -0.2, 0.3, 0.0][:latent_channels],
        latents_std=[1.5, 0.8, 1.2, 2.0][:latent_channels],
    )
    # Qwen/Qwen-Image's scheduler settings: exponential dynamic shift with a terminal level of 0.02.
    scheduler = FlowMatchEulerDiscreteScheduler(
        base_image_seq_len=256,
        base_shift=0.5,
        max_image_seq_len=8192,
        max_shift=0.9,
        shift=1.0,
        shift_terminal=0.02,
        time_shift_type="exponential",
        use_dynamic_shifting=True,
    )
    return transformer, vae, scheduler


def _tiny_qwen_pipeline(cls, seed: int, hidden_size: int, dtype, processor: bool = False, zero_cond_t: bool = False):
    """A `QwenImagePipeline`-like `cls` from the tiny parts, with a Qwen2-VL processor when `processor`."""
    torch.manual_seed(seed)
    tokenizer = tiny_qwen_tokenizer()
    text_encoder = _tiny_qwen_vl_encoder(tokenizer, hidden_size)
    transformer, vae, scheduler = _tiny_qwen_image_parts(hidden_size, zero_cond_t=zero_cond_t)
    extra = {"processor": _tiny_qwen_vl_processor(tokenizer)} if processor else {}
    pipe = cls(
        scheduler=scheduler, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, transformer=transformer, **extra
    )
    if dtype != torch.float32:
        pipe.to(dtype=dtype)
    for module in (vae, text_encoder, transformer):
        module.eval()
    return pipe


def _tiny_qwen_vl_processor(tokenizer):
    """A Qwen2-VL processor that reads images at 56 x 56 pixels at most (4 merged vision tokens)."""
    from unittest import mock

    from transformers import Qwen2VLProcessor
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil
    from transformers.processing_utils import ProcessorMixin

    image_processor = Qwen2VLImageProcessorPil(min_pixels=28 * 28, max_pixels=56 * 56)
    # Without torchvision (it does not import beside the CPU torch build), transformers cannot resolve the video
    # processor's class to type-check it; image editing never uses it, so the check is skipped for this call.
    with mock.patch.object(ProcessorMixin, "check_argument_for_proper_class", lambda self, name, arg: None):
        return Qwen2VLProcessor(image_processor=image_processor, tokenizer=tokenizer)


def tiny_qwen_image_pipeline(seed: int = 0, *, hidden_size: int = 16, dtype=torch.float32):
    """A tiny random `QwenImagePipeline` built in code: Qwen2.5-VL text encoder (2 layers), Qwen-Image VAE
    (4 latent channels, 8x downsampling) and MMDiT transformer (2 blocks); resolutions must be multiples of 16."""
    from diffusers import QwenImagePipeline

    return _tiny_qwen_pipeline(QwenImagePipeline, seed, hidden_size, dtype)


def tiny_qwen_image_edit_plus_pipeline(
    seed: int = 0, *, hidden_size: int = 16, zero_cond_t: bool = False, dtype=torch.float32
):
    """A tiny random `QwenImageEditPlusPipeline` (Qwen-Image-Edit-2509; `zero_cond_t=True`: 2511's transformer,
    which gives the reference tokens timestep 0), with the processor of [`tiny_qwen_image_edit_pipeline`]."""
    from diffusers import QwenImageEditPlusPipeline

    return _tiny_qwen_pipeline(
        QwenImageEditPlusPipeline, seed, hidden_size, dtype, processor=True, zero_cond_t=zero_cond_t
    )


def tiny_qwen_image_edit_pipeline(seed: int = 0, *, hidden_size: int = 16, dtype=torch.float32):
    """A tiny random `QwenImageEditPipeline`: the parts of [`tiny_qwen_image_pipeline`] plus a Qwen2-VL processor
    that reads the reference at 56 x 56 pixels at most, so the text encoder's view of the 1024 x 1024-area
    reference the pipeline makes stays cheap."""
    from diffusers import QwenImageEditPipeline

    return _tiny_qwen_pipeline(QwenImageEditPipeline, seed, hidden_size, dtype, processor=True)
