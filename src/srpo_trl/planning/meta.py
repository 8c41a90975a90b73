"""Pipelines, rewards and text conditioning on the meta device: shapes and dtypes, no weights.

A pipeline comes from one of three places, and nothing is downloaded from any of them:

- a Hub id of a published model whose component configs ship with the package (`configs/*.json`, listed in
  [`SHIPPED`]);
- a local pipeline folder: `model_index.json` names each component's library and class, and the component's own
  `config.json` (`scheduler_config.json` for the scheduler) sizes it;
- a pipeline object (the tiny test pipelines): each model is rebuilt from its own config.

Each model is built inside `torch.device("meta")`, in the dtype the run loads it in. Tokenizers are not needed:
the planner feeds the transformer the text cache's tensors ([`text_conditioning`]), whose shapes each family's
adapter documents, and the reward's text tower the tiny character tokenizer's ids.
"""

from __future__ import annotations

import inspect
import json
import os

import torch
from torch import nn

CONFIGS = os.path.join(os.path.dirname(__file__), "configs")

#: Hub id -> shipped file of component configs.
SHIPPED: dict[str, str | tuple[str, str]] = {
    "black-forest-labs/FLUX.1-dev": "flux1-dev.json",
    "black-forest-labs/FLUX.1-Krea-dev": "flux1-dev.json",
    "black-forest-labs/FLUX.2-dev": "flux2-dev.json",
    "Qwen/Qwen-Image": "qwen-image.json",
    "lodestones/Chroma1-HD": "chroma1-hd.json",
    "stabilityai/stable-diffusion-3.5-large": "sd35-large.json",
    "stabilityai/stable-diffusion-3.5-large-turbo": "sd35-large.json",
    "stabilityai/stable-diffusion-3.5-medium": "sd35-medium.json",
    "Tongyi-MAI/Z-Image-Turbo": "z-image-turbo.json",
    "black-forest-labs/FLUX.1-Fill-dev": "flux1-fill-dev.json",
    "black-forest-labs/FLUX.1-Canny-dev": "flux1-canny-dev.json",
    # Same components as another shipped model, under another pipeline class (Kontext is FLUX.1-dev's architecture,
    # Depth [dev] Canny [dev]'s): (file, pipeline class).
    "black-forest-labs/FLUX.1-Kontext-dev": ("flux1-dev.json", "FluxKontextPipeline"),
    "black-forest-labs/FLUX.1-Depth-dev": ("flux1-canny-dev.json", "FluxControlPipeline"),
    "Wan-AI/Wan2.1-T2V-1.3B-Diffusers": "wan21-t2v-1.3b.json",
    "Wan-AI/Wan2.1-T2V-14B-Diffusers": "wan21-t2v-14b.json",
    "Wan-AI/Wan2.2-T2V-A14B-Diffusers": "wan22-t2v-a14b.json",
}

#: Reward name -> shipped CLIP config (HPSv2 / v2.1 and PickScore are CLIP ViT-H-14; `clip` is CLIP ViT-L/14).
SHIPPED_REWARDS: dict[str, str] = {
    "hpsv2": "clip-vit-h-14.json",
    "hpsv2.1": "clip-vit-h-14.json",
    "pickscore": "clip-vit-h-14.json",
    "clip": "clip-vit-l-14.json",
}


class CannotSize(ValueError):
    """The planner has no config for this model, reward or family (nothing was downloaded)."""


def _load_json(name: str) -> dict:
    path = os.path.join(CONFIGS, name)
    if not os.path.isfile(path):  # listed, but its configs are not written yet
        raise CannotSize(f"plan: the shipped config {name!r} is missing from {CONFIGS}; nothing was downloaded")
    with open(path) as f:
        return json.load(f)


def _strip(config: dict) -> dict:
    return {k: v for k, v in config.items() if not k.startswith(("_comment", "_source"))}


def build_module(library: str, class_name: str, config: dict, dtype: torch.dtype) -> nn.Module:
    """One model, built from its config on the meta device, in `dtype`."""
    module = __import__(library)
    cls = getattr(module, class_name, None)
    if cls is None:
        raise CannotSize(f"plan: {library} has no class {class_name!r} (installed version too old?)")
    config = _strip(config)
    with torch.device("meta"):
        if library == "transformers":
            config_obj = cls.config_class.from_dict(config)
            model = cls(config_obj)
        else:
            model = cls.from_config(config)
    return model.to(dtype).eval()


def _build_scheduler(class_name: str, config: dict):
    import diffusers

    return getattr(diffusers, class_name).from_config(_strip(config))


