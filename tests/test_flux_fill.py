"""FLUX.1 Fill through the Fill adapter, on a tiny offline `FluxFillPipeline`: the masked source image's latents and the
mask beside the noisy latents on the channel axis, as the stock sampler (within 1e-5, on a speckled mask that pins the
mask's channel layout), and the mask changes the result; the source image and mask columns condition the rollout and
both training calls, and a step at the family's defaults goes uphill with fp32 masters on a bf16-loaded pipeline; a
dataset without a mask column trains on random masks; the LoRA (alpha != r, rsLoRA, DoRA) and full fine-tune round
trips through the stock loaders."""

import numpy as np
import pytest
import torch
from datasets import Dataset
from diffusers import FlowMatchEulerDiscreteScheduler
from lora_helpers import LORAS, far_from_identity
from peft import LoraConfig
from PIL import Image
from uphill import uphill_step

from srpo_trl import ColorWordReward, SRPOTrainer, direct_align
from srpo_trl.models import FluxFillAdapter, get_adapter
from srpo_trl.testing import tiny_flux_fill_pipeline

SIZE, STEPS, GUIDANCE = 64, 4, 30.0
PROMPTS = ["a cat", "a dog", "a house", "the sea"]


def _source(seed: int) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8))


def _box_mask(seed: int) -> Image.Image:
    """White (repaint) in a box whose edges fall inside the VAE's 8-pixel blocks."""
    top, left = np.random.default_rng(seed).integers(3, 29, 2)
    mask = np.zeros((SIZE, SIZE), dtype=np.uint8)
    mask[top : top + 27, left : left + 21] = 255
    return Image.fromarray(mask, mode="L")


def _speckle_mask(seed: int) -> Image.Image:
    """White in random pixels: any mix-up of the mask's 8 x 8 blocks into channels shows."""
    return Image.fromarray(np.where(np.random.default_rng(seed).random((SIZE, SIZE)) < 0.5, 255, 0).astype(np.uint8))


def _pixels(image) -> torch.Tensor:
    array = np.asarray(image, dtype=np.float32) / 255
    return torch.from_numpy(array[..., None] if array.ndim == 2 else array).permute(2, 0, 1)[None]


def _pipe(seed=0):
    pipe = tiny_flux_fill_pipeline(seed)
    pipe.scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=False)  # FLUX.1-dev's static grid
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _stock(pipe, source, mask, latents):
    return pipe(
        prompt="a bird", image=source, mask_image=mask, height=SIZE, width=SIZE, num_inference_steps=STEPS,
        guidance_scale=GUIDANCE, max_sequence_length=32, latents=latents, output_type="pt",
        generator=torch.Generator().manual_seed(3),
    ).images  # fmt: skip


def _eps(adapter):
    return adapter.sample_noise(1, SIZE, SIZE, torch.Generator().manual_seed(3), torch.device("cpu"))


