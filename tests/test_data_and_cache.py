"""Prompt data, offline (real-image) mode, and the text-embedding cache."""

import json
import logging
import os

import pytest
import torch
from datasets import Dataset
from peft import LoraConfig
from PIL import Image
from uphill import uphill_step

from srpo_trl import ColorWordReward, SRPOTrainer
from srpo_trl.data import image_to_tensor, load_prompt_dataset
from srpo_trl.models import get_adapter
from srpo_trl.testing import tiny_colour_flux_pipeline, tiny_flux_pipeline
from srpo_trl.text_cache import TextEmbeddingCache, text_encoder_fingerprint

PROMPTS = ["a cat", "a dog on a hill", "a house", "the sea"]
TRAIN = Dataset.from_dict({"prompt": PROMPTS})
LORA = dict(r=4, lora_alpha=4, init_lora_weights="gaussian")


def _forbid(module):
    def refuse(*args, **kwargs):
        raise AssertionError(f"{type(module).__name__} was called after caching")

    module.forward = refuse


# ------------------------------------------------------------------------------------------- loading


def test_load_prompt_dataset_from_local_files(tmp_path):
    (tmp_path / "p.txt").write_text("a cat\na dog\n")
    (tmp_path / "p.csv").write_text("prompt,score\na cat,1\na dog,2\n")
    (tmp_path / "p.jsonl").write_text('{"prompt": "a cat"}\n{"prompt": "a dog"}\n')
    (tmp_path / "p.json").write_text(json.dumps([{"prompt": "a cat"}, {"prompt": "a dog"}]))
    Dataset.from_dict({"prompt": ["a cat", "a dog"]}).to_parquet(str(tmp_path / "p.parquet"))
    for name in ("p.txt", "p.csv", "p.jsonl", "p.json", "p.parquet"):
        dataset = load_prompt_dataset(str(tmp_path / name))
        assert dataset["prompt"] == ["a cat", "a dog"], name
    many = tmp_path / "many.txt"
    many.write_text("\n".join(f"prompt {i}" for i in range(50)))
    shuffled = load_prompt_dataset(str(many), shuffle_seed=1)["prompt"]
    assert sorted(shuffled) == sorted(load_prompt_dataset(str(many))["prompt"]) and shuffled[:5] != [
        f"prompt {i}" for i in range(5)
    ]
    assert load_prompt_dataset(str(many), shuffle_seed=1)["prompt"] == shuffled
    assert load_prompt_dataset(str(tmp_path / "p.txt"), prompt_column="caption").column_names == ["caption"]
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_prompt_dataset(str(tmp_path / "missing.txt"))


def test_bad_prompts_are_reported_by_row_before_the_pipeline_loads(tmp_path, config):
    bad = Dataset.from_dict({"prompt": ["a cat", "", "   ", None, "a dog"]})
    missing_pipeline = str(tmp_path / "no-such-pipeline")  # never reached: the data is checked first
    with pytest.raises(ValueError, match=r"3 of 5 rows.*row 1: ''.*row 3: None"):
        SRPOTrainer(missing_pipeline, ColorWordReward(), args=config(), train_dataset=bad)
    with pytest.raises(ValueError, match=r"no column 'prompt'; its columns are \['text'\]"):
        SRPOTrainer(
            missing_pipeline, ColorWordReward(), args=config(), train_dataset=Dataset.from_dict({"text": ["x"]})
        )
    with pytest.raises(ValueError, match="train_dataset is empty"):
        SRPOTrainer(
            missing_pipeline, ColorWordReward(), args=config(), train_dataset=Dataset.from_dict({"prompt": []})
        )
    with pytest.raises(ValueError, match="eval_dataset: 1 of 2"):
        SRPOTrainer(
            missing_pipeline,
            ColorWordReward(),
            args=config(),
            train_dataset=TRAIN,
            eval_dataset=[{"prompt": "ok"}, {"prompt": 3}],  # any map-style dataset of rows
        )


