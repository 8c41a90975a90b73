"""Wan's VAE decode chunked over time with each chunk checkpointed (`srpo_trl.models.wan_decode`), on the tiny Wan 2.1
and TI2V VAEs: the same videos and gradients as the stock `vae.decode` (through the adapter too, with
`decode_latent_frames`), recomputation in the backward, and far fewer bytes kept for the backward pass, growing much
more slowly with the frame count."""

import pytest
import torch

from srpo_trl.models import get_adapter, wan_decode
from srpo_trl.models.wan_decode import checkpointed_decode
from srpo_trl.testing import tiny_wan_pipeline

LATENT_SIDE = {"2.1": 4, "2.2-ti2v": 2}  # 32 px: Wan 2.1's VAE compresses 8x, TI2V's 16x (with its 2x2 patches)


def _vae(variant):
    vae = tiny_wan_pipeline(0, variant=variant).vae
    with torch.no_grad():  # the tiny pipeline scales the output 5x (vivid colour); 5/3 clamps 10-20 % of the video
        vae.decoder.conv_out.weight.div_(3)
    return vae


def _latents(vae, variant, batch=2, frames=3, seed=0):
    side = LATENT_SIDE[variant]
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(batch, vae.config.z_dim, frames, side, side, generator=generator)


def _stock(vae, z):
    return vae.decode(z, return_dict=False)[0]


def _value_and_grads(vae, decode, z, weights=None):
    """The video, and the gradients of a weighted sum of it w.r.t. the latents and two decoder weights."""
    z = z.clone().requires_grad_(True)
    params = [vae.decoder.conv_in.weight, vae.decoder.up_blocks[0].resnets[0].conv1.weight]
    for p in params:
        p.requires_grad_(True)
        p.grad = None
    video = decode(z)
    weights = torch.randn(video.shape, generator=torch.Generator().manual_seed(1)) if weights is None else weights
    (video * weights).sum().backward()
    grads = [z.grad, *(p.grad for p in params)]
    for p in params:
        p.requires_grad_(False)
    return video.detach(), grads


@pytest.mark.parametrize("slicing", [False, True], ids=["batched", "sliced"])
@pytest.mark.parametrize("variant", list(LATENT_SIDE))
def test_checkpointed_decode_equals_the_stock_decode_with_its_gradients(variant, slicing):
    vae = _vae(variant).requires_grad_(False)
    vae.use_slicing = slicing
    z = _latents(vae, variant)  # 3 latent frames: 9 video frames, the first chunk and two of 4 frames
    calls = []
    # The decoder's first layer: a recomputation stops as soon as it has what the backward needs (early stop), before
    # the decoder's own forward returns.
    vae.decoder.conv_in.register_forward_hook(lambda *_: calls.append(1))
    stock, stock_grads = _value_and_grads(vae, lambda x: _stock(vae, x), z)
    stock_calls = len(calls)
    ours, our_grads = _value_and_grads(vae, lambda x: checkpointed_decode(vae, x), z)
    assert ours.shape == stock.shape == (2, 3, 9, 32, 32)
    clamped = (stock.abs() == 1).float().mean().item()
    assert 0 < clamped < 0.5  # the clamp is active, but most of the video carries a gradient
    torch.testing.assert_close(ours, stock, atol=1e-5, rtol=0)
    for ours_grad, stock_grad in zip(our_grads, stock_grads):
        assert stock_grad.abs().max() > 1e-3
        torch.testing.assert_close(ours_grad, stock_grad, atol=1e-5 * stock_grad.abs().max().item(), rtol=0)
    # Every chunk ran twice (forward, then recomputed in the backward); the stock decode runs each once.
    assert len(calls) - stock_calls == 2 * stock_calls
    print(
        f"wan {variant} slicing={slicing}: video {(ours - stock).abs().max():.1e}, gradients "
        + ", ".join(f"{(a - b).abs().max() / b.abs().max():.1e}" for a, b in zip(our_grads, stock_grads))
    )


