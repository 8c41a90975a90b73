"""Qwen-Image-Edit through its adapter: the reference is conditioning (appended latents, and seen by the text
encoder), stock-sampler agreement with and without true CFG, an uphill step, and the LoRA and full fine-tune
round trips through the stock pipeline.

The stock pipeline resizes every reference to a 1024 x 1024-pixel area (`calculate_dimensions(1024 * 1024, ...)`
in its code); at that size the tiny VAE alone takes 4 s an image on 2 CPU cores. These tests shrink that area
to 64 x 64 on both sides, the stock pipeline's module function and the adapter's `reference_area`, so that
everything else is compared as it is.
"""

import os

import numpy as np
import pytest
import torch
from datasets import Dataset
from diffusers import QwenImageTransformer2DModel
from diffusers.pipelines.qwenimage import pipeline_qwenimage_edit, pipeline_qwenimage_edit_plus
from peft import LoraConfig
from PIL import Image
from uphill import uphill_step

from srpo_trl import ColorWordReward, SRPOTrainer, direct_align
from srpo_trl.models import QwenImageEditAdapter, QwenImageEditPlusAdapter, get_adapter
from srpo_trl.models.qwen_image_edit import reference_size
from srpo_trl.testing import tiny_qwen_image_edit_pipeline, tiny_qwen_image_edit_plus_pipeline

AREA = 64 * 64
CONDITION_AREA = 32 * 32  # Qwen-Image-Edit-Plus's text-encoder view (384 x 384 in the stock pipeline)
TOKENS = 256  # the tiny tokenizer is character-level (see tests/test_qwen_image.py)
PROMPTS = ["make it red", "add a hat on the dog"]  # different lengths: the masks matter


@pytest.fixture(autouse=True)
def small_references(monkeypatch):
    stock_dimensions = pipeline_qwenimage_edit.calculate_dimensions
    monkeypatch.setattr(
        pipeline_qwenimage_edit, "calculate_dimensions", lambda area, ratio: stock_dimensions(AREA, ratio)
    )
    monkeypatch.setattr(QwenImageEditAdapter, "reference_area", AREA)
    monkeypatch.setattr(pipeline_qwenimage_edit_plus, "VAE_IMAGE_SIZE", AREA)
    monkeypatch.setattr(pipeline_qwenimage_edit_plus, "CONDITION_IMAGE_SIZE", CONDITION_AREA)
    monkeypatch.setattr(QwenImageEditPlusAdapter, "plus_condition_area", CONDITION_AREA)


def vivid_edit_pipeline(seed=0, plus=False):
    pipe = (tiny_qwen_image_edit_plus_pipeline if plus else tiny_qwen_image_edit_pipeline)(seed)
    with torch.no_grad():
        pipe.vae.decoder.conv_out.weight.mul_(5)
    return pipe


def references(n, seed=0):
    rng = np.random.default_rng(seed)  # textured, so that the reference tokens matter
    return [Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)) for _ in range(n)]


def as_tensor(images):
    return torch.stack([torch.from_numpy(np.array(i)).permute(2, 0, 1).float() / 255 for i in images])


def stock_images(pipe, prompts, refs, guidance_scale, steps=3, seed=0):
    kwargs = get_adapter(pipe).pipeline_guidance_kwargs(guidance_scale)
    if "negative_prompt" in kwargs:  # the stock pipeline wants one negative prompt per image
        kwargs["negative_prompt"] = [kwargs["negative_prompt"]] * len(prompts)
    pipe.set_progress_bar_config(disable=True)
    return pipe(
        image=refs, prompt=prompts, height=64, width=64, num_inference_steps=steps, output_type="pt",
        generator=torch.Generator().manual_seed(seed), **kwargs,
    ).images  # fmt: skip


@torch.no_grad()
def rollout_images(pipe, adapter, prompts, refs, guidance_scale, seed):
    """Our Euler rollout's images on the grid of the stock pipeline's last call, from the same noise."""
    text = adapter.encode_prompts(prompts, torch.device("cpu"), reference_images=as_tensor(refs))
    text = adapter.add_reference(text, as_tensor(refs), 64, 64)
    eps = adapter.sample_noise(len(prompts), 64, 64, torch.Generator().manual_seed(seed), torch.device("cpu"))
    x0 = direct_align.euler_sample(
        lambda x, s, _: adapter.velocity(pipe.transformer, x, s, text, guidance_scale, 64, 64),
        eps,
        pipe.scheduler.sigmas.float(),
    )
    return adapter.decode(x0, 64, 64)


