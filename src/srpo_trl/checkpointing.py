"""Checkpoints: reading our diffusers-layout weights back for exact resume, and atomic folder writes.

A checkpoint folder is written as the final result is (LoRA safetensors, or `transformer/`) plus the
Trainer's optimizer, scheduler, RNG and state files. It is assembled in a hidden staging folder and
renamed into place only when complete, so a crash mid-save never leaves a half-written
`checkpoint-N` that `resume_from_checkpoint=True` would pick up.
"""

from __future__ import annotations

import json
import os
import shutil

import torch
from torch import nn

LORA_WEIGHTS_NAME = "pytorch_lora_weights.safetensors"  # what diffusers' save_lora_weights writes
LORA_METADATA_KEY = "lora_adapter_metadata"  # diffusers' safetensors metadata key for the LoRA's config
STAGING_DIR_NAME = ".srpo-staging"  # not matched by transformers' `checkpoint-N` pattern
#: The LoraConfig fields that set the model a LoRA's weights make: resuming with others would continue another model.
LORA_SCALE_FIELDS = ("r", "lora_alpha", "use_rslora", "use_dora", "rank_pattern", "alpha_pattern")


def saved_lora_config(path: str, component: str) -> dict | None:
    """The LoRA config diffusers stores in a safetensors file's metadata for `component`, or `None` if absent."""
    from safetensors import safe_open

    with safe_open(path, framework="pt") as f:
        raw = (f.metadata() or {}).get(LORA_METADATA_KEY)
    if not raw:
        return None
    prefix = component + "."  # diffusers prefixes each field with the component's name
    return {k.removeprefix(prefix): v for k, v in json.loads(raw).items() if k.startswith(prefix)}


def _check_same_lora_config(transformer: nn.Module, saved: dict, path: str) -> None:
    configs = list(getattr(transformer, "peft_config", {}).values())
    if len(configs) != 1:
        return
    current = configs[0].to_dict()
    changed = [
        f"{field}={current.get(field)!r} here but {saved[field]!r} in the checkpoint"
        for field in LORA_SCALE_FIELDS
        if field in saved and saved[field] != current.get(field)
    ]
    if changed:
        raise ValueError(
            f"resume_from_checkpoint: {path} holds a LoRA with another configuration (peft_config."
            + "; peft_config.".join(changed)
            + "); resume with the peft_config it was trained with"
        )


def check_lora_checkpoint_config(transformer: nn.Module, folder: str, component: str) -> None:
    """Fail when the LoRA saved in `folder` has another rank or scaling than `transformer`'s (if it says which)."""
    path = os.path.join(folder, LORA_WEIGHTS_NAME)
    saved = saved_lora_config(path, component) if os.path.isfile(path) else None
    if saved is not None:
        _check_same_lora_config(transformer, saved, path)


def load_lora_checkpoint(transformer: nn.Module, folder: str, component: str) -> None:
    """Load LoRA weights written by `save_lora_weights` (keys `"{component}.<module>.lora_A.weight"`).

    When the file carries the LoRA's config (as [`~srpo_trl.models.base.AdapterBase.save_lora_weights`] writes it),
    its rank and scaling must match `transformer`'s LoRA.
    """
    from peft.utils import set_peft_model_state_dict
    from safetensors.torch import load_file

    path = os.path.join(folder, LORA_WEIGHTS_NAME)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"resume_from_checkpoint: {folder!r} holds no {LORA_WEIGHTS_NAME}")
    check_lora_checkpoint_config(transformer, folder, component)
    prefix = component + "."
    state = {k.removeprefix(prefix): v for k, v in load_file(path).items()}
    result = set_peft_model_state_dict(transformer, state)
    unexpected = getattr(result, "unexpected_keys", None) or []
    if unexpected:
        raise ValueError(f"resume_from_checkpoint: LoRA weights in {path} match no module: {unexpected[:5]}")


def load_full_checkpoint(transformer: nn.Module, folder: str, component: str) -> None:
    """Load a transformer written by `save_pretrained` into `{folder}/{component}` (single or sharded)."""
    from safetensors.torch import load_file

    root = os.path.join(folder, component)
    index = os.path.join(root, "diffusion_pytorch_model.safetensors.index.json")
    if os.path.isfile(index):
        with open(index) as f:
            files = sorted(set(json.load(f)["weight_map"].values()))
    else:
        files = ["diffusion_pytorch_model.safetensors"]
    paths = [os.path.join(root, f) for f in files]
    if not all(os.path.isfile(p) for p in paths):
        raise FileNotFoundError(f"resume_from_checkpoint: {root!r} holds no complete safetensors transformer")
    state: dict[str, torch.Tensor] = {}
    for path in paths:
        state.update(load_file(path))
    transformer.load_state_dict(state, strict=True)


def _diffusers_class(module: nn.Module) -> type:
    """The model's own diffusers class: FSDP2's `fully_shard` swaps a module's class for an `FSDP<Name>` subclass."""
    from diffusers import ModelMixin
    from torch.distributed.fsdp import FSDPModule

    for cls in type(module).__mro__:
        if issubclass(cls, ModelMixin) and not issubclass(cls, FSDPModule):
            return cls
    raise TypeError(f"{type(module).__name__} is not a diffusers model")


def save_transformer(transformer: nn.Module, folder: str, state_dict: dict[str, torch.Tensor] | None = None) -> None:
    """`transformer.save_pretrained(folder)`, or the same files made from `state_dict` when one is given.

    Under FSDP2 or ZeRO-3 the module holds only this process's shards, and the Trainer hands over the whole model
    gathered as `state_dict`. diffusers' `ModelMixin.save_pretrained` takes no state dict (it saves `self.state_dict()`),
    so the gathered tensors are assigned, without a copy, to a shell of the model built on the meta device (no
    memory), which diffusers then saves: the same config, safetensors shards and index as an unsharded save.
    """
    if state_dict is None:
        transformer.save_pretrained(folder)
        return
    with torch.device("meta"):
        shell = _diffusers_class(transformer).from_config(transformer.config)
    shell.load_state_dict(state_dict, strict=True, assign=True)
    shell.save_pretrained(folder)


def publish_staged_folder(staged: str, final: str) -> None:
    """Move a completely written folder into place, replacing an older one of the same name."""
    if os.path.exists(final):  # the same step saved again (e.g. after a resume): keep only the new one
        old = final + ".old"
        shutil.rmtree(old, ignore_errors=True)
        os.rename(final, old)
        os.rename(staged, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(staged, final)
    try:  # the staging folder goes once empty; another process's save may still be using it
        os.rmdir(os.path.dirname(staged))
    except OSError:
        pass


def point_best_checkpoint_at_published(state, staged: str, run_dir: str, write: bool) -> None:
    """The Trainer records a new best checkpoint where it wrote it, under the staging folder: point the trainer
    state (and, when `write`, the staged copy of it) at where the checkpoint is published, before it is."""
    from transformers.trainer import TRAINER_STATE_NAME

    best = state.best_model_checkpoint
    if best is not None and os.path.dirname(best) == os.path.dirname(staged):
        state.best_model_checkpoint = os.path.join(run_dir, os.path.basename(best))
        if write:
            state.save_to_json(os.path.join(staged, TRAINER_STATE_NAME))
