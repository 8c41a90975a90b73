"""Wan video adapter: `diffusers.WanPipeline`, text-to-video (Wan 2.1 T2V 1.3B / 14B, Wan 2.2 T2V-A14B with its two
experts, Wan 2.2 TI2V-5B as text-to-video; Apache-2.0).

Wan is a video DiT (`WanTransformer3DModel`): per block self-attention over the video's patches (3-D rotary
positions), cross-attention to the text and a feed-forward, modulated by the timestep. What it changes against the
image families, all handled here as the stock pipeline does it:

- latents are videos: `[B, C, F', h, w]` (16 channels, 8x in space and 4x in time for Wan 2.1 and A14B; Wan 2.2's
  TI2V VAE: 48 channels, 16x with its 2x2 patches), with `F' = (F - 1) / 4 + 1` latent frames for `F` frames, so `F`
  must be `4k + 1` (`SRPOConfig.num_frames`, default Wan's 81, checked in [`configure`]). The adapter keeps them in
  that 5-D layout, the transformer's input (SRPO's step repeats latents of any rank). They are normalised with the VAE
  config's per-channel `latents_mean` / `latents_std`, dividing by `1 / std` as the stock pipeline does;
- `decode` gives float32 videos `[B, F, 3, H, W]` in [0, 1] (the stock pipeline's `output_type="pt"` layout),
  differentiably; the VAE clamps its output to [-1, 1] as the stock one. With gradient and
  `SRPOConfig.vae_gradient_checkpointing` (the default) it decodes chunk by chunk over time with each chunk
  checkpointed (`wan_decode.checkpointed_decode`: diffusers' Wan VAE has no checkpointing of its own), which equals the
  stock decode; without gradient (rollout, samples, evaluation) the stock `vae.decode` runs;
- one text encoder, UMT5-XXL: its last hidden state with the padding tokens' embeddings zeroed, padded to
  `max_sequence_length` tokens (512, the pipeline's default), no mask: the transformer attends to the zero padding
  too, so a batch is always padded to the full length. The text cache keeps each prompt without its padding (the
  rows after its last nonzero one) and pads again when it batches;
- the transformer takes the timestep in [0, 1000] (`sigma * num_train_timesteps`). TI2V-5B's pipeline
  (`expand_timesteps=True`) gives one timestep per latent token (`[B, F' (h/2)(w/2)]`, all equal in text-to-video),
  which takes another path in the transformer's modulation; this adapter passes it in the same form;
- guidance is real classifier-free guidance with a negative prompt (`""`, the stock default), `u + g (c - u)` from two
  transformer calls, as the stock pipeline makes them. Defaults, chosen as for Chroma and Qwen-Image: the stock
  `guidance_scale=5.0` in the rollout and for samples, 1 (one conditional call) in the two training calls. Wan's
  model cards recommend a long negative prompt; the stock default is the empty one, which this adapter follows;
- the time shift is the scheduler's: the released checkpoints ship `UniPCMultistepScheduler` with `flow_shift` (3.0
  for 480p, 5.0 for 720p and TI2V-5B; resolution-independent), an Euler scheduler its static `shift`. The rollout
  samples, with Euler steps, on the levels the pipeline's own scheduler gives for `rollout_steps` ([`rollout_sigmas`]):
  UniPC's flow grid is the shifted uniform grid (from 0.999 shifted); the Euler scheduler's shifts a grid that is
  shifted already (diffusers' behaviour: its last level before 0 is tiny), and on such a pipeline the rollout equals
  the stock sampler exactly. The Direct-Align window is cut from the shifted grid at that shift;
- Wan 2.2 A14B has two experts: `transformer` serves the levels `t >= boundary_ratio * 1000` (high noise),
  `transformer_2` those below. The rollout uses both, as the stock pipeline does, with the stock `guidance_scale_2`
  for `transformer_2` (`SRPOConfig.guidance_scale_2`: `velocity` is then given the pair `(guidance, guidance_2)`;
  unset, both take the one guidance, the stock default). The two training calls take `train_guidance_scale`,
  whichever expert trains: `guidance_scale_2` is the sampler's setting, as `rollout_guidance_scale` is (training the
  low-noise expert's conditional velocity at the recipe's 1 needs no second value). The trained expert is the one
  whose levels hold the whole training window
  ([`configure`] sets `trainable_component`, an instance attribute here), and a window that straddles the boundary is
  refused. The other expert stays frozen. Its LoRA reloads with `load_lora_weights(..., load_into_transformer_2=True)`
  when it is `transformer_2`; a full fine-tune is saved as `transformer_2/` and loads into `pipe.transformer_2`.

Default LoRA targets: the self- and cross-attention projections (`attn1`, `attn2`: `to_q/k/v`, `to_out.0`) and the
feed-forward (`ffn.net.0.proj`, `ffn.net.2`) of every block; the modulation tables, the patch embedding and the
condition embedders stay frozen.
"""

