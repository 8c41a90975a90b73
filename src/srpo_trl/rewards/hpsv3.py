"""HPSv3 (MizzenAI, arXiv 2508.03789): a human-preference score read from Qwen2-VL-7B-Instruct.

HPSv3 fine-tunes all of Qwen2-VL-7B-Instruct and adds a small MLP head. The model is shown the image
and an instruction holding the prompt, which ends with a special token `<|Reward|>` added to the
tokenizer; the head maps that token's last hidden state (after the final norm) to two numbers, the mean
and the uncertainty of a Gaussian preference score. The mean is the score: about 10-11 for FLUX.1-dev
and Kolors images on average, about 8 for SDXL, about 0 for SD 2 (the paper's benchmark).

Everything is transformers' own: the checkpoint's tensors go into a stock `Qwen2VLModel` (its key names
mapped from transformers 4.x's layout) and [`HPSv3Head`]; no `hpsv3` package and no remote code.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence

import torch
from torch import nn

from .base import Reward
from .qwen_vl_preprocess import qwen_vl_preprocess

HPSV3_CHECKPOINT = "MizzenAI/HPSv3"
HPSV3_FILENAME = "HPSv3.safetensors"
#: The base model whose config and tokenizer HPSv3 keeps (its checkpoint holds only tensors).
HPSV3_BASE = "Qwen/Qwen2-VL-7B-Instruct"
#: HPSv3 shows every image at 256 * 28 * 28 pixels (min = max): about 448 x 448, 256 image tokens.
HPSV3_PIXELS = 256 * 28 * 28
REWARD_TOKEN = "<|Reward|>"
#: SRP on HPSv3's scale stays below this for FLUX images (see the rewards page, "HPSv3"): the hinge trains on
#: every ordinary sample and stops only one whose control words alone move the score by several points.
HPSV3_HINGE_THRESHOLD = 10.0

#: The file, in a local copy, holding the instruction HPSv3 reads (see [`load_instruction`]).
HPSV3_INSTRUCTION_FILE = "hpsv3_instruction.txt"
PROMPT_FIELD = "{prompt}"


def check_instruction(instruction: str) -> str:
    """`instruction` if it can frame a prompt for HPSv3: one `{prompt}` field, and the reward token after it."""
    if instruction.count(PROMPT_FIELD) != 1 or instruction.count(REWARD_TOKEN) != 1:
        raise ValueError(
            f"HPSv3 instruction: it must hold {PROMPT_FIELD} once (where the prompt goes) and {REWARD_TOKEN} once; "
            f"found {instruction.count(PROMPT_FIELD)} and {instruction.count(REWARD_TOKEN)}"
        )
    if instruction.index(REWARD_TOKEN) < instruction.index(PROMPT_FIELD):
        raise ValueError(f"HPSv3 instruction: {REWARD_TOKEN} must come after {PROMPT_FIELD}")
    return instruction


def load_instruction(instruction: str | None, folders: Sequence[str] = ()) -> str:
    """The instruction HPSv3 reads, from `instruction` (the text, or a path to a file holding it) or from
    `hpsv3_instruction.txt` in one of `folders`.

    HPSv3 was fine-tuned on one fixed instruction (its rating criteria, then `Textual prompt - ` and the prompt,
    then a request for the rating that ends in `<|Reward|>`); the reward token's state depends on every token before
    it, so the text must be the published one, character for character. srpo-trl does not ship it (the text is
    HPSv3's, not ours): copy it from HPSv3's code (github.com/MizzenAI/HPSv3, MIT licence,
    `hpsv3/dataset/data_collator_qwen.py`: the instruction, with the prompt and the reward token as its
    `prompt_with_special_token` puts them), writing `{prompt}` where the prompt goes.
    """
    if instruction is None:
        for folder in folders:
            path = os.path.join(folder, HPSV3_INSTRUCTION_FILE)
            if os.path.isfile(path):
                instruction = path
                break
        else:
            raise ValueError(
                f"HPSv3 needs the instruction it was trained to read: put it in {HPSV3_INSTRUCTION_FILE} beside "
                f"the checkpoint, or pass instruction= (the text or a file). See the rewards page of the docs, "
                f"'HPSv3': it is HPSv3's published text (MIT), copied with {PROMPT_FIELD} where the prompt goes"
            )
    if os.path.isfile(instruction):
        with open(instruction, encoding="utf-8") as f:
            instruction = f.read()
    return check_instruction(instruction)


def hpsv3_user_text(prompt: str, instruction: str) -> str:
    """The text part of the user turn HPSv3 scores: the instruction with the prompt in, ending in the reward token."""
    return instruction.replace(PROMPT_FIELD, prompt)


def hpsv3_chat(prompt: str, image_tokens: int, instruction: str) -> str:
    """The whole conversation, as Qwen2-VL-Instruct's chat template lays out one user turn holding an image and
    then text (its default system turn first, the assistant's turn opened), with the image's placeholder
    already repeated once per image token, as the processor expands it."""
    return (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\n<|vision_start|>" + "<|image_pad|>" * image_tokens + "<|vision_end|>"
        f"{hpsv3_user_text(prompt, instruction)}<|im_end|>\n<|im_start|>assistant\n"
    )


class HPSv3Head(nn.Module):
    """HPSv3's head on the reward token's hidden state: `hidden -> 1024 -> 16 -> 2` (mean, uncertainty), ReLUs
    between. The checkpoint stores it as an `nn.Sequential` with a dropout at index 2, so its linear layers sit
    at `rm_head.0`, `rm_head.3` and `rm_head.5`; `layers` keeps those indices."""

    def __init__(self, hidden_size: int, width: int = 1024, bottleneck: int = 16, outputs: int = 2):
        super().__init__()
        self.layers = nn.Sequential(
            nn.Linear(hidden_size, width),
            nn.ReLU(),
            nn.Dropout(0.05),
            nn.Linear(width, bottleneck),
            nn.ReLU(),
            nn.Linear(bottleneck, outputs),
        )

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.layers(hidden)


def split_hpsv3_key(key: str) -> tuple[str, str | None]:
    """Where a checkpoint tensor goes: `("backbone", key in Qwen2VLModel)`, `("head", key in HPSv3Head)` or
    `("unused", None)`.

    HPSv3 was saved from `Qwen2VLForConditionalGeneration` under transformers 4.x (`visual.*`, `model.layers.*`,
    `model.embed_tokens.*`, `model.norm.*`, `lm_head.*`) plus its head (`rm_head.*`); transformers 5 keeps the
    tower under `visual` and the decoder under `language_model`. Keys already in the newer `model.visual.*` /
    `model.language_model.*` layout are accepted as well. `lm_head` is unused: the score never reads logits.
    """
    if key.startswith("rm_head."):
        return "head", "layers." + key[len("rm_head.") :]
    if key.startswith("lm_head."):
        return "unused", None
    for prefix, target in (
        ("model.visual.", "visual."),
        ("model.language_model.", "language_model."),
        ("visual.", "visual."),
        ("model.", "language_model."),
    ):
        if key.startswith(prefix):
            return "backbone", target + key[len(prefix) :]
    raise ValueError(f"HPSv3 checkpoint: unexpected tensor {key!r} (not a Qwen2-VL, lm_head or rm_head tensor)")


def _read_checkpoint_header(path: str) -> dict[str, tuple[int, ...]]:
    """Tensor names and shapes from a safetensors file's header, without reading the tensors."""
    with open(path, "rb") as f:
        size = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(size))
    return {k: tuple(v["shape"]) for k, v in header.items() if k != "__metadata__"}


def _check_head_shapes(shapes: dict[str, tuple[int, ...]], hidden_size: int) -> tuple[int, int, int]:
    expected = {f"layers.{i}.{p}" for i in (0, 3, 5) for p in ("weight", "bias")}
    if set(shapes) != expected:
        raise ValueError(
            f"HPSv3 checkpoint: expected the head's tensors rm_head.{{0,3,5}}.{{weight,bias}}, got "
            f"{sorted('rm_head.' + k[len('layers.') :] for k in shapes)}"
        )
    width, into = shapes["layers.0.weight"]
    bottleneck, outputs = shapes["layers.3.weight"][0], shapes["layers.5.weight"][0]
    if into != hidden_size or shapes["layers.3.weight"][1] != width or shapes["layers.5.weight"][1] != bottleneck:
        raise ValueError(f"HPSv3 checkpoint: head shapes {shapes} do not chain from hidden size {hidden_size}")
    if outputs < 1:
        raise ValueError("HPSv3 checkpoint: the head has no outputs")
    return width, bottleneck, outputs


class HPSv3Reward(Reward):
    """HPSv3's preference score (the head's mean) of each image for its prompt. Text-conditioned: SRP applies.

    Args:
        model (`Qwen2VLModel`): the fine-tuned Qwen2-VL (vision tower + decoder, no LM head).
        head (`HPSv3Head`): the reward head; it runs in float32 whatever the model's dtype.
        tokenizer: Qwen2-VL's tokenizer; the reward token is added if it is missing, and must then fall inside
            the model's embedding table (the checkpoint's table was grown by exactly that token).
        instruction (`str`): the text HPSv3 reads with each image, `{prompt}` where the prompt goes, ending in the
            reward token (see [`load_instruction`]).
        name (`str`, *optional*, defaults to `"hpsv3"`): name in logged metrics.
        min_pixels / max_pixels (`int`, *optional*): image area range of Qwen2-VL's resize; HPSv3's own setting
            is 256 * 28 * 28 for both (every image is resized to about 448 x 448).
    """

    text_conditioned = True
    hinge_threshold = HPSV3_HINGE_THRESHOLD

    def __init__(
        self,
        model,
        head: HPSv3Head,
        tokenizer,
        instruction: str,
        *,
        name: str = "hpsv3",
        min_pixels: int = HPSV3_PIXELS,
        max_pixels: int = HPSV3_PIXELS,
    ):
        super().__init__()
        self.instruction = check_instruction(instruction)
        config = model.config
        if REWARD_TOKEN not in tokenizer.get_vocab():
            from tokenizers import AddedToken

            tokenizer.add_tokens([AddedToken(REWARD_TOKEN, special=True)])
        self.reward_token_id = tokenizer.convert_tokens_to_ids(REWARD_TOKEN)
        vocab_rows = model.get_input_embeddings().num_embeddings
        if self.reward_token_id >= vocab_rows:
            raise ValueError(
                f"HPSv3Reward: the tokenizer gives {REWARD_TOKEN} id {self.reward_token_id}, outside the checkpoint's "
                f"{vocab_rows}-row embedding table: the tokenizer is not the one HPSv3 was trained with"
            )
        for token, expected in (
            ("<|image_pad|>", config.image_token_id),
            ("<|vision_start|>", config.vision_start_token_id),
        ):
            if tokenizer.convert_tokens_to_ids(token) != expected:
                raise ValueError(
                    f"HPSv3Reward: the tokenizer's {token} is id {tokenizer.convert_tokens_to_ids(token)}, the model "
                    f"config's {expected}: the tokenizer and config come from different models"
                )
        if tokenizer.pad_token_id is None:
            raise ValueError("HPSv3Reward: the tokenizer has no padding token (Qwen2-VL's is <|endoftext|>)")
        if head.layers[0].in_features != config.text_config.hidden_size:
            raise ValueError(
                f"HPSv3Reward: the head reads {head.layers[0].in_features}-d states, the model's are "
                f"{config.text_config.hidden_size}-d"
            )
        if min_pixels > max_pixels:
            raise ValueError(f"HPSv3Reward: min_pixels {min_pixels} is above max_pixels {max_pixels}")
        self.model = model.eval().requires_grad_(False)
        self.head = head.float().eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.name = name
        self.min_pixels, self.max_pixels = min_pixels, max_pixels
        vision = config.vision_config
        self.patch_size, self.merge_size = vision.patch_size, vision.spatial_merge_size
        self.temporal_patch_size = vision.temporal_patch_size

    @classmethod
    def from_checkpoint(
        cls,
        checkpoint: str,
        base: str = HPSV3_BASE,
        *,
        instruction: str | None = None,
        dtype: torch.dtype | None = None,
        **kwargs,
    ) -> HPSv3Reward:
        """Build from `HPSv3.safetensors` and the base model's config and tokenizer (`base`: a folder holding
        Qwen2-VL-7B-Instruct's `config.json` and tokenizer files, or its hub id). `instruction` is the text or a
        file; by default `hpsv3_instruction.txt` beside the checkpoint or in `base` ([`load_instruction`]).
        `dtype` defaults to bfloat16, the dtype HPSv3 was trained and published in. The instruction, and then
        everything else, are checked against the checkpoint's header before its tensors are read."""
        from safetensors import safe_open
        from transformers import AutoTokenizer, Qwen2VLConfig, Qwen2VLModel

        if not checkpoint.endswith(".safetensors") or not os.path.isfile(checkpoint):
            raise ValueError(
                f"HPSv3: {checkpoint!r} is not a .safetensors file (HPSv3 is published as {HPSV3_FILENAME})"
            )
        folders = [os.path.dirname(os.path.abspath(checkpoint))] + ([base] if os.path.isdir(base) else [])
        instruction = load_instruction(instruction, folders)
        dtype = dtype or torch.bfloat16
        config = Qwen2VLConfig.from_pretrained(base)
        tokenizer = AutoTokenizer.from_pretrained(base)
        shapes = _read_checkpoint_header(checkpoint)
        parts = {key: split_hpsv3_key(key) for key in shapes}
        head_shapes = {new: shapes[key] for key, (part, new) in parts.items() if part == "head"}
        head = HPSv3Head(
            config.text_config.hidden_size, *_check_head_shapes(head_shapes, config.text_config.hidden_size)
        )
        embed_key = next((k for k, (part, new) in parts.items() if new == "language_model.embed_tokens.weight"), None)
        if embed_key is None:
            raise ValueError(f"HPSv3 checkpoint {checkpoint!r} has no token embedding table")
        # The checkpoint's table is the base vocabulary grown by the reward token, not the base config's size.
        config.text_config.vocab_size = shapes[embed_key][0]
        with torch.device("meta"):
            expected = {k: tuple(v.shape) for k, v in Qwen2VLModel(config).state_dict().items()}
        backbone_shapes = {new: shapes[key] for key, (part, new) in parts.items() if part == "backbone"}
        if backbone_shapes != expected:
            missing, unexpected = (
                sorted(set(expected) - set(backbone_shapes)),
                sorted(set(backbone_shapes) - set(expected)),
            )
            wrong = sorted(k for k in set(expected) & set(backbone_shapes) if expected[k] != backbone_shapes[k])
            raise ValueError(
                f"HPSv3 checkpoint {checkpoint!r} does not fit Qwen2-VL with the config from {base!r}: "
                f"missing {missing[:5]}, unexpected {unexpected[:5]}, shape differs for {wrong[:5]}"
            )

        backbone, head_state = {}, {}
        with safe_open(checkpoint, framework="pt") as f:
            for key, (part, new) in parts.items():
                if part == "backbone":
                    backbone[new] = f.get_tensor(key).to(dtype)
                elif part == "head":
                    head_state[new] = f.get_tensor(key).float()
        model = Qwen2VLModel.from_pretrained(None, config=config, state_dict=backbone, dtype=dtype)
        del backbone
        head.load_state_dict(head_state)
        return cls(model, head, tokenizer, instruction, **kwargs)

    def _inputs(self, images: torch.Tensor, prompts: Sequence[str]) -> dict[str, torch.Tensor]:
        pixel_values, grid_thw = qwen_vl_preprocess(
            images,
            min_pixels=self.min_pixels,
            max_pixels=self.max_pixels,
            patch_size=self.patch_size,
            merge_size=self.merge_size,
            temporal_patch_size=self.temporal_patch_size,
        )
        image_tokens = int(grid_thw[0].prod()) // self.merge_size**2
        text = self.tokenizer(
            [hpsv3_chat(p, image_tokens, self.instruction) for p in prompts],
            padding=True,
            padding_side="right",
            add_special_tokens=False,
            return_tensors="pt",
        )
        device = images.device
        input_ids, attention_mask = text["input_ids"].to(device), text["attention_mask"].to(device)
        # HPSv3 was trained with plain 1-D positions (its forward left position_ids unset, which gave the decoder
        # 0, 1, 2, ... on all three M-RoPE axes), not Qwen2-VL's 2-D positions for image tokens: so score with those.
        positions = torch.arange(input_ids.shape[1], device=device).expand(3, *input_ids.shape)
        return {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "position_ids": positions,
            "pixel_values": pixel_values,
            "image_grid_thw": grid_thw,
        }

    def score(self, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        if isinstance(prompts, str):
            raise TypeError("HPSv3Reward.score: prompts must be a list of strings, one per image, not one string")
        if images.ndim != 4 or len(prompts) != images.shape[0]:
            raise ValueError(
                f"HPSv3Reward.score: {len(prompts)} prompts for images of shape {tuple(images.shape)}; "
                "expected [B, 3, H, W] and B prompts"
            )
        inputs = self._inputs(images, list(prompts))
        found = inputs["input_ids"] == self.reward_token_id
        if not torch.equal(found.sum(1), torch.ones_like(found.sum(1))):
            raise ValueError(
                f"HPSv3Reward.score: every text needs exactly one {REWARD_TOKEN}; a prompt that contains it "
                "(or a tokenizer that splits it) breaks that"
            )
        hidden = self.model(**inputs).last_hidden_state
        rows, columns = found.nonzero(as_tuple=True)
        return self.head(hidden[rows, columns].float())[:, 0]
