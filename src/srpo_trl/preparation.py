"""What the trainer does once, before training: load the pipeline, check the output folder, resolve the rewards,
freeze everything but the transformer (or its LoRA), switch the memory savers on.

Each check runs before the expensive work it guards: a wrong input fails with the field, the value and what
would be valid, before any weights load.
"""

from __future__ import annotations

import copy
import logging
import os
import re
import tempfile
from dataclasses import dataclass

import torch
from torch import nn

from .data import check_columns
from .models import check_model_index
from .models.base import check_lora_reloads
from .quantization import quantize_frozen_base
from .rewards import Reward, as_reward, load_reward
from .rewards.base import IMAGE_ONLY_NOTICE

logger = logging.getLogger(__name__)


def load_pipeline(model, model_init_kwargs: dict | None, controlnets: list[str] | None = None):
    """A diffusers pipeline object as is, or one loaded from a hub id / local path: a classic pipeline, or a modular
    one (a folder with `modular_model_index.json` only, or a hub repo without a classic index, as FLUX.3's). With
    `controlnets` (hub ids or folders of `FluxControlNetModel`s), a `FluxControlNetPipeline` of the FLUX.1 base `model`
    and those ControlNets (a `FluxMultiControlNetModel` when there are several), as diffusers documents it."""
    if not isinstance(model, str):
        if controlnets:
            raise ValueError("SRPOConfig.controlnet_name_or_path: give it with a model id or path, not a pipeline")
        return model
    from diffusers import DiffusionPipeline

    from .modular import has_modular_index, load_modular_pipeline

    if os.path.isdir(model):
        check_model_index(model)  # an unsupported family fails before gigabytes of weights load
    kwargs = dict(model_init_kwargs or {})
    dtype = kwargs.get("torch_dtype")
    if isinstance(dtype, str) and dtype != "auto":
        kwargs["torch_dtype"] = getattr(torch, dtype)
    if controlnets:
        from diffusers import FluxControlNetModel, FluxControlNetPipeline, FluxMultiControlNetModel

        dtype = kwargs.get("torch_dtype", torch.float32)
        nets = [FluxControlNetModel.from_pretrained(c, torch_dtype=dtype) for c in controlnets]
        controlnet = nets[0] if len(nets) == 1 else FluxMultiControlNetModel(nets)
        return FluxControlNetPipeline.from_pretrained(model, controlnet=controlnet, **kwargs)
    if os.path.isdir(model) and has_modular_index(model):
        return load_modular_pipeline(model, kwargs.get("torch_dtype"))
    try:
        return DiffusionPipeline.from_pretrained(model, **kwargs)
    except OSError as classic_error:  # no model_index.json: a repo that diffusers ships only as a modular pipeline
        if os.path.isdir(model):
            raise
        try:
            return load_modular_pipeline(model, kwargs.get("torch_dtype"))
        except Exception:  # noqa: BLE001 - report the classic loader's error, the usual case
            raise classic_error from None


def check_output_dir(path: str) -> None:
    """Fail before any model work when the output folder cannot be written."""
    try:
        os.makedirs(path, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".srpo-write-check-"):
            pass
    except OSError as error:
        raise ValueError(
            f"SRPOConfig.output_dir={path!r} cannot be written ({error}); choose a writable folder"
        ) from error


def check_lora_targets(module: nn.Module, peft_config) -> None:
    """Fail early when a LoRA `target_modules` list matches no module of the transformer."""
    targets = getattr(peft_config, "target_modules", None)
    if targets is None or isinstance(targets, str):  # None: peft's defaults; str: a regex
        return
    names = [name for name, _ in module.named_modules()]
    missing = [t for t in targets if not any(n == t or n.endswith("." + t) for n in names)]
    if len(missing) == len(list(targets)):
        raise ValueError(
            f"peft_config.target_modules={sorted(targets)!r} matches no module of the transformer; "
            f"examples of valid names: {names[1:6]}"
        )


def resolve_rewards(reward_funcs, args, trained: bool = True) -> list[Reward]:
    """Reward modules, frozen, in eval mode and in `args.reward_torch_dtype`.

    Rewards given by name are loaded in that dtype; reward objects are cast only when `reward_dtype` is set
    explicitly (a model the user built keeps its dtype otherwise). Image-only rewards that are `trained` on
    are announced (they train as plain Direct-Align).
    """
    if reward_funcs is None:
        raise ValueError("reward_funcs: give at least one reward function")
    if not isinstance(reward_funcs, (list, tuple)):
        reward_funcs = [reward_funcs]  # a single reward (a bad type is then reported by as_reward)
    dtype = args.reward_torch_dtype
    rewards = []
    for r in reward_funcs:
        if isinstance(r, str):
            rewards.append(load_reward(r, dtype=dtype))
            continue
        reward = as_reward(r)
        if args.reward_dtype is not None:
            reward.to(dtype)
        rewards.append(reward)
    if not rewards:
        raise ValueError("reward_funcs: give at least one reward function")
    for reward in rewards:
        if trained and not reward.text_conditioned:
            logger.warning(IMAGE_ONLY_NOTICE.format(name=reward.name))
    names = [r.name for r in rewards]
    for i, r in enumerate(rewards):  # unique metric names
        if names.count(r.name) > 1:
            r.name = f"{r.name}_{i}"
    for r in rewards:
        r.eval().requires_grad_(False)
    return rewards


