"""FLUX.2 adapter: `diffusers.Flux2Pipeline` (FLUX.2 [dev]) and `Flux2KleinPipeline` (FLUX.2 [klein]).

What FLUX.2 changes against FLUX.1, all handled here:

- one text encoder (Mistral Small 3.1 for [dev], Qwen3 for [klein]) whose hidden states of three
  layers are stacked into the text embedding; no pooled vector; 4-D text ids `(t, h, w, l)`;
- a 32-channel VAE whose latents are 2x2-patchified *before* the transformer (128 channels) and
  normalised with the VAE's batch-norm running statistics; tokens are the patchified grid in
  row-major order, with 4-D ids `(0, row, column, 0)`;
- guidance: [dev] is guidance-distilled (a `guidance` input, like FLUX.1 [dev]). [klein] has no guidance
  embedding: the base model (`is_distilled=False` in the pipeline's config) takes classifier-free guidance as the
  stock `Flux2KleinPipeline` computes it, `v_neg + g (v - v_neg)` with the empty prompt as the negative, two
  transformer calls when `g > 1`; the step-distilled models take none (the stock pipeline ignores a guidance
  above 1 for them). Defaults as chosen here, after Qwen-Image's: [klein] base 4.0 (the stock default) in the
  rollout and the samples, 1.0 (one call) in the two training calls; distilled [klein] 1.0 everywhere, so that
  samples are labelled with the guidance they had;
- the time shift is resolution-dependent: `exp(mu)` with diffusers' `compute_empirical_mu` for the
  image's token count (at 50 steps), equal to the scheduler's exponential dynamic shift.
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch

from .base import JOINT_ATTENTION_LORA_TARGETS, AdapterBase

SHIFT_REFERENCE_STEPS = 50  # compute_empirical_mu depends on the step count; FLUX.2's default is 50


def patchify(latents: torch.Tensor) -> torch.Tensor:
    """`[B, C, H, W]` -> `[B, 4C, H/2, W/2]`: 2x2 patches into channels (FLUX.2's layout)."""
    b, c, h, w = latents.shape
    latents = latents.view(b, c, h // 2, 2, w // 2, 2).permute(0, 1, 3, 5, 2, 4)
    return latents.reshape(b, c * 4, h // 2, w // 2)


def unpatchify(latents: torch.Tensor) -> torch.Tensor:
    """Inverse of [`patchify`]."""
    b, c4, h, w = latents.shape
    latents = latents.reshape(b, c4 // 4, 2, 2, h, w).permute(0, 1, 4, 2, 5, 3)
    return latents.reshape(b, c4 // 4, h * 2, w * 2)


def flux2_empirical_mu(image_seq_len: int, num_steps: int) -> float:
    """diffusers' `compute_empirical_mu` for FLUX.2 (the log of the time shift)."""
    from diffusers.pipelines.flux2.pipeline_flux2 import compute_empirical_mu

    return float(compute_empirical_mu(image_seq_len=image_seq_len, num_steps=num_steps))


class Flux2Adapter(AdapterBase):
    """Adapter for `Flux2Pipeline` and `Flux2KleinPipeline`."""

    family: ClassVar[str] = "flux2"
    trainable_component: ClassVar[str] = "transformer"
    # The single-stream blocks' output projection is named like the double-stream blocks' `to_out`
    # list, so it cannot be a suffix target; their fused `to_qkv_mlp_proj` carries the LoRA there.
    default_lora_target_modules: ClassVar[list[str]] = [
        *JOINT_ATTENTION_LORA_TARGETS,
        "ff.linear_in",
        "ff.linear_out",
        "ff_context.linear_in",
        "ff_context.linear_out",
        "attn.to_qkv_mlp_proj",
        "proj_out",
    ]
    text_components: ClassVar[tuple[str, ...]] = ("text_encoder", "tokenizer")
    #: The negative prompt of [klein] base's classifier-free guidance (the stock pipeline's, fixed).
    negative_prompt: ClassVar[str] = ""

    def __init__(self, pipeline, max_sequence_length: int = 512):
        super().__init__(pipeline, max_sequence_length)
        # [klein] base (`is_distilled=False`): classifier-free guidance; [klein] distilled: none; [dev]: the guidance
        # embedding. The KV-cached [klein] pipeline registers no `is_distilled` and never guides: none either.
        self.classifier_free_guidance = (
            not self.guidance_embeds and getattr(pipeline.config, "is_distilled", None) is False
        )
        if self.classifier_free_guidance:
            self.default_guidance = {"rollout": 4.0, "train": 1.0, "sample": 4.0}
        elif not self.guidance_embeds:
            self.default_guidance = {"rollout": 1.0, "train": 1.0, "sample": 1.0}
        self._negative: dict[str, dict[str, torch.Tensor]] = {}  # the negative prompt's encoding, per device

    def _grid(self, height: int, width: int) -> tuple[int, int]:
        """Token grid: the patchified latent's height and width."""
        return height // self.latent_granularity, width // self.latent_granularity

    def default_time_shift(self, height: int, width: int) -> float:
        rows, cols = self._grid(height, width)
        return math.exp(flux2_empirical_mu(rows * cols, SHIFT_REFERENCE_STEPS))

    def _encode(self, prompts: list[str], device: torch.device) -> dict[str, torch.Tensor]:
        prompt_embeds, text_ids = self.pipeline.encode_prompt(
            prompt=prompts, device=device, max_sequence_length=self.max_sequence_length
        )
        return {"prompt_embeds": prompt_embeds, "text_ids": text_ids}

    @torch.no_grad()
    def encode_prompts(self, prompts: list[str], device: torch.device) -> dict[str, torch.Tensor]:
        """The prompts' embeddings and ids; for [klein] base also the negative prompt's, per row (encoded once)."""
        text = self._encode(prompts, device)
        if self.classifier_free_guidance:
            key = str(device)
            if key not in self._negative:
                negative = self._encode([self.negative_prompt], device)
                self._negative[key] = {f"negative_{k}": v for k, v in negative.items()}
            text.update({k: v.expand(len(prompts), *v.shape[1:]) for k, v in self._negative[key].items()})
        return text

    def _image_ids(self, rows: int, cols: int, batch: int, device: torch.device) -> torch.Tensor:
        key = (rows, cols, str(device))
        if key not in self._positions:
            zero = torch.zeros(1, dtype=torch.long)
            ids = torch.cartesian_prod(zero, torch.arange(rows), torch.arange(cols), zero)
            self._positions[key] = ids.to(device)
        return self._positions[key].unsqueeze(0).expand(batch, -1, -1)

    @staticmethod
    def _pack(latents: torch.Tensor) -> torch.Tensor:
        b, c, h, w = latents.shape
        return latents.reshape(b, c, h * w).permute(0, 2, 1)

    def _unpack(self, tokens: torch.Tensor, height: int, width: int) -> torch.Tensor:
        rows, cols = self._grid(height, width)
        b, _, c = tokens.shape
        return tokens.permute(0, 2, 1).reshape(b, c, rows, cols)

    def sample_noise(self, batch_size, height, width, generator, device) -> torch.Tensor:
        rows, cols = self._grid(height, width)
        shape = (batch_size, self.latent_channels * 4, rows, cols)
        eps = torch.randn(shape, generator=generator, device=generator.device)  # as Flux2Pipeline draws it
        return self._pack(eps).to(device)

    def velocity(self, transformer, latents, sigma, text, guidance_scale, height, width, target=None) -> torch.Tensor:
        conditional = self._call_transformer(transformer, latents, sigma, text, "", guidance_scale, height, width)
        if not (self.classifier_free_guidance and guidance_scale > 1):
            return conditional
        # Two calls, as the stock pipeline makes them (one batched call differs in the last bits).
        unconditional = self._call_transformer(
            transformer, latents, sigma, text, "negative_", guidance_scale, height, width
        )
        return unconditional + guidance_scale * (conditional - unconditional)

    def _call_transformer(self, transformer, latents, sigma, text, prefix, guidance_scale, height, width):
        """The transformer's output for the text `text[prefix + "prompt_embeds"]` (the prompt, or the negative)."""
        rows, cols = self._grid(height, width)
        batch = latents.shape[0]
        dtype = self.pipeline.transformer.dtype  # fp32 when fully fine-tuned on a bf16 pipeline (fp32 master weights)
        return transformer(
            hidden_states=latents.to(dtype),
            encoder_hidden_states=text[f"{prefix}prompt_embeds"].to(dtype),
            timestep=sigma.to(latents.device),  # FLUX.2 takes the level in [0, 1] (the pipeline's t / 1000)
            img_ids=self._image_ids(rows, cols, batch, latents.device),
            txt_ids=text[f"{prefix}text_ids"],
            guidance=self.guidance(batch, guidance_scale, latents.device),
            return_dict=False,
        )[0]

    def _batch_norm_stats(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        vae = self.pipeline.vae
        mean = vae.bn.running_mean.view(1, -1, 1, 1).to(like.device, torch.float32)
        std = torch.sqrt(vae.bn.running_var.view(1, -1, 1, 1) + vae.config.batch_norm_eps).to(
            like.device, torch.float32
        )
        return mean, std

    def decode(self, latents, height, width) -> torch.Tensor:
        vae = self.pipeline.vae
        z = self._unpack(latents.float(), height, width)
        mean, std = self._batch_norm_stats(z)
        z = unpatchify(z * std + mean)
        return self.to_unit_images(vae.decode(z.to(vae.dtype), return_dict=False)[0])

    @torch.no_grad()
    def encode_images(self, images, height, width) -> torch.Tensor:
        vae = self.pipeline.vae
        z = patchify(vae.encode((images * 2 - 1).to(vae.device, vae.dtype)).latent_dist.mode().float())
        mean, std = self._batch_norm_stats(z)
        return self._pack((z - mean) / std)