def test_streamed_dataset_trains_and_reports_a_bad_row(config, tmp_path):
    stream = Dataset.from_dict({"prompt": PROMPTS * 2}).to_iterable_dataset()
    trainer = SRPOTrainer(
        tiny_flux_pipeline(0),
        ColorWordReward(),
        args=config(max_steps=2),
        train_dataset=stream,
        peft_config=LoraConfig(**LORA),
    )
    assert not trainer.text_cache.encoders_released  # prompts unknown in advance
    trainer.train()
    assert trainer.state.global_step == 2
    broken = Dataset.from_dict({"prompt": ["a cat", ""] * 2}).to_iterable_dataset()
    args = config(max_steps=2, output_dir=str(tmp_path / "broken"))
    trainer = SRPOTrainer(tiny_flux_pipeline(0), ColorWordReward(), args=args, train_dataset=broken)
    with pytest.raises(ValueError, match="empty or non-string 'prompt': ''"):
        trainer.train()


# -------------------------------------------------------------------------------------- text cache


def test_cache_matches_direct_encoding_and_training_never_calls_the_text_encoders(config):
    held_out = Dataset.from_dict({"prompt": ["a bird", "a tree"]})
    trainer = SRPOTrainer(
        tiny_flux_pipeline(0),
        ColorWordReward(),
        args=config(max_steps=2),
        train_dataset=TRAIN,
        eval_dataset=held_out,
        peft_config=LoraConfig(**LORA),
    )
    cache = trainer.text_cache
    assert cache.encoders_released and set(cache.memory) == set(PROMPTS) | {"a bird", "a tree"}
    assert next(trainer.pipeline.text_encoder_2.parameters()).device.type == "cpu"
    direct = trainer.adapter.encode_prompts(PROMPTS[:3], torch.device("cpu"))
    cached = cache.get(PROMPTS[:3])
    for key in direct:
        torch.testing.assert_close(cached[key], direct[key], atol=1e-6, rtol=0)

    t5, clip = trainer.pipeline.text_encoder_2, trainer.pipeline.text_encoder
    forwards = (t5.forward, clip.forward)
    _forbid(t5), _forbid(clip)
    trainer.train()
    trainer.evaluate()
    t5.forward, clip.forward = forwards
    # A prompt never seen is still encoded (by the released encoders, on the CPU).
    assert trainer.generate(["a brand new prompt"]).shape == (1, 3, 64, 64)


def test_disk_cache_is_reused_across_runs_and_never_when_the_encoder_changed(tmp_path, config):
    cache_dir = tmp_path / "cache"
    args = config(max_steps=1, text_embedding_cache_dir=str(cache_dir))
    first = SRPOTrainer(tiny_flux_pipeline(0), ColorWordReward(), args=args, train_dataset=TRAIN)
    files = [f for _, _, names in os.walk(cache_dir) for f in names if f.endswith(".safetensors")]
    assert len(files) == len(PROMPTS)
    expected = first.text_cache.get(PROMPTS)

    # Same encoders: everything comes from disk.
    pipe = tiny_flux_pipeline(0)
    _forbid(pipe.text_encoder_2), _forbid(pipe.text_encoder)
    second = SRPOTrainer(pipe, ColorWordReward(), args=args, train_dataset=TRAIN)
    for key, value in second.text_cache.get(PROMPTS).items():
        assert torch.equal(value, expected[key])

    # A changed T5 weight gives another key: recomputed, and the embeddings differ.
    changed = tiny_flux_pipeline(0)
    with torch.no_grad():
        changed.text_encoder_2.encoder.block[0].layer[0].SelfAttention.q.weight.mul_(1.5)
    third = SRPOTrainer(changed, ColorWordReward(), args=args, train_dataset=TRAIN)
    assert third.text_cache.folder != second.text_cache.folder
    assert not torch.equal(third.text_cache.get(PROMPTS)["prompt_embeds"], expected["prompt_embeds"])


def test_fingerprint_changes_with_weights_tokenizer_and_length():
    pipe = tiny_flux_pipeline(0)
    components = get_adapter(pipe).text_components
    base = text_encoder_fingerprint(pipe, components, 32)
    assert text_encoder_fingerprint(tiny_flux_pipeline(0), components, 32) == base
    used = tiny_flux_pipeline(0)  # encoding leaves padding and truncation settings in the tokenizers: same key
    get_adapter(used, max_sequence_length=32).encode_prompts(["a cat"], torch.device("cpu"))
    assert text_encoder_fingerprint(used, components, 32) == base
    assert text_encoder_fingerprint(pipe, components, 64) != base
    with torch.no_grad():
        pipe.text_encoder.final_layer_norm.bias.add_(1e-3)
    assert text_encoder_fingerprint(pipe, components, 32) != base
    pipe = tiny_flux_pipeline(0)
    pipe.tokenizer_2.add_tokens(["<new>"])
    assert text_encoder_fingerprint(pipe, components, 32) != base


