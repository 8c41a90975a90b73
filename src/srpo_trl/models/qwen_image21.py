"""Qwen-Image 2.1 adapter: `diffusers.QwenImage21Pipeline` (Qwen/Qwen-Image-2.1 and Qwen/Qwen-Image-2.1-Turbo),
text-to-image.

What Qwen-Image 2.1 changes against Qwen-Image, all handled here:

- the text encoder is Qwen3-VL. The stock pipeline formats each prompt with its own raw template (a fixed system
  prompt it then drops, the prompt as the user turn, the assistant turn opened), reads the last decoder layer's output
  *before* the final norm (a forward hook), and pads a batch on the right with a mask. There is no
  `max_sequence_length`: prompts are never truncated (`max_sequence_length` is kept for the adapter contract only);
- one single-stream, block-causal transformer (`QwenImage21Transformer2DModel`): the text tokens and then the target
  image's tokens are one sequence; text is causal, the image block is bidirectional and sees all the text. Its 3-axis
  RoPE counts every text position, padding included, before the image block: a prompt padded to a longer batch-mate's
  length moves the image's positions and changes the image (about 2e-3 on the tiny test model). So each prompt is
  encoded on its own, the text cache keeps it unpadded, and a batch of prompts of different lengths is run as one
  transformer call per length (`text_lengths`), never padded: every prompt gets what the stock pipeline gives it
  when called with that prompt alone, whatever it is batched with. The transformer returns the whole joint sequence;
  the velocity is its last `tokens` rows. `causal_condition` (modulating the text from t = 0) lets the stock pipeline
  cache the text's keys and values after the first step (`use_kv_cache`); training recomputes them (the same values);
- latents: the VAE (`AutoencoderKLQwenImage21`, RGBA in and out, 16x downsampling, 64 channels) is read unpatched, one
  token per latent pixel, in row-major order, normalised with the VAE config's per-channel `latents_mean` and
  `latents_std` (as the stock pipeline: `z * std + mean` before decoding). The transformer groups 2x2 latent tokens per
  vision slot, so sizes are multiples of 32 px. Decoded images are RGBA: the adapter's images are the RGB channels
  (what PIL's `convert("RGB")` of the stock RGBA images keeps); encoded images get an opaque alpha channel, as the
  stock pipeline gives condition images;
- the timestep is the level in [0, 1] (the pipeline's `t / 1000`);
- guidance: no guidance embedding; true classifier-free guidance with a negative prompt (`" "`: the stock encoder turns
  an empty prompt into `" "`), `v_neg + g (v - v_neg)` with no rescale (unlike Qwen-Image). The stock default, which
  Qwen recommends, is no guidance (`true_cfg_scale=1`), so every default here is 1: one conditional call in the
  rollout, in the two training calls and for samples. A `rollout_guidance_scale` above 1 turns CFG on;
- the sigma grid is the authors': the stock pipeline samples on the checkpoint's `sample_sigmas` (the Turbo's 8 levels)
  when set, else on `num_inference_steps` evenly spaced levels, in both cases passed through the scheduler's
  resolution-dependent exponential shift (`exp(mu)`, `mu` from `calculate_shift` over the image's token count) and
  its terminal stretch (`shift_terminal`). [`rollout_sigmas`] gives that grid (the rollout must use it);
  [`default_time_shift`] is the scheduler's shift at the training resolution (`exp(mu)`), which the Direct-Align
  window's grid takes;
- LoRA: the blocks' attention projections and SwiGLU feed-forward (`img_mlp.proj`, `img_mlp.gate_layer`,
  `img_mlp.out`), the projections diffusers' tensor-parallel plan names; the shared `modulation`, `txt_in`, `img_in`,
  `norm_out` and `proj_out` stay frozen.
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch

from .base import AdapterBase

#: The negative prompt of true CFG (the stock encoder reads `""` as `" "`).
NEGATIVE_PROMPT = " "
#: Latent tokens per vision slot of the transformer's joint mask (2 x 2).
TOKENS_PER_SLOT = 4


def pack_latents(latents: torch.Tensor) -> torch.Tensor:
    """`[B, C, h, w]` latents as the transformer's tokens `[B, h * w, C]` (row-major, no patching)."""
    return latents.flatten(2).transpose(1, 2)


