"""FLUX.1 ControlNet adapter: `diffusers.FluxControlNetPipeline` and its Img2Img / Inpaint variants.

A ControlNet is a second, smaller FLUX.1 transformer (`FluxControlNetModel`) that reads the noisy latents, the text and
a control image (an edge, depth or pose map) and returns one residual per block of the base transformer; the base
transformer adds them, times `controlnet_conditioning_scale`, after its double- and single-stream blocks. Several
ControlNets (`FluxMultiControlNetModel`) each read their own control image and their residuals are summed.

In SRPO the base transformer trains (LoRA or full) and the ControlNet stays frozen: it runs without gradient in its
own dtype (the latents it reads carry no gradient and nothing in it trains), and its residuals enter the transformer as
constants. The control image is conditioning, like the text: the dataset gives one per prompt
(`dataset_control_image_column`), it is prepared once per batch as the stock pipeline prepares it (the VAE latents of
the image in [-1, 1], packed as the generated ones; the pixels themselves for XLabs-style nets, which have a hint
block), and every ControlNet of a multi-ControlNet reads that same image. The scale is `SRPOConfig`'s
`controlnet_conditioning_scale`: one value for all nets, or one per net. The ControlNet acts at every step, as the
stock pipeline's default `control_guidance_start=0, control_guidance_end=1` has it.

The control latents are the VAE posterior's mean; the stock pipeline draws one sample of the posterior per call. The
mean is that sample's expectation, and deterministic, so the same control image always conditions training the same
way (see `flux_control`).

A union ControlNet (`num_mode` set: one net for several kinds of control image) also needs the kind of its image, the
stock pipeline's `control_mode`. The adapter takes it as `control_mode` (an int, or one per net) from
`SRPOConfig.controlnet_control_mode`; a union net without its mode is refused before training.
"""

from __future__ import annotations

import functools
from typing import ClassVar

import torch

from .flux import FluxAdapter


