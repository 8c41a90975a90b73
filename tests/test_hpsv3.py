"""HPSv3 from a tiny local copy in the real checkpoint's layout: loading by name, the key mapping, the
differentiable preprocessing against transformers' Qwen2-VL processor, the score against stock transformers,
gradients and SRP."""

import os
import shutil

import pytest
import torch
import torch.nn.functional as F
from hpsv3_copy import TINY_INSTRUCTION, save_hpsv3_copy
from safetensors.torch import load_file, save_file

from srpo_trl.rewards import REWARDS, HPSv3Reward, load_reward
from srpo_trl.rewards.hpsv3 import HPSV3_PIXELS, REWARD_TOKEN, hpsv3_user_text, split_hpsv3_key
from srpo_trl.rewards.qwen_vl_preprocess import qwen_vl_preprocess, qwen_vl_resized_size

PROMPTS = ["a cat", "a dog on a hill at dawn"]

# Qwen2-VL-Instruct's chat template, reduced to what one user turn of image + text uses (Jinja, as the
# processor renders it): the reference side of the comparison, written apart from `hpsv3_chat`.
QWEN2_VL_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n{% for content in message['content'] %}"
    "{% if content['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'text' %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


@pytest.fixture(scope="module")
def copy_folder(tmp_path_factory):
    return save_hpsv3_copy(str(tmp_path_factory.mktemp("hpsv3")))


@pytest.fixture(scope="module")
def reward(copy_folder):
    return load_reward(f"hpsv3:{copy_folder}", dtype=torch.float32)


def _uint8_images(batch, height, width, seed=0):
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(batch, 3, 6, 6, generator=g)
    smooth = F.interpolate(low, size=(height, width), mode="bicubic", align_corners=False)
    images = (0.7 * smooth + 0.3 * torch.rand(batch, 3, height, width, generator=g)).clamp(0, 1)
    return (images * 255).round().to(torch.uint8)


# ------------------------------------------------------------------ registry and loading


def test_registry_spec():
    spec = REWARDS["hpsv3"]
    assert (spec.family, spec.checkpoint, spec.filename, spec.tokenizer) == (
        "hpsv3",
        "MizzenAI/HPSv3",
        "HPSv3.safetensors",
        "Qwen/Qwen2-VL-7B-Instruct",
    )
    assert spec.text_conditioned and spec.hinge_threshold == 10.0


def test_loads_offline_from_a_folder_or_the_checkpoint_file(copy_folder, reward):
    assert isinstance(reward, HPSv3Reward) and reward.name == "hpsv3"
    assert reward.text_conditioned and reward.hinge_threshold == 10.0
    # The base config.json says a padded vocabulary; the model takes the checkpoint's (tokenizer + <|Reward|>).
    assert reward.model.get_input_embeddings().num_embeddings == reward.reward_token_id + 1
    from_file = load_reward("hpsv3", path=os.path.join(copy_folder, "HPSv3.safetensors"), dtype=torch.float32)
    images = _uint8_images(2, 56, 56).float() / 255
    torch.testing.assert_close(from_file.score(images, PROMPTS), reward.score(images, PROMPTS), rtol=0, atol=0)
    assert load_reward(f"hpsv3:{copy_folder}").model.dtype == torch.bfloat16  # HPSv3's own dtype by default


def test_checkpoint_keys_map_from_both_transformers_layouts():
    assert split_hpsv3_key("visual.blocks.0.attn.qkv.weight") == ("backbone", "visual.blocks.0.attn.qkv.weight")
    assert split_hpsv3_key("model.layers.3.mlp.up_proj.weight") == (
        "backbone",
        "language_model.layers.3.mlp.up_proj.weight",
    )
    assert split_hpsv3_key("model.embed_tokens.weight") == ("backbone", "language_model.embed_tokens.weight")
    assert split_hpsv3_key("model.visual.merger.ln_q.weight") == ("backbone", "visual.merger.ln_q.weight")
    assert split_hpsv3_key("model.language_model.norm.weight") == ("backbone", "language_model.norm.weight")
    assert split_hpsv3_key("rm_head.5.bias") == ("head", "layers.5.bias")
    assert split_hpsv3_key("lm_head.weight") == ("unused", None)
    with pytest.raises(ValueError, match="unexpected tensor 'value_head.weight'"):
        split_hpsv3_key("value_head.weight")


