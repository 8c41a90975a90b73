import pytest
import torch
import torch.nn.functional as F

from srpo_trl.rewards import CallableReward, ColorWordReward, as_reward, clip_preprocess, with_control_word
from srpo_trl.testing import tiny_clip_reward


def test_callable_srp_formula():
    calls = []

    def fn(images, prompts):
        calls.append(list(prompts))
        # A text-dependent score: +mean for texts starting with "good", -mean otherwise.
        sign = torch.tensor([1.0 if p.startswith("good") else -1.0 for p in prompts])
        return sign * images.mean(dim=(1, 2, 3))

    reward = as_reward(fn)
    assert isinstance(reward, CallableReward) and reward.name == "fn"
    images = torch.rand(2, 3, 8, 8)
    k = torch.tensor([0.1, 0.3])
    srp = reward.srp(images, ["a cat", "a dog"], "good", "bad", k)
    m = images.mean(dim=(1, 2, 3))
    torch.testing.assert_close(srp, (1 + k) * m - (-m))
    assert calls == [["good. a cat", "good. a dog"], ["bad. a cat", "bad. a dog"]]


def test_clip_embedding_srp_matches_hand_formula():
    reward = tiny_clip_reward(seed=1)
    images = torch.rand(2, 3, 64, 48)
    prompts = ["a cat", "a house"]
    k = torch.tensor([0.2, 0.05])
    srp = reward.srp(images, prompts, "Real", "Painting", k)

    model = reward.model
    pixels = clip_preprocess(images)
    e_img = F.normalize(model.get_image_features(pixel_values=pixels).pooler_output, dim=-1)

    def e_text(texts):
        tok = reward.tokenizer(texts, padding="max_length", truncation=True, return_tensors="pt")
        return F.normalize(
            model.get_text_features(input_ids=tok.input_ids, attention_mask=tok.attention_mask).pooler_output, dim=-1
        )

    scale = model.logit_scale.exp() / 20
    expected = scale * (
        e_img
        * (
            (1 + k)[:, None] * e_text(with_control_word("Real", prompts))
            - e_text(with_control_word("Painting", prompts))
        )
    ).sum(-1)
    torch.testing.assert_close(srp, expected.detach(), atol=1e-5, rtol=1e-5)
    # The generic callable formula gives the same number: the embedding form only saves image passes.
    generic = super(type(reward), reward).srp(images, prompts, "Real", "Painting", k)
    torch.testing.assert_close(srp, generic, atol=1e-5, rtol=1e-5)


def test_clip_reward_scale_one_is_raw_cosine_and_gradient_reaches_pixels():
    reward = tiny_clip_reward(seed=2, scale=1.0)
    images = torch.rand(1, 3, 32, 32, requires_grad=True)
    score = reward.score(images, ["a red car"])
    assert -1.0 <= score.item() <= 1.0
    score.sum().backward()
    assert images.grad is not None and images.grad.abs().sum() > 0
    assert not any(p.requires_grad for p in reward.parameters())


def test_clip_preprocess_shape_and_gradient():
    images = torch.rand(2, 3, 100, 60, requires_grad=True)
    out = clip_preprocess(images)
    assert out.shape == (2, 3, 224, 224) and out.dtype == torch.float32
    out.sum().backward()
    assert images.grad.abs().sum() > 0


def test_color_reward_is_text_conditioned_and_interpretable():
    reward = ColorWordReward()
    red = torch.zeros(1, 3, 4, 4)
    red[:, 0] = 1.0
    assert reward.score(red, ["red. a cat"]).item() == 0.75
    assert reward.score(red, ["a cat"]).item() == 0.0
    assert reward.score(red, ["blue. a cat"]).item() < 0
    # SRP with +red / -blue: (1 + 0) * 0.75 - (-0.25) = 1.0
    assert reward.srp(red, ["a cat"], "red", "blue", 0.0).item() == 1.0


def test_clip_preprocess_matches_transformers_clip_image_processor():
    """Against `CLIPImageProcessor` on PIL images (its PIL backend here: torchvision is not installed).

    Measured on this machine: mean |diff| about 0.004 and max 0.03 (64 px) to 0.15 (1024 px) in normalised
    units. The max grows with the downscale factor: PIL's bicubic kernel uses a = -0.5, torch's a = -0.75.
    Without antialias the gap is an order of magnitude larger, which the last assertion shows.
    """
    import numpy as np
    from PIL import Image
    from transformers import CLIPImageProcessor

    processor = CLIPImageProcessor(size={"shortest_edge": 224}, crop_size={"height": 224, "width": 224}, resample=3)
    rng = np.random.default_rng(0)
    for h, w in [(64, 64), (300, 200), (512, 768), (1024, 1024)]:
        pil = Image.fromarray(rng.integers(0, 256, (h // 8 + 1, w // 8 + 1, 3)).astype(np.uint8)).resize(
            (w, h), Image.BICUBIC
        )
        reference = processor(images=pil, return_tensors="pt").pixel_values
        images = torch.from_numpy(np.array(pil)).permute(2, 0, 1)[None].float() / 255
        diff = (clip_preprocess(images) - reference).abs()
        assert diff.mean() < 0.01 and diff.max() < 0.2, (h, w, diff.mean().item(), diff.max().item())
    # The same comparison with antialiasing off is far worse: antialias is what makes the match.
    no_aa = F.interpolate(images, size=(224, 224), mode="bicubic", align_corners=False, antialias=False)
    from srpo_trl.rewards import CLIP_MEAN, CLIP_STD

    no_aa = (no_aa - torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)) / torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    assert (no_aa - reference).abs().mean() > 5 * (clip_preprocess(images) - reference).abs().mean()


def test_clip_preprocess_pad_mode_keeps_the_whole_image():
    images = torch.ones(1, 3, 100, 50, requires_grad=True)
    out = clip_preprocess(images, mode="pad")
    assert out.shape == (1, 3, 224, 224)
    black = (torch.zeros(3) - torch.tensor([0.48145466, 0.4578275, 0.40821073])) / torch.tensor(
        [0.26862954, 0.26130258, 0.27577711]
    )
    torch.testing.assert_close(out[0, :, :, 0], black[:, None].expand(3, 224))  # padded columns on the left
    torch.testing.assert_close(
        out[0, :, 112, 112],
        (1 - torch.tensor([0.48145466, 0.4578275, 0.40821073])) / torch.tensor([0.26862954, 0.26130258, 0.27577711]),
    )
    out.sum().backward()
    assert images.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="mode"):
        clip_preprocess(images, mode="squash")
