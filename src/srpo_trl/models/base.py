"""The contract between SRPO and a diffusion family.

The trainer, the rollout and the Direct-Align code reach a family only through a `ModelAdapter`:
adding a family is one new adapter file plus its tiny test pipeline.
"""

from __future__ import annotations

from typing import Any, ClassVar, Protocol, runtime_checkable

import torch


@runtime_checkable
class ModelAdapter(Protocol):
    """What SRPO needs from a text-to-image flow-matching pipeline.

    Latents are always handled in the family's *transformer* layout (for FLUX: packed 2x2 patches,
    `[B, tokens, channels]`) and in the flow-matching convention `x_s = (1 - s) x0 + s eps`.
    """

    #: Short family name, e.g. `"flux"`.
    family: ClassVar[str]
    #: Attribute of the pipeline that holds the trainable denoiser.
    trainable_component: ClassVar[str]
    #: Module names a LoRA targets by default.
    default_lora_target_modules: ClassVar[list[str]]
    #: Whether each prompt comes with a reference image (image editing, e.g. FLUX.1 Kontext).
    requires_reference_image: ClassVar[bool]
    #: Whether the family edits a reference image when the dataset gives one and generates from text otherwise
    #: (FLUX.3): the trainer then sets `requires_reference_image` on the adapter from the dataset's columns.
    reference_image_optional: ClassVar[bool]
    #: The `SRPOConfig` field naming the dataset column of that image (`"dataset_control_image_column"` for Control).
    reference_image_column_field: ClassVar[str]
    #: What the reference image is to the rewards that read it (`Reward.conditions`): `"reference_images"` (an image
    #: to edit), `"control_images"` (an edge or depth map to follow) or `"source_images"` (the image Fill repaints).
    reference_role: ClassVar[str]
    #: Whether each prompt comes with a mask too (FLUX.1 Fill): `add_reference` then takes `masks`.
    uses_mask: ClassVar[bool]
    #: Whether the text encoder sees the reference image too (Qwen-Image-Edit): `encode_prompts` then takes the
    #: references, and the text conditioning is made per batch instead of cached per prompt.
    text_sees_reference: ClassVar[bool]
    #: Pipeline components (encoders and tokenizers) that make the text conditioning; they never train.
    text_components: ClassVar[tuple[str, ...]]
    #: `{"rollout": g, "train": g, "sample": g}`: the guidance `SRPOConfig`'s unset `*_guidance_scale` take.
    default_guidance: ClassVar[dict[str, float]]

    pipeline: Any
    #: Text tokens per prompt.
    max_sequence_length: int

    @property
    def latent_granularity(self) -> int:
        """Image height and width must be multiples of this many pixels."""

    def default_time_shift(self, height: int, width: int) -> float:
        """The family's time shift `k` for training at this resolution."""

    def rollout_sigmas(self, num_steps: int, height: int, width: int) -> torch.Tensor | None:
        """The family's own rollout grid (levels from 1 to 0, float32), or `None` for the shifted uniform grid of
        `direct_align.shifted_grid` at the training shift (every family but Qwen-Image 2.1, whose authors set it)."""

    def encode_prompts(
        self, prompts: list[str], device: torch.device, reference_images: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        """Text conditioning for `prompts`, computed without gradient; tensors with batch first. Only families
        whose text encoder sees the reference image (`text_sees_reference`) take `reference_images`."""

    def sample_noise(
        self, batch_size: int, height: int, width: int, generator: torch.Generator, device: torch.device
    ) -> torch.Tensor:
        """Standard normal noise `eps` in the transformer's latent layout (float32)."""

    def velocity(
        self,
        transformer: torch.nn.Module,
        latents: torch.Tensor,
        sigma: torch.Tensor,
        text: dict[str, torch.Tensor],
        guidance_scale: float,
        height: int,
        width: int,
        target: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The transformer's velocity `v ~ eps - x0` at per-sample levels `sigma` (`[B]`, in [0, 1]).

        `target` (`[B]`) is the level the step goes to. Only a flow map (a step-distilled model whose transformer
        takes the level it jumps to, FLUX.3 [klein] distilled) reads it; other families ignore it. Callers pass the
        next level in the rollout, the recovery level in Direct-Align's denoise branch, and the current level itself
        in the inversion branch (a step up, which a flow map never learned: its instantaneous velocity)."""

    def decode(self, latents: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """Decode latents to float32 images `[B, 3, H, W]` in [0, 1], differentiably."""

    @classmethod
    def pipeline_guidance_kwargs(cls, guidance_scale: float) -> dict:
        """Keyword arguments that make the family's stock pipeline apply the guidance `velocity` applies at
        `guidance_scale` (for `srpo-trl eval` and the model card's snippet)."""

    @classmethod
    def pipeline_condition_kwargs(cls, references: list, masks: list | None) -> dict:
        """Keyword arguments that give the family's stock pipeline a batch's reference images (PIL, at the output
        size) and, for Fill, masks (for `srpo-trl eval`)."""

    def configure(self, args) -> None:
        """Read the family's own settings from an `SRPOConfig` (the trainer calls it once; ControlNet's scale)."""

    def add_reference(
        self, conditioning: dict[str, torch.Tensor], reference_images: torch.Tensor, height: int, width: int, **extra
    ) -> dict[str, torch.Tensor]:
        """`conditioning` plus whatever `velocity` needs of the reference images (batch-first tensors). A family that
        `uses_mask` is also given `masks=` (`[B, 1, H, W]`, 1 where the image is repainted)."""

    def reference_image_size(self, height: int, width: int) -> tuple[int, int]:
        """`(height, width)` the data pipeline resizes reference images to, for `height x width` training images."""

    def cache_entry(self, row: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """What the text cache stores of one prompt's conditioning (a row of `encode_prompts`, batch dim dropped)."""

    def stack_entries(self, rows: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        """Cached rows as one batch of conditioning, as `encode_prompts` would have given it."""

    def encode_images(self, images: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """Clean latents `x0` of float images `[B, 3, H, W]` in [0, 1], without gradient (offline mode)."""

    def unused_modules(self) -> str | None:
        """A regular expression (full match) of the transformer's module names this run never calls (frozen, no LoRA),
        or `None`."""

    def save_lora_weights(self, output_dir: str, lora_state_dict: dict[str, torch.Tensor], lora_config) -> None:
        """Write LoRA weights and their `peft.LoraConfig` so that the family's stock diffusers pipeline's
        `load_lora_weights` rebuilds the trained model exactly."""


#: `init_lora_weights` values with which peft rewrites the frozen base weights as well (PiSSA, CorDA, OLoRA,
#: LoftQ, LoRA-GA): a LoRA saved on its own cannot rebuild such a model from the stock base.
BASE_CHANGING_LORA_INITS = ("pissa", "corda", "olora", "loftq", "lora_ga")


def check_lora_reloads(lora_config) -> None:
    """Fail when a LoRA trained with `lora_config` could not be reloaded as the trained model from the stock base."""
    init = getattr(lora_config, "init_lora_weights", True)
    if isinstance(init, str) and init.lower().startswith(BASE_CHANGING_LORA_INITS):
        raise ValueError(
            f"peft_config.init_lora_weights={init!r} changes the frozen base weights, so the saved LoRA would not "
            "reload as the trained model on the stock pipeline; use True, False, 'gaussian' or 'orthogonal'"
        )


def lora_adapter_metadata(lora_config) -> dict:
    """`lora_config` as the dict diffusers stores beside the LoRA weights and rebuilds a `LoraConfig` from.

    Without it, `load_lora_weights` infers a config from the tensors alone: `lora_alpha = r`, no rsLoRA, so
    any LoRA with another scale reloads as a different model. `lora_dropout` is written as 0: the modules
    `load_lora_weights` adds stay in training mode even in an eval-mode pipeline, so a saved dropout would
    make inference random; without dropout the loaded model is the trained one in eval mode.
    """
    metadata = lora_config.to_dict()
    metadata["lora_dropout"] = 0.0
    # diffusers injects the LoRA where the saved weights are: modules excluded in training (FLUX.3's unused reference
    # mode) have none, and an `exclude_modules` left in the config only makes peft warn that it excluded nothing.
    metadata["exclude_modules"] = None
    return metadata


#: The attention projections of the FLUX families' double-stream (joint text-image) blocks, image and text side.
JOINT_ATTENTION_LORA_TARGETS = [
    "attn.to_q",
    "attn.to_k",
    "attn.to_v",
    "attn.to_out.0",
    "attn.add_q_proj",
    "attn.add_k_proj",
    "attn.add_v_proj",
    "attn.to_add_out",
]


class AdapterBase:
    """What the FLUX-family adapters share: sizes read once from the pipeline, the guidance input, the
    no-op reference hook of text-to-image families, LoRA saving and the VAE's images mapped to [0, 1]."""

    requires_reference_image: ClassVar[bool] = False
    reference_image_optional: ClassVar[bool] = False
    #: The `SRPOConfig` field naming the dataset column of the conditioning image (Control: the control image's).
    reference_image_column_field: ClassVar[str] = "dataset_reference_image_column"
    reference_role: ClassVar[str] = "reference_images"
    uses_mask: ClassVar[bool] = False
    #: The Hub tag the model card gives the family (every FLUX is `flux`).
    hub_tag: ClassVar[str] = "flux"
    #: A video family (Wan): `decode` gives `[B, F, 3, H, W]` and image rewards score frames (`FrameReward`).
    is_video: ClassVar[bool] = False
    text_sees_reference: ClassVar[bool] = False
    #: The guidance of the rollout, of the two training calls and of the logged samples when `SRPOConfig` leaves
    #: them unset: for FLUX, the recipe's distilled-guidance inputs (1.0 in the rollout, 3.5 in training) and
    #: FLUX.1-dev's inference default (3.5).
    default_guidance: ClassVar[dict[str, float]] = {"rollout": 1.0, "train": 3.5, "sample": 3.5}

    def __init__(self, pipeline, max_sequence_length: int = 512):
        self.pipeline = pipeline
        self.max_sequence_length = max_sequence_length
        self.vae_scale_factor = 2 ** (len(pipeline.vae.config.block_out_channels) - 1)
        self.latent_channels = pipeline.vae.config.latent_channels
        # Read once: the transformer may later be wrapped (DDP, FSDP, peft) and hide its config. Families without a
        # guidance embedding (Chroma, FLUX.3) have no such config field.
        self.guidance_embeds = bool(getattr(pipeline.transformer.config, "guidance_embeds", False))
        self._positions: dict[tuple, torch.Tensor] = {}  # built once per size, not once per rollout step

    @property
    def latent_granularity(self) -> int:
        return self.vae_scale_factor * 2

    def guidance(self, batch: int, guidance_scale: float, device: torch.device) -> torch.Tensor | None:
        """The guidance input of guidance-distilled transformers (`[batch]`), `None` for the others."""
        if not self.guidance_embeds:
            return None
        return torch.full((batch,), guidance_scale, device=device, dtype=torch.float32)

    @classmethod
    def pipeline_guidance_kwargs(cls, guidance_scale: float) -> dict:
        """Arguments that give the stock pipeline the guidance `velocity` applies at `guidance_scale`: the FLUX
        families' `guidance_scale` (an input of guidance-distilled models)."""
        return {"guidance_scale": guidance_scale}

    @classmethod
    def pipeline_condition_kwargs(cls, references: list, masks: list | None) -> dict:
        """The stock pipeline's arguments for a batch's reference images and masks: `image=` (the image to edit or
        repaint) with `mask_image=`; nothing for text-to-image families."""
        kwargs = {"image": references} if cls.requires_reference_image else {}
        if masks is not None:
            kwargs["mask_image"] = masks
        return kwargs

    def cache_entry(self, row: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """What the text cache stores of one prompt's conditioning (one row of `encode_prompts`): all of it."""
        return row

    def stack_entries(self, rows: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        """Cached rows as one batch: stacked (the FLUX families' rows all have one shape)."""
        return {k: torch.stack([row[k] for row in rows]) for k in rows[0]}

    def reference_image_size(self, height: int, width: int) -> tuple[int, int]:
        """Size the data pipeline gives the reference images of `height x width` training images: the same."""
        return height, width

    def unused_modules(self) -> str | None:
        """A regular expression (full match) of the transformer's module names that this run never calls, whose weights
        therefore stay frozen and carry no LoRA; `None` when every module is used."""
        return None

    def configure(self, args) -> None:
        """Family settings from the `SRPOConfig`: the FLUX families have none besides the common ones."""

    def rollout_sigmas(self, num_steps: int, height: int, width: int) -> torch.Tensor | None:
        """No grid of the family's own: the rollout uses the shifted uniform grid."""
        return None

    def reward_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """The part of the recovered latents the training step decodes for the rewards: all of it (a video family
        may decode fewer frames, see `SRPOConfig.decode_latent_frames`)."""
        return latents

    def add_reference(self, conditioning, reference_images, height, width, **extra):
        """Conditioning with the reference images added; text-to-image families have none."""
        return conditioning

    def save_lora_weights(self, output_dir, lora_state_dict, lora_config) -> None:
        """Write `pytorch_lora_weights.safetensors` with the LoRA's config in its metadata (see
        [`lora_adapter_metadata`])."""
        type(self.pipeline).save_lora_weights(
            output_dir,
            transformer_lora_layers=lora_state_dict,
            transformer_lora_adapter_metadata=lora_adapter_metadata(lora_config),
        )

    @staticmethod
    def to_unit_images(images: torch.Tensor) -> torch.Tensor:
        """The VAE's images in [-1, 1] as float32 in [0, 1]."""
        return (images.float() / 2 + 0.5).clamp(0, 1)
