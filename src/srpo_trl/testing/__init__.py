"""Tiny, offline, randomly initialised models for tests, demos and users' own CI.

Everything here is built from configs in code: nothing is downloaded, so these work on a machine
with no network. The models are real diffusers / transformers classes, only very small, so code
that runs on them runs unchanged on FLUX.1-dev.

- [`tiny_flux_pipeline`]: a [`~diffusers.FluxPipeline`] with a FLUX.1-dev-like transformer (guidance
  embedding on), VAE, CLIP and T5 text encoders with their tokenizers, and a flow-matching scheduler.
- [`tiny_colour_flux_pipeline`]: the same, a little larger, with a VAE whose images carry visible colour.
- [`tiny_clip_reward`]: a [`~srpo_trl.rewards.CLIPReward`] over a tiny random `CLIPModel`.
- [`tiny_srpo_config`]: an [`~srpo_trl.SRPOConfig`] sized for those 64-px pipelines on a CPU.
- One tiny pipeline per supported family: [`tiny_flux_kontext_pipeline`], [`tiny_flux2_pipeline`] ([dev], [klein] base
  or distilled), [`tiny_flux3_pipeline`] (FLUX.3 [klein] modular, base or distilled; `srpo_trl.testing.flux3`),
  [`tiny_qwen_image_pipeline`] and the Qwen-Image-Edit ones (`srpo_trl.testing.qwen`), [`tiny_chroma_pipeline`], [`tiny_flux_control_pipeline`], and
  [`tiny_variant_pipeline`] for the Img2Img / Inpaint / KV variants.
- [`flux1_pipeline`], [`t5_config`], the tokenizers: the parts those are built from, also used by the
  full-size benchmark builders in `benchmarks/full_size_models.py`.
"""

from __future__ import annotations

import string
from collections.abc import Sequence

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


def tiny_t5_tokenizer(model_max_length: int = 512, words: Sequence[str] = ()) -> T5TokenizerFast:
    """A character-level `T5TokenizerFast` built from a `tokenizers` Unigram model of single characters.

    Unigram, as T5's own tokenizer, so that `save_pretrained` / `from_pretrained` round-trip. `words` are read
    whole, one token each (scored above spelling them out), and anything else by character: the shipped tiny
    model's T5 (`srpo_trl.pretrained`) reads its world's words so.
    """
    chars = [*dict.fromkeys(_ALPHABET.replace(" ", ""))]
    if words:
        whole = [(f"\u2581{w}", -1.0) for w in words]
        scored = [
            ("<pad>", 0.0),
            ("</s>", 0.0),
            ("<unk>", 0.0),
            ("\u2581", -10.0),
            *whole,
            *[(c, -10.0) for c in chars],
        ]
    else:
        scored = [(p, -1.0) for p in ["<pad>", "</s>", "<unk>", "\u2581", *chars]]
    backend = Tokenizer(Unigram(scored, unk_id=2))
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


def t5_config(tokenizer, d_model: int, *, d_kv: int, d_ff: int, layers: int, heads: int) -> T5Config:
    return T5Config(
        vocab_size=len(tokenizer),
        d_model=d_model,
        d_kv=d_kv,
        d_ff=d_ff,
        num_layers=layers,
        num_heads=heads,
        relative_attention_num_buckets=8,
        decoder_start_token_id=0,
        pad_token_id=0,
        eos_token_id=1,
    )


def flux1_pipeline(transformer, vae, text_encoder, clip_tokenizer, text_encoder_2, t5_tokenizer):
    """A `FluxPipeline` from its parts, with FLUX.1-dev's scheduler config (static shift 3)."""
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline

    scheduler = FlowMatchEulerDiscreteScheduler(
        shift=3.0,
        use_dynamic_shifting=True,
        base_shift=0.5,
        max_shift=1.15,
        base_image_seq_len=256,
        max_image_seq_len=4096,
    )
    return FluxPipeline(
        scheduler=scheduler,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=clip_tokenizer,
        text_encoder_2=text_encoder_2,
        tokenizer_2=t5_tokenizer,
        transformer=transformer,
    )


def tiny_vae(latent_channels: int, scaling_factor: float, shift_factor: float):
    """A tiny random 8x `AutoencoderKL` (FLUX.1's and SD3's kind) with the family's normalisation factors."""
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(8, 16, 16, 16),
        layers_per_block=1,
        latent_channels=latent_channels,
        norm_num_groups=8,
        sample_size=1024,  # large, so that tiling never kicks in on tiny images
        scaling_factor=scaling_factor,
        shift_factor=shift_factor,
        use_quant_conv=False,
        use_post_quant_conv=False,
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
    from diffusers import FluxTransformer2DModel

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
    vae = tiny_vae(latent_channels, scaling_factor=1.5035, shift_factor=0.0609)
    clip_tokenizer = tiny_clip_tokenizer()
    text_encoder = CLIPTextModel(_tiny_clip_text_config(clip_tokenizer, text_dim))
    t5_tokenizer = tiny_t5_tokenizer()
    text_encoder_2 = T5EncoderModel(t5_config(t5_tokenizer, text_dim, d_kv=8, d_ff=2 * text_dim, layers=2, heads=4))
    pipe = flux1_pipeline(transformer, vae, text_encoder, clip_tokenizer, text_encoder_2, t5_tokenizer)
    if dtype != torch.float32:
        pipe.to(dtype=dtype)
    for module in (vae, text_encoder, text_encoder_2, transformer):
        module.eval()
    return pipe


