"""Reward models by name: `load_reward("hpsv2.1")`, `reward_funcs="pickscore"`.

Each name knows its checkpoint on the Hub and how to build the reward from it. A local copy is
given as `"name:path"` (or `load_reward(name, path=...)`); nothing is downloaded then.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..control_maps import DEFAULT_DEPTH_MODEL
from .aesthetic import AESTHETIC_HINGE_THRESHOLD
from .base import DEFAULT_HINGE_THRESHOLD, Reward
from .hpsv3 import HPSV3_BASE, HPSV3_CHECKPOINT, HPSV3_FILENAME, HPSV3_HINGE_THRESHOLD
from .videoalign import VIDEOALIGN_BASE, VIDEOALIGN_CHECKPOINT, VIDEOALIGN_HINGE_THRESHOLD


@dataclass(frozen=True)
class RewardSpec:
    """What a registered reward name loads. `filename` is `None` when the repo is a transformers CLIP model."""

    name: str
    family: (
        str  # "clip" (logit-scaled cosine), "hps" (raw cosine, open_clip checkpoint), "aesthetic", "hpsv3", "depth",
        # "temporal", "videoalign"
    )
    checkpoint: str
    filename: str | None
    tokenizer: str | None
    license: str
    text_conditioned: bool
    output_scale: str
    parameters: str
    description: str
    #: `tau` of the hinge `relu(tau - R) / 2` on this reward's scale (overridden by `SRPOConfig.hinge_threshold`).
    hinge_threshold: float = DEFAULT_HINGE_THRESHOLD
    #: The pipeline's conditioning the reward compares with (`Reward.conditions`): empty for preference rewards.
    conditions: tuple[str, ...] = ()
    #: Scores videos (video families only).
    video: bool = False


_VIT_H = "laion/CLIP-ViT-H-14-laion2B-s32B-b79K"
_VIT_L = "openai/clip-vit-large-patch14"

REWARDS: dict[str, RewardSpec] = {
    spec.name: spec
    for spec in [
        RewardSpec(
            name="hpsv2.1",
            family="hps",
            checkpoint="xswu/HPSv2",
            filename="HPS_v2.1_compressed.pt",
            tokenizer=_VIT_H,
            license="apache-2.0",
            text_conditioned=True,
            output_scale="raw cosine, about 0.2-0.35",
            parameters="986 M (ViT-H-14)",
            description="Human Preference Score v2.1 (the SRPO recipe's reward)",
        ),
        RewardSpec(
            name="hpsv2",
            family="hps",
            checkpoint="xswu/HPSv2",
            filename="HPS_v2_compressed.pt",
            tokenizer=_VIT_H,
            license="apache-2.0",
            text_conditioned=True,
            output_scale="raw cosine, about 0.2-0.35",
            parameters="986 M (ViT-H-14)",
            description="Human Preference Score v2",
        ),
        RewardSpec(
            name="pickscore",
            family="clip",
            checkpoint="yuvalkirstain/PickScore_v1",
            filename=None,
            tokenizer=_VIT_H,
            license="not confirmed here: check the model page",
            text_conditioned=True,
            output_scale="logit_scale.exp() / 20 x cosine, about 1.0-1.2",
            parameters="986 M (ViT-H-14)",
            description="PickScore v1 (Pick-a-Pic preferences)",
        ),
        RewardSpec(
            name="clip-vit-h-14",
            family="clip",
            checkpoint=_VIT_H,
            filename=None,
            tokenizer=_VIT_H,
            license="mit",
            text_conditioned=True,
            output_scale="logit_scale.exp() / 20 x cosine, about 1.2-1.8",
            parameters="986 M (ViT-H-14)",
            description="LAION CLIP ViT-H/14 text-image similarity",
        ),
        RewardSpec(
            name="clip-vit-l-14",
            family="clip",
            checkpoint=_VIT_L,
            filename=None,
            tokenizer=_VIT_L,
            license="mit",
            text_conditioned=True,
            output_scale="logit_scale.exp() / 20 x cosine, about 1.2-1.8",
            parameters="428 M (ViT-L/14)",
            description="OpenAI CLIP ViT-L/14 text-image similarity",
        ),
        RewardSpec(
            name="laion-aesthetic",
            family="aesthetic",
            checkpoint="trl-lib/ddpo-aesthetic-predictor",
            filename="aesthetic-model.pth",
            tokenizer=None,
            license="apache-2.0",
            text_conditioned=False,
            output_scale="aesthetic score, about 1-10",
            parameters="304 M (ViT-L/14 image tower) + 0.9 M head",
            description="LAION aesthetic predictor v2 (image-only: plain Direct-Align, no SRP)",
            hinge_threshold=AESTHETIC_HINGE_THRESHOLD,
        ),
        RewardSpec(
            name="hpsv3",
            family="hpsv3",
            checkpoint=HPSV3_CHECKPOINT,
            filename=HPSV3_FILENAME,
            tokenizer=HPSV3_BASE,  # config and tokenizer: the checkpoint holds only tensors
            license="not confirmed here: check the model page (code MIT; base Qwen2-VL-7B-Instruct Apache-2.0)",
            text_conditioned=True,
            output_scale="preference score, about 8-11 for recent models' images (FLUX.1-dev 10.4 on average)",
            parameters="7.74 B loaded (fine-tuned Qwen2-VL-7B-Instruct without its LM head) + 3.7 M head",
            description="Human Preference Score v3 (a Qwen2-VL-7B reward with an MLP head)",
            hinge_threshold=HPSV3_HINGE_THRESHOLD,
        ),
        RewardSpec(
            name="depth-consistency",
            family="depth",
            checkpoint=DEFAULT_DEPTH_MODEL,
            filename=None,
            tokenizer=None,
            license="apache-2.0 (Depth Anything V2 Small)",
            text_conditioned=False,
            output_scale="-(1 - r^2) of the scale- and shift-aligned depth maps, in [-1, 0]",
            parameters="25 M (Depth Anything V2 Small)",
            description="the generated image's depth against the control depth map (FLUX.1 Depth, depth ControlNets)",
            hinge_threshold=1.0,
            conditions=("control_images",),
        ),
        RewardSpec(
            name="temporal-consistency",
            family="temporal",
            checkpoint=_VIT_L,
            filename=None,
            tokenizer=None,
            license="mit",
            text_conditioned=False,
            output_scale="cosine of consecutive (strided) frames' image features, in [-1, 1]",
            parameters="304 M (ViT-L/14 image tower)",
            description="flicker between video frames (video families; image-only: plain Direct-Align)",
            hinge_threshold=1.0,
            video=True,
        ),
        RewardSpec(
            name="videoalign",
            family="videoalign",
            checkpoint=VIDEOALIGN_CHECKPOINT,
            filename="checkpoint-11352/model.pth",  # with model_config.json and checkpoint-11352/tokenizer/
            tokenizer=VIDEOALIGN_BASE,  # the base's config.json: the checkpoint holds tensors, settings, tokenizer
            license="apache-2.0 (model card; code MIT; base Qwen2-VL-2B-Instruct Apache-2.0)",
            text_conditioned=True,
            output_scale="sum of the standardised VQ, MQ and TA (VideoAlign's Overall), each about -3 to 3",
            parameters="2.2 B (fine-tuned Qwen2-VL-2B-Instruct, LoRA merged, without its LM head)",
            description="VideoAlign's VideoReward: visual quality, motion quality, text alignment (video families)",
            hinge_threshold=VIDEOALIGN_HINGE_THRESHOLD,
            video=True,
        ),
    ]
}

#: Names that load a reward shipped with the package (nothing to download): the demo's tiny CLIP reward, the
#: colour-word stand-in that needs no model, and the model-free consistency rewards (`rewards.consistency`).
BUILT_IN_REWARDS = ("shapes-clip", "color", "edge-consistency", "unmasked-fidelity")


def reward_names() -> list[str]:
    """Every name `load_reward` (and so `reward_funcs`) takes: the registered checkpoints, then the built-in ones."""
    return [*REWARDS, *BUILT_IN_REWARDS]


def _download(spec: RewardSpec) -> str:
    from huggingface_hub import hf_hub_download

    try:
        return hf_hub_download(spec.checkpoint, spec.filename)
    except Exception as error:  # offline, gated, or missing: say how to give a local copy instead
        raise OSError(
            f"reward {spec.name!r}: could not download {spec.filename} from {spec.checkpoint} ({error}); "
            f"download it yourself and pass its path, e.g. reward_funcs='{spec.name}:/path/to/{spec.filename}'"
        ) from error


def _has_tokenizer(folder: str) -> bool:
    return os.path.isfile(os.path.join(folder, "vocab.json")) or os.path.isfile(os.path.join(folder, "tokenizer.json"))


def _load_clip(spec: RewardSpec, path: str | None, dtype, tokenizer=None, **kwargs) -> Reward:
    from .clip import CLIPReward

    source = path or spec.checkpoint
    if tokenizer is None:  # a local copy's own tokenizer, else the spec's (PickScore uses ViT-H-14's)
        tokenizer = path if path is not None and _has_tokenizer(path) else spec.tokenizer
    return CLIPReward(source, tokenizer=tokenizer, scale="logit", name=spec.name, dtype=dtype, **kwargs)


def _load_hps(spec: RewardSpec, path: str | None, dtype, tokenizer=None, **conversion_kwargs) -> Reward:
    from transformers import CLIPTokenizer

    from .clip import CLIPReward
    from .hps import hps_clip_model

    if path is not None and os.path.isdir(path):  # written by `srpo-trl convert-hps`
        return CLIPReward(path, tokenizer=tokenizer, scale=1.0, name=spec.name, dtype=dtype or torch.float32)
    checkpoint = path or _download(spec)
    if tokenizer is None and path is not None and _has_tokenizer(os.path.dirname(os.path.abspath(path))):
        tokenizer = os.path.dirname(os.path.abspath(path))  # a tokenizer saved beside the checkpoint
    if tokenizer is None or isinstance(tokenizer, str):
        tokenizer = CLIPTokenizer.from_pretrained(tokenizer or spec.tokenizer)
    ids = {"bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id}
    model = hps_clip_model(checkpoint, **{**ids, **conversion_kwargs})
    return CLIPReward(model, tokenizer=tokenizer, scale=1.0, name=spec.name, dtype=dtype or torch.float32)


def _aesthetic_head_in(folder: str, spec: RewardSpec) -> str:
    if os.path.isfile(os.path.join(folder, spec.filename)):
        return os.path.join(folder, spec.filename)
    candidates = [f for f in sorted(os.listdir(folder)) if f.endswith((".pth", ".pt"))]
    if len(candidates) != 1:
        raise ValueError(
            f"reward {spec.name!r}: folder {folder!r} must hold the predictor head as {spec.filename} (or as the "
            f"only .pth/.pt file) beside a transformers CLIP ViT-L/14; found {candidates or 'no head file'}"
        )
    return os.path.join(folder, candidates[0])


def _load_aesthetic(spec: RewardSpec, path: str | None, dtype, clip: str | None = None) -> Reward:
    from .aesthetic import AESTHETIC_CLIP, AestheticReward

    if path is not None and os.path.isdir(path):  # a local copy of both parts: CLIP folder + head file
        clip, head = clip or path, _aesthetic_head_in(path, spec)
    else:
        head = path or _download(spec)
    return AestheticReward(vision_model=clip or AESTHETIC_CLIP, mlp=head, name=spec.name, dtype=dtype)


def _load_hpsv3(spec: RewardSpec, path: str | None, dtype, base: str | None = None, **kwargs) -> Reward:
    from .hpsv3 import HPSv3Reward

    if path is None:
        checkpoint = _download(spec)
    elif os.path.isdir(path):  # a folder holding the base model's config + tokenizer and the checkpoint
        checkpoint = os.path.join(path, spec.filename)
        if not os.path.isfile(checkpoint):
            raise FileNotFoundError(
                f"reward {spec.name!r}: folder {path!r} has no {spec.filename}; it must hold {spec.filename} beside "
                f"{spec.tokenizer}'s config.json and tokenizer files"
            )
        base = base or path
    else:
        checkpoint = path
        beside = os.path.dirname(os.path.abspath(path))
        if base is None and os.path.isfile(os.path.join(beside, "config.json")) and _has_tokenizer(beside):
            base = beside
    return HPSv3Reward.from_checkpoint(checkpoint, base=base or spec.tokenizer, dtype=dtype, name=spec.name, **kwargs)


def _load_videoalign(spec: RewardSpec, path: str | None, dtype, base: str | None = None, **kwargs) -> Reward:
    from .videoalign import VideoAlignReward

    if path is None:
        from huggingface_hub import snapshot_download

        patterns = ["model_config.json", "checkpoint-*/model.pth", "checkpoint-*/tokenizer/*"]
        try:
            path = snapshot_download(spec.checkpoint, allow_patterns=patterns)
        except Exception as error:  # offline, gated, or missing: say how to give a local copy instead
            raise OSError(
                f"reward {spec.name!r}: could not download {spec.checkpoint} ({error}); download it yourself and pass "
                f"the folder holding model_config.json, e.g. reward_funcs='{spec.name}:/path/to/VideoReward'"
            ) from error
    elif not os.path.isdir(path):
        raise ValueError(
            f"reward {spec.name!r}: {path!r} is not a folder; give the one holding model_config.json and "
            "checkpoint-<step>/ (the published repo's layout)"
        )
    return VideoAlignReward.from_pretrained(path, base=base or spec.tokenizer, dtype=dtype, name=spec.name, **kwargs)


def _load_depth(spec: RewardSpec, path: str | None, dtype) -> Reward:
    from .consistency import DepthConsistencyReward

    return DepthConsistencyReward(path or spec.checkpoint, dtype=dtype)


def _load_temporal(spec: RewardSpec, path: str | None, dtype) -> Reward:
    from transformers import CLIPVisionModelWithProjection

    from .video import TemporalConsistencyReward

    model = CLIPVisionModelWithProjection.from_pretrained(path or spec.checkpoint, dtype=dtype or torch.float32)
    return TemporalConsistencyReward(model, name=spec.name)


_LOADERS: dict[str, Callable[..., Reward]] = {
    "depth": _load_depth,
    "temporal": _load_temporal,
    "clip": _load_clip,
    "hps": _load_hps,
    "aesthetic": _load_aesthetic,
    "hpsv3": _load_hpsv3,
    "videoalign": _load_videoalign,
}


def split_name_and_path(text: str) -> tuple[str | None, str | None]:
    """`"hpsv2.1:/ckpt.pt"` -> `("hpsv2.1", "/ckpt.pt")`; `"hpsv2.1"` -> `("hpsv2.1", None)`; else `(None, None)`."""
    if text in REWARDS:
        return text, None
    name, sep, path = text.partition(":")
    if sep and name in REWARDS and path:
        return name, path
    return None, None


def load_reward(name_or_path: str, path: str | None = None, *, dtype: torch.dtype | None = None, **kwargs) -> Reward:
    """A reward from a registered name, `"name:local_path"`, or a local transformers CLIP folder.

    Names: `hpsv2.1`, `hpsv2`, `pickscore`, `clip-vit-h-14`, `clip-vit-l-14`, `laion-aesthetic`, `hpsv3`,
    `depth-consistency`, `temporal-consistency`, `videoalign`, `shapes-clip`, the tiny CLIP reward shipped in the
    package (`srpo_trl.pretrained`), `color`,
    a colour-word stand-in, and the consistency rewards `edge-consistency` and `unmasked-fidelity` (see `REWARDS` and
    the rewards page of the docs). Without a path the checkpoint is
    downloaded from its usual hub id. The local path is, per family: HPS, the `.pt`/`.safetensors` checkpoint
    or a folder written by `srpo-trl convert-hps` (a checkpoint file uses a tokenizer saved beside it, else
    the ViT-H-14 one from the Hub); CLIP and PickScore, a transformers CLIP folder; the aesthetic
    predictor, a folder holding a transformers CLIP ViT-L/14 and the head's weights file, or the head's
    file alone (the CLIP tower then comes from `clip=`, a folder or hub id); HPSv3, a folder holding
    `HPSv3.safetensors` beside Qwen2-VL-7B-Instruct's `config.json` and tokenizer files, or the
    `HPSv3.safetensors` file alone (config and tokenizer then from a folder beside it that has them, else
    from `base=`, a folder or hub id, by default `Qwen/Qwen2-VL-7B-Instruct`); HPSv3's instruction comes from
    `hpsv3_instruction.txt` beside the checkpoint or in `base`, or from `instruction=` (not shipped: see the
    rewards page of the docs); VideoAlign, the folder holding `model_config.json` and `checkpoint-<step>/` (config
    from `base=`, by default `Qwen/Qwen2-VL-2B-Instruct`; the instruction from `videoalign_instruction.txt` there or
    `instruction=`); depth consistency, a transformers depth-estimation folder with its `preprocessor_config.json`.

    Keyword arguments go to the family's loader: `tokenizer` (CLIP, HPS), `clip` (aesthetic), `base`,
    `instruction`, `min_pixels` and `max_pixels` (HPSv3; VideoAlign also `weights`, `video_fps`, `fps`,
    `num_frames`), and, for HPS checkpoints, the conversion's `vision_heads` /
    `text_heads`. `dtype` is the reward model's dtype (HPSv3: bfloat16 when not given).
    """
    if not isinstance(name_or_path, str):
        raise TypeError(f"load_reward: expected a name or path string, got {type(name_or_path).__name__}")
    if name_or_path == "color":  # the demo's stand-in reward (no model), so that `srpo-trl eval` can score the demo
        from .color import ColorWordReward

        return ColorWordReward()
    if name_or_path == "shapes-clip":  # the tiny CLIP reward shipped in the package, beside the demo's model
        from ..pretrained import shapes_reward

        return shapes_reward(dtype=dtype, **kwargs)
    if name_or_path in ("edge-consistency", "unmasked-fidelity"):  # compare with the condition; no model
        from .consistency import EdgeConsistencyReward, UnmaskedFidelityReward

        return {"edge-consistency": EdgeConsistencyReward, "unmasked-fidelity": UnmaskedFidelityReward}[name_or_path]()
    name, embedded_path = split_name_and_path(name_or_path)
    path = path or embedded_path
    if name is not None:
        if path is not None and not os.path.exists(path):
            raise FileNotFoundError(f"reward {name!r}: local path {path!r} does not exist")
        spec = REWARDS[name]
        reward = _LOADERS[spec.family](spec, path, dtype, **kwargs)
        reward.hinge_threshold = spec.hinge_threshold
        return reward
    if os.path.isdir(name_or_path):
        from .clip import CLIPReward

        return CLIPReward(name_or_path, dtype=dtype, **kwargs)
    raise ValueError(
        f"reward_funcs: {name_or_path!r} is neither a registered reward name nor an existing folder holding a "
        f"transformers CLIP model; names: {reward_names()}, optionally with a local copy as 'name:path'"
    )
