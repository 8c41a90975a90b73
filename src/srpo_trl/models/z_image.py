"""Z-Image adapter: `diffusers.ZImagePipeline` (Tongyi-MAI/Z-Image-Turbo and Tongyi-MAI/Z-Image, Apache-2.0, and their
fine-tunes) and its Img2Img / Inpaint variants, which load the same weights and are trained as the text-to-image model.

Z-Image is a 6B single-stream DiT (`ZImageTransformer2DModel`, "S3-DiT"): the caption's tokens and the image's 2x2
patches are refined apart (a context- and a noise-refiner), then concatenated into one sequence for the main blocks.
What it does differently from the FLUX families, all handled here and checked against the stock pipeline:

- the transformer takes *lists*, one tensor per sample: latents `[C, 1, h, w]` (a frame axis) and caption features
  `[L_i, D]` of each prompt's own length (it pads each to a multiple of 32 and masks the batch itself). Our latents are
  FLUX's packed tokens `[B, (h/2)(w/2), 4C]` (the 2x2 patches the transformer makes, the layout SRPO's step handles),
  unpacked into the list per call; the noise is the same numbers as the pipeline's `[B, C, h, w]` draw;
- its timestep is `1 - sigma` (the pipeline passes `(1000 - t) / 1000`, computed the same way here), and its output is
  the *negative* velocity (`x0 - eps`): the pipeline negates it before the Euler step, and so does `velocity`;
- one text encoder, Qwen3 (`Qwen3Model`): the prompt in Qwen3's chat template, the second-to-last hidden state, only the
  real tokens of each prompt (the pipeline drops the padding). `encode_prompts` pads a batch to its longest prompt with a
  mask (none when all have one length), the text cache keeps each prompt unpadded, and `velocity` hands the transformer
  each prompt's real tokens, as the stock pipeline does;
- guidance is real classifier-free guidance in Z-Image's own convention: `v = v_c + g (v_c - v_u)` (not `v_u + g (v_c -
  v_u)`), on when `g > 0`, with the negative prompt `""` (the stock default) and the conditional and unconditional
  inputs in one batched transformer call, as the stock pipeline. `g = 0` is one conditional call. The stock options
  `cfg_normalization` and `cfg_truncation` stay at their defaults (off), which is what `velocity` computes;
- guidance defaults: Z-Image-Turbo is CFG-distilled and sampled at `guidance_scale=0` (its model card and diffusers'
  example), so a pipeline loaded from a `*Turbo*` checkpoint gets 0 everywhere; any other (Z-Image, the undistilled base
  that supports CFG and fine-tuning) gets the authors' documented `guidance_scale=4` in the rollout and the samples (the
  model card recommends 3-5; diffusers' `__call__` default is 5) and 0 (one conditional call) in the two training calls,
  the house choice for real-CFG families. `SRPOConfig.*_guidance_scale` set others;
- the time shift is the stock pipeline's: the scheduler's static `shift` (3 for Z-Image-Turbo) unless it shifts
  dynamically, then `exp(mu)` from diffusers' `calculate_shift` for the image's token count. The stock grid
  `linspace(1, 1/N, N)` shifted, then 0, is `direct_align.shifted_grid(N, shift)`;
- the VAE is FLUX.1's (`AutoencoderKL`, 16 channels, 8x): latents normalised with `scaling_factor` and `shift_factor`;
- LoRA targets every block's attention projections (`to_q`, `to_k`, `to_v`, `to_out.0`: diffusers' Z-Image DreamBooth
  LoRA script's default) and its SwiGLU feed-forward (`w1`, `w2`, `w3`), in the refiners and the main blocks alike; the
  adaLN modulation, the embedders and the final layer stay frozen.
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch

from .base import AdapterBase
from .flux import pack_latents, unpack_latents
from .qwen_image import QwenImageAdapter, padded_batch

#: The negative prompt of CFG: the stock pipeline's default (`""` for every prompt).
NEGATIVE_PROMPT = ""
#: Z-Image-Turbo (CFG-distilled): no guidance anywhere.
TURBO_GUIDANCE = {"rollout": 0.0, "train": 0.0, "sample": 0.0}
#: Z-Image (the base): the authors' CFG 4 in the rollout and the samples, one conditional call in training.
BASE_GUIDANCE = {"rollout": 4.0, "train": 0.0, "sample": 4.0}


def is_turbo(pipeline) -> bool:
    """Whether `pipeline` was loaded from a Z-Image-Turbo checkpoint (its hub id or folder names "turbo")."""
    return "turbo" in str(getattr(pipeline, "name_or_path", None) or "").lower()


class ZImageAdapter(AdapterBase):
    """Adapter for `ZImagePipeline`."""

    family: ClassVar[str] = "z-image"
    hub_tag: ClassVar[str] = "z-image"
    trainable_component: ClassVar[str] = "transformer"
    default_lora_target_modules: ClassVar[list[str]] = [
        "attention.to_q",
        "attention.to_k",
        "attention.to_v",
        "attention.to_out.0",
        "feed_forward.w1",
        "feed_forward.w2",
        "feed_forward.w3",
    ]
    text_components: ClassVar[tuple[str, ...]] = ("text_encoder", "tokenizer")
    #: The base model's (Z-Image); a Turbo checkpoint's instance has `TURBO_GUIDANCE` (see the module docstring).
    default_guidance: ClassVar[dict[str, float]] = BASE_GUIDANCE
    negative_prompt: ClassVar[str] = NEGATIVE_PROMPT

    def __init__(self, pipeline, max_sequence_length: int = 512):
        super().__init__(pipeline, max_sequence_length)
        self.guidance_embeds = False  # real CFG (see `velocity`)
        self.latent_channels = pipeline.transformer.config.in_channels
        if is_turbo(pipeline):
            self.default_guidance = dict(TURBO_GUIDANCE)
        self._negative: dict[str, dict[str, torch.Tensor]] = {}  # the negative prompt's encoding, per device

    def _latent_size(self, height: int, width: int) -> tuple[int, int]:
        return 2 * (height // self.latent_granularity), 2 * (width // self.latent_granularity)

    def default_time_shift(self, height: int, width: int) -> float:
        config = self.pipeline.scheduler.config
        if not config.get("use_dynamic_shifting", False):
            return float(config.get("shift", 1.0))
        from diffusers.pipelines.z_image.pipeline_z_image import calculate_shift

        lh, lw = self._latent_size(height, width)
        mu = calculate_shift(
            (lh // 2) * (lw // 2),
            config.get("base_image_seq_len", 256),
            config.get("max_image_seq_len", 4096),
            config.get("base_shift", 0.5),
            config.get("max_shift", 1.15),
        )
        return math.exp(mu)

    @classmethod
    def pipeline_guidance_kwargs(cls, guidance_scale: float) -> dict:
        """The stock pipeline's `guidance_scale`, in Z-Image's own convention (0: no CFG); its negative prompt defaults
        to `""`, the one `velocity` uses."""
        return {"guidance_scale": guidance_scale}

    # ------------------------------------------------------------------ text

    def _encode(self, prompts: list[str], device: torch.device) -> dict[str, torch.Tensor]:
        """`{"embeds": [B, L, D]}` padded to the longest prompt, plus `"mask"` when some prompt is padded."""
        # `encode_prompt` rewrites the list it is given in place (each prompt into its chat template): pass a copy.
        embeds, _ = self.pipeline.encode_prompt(
            prompt=list(prompts),
            device=device,
            do_classifier_free_guidance=False,
            max_sequence_length=self.max_sequence_length,
        )
        return padded_batch(embeds)

    # Named and cached as Qwen-Image's: `{prefix}_embeds(_mask)`, the negative prompt encoded once per device.
    _named = staticmethod(QwenImageAdapter._named)
    _negative_text = QwenImageAdapter._negative_conditioning

    @torch.no_grad()
    def encode_prompts(self, prompts: list[str], device: torch.device) -> dict[str, torch.Tensor]:
        """The prompts' Qwen3 features padded to the longest prompt (with their mask when some are padded), and the
        negative prompt's per row (encoded once per device)."""
        return {
            **self._named("prompt", self._encode(prompts, device)),
            **self._negative_text(len(prompts), device),
        }

    def cache_entry(self, row: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """One prompt's real tokens (the padding is on the right); the negative prompt, the same for every prompt, is
        kept once by the adapter."""
        mask = row.get("prompt_embeds_mask")
        embeds = row["prompt_embeds"]
        return {"prompt_embeds": embeds if mask is None else embeds[: int(mask.sum())]}

    def stack_entries(self, rows: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        """Cached prompts as one batch, padded to the longest with a mask if any was padded (`velocity` adds the
        negative prompt's encoding when it guides)."""
        return self._named("prompt", padded_batch([row["prompt_embeds"] for row in rows]))

    @staticmethod
    def _unpadded(text: dict[str, torch.Tensor], key: str) -> list[torch.Tensor]:
        """Each prompt's real tokens, as the transformer takes them (a list of `[L_i, D]`)."""
        embeds, mask = text[key], text.get(f"{key}_mask")
        if mask is None:
            return list(embeds.unbind(0))
        return [e[: int(n)] for e, n in zip(embeds, mask.sum(1).tolist())]

    # ------------------------------------------------------------- transformer

    def velocity(self, transformer, latents, sigma, text, guidance_scale, height, width, target=None) -> torch.Tensor:
        dtype = self.pipeline.transformer.dtype  # fp32 when fully fine-tuned on a bf16 pipeline (fp32 master weights)
        batch = latents.shape[0]
        lh, lw = self._latent_size(height, width)
        captions = [c.to(dtype) for c in self._unpadded(text, "prompt_embeds")]
        timestep = sigma.to(latents.device, torch.float32) * 1000  # the scheduler's t
        timestep = (1000 - timestep) / 1000  # the transformer's time, 1 - sigma, as the stock pipeline computes it
        hidden = unpack_latents(latents, lh, lw).to(dtype)
        guided = guidance_scale > 0
        if guided:
            negative = text if "negative_prompt_embeds" in text else self._negative_text(batch, latents.device)
            captions += [c.to(dtype) for c in self._unpadded(negative, "negative_prompt_embeds")]
            hidden, timestep = hidden.repeat(2, 1, 1, 1), timestep.repeat(2)
        out = transformer(list(hidden.unsqueeze(2).unbind(0)), timestep, captions, return_dict=False)[0]
        out = torch.stack([o.float() for o in out]).squeeze(2)
        if guided:
            positive, unconditional = out[:batch], out[batch:]
            out = positive + guidance_scale * (positive - unconditional)
        return pack_latents(-out)  # the transformer predicts x0 - eps

    def sample_noise(self, batch_size, height, width, generator, device) -> torch.Tensor:
        lh, lw = self._latent_size(height, width)
        eps = torch.randn((batch_size, self.latent_channels, lh, lw), generator=generator, device=generator.device)
        return pack_latents(eps).to(device)

    # --------------------------------------------------------------------- VAE

    def decode(self, latents, height, width) -> torch.Tensor:
        vae = self.pipeline.vae
        z = unpack_latents(latents.float(), *self._latent_size(height, width))
        z = z / vae.config.scaling_factor + vae.config.shift_factor
        return self.to_unit_images(vae.decode(z.to(vae.dtype), return_dict=False)[0])

    @torch.no_grad()
    def encode_images(self, images, height, width) -> torch.Tensor:
        vae = self.pipeline.vae
        # The posterior's mean: the same image always gives the same x0 (the noise is drawn separately).
        z = vae.encode((images * 2 - 1).to(vae.device, vae.dtype)).latent_dist.mode()
        return pack_latents((z.float() - vae.config.shift_factor) * vae.config.scaling_factor)
