"""FLUX.1 Canny / Depth Control through the Control adapter, on a tiny offline `FluxControlPipeline`: the control
image's latents beside the noisy ones on the channel axis, as the stock sampler (within 1e-5); the control image from a
dataset column conditions the rollout and both training calls; an uphill step at the recipe defaults with fp32 masters
on a bf16-loaded pipeline; the LoRA (alpha != r, rsLoRA, DoRA) and full fine-tune round trips through the stock
loaders. (The Img2Img / Inpaint variants are in tests/test_variants.py.)"""

import numpy as np
import pytest
import torch
from datasets import Dataset
from diffusers import FlowMatchEulerDiscreteScheduler
from peft import LoraConfig
from PIL import Image
from uphill import uphill_step

from srpo_trl import ColorWordReward, SRPOTrainer, direct_align
from srpo_trl.models import FluxControlAdapter, get_adapter
from srpo_trl.testing import tiny_flux_control_pipeline

SIZE, STEPS = 64, 4


def _control(seed: int) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8))


def _pixels(image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(image, dtype=np.float32) / 255).permute(2, 0, 1)[None]


def _pipe(seed=0):
    pipe = tiny_flux_control_pipeline(seed)
    pipe.scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=False)  # FLUX.1-dev's static grid
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _stock(pipe, control, latents):
    return pipe(
        prompt="a bird", control_image=control, height=SIZE, width=SIZE, num_inference_steps=STEPS, guidance_scale=3.5,
        max_sequence_length=32, latents=latents, output_type="pt", generator=torch.Generator().manual_seed(3),
    ).images  # fmt: skip


def test_our_rollout_equals_the_stock_control_sampler_and_the_control_image_matters():
    pipe = _pipe()
    adapter = get_adapter(pipe, max_sequence_length=32)
    assert (
        isinstance(adapter, FluxControlAdapter)
        and adapter.reference_image_column_field == "dataset_control_image_column"
    )
    eps = adapter.sample_noise(1, SIZE, SIZE, torch.Generator().manual_seed(3), torch.device("cpu"))
    text = adapter.add_reference(adapter.encode_prompts(["a bird"], eps.device), _pixels(_control(0)), SIZE, SIZE)
    x0 = direct_align.euler_sample(
        lambda x, s, _: adapter.velocity(pipe.transformer, x, s, text, 3.5, SIZE, SIZE),
        eps,
        direct_align.shifted_grid(STEPS, 3.0).float(),
    )
    ours, stock = adapter.decode(x0, SIZE, SIZE), _stock(pipe, _control(0), eps)
    print(f"control: largest difference to the stock sampler {(ours - stock).abs().max().item():.1e}")
    torch.testing.assert_close(ours, stock, atol=1e-5, rtol=0)
    assert (stock - _stock(pipe, _control(1), eps)).abs().max() > 1e-3


def _trainer(config, lora=None, dtype=torch.float32, **overrides):
    pipe = _pipe()
    if dtype != torch.float32:
        pipe.to(dtype=dtype)
    data = Dataset.from_dict(
        {"prompt": ["a cat", "a dog", "a house", "the sea"], "control_image": [_control(i) for i in range(4)]}
    )
    peft = LoraConfig(**{"init_lora_weights": "gaussian", **lora}) if lora is not None else None
    return SRPOTrainer(pipe, ColorWordReward(), args=config(max_sequence_length=32, **overrides), train_dataset=data,
                       peft_config=peft)  # fmt: skip


def test_the_control_column_conditions_every_call_and_a_step_goes_uphill_on_a_bf16_pipeline(config):
    trainer = _trainer(
        config, dict(r=4, lora_alpha=8), dtype=torch.bfloat16, max_steps=1, per_device_train_batch_size=2
    )
    seen = []
    velocity = trainer.adapter.velocity

    def spy(transformer, latents, sigma, text, guidance_scale, height, width, target=None):
        seen.append("control_latents" in text)
        return velocity(transformer, latents, sigma, text, guidance_scale, height, width, target=target)

    trainer.adapter.velocity = spy
    step = uphill_step(trainer)
    assert seen and all(seen) and set(step.dots) == {"denoise", "inversion"} and step.uphill, step.dots
    assert step.dtypes == {torch.float32} and trainer.pipeline.transformer.dtype == torch.bfloat16
    with pytest.raises(ValueError, match="no column 'control_image'"):
        SRPOTrainer(_pipe(), ColorWordReward(), args=config(), train_dataset=Dataset.from_dict({"prompt": ["a cat"]}))


LORAS = {
    "alpha-not-r": dict(r=4, lora_alpha=8),
    "rslora": dict(r=4, lora_alpha=8, use_rslora=True),
    "dora": dict(r=4, lora_alpha=8, use_dora=True),
    "full": None,
}


@pytest.mark.parametrize("kind", list(LORAS))
def test_the_result_reloads_in_the_stock_control_pipeline_as_trained(tmp_path, config, kind):
    from diffusers import FluxTransformer2DModel

    trainer = _trainer(config, LORAS[kind])
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():  # far from identity, so that the comparison means something
        for name, p in trainer.model.named_parameters():
            if "lora_B" in name or kind == "full" and name == "proj_out.weight":
                p.add_(0.05 * torch.randn(p.shape, generator=generator))
    trainer.save_model(str(tmp_path / kind))
    eps = get_adapter(_pipe()).sample_noise(1, SIZE, SIZE, torch.Generator().manual_seed(3), torch.device("cpu"))
    with_trained = _pipe()
    with_trained.transformer = trainer.accelerator.unwrap_model(trainer.model).eval()
    fresh = _pipe()
    base = _stock(fresh, _control(0), eps)
    if kind == "full":
        fresh.transformer = FluxTransformer2DModel.from_pretrained(str(tmp_path / kind), subfolder="transformer")
    else:
        fresh.load_lora_weights(str(tmp_path / kind))
    trained, loaded = _stock(with_trained, _control(0), eps), _stock(fresh, _control(0), eps)
    assert (trained - base).abs().max() > 1e-2
    gap = (loaded - trained).abs().max().item()
    print(f"control {kind}: reloaded against trained {gap:.1e}")
    assert gap <= 1e-5
