"""A saved LoRA reloads in the stock diffusers pipeline as the model that was trained, for every family.

The LoRA's config (rank, alpha, rsLoRA, DoRA, targets) is written into the safetensors metadata; without it
diffusers reloads every LoRA with `lora_alpha = r`. Each test moves the LoRA far from identity (random `lora_B`
and, for DoRA, magnitudes), saves it with `trainer.save_model`, loads it into a fresh stock pipeline with
`load_lora_weights`, and compares the stock pipeline's images from the same noise.
"""

import copy
import json
import os

import numpy as np
import pytest
import torch
from datasets import Dataset
from lora_helpers import LORAS, far_from_identity
from peft import LoraConfig
from PIL import Image

from srpo_trl import ColorWordReward, SRPOTrainer
from srpo_trl.checkpointing import LORA_WEIGHTS_NAME, load_lora_checkpoint, saved_lora_config
from srpo_trl.evaluation import EvalSettings, load_result
from srpo_trl.evaluation import generate as eval_generate
from srpo_trl.models import get_adapter
from srpo_trl.testing import (
    tiny_flux2_pipeline,
    tiny_flux_kontext_pipeline,
    tiny_flux_pipeline,
    tiny_qwen_image_pipeline,
)

PROMPTS = ["a bird", "a red tree"]
SIZE, STEPS = 64, 3


def _references(n):
    rng = np.random.default_rng(0)  # textured references, so that the reference tokens matter
    return [Image.fromarray(rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)) for _ in range(n)]


def _vivid_qwen_image(seed):
    """The tiny Qwen-Image pipeline with its VAE's output layer scaled, so that the LoRA visibly changes the images."""
    pipe = tiny_qwen_image_pipeline(seed)
    with torch.no_grad():
        pipe.vae.decoder.conv_out.weight.mul_(5)
    return pipe


FAMILIES = {
    "flux": tiny_flux_pipeline,
    "kontext": tiny_flux_kontext_pipeline,
    "flux2-dev": lambda seed: tiny_flux2_pipeline(seed, variant="dev"),
    "flux2-klein": lambda seed: tiny_flux2_pipeline(seed, variant="klein"),
    "qwen-image": _vivid_qwen_image,
}
# Text tokens per family: Qwen-Image's tiny tokenizer is character-level and keeps the tail of its system prompt.
TOKENS = {"qwen-image": 256}


def _dataset(family):
    data = {"prompt": ["a cat", "a dog on a hill", "a house", "the sea"]}
    if family == "kontext":
        data["reference_image"] = _references(4)
    return Dataset.from_dict(data)


def _trainer(family, config, lora, **overrides):
    return SRPOTrainer(
        FAMILIES[family](0),
        ColorWordReward(),
        args=config(max_sequence_length=TOKENS.get(family, 32), **overrides),
        train_dataset=_dataset(family),
        peft_config=LoraConfig(**{"init_lora_weights": "gaussian", **lora}),
    )


def _trained_transformer(trainer):
    """The trained model as used for inference (eval mode)."""
    return trainer.accelerator.unwrap_model(trainer.model).eval()


def _images(pipe, family):
    """The stock pipeline's own images, from the same noise every call."""
    kontext = dict(image=_references(len(PROMPTS)), _auto_resize=False, max_area=SIZE * SIZE)
    kwargs = kontext if family == "kontext" else {}
    kwargs.update(get_adapter(pipe).pipeline_guidance_kwargs(3.5))  # Qwen-Image: true CFG with its negative prompt
    pipe.set_progress_bar_config(disable=True)
    return pipe(
        prompt=PROMPTS, height=SIZE, width=SIZE, num_inference_steps=STEPS, max_sequence_length=TOKENS.get(family, 32),
        output_type="pt", generator=torch.Generator().manual_seed(0), **kwargs,
    ).images  # fmt: skip


def _trained_and_loaded(family, trainer, folder):
    """Images of the stock pipeline with the trained transformer, of a fresh stock pipeline, and of a fresh one after
    `load_lora_weights(folder)`. The fresh ones are built with the same seed as the trained pipeline."""
    with_trained = FAMILIES[family](0)
    with_trained.transformer = _trained_transformer(trainer)
    fresh = FAMILIES[family](0)
    base = _images(fresh, family)
    fresh.load_lora_weights(folder)  # left as diffusers gives it: no eval(), no fuse
    return _images(with_trained, family), base, _images(fresh, family)


def _assert_same_model(trained, base, loaded):
    assert (trained - base).abs().max() > 0.1  # the LoRA matters
    assert ((trained > 0.01) & (trained < 0.99)).float().mean() > 0.5  # mostly unclipped: differences would show
    gap = (loaded - trained).abs().max().item()
    assert gap <= 1e-5, f"the reloaded LoRA's images differ from the trained model's by up to {gap:.3g}"


