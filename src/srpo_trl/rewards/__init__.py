"""Reward models and Semantic Relative Preference scoring."""

from ..control_words import CONTROL_WORD_PRESETS, control_word_preset
from .aesthetic import AestheticMLP, AestheticReward
from .base import DEFAULT_HINGE_THRESHOLD, CallableReward, Reward, as_reward, image_only, srp_score, with_control_word
from .clip import CLIPReward
from .color import ColorWordReward
from .consistency import DepthConsistencyReward, EdgeConsistencyReward, UnmaskedFidelityReward
from .hps import convert_hps, hps_clip_model, load_state_dict_file, open_clip_to_transformers
from .hpsv3 import HPSv3Head, HPSv3Reward
from .preprocess import CLIP_MEAN, CLIP_STD, clip_preprocess
from .qwen_vl_preprocess import qwen_vl_preprocess
from .registry import BUILT_IN_REWARDS, REWARDS, RewardSpec, load_reward, reward_names
from .videoalign import VideoAlignReward

__all__ = [
    "CLIP_MEAN",
    "CLIP_STD",
    "CONTROL_WORD_PRESETS",
    "DEFAULT_HINGE_THRESHOLD",
    "BUILT_IN_REWARDS",
    "REWARDS",
    "AestheticMLP",
    "AestheticReward",
    "CLIPReward",
    "CallableReward",
    "ColorWordReward",
    "DepthConsistencyReward",
    "EdgeConsistencyReward",
    "HPSv3Head",
    "HPSv3Reward",
    "Reward",
    "RewardSpec",
    "UnmaskedFidelityReward",
    "VideoAlignReward",
    "as_reward",
    "clip_preprocess",
    "control_word_preset",
    "convert_hps",
    "hps_clip_model",
    "image_only",
    "load_reward",
    "reward_names",
    "load_state_dict_file",
    "open_clip_to_transformers",
    "qwen_vl_preprocess",
    "srp_score",
    "with_control_word",
]