def test_bad_copies_and_inputs_are_refused_with_the_reason(copy_folder, reward, tmp_path):
    with pytest.raises(FileNotFoundError, match="has no HPSv3.safetensors"):
        load_reward(f"hpsv3:{tmp_path}")
    tensors = load_file(os.path.join(copy_folder, "HPSv3.safetensors"))
    del tensors["model.layers.1.mlp.down_proj.weight"]
    broken = str(tmp_path / "HPSv3.safetensors")
    save_file(tensors, broken)
    with pytest.raises(ValueError, match=r"missing \['language_model.layers.1.mlp.down_proj.weight'\]"):
        load_reward("hpsv3", path=broken, base=copy_folder)
    images = torch.rand(2, 3, 56, 56)
    with pytest.raises(ValueError, match="1 prompts for images of shape"):
        reward.score(images, ["one"])
    with pytest.raises(ValueError, match="exactly one <\\|Reward\\|>"):
        reward.score(images, ["a cat", f"a dog {REWARD_TOKEN}"])


def test_the_instruction_comes_from_the_user_and_is_checked(copy_folder, tmp_path):
    """HPSv3's instruction is its authors' text, not shipped: without it the loader stops before any weights load."""
    base = tmp_path / "base"
    shutil.copytree(copy_folder, base, ignore=shutil.ignore_patterns("hpsv3_instruction.txt", "*.safetensors"))
    (tmp_path / "bare").mkdir()
    checkpoint = tmp_path / "bare" / "HPSv3.safetensors"
    os.symlink(os.path.join(copy_folder, "HPSv3.safetensors"), checkpoint)
    with pytest.raises(ValueError, match="needs the instruction it was trained to read"):
        load_reward("hpsv3", path=str(checkpoint), base=str(base))
    with pytest.raises(ValueError, match="must hold {prompt} once"):
        load_reward("hpsv3", path=str(checkpoint), base=str(base), instruction="Rate it: <|Reward|>")
    given = load_reward(
        "hpsv3", path=str(checkpoint), base=str(base), instruction=TINY_INSTRUCTION, dtype=torch.float32
    )
    assert given.instruction == TINY_INSTRUCTION


# ------------------------------------------------------------------ preprocessing


def test_resized_size_is_the_processors():
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize

    for height in range(20, 2100, 37):
        for width in (28, 64, 333, 448, 720, 1024, 1360, 2048):
            for low, high in [(HPSV3_PIXELS, HPSV3_PIXELS), (56 * 56, 28 * 28 * 1280)]:
                expected = smart_resize(height, width, factor=28, min_pixels=low, max_pixels=high)
                assert qwen_vl_resized_size(height, width, min_pixels=low, max_pixels=high) == expected


@pytest.mark.parametrize("size", [(64, 64), (300, 200), (448, 448), (1024, 1024)])
def test_preprocessing_matches_the_reference_processor(size):
    """On uint8 images (the processor takes PIL/uint8) the patches agree to about one uint8 level: 1 / 255 / std
    = 0.015 in normalised units. Measured: max 0.0163, mean 0.0041-0.0047 at 64-1360 px (0 at 448 x 448, no
    resize); without the clamp between the two resize passes, 0.36 at upsampled sharp edges."""
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    images = _uint8_images(2, *size)
    processor = Qwen2VLImageProcessorPil(min_pixels=HPSV3_PIXELS, max_pixels=HPSV3_PIXELS)
    expected = processor(images=[image.permute(1, 2, 0).numpy() for image in images], return_tensors="pt")
    pixel_values, grid_thw = qwen_vl_preprocess(images.float() / 255, min_pixels=HPSV3_PIXELS, max_pixels=HPSV3_PIXELS)
    assert torch.equal(grid_thw, expected["image_grid_thw"])
    difference = (pixel_values - expected["pixel_values"]).abs()
    if size == (448, 448):
        assert difference.max() < 1e-5
    else:
        assert difference.max() < 0.02 and difference.mean() < 0.006, (difference.max(), difference.mean())