def _assemble(pipeline_class: str, components: dict, extra: dict):
    import diffusers

    cls = getattr(diffusers, pipeline_class, None)
    if cls is None:
        raise CannotSize(f"plan: diffusers has no pipeline class {pipeline_class!r}")
    accepted = inspect.signature(cls.__init__).parameters
    kwargs = {k: v for k, v in components.items() if k in accepted}
    kwargs.update({k: v for k, v in extra.items() if k in accepted and k not in kwargs})
    for name, parameter in accepted.items():  # tokenizers, image processors: not needed on the meta device
        if name not in kwargs and name != "self" and parameter.default is inspect.Parameter.empty:
            kwargs[name] = None
    return cls(**kwargs)


def _from_spec(spec: dict, dtype: torch.dtype):
    components, extra = {}, {}
    for name, entry in spec["components"].items():
        if entry is None:
            continue
        if not isinstance(entry, list):
            extra[name] = entry
            continue
        library, class_name, config = entry
        if "Scheduler" in class_name:
            components[name] = _build_scheduler(class_name, config)
        elif "Tokenizer" in class_name or "Processor" in class_name:
            continue
        else:
            components[name] = build_module(library, class_name, config, dtype)
    return _assemble(spec["_class_name"], components, extra)


def _folder_spec(path: str) -> dict:
    index = os.path.join(path, "model_index.json")
    if not os.path.isfile(index):
        raise CannotSize(f"plan: {path!r} has no model_index.json; the planner sizes classic diffusers pipelines")
    with open(index) as f:
        model_index = json.load(f)
    spec = {"_class_name": model_index["_class_name"], "components": {}}
    for name, value in model_index.items():
        if name.startswith("_"):
            continue
        if isinstance(value, list) and not (len(value) == 2 and value[0]):
            continue  # an absent optional component ([null, null])
        if not isinstance(value, list):
            spec["components"][name] = value
            continue
        library, class_name = value
        if "Tokenizer" in class_name or "Processor" in class_name:
            continue
        for file_name in ("config.json", "scheduler_config.json"):
            config_path = os.path.join(path, name, file_name)
            if os.path.isfile(config_path):
                with open(config_path) as f:
                    spec["components"][name] = [library, class_name, json.load(f)]
                break
        else:
            raise CannotSize(f"plan: {os.path.join(path, name)!r} has no config.json to size {class_name} from")
    return spec


def _from_object(pipeline, dtype: torch.dtype | None):
    components, extra = {}, dict(pipeline.config)
    for name, component in pipeline.components.items():
        if isinstance(component, nn.Module):
            module_dtype = dtype or next(component.parameters()).dtype
            library = "transformers" if type(component).__module__.startswith("transformers") else "diffusers"
            config = component.config.to_dict() if library == "transformers" else dict(component.config)
            components[name] = build_module(library, type(component).__name__, config, module_dtype)
        else:
            components[name] = component
    return _assemble(type(pipeline).__name__, components, extra)


def meta_pipeline(model, dtype: torch.dtype | None = torch.bfloat16):
    """The pipeline `model` names (Hub id, folder or object), on the meta device; see the module docstring."""
    if not isinstance(model, str):
        return _from_object(model, dtype)
    if os.path.isdir(model):
        return _from_spec(_folder_spec(model), dtype or torch.float32)
    if model in SHIPPED:
        entry = SHIPPED[model]
        file_name, class_name = entry if isinstance(entry, tuple) else (entry, None)
        spec = _load_json(file_name)
        if class_name:
            spec = {**spec, "_class_name": class_name}
        return _from_spec(spec, dtype or torch.float32)
    raise CannotSize(
        f"plan: cannot size {model!r}: it is neither a local pipeline folder nor one of the published models whose "
        f"configs ship with srpo-trl ({', '.join(sorted(SHIPPED))}); nothing was downloaded. Download the model's "
        "config files (model_index.json and each component's config.json) into a folder and plan with that folder"
    )


def _meta_clip_reward(model, scale, name):
    from ..rewards import CLIPReward
    from ..testing import tiny_clip_tokenizer

    class MetaCLIPReward(CLIPReward):
        """The text tower runs without gradient (nothing saved) and its causal mask reads values: on the meta
        device the text embeddings are zeros of their shape, `[texts, projection_dim]` in float32."""

        def embed_texts(self, texts):
            width = self.model.config.projection_dim
            return torch.zeros(len(texts), width, device=self.model.logit_scale.device)

    return MetaCLIPReward(model, tiny_clip_tokenizer(), scale=scale, name=name)


