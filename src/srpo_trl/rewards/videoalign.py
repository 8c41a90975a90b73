"""VideoAlign's VideoReward (Kling team, arXiv 2501.13918): three video scores read from Qwen2-VL-2B-Instruct.

VideoReward fine-tunes Qwen2-VL-2B-Instruct (LoRA r 64 on the decoder's linear layers, the vision tower and merger
trained in full) and reads one linear head `rm_head` (hidden -> 1, no bias) at three special tokens its instruction
ends sections with: `<|VQ_reward|>` visual quality, `<|MQ_reward|>` motion quality, `<|TA_reward|>` text alignment.
The published loader standardises each with `inference_config`'s mean and std from `model_config.json` and sums
them as "Overall". The prompt sits only in the text-alignment section, after the VQ and MQ tokens: the decoder is
causal, so VQ and MQ never see the prompt (they score the video alone), and only TA reads it.

Everything is transformers' own: the checkpoint's tensors (a peft model's state dict, LoRA unmerged) go into a stock
`Qwen2VLModel` with the LoRA merged in float32; no VideoAlign code and no remote code.
"""

from __future__ import annotations

import ast
import glob
import json
import os
from collections.abc import Mapping, Sequence

import torch

from .base import Reward, with_control_word
from .qwen_vl_preprocess import qwen_vl_video_frame_indices, qwen_vl_video_preprocess

VIDEOALIGN_CHECKPOINT = "KlingTeam/VideoReward"  # first published as KwaiVGI/VideoReward (the Hub redirects)
VIDEOALIGN_BASE = "Qwen/Qwen2-VL-2B-Instruct"
DIMENSIONS = ("VQ", "MQ", "TA")
REWARD_TOKENS = {d: f"<|{d}_reward|>" for d in DIMENSIONS}
PROMPT_FIELD = "{text_prompt}"
#: The file, beside `model_config.json`, holding the instruction VideoReward reads (see [`load_instruction`]).
VIDEOALIGN_INSTRUCTION_FILE = "videoalign_instruction.txt"
#: The published template's name in VideoAlign's `prompt_template.py` (its `prompt_template_type` "detailed_special").
TEMPLATE_NAME = "DETAILED_PROMPT_WITH_SPECIAL_TOKEN"
#: qwen-vl-utils' lower bound on a video frame's area (VideoAlign gives only the upper one, `max_frame_pixels`).
VIDEO_MIN_PIXELS = 128 * 28 * 28
#: Wan 2.1 and 2.2 A14B decode 16 frames per second (`SRPOConfig.frame_rate`'s default); TI2V-5B 24.
DEFAULT_VIDEO_FPS = 16.0
#: Three standardised scores, each rarely beyond +-3, sum to at most about 9, and SRP adds `k` times TA: 10 lies
#: above every ordinary value in both branches, so the hinge trains on each sample (see the rewards page).
VIDEOALIGN_HINGE_THRESHOLD = 10.0


def check_instruction(instruction: str) -> str:
    """`instruction` if VideoReward can read it: `{text_prompt}` once and each of the three reward tokens once."""
    counts = {t: instruction.count(t) for t in (PROMPT_FIELD, *REWARD_TOKENS.values())}
    if set(counts.values()) != {1}:
        raise ValueError(
            f"VideoAlign instruction: it must hold {PROMPT_FIELD} (where the prompt goes) and each reward token once; "
            f"found {counts}"
        )
    return instruction


def load_instruction(instruction: str | None, folders: Sequence[str] = ()) -> str:
    """The instruction VideoReward reads: `instruction` (the text, a file holding it, or VideoAlign's own
    `prompt_template.py`, from which the `DETAILED_PROMPT_WITH_SPECIAL_TOKEN` string is read without running the file),
    else `videoalign_instruction.txt` in one of `folders`.

    VideoReward was trained on one fixed instruction (criteria per dimension, each section ending in its reward token,
    the prompt in the last one as `{text_prompt}`); every reward token's state depends on the text before it, so it
    must be the published one, character for character. It is VideoAlign's authors' text (github.com/KwaiVGI/
    VideoAlign, MIT licence, `prompt_template.py`), so srpo-trl does not ship it: point `instruction=` at that file,
    or save the string's value (it starts with a newline) as `videoalign_instruction.txt`.
    """
    if instruction is None:
        found = [os.path.join(f, VIDEOALIGN_INSTRUCTION_FILE) for f in folders]
        found = [path for path in found if os.path.isfile(path)]
        if not found:
            raise ValueError(
                f"VideoAlign needs the instruction it was trained to read: put it in {VIDEOALIGN_INSTRUCTION_FILE} "
                f"beside model_config.json, or pass instruction= (the text, a file, or VideoAlign's "
                f"prompt_template.py). See the rewards page of the docs, 'VideoAlign'"
            )
        instruction = found[0]
    if os.path.isfile(instruction):
        with open(instruction, encoding="utf-8") as f:
            text = f.read()
        if instruction.endswith(".py"):  # read the string literal from the syntax tree: nothing in the file runs
            values = [
                node.value.value
                for node in ast.parse(text).body
                if isinstance(node, ast.Assign)
                and any(isinstance(t, ast.Name) and t.id == TEMPLATE_NAME for t in node.targets)
                and isinstance(node.value, ast.Constant)
            ]
            if len(values) != 1:
                raise ValueError(f"VideoAlign instruction: {instruction!r} has no string {TEMPLATE_NAME} = '''...'''")
            text = values[0]
        instruction = text
    return check_instruction(instruction)


