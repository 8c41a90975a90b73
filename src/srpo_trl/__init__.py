"""srpo-trl: SRPO (Semantic Relative Preference Optimization with Direct-Align) for diffusers pipelines."""

__version__ = "0.1.0.dev0"

from .config import SRPOConfig
from .rewards import CallableReward, CLIPReward, ColorWordReward, Reward, load_reward
from .trainer import SRPOTrainer

__all__ = [
    "CLIPReward",
    "CallableReward",
    "ColorWordReward",
    "Reward",
    "SRPOConfig",
    "SRPOTrainer",
    "__version__",
    "load_reward",
]
