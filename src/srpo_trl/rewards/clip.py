"""CLIP-embedding rewards on a transformers `CLIPModel` (CLIP, PickScore, converted HPS)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from .base import Reward, with_control_word
from .preprocess import clip_preprocess


def _features(output) -> torch.Tensor:
    # transformers 5 returns an output object (projected embedding in `pooler_output`); 4.x a tensor.
    return output if isinstance(output, torch.Tensor) else output.pooler_output


class CLIPReward(Reward):
    """`scale * cos(e_img, e_text)` from a transformers `CLIPModel`; frozen, in eval mode.

    SRP uses the embedding form `scale * <e_img, (1 + k) e_text(pos. p) - e_text(neg. p)>`, which
    computes the image embedding once.

    Args:
        model (`CLIPModel` or `str`): the model, or a local folder / hub id to load it from.
        tokenizer (`CLIPTokenizer` or `str`, *optional*): the tokenizer, or a folder / hub id to load it from;
            defaults to `model`'s when that is a path.
        scale (`"logit"` or `float`, *optional*, defaults to `"logit"`): `"logit"` uses
            `logit_scale.exp() / 20` (CLIP, PickScore: comparable with HPS); HPS uses `1.0`.
        name (`str`, *optional*, defaults to `"clip"`): name in logged metrics.
        dtype (`torch.dtype`, *optional*): dtype to run the model in (bf16 on GPU saves memory).
    """

    def __init__(self, model, tokenizer=None, scale: str | float = "logit", name: str = "clip", dtype=None):
        super().__init__()
        if isinstance(model, str) or isinstance(tokenizer, str):
            from transformers import CLIPModel, CLIPTokenizer

            if isinstance(model, str):
                tokenizer = tokenizer or model
                model = CLIPModel.from_pretrained(model)
            if isinstance(tokenizer, str):
                tokenizer = CLIPTokenizer.from_pretrained(tokenizer)
        if tokenizer is None:
            raise ValueError("CLIPReward: a tokenizer is needed when model is given as an object")
        if dtype is not None:
            model = model.to(dtype)
        self.model = model.eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.name = name
        self.image_size = model.config.vision_config.image_size
        self._scale = scale
        if scale != "logit" and not isinstance(scale, (int, float)):
            raise ValueError(f"CLIPReward: scale must be 'logit' or a number, got {scale!r}")

    @property
    def scale(self) -> torch.Tensor:
        if self._scale == "logit":
            return self.model.logit_scale.exp().float() / 20
        return torch.tensor(float(self._scale))

    def embed_images(self, images: torch.Tensor) -> torch.Tensor:
        pixels = clip_preprocess(images, self.image_size).to(self.model.dtype)
        return F.normalize(_features(self.model.get_image_features(pixel_values=pixels)).float(), dim=-1)

    def embed_texts(self, texts: Sequence[str]) -> torch.Tensor:
        device = self.model.logit_scale.device
        tokens = self.tokenizer(list(texts), padding="max_length", truncation=True, return_tensors="pt").to(device)
        with torch.no_grad():  # text never needs a gradient
            out = self.model.get_text_features(input_ids=tokens.input_ids, attention_mask=tokens.attention_mask)
        return F.normalize(_features(out).float(), dim=-1)

    def score(self, images, prompts):
        return self.scale.to(images.device) * (self.embed_images(images) * self.embed_texts(prompts)).sum(-1)

    def srp(self, images, prompts, positive_word, negative_word, k, *, inversion=False):
        e_img = self.embed_images(images)
        e_pos = self.embed_texts(with_control_word(positive_word, prompts))
        e_neg = self.embed_texts(with_control_word(negative_word, prompts))
        k = torch.as_tensor(k, device=e_img.device, dtype=e_img.dtype).reshape(-1, 1)
        return self.scale.to(e_img.device) * (e_img * ((1 + k) * e_pos - e_neg)).sum(-1)
