"""Which fused attention kernels training may use.

On an H200 with torch 2.11 (CUDA 13), the backward pass of cuDNN's fused attention
(`ScaledDotProductCudnnAttentionBackward0`) returned NaN gradients in most steps of a bf16 training of the
tiny FLUX pipeline, and hit an illegal memory access on the FLUX.1-dev-sized transformer at 720 and 1024 px;
the flash / memory-efficient and math kernels gave finite gradients and a rising reward (see
`docs/benchmarks.md`). So SRPO's forward passes that are differentiated run with cuDNN attention excluded,
unless `SRPOConfig.allow_cudnn_attention` is set.
"""

from __future__ import annotations

import contextlib

import torch


def training_attention(allow_cudnn: bool = False):
    """A context in which `scaled_dot_product_attention` picks among flash, memory-efficient and math kernels."""
    if allow_cudnn or not torch.cuda.is_available():
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH])
