"""Reward models and Semantic Relative Preference scoring."""

from .base import CallableReward, Reward, as_reward, with_control_word
from .clip import CLIPReward
from .color import ColorWordReward
from .preprocess import CLIP_MEAN, CLIP_STD, clip_preprocess


def load_reward(name_or_path: str, **kwargs) -> Reward:
    """A reward from a string: a local folder holding a transformers CLIP model (and its tokenizer)."""
    import os

    if os.path.isdir(name_or_path):
        return CLIPReward(name_or_path, **kwargs)
    raise ValueError(
        f"reward_funcs: {name_or_path!r} is not a folder holding a transformers CLIP model; pass a path, "
        "a srpo_trl.rewards.Reward, or a callable fn(images, prompts) -> Tensor[B]"
    )


__all__ = [
    "CLIP_MEAN",
    "CLIP_STD",
    "CLIPReward",
    "CallableReward",
    "ColorWordReward",
    "Reward",
    "as_reward",
    "clip_preprocess",
    "load_reward",
    "with_control_word",
]
