"""Stable Diffusion 3 / 3.5 adapter: `diffusers.StableDiffusion3Pipeline` (SD3 Medium, SD3.5 Large, Medium and Large
Turbo, and fine-tunes), and through the `PIPELINES` table its Img2Img / Inpaint variants.

SD3 is an MMDiT (`SD3Transformer2DModel`): joint text-image blocks (`JointTransformerBlock`), the last of which only
reads the text (`context_pre_only`). What it changes against FLUX.1, all handled here as the stock pipeline does it:

- three text encoders. The two CLIPs (`CLIPTextModelWithProjection`, L and bigG) each give their penultimate hidden
  state (77 tokens) and their projected pooled output; T5 gives `max_sequence_length` tokens. The transformer's text
  (`prompt_embeds`) is the two CLIP hidden states concatenated on the feature axis, zero-padded to T5's width and
  concatenated with T5's tokens on the sequence axis (`77 + max_sequence_length` tokens); its pooled vector
  (`pooled_prompt_embeds`) is the two CLIP pooled outputs concatenated (768 + 1280 = 2048 features). There is no
  text mask: every token, padding too, is attended, so every prompt has one shape and the cache stacks rows as they
  are. Without T5 (`text_encoder_3=None`) the pipeline gives zeros in its place, and so does this adapter;
- latents are the VAE's 16 channels, `[B, 16, H/8, W/8]`, which the transformer takes as they are and patchifies
  inside (`patch_size=2`, so sizes are multiples of 16 pixels). SRPO's code handles latents as `[B, tokens, features]`
  (its branch batches repeat them so), so the adapter holds them as the 2x2 patches the transformer makes of them
  (FLUX's `pack_latents`, `[B, (H/16)(W/16), 64]`) and unpacks them for each call: the same numbers, the noise drawn
  as the stock pipeline draws it. They are normalised with the VAE config's `shift_factor` and `scaling_factor`
  (0.0609 and 1.5305), `x = (z - shift) * scale`;
- the transformer takes the timestep in [0, 1000] (`sigma * num_train_timesteps`), not FLUX's level in [0, 1];
- no guidance embedding: guidance is real classifier-free guidance with a negative prompt (`""`, the stock default),
  `v_neg + g (v - v_neg)` from one transformer call on the batch `[negative; prompt]`, as the stock pipeline batches
  it (two calls of half the batch differ in the last bits, which CFG 7 amplifies to 2e-5 in the tiny test model's
  images), no rescale. Defaults, chosen here
  as for Chroma and Qwen-Image: diffusers' default `guidance_scale=7.0` in the rollout and for samples, 1 (one
  conditional call) in the two training calls. The models' own cards recommend other values, which `SRPOConfig`'s
  `*_guidance_scale` set: 3.5 for SD3.5 Large, 4.5 for SD3.5 Medium, and 0 for SD3.5 Large Turbo (a step-distilled
  model sampled without CFG: any scale at most 1 is one conditional call, in the stock pipeline as here). The
  negative prompt's encoding is made once and kept by the adapter, not by the text cache;
- the time shift is the scheduler's: the static `shift` (3.0 for SD3 and SD3.5 Large, Medium and Turbo), or when a
  scheduler shifts dynamically, `exp(mu)` (or `mu` for a linear `time_shift_type`) of the stock pipeline's
  `calculate_shift` for the image's patch count, with the scheduler config's settings. The shift is the stock one,
  the grid is SRPO's (`direct_align.shifted_grid`: the shifted `linspace(1, 0, n + 1)`, which the stock pipeline
  samples on when given `sigmas=linspace(1, 1/n, n)`, as FLUX's pipelines always pass). By default (`sigmas=None`)
  SD3's pipeline instead spaces its `n` levels from 1 down to the scheduler's smallest training level, already
  shifted, and shifts them again: its last level before 0 is 0.009 at shift 3, not the shifted `1/n`;
- SD3.5 Medium's `dual_attention_layers` (a second, image-only self-attention `attn2` in its first 13 blocks) and
  SD3.5's `qk_norm` (RMS norm of queries and keys) are config switches of the same transformer: nothing to do here
  beyond giving `attn2` a LoRA too.

Default LoRA targets: diffusers' SD3 DreamBooth LoRA script targets the eight joint-attention projections
(`attn.to_q/k/v/out.0`, `attn.add_q/k/v_proj`, `attn.to_add_out`); as for the FLUX families, the feed-forwards of both
streams are targeted too, and SD3.5 Medium's `attn2` projections (modules a model lacks are not matched).
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch

from .base import JOINT_ATTENTION_LORA_TARGETS, AdapterBase
from .flux import pack_latents, unpack_latents

#: The stock pipeline's negative prompt when CFG is on and none is given.
NEGATIVE_PROMPT = ""


def sd3_time_shift(scheduler_config, image_seq_len: int) -> float:
    """The time shift `k` of `FlowMatchEulerDiscreteScheduler` (`k t / (1 + (k - 1) t)`) as `StableDiffusion3Pipeline`
    sets it for `image_seq_len` transformer patches: the static `shift`, or the dynamic one from the pipeline's
    `calculate_shift` (with its fallbacks for settings a config lacks): `exp(mu)` for an exponential `time_shift_type`,
    `mu` for a linear one."""
    if not scheduler_config.get("use_dynamic_shifting", False):
        return float(scheduler_config.get("shift", 1.0))
    from diffusers.pipelines.stable_diffusion_3.pipeline_stable_diffusion_3 import calculate_shift

    mu = calculate_shift(
        image_seq_len,
        scheduler_config.get("base_image_seq_len", 256),
        scheduler_config.get("max_image_seq_len", 4096),
        scheduler_config.get("base_shift", 0.5),
        scheduler_config.get("max_shift", 1.16),
    )
    if scheduler_config.get("time_shift_type", "exponential") == "linear":
        return float(mu)
    return math.exp(mu)


class SD3Adapter(AdapterBase):
    """Adapter for `StableDiffusion3Pipeline`."""

    family: ClassVar[str] = "sd3"
    hub_tag: ClassVar[str] = "sd3"
    trainable_component: ClassVar[str] = "transformer"
    default_lora_target_modules: ClassVar[list[str]] = [
        *JOINT_ATTENTION_LORA_TARGETS,
        "attn2.to_q",  # SD3.5 Medium's image-only second attention (dual_attention_layers)
        "attn2.to_k",
        "attn2.to_v",
        "attn2.to_out.0",
        "ff.net.0.proj",
        "ff.net.2",
        "ff_context.net.0.proj",  # absent from the last block (context_pre_only): not matched there
        "ff_context.net.2",
    ]
    text_components: ClassVar[tuple[str, ...]] = (
        "text_encoder",
        "text_encoder_2",
        "text_encoder_3",
        "tokenizer",
        "tokenizer_2",
        "tokenizer_3",
    )
    #: diffusers' default CFG 7.0 in the rollout and for samples; one conditional call in the two training calls.
    default_guidance: ClassVar[dict[str, float]] = {"rollout": 7.0, "train": 1.0, "sample": 7.0}

    def __init__(self, pipeline, max_sequence_length: int = 512):
        super().__init__(pipeline, max_sequence_length)
        config = pipeline.transformer.config  # read once: the transformer may later be wrapped (peft, DDP, FSDP)
        self.guidance_embeds = False  # SD3 is not guidance-distilled: real CFG with a negative prompt (see `velocity`)
        self.patch_size = int(config.patch_size)
        self.latent_channels = int(config.in_channels)
        self.num_train_timesteps = float(pipeline.scheduler.config.get("num_train_timesteps", 1000))
        self._negative: dict[str, dict[str, torch.Tensor]] = {}  # the negative prompt's encoding, per device

    @property
    def latent_granularity(self) -> int:
        return self.vae_scale_factor * self.patch_size

    def _latent_size(self, height: int, width: int) -> tuple[int, int]:
        return height // self.vae_scale_factor, width // self.vae_scale_factor

    def default_time_shift(self, height: int, width: int) -> float:
        lh, lw = self._latent_size(height, width)
        return sd3_time_shift(self.pipeline.scheduler.config, (lh // self.patch_size) * (lw // self.patch_size))

    # ------------------------------------------------------------------ text

    def _encode(self, prompts: list[str], device: torch.device) -> dict[str, torch.Tensor]:
        embeds, _, pooled, _ = self.pipeline.encode_prompt(
            prompt=prompts,
            prompt_2=None,
            prompt_3=None,
            device=device,
            do_classifier_free_guidance=False,
            max_sequence_length=self.max_sequence_length,
        )
        return {"prompt_embeds": embeds, "pooled_prompt_embeds": pooled}

    def _negative_text(self, batch: int, device: torch.device) -> dict[str, torch.Tensor]:
        key = str(device)
        if key not in self._negative:
            with torch.no_grad():
                encoded = self._encode([NEGATIVE_PROMPT], device)
            self._negative[key] = {f"negative_{k}": v for k, v in encoded.items()}
        return {k: v.expand(batch, *v.shape[1:]) for k, v in self._negative[key].items()}

    @torch.no_grad()
    def encode_prompts(self, prompts: list[str], device: torch.device) -> dict[str, torch.Tensor]:
        """The joint text embeddings (`[B, 77 + max_sequence_length, T5 width]`) and pooled CLIP vectors, plus the
        negative prompt's (the same for every row)."""
        return {**self._encode(prompts, device), **self._negative_text(len(prompts), device)}

    def cache_entry(self, row: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The prompt's own encoding: the negative prompt, the same for every prompt, is kept once by the adapter."""
        return {k: v for k, v in row.items() if not k.startswith("negative_")}

    @classmethod
    def pipeline_guidance_kwargs(cls, guidance_scale: float) -> dict:
        """The stock pipeline's `guidance_scale`: real CFG with its default negative prompt `""` above 1."""
        return {"guidance_scale": guidance_scale}

    # ------------------------------------------------------------- transformer

    def _call(self, transformer, latents, sigma, embeds, pooled, height, width) -> torch.Tensor:
        """The transformer's output for patch tokens `latents`, as patch tokens."""
        dtype = self.pipeline.transformer.dtype  # fp32 when fully fine-tuned on a bf16 pipeline (fp32 master weights)
        out = transformer(
            hidden_states=unpack_latents(latents, *self._latent_size(height, width)).to(dtype),
            timestep=sigma.to(latents.device) * self.num_train_timesteps,  # SD3 takes t in [0, 1000]
            encoder_hidden_states=embeds.to(latents.device, dtype),
            pooled_projections=pooled.to(latents.device, dtype),
            return_dict=False,
        )[0]
        return pack_latents(out)

    def velocity(self, transformer, latents, sigma, text, guidance_scale, height, width, target=None) -> torch.Tensor:
        if guidance_scale <= 1:
            return self._call(
                transformer, latents, sigma, text["prompt_embeds"], text["pooled_prompt_embeds"], height, width
            )
        negative = text if "negative_prompt_embeds" in text else self._negative_text(latents.shape[0], latents.device)
        embeds, pooled = (
            torch.cat([negative[f"negative_{key}"].to(text[key].device), text[key]])
            for key in ("prompt_embeds", "pooled_prompt_embeds")
        )
        # One call on the batch [negative; prompt], as the stock pipeline makes it: two calls differ in the last bits,
        # which the guidance scale amplifies. Its activations are those two calls' together.
        doubled = self._call(
            transformer, torch.cat([latents, latents]), torch.cat([sigma, sigma]), embeds, pooled, height, width
        )
        unconditional, conditional = doubled.chunk(2)
        return unconditional + guidance_scale * (conditional - unconditional)

    def sample_noise(self, batch_size, height, width, generator, device) -> torch.Tensor:
        lh, lw = self._latent_size(height, width)
        # Drawn on the generator's device in the VAE's layout, as the stock pipeline draws it, then packed.
        eps = torch.randn((batch_size, self.latent_channels, lh, lw), generator=generator, device=generator.device)
        return pack_latents(eps).to(device)

    # --------------------------------------------------------------------- VAE

    def decode(self, latents, height, width) -> torch.Tensor:
        vae = self.pipeline.vae
        z = unpack_latents(latents, *self._latent_size(height, width))
        z = z / vae.config.scaling_factor + vae.config.shift_factor
        return self.to_unit_images(vae.decode(z.to(vae.dtype), return_dict=False)[0])

    @torch.no_grad()
    def encode_images(self, images, height, width) -> torch.Tensor:
        vae = self.pipeline.vae
        # The posterior's mean: the same image always gives the same x0 (the noise is drawn separately).
        z = vae.encode((images * 2 - 1).to(vae.device, vae.dtype)).latent_dist.mode()
        return pack_latents((z.float() - vae.config.shift_factor) * vae.config.scaling_factor)
