"""VideoAlign's VideoReward from a tiny local copy in the published layout: loading by name, the frame sampling and
the video preprocessing against transformers' Qwen2-VL processors, the scores against stock transformers + peft
(the LoRA unmerged, as VideoAlign ran it), which dimensions read the prompt, SRP and gradients."""

import os

import pytest
import torch
import torch.nn.functional as F
from videoalign_copy import NORMALISATION, STEP, TINY_INSTRUCTION, lora_config, save_videoalign_copy

from srpo_trl.rewards import REWARDS, load_reward
from srpo_trl.rewards.preprocess import CLIP_MEAN, CLIP_STD
from srpo_trl.rewards.qwen_vl_preprocess import qwen_vl_video_frame_indices, qwen_vl_video_preprocess
from srpo_trl.rewards.videoalign import VIDEO_MIN_PIXELS, VideoAlignReward

PROMPTS = ["a cat", "a dog on a hill at dawn"]
BUDGET = dict(min_pixels=VIDEO_MIN_PIXELS, max_pixels=200704)  # VideoAlign's: qwen-vl-utils' floor, its own cap

# Qwen2-VL-Instruct's chat template, reduced to one user turn of video + text (Jinja, rendered by the tokenizer):
# the reference side, written apart from `videoalign_chat`.
QWEN2_VL_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n{% for content in message['content'] %}"
    "{% if content['type'] == 'video' %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif content['type'] == 'text' %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


@pytest.fixture(scope="module")
def copy(tmp_path_factory):
    return save_videoalign_copy(str(tmp_path_factory.mktemp("videoalign")))


@pytest.fixture(scope="module")
def reward(copy):
    checkpoint, base = copy
    return load_reward(f"videoalign:{checkpoint}", base=base, dtype=torch.float32)


def _uint8_videos(batch, frames, height, width, seed=0):
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(batch * frames, 3, 5, 5, generator=g)
    smooth = F.interpolate(low, size=(height, width), mode="bicubic", align_corners=False)
    videos = (0.7 * smooth + 0.3 * torch.rand(batch * frames, 3, height, width, generator=g)).clamp(0, 1)
    return (videos * 255).round().to(torch.uint8).view(batch, frames, 3, height, width)


# ------------------------------------------------------------------ registry and loading


def test_registry_spec_and_the_published_settings(copy, reward):
    spec = REWARDS["videoalign"]
    assert (spec.family, spec.checkpoint, spec.tokenizer, spec.video) == (
        "videoalign",
        "KlingTeam/VideoReward",
        "Qwen/Qwen2-VL-2B-Instruct",
        True,
    )
    assert spec.text_conditioned and spec.hinge_threshold == 10.0
    assert isinstance(reward, VideoAlignReward) and reward.name == "videoalign" and reward.takes_videos
    assert reward.text_conditioned and reward.hinge_threshold == 10.0
    assert (reward.fps, reward.num_frames, reward.max_pixels, reward.video_fps) == (2.0, None, 200704, 16.0)
    assert reward.mean.tolist() == pytest.approx([NORMALISATION[f"{d}_mean"] for d in ("VQ", "MQ", "TA")])
    assert reward.std.tolist() == pytest.approx([NORMALISATION[f"{d}_std"] for d in ("VQ", "MQ", "TA")])
    rows = reward.model.get_input_embeddings().num_embeddings  # the checkpoint's table, not the base config's
    assert reward.token_ids == [rows - 3, rows - 2, rows - 1] and reward.reads_prompt.tolist() == [False, False, True]
    assert load_reward(f"videoalign:{copy[0]}", base=copy[1]).model.dtype == torch.bfloat16  # VideoReward's own


