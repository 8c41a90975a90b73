"""Model adapters: one file per diffusion family, chosen from the pipeline class."""

from __future__ import annotations

from .base import ModelAdapter
from .flux import FluxAdapter
from .flux2 import Flux2Adapter
from .flux_kontext import FluxKontextAdapter

# Pipeline class name -> adapter class. Subclasses of a listed pipeline use the same adapter.
ADAPTERS: dict[str, type] = {
    "FluxPipeline": FluxAdapter,
    "FluxKontextPipeline": FluxKontextAdapter,
    "Flux2Pipeline": Flux2Adapter,
    "Flux2KleinPipeline": Flux2Adapter,
}


def get_adapter(pipeline, **kwargs) -> ModelAdapter:
    """The adapter for `pipeline`, matched on its class or any of its base classes."""
    for cls in type(pipeline).__mro__:
        if cls.__name__ in ADAPTERS:
            return ADAPTERS[cls.__name__](pipeline, **kwargs)
    raise ValueError(f"model: unsupported pipeline class {type(pipeline).__name__!r}; supported: {sorted(ADAPTERS)}")


__all__ = ["ADAPTERS", "Flux2Adapter", "FluxAdapter", "FluxKontextAdapter", "ModelAdapter", "get_adapter"]