from __future__ import annotations

from typing import ClassVar

import torch

from .base import AdapterBase
from .wan_decode import checkpointed_decode, supports_chunked_decode

#: The stock pipeline's negative prompt when CFG is on and none is given.
NEGATIVE_PROMPT = ""
#: Wan's default video length (5 s at 16 fps, plus the first frame).
DEFAULT_NUM_FRAMES = 81


class WanAdapter(AdapterBase):
    """Adapter for `WanPipeline` (text-to-video)."""

    family: ClassVar[str] = "wan"
    hub_tag: ClassVar[str] = "wan"
    #: The expert that trains: `"transformer"`, or `"transformer_2"` for a window in Wan 2.2 A14B's low-noise range. An
    #: instance attribute once [`configure`] has run.
    trainable_component: str = "transformer"
    default_lora_target_modules: ClassVar[list[str]] = [
        *(f"{attn}.{proj}" for attn in ("attn1", "attn2") for proj in ("to_q", "to_k", "to_v", "to_out.0")),
        "ffn.net.0.proj",
        "ffn.net.2",
    ]
    text_components: ClassVar[tuple[str, ...]] = ("text_encoder", "tokenizer")
    #: A video family: `decode` gives `[B, F, 3, H, W]`, and image rewards are scored per frame (`FrameReward`).
    is_video: ClassVar[bool] = True
    default_guidance: ClassVar[dict[str, float]] = {"rollout": 5.0, "train": 1.0, "sample": 5.0}
    #: `decode` checkpoints the VAE itself (chunk by chunk, `wan_decode`) when `vae_gradient_checkpointing` is on, so
    #: preparation does not warn that diffusers' `AutoencoderKLWan` has no gradient checkpointing.
    checkpoints_vae_decode: ClassVar[bool] = True

    def __init__(self, pipeline, max_sequence_length: int = 512):
        self.pipeline = pipeline
        self.max_sequence_length = max_sequence_length
        self.spatial_factor = pipeline.vae_scale_factor_spatial
        self.temporal_factor = pipeline.vae_scale_factor_temporal
        self.latent_channels = pipeline.vae.config.z_dim
        denoiser = pipeline.transformer if pipeline.transformer is not None else pipeline.transformer_2
        self.patch_size = tuple(denoiser.config.patch_size)
        self.num_train_timesteps = pipeline.scheduler.config.get("num_train_timesteps", 1000)
        self.boundary_ratio = pipeline.config.get("boundary_ratio")
        self.expand_timesteps = bool(pipeline.config.get("expand_timesteps", False))
        self.guidance_embeds = False  # real CFG: two calls (see `velocity`)
        self.num_frames = DEFAULT_NUM_FRAMES
        self.decode_latent_frames: int | None = None  # `SRPOConfig.decode_latent_frames` (see `reward_latents`)
        self.vae_gradient_checkpointing = True  # `SRPOConfig.vae_gradient_checkpointing` (see `decode`)
        self.trainable_component = "transformer" if pipeline.transformer is not None else "transformer_2"
        self._negative: dict[str, torch.Tensor] = {}  # the negative prompt's embeddings, per device

    @property
    def latent_granularity(self) -> int:
        return self.spatial_factor * self.patch_size[1]

    @property
    def two_experts(self) -> bool:
        return self.boundary_ratio is not None and getattr(self.pipeline, "transformer_2", None) is not None

    # ------------------------------------------------------------ configuration

    def default_time_shift(self, height: int, width: int) -> float:
        """The scheduler's shift: UniPC's `flow_shift` (the released checkpoints'), else the static `shift`."""
        config = self.pipeline.scheduler.config
        if config.get("use_flow_sigmas", False) and "flow_shift" in config:
            return float(config["flow_shift"])
        if config.get("use_dynamic_shifting", False):
            raise ValueError(
                "WanPipeline's scheduler shifts dynamically, which the stock pipeline cannot sample with (it passes "
                "no `mu`); give it a static shift or set SRPOConfig.time_shift"
            )
        return float(config.get("shift", 1.0))

    def rollout_sigmas(self, num_steps: int, height: int, width: int) -> torch.Tensor:
        """The levels the pipeline's own scheduler samples `num_steps` steps on, terminal 0 included (float32)."""
        scheduler = type(self.pipeline.scheduler).from_config(self.pipeline.scheduler.config)
        scheduler.set_timesteps(num_steps, device="cpu")
        return scheduler.sigmas.float().cpu()

    def configure(self, args) -> None:
        """`num_frames` (checked: `4k + 1`), and for two experts the one that trains (the one whose levels hold the
        whole Direct-Align window; a window across the boundary is refused)."""
        frames = getattr(args, "num_frames", None) or DEFAULT_NUM_FRAMES
        if frames < 1 or (frames - 1) % self.temporal_factor:
            below = (frames - 1) // self.temporal_factor * self.temporal_factor + 1
            raise ValueError(
                f"SRPOConfig.num_frames={frames}: Wan's VAE compresses time {self.temporal_factor}x, so the frame "
                f"count must be {self.temporal_factor}k + 1 (e.g. {below} or {below + self.temporal_factor})"
            )
        self.num_frames = frames
        self.decode_latent_frames = getattr(args, "decode_latent_frames", None)
        self.vae_gradient_checkpointing = bool(getattr(args, "vae_gradient_checkpointing", True))
        if self.two_experts:
            self.trainable_component = self._expert_for_window(args)

    def _expert_for_window(self, args) -> str:
        from .. import direct_align

        height, width = args.image_size
        shift = args.time_shift or self.default_time_shift(height, width)
        grid = direct_align.shifted_grid(args.window_grid_steps, shift)
        start, end = args.window_start_index, args.window_end_index
        noisiest, cleanest, boundary = grid[start].item(), grid[end].item(), float(self.boundary_ratio)
        if cleanest >= boundary:
            return "transformer"
        if noisiest < boundary:
            return "transformer_2"
        last_high = max((i for i in range(start, end + 1) if grid[i].item() >= boundary), default=start)
        first_low = min(i for i in range(start, end + 1) if grid[i].item() < boundary)
        raise ValueError(
            f"the Direct-Align window (levels {noisiest:.3f} to {cleanest:.3f}: window_start_index={start}, "
            f"window_end_index={end} on {args.window_grid_steps} steps at shift {shift:g}) straddles Wan 2.2's expert "
            f"boundary at level {boundary:g} (boundary_ratio): `transformer` serves the levels above it, "
            f"`transformer_2` those below, and one run trains one expert. Keep the window on one side: "
            f"window_end_index={last_high} trains the high-noise expert, window_start_index={first_low} the low-noise "
            "one"
        )

    @classmethod
    def pipeline_guidance_kwargs(cls, guidance_scale: float) -> dict:
        """The stock pipeline's `guidance_scale` (CFG with its default negative prompt `""` above 1; Wan 2.2's
        `guidance_scale_2` defaults to it)."""
        return {"guidance_scale": guidance_scale}

    # ------------------------------------------------------------------ text

    def _encode(self, prompts: list[str], device: torch.device) -> torch.Tensor:
        embeds, _ = self.pipeline.encode_prompt(
            prompt=prompts, do_classifier_free_guidance=False, max_sequence_length=self.max_sequence_length,
            device=device,
        )  # fmt: skip
        return embeds

    def _negative_embeds(self, batch: int, device: torch.device) -> torch.Tensor:
        key = str(device)
        if key not in self._negative:
            self._negative[key] = self._encode([NEGATIVE_PROMPT], device)
        return self._negative[key].expand(batch, -1, -1)

    @torch.no_grad()
    def encode_prompts(self, prompts: list[str], device: torch.device) -> dict[str, torch.Tensor]:
        """UMT5 embeddings padded with zeros to `max_sequence_length`, and the negative prompt's per row."""
        return {
            "prompt_embeds": self._encode(prompts, device),
            "negative_prompt_embeds": self._negative_embeds(len(prompts), device),
        }

    def cache_entry(self, row: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The prompt's embeddings up to its last nonzero row (the stock pipeline zeroes the padding); the negative
        prompt, the same for every prompt, is kept once by the adapter."""
        embeds = row["prompt_embeds"]
        nonzero = (embeds != 0).any(-1).nonzero()
        length = int(nonzero[-1]) + 1 if len(nonzero) else 0
        return {"prompt_embeds": embeds[:length]}

    def stack_entries(self, rows: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        """Cached prompts padded with zeros to `max_sequence_length` again, as the stock pipeline pads them."""
        embeds = [row["prompt_embeds"] for row in rows]
        length = max(self.max_sequence_length, *(e.shape[0] for e in embeds))
        padded = [torch.cat([e, e.new_zeros(length - e.shape[0], e.shape[1])]) for e in embeds]
        return {"prompt_embeds": torch.stack(padded)}

    # ------------------------------------------------------------- transformer

    def _latent_shape(self, batch: int, height: int, width: int) -> tuple[int, ...]:
        frames = (self.num_frames - 1) // self.temporal_factor + 1
        return batch, self.latent_channels, frames, height // self.spatial_factor, width // self.spatial_factor

    def sample_noise(self, batch_size, height, width, generator, device) -> torch.Tensor:
        shape = self._latent_shape(batch_size, height, width)
        return torch.randn(shape, generator=generator, device=generator.device, dtype=torch.float32).to(device)

    def _expert(self, high_noise: bool, transformer):
        """The module serving the high- or low-noise levels: `transformer` (the one training) for its own range."""
        name = "transformer" if high_noise or not self.two_experts else "transformer_2"
        return transformer if name == self.trainable_component else getattr(self.pipeline, name)

    def _call(self, module, dtype, latents, timestep, embeds) -> torch.Tensor:
        if self.expand_timesteps:  # TI2V: one timestep per latent token, as the stock pipeline gives them
            _, _, f, h, w = latents.shape
            tokens = f * (h // self.patch_size[1]) * (w // self.patch_size[2])
            timestep = timestep[:, None].expand(-1, tokens)
        return module(
            hidden_states=latents.to(dtype),
            timestep=timestep,
            encoder_hidden_states=embeds.to(dtype),
            return_dict=False,
        )[0]

    def _guided(self, module, dtype, latents, timestep, text, guidance_scale) -> torch.Tensor:
        conditional = self._call(module, dtype, latents, timestep, text["prompt_embeds"])
        if guidance_scale <= 1:
            return conditional
        negative = text.get("negative_prompt_embeds")
        if negative is None:
            negative = self._negative_embeds(latents.shape[0], latents.device)
        unconditional = self._call(module, dtype, latents, timestep, negative)
        return unconditional + guidance_scale * (conditional - unconditional)

    def velocity(self, transformer, latents, sigma, text, guidance_scale, height, width, target=None) -> torch.Tensor:
        """`guidance_scale`: one value, or for two experts `(high, low)`: the high-noise expert's guidance and the
        low-noise one's (the stock pipeline's `guidance_scale` and `guidance_scale_2`)."""
        timestep = sigma.to(latents.device, torch.float32) * self.num_train_timesteps
        high_guidance, low_guidance = guidance_scale if isinstance(guidance_scale, tuple) else (guidance_scale,) * 2
        if not self.two_experts:
            if high_guidance != low_guidance:
                raise ValueError(f"guidance {guidance_scale}: a second guidance needs two experts (Wan 2.2 A14B)")
            # fp32 when fully fine-tuned on a bf16 pipeline (fp32 masters); the trained expert's when the planner
            # traces an A14B pipeline's one expert alone (`planning.estimate`)
            dtype = getattr(self.pipeline, self.trainable_component).dtype
            return self._guided(transformer, dtype, latents, timestep, text, high_guidance)
        high = timestep >= self.boundary_ratio * self.num_train_timesteps  # the stock pipeline's test, per sample
        parts = []
        for is_high in (True, False):
            rows = high if is_high else ~high
            if not bool(rows.any()):
                continue
            module = self._expert(is_high, transformer)
            dtype = getattr(self.pipeline, "transformer" if is_high else "transformer_2").dtype
            guidance = high_guidance if is_high else low_guidance
            if bool(rows.all()):
                return self._guided(module, dtype, latents, timestep, text, guidance)
            sub = {k: v[rows] for k, v in text.items()}
            parts.append((rows, self._guided(module, dtype, latents[rows], timestep[rows], sub, guidance)))
        out = parts[0][1].new_zeros(latents.shape)
        for rows, value in parts:
            out = out.index_put((rows,), value)
        return out

    # --------------------------------------------------------------------- VAE

    def _latent_statistics(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The VAE config's `latents_mean` and `1 / latents_std` (`[1, C, 1, 1, 1]`), as the stock pipeline makes
        them: the reciprocal in float32, then cast."""
        config = self.pipeline.vae.config
        shape = (1, config.z_dim, 1, 1, 1)
        mean = torch.tensor(config.latents_mean).view(shape).to(like.device, like.dtype)
        inverse_std = (1.0 / torch.tensor(config.latents_std)).view(shape).to(like.device, like.dtype)
        return mean, inverse_std

    def reward_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """The first `decode_latent_frames` latent frames (all when unset): Wan's VAE is causal in time, so they decode
        to exactly the first `4 (N - 1) + 1` frames of the whole video's decode, at a fraction of its memory."""
        frames = self.decode_latent_frames
        return latents if frames is None else latents[:, :, :frames]

    def decode(self, latents, height, width) -> torch.Tensor:
        """Videos `[B, F, 3, H, W]` in [0, 1] (float32), differentiably: with gradient and VAE checkpointing on,
        chunk by chunk over time, each chunk checkpointed (the same result, see `wan_decode`)."""
        vae = self.pipeline.vae
        z = latents.to(vae.dtype)
        mean, inverse_std = self._latent_statistics(z)
        z = z / inverse_std + mean
        if self.vae_gradient_checkpointing and torch.is_grad_enabled() and supports_chunked_decode(vae):
            video = checkpointed_decode(vae, z)  # [B, 3, F, H, W] in [-1, 1]
        else:
            video = vae.decode(z, return_dict=False)[0]
        return self.to_unit_images(video.transpose(1, 2))

    @torch.no_grad()
    def encode_images(self, images, height, width) -> torch.Tensor:
        """Clean latents of videos `[B, F, 3, H, W]` in [0, 1], or of images `[B, 3, H, W]` held still for
        `num_frames` frames (the posterior's mean)."""
        vae = self.pipeline.vae
        if images.ndim == 4:
            images = images.unsqueeze(1).expand(-1, self.num_frames, -1, -1, -1)
        pixels = (images * 2 - 1).transpose(1, 2).to(vae.device, vae.dtype)  # [B, 3, F, H, W]
        z = vae.encode(pixels).latent_dist.mode()
        mean, inverse_std = self._latent_statistics(z)
        return ((z - mean) * inverse_std).float()
