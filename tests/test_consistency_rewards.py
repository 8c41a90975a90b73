"""Rewards that keep the condition (edge, depth, unmasked-region fidelity), the control maps made on the fly, and
Fill's random masks.

Each reward prefers the image that matches its condition and is differentiable in the image; at the recipe's
defaults its two branches pull the same way (the branch cosine every reward passes, tests/test_reward_gradients.py),
and one real step beside a preference reward goes uphill on both branches on a bf16-loaded pipeline (Canny and Depth
Control, a Canny ControlNet, Fill), with the control maps made on the fly from the dataset's photos. A reward that
needs a condition the pipeline does not take, or a preprocessor on a pipeline without control images, fails before
training.
"""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from datasets import Dataset
from peft import LoraConfig
from PIL import Image
from uphill import uphill_step

from srpo_trl import ColorWordReward, SRPOTrainer
from srpo_trl.control_maps import DepthEstimator, canny_maps
from srpo_trl.data import image_to_tensor
from srpo_trl.masks import mask_to_tensor, random_mask, with_random_masks
from srpo_trl.rewards import load_reward
from srpo_trl.testing import (
    save_tiny_depth_model,
    tiny_colour_flux_pipeline,
    tiny_flux_control_pipeline,
    tiny_flux_controlnet_pipeline,
    tiny_flux_fill_pipeline,
)

SIZE = 64
PROMPTS = ["a cat", "a dog on a hill", "a house", "the sea"]


def _photos(n: int, seed: int) -> torch.Tensor:
    """Photo-like stand-ins `[n, 3, 64, 64]`: a soft colour field with one flat box (edges and depth to find)."""
    generator = torch.Generator().manual_seed(seed)
    images = F.interpolate(torch.rand(n, 3, 8, 8, generator=generator), size=SIZE, mode="bilinear")
    for image in images:
        top, left = torch.randint(0, SIZE - 24, (2,), generator=generator).tolist()
        image[:, top : top + 24, left : left + 24] = torch.rand(3, 1, 1, generator=generator)
    return images


def _pil(image: torch.Tensor) -> Image.Image:
    return Image.fromarray((image.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8))


@pytest.fixture(scope="session")
def depth_folder(tmp_path_factory):
    return save_tiny_depth_model(str(tmp_path_factory.mktemp("depth")))


def _prefers_the_match_and_has_a_gradient(reward, conditions, matching, other):
    matched, unmatched = reward.score(matching, None, **conditions), reward.score(other, None, **conditions)
    assert matched.shape == (len(matching),) and (matched > unmatched).all(), (matched, unmatched)
    image = other.clone().requires_grad_(True)
    reward.score(image, None, **conditions).sum().backward()
    assert torch.isfinite(image.grad).all() and image.grad.abs().sum() > 0
    return matched, unmatched


def test_the_edge_reward_prefers_the_images_own_edges():
    reward = load_reward("edge-consistency")
    assert reward.conditions == ("control_images",) and not reward.text_conditioned and reward.hinge_threshold == 1.0
    a, b = _photos(8, 0), _photos(8, 1)
    edges = canny_maps(a)
    assert edges.shape == a.shape and set(edges.unique().tolist()) <= {0.0, 1.0}
    matched, unmatched = _prefers_the_match_and_has_a_gradient(reward, {"control_images": edges}, a, b)
    assert (matched <= 1).all() and matched.mean() > unmatched.mean() + 0.3  # 0.55 against 0.04 (module docstring)


def test_the_depth_reward_is_scale_and_shift_invariant_and_prefers_the_images_own_depth(depth_folder):
    reward = load_reward(f"depth-consistency:{depth_folder}")
    assert reward.conditions == ("control_images",) and reward.hinge_threshold == 1.0
    a, b = _photos(4, 0), _photos(4, 1)
    maps = reward.depth.maps(a)
    assert maps.shape == a.shape and maps.amin() == 0 and maps.amax() == 1
    matched, unmatched = _prefers_the_match_and_has_a_gradient(reward, {"control_images": maps}, a, b)
    print(f"depth-consistency: own maps {matched.mean():.3f}, another image's {unmatched.mean():.3f}")
    assert (matched > -0.05).all()  # 0 up to resizing the map to the image's size and back (measured -0.005 to -0.014)
    affine = reward.score(a, None, control_images=0.5 * maps + 0.25)  # another scale and shift of the same depth
    torch.testing.assert_close(affine, matched, atol=1e-6, rtol=0)


