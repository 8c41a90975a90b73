"""Qwen-Image-Edit adapters: `diffusers.QwenImageEditPipeline` (Qwen-Image-Edit) and `QwenImageEditPlusPipeline`
(Qwen-Image-Edit-2509 and -2511, one reference per prompt).

The reference is handled as Kontext's is: its VAE latents, packed like the generated ones, are appended to the
image tokens (the transformer tells them apart by their place in `img_shapes`, which gives them the second frame
index of its 3-D rotary positions), and the transformer's output for them is dropped. Only the generated image
is noised, stepped, recovered and rewarded; the reference is conditioning, like the text.

One thing differs from Kontext: Qwen-Image-Edit's text encoder, Qwen2.5-VL, *sees the reference image* (the
prompt template holds an image placeholder), so the text conditioning depends on the reference and is made per
batch (`text_sees_reference`): it cannot be cached per prompt, and the text encoder stays on the accelerator.
The negative prompt of true CFG is encoded with the reference image as well, as the stock pipeline does.

As the stock pipelines, the reference is resized (with Lanczos, as their image processor) to a 1024 x 1024-pixel
area at its own aspect ratio (sides multiples of 32) for the VAE, whatever the generated image's size, and for
the text encoder to the same (Qwen-Image-Edit) or to a 384 x 384-pixel area (2509, 2511).
"""

from __future__ import annotations

import math
from typing import ClassVar

import numpy as np
import torch

from .qwen_image import QwenImageAdapter, padded_batch

#: The pixel area the stock pipelines resize the reference image to for the VAE.
REFERENCE_AREA = 1024 * 1024
#: The pixel area QwenImageEditPlusPipeline resizes it to for the text encoder.
CONDITION_AREA = 384 * 384


def reference_size(height: int, width: int, area: int = REFERENCE_AREA) -> tuple[int, int]:
    """`(height, width)` of the reference after the stock pipeline's resize: `area` pixels at the reference's aspect
    ratio, each side rounded to a multiple of 32 (diffusers' `calculate_dimensions`)."""
    ratio = width / height
    new_width = math.sqrt(area * ratio)
    new_height = new_width / ratio
    return round(new_height / 32) * 32, round(new_width / 32) * 32


