"""bf16 autocast on the meta device: the casts `torch.autocast` would make on a CUDA (or CPU) device, replayed.

A real run computes under `torch.autocast(device, bfloat16)` (the Trainer's `bf16=True`). Autocast changes what
the step keeps in memory, not only its speed: on CUDA, `group_norm`, `layer_norm`, `softmax`, the upsampling ops
and the other ops of its float32 list return float32 tensors from bf16 inputs (twice the bytes, and the next
matrix product saves a bf16 copy of them), and matrix products cast float32 inputs and weights (fp32 master LoRA
weights, float32 latents) to bf16 copies that autograd saves. Meta tensors have no autocast dispatch key, so
[`EmulatedAutocast`] makes the same casts one level up, as a `TorchFunctionMode`: before each call of an op in the
policy's lists it casts the op's floating-point tensor arguments, as autocast's `cached_cast` does (float64 left
alone, the casts of leaf weights that require grad cached for the region). The casts are ordinary autograd ops, so
the planner's instruments count their outputs and what autograd saves of them, as they count a real step's.

The lists are PyTorch's (`aten/src/ATen/autocast_mode.h` and `.cpp`, 2.x): [`CUDA`] is the one the GPU estimates
use; [`CPU`] is the one the tests check the mechanism with, against a real CPU step under `torch.autocast("cpu")`.
Ops are matched by the Python name they are called by (`F.linear`, `Tensor.softmax`, `torch.pow`, ...).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_map

from .measure import ACTIVE

#: Matrix products and convolutions: run in the autocast dtype on both devices.
_LOWER = frozenset(
    {
        "linear", "matmul", "__matmul__", "__rmatmul__", "mm", "bmm", "baddbmm", "addmm", "addbmm", "addmv",
        "addr", "mv", "einsum", "conv1d", "conv2d", "conv3d", "conv_tbc", "prelu", "scaled_dot_product_attention",
        "chain_matmul", "multi_dot",
    }
)  # fmt: skip
#: CUDA's float32 list (with its "set the output dtype" ops: softmax, sum, cumsum, prod, norms).
_CUDA_FP32 = frozenset(
    {
        "acos", "asin", "cosh", "erfinv", "exp", "expm1", "log", "log10", "log2", "log1p", "reciprocal", "rsqrt",
        "sinh", "tan", "pow", "__pow__", "__rpow__", "softplus", "layer_norm", "group_norm", "cosine_similarity",
        "poisson_nll_loss", "cosine_embedding_loss", "nll_loss", "hinge_embedding_loss", "kl_div", "l1_loss",
        "smooth_l1_loss", "huber_loss", "mse_loss", "margin_ranking_loss", "multilabel_margin_loss",
        "soft_margin_loss", "triplet_margin_loss", "multi_margin_loss", "binary_cross_entropy_with_logits", "dist",
        "pdist", "cdist", "renorm", "logsumexp", "prod", "softmax", "log_softmax", "cumprod", "cumsum", "sum",
        "norm", "vector_norm", "matrix_norm",
    }
)  # fmt: skip
#: The CPU's float32 list, the ops of it a diffusion step can call (transposed convolutions are fp32 there).
_CPU_FP32 = frozenset(
    {
        "conv_transpose1d", "conv_transpose2d", "conv_transpose3d", "avg_pool3d", "binary_cross_entropy",
        "grid_sample", "prod", "cdist", "max_pool3d", "adaptive_avg_pool3d", "mse_loss", "l1_loss",
        "smooth_l1_loss", "huber_loss", "nll_loss", "kl_div", "binary_cross_entropy_with_logits", "cross_entropy",
        "cosine_embedding_loss", "hinge_embedding_loss", "poisson_nll_loss", "margin_ranking_loss",
    }
)  # fmt: skip


@dataclass(frozen=True)
class Policy:
    """Which ops autocast runs in the low-precision dtype and which in float32, on one device type."""

    device: str
    lower: frozenset
    fp32: frozenset
    #: `F.interpolate` reaches the upsampling ops, which CUDA's list runs in float32 (all but "area").
    upsample_in_fp32: bool


CUDA = Policy("cuda", _LOWER | {"conv_transpose1d", "conv_transpose2d", "conv_transpose3d"}, _CUDA_FP32, True)
CPU = Policy("cpu", _LOWER, _CPU_FP32, False)
POLICIES = {"cuda": CUDA, "cpu": CPU}


class EmulatedAutocast(TorchFunctionMode):
    """Autocast's casts for tensors of any device (meant for meta tensors); see the module docstring."""

    def __init__(self, policy: Policy, dtype: torch.dtype = torch.bfloat16):
        super().__init__()
        self.policy = policy
        self.dtype = dtype
        self._weights: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}  # cast cache of leaf weights

    def _cast(self, t, dtype):
        if not isinstance(t, torch.Tensor) or not t.is_floating_point() or t.dtype in (dtype, torch.float64):
            return t
        if dtype != torch.float32 and t.is_leaf and t.requires_grad:  # autocast caches these casts for the region:
            cached = self._weights.get(id(t))  # one copy per weight (a cast made without gradient is replaced by one
            stale = cached is None or cached[0] is not t  # with a graph when gradient is on, as the real cache
            if stale or (torch.is_grad_enabled() and cached[1].grad_fn is None):  # gives the weight its gradient)
                cached = (t, t.to(dtype))
                self._weights[id(t)] = cached
                for timeline in ACTIVE:  # a sharding engine gathers this weight in bf16 itself (see MemoryTimeline)
                    timeline.exempt(cached[1])
            return cached[1]
        return t.to(dtype)

    def target(self, name: str, args=(), kwargs=None) -> torch.dtype | None:
        """The dtype autocast casts the floating-point arguments of the op called `name` to, or None."""
        kwargs = kwargs or {}
        if name in self.policy.lower:
            return self.dtype
        if name in self.policy.fp32:
            if kwargs.get("dtype") is not None:  # an explicit dtype wins, as under autocast
                return None
            return torch.float32
        if name == "interpolate" and self.policy.upsample_in_fp32:
            mode = kwargs.get("mode", args[3] if len(args) > 3 else "nearest")
            return torch.float32 if mode != "area" else None
        return None

    def cast_for(self, name: str, *tensors):
        """`tensors` cast as autocast casts the arguments of the op called `name`."""
        dtype = self.target(name)
        return tuple(self._cast(t, dtype) for t in tensors) if dtype is not None else tensors

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.Tensor.backward:  # checkpointed blocks recompute in the backward pass and must see the
            with self:  # casts their forward saw; the mode is off inside this handler, so it goes back on, and the
                return _backward(*args, **kwargs)  # engine runs directly (`Tensor.backward` would come back here)
        dtype = self.target(getattr(func, "__name__", ""), args, kwargs)
        if dtype is not None:
            args = tree_map(lambda t: self._cast(t, dtype), args)
            kwargs = tree_map(lambda t: self._cast(t, dtype), kwargs)
        return func(*args, **kwargs)


def _backward(loss: torch.Tensor, gradient=None, retain_graph=None, create_graph=False, inputs=None):
    from torch.autograd.graph import _engine_run_backward

    gradient = torch.ones_like(loss) if gradient is None else gradient
    keep = create_graph if retain_graph is None else retain_graph
    inputs = () if inputs is None else tuple(inputs)
    _engine_run_backward(
        (loss,), (gradient,), keep, create_graph, inputs, allow_unreachable=True, accumulate_grad=True
    )


def active_autocast() -> EmulatedAutocast | None:
    """The innermost [`EmulatedAutocast`] on the mode stack, if any (for calls that bypass torch functions)."""
    from torch.overrides import _get_current_function_mode_stack

    for mode in reversed(_get_current_function_mode_stack()):
        if isinstance(mode, EmulatedAutocast):
            return mode
    return None
