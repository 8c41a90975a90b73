"""A quantised frozen base for LoRA training (QLoRA-style), through torchao.

With LoRA, the transformer's own weights never change, so they can be stored in 8 or 4 bits while the
LoRA matrices train in full precision on top (peft wraps torchao-quantised linear layers). FLUX.1-dev's
transformer is 23.8 GB in bf16; int8 weight-only storage halves that and int4 quarters it. The saved LoRA
is the usual diffusers LoRA and loads onto the unquantised base.

`int8` (`Int8WeightOnlyConfig`) runs on CPUs and GPUs (measured on an H200 at 720 px: peak 28.5 GiB instead of
38.0 GiB, step 1.4x slower). `int4` (`Int4WeightOnlyConfig`) needs CUDA and torchao's separate `mslk>=1.0`
kernel package (PyPI had only 0.0.0 when this was written); it has not been run here. Install with
`pip install "srpo-trl[quant]"`.
"""

from __future__ import annotations

from torch import nn

QUANTIZATIONS = {"int8": "Int8WeightOnlyConfig", "int4": "Int4WeightOnlyConfig"}


def quantize_frozen_base(module: nn.Module, kind: str) -> nn.Module:
    """Quantise every linear layer's weights of `module` in place (before LoRA layers are added)."""
    if kind not in QUANTIZATIONS:
        raise ValueError(f"SRPOConfig.quantize_base={kind!r} is invalid: expected one of {sorted(QUANTIZATIONS)}")
    try:
        from torchao import quantization
    except ImportError as error:
        raise ImportError(f"SRPOConfig.quantize_base={kind!r} needs torchao: pip install 'srpo-trl[quant]'") from error
    try:
        quantization.quantize_(module, getattr(quantization, QUANTIZATIONS[kind])())
    except ImportError as error:  # e.g. torchao's int4 kernels live in a separate package (mslk)
        raise ImportError(f"SRPOConfig.quantize_base={kind!r}: torchao could not quantise ({error})") from error
    return module