def test_our_rollout_equals_the_stock_fill_sampler_and_the_mask_matters():
    pipe = _pipe()
    adapter = get_adapter(pipe, max_sequence_length=32)
    assert isinstance(adapter, FluxFillAdapter) and adapter.uses_mask and adapter.reference_role == "source_images"
    assert adapter.reference_image_column_field == "dataset_reference_image_column"
    assert adapter.default_guidance == {"rollout": GUIDANCE, "train": GUIDANCE, "sample": GUIDANCE}
    assert pipe.transformer.config.in_channels == 288
    eps, text = _eps(adapter), adapter.encode_prompts(["a bird"], torch.device("cpu"))
    with pytest.raises(ValueError, match="masks="):
        adapter.add_reference(text, _pixels(_source(0)), SIZE, SIZE)
    text = adapter.add_reference(text, _pixels(_source(0)), SIZE, SIZE, masks=_pixels(_speckle_mask(0)))
    assert text["fill_latents"].shape == (1, (SIZE // 16) ** 2, 288 - 16)
    x0 = direct_align.euler_sample(
        lambda x, s, _: adapter.velocity(pipe.transformer, x, s, text, GUIDANCE, SIZE, SIZE),
        eps,
        direct_align.shifted_grid(STEPS, 3.0).float(),
    )
    ours, stock = adapter.decode(x0, SIZE, SIZE), _stock(pipe, _source(0), _speckle_mask(0), eps)
    print(f"fill: largest difference to the stock sampler {(ours - stock).abs().max().item():.1e}")
    torch.testing.assert_close(ours, stock, atol=1e-5, rtol=0)
    assert (stock - _stock(pipe, _source(0), _box_mask(0), eps)).abs().max() > 1e-3


def _trainer(config, lora=None, dtype=torch.float32, masks=True, **overrides):
    pipe = _pipe()
    if dtype != torch.float32:
        pipe.to(dtype=dtype)
    columns = {"prompt": PROMPTS, "reference_image": [_source(i) for i in range(4)]}
    if masks:
        columns["mask"] = [_box_mask(i) for i in range(4)]
    peft = LoraConfig(**{"init_lora_weights": "gaussian", **lora}) if lora is not None else None
    return SRPOTrainer(pipe, ColorWordReward(), args=config(max_sequence_length=32, **overrides),
                       train_dataset=Dataset.from_dict(columns), peft_config=peft)  # fmt: skip


def _spy_on_velocity(trainer) -> tuple[list[bool], list[torch.Tensor]]:
    """Whether each velocity call got the fill latents at Fill's guidance, and the masks (packed) it got."""
    seen, masks = [], []
    velocity = trainer.adapter.velocity

    def spy(transformer, latents, sigma, text, guidance_scale, height, width, target=None):
        seen.append("fill_latents" in text and guidance_scale == GUIDANCE)
        if "fill_latents" in text:
            masks.append(text["fill_latents"][..., latents.shape[2] :].float())  # after the masked image's latents
        return velocity(transformer, latents, sigma, text, guidance_scale, height, width, target=target)

    trainer.adapter.velocity = spy
    return seen, masks


def test_the_source_and_mask_condition_every_call_and_a_step_goes_uphill_on_a_bf16_pipeline(config):
    trainer = _trainer(config, dict(r=4, lora_alpha=8), torch.bfloat16, max_steps=1, per_device_train_batch_size=2)
    seen, masks = _spy_on_velocity(trainer)
    step = uphill_step(trainer)
    assert seen and all(seen) and set(step.dots) == {"denoise", "inversion"} and step.uphill, step.dots
    for mask in masks:  # the dataset's boxes (27 x 21 pixels each), binary
        assert set(mask.unique().tolist()) == {0.0, 1.0}
        torch.testing.assert_close(
            mask.mean(dim=(1, 2)), torch.full(mask.shape[:1], 27 * 21 / SIZE**2), atol=0, rtol=0
        )
    assert step.dtypes == {torch.float32} and trainer.pipeline.transformer.dtype == torch.bfloat16


def test_without_a_mask_column_a_step_trains_on_random_masks(config):
    trainer = _trainer(config, dict(r=4, lora_alpha=8), masks=False, max_steps=1, per_device_train_batch_size=2)
    seen, masks = _spy_on_velocity(trainer)
    trainer.train()
    assert trainer.state.global_step == 1 and seen and all(seen)
    for mask in masks:  # drawn per row: binary, neither empty nor full, and the batch's rows get different masks
        assert set(mask.unique().tolist()) == {0.0, 1.0} and len(mask.unique(dim=0)) > 1
        assert ((mask.mean(dim=(1, 2)) > 0) & (mask.mean(dim=(1, 2)) < 1)).all()


@pytest.mark.parametrize("kind", [*LORAS, "full"])
def test_the_result_reloads_in_the_stock_fill_pipeline_as_trained(tmp_path, config, kind):
    from diffusers import FluxTransformer2DModel

    trainer = _trainer(config, LORAS.get(kind))
    if kind == "full":  # far from identity: a changed output projection
        with torch.no_grad():
            weight = trainer.model.proj_out.weight
            weight.add_(0.05 * torch.randn(weight.shape, generator=torch.Generator().manual_seed(0)))
    else:
        far_from_identity(trainer.model)
    trainer.save_model(str(tmp_path / kind))
    eps = _eps(get_adapter(_pipe()))
    with_trained = _pipe()
    with_trained.transformer = trainer.accelerator.unwrap_model(trainer.model).eval()
    fresh = _pipe()
    base = _stock(fresh, _source(0), _box_mask(0), eps)
    if kind == "full":
        fresh.transformer = FluxTransformer2DModel.from_pretrained(str(tmp_path / kind), subfolder="transformer")
    else:
        fresh.load_lora_weights(str(tmp_path / kind))
    trained, loaded = _stock(with_trained, _source(0), _box_mask(0), eps), _stock(fresh, _source(0), _box_mask(0), eps)
    assert (trained - base).abs().max() > 1e-2
    gap = (loaded - trained).abs().max().item()
    print(f"fill {kind}: reloaded against trained {gap:.1e}")
    assert gap <= 1e-5