def test_a_hash_collision_or_foreign_file_is_never_served(tmp_path):
    pipe = tiny_flux_pipeline(0)
    cache = TextEmbeddingCache(get_adapter(pipe, max_sequence_length=32), torch.device("cpu"), str(tmp_path))
    cache.precompute(["a cat"])
    from safetensors.torch import load_file, save_file

    path = cache._path("a cat")
    save_file(load_file(path), path, metadata={"prompt": "another prompt"})  # right name, wrong content
    assert cache._read("a cat") is None


# ------------------------------------------------------------------------------------- offline mode


def _solid(color, size=48):
    return Image.new("RGB", (size, size + 16), color)


def test_image_to_tensor_resizes_and_centre_crops(tmp_path):
    image = Image.new("RGB", (100, 50), (255, 0, 0))
    image.paste((0, 0, 255), (0, 0, 25, 50))  # a blue band on the left quarter, cropped away
    tensor = image_to_tensor(image, 64, 64)
    assert tensor.shape == (3, 64, 64) and tensor.dtype == torch.float32
    assert tensor[0].mean() > 0.95 and tensor[2].mean() < 0.05
    image.save(tmp_path / "x.png")
    torch.testing.assert_close(image_to_tensor(str(tmp_path / "x.png"), 64, 64), tensor)


COLORS = [(20, 20, 200), (220, 30, 30), (30, 60, 220), (200, 40, 40)]


def test_offline_mode_uses_dataset_images_and_steps_uphill_at_the_recipe_defaults(tmp_path, config, caplog):
    paths = []
    for i, color in enumerate(COLORS[2:]):
        _solid(color).save(tmp_path / f"{i}.png")
        paths.append(str(tmp_path / f"{i}.png"))
    data = Dataset.from_dict({"prompt": PROMPTS, "image": [_solid(c) for c in COLORS[:2]] + paths})
    # Full fine-tuning at the recipe's lr, hinge and max grad norm, both branches on (see `tests/uphill.py`).
    args = config(max_steps=1, per_device_train_batch_size=2)
    assert args.learning_rate == 5e-6 and args.max_grad_norm == 0.1
    assert args.hinge_threshold is None and args.use_inversion_branch
    with caplog.at_level(logging.WARNING, logger="srpo_trl"):
        trainer = SRPOTrainer(tiny_colour_flux_pipeline(0), ColorWordReward(), args=args, train_dataset=data)
    assert trainer.offline and "offline mode" in caplog.text

    seen = []
    encode = trainer.adapter.encode_images
    trainer.adapter.encode_images = lambda images, h, w: seen.append(images.shape) or encode(images, h, w)

    def no_rollout(*args, **kwargs):
        raise AssertionError("offline training must not roll out")

    trainer.step.rollout = no_rollout
    step = uphill_step(trainer)
    assert seen == [(2, 3, 64, 64)]  # the step's x0 is the VAE encoding of its batch's dataset images
    assert set(step.dots) == {"denoise", "inversion"} and step.uphill, step.dots
    assert step.all_changed and step.dtypes == {torch.float32}  # full fine-tuning: every tensor moved
    assert "real images (offline mode)" in str(trainer.model_card(str(tmp_path)))


def test_offline_mode_requires_the_image_column(tmp_path, config):
    with pytest.raises(ValueError, match="no column 'image'"):
        SRPOTrainer(str(tmp_path / "never-loaded"), ColorWordReward(), args=config(offline=True), train_dataset=TRAIN)


def test_encode_images_is_the_vae_posterior_mean_packed():
    pipe = tiny_flux_pipeline(0)
    adapter = get_adapter(pipe)
    images = torch.rand(2, 3, 64, 64)
    z = pipe.vae.encode(images * 2 - 1).latent_dist.mean
    z = (z - pipe.vae.config.shift_factor) * pipe.vae.config.scaling_factor
    from srpo_trl.models.flux import pack_latents

    torch.testing.assert_close(adapter.encode_images(images, 64, 64), pack_latents(z))
