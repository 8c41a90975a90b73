"""Wan's VAE decode with gradient, chunk by chunk over time, each chunk under gradient checkpointing.

diffusers' `AutoencoderKLWan` (0.42) has no gradient checkpointing, so a decode with gradient keeps every activation of
every output frame for the backward pass (in fp32 about 17 KB per output frame-pixel on Wan 2.1's VAE, docs/models.md).
Its own `_decode` already runs the decoder one latent frame at a time: a causal 3-D convolution of the next chunk reads
the last two frames of its input in the chunk before, which the decoder keeps in a list `feat_cache` (one slot per
causal convolution: `None` before the first chunk, the string `"Rep"` for the temporal upsampler after the first
chunk, which has no frame to pair with, else a tensor) that it overwrites in place.

[`checkpointed_decode`] runs the same chunks, each under `torch.utils.checkpoint.checkpoint(use_reentrant=False)`, as
a pure function of (latent chunk, cache tensors in) -> (frames out, cache tensors out): each call builds a fresh cache
list and never touches the VAE's own, so the recomputation in the backward pass sees exactly the cache state of the
forward pass, and gradients flow from one chunk to the one before through the cache tensors. The backward keeps, per
chunk, only its inputs (the latent chunk and the caches, two frames of each causal convolution's input) and
recomputes one chunk's activations at a time; the video's output frames (for the clamp) are kept as in the stock
decode. The result equals `vae.decode` (tests: within 1e-5 in fp32, gradients too).
"""

from __future__ import annotations

import torch
from torch.utils.checkpoint import checkpoint

#: Marks a cache slot holding a tensor in a chunk's cache layout (the tensors themselves travel as checkpoint inputs).
_TENSOR = object()


def supports_chunked_decode(vae) -> bool:
    """Whether `vae` decodes the way this module expects: `AutoencoderKLWan`'s chunked decoder with a feature cache."""
    decoder = getattr(vae, "decoder", None)
    counts = getattr(vae, "_cached_conv_counts", None)
    return decoder is not None and isinstance(counts, dict) and "decoder" in counts and hasattr(vae, "post_quant_conv")


def _decode_chunk(decoder, first_chunk: bool, layout: tuple, x: torch.Tensor, *cache: torch.Tensor):
    """One latent frame through the decoder: a pure function of its tensor inputs (`x`, `cache`) and of the static
    `layout` (which slots hold `None`, `"Rep"` or a tensor). Returns the frames, the new layout and the new cache
    tensors; the list the decoder overwrites is built here, so a recomputation starts from the same state."""
    supply = iter(cache)
    feat_cache = [next(supply) if slot is _TENSOR else slot for slot in layout]
    out = decoder(x, feat_cache=feat_cache, feat_idx=[0], first_chunk=first_chunk)
    new_layout = tuple(_TENSOR if isinstance(slot, torch.Tensor) else slot for slot in feat_cache)
    return out, new_layout, tuple(slot for slot in feat_cache if isinstance(slot, torch.Tensor))


def _decode_one(vae, z: torch.Tensor) -> torch.Tensor:
    # post_quant_conv is a 1x1x1 convolution: on the whole latent at once, as the stock `_decode` (it saves only `z`).
    x = vae.post_quant_conv(z)
    layout: tuple = (None,) * vae._cached_conv_counts["decoder"]
    cache: tuple = ()
    frames = []
    for i in range(x.shape[2]):  # one latent frame per chunk, as the stock decode (1, then 4 frames each for Wan)
        out, layout, cache = checkpoint(
            _decode_chunk, vae.decoder, i == 0, layout, x[:, :, i : i + 1], *cache, use_reentrant=False
        )
        frames.append(out)
    del cache  # the last chunk's caches feed nothing
    out = torch.cat(frames, 2)
    patch_size = vae.config.get("patch_size")
    if patch_size is not None:  # TI2V's VAE decodes 2x2 patches into channels: the stock unpatchify, a pure reshape
        from diffusers.models.autoencoders.autoencoder_kl_wan import unpatchify

        out = unpatchify(out, patch_size=patch_size)
    return torch.clamp(out, min=-1.0, max=1.0)


def checkpointed_decode(vae, z: torch.Tensor) -> torch.Tensor:
    """`vae.decode(z, return_dict=False)[0]` (videos `[B, C, F, H, W]` in [-1, 1]) with the decoder checkpointed per
    latent frame: the backward pass keeps one chunk's activations (recomputed) plus every chunk's caches, instead of
    every activation of every frame.

    Follows the stock decode's switches: `use_slicing` decodes the batch one video at a time (the recomputation then
    holds one video's chunk); with `use_tiling` on a latent larger than a tile the stock tiled decode runs (no
    checkpointing: its blending of overlapping tiles is another computation). A VAE this module does not know
    (see [`supports_chunked_decode`]) decodes the stock way too.
    """
    if not supports_chunked_decode(vae):
        return vae.decode(z, return_dict=False)[0]
    if vae.use_tiling:
        ratio = vae.spatial_compression_ratio
        if z.shape[-1] > vae.tile_sample_min_width // ratio or z.shape[-2] > vae.tile_sample_min_height // ratio:
            return vae.decode(z, return_dict=False)[0]
    hook = getattr(vae, "_hf_hook", None)  # accelerate's offload hook, which the stock `decode` triggers too
    if hook is not None and hasattr(hook, "pre_forward"):
        hook.pre_forward(vae)
    if vae.use_slicing and z.shape[0] > 1:
        return torch.cat([_decode_one(vae, row) for row in z.split(1)])
    return _decode_one(vae, z)