def test_the_fidelity_reward_reads_only_the_kept_pixels():
    reward = load_reward("unmasked-fidelity")
    assert reward.conditions == ("source_images", "masks") and reward.hinge_threshold == 1.0
    source = _photos(2, 0)
    masks = torch.zeros(2, 1, SIZE, SIZE)
    masks[..., 16:48, 16:48] = 1
    repainted = torch.where(masks.bool(), torch.rand_like(source), source)
    torch.testing.assert_close(reward.score(repainted, None, source_images=source, masks=masks), torch.zeros(2))
    image = _photos(2, 1).requires_grad_(True)
    score = reward.score(image, None, source_images=source, masks=masks)
    assert (score < 0).all()
    score.sum().backward()
    assert image.grad[..., 16:48, 16:48].abs().max() == 0 and image.grad.abs().sum() > 0


def test_random_masks_are_seeded_binary_boxes_and_strokes():
    first = np.asarray(random_mask(SIZE, SIZE, seed=3))
    assert np.array_equal(first, np.asarray(random_mask(SIZE, SIZE, seed=3)))
    assert set(np.unique(first).tolist()) <= {0, 255}
    coverage = [np.asarray(random_mask(SIZE, SIZE, seed=s)).mean() / 255 for s in range(50)]
    assert 0.03 < min(coverage) and max(coverage) < 0.8 and len({round(c, 4) for c in coverage}) > 40
    rows = Dataset.from_dict({"prompt": PROMPTS})
    masked, again = (with_random_masks(rows, "mask", SIZE, SIZE, seed=0) for _ in range(2))
    tensors = [mask_to_tensor(row["mask"], SIZE, SIZE) for row in masked]
    assert all(torch.equal(t, mask_to_tensor(row["mask"], SIZE, SIZE)) for t, row in zip(tensors, again))
    assert not torch.equal(tensors[0], tensors[1]) and set(tensors[0].unique().tolist()) == {0.0, 1.0}


def _control_trainer(
    config, rewards, photos, lora=True, dtype=torch.float32, build=tiny_flux_control_pipeline, **overrides
):
    pipe = build(0)
    if dtype != torch.float32:
        pipe.to(dtype=dtype)
    data = Dataset.from_dict({"prompt": PROMPTS, "control_image": [_pil(p) for p in photos]})
    peft = LoraConfig(r=4, lora_alpha=8, init_lora_weights="gaussian") if lora else None
    args = config(max_sequence_length=32, per_device_train_batch_size=4, reward_dtype="float32", **overrides)
    return SRPOTrainer(pipe, rewards, args=args, train_dataset=data, peft_config=peft)


def _branch_cosine(trainer, rows) -> float:
    params = [p for p in trainer.model.parameters() if p.requires_grad]
    losses = trainer.branch_losses(trainer.model, trainer._collate(rows))
    flat = {}
    for branch, loss in losses.items():
        grads = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
        flat[branch] = torch.cat(
            [(g if g is not None else torch.zeros_like(p)).flatten() for g, p in zip(grads, params)]
        )
    assert flat["denoise"].norm() > 0 and flat["inversion"].norm() > 0
    return F.cosine_similarity(flat["denoise"], flat["inversion"], dim=0).item()


@pytest.mark.parametrize("name", ["edge-consistency", "depth-consistency"])
def test_the_control_rewards_branches_pull_the_same_way_at_the_defaults(config, depth_folder, name):
    photos = _photos(4, 0)
    reward = name if name == "edge-consistency" else f"{name}:{depth_folder}"
    preprocessor = {"edge-consistency": "canny", "depth-consistency": "depth"}[name]
    trainer = _control_trainer(
        config, reward, photos, control_image_preprocessor=preprocessor, depth_model_name_or_path=depth_folder
    )
    assert trainer.args.use_inversion_branch and trainer.args.learning_rate == 5e-6
    rows = [{"prompt": p, "control_image": _pil(x)} for p, x in zip(PROMPTS, photos)]
    cosine = _branch_cosine(trainer, rows)
    print(f"{name}: branch cosine {cosine:.2f}")
    assert cosine > 0.5, cosine


