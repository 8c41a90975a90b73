"""diffusers' modular pipelines (`ModularPipeline`): loading one by hub id or folder, the classic pipeline over the same
components that an adapter reads, and sampling with the stock modular loop (for `srpo-trl eval`).

diffusers is moving families to modular pipelines; FLUX.3 [klein] exists only there. An adapter reads components, so
the same adapter serves both kinds: for a family that also has a classic pipeline (FLUX.1, Kontext, FLUX.2, [klein]),
the adapter is given that classic pipeline built over the modular pipeline's own modules (nothing is copied); FLUX.3's
adapter reads the modular pipeline itself.
"""

from __future__ import annotations

import inspect
import os

import torch

MODULAR_INDEX = "modular_model_index.json"
#: A block of FLUX.3's default blocks that rewrites every prompt with a Qwen3.5 model before encoding. It is not part of
#: training (the transformer sees the prompt as the dataset gives it), so srpo-trl leaves it out when it loads a
#: pipeline, and its components are never loaded.
PROMPT_UPSAMPLER = "prompt_upsampler"


def is_modular(pipeline) -> bool:
    from diffusers import ModularPipeline

    return isinstance(pipeline, ModularPipeline)


def has_modular_index(path: str) -> bool:
    """Whether a local folder holds a modular pipeline (`modular_model_index.json`, and no classic index)."""
    return os.path.isfile(os.path.join(path, MODULAR_INDEX)) and not os.path.isfile(
        os.path.join(path, "model_index.json")
    )


def without_prompt_upsampler(pipeline):
    """`pipeline` with the prompt upsampler block removed (in place, before its components load)."""
    blocks = getattr(pipeline, "blocks", None)
    if blocks is not None and PROMPT_UPSAMPLER in getattr(blocks, "sub_blocks", {}):
        blocks.sub_blocks.pop(PROMPT_UPSAMPLER)
    return pipeline


def load_modular_pipeline(model: str, torch_dtype=None):
    """A modular pipeline by hub id or folder, its components loaded in `torch_dtype` (the prompt upsampler left out)."""
    from diffusers import ModularPipeline

    pipeline = without_prompt_upsampler(ModularPipeline.from_pretrained(model))
    kwargs = {} if torch_dtype is None else {"torch_dtype": torch_dtype}
    pipeline.load_components(**kwargs)
    return pipeline


def classic_view(pipeline, classic: str, config: dict | None = None):
    """The classic diffusers pipeline `classic` over `pipeline`'s components (the same module objects), with the modular
    pipeline's own config where the classic one takes it (FLUX.2 [klein]'s `is_distilled`: its blocks decide whether
    it is the base model), else `config`: what the family's adapter reads (`encode_prompt`, `save_lora_weights`)."""
    import diffusers

    cls = getattr(diffusers, classic)
    accepted = set(inspect.signature(cls.__init__).parameters) - {"self"}
    components = {k: v for k, v in pipeline.components.items() if k in accepted}
    settings = {**(config or {}), **{k: v for k, v in dict(getattr(pipeline, "config", {})).items() if k in accepted}}
    view = cls(**components, **{k: v for k, v in settings.items() if k in accepted and k not in components})
    view.set_progress_bar_config(disable=True)
    return view


@torch.no_grad()
def modular_images(pipeline, prompts: list[str], *, height: int, width: int, steps: int, guidance: float | None,
                   max_sequence_length: int, seed: int) -> torch.Tensor:  # fmt: skip
    """Images `[N, 3, H, W]` in [0, 1] from the stock modular loop, one prompt per call (FLUX.3's encoder takes one);
    prompt `i` uses seed `seed + i`. The guidance goes through the pipeline's guider, where it has one."""
    guider = pipeline.components.get("guider")
    if guider is not None and guidance is not None:
        pipeline.update_components(guider=guider.new(guidance_scale=guidance))
    images = []
    for i, prompt in enumerate(prompts):
        out = pipeline(
            prompt=prompt, height=height, width=width, num_inference_steps=steps,
            max_sequence_length=max_sequence_length, generator=torch.Generator().manual_seed(seed + i),
            output_type="pt", output="images",
        )  # fmt: skip
        images.append(out.float().cpu())
    return torch.cat(images)