def videoalign_chat(prompt: str, video_tokens: int, instruction: str) -> str:
    """The conversation VideoReward reads: Qwen2-VL-Instruct's chat layout for one user turn holding the video and
    then the instruction with the prompt in (the default system turn first, the assistant's turn opened), the video
    placeholder already repeated once per video token, as the processor expands it."""
    return (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\n<|vision_start|>" + "<|video_pad|>" * video_tokens + "<|vision_end|>"
        f"{instruction.replace(PROMPT_FIELD, prompt)}<|im_end|>\n<|im_start|>assistant\n"
    )


def read_model_config(folder: str) -> dict:
    """`model_config.json` of a VideoAlign checkpoint, checked for what this loader reproduces."""
    path = os.path.join(folder, "model_config.json")
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"VideoAlign: {folder!r} has no model_config.json (the published repo has it at its root)"
        )
    with open(path, encoding="utf-8") as f:
        config = json.load(f)
    data, model = config.get("data_config", {}), config.get("model_config", {})
    problems = []
    if not (model.get("use_special_tokens") and model.get("reward_token") == "special"):
        problems.append("the score must be read at the special tokens (use_special_tokens, reward_token 'special')")
    if list(data.get("eval_dim") or []) != list(DIMENSIONS):
        problems.append(f"eval_dim must be {list(DIMENSIONS)}, got {data.get('eval_dim')}")
    if data.get("sample_type", "uniform") != "uniform":
        problems.append(f"sample_type {data.get('sample_type')!r}: only 'uniform' frame sampling is reproduced")
    if problems:
        raise ValueError(f"VideoAlign {path}: " + "; ".join(problems))
    return config


def _latest_checkpoint(folder: str) -> str:
    """`checkpoint-<step>/model.pth` with the highest step, as VideoAlign's loader picks it."""
    steps = sorted(glob.glob(os.path.join(folder, "checkpoint-*")), key=lambda p: int(p.rsplit("-", 1)[-1]))
    if not steps or not os.path.isfile(os.path.join(steps[-1], "model.pth")):
        raise FileNotFoundError(
            f"VideoAlign: {folder!r} has no checkpoint-<step>/model.pth (the published full state dict; the "
            "adapter_model.safetensors + non_lora_state_dict.pth form is not read)"
        )
    return os.path.join(steps[-1], "model.pth")


def merge_videoalign_state_dict(state: Mapping[str, torch.Tensor], lora_scale: float) -> tuple[dict, torch.Tensor]:
    """A VideoAlign state dict (a peft model's: `base_model.model.` before transformers 4.x names, LoRA layers as
    `X.base_layer.*` + `X.lora_A.default.weight` / `X.lora_B.default.weight`) -> `(Qwen2VLModel state dict, rm_head
    weight)`. Each LoRA is merged, `W + lora_scale * B @ A` in float32 then cast back; `lm_head` is dropped (the score
    never reads logits); `visual.*` stays, `model.*` becomes `language_model.*` (transformers 5's layout)."""
    prefix = "base_model.model."
    plain = {k[len(prefix) :] if k.startswith(prefix) else k: v for k, v in state.items()}
    merged, head = {}, None
    for key, value in plain.items():
        if ".lora_" in key or key.startswith("lm_head."):
            continue
        if key == "rm_head.weight":
            head = value
            continue
        if ".base_layer." in key:
            layer, _, leaf = key.partition(".base_layer.")
            a, b = plain.get(f"{layer}.lora_A.default.weight"), plain.get(f"{layer}.lora_B.default.weight")
            if leaf == "weight" and a is not None and b is not None:
                value = (value.float() + lora_scale * (b.float() @ a.float())).to(value.dtype)
            key = f"{layer}.{leaf}"
        if key.startswith("model.language_model.") or key.startswith("model.visual."):
            key = key[len("model.") :]  # a checkpoint saved under transformers 5's names
        elif key.startswith("model."):
            key = "language_model." + key[len("model.") :]
        elif not key.startswith("visual."):
            raise ValueError(f"VideoAlign checkpoint: unexpected tensor {key!r}")
        merged[key] = value
    if head is None:
        raise ValueError("VideoAlign checkpoint: no rm_head.weight")
    return merged, head