def test_the_adapter_decodes_checkpointed_with_gradient_and_stock_without():
    """With gradient the adapter takes the checkpointed path (the same video and gradient as
    `vae_gradient_checkpointing=False`), also on the first `decode_latent_frames`; without gradient the stock one."""
    pipe = tiny_wan_pipeline(0)
    adapter = get_adapter(pipe, max_sequence_length=32)
    assert adapter.vae_gradient_checkpointing and adapter.checkpoints_vae_decode
    latents = _latents(pipe.vae, "2.1", batch=1, frames=3)
    used = []
    real = wan_decode.checkpoint
    wan_decode.checkpoint = lambda *a, **k: used.append(1) or real(*a, **k)
    try:
        for frames in (None, 2):
            adapter.decode_latent_frames = frames
            results = []
            for checkpointing in (True, False):
                adapter.vae_gradient_checkpointing = checkpointing
                used.clear()
                x = latents.clone().requires_grad_(True)
                video = adapter.decode(adapter.reward_latents(x), 32, 32)
                video.square().mean().backward()
                assert len(used) == (x.shape[2] if frames is None else frames) * checkpointing
                results.append((video.detach(), x.grad))
            (ours, ours_grad), (stock, stock_grad) = results
            assert ours.shape == (1, 9 if frames is None else 5, 3, 32, 32)
            torch.testing.assert_close(ours, stock, atol=1e-5, rtol=0)
            torch.testing.assert_close(ours_grad, stock_grad, atol=1e-5 * stock_grad.abs().max().item(), rtol=0)
        adapter.vae_gradient_checkpointing = True
        used.clear()
        with torch.no_grad():
            adapter.decode(latents, 32, 32)
        assert not used
    finally:
        wan_decode.checkpoint = real


def _saved_bytes(vae, decode, z):
    """Bytes the backward pass keeps: unique storages of the tensors saved for backward (parameters left out, they
    are resident anyway), plus the tensors each checkpoint keeps as its inputs for the recomputation."""
    params = {p.untyped_storage().data_ptr() for p in vae.parameters()}
    kept = {}

    def pack(t):
        storage = t.untyped_storage()
        if storage.data_ptr() not in params:
            kept[storage.data_ptr()] = storage.nbytes()
        return t

    real = wan_decode.checkpoint

    def counting(fn, *args, **kwargs):
        for arg in args:
            if isinstance(arg, torch.Tensor):
                pack(arg)
        return real(fn, *args, **kwargs)

    wan_decode.checkpoint = counting
    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            decode(z.clone().requires_grad_(True))
    finally:
        wan_decode.checkpoint = real
    return sum(kept.values())


@pytest.mark.parametrize("variant", list(LATENT_SIDE))
def test_checkpointing_keeps_far_fewer_bytes_and_they_grow_slower_per_frame(variant):
    """Byte counts of shapes, not timings: the same on every machine. On the tiny VAEs the stock decode keeps 6-18x
    more, and adds 6-9x more per latent frame (the checkpointed decode keeps per frame only the causal caches, two
    frames of each causal convolution's input, and the clamp's input); asserted with a margin."""
    vae = _vae(variant).requires_grad_(False)
    stock, ours = {}, {}
    for frames in (2, 6):
        z = _latents(vae, variant, batch=1, frames=frames)
        stock[frames] = _saved_bytes(vae, lambda x: _stock(vae, x), z)
        ours[frames] = _saved_bytes(vae, lambda x: checkpointed_decode(vae, x), z)
    stock_slope, our_slope = (stock[6] - stock[2]) / 4, (ours[6] - ours[2]) / 4
    print(
        f"wan {variant}: stock {stock} bytes, checkpointed {ours}; per latent frame {stock_slope:.0f} / {our_slope:.0f}"
    )
    assert 0 < ours[2] and 0 < our_slope
    assert stock[6] > 4 * ours[6] and stock[2] > 4 * ours[2]
    assert stock_slope > 4 * our_slope


@pytest.mark.parametrize("own_checkpointing", [True, False], ids=["wan", "without"])
def test_preparation_warns_only_where_no_checkpointing_applies(own_checkpointing, caplog):
    """Wan's adapter checkpoints its own decode, so preparation does not warn that `AutoencoderKLWan` cannot; an
    adapter without that (here the Wan adapter with the attribute cleared, standing in for Qwen-Image's video VAE)
    still gets the warning."""
    from types import SimpleNamespace

    from srpo_trl.preparation import prepare_trainable

    pipe = tiny_wan_pipeline(0)
    adapter = get_adapter(pipe, max_sequence_length=32)
    adapter.checkpoints_vae_decode = own_checkpointing
    args = SimpleNamespace(
        quantize_base=None, transformer_gradient_checkpointing=False, vae_gradient_checkpointing=True, vae_slicing=True
    )
    with caplog.at_level("WARNING", logger="srpo_trl.preparation"):
        prepare_trainable(pipe, adapter, args, None)
    warned = any("does not support gradient checkpointing" in r.getMessage() for r in caplog.records)
    assert warned == (not own_checkpointing)
