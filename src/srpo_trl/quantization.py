"""A quantised frozen base for LoRA training (QLoRA-style), through torchao.

With LoRA, the transformer's own weights never change, so they can be stored in 8 or 4 bits while the
LoRA matrices train in full precision on top (peft wraps the quantised linear layers). FLUX.1-dev's
transformer is 23.8 GB in bf16; int8 weight-only storage halves that and NF4 brings it to about a quarter.
The saved LoRA is the usual diffusers LoRA and loads onto the unquantised base.

- `int8` (`Int8WeightOnlyConfig`): CPUs and GPUs. Measured on an H200, LoRA r=64 at 720 px with every other
  saver on: peak 24.3 GiB instead of 33.8 GiB, step 1.4x slower.
- `nf4`: QLoRA's 4-bit NormalFloat with double-quantised scales (torchao's `NF4Tensor`): blocks of 64 weights,
  about 0.52 bytes a weight. Pure PyTorch, so CPUs and GPUs; each linear call dequantises its weight to the
  compute dtype, forward and backward (the input's gradient needs the weight too). Measured likewise: peak
  17.3 GiB, step 1.8x slower; the setting for a 24 GB card.
- `int4` (`Int4WeightOnlyConfig`): CUDA only, and torchao's separate `mslk>=1.0` kernel package (PyPI had only
  0.0.0 when this was written); it has not been run here. `nf4` is the 4-bit option that runs everywhere.

Install with `pip install "srpo-trl[quant]"`.
"""

from __future__ import annotations

import logging
import math

from torch import nn

logger = logging.getLogger(__name__)

QUANTIZATIONS = ("int8", "nf4", "int4")  # the values of SRPOConfig.quantize_base
TORCHAO_CONFIGS = {"int8": "Int8WeightOnlyConfig", "int4": "Int4WeightOnlyConfig"}  # applied with quantize_

NF4_BLOCK_SIZE = 64  # QLoRA's block of weights per absmax scale
NF4_SCALER_BLOCK_SIZE = 256  # QLoRA's block of scales per second-level scale (double quantisation)


def quantize_frozen_base(module: nn.Module, kind: str) -> nn.Module:
    """Quantise every linear layer's weights of `module` in place (before LoRA layers are added)."""
    if kind not in QUANTIZATIONS:
        raise ValueError(f"SRPOConfig.quantize_base={kind!r} is invalid: expected one of {list(QUANTIZATIONS)}")
    try:
        from torchao import quantization
    except ImportError as error:
        raise ImportError(f"SRPOConfig.quantize_base={kind!r} needs torchao: pip install 'srpo-trl[quant]'") from error
    if kind == "nf4":
        return _quantize_nf4(module, quantization.to_nf4)
    # set_inductor_config=False: torchao would otherwise switch on process-wide inductor settings (coordinate
    # descent autotuning of every kernel), which made a later torch.compile of FLUX.1-dev run for minutes.
    config = getattr(quantization, TORCHAO_CONFIGS[kind])(set_inductor_config=False)
    try:
        quantization.quantize_(module, config)
    except ImportError as error:  # e.g. torchao's int4 kernels live in a separate package (mslk)
        raise ImportError(f"SRPOConfig.quantize_base={kind!r}: torchao could not quantise ({error})") from error
    return module


def _quantize_nf4(module: nn.Module, to_nf4) -> nn.Module:
    """Swap each linear weight for an `NF4Tensor`, whose `F.linear` dequantises with autograd (frozen weight)."""
    linears = [m for m in module.modules() if isinstance(m, nn.Linear)]
    done = 0
    for layer in linears:
        blocks, rest = divmod(layer.weight.numel(), NF4_BLOCK_SIZE)
        if rest or not blocks:
            continue  # a weight that is not whole blocks stays as it is (none in the FLUX families)
        # QLoRA's 256 scales per second-level block; a small layer (test models) takes the largest block that fits.
        scaler_block = math.gcd(blocks, NF4_SCALER_BLOCK_SIZE)
        weight = to_nf4(layer.weight.detach().contiguous(), NF4_BLOCK_SIZE, scaler_block)
        layer.weight = nn.Parameter(weight, requires_grad=False)
        done += 1
    if not done:
        raise ValueError(
            f"SRPOConfig.quantize_base='nf4': none of the {len(linears)} linear layers has a weight in whole blocks "
            f"of {NF4_BLOCK_SIZE}"
        )
    logger.info("quantize_base='nf4': %d of %d linear layers stored in NF4", done, len(linears))
    return module