class VideoAlignReward(Reward):
    """VideoReward's scores of videos `[B, F, 3, H, W]` in [0, 1] for their prompts: a weighted sum of the
    standardised VQ, MQ and TA (by default their sum, VideoAlign's "Overall").

    SRP: TA reads the prompt and takes SRP's control words, `(1 + k) TA(pos) - TA(neg)`; VQ and MQ never see the
    prompt (their tokens come before it), so, as for any image-only reward, they train as plain Direct-Align:
    `+score` in the denoise branch and `-score` in the inversion branch. Weights without TA make the reward image-only.

    Args:
        model (`Qwen2VLModel`): the fine-tuned Qwen2-VL with the LoRA merged (no LM head).
        head (`torch.Tensor`): `rm_head.weight`, `[1, hidden]` (one head read at each token) or `[3, hidden]`.
        tokenizer: the checkpoint's tokenizer, holding the three reward tokens inside the model's embedding table.
        instruction (`str`): the published instruction, `{text_prompt}` where the prompt goes ([`load_instruction`]).
        weights (`str` or mapping, *optional*, defaults to `"Overall"`): `"Overall"` (1, 1, 1), one of `"VQ"`, `"MQ"`,
            `"TA"`, or `{"VQ": w, "MQ": w, "TA": w}` (missing ones 0).
        mean / std (`Sequence[float]`, *optional*): per dimension, from `inference_config`; scores are `(s - mean)
            / std`. Without them the raw head outputs are used.
        fps / num_frames: the published frame sampling (2 frames per second of video; or a fixed count).
        video_fps (`float`, *optional*, defaults to `16`): frames per second of the videos given (Wan's 16).
        min_pixels / max_pixels (`int`): frame area range; VideoAlign's `max_frame_pixels` is 200704 (448 x 448).
    """

    takes_videos = True
    hinge_threshold = VIDEOALIGN_HINGE_THRESHOLD

    def __init__(
        self,
        model,
        head: torch.Tensor,
        tokenizer,
        instruction: str,
        *,
        weights: str | Mapping[str, float] = "Overall",
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        fps: float | None = 2.0,
        num_frames: int | None = None,
        video_fps: float = DEFAULT_VIDEO_FPS,
        min_pixels: int = VIDEO_MIN_PIXELS,
        max_pixels: int = 200704,
        name: str = "videoalign",
    ):
        super().__init__()
        self.instruction = check_instruction(instruction)
        config = model.config
        if isinstance(weights, str):
            if weights != "Overall" and weights not in DIMENSIONS:
                raise ValueError(
                    f"VideoAlignReward: weights {weights!r}: give 'Overall', one of {DIMENSIONS} or a dict"
                )
            weights = {d: 1.0 for d in DIMENSIONS} if weights == "Overall" else {weights: 1.0}
        if set(weights) - set(DIMENSIONS):
            raise ValueError(f"VideoAlignReward: unknown dimensions {sorted(set(weights) - set(DIMENSIONS))}")
        self.register_buffer("weights", torch.tensor([float(weights.get(d, 0.0)) for d in DIMENSIONS]))
        self.register_buffer("mean", torch.tensor([0.0] * 3 if mean is None else [float(v) for v in mean]))
        self.register_buffer("std", torch.tensor([1.0] * 3 if std is None else [float(v) for v in std]))
        # A dimension reads the prompt only if its token comes after the prompt (the decoder is causal).
        field = self.instruction.index(PROMPT_FIELD)
        reads = [self.instruction.index(REWARD_TOKENS[d]) > field for d in DIMENSIONS]
        self.register_buffer("reads_prompt", torch.tensor(reads))
        self.text_conditioned = bool((self.weights[self.reads_prompt] != 0).any())
        vocab = tokenizer.get_vocab()
        self.token_ids = [vocab.get(REWARD_TOKENS[d], -1) for d in DIMENSIONS]
        rows = model.get_input_embeddings().num_embeddings
        if not 0 <= min(self.token_ids) <= max(self.token_ids) < rows:
            raise ValueError(
                f"VideoAlignReward: the tokenizer gives the reward tokens ids {self.token_ids}, not inside the model's "
                f"{rows}-row embedding table: use the checkpoint's tokenizer (checkpoint-<step>/tokenizer)"
            )
        if tokenizer.convert_tokens_to_ids("<|video_pad|>") != config.video_token_id:
            raise ValueError("VideoAlignReward: the tokenizer's <|video_pad|> is not the model config's video token")
        if head.ndim != 2 or head.shape[0] not in (1, 3) or head.shape[1] != config.text_config.hidden_size:
            raise ValueError(f"VideoAlignReward: rm_head.weight of shape {tuple(head.shape)} does not fit the model")
        self.model = model.eval().requires_grad_(False)
        self.register_buffer("head", head.detach().float())
        self.tokenizer, self.name = tokenizer, name
        self.fps, self.num_frames, self.video_fps = fps, num_frames, video_fps
        self.min_pixels, self.max_pixels = min_pixels, max_pixels
        vision = config.vision_config
        self.patch_size, self.merge_size = vision.patch_size, vision.spatial_merge_size
        self.temporal_patch_size = vision.temporal_patch_size

    @classmethod
    def from_pretrained(
        cls,
        path: str,
        base: str = VIDEOALIGN_BASE,
        *,
        instruction: str | None = None,
        dtype: torch.dtype | None = None,
        **kwargs,
    ) -> VideoAlignReward:
        """Build from a VideoAlign checkpoint folder (`model_config.json`, `checkpoint-<step>/model.pth`,
        `checkpoint-<step>/tokenizer/`) and the base model's `config.json` (`base`: a folder or hub id). The frame
        sampling, pixel budget, LoRA scale and standardisation come from `model_config.json`; `kwargs` override them.
        `dtype` defaults to bfloat16, VideoReward's training dtype."""
        from transformers import AutoTokenizer, Qwen2VLConfig, Qwen2VLModel

        settings = read_model_config(path)
        instruction = load_instruction(instruction, [path] + ([base] if os.path.isdir(base) else []))
        checkpoint = _latest_checkpoint(path)
        tokenizer_folder = os.path.join(os.path.dirname(checkpoint), "tokenizer")
        tokenizer = AutoTokenizer.from_pretrained(tokenizer_folder if os.path.isdir(tokenizer_folder) else base)
        if any(token not in tokenizer.get_vocab() for token in REWARD_TOKENS.values()):  # the base's: add them
            tokenizer.add_special_tokens({"additional_special_tokens": list(REWARD_TOKENS.values())})
        lora = settings.get("peft_lora_config", {})
        scale = 0.0
        if lora.get("lora_enable"):
            r = lora["lora_r"]
            scale = lora["lora_alpha"] / (r**0.5 if lora.get("use_rslora") else r)
        state = torch.load(checkpoint, map_location="cpu", weights_only=True, mmap=True)
        backbone, head = merge_videoalign_state_dict(state, scale)
        del state
        dtype = dtype or torch.bfloat16
        config = Qwen2VLConfig.from_pretrained(base)
        # The checkpoint's table: the tokenizer with the three reward tokens (VideoAlign resized it to that).
        config.text_config.vocab_size = backbone["language_model.embed_tokens.weight"].shape[0]
        with torch.device("meta"):
            expected = {k: tuple(v.shape) for k, v in Qwen2VLModel(config).state_dict().items()}
        shapes = {k: tuple(v.shape) for k, v in backbone.items()}
        if shapes != expected:
            wrong = sorted(k for k in set(expected) & set(shapes) if expected[k] != shapes[k])
            raise ValueError(
                f"VideoAlign checkpoint {checkpoint!r} does not fit Qwen2-VL with the config from {base!r}: missing "
                f"{sorted(set(expected) - set(shapes))[:5]}, unexpected {sorted(set(shapes) - set(expected))[:5]}, "
                f"shape differs for {wrong[:5]}"
            )
        model = Qwen2VLModel.from_pretrained(None, config=config, state_dict=backbone, dtype=dtype)
        data, norm = settings.get("data_config", {}), settings.get("inference_config")
        options = {
            "fps": None if data.get("num_frames") else data.get("fps", 2.0),
            "num_frames": data.get("num_frames") or None,
            "max_pixels": data.get("max_frame_pixels", 200704),
        }
        if norm:
            options["mean"] = [norm[f"{d}_mean"] for d in DIMENSIONS]
            options["std"] = [norm[f"{d}_std"] for d in DIMENSIONS]
        return cls(model, head, tokenizer, instruction, **{**options, **kwargs})

    def _inputs(self, videos: torch.Tensor, prompts: Sequence[str]) -> dict[str, torch.Tensor]:
        if videos.ndim != 5 or len(prompts) != videos.shape[0]:
            raise ValueError(
                f"VideoAlignReward: {len(prompts)} prompts for videos of shape {tuple(videos.shape)}; expected "
                "[B, F, 3, H, W] and B prompts"
            )
        index = qwen_vl_video_frame_indices(
            videos.shape[1],
            self.video_fps,
            fps=self.fps,
            num_frames=self.num_frames,
            frame_factor=self.temporal_patch_size,
        )
        pixel_values, grid_thw = qwen_vl_video_preprocess(
            videos[:, index],
            min_pixels=self.min_pixels,
            max_pixels=self.max_pixels,
            patch_size=self.patch_size,
            merge_size=self.merge_size,
            temporal_patch_size=self.temporal_patch_size,
        )
        tokens = int(grid_thw[0].prod()) // self.merge_size**2
        text = self.tokenizer(
            [videoalign_chat(p, tokens, self.instruction) for p in prompts],
            padding=True,
            padding_side="right",
            add_special_tokens=False,
            return_tensors="pt",
        )
        ids, mask = text["input_ids"].to(videos.device), text["attention_mask"].to(videos.device)
        # VideoAlign's forward called the decoder with position_ids unset, which under transformers 4.45 gave plain
        # positions 0, 1, 2, ... on all three M-RoPE axes (not Qwen2-VL's 3-D positions for video tokens): so these.
        positions = torch.arange(ids.shape[1], device=ids.device).expand(3, *ids.shape)
        dtype = self.model.get_input_embeddings().weight.dtype
        return {
            "input_ids": ids,
            "attention_mask": mask,
            "position_ids": positions,
            "pixel_values_videos": pixel_values.to(dtype),
            "video_grid_thw": grid_thw,
        }

    def dimension_scores(self, videos: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        """`[B, 3]`: VQ, MQ and TA of each video for its prompt, standardised (when mean and std are set)."""
        if isinstance(prompts, str):
            raise TypeError("VideoAlignReward: prompts must be a list of strings, one per video, not one string")
        inputs = self._inputs(videos, list(prompts))
        ids = inputs["input_ids"]
        found = torch.stack([ids == t for t in self.token_ids], dim=1)  # [B, 3, L]
        if not bool((found.sum(-1) == 1).all()):
            raise ValueError(
                "VideoAlignReward: every text needs each reward token exactly once; a prompt that contains one (or a "
                "tokenizer that splits them) breaks that"
            )
        hidden = self.model(**inputs).last_hidden_state
        at_tokens = hidden[torch.arange(len(ids), device=ids.device)[:, None], found.float().argmax(-1)]  # [B, 3, D]
        # The head and the standardisation run in float32 whatever dtype the reward was cast to.
        raw = at_tokens.float() @ self.head.float().T  # [B, 3, 1] (one head) or [B, 3, 3] (one output per dimension)
        raw = raw[..., 0] if self.head.shape[0] == 1 else raw.diagonal(dim1=1, dim2=2)
        return (raw - self.mean.float()) / self.std.float()

    def score(self, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        return self.dimension_scores(images, prompts) @ self.weights.float()

    def srp(self, images, prompts, positive_word, negative_word, k, *, inversion=False, conditions=None):
        """TA's SRP, `(1 + k) TA(pos) - TA(neg)`, plus VQ and MQ as plain Direct-Align (`-` in the inversion branch):
        they do not read the prompt, so the control words cannot change them and SRP would shrink them to `k` times."""
        if not self.text_conditioned:
            return super().srp(images, prompts, positive_word, negative_word, k, inversion=inversion)
        positive = self.dimension_scores(images, with_control_word(positive_word, prompts))
        negative = self.dimension_scores(images, with_control_word(negative_word, prompts))
        weights = self.weights.float()
        text_w, free_w = weights * self.reads_prompt, weights * ~self.reads_prompt
        k = torch.as_tensor(k, device=positive.device, dtype=positive.dtype)
        free = positive @ free_w
        return (1 + k) * (positive @ text_w) - negative @ text_w + (-free if inversion else free)
