"""Model adapters, one file per diffusion family, and the table of pipeline classes they serve.

A family is what the denoiser needs (its transformer, text encoding, latent layout, guidance, extra inputs); the
pipeline class only says which family a user has. So each supported class is one row of `PIPELINES`: the adapter,
and the family's own pipeline that the rollout reproduces and `srpo-trl eval` samples with. Variants that load the
same weights (Img2Img, Inpaint, KV) and diffusers' modular pipelines are rows too, and every other diffusers class
named like a family we know is refused with the reason and what to use instead (`REFUSED`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .base import ModelAdapter
from .chroma import ChromaAdapter
from .flux import FluxAdapter
from .flux2 import Flux2Adapter
from .flux3 import Flux3Adapter
from .flux_control import FluxControlAdapter
from .flux_controlnet import FluxControlNetAdapter
from .flux_fill import FluxFillAdapter
from .flux_kontext import FluxKontextAdapter
from .qwen_image import QwenImageAdapter
from .qwen_image21 import QwenImage21Adapter
from .qwen_image_edit import QwenImageEditAdapter, QwenImageEditPlusAdapter
from .sd3 import SD3Adapter
from .wan import WanAdapter
from .z_image import ZImageAdapter


@dataclass(frozen=True)
class PipelineSupport:
    """How srpo-trl trains the transformer of one diffusers pipeline class."""

    adapter: type
    #: The family's own pipeline (text-to-image, or Kontext's editing): what our rollout reproduces, and what
    #: `srpo-trl eval` samples with (`from_pipe`, sharing the components), with `sampler_config` set.
    sampler: str
    sampler_config: dict = field(default_factory=dict)
    #: The class's own inputs besides the prompt, as the model card's snippet passes them.
    inputs: tuple[str, ...] = ()
    #: Whether the class's `__call__` takes the family's guidance keywords.
    takes_guidance: bool = True
    #: A diffusers `ModularPipeline` (loaded with `ModularPipeline.from_pretrained`, called with `output="images"`).
    modular: bool = False


_IMAGE = 'image=load_image("input.png"),  # the image to start from'
_MASK = 'mask_image=load_image("mask.png"),  # white where the image is repainted'
_CONTROL = 'control_image=load_image("control.png"),  # the edge or depth map to follow'

PIPELINES: dict[str, PipelineSupport] = {
    # FLUX.1 and the variants that load its weights: trained as the text-to-image family.
    "FluxPipeline": PipelineSupport(FluxAdapter, "FluxPipeline"),
    "FluxImg2ImgPipeline": PipelineSupport(FluxAdapter, "FluxPipeline", inputs=(_IMAGE, "strength=0.8,")),
    "FluxInpaintPipeline": PipelineSupport(FluxAdapter, "FluxPipeline", inputs=(_IMAGE, _MASK, "strength=0.8,")),
    # FLUX.1 Kontext: trained as the editing family (a reference image per prompt).
    "FluxKontextPipeline": PipelineSupport(FluxKontextAdapter, "FluxKontextPipeline"),
    "FluxKontextInpaintPipeline": PipelineSupport(
        FluxKontextAdapter, "FluxKontextPipeline", inputs=(_IMAGE, _MASK, "strength=1.0,")
    ),
    # FLUX.1 Canny / Depth Control: the control image's latents beside the noisy ones on the channel axis.
    "FluxControlPipeline": PipelineSupport(FluxControlAdapter, "FluxControlPipeline", inputs=(_CONTROL,)),
    "FluxControlImg2ImgPipeline": PipelineSupport(
        FluxControlAdapter, "FluxControlPipeline", inputs=(_IMAGE, _CONTROL, "strength=0.8,")
    ),
    "FluxControlInpaintPipeline": PipelineSupport(
        FluxControlAdapter, "FluxControlPipeline", inputs=(_IMAGE, _MASK, _CONTROL, "strength=0.8,")
    ),
    # FLUX.1 Fill: the masked image's latents and the mask beside the noisy latents on the channel axis.
    "FluxFillPipeline": PipelineSupport(FluxFillAdapter, "FluxFillPipeline", inputs=(_IMAGE, _MASK)),
    # FLUX.1 ControlNets (one, or several as FluxMultiControlNetModel): a frozen ControlNet's residuals in the blocks.
    "FluxControlNetPipeline": PipelineSupport(FluxControlNetAdapter, "FluxControlNetPipeline", inputs=(_CONTROL,)),
    "FluxControlNetImg2ImgPipeline": PipelineSupport(
        FluxControlNetAdapter, "FluxControlNetPipeline", inputs=(_IMAGE, _CONTROL, "strength=0.8,")
    ),
    "FluxControlNetInpaintPipeline": PipelineSupport(
        FluxControlNetAdapter, "FluxControlNetPipeline", inputs=(_IMAGE, _MASK, _CONTROL, "strength=0.8,")
    ),
    # FLUX.2 [dev] and [klein] (base and distilled), and the [klein] variants.
    "Flux2Pipeline": PipelineSupport(Flux2Adapter, "Flux2Pipeline"),
    "Flux2KleinPipeline": PipelineSupport(Flux2Adapter, "Flux2KleinPipeline"),
    "Flux2KleinInpaintPipeline": PipelineSupport(
        Flux2Adapter, "Flux2KleinPipeline", inputs=(_IMAGE, _MASK, "strength=0.8,")
    ),
    # The KV-cached [klein] is step-distilled and takes no guidance; sampled as the distilled [klein].
    "Flux2KleinKVPipeline": PipelineSupport(
        Flux2Adapter, "Flux2KleinPipeline", sampler_config={"is_distilled": True}, takes_guidance=False
    ),
    # diffusers' modular pipelines of those families: the adapter reads the classic `sampler` pipeline built over the
    # modular pipeline's own components (`srpo_trl.modular.classic_view`).
    "FluxModularPipeline": PipelineSupport(FluxAdapter, "FluxPipeline", modular=True),
    "FluxKontextModularPipeline": PipelineSupport(FluxKontextAdapter, "FluxKontextPipeline", modular=True),
    "Flux2ModularPipeline": PipelineSupport(Flux2Adapter, "Flux2Pipeline", modular=True),
    "Flux2KleinModularPipeline": PipelineSupport(
        Flux2Adapter, "Flux2KleinPipeline", sampler_config={"is_distilled": True}, modular=True
    ),
    "Flux2KleinBaseModularPipeline": PipelineSupport(
        Flux2Adapter, "Flux2KleinPipeline", sampler_config={"is_distilled": False}, modular=True
    ),
    # FLUX.3 [klein], base and step-distilled (a flow map): diffusers ships it only as a modular pipeline, which its
    # adapter reads directly.
    "Flux3ModularPipeline": PipelineSupport(Flux3Adapter, "Flux3ModularPipeline", modular=True),
    "Flux3DistilledModularPipeline": PipelineSupport(Flux3Adapter, "Flux3DistilledModularPipeline", modular=True),
    # Chroma (Chroma1-HD) and its variants: real classifier-free guidance with a negative prompt.
    "ChromaPipeline": PipelineSupport(ChromaAdapter, "ChromaPipeline"),
    "ChromaImg2ImgPipeline": PipelineSupport(ChromaAdapter, "ChromaPipeline", inputs=(_IMAGE, "strength=0.8,")),
    "ChromaInpaintPipeline": PipelineSupport(ChromaAdapter, "ChromaPipeline", inputs=(_IMAGE, _MASK, "strength=0.8,")),
    # Qwen-Image and its editing models.
    "QwenImagePipeline": PipelineSupport(QwenImageAdapter, "QwenImagePipeline"),
    "QwenImageEditPipeline": PipelineSupport(QwenImageEditAdapter, "QwenImageEditPipeline"),
    "QwenImageEditPlusPipeline": PipelineSupport(QwenImageEditPlusAdapter, "QwenImageEditPlusPipeline"),
    # Qwen-Image 2.1: text-to-image on the authors' sigma grid.
    "QwenImage21Pipeline": PipelineSupport(QwenImage21Adapter, "QwenImage21Pipeline"),
    # Z-Image (Turbo and Base) and its variants, trained as the text-to-image family.
    "ZImagePipeline": PipelineSupport(ZImageAdapter, "ZImagePipeline"),
    "ZImageImg2ImgPipeline": PipelineSupport(ZImageAdapter, "ZImagePipeline", inputs=(_IMAGE, "strength=0.6,")),
    "ZImageInpaintPipeline": PipelineSupport(ZImageAdapter, "ZImagePipeline", inputs=(_IMAGE, _MASK, "strength=0.8,")),
    # Stable Diffusion 3 / 3.5 (Large, Medium, Large Turbo) and its variants: three text encoders, real CFG.
    "StableDiffusion3Pipeline": PipelineSupport(SD3Adapter, "StableDiffusion3Pipeline"),
    "StableDiffusion3Img2ImgPipeline": PipelineSupport(
        SD3Adapter, "StableDiffusion3Pipeline", inputs=(_IMAGE, "strength=0.6,")
    ),
    "StableDiffusion3InpaintPipeline": PipelineSupport(
        SD3Adapter, "StableDiffusion3Pipeline", inputs=(_IMAGE, _MASK, "strength=0.6,")
    ),
    # Wan 2.1 / 2.2 text-to-video (2.2 A14B: two experts; TI2V-5B).
    "WanPipeline": PipelineSupport(WanAdapter, "WanPipeline"),
}

#: Pipeline class name -> adapter class. Subclasses of a listed pipeline use the same adapter.
ADAPTERS: dict[str, type] = {name: support.adapter for name, support in PIPELINES.items()}

#: Pipeline classes named like a family srpo-trl knows that it does not train, with the reason and what to use.
REFUSED: dict[str, str] = {
    "FluxPriorReduxPipeline": "it makes image-prompt embeddings for FluxPipeline and denoises nothing, so there is "
    "nothing in it to train; train the FluxPipeline it feeds",
}


def pipeline_support(pipeline_class: type) -> PipelineSupport:
    """The row of `PIPELINES` for a pipeline class, matched on the class or any of its base classes; a refused or
    unknown class fails with the reason and what would be valid."""
    for cls in pipeline_class.__mro__:
        if cls.__name__ in PIPELINES:
            return PIPELINES[cls.__name__]
    name = pipeline_class.__name__
    if name in REFUSED:
        raise ValueError(f"model: {name} is not supported: {REFUSED[name]}")
    raise ValueError(f"model: unsupported pipeline class {name!r}; supported: {sorted(PIPELINES)}")


def adapter_class(pipeline_class: type) -> type:
    """The adapter class for a pipeline class (see [`pipeline_support`])."""
    return pipeline_support(pipeline_class).adapter


def sampling_pipeline(pipeline):
    """The family's own pipeline over `pipeline`'s components (itself when it is that class): what `srpo-trl eval`
    samples with and what the adapter reads, so that a variant (Img2Img, Inpaint, KV) or a modular pipeline of a family
    with a classic one is treated as the text-to-image model it holds."""
    import diffusers

    from ..modular import classic_view, is_modular

    support = pipeline_support(type(pipeline))
    sampler = getattr(diffusers, support.sampler)
    if isinstance(pipeline, sampler) and not support.sampler_config:
        return pipeline
    if is_modular(pipeline):
        return classic_view(pipeline, support.sampler, support.sampler_config)
    return sampler.from_pipe(pipeline, **support.sampler_config)


def check_model_index(path: str) -> None:
    """Fail before loading any weights when a local pipeline folder's `model_index.json` names an unsupported class."""
    import json
    import os

    index = os.path.join(path, "model_index.json")
    if not os.path.isfile(index):
        index = os.path.join(path, "modular_model_index.json")  # a modular pipeline's
    if not os.path.isfile(index):
        return
    with open(index) as f:
        name = json.load(f).get("_class_name", "")
    import diffusers

    pipeline_class = getattr(diffusers, name, None)
    if pipeline_class is None:
        raise ValueError(
            f"model: {path!r} holds a {name!r}, which diffusers does not know; supported: {sorted(ADAPTERS)}"
        )
    adapter_class(pipeline_class)


def get_adapter(pipeline, **kwargs) -> ModelAdapter:
    """The adapter for `pipeline`, matched on its class or any of its base classes. A modular pipeline of a family that
    has a classic pipeline is read through that classic pipeline over the same components."""
    support = pipeline_support(type(pipeline))
    if support.modular and support.sampler != type(pipeline).__name__:
        pipeline = sampling_pipeline(pipeline)
    return support.adapter(pipeline, **kwargs)


__all__ = [
    "ADAPTERS",
    "ChromaAdapter",
    "PIPELINES",
    "REFUSED",
    "PipelineSupport",
    "Flux2Adapter",
    "FluxControlAdapter",
    "FluxControlNetAdapter",
    "FluxFillAdapter",
    "Flux3Adapter",
    "FluxAdapter",
    "FluxKontextAdapter",
    "ModelAdapter",
    "QwenImageAdapter",
    "QwenImageEditAdapter",
    "QwenImageEditPlusAdapter",
    "QwenImage21Adapter",
    "SD3Adapter",
    "WanAdapter",
    "ZImageAdapter",
    "adapter_class",
    "check_model_index",
    "get_adapter",
    "pipeline_support",
    "sampling_pipeline",
]
