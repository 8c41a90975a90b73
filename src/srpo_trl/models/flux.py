"""FLUX.1 adapter: `diffusers.FluxPipeline` (dev, schnell, Krea and fine-tunes)."""

from __future__ import annotations

from typing import ClassVar

import torch


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


class FluxAdapter:
    """Adapter for `FluxPipeline`: CLIP + T5 prompt encoding, 16-channel VAE latents packed in 2x2
    patches, guidance as a transformer input when the model is guidance-distilled (dev, Krea), and
    the scheduler config's static shift (3 for dev, 1 for schnell).
    """

    family: ClassVar[str] = "flux"
    trainable_component: ClassVar[str] = "transformer"
    default_lora_target_modules: ClassVar[list[str]] = [
        "attn.to_q",
        "attn.to_k",
        "attn.to_v",
        "attn.to_out.0",
        "attn.add_q_proj",
        "attn.add_k_proj",
        "attn.add_v_proj",
        "attn.to_add_out",
        "ff.net.0.proj",
        "ff.net.2",
        "ff_context.net.0.proj",
        "ff_context.net.2",
        "proj_mlp",
        "proj_out",
    ]

    #: Whether each prompt needs a reference image (image editing families such as Kontext).
    requires_reference_image: ClassVar[bool] = False
    #: Pipeline components that make the text conditioning (cached, then moved off the accelerator).
    text_components: ClassVar[tuple[str, ...]] = ("text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2")

    def __init__(self, pipeline, max_sequence_length: int = 512):
        self.pipeline = pipeline
        self.max_sequence_length = max_sequence_length
        self.vae_scale_factor = 2 ** (len(pipeline.vae.config.block_out_channels) - 1)
        self.latent_channels = pipeline.vae.config.latent_channels
        # Read once: the transformer may later be wrapped (DDP, FSDP, peft) and hide its config.
        self.guidance_embeds = bool(pipeline.transformer.config.guidance_embeds)
        self._positions: dict[tuple, torch.Tensor] = {}  # built once per size, not once per rollout step

    @property
    def latent_granularity(self) -> int:
        return self.vae_scale_factor * 2

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

    def velocity(self, transformer, latents, sigma, text, guidance_scale, height, width) -> torch.Tensor:
        lh, lw = self._latent_size(height, width)
        batch = latents.shape[0]
        guidance = None
        if self.guidance_embeds:
            guidance = torch.full((batch,), guidance_scale, device=latents.device, dtype=torch.float32)
        dtype = self.pipeline.transformer.dtype
        return transformer(
            hidden_states=latents.to(dtype),
            timestep=sigma.to(latents.device),  # FLUX takes the level in [0, 1] (the pipeline's t / 1000)
            guidance=guidance,
            pooled_projections=text["pooled_prompt_embeds"],
            encoder_hidden_states=text["prompt_embeds"],
            txt_ids=text["text_ids"][0],
            img_ids=self._image_ids(lh, lw, latents.device),
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
        images = vae.decode(z.to(vae.dtype), return_dict=False)[0]
        return (images.float() / 2 + 0.5).clamp(0, 1)

    def add_reference(self, conditioning, reference_images, height, width):
        """Conditioning with the reference images added; text-to-image families have none."""
        return conditioning

    @torch.no_grad()
    def encode_images(self, images, height, width) -> torch.Tensor:
        vae = self.pipeline.vae
        # The posterior's mean: the same image always gives the same x0 (the noise is drawn separately).
        z = vae.encode((images * 2 - 1).to(vae.device, vae.dtype)).latent_dist.mode()
        z = (z.float() - vae.config.shift_factor) * vae.config.scaling_factor
        return pack_latents(z)

    def save_lora_weights(self, output_dir, lora_state_dict) -> None:
        type(self.pipeline).save_lora_weights(output_dir, transformer_lora_layers=lora_state_dict)
