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


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
