"""LAION aesthetic predictor v2: a linear MLP on CLIP ViT-L/14 image embeddings. Image-only.

The predictor (Schuhmann et al., "improved-aesthetic-predictor", `sac+logos+ava1-l14-linearMSE`)
maps the L2-normalised CLIP ViT-L/14 image embedding to a 1-10 score through five linear layers
with dropout and no activations. It never sees the prompt, so it cannot take SRP's control words:
training with it is plain Direct-Align (`reward = f(x)`), which the SRPO paper reports as a strong
baseline of its own. Pair it with a text-conditioned reward to keep SRP's debiasing.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .base import Reward
from .preprocess import clip_preprocess

AESTHETIC_CLIP = "openai/clip-vit-large-patch14"
#: The top of the predictor's 1-10 scale: the hinge `relu(tau - f(x))` stays active on every image (with the
#: recipe's 0.7 it would be zero on every image, and so would the gradient).
AESTHETIC_HINGE_THRESHOLD = 10.0


class AestheticMLP(nn.Module):
    """The predictor's head: 768 -> 1024 -> 128 -> 64 -> 16 -> 1, dropout between, no activations."""

    def __init__(self, embedding_dim: int = 768):
        super().__init__()
        self.layers = nn.Sequential(
            nn.Linear(embedding_dim, 1024),
            nn.Dropout(0.2),
            nn.Linear(1024, 128),
            nn.Dropout(0.2),
            nn.Linear(128, 64),
            nn.Dropout(0.1),
            nn.Linear(64, 16),
            nn.Linear(16, 1),
        )

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        return self.layers(embeddings)


class AestheticReward(Reward):
    """`f(x) = MLP(normalize(CLIP_image(x)))`, the LAION aesthetic score (about 1..10). Not text-conditioned.

    Args:
        vision_model (`CLIPVisionModelWithProjection` or `str`): CLIP ViT-L/14 image tower, or a local
            folder / hub id of a CLIP model to take it from (default `openai/clip-vit-large-patch14`).
        mlp (`AestheticMLP` or `str`): the head, or a `.pth`/`.safetensors` file with its state dict.
        name (`str`, *optional*, defaults to `"laion-aesthetic"`): name in logged metrics.
        dtype (`torch.dtype`, *optional*): dtype of the CLIP tower; the head always runs in float32.
    """

    text_conditioned = False
    hinge_threshold = AESTHETIC_HINGE_THRESHOLD

    def __init__(self, vision_model=AESTHETIC_CLIP, mlp=None, name: str = "laion-aesthetic", dtype=None):
        super().__init__()
        from .hps import load_state_dict_file

        if isinstance(vision_model, str):
            from transformers import CLIPVisionModelWithProjection

            vision_model = CLIPVisionModelWithProjection.from_pretrained(vision_model)
        if mlp is None:
            raise ValueError("AestheticReward: give the predictor head (an AestheticMLP or its weights file)")
        if isinstance(mlp, str):
            state = load_state_dict_file(mlp)
            head = AestheticMLP(state["layers.0.weight"].shape[1])
            head.load_state_dict(state)
            mlp = head
        if mlp.layers[0].in_features != vision_model.config.projection_dim:
            raise ValueError(
                f"AestheticReward: the head takes {mlp.layers[0].in_features}-d embeddings but the CLIP tower "
                f"projects to {vision_model.config.projection_dim}"
            )
        if dtype is not None:
            vision_model = vision_model.to(dtype)
        self.vision_model = vision_model.eval().requires_grad_(False)
        self.mlp = mlp.float().eval().requires_grad_(False)
        self.name = name
        self.image_size = vision_model.config.image_size

    def _apply(self, fn, recurse=True):
        # Keep the head in float32 when the module is cast (e.g. `.to(torch.bfloat16)`): it is tiny,
        # and the score's last digits matter for the hinge.
        super()._apply(fn, recurse)
        self.mlp.float()
        return self

    def score(self, images, prompts=None):
        pixels = clip_preprocess(images, self.image_size).to(self.vision_model.dtype)
        embedding = self.vision_model(pixel_values=pixels).image_embeds
        return self.mlp(F.normalize(embedding.float(), dim=-1)).squeeze(-1)