class FluxControlNetAdapter(FluxAdapter):
    """Adapter for `FluxControlNetPipeline`: the FLUX.1 transformer trains, with the frozen ControlNet's residuals."""

    family: ClassVar[str] = "flux-controlnet"
    requires_reference_image: ClassVar[bool] = True
    reference_image_column_field: ClassVar[str] = "dataset_control_image_column"
    reference_role: ClassVar[str] = "control_images"

    def __init__(self, pipeline, max_sequence_length: int = 512):
        super().__init__(pipeline, max_sequence_length)
        controlnet = pipeline.controlnet
        # Read once, like the transformer's config: a FluxMultiControlNetModel holds its nets in `nets`.
        self.nets = list(getattr(controlnet, "nets", [controlnet]))
        self.multi = hasattr(controlnet, "nets")
        first = self.nets[0]
        # As the stock pipeline: the first net decides for all whether the control image goes in as pixels (XLabs nets,
        # with a hint block; their residuals also repeat over the transformer's blocks) or as packed VAE latents.
        self.reads_pixels = first.input_hint_block is not None
        self.controlnet_guidance = bool(first.config.guidance_embeds)
        self.union = [net.config.num_mode is not None for net in self.nets]
        #: One scale per call of a net: `SRPOConfig.controlnet_conditioning_scale`, broadcast when it has one value.
        self.conditioning_scale: list[float] = [1.0] * self._calls
        #: A union ControlNet's mode (the kind of control image), one per call of a net; `None` for the other nets.
        self.control_mode: list[int | None] | None = None

    @property
    def _calls(self) -> int:
        """Net calls per step: one per net (a multi-ControlNet of one net is called once too)."""
        return len(self.nets)

    def configure(self, args) -> None:
        """The ControlNet's conditioning scale(s) from `args.controlnet_conditioning_scale`, and a union net's control
        mode from `args.controlnet_control_mode`."""
        scales = [float(v) for v in args.controlnet_conditioning_scale]
        if len(scales) == 1:
            scales = scales * self._calls
        if len(scales) != self._calls:
            raise ValueError(
                f"controlnet_conditioning_scale: {len(scales)} values for {self._calls} ControlNets; give one value "
                "for all, or one per ControlNet"
            )
        self.conditioning_scale = scales
        if args.controlnet_control_mode is not None:
            self.set_control_mode(args.controlnet_control_mode)
        self._check_union()

    def set_control_mode(self, mode) -> None:
        """A union ControlNet's mode: one int for every net, or a list with one entry (`None` for a non-union net)
        per ControlNet."""
        modes = list(mode) if isinstance(mode, (list, tuple)) else [mode] * self._calls
        if len(modes) != self._calls or not all(m is None or isinstance(m, int) for m in modes):
            raise ValueError(f"control_mode: expected an int or {self._calls} ints (or None), got {mode!r}")
        self.control_mode = modes

    def _check_union(self) -> None:
        for i, union in enumerate(self.union):
            if union and (self.control_mode is None or self.control_mode[i] is None):
                raise ValueError(
                    f"ControlNet {i} is a union ControlNet (num_mode={self.nets[i].config.num_mode}): it needs the "
                    "kind of its control image (the stock pipeline's `control_mode`): set "
                    "SRPOConfig.controlnet_control_mode (one value, or one per ControlNet)"
                )

    @classmethod
    def pipeline_condition_kwargs(cls, references, masks):
        """The stock pipeline takes the map as `control_image=` (one image shared by every net of a multi-ControlNet:
        given as a list of the same batch per net)."""
        return {"control_image": references}

    @torch.no_grad()
    def add_reference(self, conditioning, reference_images, height, width):
        """Conditioning plus the control images as the ControlNet reads them, at the training size: packed VAE
        latents (`[B, tokens, C]`, float32) or, for nets with a hint block, the pixels in [-1, 1] (`[B, 3, H, W]`)."""
        if self.reads_pixels:
            control = (reference_images.float() * 2 - 1).to(self.pipeline.vae.device)
        else:
            control = self.encode_images(reference_images, height, width)
        return {**conditioning, "controlnet_cond": control}

    def velocity(self, transformer, latents, sigma, text, guidance_scale, height, width, target=None) -> torch.Tensor:
        control = text.get("controlnet_cond")
        if control is None:
            raise ValueError("FluxControlNetAdapter.velocity: the conditioning has no control image")
        lh, lw = self._latent_size(height, width)
        image_ids = self._image_ids(lh, lw, latents.device)
        blocks, single_blocks = self._residuals(latents, sigma, text, control, image_ids, guidance_scale)
        with_residuals = functools.partial(
            transformer,
            controlnet_block_samples=blocks,
            controlnet_single_block_samples=single_blocks,
            controlnet_blocks_repeat=self.reads_pixels,
        )
        return self._call_transformer(with_residuals, latents, image_ids, sigma, text, guidance_scale)

    @torch.no_grad()
    def _residuals(self, latents, sigma, text, control, image_ids, guidance_scale):
        """The frozen ControlNet's block residuals, already scaled, in the transformer's dtype."""
        self._check_union()
        controlnet = self.pipeline.controlnet
        dtype = controlnet.dtype
        batch, device = latents.shape[0], latents.device
        guidance = None
        if self.controlnet_guidance:
            guidance = torch.full((batch,), guidance_scale, device=device, dtype=torch.float32)
        modes = [
            None if m is None else torch.full((batch,), m, device=device, dtype=torch.long)
            for m in (self.control_mode or [None] * self._calls)
        ]
        inputs = dict(
            hidden_states=latents.to(dtype),
            timestep=sigma.to(device),
            guidance=guidance,
            pooled_projections=text["pooled_prompt_embeds"].to(dtype),
            encoder_hidden_states=text["prompt_embeds"].to(dtype),
            txt_ids=text["text_ids"][0],
            img_ids=image_ids,
            return_dict=False,
        )
        control = control.to(device, dtype)
        if self.multi:  # the stock multi-ControlNet: a mode tensor per net, -1 where a net has none
            modes = [torch.full((batch,), -1, device=device, dtype=torch.long) if m is None else m for m in modes]
            blocks, single_blocks = controlnet(
                controlnet_cond=[control] * self._calls,
                controlnet_mode=modes,
                conditioning_scale=self.conditioning_scale,
                **inputs,
            )
        else:
            mode = None if modes[0] is None else modes[0][:, None]
            blocks, single_blocks = controlnet(
                controlnet_cond=control, controlnet_mode=mode, conditioning_scale=self.conditioning_scale[0], **inputs
            )
        out_dtype = self.pipeline.transformer.dtype  # fp32 when fully fine-tuned on a bf16 pipeline
        return (
            None if blocks is None else [b.to(out_dtype) for b in blocks],
            None if single_blocks is None else [b.to(out_dtype) for b in single_blocks],
        )