def test_reference_size_is_the_stock_pipelines():
    assert reference_size(1024, 1024, 1024 * 1024) == (1024, 1024)
    assert reference_size(720, 1280, 1024 * 1024) == (768, 1376)  # diffusers' calculate_dimensions, as (h, w)


@pytest.mark.parametrize("guidance_scale", [1.0, 4.0])
def test_stock_sampler_and_qwen_image_edit_adapter_agree(guidance_scale):
    """The reference's latents and their place in `img_shapes`, the text encoded with the reference image (the
    negative prompt too), the dropped reference outputs and true CFG match `QwenImageEditPipeline`'s sampler."""
    pipe = vivid_edit_pipeline()
    adapter = get_adapter(pipe, max_sequence_length=TOKENS)
    assert isinstance(adapter, QwenImageEditAdapter) and adapter.text_sees_reference
    refs = references(2)
    stock = stock_images(pipe, PROMPTS, refs, guidance_scale, steps=4, seed=3)
    ours = rollout_images(pipe, adapter, PROMPTS, refs, guidance_scale, seed=3)
    torch.testing.assert_close(ours, stock, atol=1e-5, rtol=0)


def test_the_reference_conditions_the_text_and_the_tokens():
    pipe = tiny_qwen_image_edit_pipeline(0)
    adapter = get_adapter(pipe, max_sequence_length=TOKENS)
    red, blue = torch.zeros(1, 3, 64, 64), torch.zeros(1, 3, 64, 64)
    red[:, 0], blue[:, 2] = 1.0, 1.0
    with torch.no_grad():
        text_red = adapter.add_reference(adapter.encode_prompts(["a cat"], "cpu", reference_images=red), red, 64, 64)
        text_blue = adapter.add_reference(
            adapter.encode_prompts(["a cat"], "cpu", reference_images=blue), blue, 64, 64
        )
        assert (text_red["prompt_embeds"] - text_blue["prompt_embeds"]).abs().max() > 1e-4  # the encoder sees it
        x = adapter.sample_noise(1, 64, 64, torch.Generator().manual_seed(0), torch.device("cpu"))
        sigma = torch.tensor([0.7])
        v_red = adapter.velocity(pipe.transformer, x, sigma, text_red, 4.0, 64, 64)
        v_blue = adapter.velocity(pipe.transformer, x, sigma, text_blue, 4.0, 64, 64)
    assert v_red.shape == x.shape and (v_red - v_blue).abs().max() > 1e-4
    with pytest.raises(ValueError, match="needs the reference images"):
        adapter.encode_prompts(["a cat"], torch.device("cpu"))
    with pytest.raises(ValueError, match="no reference"):
        adapter.velocity(
            pipe.transformer, x, sigma, {k: v for k, v in text_red.items() if "reference" not in k}, 1, 64, 64
        )


def _trainer(config, lora=True, plus=False, **overrides):
    data = Dataset.from_dict(
        {"prompt": ["a cat", "a dog on a hill", "a house", "the sea"], "reference_image": references(4)}
    )
    args = config(per_device_train_batch_size=2, max_sequence_length=TOKENS, **overrides)
    peft_config = LoraConfig(r=4, lora_alpha=8, init_lora_weights="gaussian") if lora else None
    return SRPOTrainer(
        vivid_edit_pipeline(plus=plus), ColorWordReward(), args=args, train_dataset=data, peft_config=peft_config
    )


@pytest.mark.parametrize("plus", [False, True], ids=["edit", "edit-plus"])
def test_qwen_image_edit_lora_steps_uphill_on_both_branches_at_the_recipe_defaults(config, plus):
    trainer = _trainer(config, max_steps=1, plus=plus)
    assert trainer.args.learning_rate == 5e-6 and trainer.args.use_inversion_branch
    step = uphill_step(trainer)
    assert set(step.dots) == {"denoise", "inversion"} and step.uphill, step.dots
    assert not step.unchanged_with_gradient and step.dtypes == {torch.float32}


