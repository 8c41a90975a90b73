"""Two small pieces of module state the trainer manages: the dtype of the trainable weights, and eval mode.

- [`cast_trainable_parameters`]: fp32 master weights whatever dtype the pipeline was loaded in. diffusers'
  `add_adapter` creates a LoRA in its base layer's dtype, so a bf16-loaded FLUX gives bf16 LoRA weights and
  bf16 AdamW states; at the recipe's lr 5e-6 most bf16 updates then round to nothing. Only the trainable
  parameters are cast: the frozen base stays in the loaded dtype, and compute runs under bf16 autocast.
- [`eval_mode`]: rollouts and samples run without dropout (TRL's LoRA default has 0.05), then training resumes
  in the mode it was in.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn


def cast_trainable_parameters(module: nn.Module, dtype: str) -> None:
    """Cast the parameters that require grad to `dtype` (`"float32"`, `"bfloat16"`; `"auto"` leaves them)."""
    if dtype == "auto":
        return
    target = getattr(torch, dtype)
    for parameter in module.parameters():
        if parameter.requires_grad and parameter.dtype != target:
            parameter.data = parameter.data.to(target)


@contextmanager
def eval_mode(module: nn.Module) -> Iterator[None]:
    """`module` in eval mode (no dropout) for the block, then back in the mode it was in."""
    was_training = module.training
    module.eval()
    try:
        yield
    finally:
        module.train(was_training)
