"""A content-keeping reward for the shapes world: how surely the shipped CLIP reward reads back what the prompt asked.

Style rewards can be raised by giving the content up (a photo-like texture with no shape in it). This reward pulls the
other way: the probability, under the shipped reward's zero-shot reading of the 120 scenes (`classify.py`), that the
image shows the prompt's shape, colour and position, in either style: `sum_style softmax(cos / T)[prompted, style]`.
It reads the prompt, not SRP's control words, so it trains as an image-only reward (plain Direct-Align; `-p` in the
inversion branch, whose step moves the other way). It lies in [0, 1]; its hinge threshold 1.0 lies above it and above
its negation, so the hinge never switches off. It is the shapes world's stand-in for what a real run would add beside
a preference reward: a prompt-following reward, with a weight.
"""

from __future__ import annotations

import torch

from ..rewards.base import Reward
from . import shapes

#: Softmax temperature over the cosines (the shipped CLIP's logit scale is 1: its cosines alone are too flat).
TEMPERATURE = 0.02


class ShapesContentReward(Reward):
    """`p(prompted content | image)` under a shapes-world `CLIPReward`'s zero-shot reading (see the module)."""

    name = "shapes-content"
    text_conditioned = False
    hinge_threshold = 1.0

    def __init__(self, clip_reward, temperature: float = TEMPERATURE):
        super().__init__()
        self.clip = clip_reward
        self.temperature = float(temperature)
        self.scenes = shapes.all_scenes()
        self._index = {scene.content: [] for scene in self.scenes}
        for i, scene in enumerate(self.scenes):
            self._index[scene.content].append(i)
        self._captions: torch.Tensor | None = None

    def _caption_embeddings(self, device) -> torch.Tensor:
        if self._captions is None or self._captions.device != device:
            self._captions = self.clip.embed_texts([scene.caption("named") for scene in self.scenes]).to(device)
        return self._captions

    def score(self, images, prompts):
        unknown = [p for p in prompts if p not in self._index]
        if unknown:
            raise ValueError(f"shapes-content: {unknown[:3]} are not shapes-world content prompts")
        embeddings = self.clip.embed_images(images)
        probabilities = torch.softmax(
            embeddings @ self._caption_embeddings(embeddings.device).T / self.temperature, -1
        )
        rows = torch.arange(len(prompts), device=images.device)[:, None]
        columns = torch.tensor([self._index[p] for p in prompts], device=images.device)
        return probabilities[rows, columns].sum(-1)
