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
    from srpo_trl import SRPOConfig

    kwargs = dict(
        output_dir=str(tmp_path / "out"),
        max_steps=4,
        resolution=64,
        rollout_steps=4,
        max_sequence_length=32,
        positive_control_words=["blue"],
        negative_control_words=["red"],
        report_to="none",
        save_strategy="no",
        logging_steps=1,
        disable_tqdm=True,
        transformer_gradient_checkpointing=False,
        vae_gradient_checkpointing=False,
        seed=0,
    )
    kwargs.update(overrides)
    return SRPOConfig(**kwargs)


@pytest.fixture
def config(tmp_path):
    return lambda **overrides: small_config(tmp_path, **overrides)


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
