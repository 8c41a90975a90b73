"""Variants that load the weights of a family srpo-trl trains (FLUX.1 Img2Img and Inpaint, Kontext Inpaint, FLUX.2
[klein] Inpaint and KV, FLUX.1 Control Img2Img and Inpaint, Chroma Img2Img and Inpaint): given the variant, the trainer trains the family's transformer with the family's own rollout
at the recipe's defaults; the saved LoRA loads into a fresh variant with its stock `load_lora_weights` and makes the
trained model's images; the model card names the variant's class; `srpo-trl eval` samples with the family's own
pipeline over the variant's components."""

import numpy as np
import pytest
import torch
from datasets import Dataset
from lora_helpers import far_from_identity
from peft import LoraConfig
from PIL import Image
from uphill import uphill_step

from srpo_trl import ColorWordReward, SRPOTrainer
from srpo_trl.models import PIPELINES, get_adapter, sampling_pipeline
from srpo_trl.testing import tiny_variant_pipeline

VARIANTS = [
    "FluxImg2ImgPipeline",
    "FluxInpaintPipeline",
    "FluxKontextInpaintPipeline",
    "Flux2KleinInpaintPipeline",
    "Flux2KleinKVPipeline",
    "FluxControlImg2ImgPipeline",
    "FluxControlInpaintPipeline",
    "ChromaImg2ImgPipeline",
    "ChromaInpaintPipeline",
]
SIZE = 64
#: Variants whose stock `__call__` fails on every real model of the family in diffusers 0.42.1: ChromaInpaintPipeline
#: reads `transformer.config.guidance_embeds`, which `ChromaTransformer2DModel`'s config does not have.
STOCK_CALL_BROKEN = {"ChromaInpaintPipeline"}


def _picture(seed: int) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8))


MASK = Image.fromarray(((np.arange(SIZE)[None, :].repeat(SIZE, 0) >= SIZE // 2) * 255).astype(np.uint8))


def _variant_images(pipe, name: str) -> torch.Tensor:
    """The stock variant's own images, with its own inputs, from the same noise every call."""
    inputs = {
        "FluxImg2ImgPipeline": dict(image=_picture(1), strength=0.9),
        "FluxInpaintPipeline": dict(image=_picture(1), mask_image=MASK, strength=0.9),
        "FluxKontextInpaintPipeline": dict(image=_picture(1), mask_image=MASK, strength=0.9, max_area=SIZE * SIZE),
        "Flux2KleinInpaintPipeline": dict(image=_picture(1), mask_image=MASK, strength=0.9),
        "Flux2KleinKVPipeline": {},
        "FluxControlImg2ImgPipeline": dict(image=_picture(1), control_image=_picture(2), strength=0.9),
        "FluxControlInpaintPipeline": dict(
            image=_picture(1), mask_image=MASK, control_image=_picture(2), strength=0.9
        ),
        "ChromaImg2ImgPipeline": dict(image=_picture(1), strength=0.9),
        "ChromaInpaintPipeline": dict(image=_picture(1), mask_image=MASK, strength=0.9),
    }[name]
    if PIPELINES[name].takes_guidance:
        inputs.update(get_adapter(pipe).pipeline_guidance_kwargs(3.5))
    pipe.set_progress_bar_config(disable=True)
    return pipe(
        prompt=["a bird"], height=SIZE, width=SIZE, num_inference_steps=3, max_sequence_length=32, output_type="pt",
        generator=torch.Generator().manual_seed(0), **inputs,
    ).images  # fmt: skip


def _trainer(name, config, **overrides):
    data = {"prompt": ["a cat", "a dog on a hill", "a house", "the sea"]}
    if get_adapter(tiny_variant_pipeline(name)).requires_reference_image:  # Kontext's edited image, Control's map
        data["reference_image"] = data["control_image"] = [_picture(i) for i in range(4)]
    return SRPOTrainer(
        tiny_variant_pipeline(name),
        ColorWordReward(),
        args=config(max_sequence_length=32, **overrides),
        train_dataset=Dataset.from_dict(data),
        peft_config=LoraConfig(r=4, lora_alpha=8, init_lora_weights="gaussian"),
    )


@pytest.mark.parametrize("name", VARIANTS)
def test_a_variant_trains_its_familys_transformer_uphill_at_the_recipe_defaults(config, name):
    trainer = _trainer(name, config, max_steps=1, per_device_train_batch_size=2)
    assert type(trainer.pipeline).__name__ == name and trainer.adapter.family == PIPELINES[name].adapter.family
    assert trainer.args.learning_rate == 5e-6 and trainer.args.use_inversion_branch
    step = uphill_step(trainer)
    assert set(step.dots) == {"denoise", "inversion"} and step.uphill, (name, step.dots)


@pytest.mark.parametrize("name", VARIANTS)
def test_the_lora_loads_into_the_stock_variant_as_trained_and_the_card_names_it(tmp_path, config, name):
    trainer = _trainer(name, config)
    far_from_identity(trainer.model)
    trainer.save_model(str(tmp_path / "lora"))

    with_trained = tiny_variant_pipeline(name)
    with_trained.transformer = trainer.accelerator.unwrap_model(trainer.model).eval()
    fresh = tiny_variant_pipeline(name)
    if name in STOCK_CALL_BROKEN:  # the variant cannot sample at all: compare the weights its loader puts in place
        with pytest.raises(AttributeError, match="guidance_embeds"):
            _variant_images(fresh, name)  # when diffusers fixes it, this fails: compare images here too
        fresh.load_lora_weights(str(tmp_path / "lora"))
        trained = {n: p for n, p in with_trained.transformer.named_parameters() if "lora" in n}
        loaded = {
            n.replace(".default_0.", ".default."): p for n, p in fresh.transformer.named_parameters() if "lora" in n
        }
        assert trained.keys() == loaded.keys() and all(torch.equal(loaded[n], trained[n]) for n in trained)
    else:
        base = _variant_images(fresh, name)
        fresh.load_lora_weights(str(tmp_path / "lora"))  # the variant's own stock loader
        trained, loaded = _variant_images(with_trained, name), _variant_images(fresh, name)
        assert (trained - base).abs().max() > 1e-3  # the LoRA matters
        gap = (loaded - trained).abs().max().item()
        print(f"{name}: reloaded LoRA against the trained model: {gap:.1e}")
        assert gap <= 1e-5

    card = (tmp_path / "lora" / "README.md").read_text()
    assert f"from diffusers import {name}\n" in card and f"the {name} this was trained from" in card
    if PIPELINES[name].inputs:
        assert 'image=load_image("input.png")' in card and "from diffusers.utils import load_image" in card


@pytest.mark.parametrize("name", VARIANTS)
def test_eval_samples_a_variant_with_its_familys_own_pipeline(name):
    variant = tiny_variant_pipeline(name)
    sampler = sampling_pipeline(variant)
    assert type(sampler).__name__ == PIPELINES[name].sampler and sampler.transformer is variant.transformer
    if name == "Flux2KleinKVPipeline":  # step-distilled: sampled unguided, as the KV pipeline itself does
        assert sampler.config.is_distilled and not get_adapter(variant).classifier_free_guidance
