"""FLUX.1 adapter: `diffusers.FluxPipeline` (dev, schnell, Krea and fine-tunes)."""

from __future__ import annotations

from typing import ClassVar

import torch

from .base import JOINT_ATTENTION_LORA_TARGETS, AdapterBase


def pack_latents(latents: torch.Tensor) -> torch.Tensor:
    """`[B, C, H, W]` VAE latents -> `[B, (H/2)(W/2), 4C]` tokens of 2x2 patches (FLUX's layout)."""
    b, c, h, w = latents.shape
    latents = latents.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5)
    return latents.reshape(b, (h // 2) * (w // 2), c * 4)


def unpack_latents(tokens: torch.Tensor, latent_height: int, latent_width: int) -> torch.Tensor:
    """Inverse of [`pack_latents`]."""
    b, _, d = tokens.shape
    c = d // 4
    tokens = tokens.view(b, latent_height // 2, latent_width // 2, c, 2, 2).permute(0, 3, 1, 4, 2, 5)
    return tokens.reshape(b, c, latent_height, latent_width)


def latent_positions(latent_height: int, latent_width: int, device: torch.device) -> torch.Tensor:
    """FLUX's positional ids of the packed image tokens: `[tokens, 3]` as (0, row, column)."""
    rows = torch.arange(latent_height // 2, device=device)
    cols = torch.arange(latent_width // 2, device=device)
    ids = torch.zeros(latent_height // 2, latent_width // 2, 3, device=device)
    ids[..., 1] = rows[:, None]
    ids[..., 2] = cols[None, :]
    return ids.reshape(-1, 3)


class FluxAdapter(AdapterBase):
    """Adapter for `FluxPipeline`: CLIP + T5 prompt encoding, 16-channel VAE latents packed in 2x2
    patches, guidance as a transformer input when the model is guidance-distilled (dev, Krea), and
    the scheduler config's static shift (3 for dev, 1 for schnell).
    """

    family: ClassVar[str] = "flux"
    trainable_component: ClassVar[str] = "transformer"
    default_lora_target_modules: ClassVar[list[str]] = [
        *JOINT_ATTENTION_LORA_TARGETS,
        "ff.net.0.proj",
        "ff.net.2",
        "ff_context.net.0.proj",
        "ff_context.net.2",
        "proj_mlp",
        "proj_out",
    ]

    #: Pipeline components that make the text conditioning (cached, then moved off the accelerator).
    text_components: ClassVar[tuple[str, ...]] = ("text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2")

    def default_time_shift(self, height: int, width: int) -> float:
        # The scheduler's static `shift` (the recipe's k = 3 on FLUX.1-dev); its dynamic,
        # resolution-dependent shift is an inference setting.
        return float(self.pipeline.scheduler.config.get("shift", 1.0))

    def _latent_size(self, height: int, width: int) -> tuple[int, int]:
        return height // self.vae_scale_factor, width // self.vae_scale_factor

    @torch.no_grad()
    def encode_prompts(self, prompts: list[str], device: torch.device) -> dict[str, torch.Tensor]:
        prompt_embeds, pooled, text_ids = self.pipeline.encode_prompt(
            prompt=prompts, prompt_2=None, device=device, max_sequence_length=self.max_sequence_length
        )
        # Every tensor batch-first, so callers can slice and repeat the dict uniformly; the ids are per-batch.
        text_ids = text_ids.unsqueeze(0).expand(len(prompts), -1, -1)
        return {"prompt_embeds": prompt_embeds, "pooled_prompt_embeds": pooled, "text_ids": text_ids}

    def sample_noise(self, batch_size, height, width, generator, device) -> torch.Tensor:
        lh, lw = self._latent_size(height, width)
        # Drawn on the generator's device in the unpacked shape, as FluxPipeline does, then moved.
        eps = torch.randn((batch_size, self.latent_channels, lh, lw), generator=generator, device=generator.device)
        return pack_latents(eps).to(device)

    def velocity(self, transformer, latents, sigma, text, guidance_scale, height, width, target=None) -> torch.Tensor:
        lh, lw = self._latent_size(height, width)
        image_ids = self._image_ids(lh, lw, latents.device)
        return self._call_transformer(transformer, latents, image_ids, sigma, text, guidance_scale)

    def _call_transformer(self, transformer, hidden_states, image_ids, sigma, text, guidance_scale) -> torch.Tensor:
        """The FLUX.1 transformer's output for image tokens `hidden_states` with positional ids `image_ids`."""
        dtype = self.pipeline.transformer.dtype  # fp32 when fully fine-tuned on a bf16 pipeline (fp32 master weights)
        return transformer(
            hidden_states=hidden_states.to(dtype),
            timestep=sigma.to(hidden_states.device),  # FLUX takes the level in [0, 1] (the pipeline's t / 1000)
            guidance=self.guidance(hidden_states.shape[0], guidance_scale, hidden_states.device),
            pooled_projections=text["pooled_prompt_embeds"].to(dtype),
            encoder_hidden_states=text["prompt_embeds"].to(dtype),
            txt_ids=text["text_ids"][0],
            img_ids=image_ids,
            return_dict=False,
        )[0]

    def _image_ids(self, latent_height: int, latent_width: int, device: torch.device) -> torch.Tensor:
        key = (latent_height, latent_width, str(device))
        if key not in self._positions:
            self._positions[key] = latent_positions(latent_height, latent_width, device)
        return self._positions[key]

    def decode(self, latents, height, width) -> torch.Tensor:
        vae = self.pipeline.vae
        lh, lw = self._latent_size(height, width)
        z = unpack_latents(latents, lh, lw)
        z = z / vae.config.scaling_factor + vae.config.shift_factor
        return self.to_unit_images(vae.decode(z.to(vae.dtype), return_dict=False)[0])

    @torch.no_grad()
    def encode_images(self, images, height, width) -> torch.Tensor:
        vae = self.pipeline.vae
        # The posterior's mean: the same image always gives the same x0 (the noise is drawn separately).
        z = vae.encode((images * 2 - 1).to(vae.device, vae.dtype)).latent_dist.mode()
        z = (z.float() - vae.config.shift_factor) * vae.config.scaling_factor
        return pack_latents(z)