def test_the_instruction_comes_from_the_user(copy, tmp_path):
    """Not shipped: from videoalign_instruction.txt, from the text, or read out of VideoAlign's prompt_template.py
    without running it."""
    checkpoint, base = copy
    bare = tmp_path / "bare"
    bare.mkdir()
    for name in ("model_config.json", f"checkpoint-{STEP}"):
        os.symlink(os.path.join(checkpoint, name), bare / name)
    with pytest.raises(ValueError, match="needs the instruction it was trained to read"):
        load_reward(f"videoalign:{bare}", base=base)
    with pytest.raises(ValueError, match="must hold {text_prompt}"):
        load_reward(f"videoalign:{bare}", base=base, instruction="Rate: <|VQ_reward|> <|MQ_reward|> {text_prompt}")
    template = tmp_path / "prompt_template.py"
    template.write_text(
        f'raise SystemExit("never run")\nDETAILED_PROMPT_WITH_SPECIAL_TOKEN = """{TINY_INSTRUCTION}"""\n'
    )
    given = load_reward(f"videoalign:{bare}", base=base, instruction=str(template), dtype=torch.float32)
    assert given.instruction == TINY_INSTRUCTION


# ------------------------------------------------------------------ frame sampling and preprocessing


def _reference_indices(total, video_fps, fps=2.0):
    """qwen-vl-utils' uniform sampling, as VideoAlign's vision_process applies it, in plain Python."""
    count = min(max(total / video_fps * fps, 4), total // 2 * 2)
    count = min(round(count / 2) * 2, total)
    return [round(i * (total - 1) / (count - 1)) for i in range(count)]


def test_frame_indices_follow_the_published_sampling():
    assert qwen_vl_video_frame_indices(81, 16.0) == [0, 9, 18, 27, 36, 44, 53, 62, 71, 80]  # Wan: 5 s -> 10 frames
    assert qwen_vl_video_frame_indices(5, 16.0) == [0, 1, 3, 4]  # at least 4
    assert qwen_vl_video_frame_indices(3, 16.0) == [0, 2]  # at most the even count below the length
    assert qwen_vl_video_frame_indices(81, 16.0, num_frames=6) == [0, 16, 32, 48, 64, 80]  # a fixed count
    for total in range(2, 200):
        for video_fps in (8.0, 16.0, 24.0, 30.0):
            assert qwen_vl_video_frame_indices(total, video_fps) == _reference_indices(total, video_fps), total
    with pytest.raises(ValueError, match="needs at least 2"):
        qwen_vl_video_frame_indices(1, 16.0)


def _processor_patches(frames_uint8):
    """Patches of frames `[T, 3, H, W]` (uint8, already at their Qwen2-VL size) from transformers' own Qwen2-VL image
    processor, one frame at a time, put together as its video processor lays a clip out: each patch row holds
    `[C, T, p, p]` with frames 2g and 2g + 1 in its two temporal slots, frame pair after frame pair. (The image
    processor fills both slots with its one frame; slot 0 of each frame is taken.)"""
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    processor = Qwen2VLImageProcessorPil(do_resize=False)
    per_frame = [
        torch.as_tensor(processor(images=[f.permute(1, 2, 0).numpy()], return_tensors="pt")["pixel_values"])
        for f in frames_uint8
    ]
    rows = []
    for even, odd in zip(per_frame[0::2], per_frame[1::2]):
        pair = [x.view(len(x), 3, 2, 14, 14)[:, :, 0] for x in (even, odd)]
        rows.append(torch.stack(pair, dim=2).reshape(len(even), -1))
    return torch.cat(rows)


def _torchvision_resize(frames_uint8, size):
    """qwen-vl-utils' frame resize (torchvision's tensor resize, bicubic, antialiased, back to uint8). torchvision is
    not a dependency here: its tensor resize is this `F.interpolate` call, then rounded and clamped to uint8."""
    x = F.interpolate(frames_uint8.float(), size=size, mode="bicubic", antialias=True, align_corners=False)
    return x.round().clamp(0, 255).to(torch.uint8)


@pytest.mark.parametrize("size", [(336, 336), (32, 32), (90, 160), (480, 832)])
def test_video_preprocessing_matches_the_reference_processor(size):
    """Our float path against uint8 frames resized as qwen-vl-utils does and patched by transformers: equal (1e-5)
    without a resize; with one, at most half a uint8 level apart (0.5 / 255 / 0.2613, green's std: 0.0075 normalised),
    the rounding this path skips to keep the gradient. Measured: max 0.0075, mean 0.0018-0.0019."""
    videos = _uint8_videos(1, 4, *size)
    pixel_values, grid = qwen_vl_video_preprocess(videos.float() / 255, **BUDGET)
    target = (int(grid[0, 1]) * 14, int(grid[0, 2]) * 14)
    resized = videos[0] if target == size else _torchvision_resize(videos[0], target)
    expected = _processor_patches(resized)
    assert grid.tolist() == [[2, target[0] // 14, target[1] // 14]] and pixel_values.shape == expected.shape
    difference = (pixel_values - expected).abs()
    print(f"{size} -> {target}: max {difference.max():.4f}, mean {difference.mean():.4f}")
    if target == size:
        assert difference.max() < 1e-5
    else:
        assert difference.max() < 0.0076 and difference.mean() < 0.004


# transformers' Qwen2VLVideoProcessor imports torchvision at module level (for its resize), and torchvision is not
# installed here (PyPI's build does not load beside the CPU torch): a child process stubs the import and runs the
# processor's own `patchify` (pure torch) on normalised frames, so that no stub leaks into this process.
PATCHIFY_SCRIPT = """
import importlib.machinery, json, sys, types
import torch, transformers
for name in ("torchvision", "torchvision.transforms", "torchvision.transforms.v2", "torchvision.transforms.v2.functional"):
    module = types.ModuleType(name)
    module.__spec__ = importlib.machinery.ModuleSpec(name, None)
    sys.modules[name] = module
from transformers.models.qwen2_vl.video_processing_qwen2_vl import Qwen2VLVideoProcessor
out = []
for x in torch.load(sys.argv[1]):
    patches, t, h, w = Qwen2VLVideoProcessor.patchify(None, x, patch_size=14, merge_size=2, temporal_patch_size=2)
    out.append({"patches": patches.reshape(-1, patches.shape[-1]), "grid": [t, h, w]})
torch.save(out, sys.argv[2])
"""


def test_patches_equal_transformers_video_processors_own(tmp_path):
    """transformers' video `patchify` on the same normalised frames: equal, the two frames of each pair in their
    temporal slots (swapping them would differ), an odd count padded with the last frame as it pads."""
    import subprocess
    import sys

    videos = [_uint8_videos(2, frames, 336, 392, seed=frames).float() / 255 for frames in (4, 5)]
    mean, std = torch.tensor(CLIP_MEAN).view(1, 1, 3, 1, 1), torch.tensor(CLIP_STD).view(1, 1, 3, 1, 1)
    torch.save([(v - mean) / std for v in videos], tmp_path / "x.pt")
    args = [sys.executable, "-c", PATCHIFY_SCRIPT, str(tmp_path / "x.pt"), str(tmp_path / "out.pt")]
    subprocess.run(args, check=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True)
    for v, expected in zip(videos, torch.load(tmp_path / "out.pt")):
        ours, grid = qwen_vl_video_preprocess(v, **BUDGET)
        assert grid.tolist() == [expected["grid"]] * 2 == [[v.shape[1] // 2 + v.shape[1] % 2, 24, 28]] * 2
        torch.testing.assert_close(ours, expected["patches"], rtol=0, atol=1e-6)
        swapped, _ = qwen_vl_video_preprocess(v[:, [1, 0, 3, 2, *range(4, v.shape[1])]], **BUDGET)
        assert (swapped - expected["patches"]).abs().max() > 0.1


# ------------------------------------------------------------------ the scores against stock transformers + peft


def _stock_dimensions(copy, videos_uint8, prompts, *, plain_positions=True, lora=True):
    """VQ, MQ, TA as VideoAlign computed them, from stock parts: the published frame sampling, qwen-vl-utils' resize
    and transformers' processor layout ([`_processor_patches`]), the chat template and placeholder expansion, a
    `Qwen2VLForConditionalGeneration` wrapped by peft with the LoRA unmerged and the checkpoint loaded into it under
    transformers 5's names, the final hidden state at each reward token (what the LM head reads), `rm_head` in plain
    torch and the standardisation from model_config.json."""
    from peft import get_peft_model
    from transformers import AutoTokenizer, Qwen2VLConfig, Qwen2VLForConditionalGeneration

    checkpoint, base = copy
    folder = os.path.join(checkpoint, f"checkpoint-{STEP}")
    state = torch.load(os.path.join(folder, "model.pth"))
    head = state.pop("base_model.model.rm_head.weight")
    config = Qwen2VLConfig.from_pretrained(base)
    config.text_config.vocab_size = state["base_model.model.model.embed_tokens.weight"].shape[0]
    model = get_peft_model(Qwen2VLForConditionalGeneration(config), lora_config()).eval()
    renamed = {}
    for key, value in state.items():  # transformers 4.x -> 5 names, the peft wrapping as saved
        if key.startswith("base_model.model.visual."):
            key = "base_model.model.model.visual." + key[len("base_model.model.visual.") :]
        elif key.startswith("base_model.model.model."):
            key = "base_model.model.model.language_model." + key[len("base_model.model.model.") :]
        renamed[key] = value
    model.load_state_dict(renamed, strict=True)

    tokenizer = AutoTokenizer.from_pretrained(os.path.join(folder, "tokenizer"), padding_side="right")
    index = _reference_indices(videos_uint8.shape[1], 16.0)
    patches, grids = [], []
    for video in videos_uint8[:, index]:
        pixel_values, grid = qwen_vl_video_preprocess(video[None].float() / 255, **BUDGET)  # only for the grid
        target = (int(grid[0, 1]) * 14, int(grid[0, 2]) * 14)
        frames = video if tuple(video.shape[-2:]) == target else _torchvision_resize(video, target)
        patches.append(_processor_patches(frames))
        grids.append(grid[0])
    messages = [
        [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": TINY_INSTRUCTION.replace(
            "{text_prompt}", p)}]}]
        for p in prompts
    ]  # fmt: skip
    texts = tokenizer.apply_chat_template(
        messages, chat_template=QWEN2_VL_TEMPLATE, tokenize=False, add_generation_prompt=True
    )
    texts = [t.replace("<|video_pad|>", "<|video_pad|>" * int(g.prod() // 4)) for t, g in zip(texts, grids)]
    batch = dict(tokenizer(texts, padding=True, return_tensors="pt"))
    batch.update(pixel_values_videos=torch.cat(patches), video_grid_thw=torch.stack(grids))
    batch["mm_token_type_ids"] = 2 * (batch["input_ids"] == tokenizer.convert_tokens_to_ids("<|video_pad|>")).int()
    if plain_positions:  # what VideoAlign's forward gave the decoder under transformers 4.45
        batch["position_ids"] = torch.arange(batch["input_ids"].shape[1]).expand(3, *batch["input_ids"].shape)
    final = {}
    model.base_model.model.lm_head.register_forward_hook(lambda module, args, out: final.update(state=args[0]))
    with torch.no_grad():
        if lora:
            model(**batch)
        else:
            with model.disable_adapter():
                model(**batch)
    scores = []
    for token in ("<|VQ_reward|>", "<|MQ_reward|>", "<|TA_reward|>"):
        rows, columns = (batch["input_ids"] == tokenizer.convert_tokens_to_ids(token)).nonzero(as_tuple=True)
        assert rows.tolist() == list(range(len(prompts)))
        scores.append(F.linear(final["state"][rows, columns], head)[:, 0])
    mean = torch.tensor([NORMALISATION[f"{d}_mean"] for d in ("VQ", "MQ", "TA")])
    std = torch.tensor([NORMALISATION[f"{d}_std"] for d in ("VQ", "MQ", "TA")])
    return (torch.stack(scores, dim=1) - mean) / std


def test_scores_equal_stock_transformers_and_peft(copy, reward):
    videos = _uint8_videos(2, 5, 336, 336)  # at a Qwen2-VL size: no resize, so both preprocessings agree exactly
    prompts = ["a cat", "a dog on a hill at dawn, very detailed"]  # different lengths: right padding
    expected = _stock_dimensions(copy, videos, prompts)
    with torch.no_grad():
        dimensions = reward.dimension_scores(videos.float() / 255, prompts)
        overall = reward.score(videos.float() / 255, prompts)
    print(f"largest difference to stock transformers + peft: {(dimensions - expected).abs().max():.1e}")
    torch.testing.assert_close(dimensions, expected, rtol=0, atol=1e-5)
    torch.testing.assert_close(overall, expected.sum(1), rtol=0, atol=3e-5)  # "Overall": VQ + MQ + TA
    assert (expected[0] - expected[1]).abs().min() > 1e-3  # the samples differ in every dimension
    # Not vacuous: without the LoRA, or with Qwen2-VL's own 3-D positions, the scores are others.
    assert (_stock_dimensions(copy, videos, prompts, lora=False) - expected).abs().max() > 1e-2
    assert (_stock_dimensions(copy, videos, prompts, plain_positions=False) - expected).abs().max() > 1e-3


def test_scores_with_resizing_stay_close_to_stock_transformers(copy, reward):
    """Tiny Wan's 32-px frames are upsampled to 336 px; the preprocessing then differs by half a uint8 level at
    most (uint8 rounding), which the tiny random model turns into score differences of 0.9-4.4 % of the spread
    between the two videos (measured per dimension). The bound is relative, since the random model's sensitivity is
    not the real one's."""
    videos = _uint8_videos(2, 5, 32, 32, seed=1)
    expected = _stock_dimensions(copy, videos, PROMPTS)
    with torch.no_grad():
        dimensions = reward.dimension_scores(videos.float() / 255, PROMPTS)
    spread = (expected[0] - expected[1]).abs()
    print(f"32 px: differences {(dimensions - expected).abs().max(0).values}, spread {spread}")
    assert (spread > 0.02).all() and ((dimensions - expected).abs() < 0.1 * spread).all()


# ------------------------------------------------------------------ the prompt, SRP and gradients


def test_only_text_alignment_reads_the_prompt_and_srp_splits_the_dimensions(copy, reward):
    videos = _uint8_videos(2, 5, 32, 32, seed=2).float() / 255
    with torch.no_grad():
        real = reward.dimension_scores(videos, ["Real. a cat", "Real. a dog on a hill at dawn"])
        painting = reward.dimension_scores(videos, ["Painting. a cat", "Painting. a dog on a hill at dawn"])
        k = torch.tensor([0.1, 0.3])
        denoise = reward.srp(videos, PROMPTS, "Real", "Painting", k)
        inversion = reward.srp(videos, PROMPTS, "Painting", "Real", k, inversion=True)
    # VQ and MQ come before the prompt in the instruction: the causal decoder gives them the same state either way.
    torch.testing.assert_close(real[:, :2], painting[:, :2], rtol=0, atol=1e-5)
    assert (real[:, 2] - painting[:, 2]).abs().min() > 1e-4
    torch.testing.assert_close(denoise, (1 + k) * real[:, 2] - painting[:, 2] + real[:, :2].sum(1), atol=1e-5, rtol=0)
    torch.testing.assert_close(
        inversion, (1 + k) * painting[:, 2] - real[:, 2] - real[:, :2].sum(1), atol=1e-5, rtol=0
    )
    checkpoint, base = copy
    motion = load_reward(f"videoalign:{checkpoint}", base=base, dtype=torch.float32, weights="MQ")
    assert not motion.text_conditioned  # MQ alone ignores the text: plain Direct-Align, -f(x) when inverted
    with torch.no_grad():
        torch.testing.assert_close(motion.srp(videos, PROMPTS, "Real", "Painting", k), real[:, 1], atol=1e-5, rtol=0)
        torch.testing.assert_close(
            motion.srp(videos, PROMPTS, "Painting", "Real", k, inversion=True), -real[:, 1], atol=1e-5, rtol=0
        )


def test_gradients_reach_the_sampled_frames(reward):
    videos = (_uint8_videos(2, 5, 32, 32, seed=3).float() / 255).requires_grad_(True)
    reward.srp(videos, PROMPTS, "Real", "Painting", 0.2).sum().backward()
    touched = videos.grad.abs().sum(dim=(0, 2, 3, 4)) > 0
    assert torch.isfinite(videos.grad).all() and touched.tolist() == [True, True, False, True, True]  # 4 of 5
    with pytest.raises(ValueError, match="1 prompts for videos of shape"):
        reward.score(videos.detach(), ["one"])
    with pytest.raises(ValueError, match="each reward token exactly once"):
        reward.score(videos.detach(), ["a cat", "a dog <|TA_reward|>"])


def test_both_branches_of_the_tiny_wan_agree_at_the_recipe_defaults(copy, tmp_path):
    """SRPO on the tiny Wan 2.1 (batch 4, 5 frames of 32 px, LoRA) with this reward at its defaults (Overall, the
    hinge at 10: active on every sample). Measured over config seeds 0-2, 1 and 2 threads alike: branch cosine 0.80,
    0.93, 0.70; with SRP over the whole score instead (VQ and MQ then only through `k`) 0.68, 0.85, 0.43; TA alone
    0.77, 0.91, 0.65; MQ alone (image-only) 0.78, 0.93, 0.79."""
    from datasets import Dataset
    from peft import LoraConfig

    from srpo_trl import SRPOTrainer
    from srpo_trl.testing import tiny_srpo_config, tiny_wan_pipeline

    checkpoint, base = copy
    prompts = ["a cat", "a dog on a hill", "a house", "the sea"]
    args = tiny_srpo_config(str(tmp_path / "out"), resolution=32, num_frames=5, per_device_train_batch_size=4)
    trainer = SRPOTrainer(
        tiny_wan_pipeline(0),
        load_reward(f"videoalign:{checkpoint}", base=base, dtype=torch.float32),
        args=args,
        train_dataset=Dataset.from_dict({"prompt": prompts}),
        peft_config=LoraConfig(r=4, lora_alpha=8, init_lora_weights="gaussian"),
    )
    assert args.use_inversion_branch and args.hinge_threshold is None and trainer.hinge_thresholds == [10.0]
    params = [p for p in trainer.model.parameters() if p.requires_grad]
    losses = trainer.branch_losses(trainer.model, trainer._collate([{"prompt": p} for p in prompts]))
    g = {}
    for branch, loss in losses.items():
        grads = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
        g[branch] = torch.cat([(x if x is not None else torch.zeros_like(p)).flatten() for x, p in zip(grads, params)])
    assert g["denoise"].norm() > 0 and g["inversion"].norm() > 0
    cosine = F.cosine_similarity(g["denoise"], g["inversion"], dim=0).item()
    print(f"tiny Wan with videoalign: branch cosine {cosine:.2f}")
    assert cosine > 0.5, cosine


def test_settings_it_does_not_reproduce_are_refused_with_the_reason(copy, tmp_path):
    import json

    checkpoint, base = copy
    with open(os.path.join(checkpoint, "model_config.json")) as f:
        settings = json.load(f)
    settings["model_config"]["reward_token"] = "last"
    settings["data_config"]["sample_type"] = "multi_pts"
    (tmp_path / "model_config.json").write_text(json.dumps(settings))
    os.symlink(os.path.join(checkpoint, f"checkpoint-{STEP}"), tmp_path / f"checkpoint-{STEP}")
    with pytest.raises(ValueError, match="read at the special tokens.*only 'uniform' frame sampling"):
        load_reward(f"videoalign:{tmp_path}", base=base, instruction=TINY_INSTRUCTION)
    with pytest.raises(ValueError, match="is not a folder"):
        load_reward(f"videoalign:{os.path.join(checkpoint, 'model_config.json')}", base=base)


def test_one_step_on_the_tiny_wan_goes_uphill_on_both_branches(copy, tmp_path):
    """One real `train()` step at the recipe defaults (batch 2): each branch's loss gradient has a negative dot product
    with the weights' change, so each branch's reward rose to first order (tests/uphill.py). Measured on config
    seeds 0-2: all six dots negative."""
    from datasets import Dataset
    from peft import LoraConfig
    from uphill import uphill_step

    from srpo_trl import SRPOTrainer
    from srpo_trl.testing import tiny_srpo_config, tiny_wan_pipeline

    checkpoint, base = copy
    args = tiny_srpo_config(
        str(tmp_path / "out"), resolution=32, num_frames=5, per_device_train_batch_size=2, max_steps=1
    )
    trainer = SRPOTrainer(
        tiny_wan_pipeline(0),
        load_reward(f"videoalign:{checkpoint}", base=base, dtype=torch.float32),
        args=args,
        train_dataset=Dataset.from_dict({"prompt": ["a cat", "a dog on a hill", "a house", "the sea"]}),
        peft_config=LoraConfig(r=4, lora_alpha=8, init_lora_weights="gaussian"),
    )
    step = uphill_step(trainer)
    assert set(step.dots) == {"denoise", "inversion"} and step.uphill, step.dots
