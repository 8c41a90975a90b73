"""Qwen-Image adapter: `diffusers.QwenImagePipeline` (Qwen-Image and its fine-tunes).

What Qwen-Image changes against FLUX.1, all handled here:

- one text encoder, Qwen2.5-VL-7B, whose last hidden state (after a system prompt the pipeline drops) is
  the text embedding; prompts have different lengths, so the conditioning carries an attention mask, and
  a batch is padded to its longest prompt, as the stock pipeline pads. The text cache stores each prompt
  without padding (a prompt of 40 tokens takes a twelfth of what padding to 512 tokens would) and pads a
  batch again when it reads one (with no mask when nothing is padded, as the stock pipeline: a mask rules
  out attention kernels that take none);
- no guidance embedding: guidance is *true* classifier-free guidance with a negative prompt (two
  transformer calls per step) and diffusers' rescale of the guided velocity to the conditional one's norm.
  A `guidance_scale` above 1 turns it on, in the rollout and in the two training calls alike; 1 is one
  conditional call. The negative prompt (`" "`, the pipeline's documented default) is encoded once;
- a video-style VAE (`AutoencoderKLQwenImage`, 16 channels, 8x): 5-D latents with one frame, normalised
  with the VAE config's per-channel `latents_mean` / `latents_std`; tokens are FLUX's 2x2-packed layout,
  and the transformer builds its 3-D rotary positions from `img_shapes`;
- the time shift: Qwen-Image samples with a resolution-dependent shift (`exp(mu)` from the pipeline's
  `calculate_shift`, 2.0 at 1024 px, [`inference_time_shift`]) and stretches the grid to end at 0.02. SRPO's
  published Qwen-Image script trains without a shift (its rollout and window grids are uniform), so
  [`default_time_shift`] is 1; `SRPOConfig.time_shift` sets another.
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch

from .base import JOINT_ATTENTION_LORA_TARGETS, AdapterBase
from .flux import pack_latents, unpack_latents

#: The negative prompt of true CFG: diffusers' QwenImagePipeline documents `" "` to switch CFG on without one.
DEFAULT_NEGATIVE_PROMPT = " "


def qwen_image_mu(image_seq_len: int, scheduler_config) -> float:
    """The stock pipeline's `mu` (log of the time shift) for `image_seq_len` image tokens."""
    from diffusers.pipelines.qwenimage.pipeline_qwenimage import calculate_shift

    return float(
        calculate_shift(
            image_seq_len,
            scheduler_config.get("base_image_seq_len", 256),
            scheduler_config.get("max_image_seq_len", 4096),
            scheduler_config.get("base_shift", 0.5),
            scheduler_config.get("max_shift", 1.15),
        )
    )


def padded_batch(embeddings: list[torch.Tensor]) -> dict[str, torch.Tensor]:
    """Unpadded embeddings `[L_i, D]` as `{"embeds": [B, L, D]}`, each padded with zeros to the longest, plus
    `"mask"` `[B, L]` (1 on the real tokens) when their lengths differ."""
    lengths = [e.shape[0] for e in embeddings]
    longest = max(lengths)
    batch = {
        "embeds": torch.stack([torch.cat([e, e.new_zeros(longest - e.shape[0], *e.shape[1:])]) for e in embeddings])
    }
    if min(lengths) < longest:
        positions = torch.arange(longest, device=embeddings[0].device)
        batch["mask"] = torch.stack([(positions < n).long() for n in lengths])
    return batch


def rescaled_cfg(conditional: torch.Tensor, unconditional: torch.Tensor, scale: float) -> torch.Tensor:
    """True CFG as QwenImagePipeline applies it: `u + s (c - u)`, rescaled per token to the norm of `c`."""
    guided = unconditional + scale * (conditional - unconditional)
    return guided * (conditional.norm(dim=-1, keepdim=True) / guided.norm(dim=-1, keepdim=True))


