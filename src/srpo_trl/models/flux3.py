"""FLUX.3 [klein] adapter: diffusers' `Flux3ModularPipeline` (base) and `Flux3DistilledModularPipeline` (step-distilled).

diffusers ships FLUX.3 only as a modular pipeline; the adapter reads its components (transformer, VAE, Qwen3-VL text
encoder and processor, scheduler, guider). What FLUX.3 changes against FLUX.2, all handled here:

- the text: Qwen3-VL hidden states of layers 4, 8, ..., 32 stacked into a 20,480-wide embedding, encoded one prompt at
  a time as the stock encoder step does (diffusers' own `Flux3TextEncoderStep._get_qwen3_vl_prompt_embeds`). Each
  prompt's window is its length rounded up to a multiple of 80 tokens, and the transformer attends to that padding: the
  window is part of the model. So the cache keeps each prompt's own window, and a batch of prompts with different
  windows is run as one transformer call per window length (`text_lengths`), never padded to a common length;
- the image tokens' position ids `(0, h, w, 0)` with `h` and `w` scaled by 0.5 (the model's RoPE scale), the text's
  `(0, 0, 0, l)`, a reference image's `(0, h, w, -1)`;
- reference images (editing, when the dataset has a reference image column: one per prompt, as for Kontext) are
  their own token mode, `image_cond_hidden_states`: never noised, stepped or rewarded;
- guidance: the base model takes classifier-free guidance through diffusers' guider, `v_neg + g (v - v_neg)` with
  the empty prompt as the negative (encoded with its own window), two transformer calls when `g > 1`;
- the step-distilled model is a **flow map**: every call also takes the level it jumps to (`target_timestep`), which
  the rollout gives as the next level on the grid (0 after the last) and Direct-Align's step as its end level (down)
  or its start level (up, see `direct_align.flow_map_target`);
- the time shift is the scheduler's static `shift` (6.93 in diffusers' FLUX.3 blocks).

The VAE (`AutoencoderKLFlux2`) and the latent layout are FLUX.2's: 2x2-patchified latents normalised with the VAE's
batch-norm statistics, tokens in row-major order; that part is inherited from [`Flux2Adapter`].
"""

from __future__ import annotations

from typing import ClassVar

import torch

from .flux2 import Flux2Adapter

#: The stock encoder step's text window: a multiple of this many tokens (capped at `max_sequence_length`).
TEXT_PAD_MULTIPLE = 80
#: The stock prepare-latents step's scale of the image tokens' height and width position ids.
IMAGE_ROPE_SCALE = 0.5
#: The negative prompt of the base model's classifier-free guidance (the stock pipeline's default).
NEGATIVE_PROMPT = ""


def image_ids(rows: int, cols: int, device: torch.device, l_coord: int = 0) -> torch.Tensor:
    """Position ids `(t, h, w, l)` of a `rows x cols` token grid, `h` and `w` scaled by the model's RoPE scale."""
    zero, layer = torch.arange(1), torch.tensor([l_coord])
    ids = torch.cartesian_prod(zero, torch.arange(rows), torch.arange(cols), layer).to(torch.float32)
    ids[:, 1:3] *= IMAGE_ROPE_SCALE
    return ids.to(device)


def text_ids(length: int, device: torch.device) -> torch.Tensor:
    """Position ids `(0, 0, 0, l)` of `length` text tokens."""
    zero = torch.arange(1)
    return torch.cartesian_prod(zero, zero, zero, torch.arange(length)).to(torch.float32).to(device)