def prepare_trainable(pipeline, adapter, args, peft_config):
    """Freeze every component, then make the transformer (or its LoRA) trainable; switch the memory savers.

    Returns `(transformer, peft_config)`. The config returned is a copy of the user's: defaults are filled in
    here and diffusers' `add_adapter` writes to the config it gets, and the user's object must not change. The
    copy is what the trainer saves beside the LoRA.
    """
    for component in pipeline.components.values():
        if isinstance(component, nn.Module):
            component.requires_grad_(False).eval()
    transformer = getattr(pipeline, adapter.trainable_component)
    # Modules this run never calls (FLUX.3's reference-image mode in a text-to-image run): trainable weights there
    # would never get a gradient, hold no optimizer state, and stop a sharded resume that expects one for each.
    unused = adapter.unused_modules()
    if peft_config is not None:
        peft_config = copy.deepcopy(peft_config)
        check_lora_reloads(peft_config)
        if args.quantize_base is not None:  # the frozen base in 8/4 bits, the LoRA on top in full precision
            quantize_frozen_base(transformer, args.quantize_base)
        if getattr(peft_config, "target_modules", None) is None:
            peft_config.target_modules = list(adapter.default_lora_target_modules)
        if unused is not None and getattr(peft_config, "exclude_modules", None) is None:
            peft_config.exclude_modules = unused
        check_lora_targets(transformer, peft_config)
        transformer.add_adapter(peft_config)  # only the LoRA parameters require grad
    else:
        transformer.requires_grad_(True)
        for name, parameter in transformer.named_parameters():
            if unused is not None and re.fullmatch(unused, name.rpartition(".")[0]):
                parameter.requires_grad_(False)
    if args.transformer_gradient_checkpointing:
        transformer.enable_gradient_checkpointing()
    if args.vae_gradient_checkpointing:
        if getattr(pipeline.vae, "_supports_gradient_checkpointing", False):
            pipeline.vae.enable_gradient_checkpointing()
        elif getattr(adapter, "checkpoints_vae_decode", False):
            pass  # Wan: the adapter's decode checkpoints the VAE itself, chunk by chunk over time (models/wan_decode.py)
        else:  # Qwen-Image's video VAE (diffusers 0.42): its decoder keeps its activations for the backward pass
            logger.warning(
                "vae_gradient_checkpointing: %s does not support gradient checkpointing; the VAE decoder's "
                "activations are kept for the backward pass (vae_slicing=True keeps them for one image at a time)",
                type(pipeline.vae).__name__,
            )
    if args.vae_slicing:  # one image per decode: the VAE backward's peak scales with one image, not 2B
        pipeline.vae.enable_slicing()
    else:
        pipeline.vae.disable_slicing()
    return transformer, peft_config


@dataclass
class RewardSetup:
    """The rewards a run trains on, with their weights and hinge thresholds, and the ones it only watches."""

    trained: list[Reward]
    weights: list[float]
    hinge_thresholds: list[float]
    watched: list[Reward]


def resolve_reward_setup(reward_funcs, eval_reward_funcs, args) -> RewardSetup:
    """Check the reward settings against the reward functions, then resolve them (names before any weights load)."""
    count = len(reward_funcs) if isinstance(reward_funcs, (list, tuple)) else 1
    weights = args.reward_weights or [1.0] * count
    if len(weights) != count:
        raise ValueError(
            f"SRPOConfig.reward_weights has {len(weights)} values but there are {count} "
            "reward functions; give one weight per reward function"
        )
    thresholds = args.hinge_threshold
    if thresholds is not None and len(thresholds) not in (1, count):
        raise ValueError(
            f"SRPOConfig.hinge_threshold has {len(thresholds)} values but there are {count} reward functions; "
            "give one value for all of them or one per reward function"
        )
    trained = resolve_rewards(reward_funcs, args)
    watched = [] if eval_reward_funcs is None else resolve_rewards(eval_reward_funcs, args, trained=False)
    clashes = sorted(r.name for r in watched if r.name in {t.name for t in trained})
    if clashes:
        raise ValueError(
            f"eval_reward_funcs: {clashes} are trained on already, and every trained reward is evaluated; "
            "give only rewards that are not in reward_funcs"
        )
    if thresholds is None:  # each reward's own, on its own scale
        thresholds = [float(r.hinge_threshold) for r in trained]
    elif len(thresholds) == 1:
        thresholds = thresholds * count
    if any(r.text_conditioned for r in trained):
        for field_name in ("positive_control_words", "negative_control_words"):
            if not getattr(args, field_name):
                raise ValueError(
                    f"SRPOConfig.{field_name} is empty, but a text-conditioned reward is in use; give at least "
                    "one word (e.g. the recipe's)"
                )
    return RewardSetup(trained, list(weights), list(thresholds), watched)


def check_pipeline_inputs(adapter, args, train_dataset, eval_dataset) -> None:
    """What needs the pipeline's family to check: the reference-image column of editing families, and the size."""
    if adapter.requires_reference_image:  # the rows were checked before loading; the column is checked here
        field = adapter.reference_image_column_field  # Control's is the control image column
        reference = [(field, getattr(args, field))]
        for what, dataset in (("train_dataset", train_dataset), ("eval_dataset", eval_dataset)):
            if dataset is not None and not isinstance(dataset, dict):
                check_columns(dataset, reference, what)
    height, width = args.image_size
    g = adapter.latent_granularity
    if height % g or width % g:
        raise ValueError(
            f"SRPOConfig.resolution={args.resolution!r} is invalid: height and width must be multiples of "
            f"{g} for this pipeline"
        )