def _fill_trainer(config, rewards, dtype=torch.float32, **overrides):
    """Fill on the photos with seeded random masks (the dataset has no mask column)."""
    pipe = tiny_flux_fill_pipeline(0)
    if dtype != torch.float32:
        pipe.to(dtype=dtype)
    data = Dataset.from_dict({"prompt": PROMPTS, "reference_image": [_pil(p) for p in _photos(4, 3)]})
    args = config(max_sequence_length=32, per_device_train_batch_size=4, reward_dtype="float32", **overrides)
    peft = LoraConfig(r=4, lora_alpha=8, init_lora_weights="gaussian")
    return SRPOTrainer(pipe, rewards, args=args, train_dataset=data, peft_config=peft)


def test_the_fidelity_rewards_branches_pull_the_same_way_at_the_defaults(config):
    trainer = _fill_trainer(config, "unmasked-fidelity")
    rows = [trainer.train_dataset[i] for i in range(4)]  # with their random masks
    cosine = _branch_cosine(trainer, rows)
    print(f"unmasked-fidelity: branch cosine {cosine:.2f}")
    assert cosine > 0.5, cosine


def test_a_fill_step_beside_a_preference_reward_goes_uphill(config):
    trainer = _fill_trainer(config, [ColorWordReward(), "unmasked-fidelity"], dtype=torch.bfloat16, max_steps=1)
    step = uphill_step(trainer)
    assert set(step.dots) == {"denoise", "inversion"} and step.uphill, step.dots
    assert step.dtypes == {torch.float32} and "rewards/unmasked-fidelity/mean" in trainer.state.log_history[0]


@pytest.mark.parametrize(
    "preprocessor, build",
    [
        ("canny", tiny_flux_control_pipeline),
        ("depth", tiny_flux_control_pipeline),
        ("canny", tiny_flux_controlnet_pipeline),
    ],
    ids=["control-canny", "control-depth", "controlnet-canny"],
)
def test_a_step_beside_a_preference_reward_goes_uphill_with_maps_made_on_the_fly(
    config, depth_folder, preprocessor, build
):
    photos = _photos(4, 2)
    consistency = "edge-consistency" if preprocessor == "canny" else f"depth-consistency:{depth_folder}"
    trainer = _control_trainer(
        config, [ColorWordReward(), consistency], photos, dtype=torch.bfloat16, max_steps=1, build=build,
        control_image_preprocessor=preprocessor, depth_model_name_or_path=depth_folder,
    )  # fmt: skip
    seen = []
    add_reference = trainer.adapter.add_reference

    def spy(conditioning, references, height, width, **extra):
        seen.append(references.detach().clone())
        return add_reference(conditioning, references, height, width, **extra)

    trainer.adapter.add_reference = spy
    step = uphill_step(trainer)
    assert set(step.dots) == {"denoise", "inversion"} and step.uphill, step.dots
    assert step.dtypes == {torch.float32} and trainer.pipeline.transformer.dtype == torch.bfloat16
    logged = trainer.state.log_history[0]
    assert {"rewards/color/mean", f"rewards/{consistency.split(':')[0]}/mean"} <= set(logged)
    # The conditioning is the maps of the column's images as the data pipeline reads them (in the sampler's order).
    columns = torch.stack([image_to_tensor(_pil(p), SIZE, SIZE) for p in photos])
    expected = canny_maps(columns) if preprocessor == "canny" else DepthEstimator(depth_folder).maps(columns)
    assert len(seen) == 1 and seen[0].shape == expected.shape
    for made in seen[0]:
        assert min((made - e).abs().max().item() for e in expected) < 1e-5


def test_conditions_a_pipeline_does_not_take_fail_before_training(config):
    data = Dataset.from_dict({"prompt": PROMPTS})
    with pytest.raises(ValueError, match="reward 'edge-consistency' compares the image with \\['control_images'\\]"):
        SRPOTrainer(tiny_colour_flux_pipeline(0), "edge-consistency", args=config(), train_dataset=data)
    with pytest.raises(ValueError, match="control_image_preprocessor='canny': FluxPipeline takes no control image"):
        SRPOTrainer(tiny_colour_flux_pipeline(0), ColorWordReward(), args=config(control_image_preprocessor="canny"),
                    train_dataset=data)  # fmt: skip
    with pytest.raises(ValueError, match="control_image_preprocessor='sobel' is invalid"):
        config(control_image_preprocessor="sobel")
