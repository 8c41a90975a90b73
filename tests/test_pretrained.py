"""The tiny models shipped in `srpo_trl.pretrained`, and the script that trains them.

The thresholds below sit well under what the shipped weights measure (docs/pretrained.md gives the numbers), so
that other CPUs and thread counts, whose floats differ in the last bits, pass as well."""

import os

import numpy as np
import torch

from srpo_trl.pretrained import PIPELINE_DIR, WEIGHTS_DIR, shapes, shapes_pipeline, shapes_reward
from srpo_trl.pretrained.classify import classify_scenes, content_accuracy
from srpo_trl.rewards import CLIPReward, load_reward


def _images(scenes, seed):
    array = shapes.render(scenes, np.random.default_rng(seed))
    return torch.from_numpy(array).permute(0, 3, 1, 2).float() / 255


def test_shipped_weights_are_small_safetensors_that_load_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    files = [os.path.join(root, f) for root, _, names in os.walk(WEIGHTS_DIR) for f in names]
    assert sum(os.path.getsize(f) for f in files) <= 20 * 2**20
    weights = [f for f in files if f.endswith((".safetensors", ".bin", ".pt", ".pth", ".ckpt"))]
    assert len(weights) == 5 and all(f.endswith(".safetensors") for f in weights)  # 4 pipeline models, reward
    pipe = shapes_pipeline()
    assert type(pipe).__name__ == "FluxPipeline" and pipe.transformer.config.guidance_embeds
    assert pipe.vae.config.latent_channels == 16 and len(pipe.vae.config.block_out_channels) == 4  # FLUX's 8x
    reward = load_reward("shapes-clip")
    assert isinstance(reward, CLIPReward) and reward.name == "shapes-clip"


def test_shipped_reward_reads_held_out_scenes_and_tells_photo_from_drawing():
    scenes = shapes.all_scenes()  # every class once, drawn with a seed the build never used
    images = _images(scenes, seed=12345)
    reward = shapes_reward()
    predicted = classify_scenes(reward, images)  # measured: shape 0.975, colour, position and style 1.0
    for attribute in ("shape", "colour", "position", "style"):
        accuracy = np.mean([getattr(p, attribute) == getattr(s, attribute) for p, s in zip(predicted, scenes)])
        assert accuracy >= 0.9, (attribute, accuracy)
    # SRP's own question: is this more "photo. <content>" than "drawing. <content>"?
    srp = reward.srp(images, [s.content for s in scenes], "photo", "drawing", 0.0)
    is_photo = torch.tensor([s.style == "photo" for s in scenes])
    assert ((srp > 0) == is_photo).float().mean() >= 0.95


def test_shipped_pipeline_draws_the_shape_colour_and_style_it_is_asked_for():
    pipe = shapes_pipeline()
    reward = shapes_reward()
    scenes = shapes.all_scenes()[::5]  # 24 of the 120 classes: every shape, colour, position and style
    out = pipe(
        [s.caption("named") for s in scenes],
        height=64,
        width=64,
        num_inference_steps=10,
        max_sequence_length=16,
        generator=torch.Generator().manual_seed(0),
        output_type="pt",
    )
    # Measured (1 and 2 threads): shape 0.54, colour 0.75, position 0.92, style 0.83; chance 0.33, 0.2, 0.25, 0.5.
    accuracy = content_accuracy(reward, out.images, scenes)
    assert accuracy["shape"] >= 0.4 and accuracy["colour"] >= 0.55 and accuracy["position"] >= 0.75, accuracy
    styles = np.mean([p.style == s.style for p, s in zip(classify_scenes(reward, out.images), scenes)])
    assert styles >= 0.7, styles


def test_build_script_fast_mode_writes_loadable_models(tmp_path):
    from diffusers import FluxPipeline

    from srpo_trl.pretrained.build import main

    out = tmp_path / "built"
    assert main(["--output_dir", str(out), "--fast"]) == 0
    pipe = FluxPipeline.from_pretrained(str(out / "pipeline"))
    assert sorted(os.listdir(out / "pipeline")) == sorted(os.listdir(PIPELINE_DIR))
    assert sum(p.numel() for p in pipe.transformer.parameters()) == sum(
        p.numel() for p in shapes_pipeline().transformer.parameters()
    )  # the same architecture as the shipped one
    assert isinstance(load_reward(str(out / "reward")), CLIPReward)
    for name in ("report.json", "loss_curves.png", "samples.png"):
        assert (out / name).is_file(), name


def test_build_is_deterministic():
    from srpo_trl.pretrained.build import train_vae

    rng = np.random.default_rng(0)
    scenes = shapes.random_scenes(rng, 16)
    images = shapes.render(scenes, rng)
    again = np.random.default_rng(0)
    assert shapes.random_scenes(again, 16) == scenes and np.array_equal(shapes.render(scenes, again), images)
    states = []
    for _ in range(2):
        torch.manual_seed(0)
        vae, _ = train_vae(images, steps=2, batch_size=4, log=lambda *_: None)
        states.append(vae.state_dict())
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])
    assert vae.config.shift_factor is not None  # FLUX's latent normalisation, measured on the images


def test_the_content_reward_reads_the_prompted_content_in_either_style():
    """`shapes-content` (the demo's guard against reward hacking): the probability that the shipped reward reads the
    prompted shape, colour and position, whatever the style; higher for the prompted scene than for another scene;
    differentiable; other prompts are refused."""
    import pytest

    from srpo_trl.pretrained.content import ShapesContentReward

    reward = ShapesContentReward(shapes_reward())
    assert not reward.text_conditioned and reward.hinge_threshold == 1.0
    rng = np.random.default_rng(0)
    asked = [
        shapes.Scene("circle", "red", "on the left", "photo"),
        shapes.Scene("square", "blue", "at the top", "drawing"),
    ]
    other = [shapes.Scene("triangle", "green", "on the right", "photo"), shapes.Scene("circle", "yellow", "at the bottom", "drawing")]  # fmt: skip
    prompts = [scene.content for scene in asked]

    def pixels(scenes):
        return torch.from_numpy(shapes.render(scenes, rng).astype(np.float32) / 255).permute(0, 3, 1, 2)

    right, wrong = pixels(asked).requires_grad_(True), pixels(other)
    score = reward.score(right, prompts)
    assert ((0 <= score) & (score <= 1)).all() and (score > reward.score(wrong, prompts)).all(), score
    score.sum().backward()
    assert right.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="not shapes-world content prompts"):
        reward.score(right, ["a portrait photo", "a cat"])