class QwenImageAdapter(AdapterBase):
    """Adapter for `QwenImagePipeline`."""

    family: ClassVar[str] = "qwen-image"
    hub_tag: ClassVar[str] = "qwen-image"
    trainable_component: ClassVar[str] = "transformer"
    # The joint blocks' attention (image and text side) and both streams' feed-forwards; the modulation layers
    # (`img_mod`, `txt_mod`) stay frozen, as in diffusers' Qwen-Image LoRA training script.
    default_lora_target_modules: ClassVar[list[str]] = [
        *JOINT_ATTENTION_LORA_TARGETS,
        "img_mlp.net.0.proj",
        "img_mlp.net.2",
        "txt_mlp.net.0.proj",
        "txt_mlp.net.2",
    ]
    text_components: ClassVar[tuple[str, ...]] = ("text_encoder", "tokenizer")
    #: SRPO's published Qwen-Image script: the rollout with true CFG 4 (Qwen-Image's inference default), the
    #: training call without CFG (conditional velocity only); samples as Qwen-Image is used, CFG 4.
    default_guidance: ClassVar[dict[str, float]] = {"rollout": 4.0, "train": 1.0, "sample": 4.0}
    #: The negative prompt of true CFG.
    negative_prompt: ClassVar[str] = DEFAULT_NEGATIVE_PROMPT

    def __init__(self, pipeline, max_sequence_length: int = 512):
        self.pipeline = pipeline
        self.max_sequence_length = max_sequence_length
        self.vae_scale_factor = 2 ** len(pipeline.vae.temperal_downsample)
        self.latent_channels = pipeline.vae.config.z_dim
        self.guidance_embeds = False  # Qwen-Image is not guidance-distilled: CFG is two calls (see `velocity`)
        self._negative: dict[str, dict[str, torch.Tensor]] = {}  # the negative prompt's encoding, per device

    def _latent_size(self, height: int, width: int) -> tuple[int, int]:
        return height // self.vae_scale_factor, width // self.vae_scale_factor

    def default_time_shift(self, height: int, width: int) -> float:
        # SRPO's Qwen-Image script: uniform rollout and window grids (no shift) at any resolution.
        return 1.0

    def inference_time_shift(self, height: int, width: int) -> float:
        """The stock pipeline's shift `exp(mu)` at this resolution (before its stretch to a last level of 0.02)."""
        lh, lw = self._latent_size(height, width)
        return math.exp(qwen_image_mu((lh // 2) * (lw // 2), self.pipeline.scheduler.config))

    @classmethod
    def pipeline_guidance_kwargs(cls, guidance_scale: float) -> dict:
        """Arguments that give the stock pipeline this adapter's guidance: true CFG with the negative prompt."""
        if guidance_scale > 1:
            return {"true_cfg_scale": guidance_scale, "negative_prompt": cls.negative_prompt}
        return {"true_cfg_scale": 1.0}

    # ------------------------------------------------------------------ text

    def _encode(self, prompts: list[str], device: torch.device, **encoder_inputs) -> dict[str, torch.Tensor]:
        """`{"embeds": [B, L, D]}`, plus `"mask"` `[B, L]` when some prompt is padded to the batch's longest (the
        stock pipeline's form: no mask when every prompt has the same length)."""
        embeds, mask = self.pipeline.encode_prompt(
            prompt=prompts, device=device, max_sequence_length=self.max_sequence_length, **encoder_inputs
        )
        return {"embeds": embeds} if mask is None else {"embeds": embeds, "mask": mask.long()}

    @staticmethod
    def _named(prefix: str, encoded: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """`_encode`'s output under the conditioning's names: `{prefix}_embeds` and `{prefix}_embeds_mask`."""
        return {f"{prefix}_embeds" + ("_mask" if key == "mask" else ""): value for key, value in encoded.items()}

    def _negative_conditioning(self, batch: int, device: torch.device) -> dict[str, torch.Tensor]:
        key = str(device)
        if key not in self._negative:
            self._negative[key] = self._named("negative_prompt", self._encode([self.negative_prompt], device))
        return {k: v.expand(batch, *v.shape[1:]) for k, v in self._negative[key].items()}

    @torch.no_grad()
    def encode_prompts(self, prompts: list[str], device: torch.device) -> dict[str, torch.Tensor]:
        """The prompts' embeddings padded to the longest prompt (at most `max_sequence_length` tokens) with their
        mask when some are padded, and the negative prompt's encoding per row (the same for every row)."""
        return {
            **self._named("prompt", self._encode(prompts, device)),
            **self._negative_conditioning(len(prompts), device),
        }

    def cache_entry(self, row: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """One prompt's embeddings without their padding (the mask's ones come first: the padding is on the right);
        no mask, since nothing in it is padded."""
        entry = {}
        for key in ("prompt_embeds", "negative_prompt_embeds"):
            mask = row.get(f"{key}_mask")
            entry[key] = row[key] if mask is None else row[key][: int(mask.sum())]
        return entry

    def stack_entries(self, rows: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        """Cached prompts as one batch, each padded with zeros to the longest, with a mask if any was padded."""
        batch = {}
        for key in ("prompt_embeds", "negative_prompt_embeds"):
            batch.update(self._named(key[: -len("_embeds")], padded_batch([row[key] for row in rows])))
        return batch

    # ------------------------------------------------------------- transformer

    def _img_shapes(self, batch: int, height: int, width: int) -> list:
        lh, lw = self._latent_size(height, width)
        return [[(1, lh // 2, lw // 2)]] * batch

    def _call_transformer(self, transformer, hidden_states, sigma, embeds, mask, img_shapes) -> torch.Tensor:
        """One transformer call; `mask` is `None` when no prompt of the batch is padded, as in the stock pipeline
        (an all-ones mask gives the same result, but rules out attention kernels that take no mask)."""
        dtype = self.pipeline.transformer.dtype  # fp32 when fully fine-tuned on a bf16 pipeline (fp32 master weights)
        return transformer(
            hidden_states=hidden_states.to(dtype),
            timestep=sigma.to(hidden_states.device),  # the level in [0, 1] (the pipeline's t / 1000)
            encoder_hidden_states=embeds.to(dtype),
            encoder_hidden_states_mask=mask,
            img_shapes=img_shapes,
            return_dict=False,
        )[0]

    def _guided_velocity(self, transformer, hidden_states, sigma, text, guidance_scale, img_shapes, tokens: int):
        """The velocity of the first `tokens` of `hidden_states` (the image's; reference tokens may follow), with
        true CFG when `guidance_scale > 1`."""
        conditional = self._call_transformer(
            transformer, hidden_states, sigma, text["prompt_embeds"], text.get("prompt_embeds_mask"), img_shapes
        )[:, :tokens]
        if guidance_scale <= 1:
            return conditional
        unconditional = self._call_transformer(
            transformer,
            hidden_states,
            sigma,
            text["negative_prompt_embeds"],
            text.get("negative_prompt_embeds_mask"),
            img_shapes,
        )[:, :tokens]
        return rescaled_cfg(conditional, unconditional, guidance_scale)

    def velocity(self, transformer, latents, sigma, text, guidance_scale, height, width, target=None) -> torch.Tensor:
        img_shapes = self._img_shapes(latents.shape[0], height, width)
        return self._guided_velocity(transformer, latents, sigma, text, guidance_scale, img_shapes, latents.shape[1])

    def sample_noise(self, batch_size, height, width, generator, device) -> torch.Tensor:
        lh, lw = self._latent_size(height, width)
        # QwenImagePipeline draws `[B, 1, C, h, w]` (one video frame): the same numbers as `[B, C, h, w]`.
        eps = torch.randn((batch_size, self.latent_channels, lh, lw), generator=generator, device=generator.device)
        return pack_latents(eps).to(device)

    # --------------------------------------------------------------------- VAE

    def _latent_statistics(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        config = self.pipeline.vae.config
        mean = torch.tensor(config.latents_mean, device=like.device, dtype=torch.float32).view(1, -1, 1, 1, 1)
        std = torch.tensor(config.latents_std, device=like.device, dtype=torch.float32).view(1, -1, 1, 1, 1)
        return mean, std

    def decode(self, latents, height, width) -> torch.Tensor:
        vae = self.pipeline.vae
        lh, lw = self._latent_size(height, width)
        z = unpack_latents(latents.float(), lh, lw).unsqueeze(2)  # one frame
        mean, std = self._latent_statistics(z)
        # Divided by 1 / std, as the stock pipeline does: `z * std` differs in the last bit, which the VAE amplifies.
        frames = vae.decode((z / (1 / std) + mean).to(vae.dtype), return_dict=False)[0]
        return self.to_unit_images(frames[:, :, 0])

    @torch.no_grad()
    def encode_images(self, images, height, width) -> torch.Tensor:
        vae = self.pipeline.vae
        pixels = (images * 2 - 1).to(vae.device, vae.dtype).unsqueeze(2)
        # The posterior's mean: the same image always gives the same x0 (the noise is drawn separately).
        z = vae.encode(pixels).latent_dist.mode().float()
        mean, std = self._latent_statistics(z)
        return pack_latents(((z - mean) / std)[:, :, 0])