def unpack_latents(tokens: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
    """The transformer's tokens `[B, h * w, C]` as one-frame VAE latents `[B, C, 1, h, w]`."""
    return tokens.transpose(1, 2).reshape(tokens.shape[0], tokens.shape[2], 1, rows, cols)


class QwenImage21Adapter(AdapterBase):
    """Adapter for `QwenImage21Pipeline` (text-to-image)."""

    family: ClassVar[str] = "qwen-image-2.1"
    hub_tag: ClassVar[str] = "qwen-image"
    trainable_component: ClassVar[str] = "transformer"
    default_lora_target_modules: ClassVar[list[str]] = [
        "attn.to_q",
        "attn.to_k",
        "attn.to_v",
        "attn.to_out.0",
        "img_mlp.proj",
        "img_mlp.gate_layer",
        "img_mlp.out",
    ]
    text_components: ClassVar[tuple[str, ...]] = ("text_encoder", "processor")
    #: The stock default (and Qwen's recommendation): no guidance anywhere.
    default_guidance: ClassVar[dict[str, float]] = {"rollout": 1.0, "train": 1.0, "sample": 1.0}
    negative_prompt: ClassVar[str] = NEGATIVE_PROMPT

    def __init__(self, pipeline, max_sequence_length: int = 512):
        self.pipeline = pipeline
        self.max_sequence_length = max_sequence_length  # unused: the stock pipeline never truncates a prompt
        self.vae_scale_factor = 2 ** len(pipeline.vae.config.temperal_downsample)  # 16, as the pipeline's
        self.latent_channels = pipeline.vae.config.z_dim
        self.rgba = pipeline.vae.config.in_channels == 4
        self.guidance_embeds = False
        self._positions: dict[tuple, torch.Tensor] = {}  # joint image masks, built once per (text length, size)
        self._negative: dict[str, torch.Tensor] = {}  # the negative prompt's embedding `[1, L, D]`, per device
        self._lengths_tensor: torch.Tensor | None = None  # see `_text_lengths`
        self._lengths: list[int] = []

    @property
    def latent_granularity(self) -> int:
        return self.vae_scale_factor * 2

    def _grid(self, height: int, width: int) -> tuple[int, int]:
        return height // self.vae_scale_factor, width // self.vae_scale_factor

    # ------------------------------------------------------------- sigma grid

    def _mu(self, height: int, width: int) -> float:
        from diffusers.pipelines.qwenimage21.pipeline_qwenimage21 import calculate_shift

        config = self.pipeline.scheduler.config
        rows, cols = self._grid(height, width)
        return float(
            calculate_shift(
                rows * cols,  # the stock pipeline's `latents.shape[1]`: one token per latent pixel
                config.get("base_image_seq_len", 256),
                config.get("max_image_seq_len", 4096),
                config.get("base_shift", 0.5),
                config.get("max_shift", 1.15),
            )
        )

    def default_time_shift(self, height: int, width: int) -> float:
        """The scheduler's shift `k` at this resolution (`k t / (1 + (k - 1) t)`): `exp(mu)` for the released
        exponential dynamic shift, `mu` for a linear one, the static `shift` otherwise (no terminal stretch)."""
        config = self.pipeline.scheduler.config
        if not config.get("use_dynamic_shifting", False):
            return float(config.get("shift", 1.0))
        mu = self._mu(height, width)
        return math.exp(mu) if config.get("time_shift_type", "exponential") == "exponential" else mu

    def rollout_sigmas(self, num_steps: int, height: int, width: int) -> torch.Tensor:
        """The stock pipeline's grid at this resolution, terminal 0 included (float32): the checkpoint's
        `sample_sigmas` when set (then `num_steps` is not used, as the stock pipeline ignores `num_inference_steps`),
        else `num_steps` evenly spaced levels from 1 to `1 / num_steps`; through the scheduler's shift and stretch."""
        import numpy as np
        from diffusers import FlowMatchEulerDiscreteScheduler

        sigmas = self.pipeline.config.get("sample_sigmas")
        if sigmas is None:
            sigmas = np.linspace(1.0, 1 / num_steps, num_steps)
        scheduler = FlowMatchEulerDiscreteScheduler.from_config(self.pipeline.scheduler.config)
        scheduler.set_timesteps(sigmas=sigmas, mu=self._mu(height, width))
        return scheduler.sigmas.float().cpu()

    @classmethod
    def pipeline_guidance_kwargs(cls, guidance_scale: float) -> dict:
        """The stock pipeline's true CFG: `true_cfg_scale` with the negative prompt above 1."""
        if guidance_scale > 1:
            return {"true_cfg_scale": guidance_scale, "negative_prompt": cls.negative_prompt}
        return {"true_cfg_scale": 1.0}

    # ------------------------------------------------------------------ text

    def _encode_one(self, prompt: str, device: torch.device) -> torch.Tensor:
        """One prompt's embedding `[L, D]`, encoded alone as the stock pipeline encodes a one-prompt call."""
        embeds, _, image_pad_mask = self.pipeline.encode_prompt(prompt=[prompt], device=device)
        if image_pad_mask.any():
            raise ValueError("QwenImage21Adapter: a text-to-image prompt produced image slots")
        return embeds[0]

    def _negative_embeds(self, device: torch.device) -> torch.Tensor:
        key = str(device)
        if key not in self._negative:
            self._negative[key] = self._encode_one(self.negative_prompt, device)[None]
        return self._negative[key]

    @torch.no_grad()
    def encode_prompts(self, prompts: list[str], device: torch.device, reference_images=None) -> dict:
        """Each prompt encoded on its own, as one batch zero-padded to the longest with each row's length (the padding
        is never read: see the module docstring). The negative prompt is encoded once here, while the text encoder is
        in place, and kept by the adapter."""
        self._negative_embeds(device)
        return self.stack_entries([{"prompt_embeds": self._encode_one(p, device)} for p in prompts])

    def cache_entry(self, row: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """A prompt's own embedding, without the batch's padding."""
        return {"prompt_embeds": row["prompt_embeds"][: int(row["text_lengths"])]}

    def stack_entries(self, rows: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        """Embeddings of several lengths as one batch: zero-padded to the longest, with each row's length."""
        lengths = [row["prompt_embeds"].shape[0] for row in rows]
        first = rows[0]["prompt_embeds"]
        embeds = first.new_zeros(len(rows), max(lengths), first.shape[-1])
        for i, row in enumerate(rows):
            embeds[i, : lengths[i]] = row["prompt_embeds"]
        return {"prompt_embeds": embeds, "text_lengths": torch.tensor(lengths, device=first.device)}

    # ------------------------------------------------------------- transformer

    def _image_mask(self, batch: int, text_length: int, rows: int, cols: int, device) -> torch.Tensor:
        """The joint sequence's vision-slot mask `[batch, text + slots]`: the text, then one slot per 2x2 latents."""
        key = (text_length, rows, cols, str(device))
        if key not in self._positions:
            mask = torch.zeros(text_length + rows * cols // TOKENS_PER_SLOT, dtype=torch.bool, device=device)
            mask[text_length:] = True
            self._positions[key] = mask
        return self._positions[key].expand(batch, -1)

    def _call(self, transformer, latents, sigma, embeds, height, width) -> torch.Tensor:
        """One transformer call for rows sharing one text length (no padding, so no mask: the stock one-prompt call)."""
        rows, cols = self._grid(height, width)
        dtype = self.pipeline.transformer.dtype  # fp32 when fully fine-tuned on a bf16 pipeline (fp32 master weights)
        batch = latents.shape[0]
        out = transformer(
            hidden_states=latents.to(dtype),
            encoder_hidden_states=embeds.to(dtype),
            timestep=sigma.to(latents.device),  # the level in [0, 1] (the pipeline's t / 1000)
            img_shapes=[[(1, rows, cols)]] * batch,
            img_mask=self._image_mask(batch, embeds.shape[1], rows, cols, latents.device),
            return_dict=False,
        )[0]
        return out[:, -latents.shape[1] :]  # the joint sequence's image rows

    def _text_lengths(self, lengths: torch.Tensor) -> list[int]:
        """The batch's text lengths on the host, read once per conditioning tensor (not at every rollout step)."""
        if self._lengths_tensor is not lengths:
            self._lengths_tensor, self._lengths = lengths, lengths.tolist()
        return self._lengths

    def _conditional(self, transformer, latents, sigma, text, height, width) -> torch.Tensor:
        """The conditional velocity, one transformer call per text length in the batch."""
        lengths = self._text_lengths(text["text_lengths"])
        embeds = text["prompt_embeds"]
        if len(set(lengths)) == 1:
            return self._call(transformer, latents, sigma, embeds[:, : lengths[0]], height, width)
        out = None
        for length in sorted(set(lengths)):
            index = torch.tensor([i for i, n in enumerate(lengths) if n == length], device=latents.device)
            part = self._call(transformer, latents[index], sigma[index], embeds[index, :length], height, width)
            if out is None:
                out = part.new_empty(latents.shape[0], *part.shape[1:])
            out[index] = part
        return out

    def velocity(self, transformer, latents, sigma, text, guidance_scale, height, width, target=None) -> torch.Tensor:
        conditional = self._conditional(transformer, latents, sigma, text, height, width)
        if guidance_scale <= 1:
            return conditional
        negative = self._negative_embeds(latents.device)
        unconditional = self._call(
            transformer, latents, sigma, negative.expand(latents.shape[0], *negative.shape[1:]), height, width
        )
        return unconditional + guidance_scale * (conditional - unconditional)

    def sample_noise(self, batch_size, height, width, generator, device) -> torch.Tensor:
        rows, cols = self._grid(height, width)
        # The stock pipeline draws `[B, 1, C, h, w]` (one video frame): the same numbers as `[B, C, h, w]`.
        eps = torch.randn((batch_size, self.latent_channels, rows, cols), generator=generator, device=generator.device)
        return pack_latents(eps).to(device)

    # --------------------------------------------------------------------- VAE

    def _latent_statistics(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        config = self.pipeline.vae.config
        mean = torch.tensor(config.latents_mean).view(1, -1, 1, 1, 1).to(like.device, like.dtype)
        std = torch.tensor(config.latents_std).view(1, -1, 1, 1, 1).to(like.device, like.dtype)
        return mean, std

    def decode(self, latents, height, width) -> torch.Tensor:
        vae = self.pipeline.vae
        z = unpack_latents(latents, *self._grid(height, width)).to(vae.dtype)
        mean, std = self._latent_statistics(z)
        frames = vae.decode(z * std + mean, return_dict=False)[0][:, :, 0]
        return self.to_unit_images(frames[:, :3])  # RGB of the RGBA image

    @torch.no_grad()
    def encode_images(self, images, height, width) -> torch.Tensor:
        vae = self.pipeline.vae
        pixels = images * 2 - 1
        if self.rgba:  # opaque, as the stock pipeline's RGBA-converted condition images
            pixels = torch.cat([pixels, torch.ones_like(pixels[:, :1])], dim=1)
        # The posterior's mean (the stock pipeline's `sample_mode="argmax"` for condition images).
        z = vae.encode(pixels.to(vae.device, vae.dtype).unsqueeze(2)).latent_dist.mode()
        mean, std = self._latent_statistics(z)
        return pack_latents(((z - mean) / std)[:, :, 0]).float()
