"""What an image of the shapes world shows, as judged by a text-conditioned reward: zero-shot, the scene
whose caption the reward scores highest. The demo and the build report use it to check that training
changed the style and kept the content."""

from __future__ import annotations

import numpy as np
import torch

from . import shapes


@torch.no_grad()
def classify_scenes(reward, images: torch.Tensor, batch_size: int = 256) -> list[shapes.Scene]:
    """The scene of `images` (`[N, 3, H, W]` in [0, 1]) whose `"a {style} of a {colour} {shape} {position}"`
    caption a [`~srpo_trl.rewards.CLIPReward`] scores highest (the largest cosine of the embeddings)."""
    classes = shapes.all_scenes()
    captions = reward.embed_texts([scene.caption("named") for scene in classes])
    predicted = []
    for i in range(0, len(images), batch_size):
        scores = reward.embed_images(images[i : i + batch_size]) @ captions.T
        predicted += [classes[k] for k in scores.argmax(1).tolist()]
    return predicted


def content_accuracy(reward, images: torch.Tensor, scenes: list[shapes.Scene]) -> dict[str, float]:
    """Fraction of `images` whose shape, colour and position the reward sees as in `scenes` (what each was
    prompted with), their fraction of all three at once, and the fraction it sees as photos."""
    predicted = classify_scenes(reward, images)

    def fraction(ok) -> float:
        return float(np.mean([ok(p, s) for p, s in zip(predicted, scenes)]))

    return {
        "shape": fraction(lambda p, s: p.shape == s.shape),
        "colour": fraction(lambda p, s: p.colour == s.colour),
        "position": fraction(lambda p, s: p.position == s.position),
        "content": fraction(lambda p, s: (p.shape, p.colour, p.position) == (s.shape, s.colour, s.position)),
        "photo": fraction(lambda p, s: p.style == "photo"),
    }