@pytest.mark.parametrize("lora", list(LORAS))
@pytest.mark.parametrize("family", list(FAMILIES))
def test_saved_lora_reloads_as_the_trained_model(tmp_path, config, family, lora):
    trainer = _trainer(family, config, LORAS[lora])
    far_from_identity(trainer.model)
    trainer.save_model(str(tmp_path / "lora"))
    _assert_same_model(*_trained_and_loaded(family, trainer, str(tmp_path / "lora")))
    saved = saved_lora_config(str(tmp_path / "lora" / LORA_WEIGHTS_NAME), "transformer")
    assert {k: saved[k] for k in LORAS[lora]} == LORAS[lora]


def test_a_lora_trained_with_dropout_reloads_without_it(tmp_path, config):
    """diffusers leaves the LoRA modules it adds in training mode: a saved dropout would make inference random."""
    trainer = _trainer("flux", config, dict(r=4, lora_alpha=8, lora_dropout=0.5))
    far_from_identity(trainer.model)
    trainer.save_model(str(tmp_path / "lora"))
    _assert_same_model(*_trained_and_loaded("flux", trainer, str(tmp_path / "lora")))


def test_a_training_checkpoint_reloads_and_resumes(tmp_path, config):
    """Checkpoints carry the same LoRA file with its config: it loads in the stock pipeline, and resume reads it."""
    lora = dict(r=4, lora_alpha=8)
    overrides = dict(max_steps=1, learning_rate=1e-3, save_strategy="steps", save_steps=1)
    trainer = _trainer("flux", config, lora, **overrides)
    far_from_identity(trainer.model)
    trainer.train()
    checkpoint = os.path.join(trainer.args.output_dir, "checkpoint-1")
    _assert_same_model(*_trained_and_loaded("flux", trainer, checkpoint))

    resumed = _trainer("flux", config, lora, **overrides)
    resumed._load_from_checkpoint(checkpoint)  # what `train(resume_from_checkpoint=...)` calls for the weights
    trained = {n: p for n, p in trainer.model.named_parameters() if "lora" in n}
    assert trained and all(torch.equal(p, trained[n]) for n, p in resumed.model.named_parameters() if "lora" in n)

    other = _trainer("flux", config, dict(r=4, lora_alpha=16), **overrides)
    with pytest.raises(ValueError, match=r"peft_config.lora_alpha=16 here but 8 in the checkpoint"):
        load_lora_checkpoint(other.model, checkpoint, "transformer")


def test_srpo_trl_eval_loads_the_trained_model(tmp_path, config):
    """`srpo-trl eval --result <lora>` loads the base folder and the LoRA as the trained model: same images."""
    from diffusers import DiffusionPipeline

    trainer = _trainer("flux", config, dict(r=4, lora_alpha=8))
    far_from_identity(trainer.model)
    trainer.save_model(str(tmp_path / "lora"))
    tiny_flux_pipeline(0).save_pretrained(tmp_path / "base")
    settings = EvalSettings(resolution=SIZE, num_inference_steps=STEPS, max_sequence_length=32, batch_size=2)

    pipeline = DiffusionPipeline.from_pretrained(str(tmp_path / "base"))  # as run_eval loads the base
    pipeline.set_progress_bar_config(disable=True)
    base = eval_generate(pipeline, PROMPTS, settings)
    assert load_result(pipeline, str(tmp_path / "lora")) == "lora"
    loaded = eval_generate(pipeline, PROMPTS, settings)
    with_trained = tiny_flux_pipeline(0)
    with_trained.transformer = _trained_transformer(trainer)
    with_trained.set_progress_bar_config(disable=True)
    _assert_same_model(eval_generate(with_trained, PROMPTS, settings), base, loaded)


def test_the_users_peft_config_is_not_changed(config):
    user = LoraConfig(r=4, lora_alpha=8, init_lora_weights="gaussian")
    before = copy.deepcopy(user.to_dict())
    trainer = SRPOTrainer(
        tiny_flux_pipeline(0), ColorWordReward(), args=config(), train_dataset=_dataset("flux"), peft_config=user
    )
    assert json.dumps(user.to_dict(), default=str, sort_keys=True) == json.dumps(before, default=str, sort_keys=True)
    assert trainer.peft_config is not user and trainer.peft_config.target_modules  # the copy has the defaults


@pytest.mark.parametrize("init", ["pissa", "olora"])
def test_lora_inits_that_change_the_base_are_refused(config, init):
    with pytest.raises(ValueError, match=rf"peft_config.init_lora_weights='{init}' changes the frozen base weights"):
        _trainer("flux", config, dict(r=4, lora_alpha=8, init_lora_weights=init))