def tiny_colour_flux_pipeline(seed: int = 0):
    """A tiny random [`~diffusers.FluxPipeline`] (0.5 M transformer parameters) whose images carry visible colour.

    A randomly initialised VAE decoder spans only a narrow range of colours around grey; its output
    convolution is scaled up so that, like a real VAE, it can produce clearly coloured images, and colour
    rewards (`ColorWordReward`) respond to the weights. The unit tests' default pipeline for training runs.
    """
    pipe = tiny_flux_pipeline(seed, num_layers=2, num_single_layers=2, attention_head_dim=32)
    with torch.no_grad():
        pipe.vae.decoder.conv_out.weight.mul_(5.0)
        pipe.vae.decoder.conv_out.bias.zero_()
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
    from ..rewards import CLIPReward

    model, tokenizer = tiny_clip_model(seed)
    return CLIPReward(model, tokenizer, **kwargs)


# --------------------------------------------------------------------------------------------------
# Full-size architectures with random weights (benchmarks): nothing is downloaded either.


def tiny_srpo_config(output_dir: str, **overrides):
    """An `SRPOConfig` for the tiny pipelines on a CPU: 64 px, 4 rollout steps, 32 text tokens, the control words
    +"blue" / -"red" (which `ColorWordReward` understands), no checkpointing, logging every step, nothing saved
    unless `overrides` say so."""
    from ..config import SRPOConfig

    kwargs = dict(
        output_dir=output_dir,
        max_steps=4,
        resolution=64,
        rollout_steps=4,
        max_sequence_length=32,
        positive_control_words=["blue"],
        negative_control_words=["red"],
        report_to="none",
        save_strategy="no",
        logging_steps=1,
        disable_tqdm=True,
        transformer_gradient_checkpointing=False,
        vae_gradient_checkpointing=False,
        seed=0,
    )
    kwargs.update(overrides)
    return SRPOConfig(**kwargs)


_CHAT_TEMPLATE = (
    # Renders only the user's text (the tiny tokenizer is character-level: a long system message would fill the
    # whole sequence), for both plain-string and typed-list message contents.
    "{% for message in messages %}{% if message['role'] == 'user' %}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}{% if part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}{% endif %}{% endfor %}"
)


def tiny_chat_tokenizer(model_max_length: int = 512):
    """A character-level fast tokenizer with a chat template, standing in for Qwen3's and Mistral's."""
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import Split
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<unk>": 1, **{c: i + 2 for i, c in enumerate(dict.fromkeys(_ALPHABET))}}
    backend = Tokenizer(WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = Split(pattern="", behavior="isolated")
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token="<pad>",
        unk_token="<unk>",
        model_max_length=model_max_length,
        chat_template=_CHAT_TEMPLATE,
    )


def tiny_flux2_vae(latent_channels: int = 4):
    """A tiny `AutoencoderKLFlux2` (FLUX.2's and FLUX.3's VAE: 2x2-patchified latents with batch-norm statistics),
    downsampling 8x."""
    from diffusers import AutoencoderKLFlux2

    return AutoencoderKLFlux2(
        block_out_channels=(8, 16, 16, 16),
        layers_per_block=1,
        latent_channels=latent_channels,
        norm_num_groups=8,
        use_quant_conv=False,
        use_post_quant_conv=False,
    )