class Flux3Adapter(Flux2Adapter):
    """Adapter for `Flux3ModularPipeline` and `Flux3DistilledModularPipeline`."""

    family: ClassVar[str] = "flux3"
    trainable_component: ClassVar[str] = "transformer"
    default_lora_target_modules: ClassVar[list[str]] = [
        "attn.to_q",
        "attn.to_k",
        "attn.to_v",
        "attn.to_out.0",
        "ff.linear_in",
        "ff.linear_out",
        "proj_out",
    ]
    text_components: ClassVar[tuple[str, ...]] = ("text_encoder", "tokenizer")
    #: Text-to-image, or editing when the dataset has a reference image column (the trainer decides).
    reference_image_optional: ClassVar[bool] = True

    def __init__(self, pipeline, max_sequence_length: int = 512):
        super().__init__(pipeline, max_sequence_length)  # no guidance embedding: CFG (base) or none (distilled)
        # Read once: the transformer may later be wrapped (DDP, FSDP, peft) and hide its config.
        self.flow_map = bool(pipeline.transformer.config.flow_map)
        guider = getattr(pipeline, "guider", None)
        self.classifier_free_guidance = guider is not None and not self.flow_map
        if self.classifier_free_guidance:
            # The stock guider's scale in the rollout and for samples; one conditional call in training (as for
            # Qwen-Image and FLUX.2 [klein] base). Chosen here, not published.
            scale = float(guider.guidance_scale)
            self.default_guidance = {"rollout": scale, "train": 1.0, "sample": scale}
        else:
            self.default_guidance = {"rollout": 1.0, "train": 1.0, "sample": 1.0}
        self._lengths_tensor: torch.Tensor | None = None  # see `_window_lengths`
        self._lengths: list[int] = []

    def default_time_shift(self, height: int, width: int) -> float:
        return float(self.pipeline.scheduler.config.get("shift", 1.0))

    # ------------------------------------------------------------------ text

    def _encode_one(self, prompt: str, device: torch.device) -> torch.Tensor:
        """One prompt's embedding `[window, 20480]`, as the stock encoder step makes it."""
        from diffusers.modular_pipelines.flux3.encoders import Flux3TextEncoderStep

        embeds = Flux3TextEncoderStep._get_qwen3_vl_prompt_embeds(
            self.pipeline.text_encoder,
            self.pipeline.tokenizer,
            prompt,
            device=device,
            max_sequence_length=self.max_sequence_length,
            pad_multiple=TEXT_PAD_MULTIPLE,
        )
        return embeds[0]

    @torch.no_grad()
    def encode_prompts(self, prompts: list[str], device: torch.device) -> dict[str, torch.Tensor]:
        """Each prompt in its own window (see the module docstring), as one batch padded to the longest window with
        the windows' lengths; for the base model also the negative prompt's embedding, per row."""
        text = self.stack_entries([{"prompt_embeds": self._encode_one(p, device)} for p in prompts])
        if self.classifier_free_guidance:
            text["negative_prompt_embeds"] = self._negative_embeds(len(prompts), device)
        return text

    def cache_entry(self, row: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """A prompt's own window (the batch padding dropped); the negative prompt is not cached per prompt."""
        length = int(row["text_lengths"])
        return {"prompt_embeds": row["prompt_embeds"][:length]}

    def stack_entries(self, rows: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        """Windows of several lengths as one batch: zero-padded to the longest, with each row's length (the padding
        is never read: `velocity` calls the transformer on each row's own window)."""
        lengths = [row["prompt_embeds"].shape[0] for row in rows]
        longest, first = max(lengths), rows[0]["prompt_embeds"]
        embeds = first.new_zeros(len(rows), longest, first.shape[-1])
        for i, row in enumerate(rows):
            embeds[i, : lengths[i]] = row["prompt_embeds"]
        return {"prompt_embeds": embeds, "text_lengths": torch.tensor(lengths, device=first.device)}

    def _negative_embeds(self, batch: int, device: torch.device) -> torch.Tensor:
        """The negative prompt's embedding (its own window), encoded once per device, for `batch` rows."""
        key = str(device)
        if key not in self._negative:
            self._negative[key] = {"negative_prompt_embeds": self._encode_one(NEGATIVE_PROMPT, device)[None]}
        negative = self._negative[key]["negative_prompt_embeds"]
        return negative.expand(batch, *negative.shape[1:])

    # -------------------------------------------------------------- reference

    @torch.no_grad()
    def add_reference(self, conditioning, reference_images, height, width):
        """Conditioning plus the reference images' tokens (`[B, tokens, C]`, their own token mode), normalised as the
        stock VAE encoder step does; their position ids carry `l = -1`, as the stock loop gives one reference. The
        data pipeline gives references at the training size (a multiple of 16: no reflect-padding is needed)."""
        return {**conditioning, "reference_latents": self.encode_images(reference_images, height, width)}

    def unused_modules(self) -> str | None:
        """A text-to-image run never calls the reference-image mode (`x_embedders.image_cond`, its modulations and its
        per-mode blocks): those stay frozen and carry no LoRA. An editing run uses them."""
        return None if self.requires_reference_image else r".*\bimage_cond\b.*"

    # --------------------------------------------------------------- velocity

    def _image_ids(self, rows: int, cols: int, device: torch.device, l_coord: int = 0) -> torch.Tensor:
        key = (rows, cols, l_coord, str(device))
        if key not in self._positions:
            self._positions[key] = image_ids(rows, cols, device, l_coord)
        return self._positions[key]

    def _text_ids(self, length: int, device: torch.device) -> torch.Tensor:
        key = ("text", length, str(device))
        if key not in self._positions:  # built once per window length, not at every rollout step
            self._positions[key] = text_ids(length, device)
        return self._positions[key]

    def _call(self, transformer, latents, sigma, target, embeds, reference, height, width) -> torch.Tensor:
        """One transformer call for rows sharing one text window `embeds` (`[b, window, D]`)."""
        rows, cols = self._grid(height, width)
        dtype = self.pipeline.transformer.dtype  # fp32 when fully fine-tuned on a bf16 pipeline (fp32 master weights)
        device = latents.device
        kwargs = {}
        if reference is not None:
            kwargs["image_cond_hidden_states"] = reference.to(dtype)
            kwargs["image_cond_ids"] = self._image_ids(rows, cols, device, l_coord=-1)
        if self.flow_map:
            if target is None:
                raise ValueError("Flux3Adapter.velocity: a flow-map transformer needs the level each step jumps to")
            kwargs["target_timestep"] = target.to(device)
        return transformer(
            hidden_states=latents.to(dtype),
            encoder_hidden_states=embeds.to(dtype),
            timestep=sigma.to(device),  # FLUX.3 takes the level in [0, 1] (the pipeline's t / 1000)
            img_ids=self._image_ids(rows, cols, device),
            txt_ids=self._text_ids(embeds.shape[1], device),
            return_dict=False,
            **kwargs,
        )[0]

    def _window_lengths(self, lengths: torch.Tensor) -> list[int]:
        """The batch's window lengths on the host, read once per conditioning tensor: the rollout calls the transformer
        with the same text at every step, and reading a device tensor at each would synchronise with the device."""
        if self._lengths_tensor is not lengths:
            self._lengths_tensor, self._lengths = lengths, lengths.tolist()
        return self._lengths

    def _conditional(self, transformer, latents, sigma, target, text, height, width) -> torch.Tensor:
        """The conditional velocity, one transformer call per text-window length in the batch."""
        lengths = self._window_lengths(text["text_lengths"])
        reference = text.get("reference_latents")
        embeds = text["prompt_embeds"]
        if len(set(lengths)) == 1:  # one window for the whole batch (always at batch 1): no gathering
            return self._call(transformer, latents, sigma, target, embeds[:, : lengths[0]], reference, height, width)
        out = None
        for length in sorted(set(lengths)):
            index = torch.tensor([i for i, n in enumerate(lengths) if n == length], device=latents.device)
            part = self._call(
                transformer,
                latents[index],
                sigma[index],
                None if target is None else target[index],
                embeds[index, :length],
                None if reference is None else reference[index],
                height,
                width,
            )
            if out is None:
                out = part.new_empty(latents.shape[0], *part.shape[1:])
            out[index] = part
        return out

    def velocity(self, transformer, latents, sigma, text, guidance_scale, height, width, target=None) -> torch.Tensor:
        conditional = self._conditional(transformer, latents, sigma, target, text, height, width)
        if not (self.classifier_free_guidance and guidance_scale > 1):
            return conditional
        negative = text.get("negative_prompt_embeds")
        if negative is None:
            negative = self._negative_embeds(latents.shape[0], latents.device)
        unconditional = self._call(
            transformer, latents, sigma, target, negative, text.get("reference_latents"), height, width
        )
        return unconditional + guidance_scale * (conditional - unconditional)

    @classmethod
    def pipeline_guidance_kwargs(cls, guidance_scale: float) -> dict:
        """The stock modular pipeline takes its guidance from its guider component (`guider.new(guidance_scale=g)`),
        not from a call argument: nothing to pass here (see the model card's snippet)."""
        return {}

    def save_lora_weights(self, output_dir, lora_state_dict, lora_config) -> None:
        from .base import lora_adapter_metadata

        type(self.pipeline).save_lora_weights(
            output_dir,
            transformer_lora_layers=lora_state_dict,
            transformer_lora_adapter_metadata=lora_adapter_metadata(lora_config),
        )
