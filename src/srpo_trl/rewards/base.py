"""The reward protocol and Semantic Relative Preference (SRP) scoring.

A reward scores float images `[B, 3, H, W]` in [0, 1] against texts and must be differentiable in
the images. SRP asks the same reward model about the image twice, with a positive and a negative
control word put before the prompt (`"{word}. {prompt}"`), and subtracts:
`SRP = (1 + k) * f(x, "pos. prompt") - f(x, "neg. prompt")`. The bias the reward model has for
both texts cancels. Image-only rewards cannot take control words and score `f(x)` (plain
Direct-Align).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

# Said by the trainer for every image-only reward (`text_conditioned = False`) it trains with.
IMAGE_ONLY_NOTICE = (
    "reward {name!r} is image-only: it ignores the prompt and SRP's control words, so it trains as plain "
    "Direct-Align (reward = f(x)), without SRP's debiasing"
)


def with_control_word(word: str, prompts: Sequence[str]) -> list[str]:
    """`"{word}. {prompt}"` for every prompt, the text SRP shows the reward model."""
    return [f"{word}. {p}" for p in prompts]


class Reward(nn.Module):
    """Base class of rewards. Subclasses implement [`score`]; [`srp`] is derived from it.

    Attributes:
        name (`str`): used in logged metric names (`rewards/{name}/...`).
        text_conditioned (`bool`): whether the score depends on the text; if not, SRP is plain `f(x)`.
    """

    name: str = "reward"
    text_conditioned: bool = True

    def score(self, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        """Reward `[B]` of each image for its text."""
        raise NotImplementedError

    def forward(self, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        return self.score(images, prompts)

    def srp(
        self,
        images: torch.Tensor,
        prompts: Sequence[str],
        positive_word: str,
        negative_word: str,
        k: torch.Tensor | float,
    ) -> torch.Tensor:
        """Semantic relative preference `(1 + k) f(x, pos. p) - f(x, neg. p)`, per sample."""
        if not self.text_conditioned:
            return self.score(images, prompts)
        positive = self.score(images, with_control_word(positive_word, prompts))
        negative = self.score(images, with_control_word(negative_word, prompts))
        return (1 + torch.as_tensor(k, device=positive.device, dtype=positive.dtype)) * positive - negative


class CallableReward(Reward):
    """Wrap a plain function `fn(images, prompts) -> Tensor[B]` as a text-conditioned [`Reward`]."""

    def __init__(self, fn: Callable[[torch.Tensor, list[str]], torch.Tensor], name: str | None = None):
        super().__init__()
        self.fn = fn
        self.name = name or getattr(fn, "__name__", type(fn).__name__)

    def score(self, images, prompts):
        return self.fn(images, list(prompts))


def as_reward(reward: Reward | Callable) -> Reward:
    """Accept a [`Reward`] as is and wrap any other callable in [`CallableReward`]."""
    if isinstance(reward, Reward):
        return reward
    if callable(reward):
        return CallableReward(reward)
    raise TypeError(
        f"reward_funcs: expected a srpo_trl.rewards.Reward or a callable fn(images, prompts) -> Tensor[B], "
        f"got {type(reward).__name__}"
    )


def srp_score(reward: Reward, images: torch.Tensor, prompts: Sequence[str], positive_words, negative_words):
    """Evaluation SRP (`k = 0`, averaged over the words): `mean_p f(x, p. prompt) - mean_n f(x, n. prompt)`.

    Image-only rewards give their plain `f(x)`.
    """
    if not reward.text_conditioned:
        return reward.score(images, prompts).float()

    def mean_over(words):
        return torch.stack([reward.score(images, with_control_word(w, prompts)).float() for w in words]).mean(0)

    return mean_over(positive_words) - mean_over(negative_words)
