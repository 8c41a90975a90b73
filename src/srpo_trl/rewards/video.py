"""Rewards for video families (Wan): videos are float `[B, F, 3, H, W]` in [0, 1].

- [`FrameReward`] scores a video with any image reward: the frames `0, stride, 2 stride, ...`, each scored as an
  image (with SRP's control words per frame), averaged per video. It keeps the inner reward's name, text
  conditioning and hinge threshold, so metrics and thresholds read as the image reward's.
- [`TemporalConsistencyReward`] is image-only: the cosine similarity of an image tower's features of consecutive
  (strided) frames, averaged, in [-1, 1]; 1 for a still video. Its hinge threshold is 1.0, above every score (and
  above the negated score the inversion branch takes), so the hinge is always active.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from .base import Reward, as_reward
from .preprocess import clip_preprocess


def strided_frames(videos: torch.Tensor, stride: int) -> torch.Tensor:
    """Frames `0, stride, 2 stride, ...` of videos `[B, F, 3, H, W]` (`[B, n, 3, H, W]`); images `[B, 3, H, W]` are
    one-frame videos."""
    if videos.ndim == 4:
        videos = videos.unsqueeze(1)
    if videos.ndim != 5:
        raise ValueError(f"expected videos [B, F, 3, H, W], got shape {tuple(videos.shape)}")
    return videos[:, ::stride]


class FrameReward(Reward):
    """An image reward applied to every `stride`-th frame of a video (the first included), averaged per video.

    Args:
        reward (`Reward` or callable): the image reward (any [`Reward`], or `fn(images, prompts) -> Tensor[B]`).
        stride (`int`, *optional*, defaults to `4`): score frames `0, stride, 2 stride, ...`.
    """

    #: Scores videos `[B, F, 3, H, W]` itself: the trainer does not wrap it again.
    takes_videos = True

    def __init__(self, reward, stride: int = 4):
        super().__init__()
        if stride < 1:
            raise ValueError(f"FrameReward: stride must be at least 1, got {stride}")
        self.inner = as_reward(reward)
        self.stride = stride
        self.name = self.inner.name
        self.text_conditioned = self.inner.text_conditioned
        self.hinge_threshold = self.inner.hinge_threshold
        self.conditions = self.inner.conditions

    def _flat(self, videos: torch.Tensor, prompts: Sequence[str]):
        frames = strided_frames(videos, self.stride)
        batch, n = frames.shape[:2]
        return frames.flatten(0, 1), [p for p in prompts for _ in range(n)], batch, n

    @staticmethod
    def _per_frame(conditions: dict, n: int) -> dict:
        """Each condition (one per video) repeated for the video's `n` scored frames."""
        return {k: v.repeat_interleave(n, dim=0) for k, v in conditions.items()}

    def score(self, images: torch.Tensor, prompts: Sequence[str], **conditions) -> torch.Tensor:
        frames, texts, batch, n = self._flat(images, prompts)
        scores = self.inner.score(frames, texts, **self._per_frame(conditions, n))
        return scores.view(batch, n).mean(1)

    def srp(self, images, prompts, positive_word, negative_word, k, *, inversion=False, conditions=None):
        """The inner reward's SRP per scored frame (its control words per frame, `k` repeated per frame), averaged."""
        frames, texts, batch, n = self._flat(images, prompts)
        if isinstance(k, torch.Tensor) and k.ndim > 0:
            k = k.repeat_interleave(n)
        given = {}
        if conditions is not None:
            given["conditions"] = self._per_frame(conditions, n)
        scores = self.inner.srp(frames, texts, positive_word, negative_word, k, inversion=inversion, **given)
        return scores.view(batch, n).mean(1)


def _image_features(model, pixels: torch.Tensor) -> torch.Tensor:
    """Projected image embeddings of a transformers `CLIPVisionModelWithProjection` or `CLIPModel` (transformers 5's
    `get_image_features` returns an output object, 4.x a tensor)."""
    if hasattr(model, "get_image_features"):
        output = model.get_image_features(pixel_values=pixels)
        return output if isinstance(output, torch.Tensor) else output.pooler_output
    output = model(pixel_values=pixels)
    return output.image_embeds if hasattr(output, "image_embeds") else output.pooler_output


class TemporalConsistencyReward(Reward):
    """`mean_i cos(e(frame_i), e(frame_{i+1}))` over the frames `0, stride, 2 stride, ...`: how alike consecutive
    frames look to an image tower. Image-only (plain Direct-Align), in [-1, 1]; frozen, in eval mode.

    Args:
        vision_model: a transformers `CLIPVisionModelWithProjection` or `CLIPModel` (its image tower is used).
        stride (`int`, *optional*, defaults to `4`): compare frames `stride` apart; a video needs at least two
            such frames (`F > stride`).
        name (`str`, *optional*, defaults to `"temporal-consistency"`): name in logged metrics.
    """

    text_conditioned = False
    hinge_threshold = 1.0
    takes_videos = True

    def __init__(self, vision_model, stride: int = 4, name: str = "temporal-consistency"):
        super().__init__()
        if stride < 1:
            raise ValueError(f"TemporalConsistencyReward: stride must be at least 1, got {stride}")
        self.model = vision_model.eval().requires_grad_(False)
        config = vision_model.config
        self.image_size = getattr(config, "vision_config", config).image_size
        self.stride = stride
        self.name = name

    def embed_frames(self, frames: torch.Tensor) -> torch.Tensor:
        """Unit feature vectors of frames `[N, 3, H, W]` in [0, 1]."""
        dtype = next(self.model.parameters()).dtype
        pixels = clip_preprocess(frames, self.image_size).to(dtype)
        return F.normalize(_image_features(self.model, pixels).float(), dim=-1)

    def score(self, images: torch.Tensor, prompts: Sequence[str] = ()) -> torch.Tensor:
        frames = strided_frames(images, self.stride)
        batch, n = frames.shape[:2]
        if n < 2:
            raise ValueError(
                f"TemporalConsistencyReward: {images.shape[1] if images.ndim == 5 else 1} frames with stride "
                f"{self.stride} leave {n} frame to compare; give videos of more than {self.stride} frames or a "
                "smaller stride"
            )
        features = self.embed_frames(frames.flatten(0, 1)).view(batch, n, -1)
        return (features[:, 1:] * features[:, :-1]).sum(-1).mean(1)


def for_videos(rewards, stride: int) -> list:
    """`rewards` for a video family: each image reward wrapped in a [`FrameReward`] of `stride`; a reward that scores
    videos itself (`takes_videos`) as it is, with its frame stride set to `stride` where it has one."""
    wrapped = []
    for reward in rewards:
        if getattr(reward, "takes_videos", False):
            if hasattr(reward, "stride"):
                reward.stride = stride
            wrapped.append(reward)
        else:
            wrapped.append(FrameReward(reward, stride))
    return wrapped