def _far_from_identity(model):
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.requires_grad:
                scale = 0.05 if "lora_B" in name else 0.02
                p.add_(scale * torch.randn(p.shape, generator=generator))


@pytest.mark.parametrize(
    ("lora", "plus"), [(True, False), (False, False), (True, True)], ids=["lora", "full", "edit-plus-lora"]
)
def test_qwen_image_edit_result_reloads_as_the_trained_model(tmp_path, config, lora, plus):
    """The saved LoRA (`lora_alpha != r`, through `load_lora_weights`) or full fine-tune (`transformer/`) gives the
    stock pipeline the trained model's images (the Plus pipeline takes one prompt a call)."""
    trainer = _trainer(config, lora=lora, plus=plus, output_dir=str(tmp_path / "out"))
    _far_from_identity(trainer.model)
    trainer.save_model()
    prompts = PROMPTS[:1] if plus else PROMPTS
    refs = references(len(prompts), seed=1)
    with_trained = vivid_edit_pipeline(plus=plus)
    with_trained.transformer = trainer.accelerator.unwrap_model(trainer.model).eval()
    trained = stock_images(with_trained, prompts, refs, 4.0)
    fresh = vivid_edit_pipeline(plus=plus)
    base = stock_images(fresh, prompts, refs, 4.0)
    if lora:
        fresh.load_lora_weights(trainer.args.output_dir)
    else:
        fresh.transformer = QwenImageTransformer2DModel.from_pretrained(
            os.path.join(trainer.args.output_dir, "transformer")
        )
    assert (trained - base).abs().max() > 0.05
    torch.testing.assert_close(stock_images(fresh, prompts, refs, 4.0), trained, atol=1e-5, rtol=0)


@pytest.mark.parametrize("zero_cond_t", [False, True], ids=["2509", "2511"])
@pytest.mark.parametrize("guidance_scale", [1.0, 4.0])
def test_stock_sampler_and_qwen_image_edit_plus_adapter_agree(guidance_scale, zero_cond_t):
    """Qwen-Image-Edit-2509/2511 (`QwenImageEditPlusPipeline`, one prompt a call): the text encoder's smaller view
    of the reference ("Picture 1"), the VAE's, and 2511's reference tokens at timestep 0 match the stock sampler.
    The references are 80 x 48 pixels, so both views are resized (Lanczos, as the stock image processor)."""
    pipe = tiny_qwen_image_edit_plus_pipeline(0, zero_cond_t=zero_cond_t)
    with torch.no_grad():
        pipe.vae.decoder.conv_out.weight.mul_(5)
    adapter = get_adapter(pipe, max_sequence_length=TOKENS)
    assert isinstance(adapter, QwenImageEditPlusAdapter) and adapter.condition_area == CONDITION_AREA
    rng = np.random.default_rng(2)
    ref = Image.fromarray(rng.integers(0, 256, (48, 80, 3), dtype=np.uint8))
    stock = stock_images(pipe, PROMPTS[1:], [ref], guidance_scale, steps=4, seed=3)
    ours = rollout_images(pipe, adapter, PROMPTS[1:], [ref], guidance_scale, seed=3)
    torch.testing.assert_close(ours, stock, atol=1e-5, rtol=0)


def test_qwen_image_edit_plus_encodes_each_prompt_with_its_own_picture():
    """A batch gives each row what the stock pipeline gives that prompt alone (it takes one prompt a call)."""
    pipe = tiny_qwen_image_edit_plus_pipeline(0)
    adapter = get_adapter(pipe, max_sequence_length=TOKENS)
    refs = as_tensor(references(2))
    with torch.no_grad():
        batch = adapter.encode_prompts(PROMPTS, "cpu", reference_images=refs)
        for i, prompt in enumerate(PROMPTS):
            alone = adapter.encode_prompts([prompt], "cpu", reference_images=refs[i : i + 1])
            length = alone["prompt_embeds"].shape[1]
            torch.testing.assert_close(batch["prompt_embeds"][i, :length], alone["prompt_embeds"][0])
            assert batch["prompt_embeds_mask"][i].sum() == length