def tiny_flux2_pipeline(
    seed: int = 0, *, variant: str = "klein", hidden_size: int = 16, dtype=torch.float32, distilled: bool = False
):
    """A tiny random FLUX.2 pipeline built in code: `variant="klein"` gives a `Flux2KleinPipeline` (Qwen3 text
    encoder, no guidance embedding; the base model, with classifier-free guidance, unless `distilled`), `"dev"` a
    `Flux2Pipeline` (Mistral-3 text encoder, guidance-distilled).

    The text encoders have just enough layers for the pipelines' hidden-state picks (Qwen3: 9, 18, 27;
    Mistral: 10, 20, 30), each tiny. The VAE has FLUX.2's layout (2x2 patchified latents, batch-norm
    statistics) with 4 latent channels; resolutions must be multiples of 16.
    """
    from diffusers import (
        FlowMatchEulerDiscreteScheduler,
        Flux2KleinPipeline,
        Flux2Pipeline,
        Flux2Transformer2DModel,
    )

    if variant not in ("klein", "dev"):
        raise ValueError(f"variant must be 'klein' or 'dev', got {variant!r}")
    torch.manual_seed(seed)
    tokenizer = tiny_chat_tokenizer()
    text_kwargs = dict(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=hidden_size // 2,
        max_position_embeddings=1024,
        pad_token_id=0,
    )
    if variant == "klein":
        from transformers import Qwen3Config, Qwen3ForCausalLM

        text_encoder = Qwen3ForCausalLM(Qwen3Config(num_hidden_layers=28, **text_kwargs))
    else:
        from transformers import Mistral3Config, Mistral3ForConditionalGeneration, MistralConfig, PixtralVisionConfig

        text_encoder = Mistral3ForConditionalGeneration(
            Mistral3Config(
                text_config=MistralConfig(num_hidden_layers=31, **text_kwargs).to_dict(),
                vision_config=PixtralVisionConfig(
                    hidden_size=16,
                    intermediate_size=32,
                    num_hidden_layers=1,
                    num_attention_heads=2,
                    image_size=32,
                    patch_size=16,
                    head_dim=8,
                ).to_dict(),
            )
        )
    latent_channels = 4
    transformer = Flux2Transformer2DModel(
        patch_size=1,
        in_channels=4 * latent_channels,
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=3 * hidden_size,  # three stacked hidden-state layers
        timestep_guidance_channels=32,
        axes_dims_rope=(4, 4, 4, 4),
        guidance_embeds=variant == "dev",
    )
    vae = tiny_flux2_vae(latent_channels)
    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True, time_shift_type="exponential")
    parts = dict(scheduler=scheduler, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, transformer=transformer)
    pipe = Flux2KleinPipeline(**parts, is_distilled=distilled) if variant == "klein" else Flux2Pipeline(**parts)
    if dtype != torch.float32:
        pipe.to(dtype=dtype)
    for module in (vae, text_encoder, transformer):
        module.eval()
    return pipe


def tiny_flux_kontext_pipeline(seed: int = 0, **kwargs):
    """A tiny random [`~diffusers.FluxKontextPipeline`]: Kontext is a FLUX.1 transformer that also reads a
    reference image, so it is [`tiny_flux_pipeline`]'s components under the Kontext pipeline class."""
    from diffusers import FluxKontextPipeline

    pipe = tiny_flux_pipeline(seed, **kwargs)
    names = ("scheduler", "vae", "text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2", "transformer")
    return FluxKontextPipeline(**{name: pipe.components[name] for name in names})


def tiny_variant_pipeline(name: str, seed: int = 0):
    """A tiny variant pipeline (`"FluxImg2ImgPipeline"`, `"FluxInpaintPipeline"`, `"FluxKontextInpaintPipeline"`,
    `"Flux2KleinInpaintPipeline"`, `"Flux2KleinKVPipeline"`, `"ChromaImg2ImgPipeline"`, `"ChromaInpaintPipeline"`): the family's tiny pipeline's components in the
    variant's class (diffusers' `from_pipe`), as a user who deploys with the variant loads the same weights."""
    import diffusers

    bases = {
        "FluxImg2ImgPipeline": tiny_flux_pipeline,
        "FluxInpaintPipeline": tiny_flux_pipeline,
        "FluxKontextInpaintPipeline": tiny_flux_kontext_pipeline,
        "Flux2KleinInpaintPipeline": tiny_flux2_pipeline,
        "Flux2KleinKVPipeline": lambda seed: tiny_flux2_pipeline(seed, distilled=True),
        "FluxControlImg2ImgPipeline": lambda seed: tiny_flux_control_pipeline(seed),
        "FluxControlInpaintPipeline": lambda seed: tiny_flux_control_pipeline(seed),
        "ChromaImg2ImgPipeline": lambda seed: tiny_chroma_pipeline(seed),
        "ChromaInpaintPipeline": lambda seed: tiny_chroma_pipeline(seed),
    }
    if name not in bases:
        raise ValueError(f"tiny_variant_pipeline: {name!r} is not one of {sorted(bases)}")
    return getattr(diffusers, name).from_pipe(bases[name](seed))


# Built on the tokenizers above; public here.
from .flux3 import tiny_flux3_pipeline  # noqa: E402, F401, I001  (after .qwen: it uses its tokenizer)
from .chroma import tiny_chroma_pipeline, tiny_flux_control_pipeline  # noqa: E402, F401, I001
from .qwen import (  # noqa: E402, F401
    QWEN_SPECIAL_TOKENS,
    tiny_qwen_image_edit_pipeline,
    tiny_qwen_image_edit_plus_pipeline,
    tiny_qwen_image_pipeline,
    tiny_qwen_tokenizer,
)
from .flux_controlnet import tiny_flux_controlnet_pipeline  # noqa: E402, F401
from .flux_fill import tiny_flux_fill_pipeline  # noqa: E402, F401
from .depth import TINY_DEPTH_PROCESSOR, save_tiny_depth_model, tiny_depth_model  # noqa: E402, F401
from .qwen_image21 import tiny_qwen_image21_pipeline  # noqa: E402, F401
from .sd3 import tiny_sd3_pipeline  # noqa: E402, F401
from .z_image import tiny_z_image_pipeline  # noqa: E402, F401
from .wan import tiny_wan_pipeline  # noqa: E402, F401