def meta_reward(reward, dtype: torch.dtype):
    """The reward on the meta device: a `CLIPReward` object rebuilt from its model's config, or a shipped one."""
    from ..rewards import CLIPReward

    if isinstance(reward, CLIPReward):
        model = build_module("transformers", type(reward.model).__name__, reward.model.config.to_dict(), dtype)
        return _meta_clip_reward(model, reward._scale, reward.name)
    name = str(reward).split(":", 1)[0]
    if name not in SHIPPED_REWARDS:
        raise CannotSize(
            f"plan: cannot size the reward {reward!r}; the planner knows the CLIP-architecture rewards "
            f"{sorted(SHIPPED_REWARDS)}"
        )
    spec = _load_json(SHIPPED_REWARDS[name])
    model = build_module("transformers", "CLIPModel", spec["config"], dtype)
    return _meta_clip_reward(model, 1.0 if name.startswith("hps") else "logit", name)


@torch.no_grad()
def with_reference(adapter, conditioning: dict, batch: int, height: int, width: int, device) -> dict:
    """`conditioning` plus what a family that edits or repaints an image adds per batch (Kontext's reference latents,
    Fill's masked source and mask, Control's control image), from blank images of the training size: the trainer
    encodes them once per batch without gradient, so only their shapes matter."""
    if not getattr(adapter, "requires_reference_image", False):
        return conditioning
    images = torch.zeros(batch, 3, height, width, device=device)
    extra = (
        {"masks": torch.ones(batch, 1, height, width, device=device)} if getattr(adapter, "uses_mask", False) else {}
    )
    return adapter.add_reference(conditioning, images, height, width, **extra)


def text_conditioning(adapter, batch: int, tokens: int, device, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """The text cache's conditioning of `batch` prompts of `tokens` tokens, as the family's `encode_prompts` gives it
    (zeros: only the shapes matter). Families whose text the planner does not know stop with `CannotSize`."""
    config = adapter.pipeline.transformer.config
    family = adapter.family

    def zeros(*shape, kind=dtype):
        return torch.zeros(*shape, device=device, dtype=kind)

    def ones(*shape):
        return torch.ones(*shape, device=device, dtype=torch.float32)

    if family in ("flux", "flux-kontext", "flux-fill", "flux-control"):
        width = config.joint_attention_dim
        return {
            "prompt_embeds": zeros(batch, tokens, width),
            "pooled_prompt_embeds": zeros(batch, config.pooled_projection_dim),
            "text_ids": zeros(batch, tokens, 3, kind=torch.float32),
        }
    if family == "flux2":
        text = {
            "prompt_embeds": zeros(batch, tokens, config.joint_attention_dim),
            "text_ids": zeros(batch, tokens, 4, kind=torch.long),
        }
        if adapter.classifier_free_guidance:
            text.update({f"negative_{k}": v.clone() for k, v in text.items()})
        return text
    if family == "qwen-image" and type(adapter).__name__ == "QwenImageAdapter":
        width = config.joint_attention_dim
        return {"prompt_embeds": zeros(batch, tokens, width), "negative_prompt_embeds": zeros(batch, tokens, width)}
    if family == "chroma":
        embeds, mask = zeros(batch, tokens, config.joint_attention_dim), ones(batch, tokens)
        return {
            "prompt_embeds": embeds,
            "prompt_attention_mask": mask,
            "negative_prompt_embeds": embeds.clone(),
            "negative_prompt_attention_mask": mask.clone(),
        }
    if family == "sd3":
        embeds = zeros(batch, 77 + tokens, config.joint_attention_dim)
        pooled = zeros(batch, config.pooled_projection_dim)
        return {
            "prompt_embeds": embeds,
            "pooled_prompt_embeds": pooled,
            "negative_prompt_embeds": embeds.clone(),
            "negative_pooled_prompt_embeds": pooled.clone(),
        }
    if family == "wan":  # UMT5 states padded to the full length, and the negative prompt's for CFG
        embeds = zeros(batch, tokens, config.text_dim)
        return {"prompt_embeds": embeds, "negative_prompt_embeds": embeds.clone()}
    if family == "z-image":
        embeds = zeros(batch, tokens, config.cap_feat_dim)
        return {"prompt_embeds": embeds, "negative_prompt_embeds": embeds.clone()}
    raise CannotSize(
        f"plan: the planner does not know the text conditioning of {type(adapter).__name__} yet; it sizes "
        "FLUX.1 (with Kontext, Fill, Canny / Depth), FLUX.2, Qwen-Image, Chroma, SD3 / 3.5, Z-Image and Wan runs;"
        " nothing was downloaded"
    )
