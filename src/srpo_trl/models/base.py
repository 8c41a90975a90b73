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
    #: Pipeline components (encoders and tokenizers) that make the text conditioning; they never train.
    text_components: ClassVar[tuple[str, ...]]

    pipeline: Any
    #: Text tokens per prompt.
    max_sequence_length: int

    @property
    def latent_granularity(self) -> int:
        """Image height and width must be multiples of this many pixels."""

    def default_time_shift(self, height: int, width: int) -> float:
        """The family's time shift `k` for training at this resolution."""

    def encode_prompts(self, prompts: list[str], device: torch.device) -> dict[str, torch.Tensor]:
        """Text conditioning for `prompts`, computed without gradient; tensors with batch first."""

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
    ) -> torch.Tensor:
        """The transformer's velocity `v ~ eps - x0` at per-sample levels `sigma` (`[B]`, in [0, 1])."""

    def decode(self, latents: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """Decode latents to float32 images `[B, 3, H, W]` in [0, 1], differentiably."""

    def add_reference(
        self, conditioning: dict[str, torch.Tensor], reference_images: torch.Tensor, height: int, width: int
    ) -> dict[str, torch.Tensor]:
        """`conditioning` plus whatever `velocity` needs of the reference images (batch-first tensors)."""

    def encode_images(self, images: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """Clean latents `x0` of float images `[B, 3, H, W]` in [0, 1], without gradient (offline mode)."""

    def save_lora_weights(self, output_dir: str, lora_state_dict: dict[str, torch.Tensor]) -> None:
        """Write LoRA weights that the family's stock diffusers pipeline loads with `load_lora_weights`."""
