"""Measuring a step on the meta device: live bytes over time, the bytes autograd saves, and model FLOPs.

The same three instruments run on real tensors (the tests run them during a real CPU step), so that what the
planner reports on meta tensors can be checked against what a real step allocates:

- [`MemoryTimeline`]: a `TorchDispatchMode` that adds the bytes of every storage an operation creates and takes
  them off when the storage dies (a weak reference to it), and keeps the peak. Storages that existed before (the
  weights, the inputs) are not counted: the timeline is the step's own memory on top of them.
- [`SavedBytes`]: `torch.autograd.graph.saved_tensors_hooks` that sum the storages autograd keeps for the backward
  pass, each storage once, the module parameters' excluded (they are weights, counted as such).
- [`count_flops`]: `torch.utils.flop_counter.FlopCounterMode`, as `benchmarks/bench_step.py` counts.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterable
from contextlib import contextmanager

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten


def _key(t: torch.Tensor) -> int:
    return t.untyped_storage()._cdata


def storage_keys(tensors: Iterable[torch.Tensor]) -> set[int]:
    """The storages of `tensors` (parameters, buffers): what `SavedBytes` leaves out."""
    return {_key(t) for t in tensors if isinstance(t, torch.Tensor) and not _is_subclass(t)}


def _is_subclass(t: torch.Tensor) -> bool:
    return type(t) not in (torch.Tensor, torch.nn.Parameter)


#: The timeline of the trace in progress (for `EmulatedAutocast` to mark its weight casts).
ACTIVE: list = []


class MemoryTimeline(TorchDispatchMode):
    """Live bytes of the storages created inside the mode, and their peak (see the module docstring)."""

    def __init__(self):
        super().__init__()
        self.live: dict[int, int] = {}
        self.external: set[int] = set()
        self.current = 0
        self.peak = 0
        # The same, without the autocast casts of trainable weights (`exempt`): what FSDP2 and ZeRO-3, which gather
        # each block's weights in bf16 themselves and free them after use, hold instead of those casts.
        self.exempt_keys: set[int] = set()
        self.current_sharded = 0
        self.peak_sharded = 0

    def _free(self, key: int) -> None:
        size = self.live.pop(key, 0)
        self.current -= size
        if key in self.exempt_keys:
            self.exempt_keys.discard(key)
        else:
            self.current_sharded -= size

    def exempt(self, t: torch.Tensor) -> None:
        """Leave `t`'s storage (made inside the mode) out of the sharded count (see `__init__`)."""
        key = t.untyped_storage()._cdata
        if key in self.live and key not in self.exempt_keys:
            self.exempt_keys.add(key)
            self.current_sharded -= self.live[key]

    def _forget(self, key: int) -> None:
        self.external.discard(key)

    def reset_peak(self) -> None:
        self.peak = self.current
        self.peak_sharded = self.current_sharded

    def __enter__(self):
        ACTIVE.append(self)
        return super().__enter__()

    def __exit__(self, *exc):
        ACTIVE.remove(self)
        return super().__exit__(*exc)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        inputs, _ = tree_flatten((args, kwargs or {}))
        for t in inputs:
            if isinstance(t, torch.Tensor) and not _is_subclass(t):
                storage = t.untyped_storage()
                key = storage._cdata
                if key not in self.live and key not in self.external:
                    self.external.add(key)  # made before the mode: a weight or an input
                    weakref.finalize(storage, self._forget, key)
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor) and not _is_subclass(t):
                storage = t.untyped_storage()
                key = storage._cdata
                if key in self.live or key in self.external:
                    continue
                size = storage.nbytes()
                self.live[key] = size
                self.current += size
                self.peak = max(self.peak, self.current)
                self.current_sharded += size
                self.peak_sharded = max(self.peak_sharded, self.current_sharded)
                weakref.finalize(storage, self._free, key)
        return out


class SavedBytes:
    """Bytes autograd saves for the backward pass inside the block, each storage once, weights excluded."""

    def __init__(self, exclude: set[int] | None = None):
        self.exclude = exclude or set()
        self.seen: set[int] = set()
        self.bytes = 0
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, lambda t: t)

    def _pack(self, t: torch.Tensor) -> torch.Tensor:
        if _is_subclass(t):
            return t
        key = _key(t)
        if key not in self.exclude and key not in self.seen:
            self.seen.add(key)
            self.bytes += t.untyped_storage().nbytes()
        return t

    def __enter__(self) -> SavedBytes:
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._hooks.__exit__(*exc)


def count_flops(fn: Callable[[], object]) -> tuple[object, int]:
    """`fn()`'s result and the FLOPs its matrix products, convolutions and attention do (math attention kernel)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter, sdpa_kernel(SDPBackend.MATH):
        result = fn()
    return result, int(counter.get_total_flops())


@contextmanager
def fused_attention_on_meta():
    """`scaled_dot_product_attention` on meta tensors through the fused (flash) kernel, as on a CPU or a GPU.

    On the meta device PyTorch picks the math kernel, which saves the attention weights (`[B, heads, L, L]`); the
    fused kernels the trainer runs save the output and its log-sum-exp instead. Inside this block meta tensors take
    the fused kernel's path (its meta implementation, with autograd), so the saved bytes are the real ones.
    """
    import torch.nn.functional as F

    from .autocast import active_autocast

    original = F.scaled_dot_product_attention

    def fused(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
        if query.device.type != "meta":
            return original(query, key, value, attn_mask, dropout_p, is_causal, scale=scale, enable_gqa=enable_gqa)
        autocast = active_autocast()  # this function is no torch function: make the cast autocast would make
        if autocast is not None:
            query, key, value, attn_mask = autocast.cast_for(
                "scaled_dot_product_attention", query, key, value, attn_mask
            )
        if enable_gqa and key.shape[-3] != query.shape[-3]:
            repeats = query.shape[-3] // key.shape[-3]
            key, value = key.repeat_interleave(repeats, -3), value.repeat_interleave(repeats, -3)
        if attn_mask is not None and attn_mask.dtype == torch.bool:
            attn_mask = torch.zeros(attn_mask.shape, dtype=query.dtype, device=query.device)
        flash = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
        return flash(query, key, value, dropout_p, is_causal, attn_mask=attn_mask, scale=scale)[0]

    F.scaled_dot_product_attention = fused
    try:
        yield
    finally:
        F.scaled_dot_product_attention = original
