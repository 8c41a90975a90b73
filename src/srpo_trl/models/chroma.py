"""Chroma adapter: `diffusers.ChromaPipeline` (Chroma1-HD and fine-tunes, Apache-2.0) and its Img2Img / Inpaint variants.

Chroma is a FLUX.1-schnell-derived transformer (`ChromaTransformer2DModel`) with FLUX.1's VAE and latent packing
(inherited from [`FluxAdapter`]). What it changes, all handled here:

- one text encoder, T5, run with its attention mask; the transformer masks every text token after the first padding
  token (the stock pipeline's mask, extended with ones over the image tokens); no pooled vector;
- no guidance embedding: the guidance-distilled modulation is computed inside the transformer (its
  "approximator"), and guidance is real classifier-free guidance with a negative prompt (`""`, the stock default),
  `v_neg + g (v - v_neg)`, two transformer calls when `g > 1`. Defaults, chosen here as for Qwen-Image: the stock
  pipeline's 5.0 in the rollout and for samples, 1 (one call) in the two training calls;
- the time shift is the stock pipeline's: `exp(mu)` from diffusers' `calculate_shift` for the image's token count when
  the scheduler shifts dynamically, else its static `shift`.
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch

from .flux import FluxAdapter

NEGATIVE_PROMPT = ""


class ChromaAdapter(FluxAdapter):
    """Adapter for `ChromaPipeline`."""

    family: ClassVar[str] = "chroma"
    hub_tag: ClassVar[str] = "chroma"
    text_components: ClassVar[tuple[str, ...]] = ("text_encoder", "tokenizer")
    default_guidance: ClassVar[dict[str, float]] = {"rollout": 5.0, "train": 1.0, "sample": 5.0}

    def __init__(self, pipeline, max_sequence_length: int = 512):
        super().__init__(pipeline, max_sequence_length)  # no guidance embedding: real CFG (see `velocity`)
        self._negative: dict[str, dict[str, torch.Tensor]] = {}

    def default_time_shift(self, height: int, width: int) -> float:
        config = self.pipeline.scheduler.config
        if not config.get("use_dynamic_shifting", False):
            return float(config.get("shift", 1.0))
        from diffusers.pipelines.flux.pipeline_flux import calculate_shift

        lh, lw = self._latent_size(height, width)
        mu = calculate_shift(
            (lh // 2) * (lw // 2),
            config.get("base_image_seq_len", 256),
            config.get("max_image_seq_len", 4096),
            config.get("base_shift", 0.5),
            config.get("max_shift", 1.15),
        )
        return math.exp(mu)

    def _encode(self, prompts: list[str], device: torch.device) -> dict[str, torch.Tensor]:
        embeds, _, mask, *_ = self.pipeline.encode_prompt(
            prompt=prompts,
            do_classifier_free_guidance=False,
            device=device,
            max_sequence_length=self.max_sequence_length,
        )
        return {"prompt_embeds": embeds, "prompt_attention_mask": mask}

    def _negative_text(self, batch: int, device: torch.device) -> dict[str, torch.Tensor]:
        key = str(device)
        if key not in self._negative:
            self._negative[key] = {f"negative_{k}": v for k, v in self._encode([NEGATIVE_PROMPT], device).items()}
        return {k: v.expand(batch, *v.shape[1:]) for k, v in self._negative[key].items()}

    @torch.no_grad()
    def encode_prompts(self, prompts: list[str], device: torch.device) -> dict[str, torch.Tensor]:
        """T5 embeddings and the transformer's text mask; the negative prompt's encoding is added per batch."""
        return {**self._encode(prompts, device), **self._negative_text(len(prompts), device)}

    def cache_entry(self, row: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The prompt's own encoding: the negative prompt, the same for every prompt, is kept once by the adapter."""
        return {k: v for k, v in row.items() if not k.startswith("negative_")}

    def _text_ids(self, length: int, device: torch.device) -> torch.Tensor:
        """The text tokens' position ids (all zero, as the stock pipeline's), built once per length."""
        key = ("text", length, str(device))
        if key not in self._positions:
            self._positions[key] = torch.zeros(length, 3, device=device)
        return self._positions[key]

    def _call(self, transformer, latents, image_ids, sigma, embeds, mask) -> torch.Tensor:
        dtype = self.pipeline.transformer.dtype  # fp32 when fully fine-tuned on a bf16 pipeline (fp32 master weights)
        batch, tokens = latents.shape[:2]
        image_mask = torch.ones(batch, tokens, device=latents.device, dtype=torch.bool)
        attention_mask = torch.cat(
            [mask.to(latents.device, latents.dtype), image_mask], dim=1
        )  # as the stock pipeline
        return transformer(
            hidden_states=latents.to(dtype),
            timestep=sigma.to(latents.device),  # the level in [0, 1] (the pipeline's t / 1000)
            encoder_hidden_states=embeds.to(dtype),
            txt_ids=self._text_ids(embeds.shape[1], latents.device),
            img_ids=image_ids,
            attention_mask=attention_mask,
            return_dict=False,
        )[0]

    def velocity(self, transformer, latents, sigma, text, guidance_scale, height, width, target=None) -> torch.Tensor:
        lh, lw = self._latent_size(height, width)
        image_ids = self._image_ids(lh, lw, latents.device)
        conditional = self._call(
            transformer, latents, image_ids, sigma, text["prompt_embeds"], text["prompt_attention_mask"]
        )
        if guidance_scale <= 1:
            return conditional
        negative = text if "negative_prompt_embeds" in text else self._negative_text(latents.shape[0], latents.device)
        unconditional = self._call(
            transformer,
            latents,
            image_ids,
            sigma,
            negative["negative_prompt_embeds"],
            negative["negative_prompt_attention_mask"],
        )
        return unconditional + guidance_scale * (conditional - unconditional)
