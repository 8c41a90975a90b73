"""Training excludes cuDNN's fused attention on CUDA (its backward gave NaN on an H200: docs/benchmarks.md)."""

import torch

from srpo_trl.attention import training_attention


def test_cudnn_attention_is_excluded_on_cuda_unless_allowed(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    before = torch.backends.cuda.cudnn_sdp_enabled()
    with training_attention():
        assert not torch.backends.cuda.cudnn_sdp_enabled()
        assert torch.backends.cuda.flash_sdp_enabled() and torch.backends.cuda.mem_efficient_sdp_enabled()
        assert torch.backends.cuda.math_sdp_enabled()
    assert torch.backends.cuda.cudnn_sdp_enabled() == before
    with training_attention(allow_cudnn=True):
        assert torch.backends.cuda.cudnn_sdp_enabled() == before