def to_pil(images: torch.Tensor) -> list:
    """Float images `[B, 3, H, W]` in [0, 1] as PIL images (rounded to 8 bits, as an image file holds them)."""
    from PIL import Image

    pixels = (images.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    return [Image.fromarray(np.ascontiguousarray(p)) for p in pixels]


def from_pil(images: list, device: torch.device) -> torch.Tensor:
    """PIL images as float images `[B, 3, H, W]` in [0, 1] on `device`."""
    pixels = np.stack([np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0 for image in images])
    return torch.from_numpy(pixels).permute(0, 3, 1, 2).contiguous().to(device)


def resized_references(reference_images: torch.Tensor, area: int) -> list:
    """The references as PIL images at `area` pixels (their aspect ratio, sides multiples of 32), resized with
    Lanczos as the stock pipelines' image processor resizes them (they are conditioning: no gradient is needed)."""
    from PIL import Image

    height, width = reference_size(*reference_images.shape[-2:], area=area)
    images = to_pil(reference_images)
    if images[0].size == (width, height):
        return images
    return [image.resize((width, height), resample=Image.LANCZOS) for image in images]


class QwenImageEditAdapter(QwenImageAdapter):
    """Adapter for `QwenImageEditPipeline` (Qwen-Image-Edit)."""

    family: ClassVar[str] = "qwen-image-edit"
    requires_reference_image: ClassVar[bool] = True
    text_sees_reference: ClassVar[bool] = True
    text_components: ClassVar[tuple[str, ...]] = ("text_encoder", "tokenizer", "processor")
    #: The reference's pixel area for the VAE (the stock pipeline's, fixed in its code; the tests shrink it).
    reference_area: int = REFERENCE_AREA

    @property
    def condition_area(self) -> int:
        """The reference's pixel area for the text encoder: Qwen-Image-Edit shows it the VAE's image."""
        return self.reference_area

    def reference_image_size(self, height: int, width: int) -> tuple[int, int]:
        """The stock pipeline's reference size for the training images' aspect ratio: the data pipeline resizes
        the references straight to it (not to the training size and up again)."""
        return reference_size(height, width, area=self.reference_area)

    def _encode_with_images(self, prompts: list[str], images: list, device) -> dict[str, torch.Tensor]:
        """`_encode`'s output for `prompts`, each encoded with its own image."""
        return self._encode(prompts, device, image=images)

    @torch.no_grad()
    def encode_prompts(self, prompts, device, reference_images: torch.Tensor | None = None):
        """The prompts and the negative prompt, each encoded with its row's reference image (batch-first)."""
        if reference_images is None:
            raise ValueError(f"{type(self).__name__}.encode_prompts: the text encoder needs the reference images")
        images = resized_references(reference_images, self.condition_area)
        negative = [self.negative_prompt] * len(prompts)
        return {
            **self._named("prompt", self._encode_with_images(list(prompts), images, device)),
            **self._named("negative_prompt", self._encode_with_images(negative, images, device)),
        }

    @torch.no_grad()
    def add_reference(self, conditioning, reference_images, height, width):
        """Conditioning plus the references' packed latents (`[B, tokens, C]`) and their token grid (`[B, 2]`)."""
        references = reference_images
        if tuple(references.shape[-2:]) != reference_size(*references.shape[-2:], area=self.reference_area):
            # Not the size the data pipeline gives (`reference_image_size`): resized as the stock pipeline does. At
            # that size the tensor is used as it is, without a round trip through the host every step.
            references = from_pil(resized_references(references, self.reference_area), references.device)
        ref_height, ref_width = references.shape[-2:]
        latents = self.encode_images(references, ref_height, ref_width)
        rows, cols = ref_height // self.latent_granularity, ref_width // self.latent_granularity
        grid = torch.tensor([rows, cols], device=latents.device).expand(latents.shape[0], 2)
        return {**conditioning, "reference_latents": latents, "reference_grid": grid}

    def velocity(self, transformer, latents, sigma, text, guidance_scale, height, width, target=None) -> torch.Tensor:
        reference = text.get("reference_latents")
        if reference is None:
            raise ValueError(f"{type(self).__name__}.velocity: the conditioning has no reference image latents")
        rows, cols = (int(n) for n in text["reference_grid"][0])
        lh, lw = self._latent_size(height, width)
        img_shapes = [[(1, lh // 2, lw // 2), (1, rows, cols)]] * latents.shape[0]
        hidden_states = torch.cat([latents, reference.to(latents.dtype)], dim=1)
        return self._guided_velocity(
            transformer, hidden_states, sigma, text, guidance_scale, img_shapes, latents.shape[1]
        )


class QwenImageEditPlusAdapter(QwenImageEditAdapter):
    """Adapter for `QwenImageEditPlusPipeline` (Qwen-Image-Edit-2509 and -2511), with one reference per prompt.

    What changes against Qwen-Image-Edit: the text encoder sees the reference at a 384 x 384-pixel area (the VAE
    still at 1024 x 1024), introduced as "Picture 1" by the pipeline's template; and the stock pipeline encodes
    one prompt at a time, so each prompt is encoded on its own here and the batch padded to its longest.
    Qwen-Image-Edit-2511's `zero_cond_t` transformer (the reference tokens at timestep 0) needs nothing more: the
    transformer reads it from `img_shapes`.
    """

    family: ClassVar[str] = "qwen-image-edit-plus"
    #: The reference's pixel area for the text encoder (the stock pipeline's `CONDITION_IMAGE_SIZE`).
    plus_condition_area: int = CONDITION_AREA

    @property
    def condition_area(self) -> int:
        return self.plus_condition_area

    def _encode_with_images(self, prompts, images, device):
        rows = [self._encode([prompt], device, image=[image])["embeds"][0] for prompt, image in zip(prompts, images)]
        return padded_batch(rows)
