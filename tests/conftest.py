import warnings

import pytest
import torch

warnings.filterwarnings("ignore", message=".*torchvision.*")


@pytest.fixture
def tiny_pipe():
    from srpo_trl.testing import tiny_flux_pipeline

    return tiny_flux_pipeline(seed=0)


def small_config(tmp_path, **overrides):
    """An SRPOConfig sized for 64-px tiny pipelines on the CPU."""
    from srpo_trl.testing import tiny_srpo_config

    output_dir = overrides.pop("output_dir", str(tmp_path / "out"))
    return tiny_srpo_config(output_dir, **overrides)


@pytest.fixture
def config(tmp_path):
    return lambda **overrides: small_config(tmp_path, **overrides)


@pytest.fixture
def shapes_config(tmp_path):
    """An SRPOConfig for the shipped tiny pipeline and reward (`srpo_trl.pretrained`): its 16 text tokens and the
    control words +photo / -drawing. The tests that claim training improves something use these: a model that
    knows something, which training can improve."""
    words = dict(max_sequence_length=16, positive_control_words=["photo"], negative_control_words=["drawing"])
    return lambda **overrides: small_config(tmp_path, **{**words, **overrides})


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
