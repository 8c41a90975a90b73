"""Family detection: pipeline classes and `model_index.json`."""

import json

import pytest
from datasets import Dataset

from srpo_trl import ColorWordReward, SRPOTrainer
from srpo_trl.models import ADAPTERS, PIPELINES, REFUSED, Flux2Adapter, adapter_class
from srpo_trl.testing import tiny_flux2_pipeline, tiny_flux_pipeline, tiny_qwen_image_pipeline


def test_an_unsupported_family_fails_before_any_weights_load(tmp_path, config):
    folder = tmp_path / "sd"
    folder.mkdir()
    (folder / "model_index.json").write_text(
        json.dumps({"_class_name": "StableDiffusionPipeline", "unet": ["x", "y"]})
    )
    with pytest.raises(ValueError, match="unsupported pipeline class 'StableDiffusionPipeline'"):
        SRPOTrainer(str(folder), ColorWordReward(), args=config(), train_dataset=Dataset.from_dict({"prompt": ["a"]}))


def test_a_saved_flux2_klein_folder_is_detected_from_model_index(tmp_path, config):
    tiny_flux2_pipeline(0).save_pretrained(tmp_path / "klein")
    trainer = SRPOTrainer(
        str(tmp_path / "klein"),
        ColorWordReward(),
        args=config(max_steps=1, train_guidance_scale=1.0),
        train_dataset=Dataset.from_dict({"prompt": ["a cat", "a dog"]}),
    )
    assert type(trainer.pipeline).__name__ == "Flux2KleinPipeline" and isinstance(trainer.adapter, Flux2Adapter)
    trainer.train()
    assert set(ADAPTERS) == {
        "FluxPipeline",
        "FluxImg2ImgPipeline",
        "FluxInpaintPipeline",
        "FluxKontextPipeline",
        "FluxKontextInpaintPipeline",
        "Flux2Pipeline",
        "Flux2KleinPipeline",
        "Flux2KleinInpaintPipeline",
        "Flux2KleinKVPipeline",
        "QwenImage21Pipeline",
        "WanPipeline",
        "ZImagePipeline",
        "ZImageImg2ImgPipeline",
        "ZImageInpaintPipeline",
        "StableDiffusion3Pipeline",
        "StableDiffusion3Img2ImgPipeline",
        "StableDiffusion3InpaintPipeline",
        "FluxFillPipeline",
        "FluxControlNetPipeline",
        "FluxControlNetImg2ImgPipeline",
        "FluxControlNetInpaintPipeline",
        "FluxModularPipeline",
        "FluxKontextModularPipeline",
        "Flux2ModularPipeline",
        "Flux2KleinModularPipeline",
        "Flux2KleinBaseModularPipeline",
        "Flux3ModularPipeline",
        "Flux3DistilledModularPipeline",
        "FluxControlPipeline",
        "FluxControlImg2ImgPipeline",
        "FluxControlInpaintPipeline",
        "ChromaPipeline",
        "ChromaImg2ImgPipeline",
        "ChromaInpaintPipeline",
        "QwenImagePipeline",
        "QwenImageEditPipeline",
        "QwenImageEditPlusPipeline",
    }


def _exported_flux_classes() -> list[str]:
    import diffusers

    return sorted(n for n in dir(diffusers) if n.endswith("Pipeline") and n.startswith(("Flux", "Chroma")))


def test_every_flux_and_chroma_pipeline_is_supported_or_refused_with_a_reason(tmp_path, config):
    """Any Flux pipeline: each class the installed diffusers exports under Flux* / Chroma* is supported, or refused
    with why and what to use instead, from the class and from a folder's model_index.json before any weights load.
    A diffusers release that adds a class fails here until someone decides."""
    import diffusers

    names = _exported_flux_classes()
    undecided = [n for n in names if n not in PIPELINES and n not in REFUSED]
    assert not undecided, f"new diffusers pipeline classes, neither supported nor refused: {undecided}"
    assert len(names) == 27 and len([n for n in names if n in PIPELINES]) == 26  # diffusers 0.42.1; 4 before
    data = Dataset.from_dict({"prompt": ["a cat"]})
    for name in names:
        if name in PIPELINES:
            assert adapter_class(getattr(diffusers, name)) is PIPELINES[name].adapter
            continue
        assert len(REFUSED[name]) > 40, name  # a reason, and what to use instead
        with pytest.raises(ValueError, match=f"model: {name} is not supported: "):
            adapter_class(getattr(diffusers, name))
        folder = tmp_path / name
        folder.mkdir()
        (folder / "model_index.json").write_text(json.dumps({"_class_name": name}))
        with pytest.raises(ValueError, match=f"{name} is not supported"):
            SRPOTrainer(str(folder), ColorWordReward(), args=config(), train_dataset=data)


@pytest.mark.parametrize(
    ("build", "expected"),
    [(tiny_flux_pipeline, (1.0, 3.5, 3.5)), (tiny_qwen_image_pipeline, (4.0, 1.0, 4.0))],
)
def test_unset_guidance_takes_the_familys(config, build, expected):
    """FLUX: the recipe's distilled-guidance inputs; Qwen-Image: SRPO's Qwen-Image script (CFG 4 rollout, none in
    training) and Qwen-Image's inference CFG for the samples. A value given is kept."""
    data = Dataset.from_dict({"prompt": ["a cat"]})
    args = SRPOTrainer(build(0), ColorWordReward(), args=config(), train_dataset=data).args
    assert (args.rollout_guidance_scale, args.train_guidance_scale, args.sample_guidance_scale) == expected
    kept = SRPOTrainer(build(0), ColorWordReward(), args=config(train_guidance_scale=2.0), train_dataset=data).args
    assert kept.train_guidance_scale == 2.0
