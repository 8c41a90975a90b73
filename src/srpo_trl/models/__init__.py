"""Model adapters: one file per diffusion family, chosen from the pipeline class."""

from __future__ import annotations

from .base import ModelAdapter
from .flux import FluxAdapter
from .flux2 import Flux2Adapter
from .flux_kontext import FluxKontextAdapter
from .qwen_image import QwenImageAdapter
from .qwen_image_edit import QwenImageEditAdapter, QwenImageEditPlusAdapter

# Pipeline class name -> adapter class. Subclasses of a listed pipeline use the same adapter.
ADAPTERS: dict[str, type] = {
    "FluxPipeline": FluxAdapter,
    "FluxKontextPipeline": FluxKontextAdapter,
    "Flux2Pipeline": Flux2Adapter,
    "Flux2KleinPipeline": Flux2Adapter,
    "QwenImagePipeline": QwenImageAdapter,
    "QwenImageEditPipeline": QwenImageEditAdapter,
    "QwenImageEditPlusPipeline": QwenImageEditPlusAdapter,
}


def adapter_class(pipeline_class: type) -> type:
    """The adapter class for a pipeline class, matched on the class or any of its base classes."""
    for cls in pipeline_class.__mro__:
        if cls.__name__ in ADAPTERS:
            return ADAPTERS[cls.__name__]
    raise ValueError(f"model: unsupported pipeline class {pipeline_class.__name__!r}; supported: {sorted(ADAPTERS)}")


def check_model_index(path: str) -> None:
    """Fail before loading any weights when a local pipeline folder's `model_index.json` names an unsupported class."""
    import json
    import os

    index = os.path.join(path, "model_index.json")
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
    """The adapter for `pipeline`, matched on its class or any of its base classes."""
    return adapter_class(type(pipeline))(pipeline, **kwargs)


__all__ = [
    "ADAPTERS",
    "Flux2Adapter",
    "FluxAdapter",
    "FluxKontextAdapter",
    "ModelAdapter",
    "QwenImageAdapter",
    "QwenImageEditAdapter",
    "QwenImageEditPlusAdapter",
    "adapter_class",
    "check_model_index",
    "get_adapter",
]
