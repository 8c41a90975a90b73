"""The reward protocol and Semantic Relative Preference (SRP) scoring.

A reward scores float images `[B, 3, H, W]` in [0, 1] against texts and must be differentiable in
the images. SRP asks the same reward model about the image twice, with a positive and a negative
control word put before the prompt (`"{word}. {prompt}"`), and subtracts:
`SRP = (1 + k) * f(x, "pos. prompt") - f(x, "neg. prompt")`. The bias the reward model has for
both texts cancels. Image-only rewards cannot take control words and score `f(x)` (plain
Direct-Align); in the inversion branch, a penalty, they score `-f(x)`, which is what swapping the control
words does for SRP.

A reward that checks the generated image against the pipeline's condition (an edge or depth map to follow, the
source image Fill repaints) names what it reads in `Reward.conditions`; the trainer passes those tensors to its
`score` by keyword (`control_images`, `source_images` `[B, 3, H, W]` in [0, 1], `masks` `[B, 1, H, W]`, 1 where the
image is repainted).

Each reward's scores live on their own scale, so each has its own hinge threshold `tau` in the loss
`relu(tau - R) / 2` (`Reward.hinge_threshold`; the recipe's 0.7 is on HPS's SRP scale).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence

import torch
from torch import nn

# Said by the trainer for every image-only reward (`text_conditioned = False`) it trains with.
IMAGE_ONLY_NOTICE = (
    "reward {name!r} is image-only: it ignores the prompt and SRP's control words, so it trains as plain "
    "Direct-Align (reward f(x) in the denoise branch, -f(x) in the inversion branch), without SRP's debiasing"
)

#: The recipe's hinge threshold, on the scale of HPS's SRP (values around 0.1-0.4).
DEFAULT_HINGE_THRESHOLD = 0.7


def with_control_word(word: str, prompts: Sequence[str]) -> list[str]:
    """`"{word}. {prompt}"` for every prompt, the text SRP shows the reward model."""
    return [f"{word}. {p}" for p in prompts]


class Reward(nn.Module):
    """Base class of rewards. Subclasses implement [`score`]; [`srp`] is derived from it.

    Attributes:
        name (`str`): used in logged metric names (`rewards/{name}/...`).
        text_conditioned (`bool`): whether the score depends on the text; if not, SRP is plain `f(x)`.
        hinge_threshold (`float`): `tau` of this reward's hinge `relu(tau - R) / 2`, on the reward's own scale
            (`SRPOConfig.hinge_threshold` overrides it). It must lie above the scores the reward gives, or the
            hinge is inactive and the reward gives no gradient.
    """

    name: str = "reward"
    text_conditioned: bool = True
    hinge_threshold: float = DEFAULT_HINGE_THRESHOLD
    #: The pipeline's conditioning this reward reads, passed to `score` by keyword: `"control_images"`,
    #: `"source_images"`, `"masks"` (see the module docstring). Empty for preference rewards.
    conditions: tuple[str, ...] = ()

    def score(self, images: torch.Tensor, prompts: Sequence[str], **conditions) -> torch.Tensor:
        """Reward `[B]` of each image for its text (and the `conditions` it declares)."""
        raise NotImplementedError

    def forward(self, images: torch.Tensor, prompts: Sequence[str], **conditions) -> torch.Tensor:
        return self.score(images, prompts, **conditions)

    def conditioned_score(self, images, prompts, conditions: dict | None = None) -> torch.Tensor:
        """`score` given the conditions this reward declares, picked from `conditions` (a dict holding at least
        those)."""
        if not self.conditions:
            return self.score(images, prompts)
        missing = [name for name in self.conditions if conditions is None or name not in conditions]
        if missing:
            raise ValueError(
                f"reward {self.name!r} compares the image with the pipeline's condition and needs {missing}; this "
                f"pipeline gives {sorted(conditions or {})}"
            )
        return self.score(images, prompts, **{name: conditions[name] for name in self.conditions})

    def srp(
        self,
        images: torch.Tensor,
        prompts: Sequence[str],
        positive_word: str,
        negative_word: str,
        k: torch.Tensor | float,
        *,
        inversion: bool = False,
        conditions: dict | None = None,
    ) -> torch.Tensor:
        """Semantic relative preference `(1 + k) f(x, pos. p) - f(x, neg. p)`, per sample.

        The inversion branch passes its words swapped and `inversion=True`. An image-only reward cannot take the
        words: it gives `f(x)`, and `-f(x)` in the inversion branch, the sign the swap gives SRP. (With `+f(x)` in
        both branches they cancel: the inversion step's recovery moves with the velocity in the opposite
        direction to the denoise step's.)
        """
        if not self.text_conditioned:
            score = self.conditioned_score(images, prompts, conditions)
            return -score if inversion else score
        positive = self.score(images, with_control_word(positive_word, prompts))
        negative = self.score(images, with_control_word(negative_word, prompts))
        return (1 + torch.as_tensor(k, device=positive.device, dtype=positive.dtype)) * positive - negative


class CallableReward(Reward):
    """Wrap a plain function `fn(images, prompts) -> Tensor[B]` as a [`Reward`].

    Args:
        fn (`callable`): the scores of float images `[B, 3, H, W]` in [0, 1] for their texts, differentiable in
            the images.
        name (`str`, *optional*): name in logged metrics; defaults to the function's name.
        text_conditioned (`bool`, *optional*): `False` declares a function that ignores the texts (image-only:
            plain Direct-Align, no SRP). Defaults to the function's own `text_conditioned` attribute, else `True`.
        hinge_threshold (`float`, *optional*): `tau` on the function's scale; defaults to the function's own
            `hinge_threshold` attribute, else the recipe's 0.7.
    """

    def __init__(
        self,
        fn: Callable[[torch.Tensor, list[str]], torch.Tensor],
        name: str | None = None,
        text_conditioned: bool | None = None,
        hinge_threshold: float | None = None,
    ):
        super().__init__()
        self.fn = fn
        self.name = name or getattr(fn, "__name__", type(fn).__name__)
        if text_conditioned is None:
            text_conditioned = getattr(fn, "text_conditioned", True)
        self.text_conditioned = bool(text_conditioned)
        if hinge_threshold is None:
            hinge_threshold = getattr(fn, "hinge_threshold", DEFAULT_HINGE_THRESHOLD)
        self.hinge_threshold = float(hinge_threshold)

    def score(self, images, prompts):
        return self.fn(images, list(prompts))


def image_only(fn: Callable | None = None, *, hinge_threshold: float | None = None):
    """Declare a function `fn(images, prompts)` that ignores its texts as an image-only reward.

    Use as `reward_funcs=image_only(fn)` or as a decorator (`@image_only` or `@image_only(hinge_threshold=10)`).
    Returns a [`CallableReward`] with `text_conditioned=False`.
    """
    if fn is None:
        return lambda f: CallableReward(f, text_conditioned=False, hinge_threshold=hinge_threshold)
    return CallableReward(fn, text_conditioned=False, hinge_threshold=hinge_threshold)


def _check_image_reward_signature(fn: Callable) -> None:
    """Refuse a text reward in TRL's form, `fn(prompts, completions, **kwargs)`, with the signature to use instead."""
    try:
        names = list(inspect.signature(fn).parameters)
    except (TypeError, ValueError):  # builtins and some C callables have no signature to read
        return
    if "completions" in names or names[:1] == ["prompts"]:
        name = getattr(fn, "__name__", type(fn).__name__)
        raise TypeError(
            f"reward_funcs: {name}{inspect.signature(fn)} looks like a TRL text reward fn(prompts, completions, "
            "**kwargs); srpo-trl's rewards score images: fn(images, prompts) -> Tensor[B], where images are float "
            "[B, 3, H, W] in [0, 1] and the score must be differentiable in them"
        )


def as_reward(reward: Reward | Callable) -> Reward:
    """Accept a [`Reward`] as is and wrap any other callable in [`CallableReward`]."""
    if isinstance(reward, Reward):
        return reward
    if callable(reward):
        _check_image_reward_signature(reward)
        return CallableReward(reward)
    raise TypeError(
        f"reward_funcs: expected a srpo_trl.rewards.Reward or a callable fn(images, prompts) -> Tensor[B], "
        f"got {type(reward).__name__}"
    )


def srp_score(
    reward: Reward, images: torch.Tensor, prompts: Sequence[str], positive_words, negative_words, conditions=None
):
    """Evaluation SRP (`k = 0`, averaged over the words): `mean_p f(x, p. prompt) - mean_n f(x, n. prompt)`.

    Image-only rewards give their plain `f(x)`.
    """
    if not reward.text_conditioned:
        return reward.conditioned_score(images, prompts, conditions).float()

    def mean_over(words):
        return torch.stack([reward.score(images, with_control_word(w, prompts)).float() for w in words]).mean(0)

    return mean_over(positive_words) - mean_over(negative_words)


@torch.no_grad()
def held_out_scores(
    rewards, weights, watched, images: torch.Tensor, prompts, words, conditions=None
) -> dict[str, torch.Tensor]:
    """Per-sample evaluation scores: each reward's SRP ([`srp_score`], `k = 0`) and plain `f(x, prompt)`, and
    `reward`, the weighted SRP of the trained `rewards`; the `watched` rewards are scored, never weighted in."""
    scores = {}
    total = torch.zeros(len(prompts), device=images.device)
    for reward, weight in zip([*rewards, *watched], [*weights, *[0.0] * len(watched)]):
        srp = srp_score(reward, images, prompts, *words, conditions)
        scores[f"rewards/{reward.name}/srp"] = srp
        scores[f"rewards/{reward.name}/plain"] = reward.conditioned_score(images, prompts, conditions).float()
        total = total + weight * srp
    scores["reward"] = total
    return scores
