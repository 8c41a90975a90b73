"""A tiny FLUX.3 [klein] modular pipeline built offline (see `srpo_trl.testing`)."""

from __future__ import annotations

import torch

#: A Qwen-style chat template for the tiny character-level tokenizer: role markers around the text, so that even the
#: empty negative prompt has tokens, and an image placeholder for typed contents.
_QWEN_CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}{% if part['type'] == 'text' %}{{ part['text'] }}"
    "{% elif part['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>{% endif %}{% endfor %}{% endif %}"
    "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def _tiny_qwen3_vl(tokenizer, hidden_size: int, num_layers: int = 32):
    """A tiny `Qwen3VLForConditionalGeneration` with `num_layers` thin text layers (FLUX.3 reads hidden states 4..32 of
    32; Qwen-Image 2.1 the last one's output, before the final norm) and a 1-layer vision tower."""
    from transformers import Qwen3VLConfig, Qwen3VLForConditionalGeneration

    ids = tokenizer.convert_tokens_to_ids
    config = Qwen3VLConfig(
        text_config=dict(
            vocab_size=len(tokenizer),
            hidden_size=hidden_size,
            intermediate_size=2 * hidden_size,
            num_hidden_layers=num_layers,
            num_attention_heads=2,
            num_key_value_heads=1,
            head_dim=hidden_size // 2,
            max_position_embeddings=4096,
            pad_token_id=ids("<|endoftext|>"),
            rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 1, 1]},
        ),
        vision_config=dict(
            depth=1,
            hidden_size=16,
            intermediate_size=32,
            num_heads=2,
            out_hidden_size=hidden_size,
            deepstack_visual_indexes=[0],
            num_position_embeddings=16,
        ),
        image_token_id=ids("<|image_pad|>"),
        video_token_id=ids("<|video_pad|>"),
        vision_start_token_id=ids("<|vision_start|>"),
    )
    return Qwen3VLForConditionalGeneration(config)


def _tiny_qwen3_vl_processor(tokenizer):
    from unittest import mock

    from transformers import Qwen3VLProcessor
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil
    from transformers.processing_utils import ProcessorMixin

    # Without torchvision (it does not import beside the CPU torch build), transformers cannot resolve the video
    # processor's class to type-check it; FLUX.3 never uses it, so the check is skipped for this call.
    with mock.patch.object(ProcessorMixin, "check_argument_for_proper_class", lambda self, name, arg: None):
        return Qwen3VLProcessor(
            image_processor=Qwen2VLImageProcessorPil(), tokenizer=tokenizer, chat_template=_QWEN_CHAT_TEMPLATE
        )


def tiny_flux3_pipeline(seed: int = 0, *, distilled: bool = False, hidden_size: int = 16, guidance_scale=None):
    """A tiny random FLUX.3 [klein] modular pipeline built in code: `Flux3ModularPipeline` (the base model, with the
    stock guider's classifier-free guidance, `guidance_scale` when given) or, with `distilled`, a
    `Flux3DistilledModularPipeline` (a flow-map transformer, no guider).

    The Qwen3-VL text encoder has the 32 thin layers whose hidden states FLUX.3 stacks (8 x `hidden_size` wide); the
    VAE is FLUX.2's layout with 4 latent channels; resolutions must be multiples of 16. The prompt upsampler, which
    the default blocks run on every call, is left out (it is not part of training).
    """
    from diffusers import Flux3Transformer2DModel
    from diffusers.modular_pipelines import Flux3AutoBlocks, Flux3DistilledAutoBlocks

    from . import tiny_flux2_vae
    from .qwen import tiny_qwen_tokenizer

    torch.manual_seed(seed)
    tokenizer = tiny_qwen_tokenizer()
    tokenizer.chat_template = _QWEN_CHAT_TEMPLATE
    text_encoder = _tiny_qwen3_vl(tokenizer, hidden_size)
    latent_channels = 4
    transformer = Flux3Transformer2DModel(
        in_channels=4 * latent_channels,
        cond_in_channels=4 * latent_channels,
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=8 * hidden_size,  # eight stacked hidden-state layers
        timestep_channels=32,
        axes_dims_rope=(4, 4, 4, 4),
        flow_map=distilled,
    )
    vae = tiny_flux2_vae(latent_channels)
    blocks = Flux3DistilledAutoBlocks() if distilled else Flux3AutoBlocks()
    blocks.sub_blocks.pop("prompt_upsampler", None)
    pipe = blocks.init_pipeline()
    processor = _tiny_qwen3_vl_processor(tokenizer)
    pipe.update_components(transformer=transformer, vae=vae, text_encoder=text_encoder, tokenizer=processor)
    if guidance_scale is not None and not distilled:
        pipe.update_components(guider=pipe.guider.new(guidance_scale=guidance_scale))
    for module in (vae, text_encoder, transformer):
        module.eval()
    return pipe