def test_preprocessing_passes_gradients_to_every_pixel():
    images = torch.rand(1, 3, 100, 70, requires_grad=True)
    pixel_values, _ = qwen_vl_preprocess(images, min_pixels=HPSV3_PIXELS, max_pixels=HPSV3_PIXELS)
    (pixel_values * torch.randn_like(pixel_values)).sum().backward()
    assert torch.isfinite(images.grad).all() and (images.grad != 0).float().mean() > 0.99
    with pytest.raises(ValueError, match=r"expected float images \[B, 3, H, W\]"):
        qwen_vl_preprocess(torch.zeros(1, 3, 8, 8, dtype=torch.uint8), min_pixels=1, max_pixels=2)


# ------------------------------------------------------------------ the score against stock transformers


def _stock_scores(copy_folder, tmp_path, images_uint8, prompts, *, plain_positions=True):
    """The score as stock transformers computes it: the reference processor's inputs (PIL resize, chat template,
    image-token expansion), `Qwen2VLForConditionalGeneration` loaded by `from_pretrained` from the checkpoint's
    4.x-named tensors (transformers' own key conversion), the final hidden state at the reward token (what the
    LM head reads), and the head in plain torch straight from the safetensors file."""
    from transformers import AutoTokenizer, Qwen2VLConfig, Qwen2VLForConditionalGeneration
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    checkpoint = os.path.join(copy_folder, "HPSv3.safetensors")
    tensors = load_file(checkpoint)
    head = {k: v for k, v in tensors.items() if k.startswith("rm_head.")}
    config = Qwen2VLConfig.from_pretrained(copy_folder)
    config.text_config.vocab_size = tensors["model.embed_tokens.weight"].shape[0]
    folder = tmp_path / "stock"
    config.save_pretrained(folder)
    save_file({k: v for k, v in tensors.items() if k not in head}, str(folder / "model.safetensors"))
    model = Qwen2VLForConditionalGeneration.from_pretrained(folder, dtype=torch.float32).eval()

    tokenizer = AutoTokenizer.from_pretrained(copy_folder, padding_side="right")
    tokenizer.add_special_tokens({"additional_special_tokens": [REWARD_TOKEN]})  # as HPSv3's training did
    # Qwen2VLProcessor's steps (its constructor wants torchvision's video processor, not installed here): render
    # the chat template, repeat each image's placeholder once per merged patch, tokenize with right padding.
    image_processor = Qwen2VLImageProcessorPil(min_pixels=HPSV3_PIXELS, max_pixels=HPSV3_PIXELS)
    vision = image_processor(images=[im.permute(1, 2, 0).numpy() for im in images_uint8], return_tensors="pt")
    messages = [
        [
            {
                "role": "user",
                "content": [{"type": "image"}, {"type": "text", "text": hpsv3_user_text(p, TINY_INSTRUCTION)}],
            }
        ]
        for p in prompts
    ]
    texts = tokenizer.apply_chat_template(
        messages, chat_template=QWEN2_VL_TEMPLATE, tokenize=False, add_generation_prompt=True
    )
    texts = [
        t.replace("<|image_pad|>", "<|image_pad|>" * int(thw.prod() // 4))
        for t, thw in zip(texts, vision["image_grid_thw"])
    ]
    batch = {**tokenizer(texts, padding=True, return_tensors="pt"), **vision}
    batch["mm_token_type_ids"] = (batch["input_ids"] == tokenizer.convert_tokens_to_ids("<|image_pad|>")).int()
    if plain_positions:  # what HPSv3's forward gave the decoder: 0, 1, 2, ... on all three M-RoPE axes
        batch["position_ids"] = torch.arange(batch["input_ids"].shape[1]).expand(3, *batch["input_ids"].shape)
    final_hidden = {}
    model.lm_head.register_forward_hook(lambda module, args, out: final_hidden.update(state=args[0]))
    with torch.no_grad():
        model(**batch)
    rows, columns = (batch["input_ids"] == tokenizer.convert_tokens_to_ids(REWARD_TOKEN)).nonzero(as_tuple=True)
    assert rows.tolist() == list(range(len(prompts)))
    x = final_hidden["state"][rows, columns]
    x = F.relu(F.linear(x, head["rm_head.0.weight"], head["rm_head.0.bias"]))
    x = F.relu(F.linear(x, head["rm_head.3.weight"], head["rm_head.3.bias"]))
    return F.linear(x, head["rm_head.5.weight"], head["rm_head.5.bias"])[:, 0]


def test_score_equals_stock_transformers_on_the_reference_processors_inputs(copy_folder, reward, tmp_path):
    images = _uint8_images(2, 448, 448)  # at HPSv3's size: no resize, so the two preprocessings agree exactly
    prompts = ["a cat", "a dog on a hill at dawn, very detailed"]  # different lengths: right padding
    expected = _stock_scores(copy_folder, tmp_path, images, prompts)
    with torch.no_grad():
        scores = reward.score(images.float() / 255, prompts)
    torch.testing.assert_close(scores, expected, rtol=0, atol=1e-5)
    assert (scores[0] - scores[1]).abs() > 1e-3  # the two samples differ: the comparison is not vacuous
    # Qwen2-VL's own 2-D positions for image tokens give another score: the positions are part of what is tested.
    mrope = _stock_scores(copy_folder, tmp_path, images, prompts, plain_positions=False)
    assert (mrope - expected).abs().max() > 1e-4


def test_score_with_resizing_stays_close_to_stock_transformers(copy_folder, reward, tmp_path):
    """At 64 px the processor upsamples with PIL to 448 and rounds to uint8; the preprocessing differs by at most
    0.016 (normalised), which the tiny random model turns into score differences of 0.0015-0.0095 (measured on five
    image draws from 64 x 64 to 300 x 200; 0 at 448 x 448), 1.5-4.3 % of the score difference between the two
    samples. The bound is relative, since the random model's sensitivity is not the real one's."""
    images = _uint8_images(2, 64, 64, seed=1)
    expected = _stock_scores(copy_folder, tmp_path, images, PROMPTS)
    with torch.no_grad():
        scores = reward.score(images.float() / 255, PROMPTS)
    spread = (expected[0] - expected[1]).abs()
    assert spread > 0.05 and (scores - expected).abs().max() < 0.1 * spread


# ------------------------------------------------------------------ gradients and SRP


def test_gradients_reach_the_images_and_srp_uses_the_words(reward):
    images = (_uint8_images(2, 64, 64, seed=2).float() / 255).requires_grad_(True)
    k = 0.25
    srp = reward.srp(images, PROMPTS, "Real", "Painting", k)
    with torch.no_grad():
        positive = reward.score(images, ["Real. a cat", "Real. a dog on a hill at dawn"])
        negative = reward.score(images, ["Painting. a cat", "Painting. a dog on a hill at dawn"])
    torch.testing.assert_close(srp.detach(), (1 + k) * positive - negative, rtol=0, atol=1e-5)
    assert (positive - negative).abs().min() > 1e-5  # the words change the score: SRP is not k * f(x)
    srp.sum().backward()
    assert torch.isfinite(images.grad).all() and images.grad.abs().sum() > 0
