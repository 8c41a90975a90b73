"""A tiny local copy of HPSv3, laid out as a user would have the real one.

The folder holds what `Qwen/Qwen2-VL-7B-Instruct` publishes besides its weights (a flat transformers-4.x
`config.json`, a byte-level BPE Qwen2 tokenizer without the reward token) and `HPSv3.safetensors` in the
real checkpoint's layout: transformers 4.x key names (`visual.*`, `model.layers.*`, `lm_head.*`), the
embedding table grown by one row for `<|Reward|>`, and the head as `rm_head.{0,3,5}`.
"""

from __future__ import annotations

import json
import os

import torch
from safetensors.torch import save_file
from tokenizers import AddedToken
from tokenizers.pre_tokenizers import ByteLevel

#: Qwen2-VL's added tokens, in their order (their ids follow the byte-level vocabulary, as in the real one).
QWEN2_VL_SPECIAL_TOKENS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
)
#: The copy's instruction: our own words in the published one's shape (criteria, the prompt, a request that ends in
#: the reward token). The real text is HPSv3's and is not in this repository (see `load_instruction`).
TINY_INSTRUCTION = (
    "\nRate how much people would like this generated image, from 0 (worst) to 10 (best).\n\n"
    "Look at the picture: is it sharp, detailed, well composed, free of broken anatomy, safe?\n"
    "Look at the prompt: are the subject, style, setting and attributes all there, and nothing against it?\n"
    "Prompt - {prompt}\n\n\n\nThe rating of this image: <|Reward|>\n\nEND\n"
)
HIDDEN = 32
HEAD_WIDTHS = (24, 8)  # the real head is hidden -> 1024 -> 16 -> 2


def tiny_qwen2_tokenizer(vocab_size: int = 1200):
    """A byte-level BPE `Qwen2Tokenizer` with Qwen2-VL's added tokens, its merges trained offline on HPSv3's
    instruction, so that the instruction is words and not bytes (as in the real tokenizer)."""
    from tokenizers import Tokenizer
    from tokenizers.models import BPE
    from tokenizers.trainers import BpeTrainer
    from transformers import Qwen2Tokenizer

    from srpo_trl.rewards.hpsv3 import hpsv3_user_text

    pre_tokenizer = Qwen2Tokenizer()._tokenizer.pre_tokenizer  # Qwen2's split regex + byte-level mapping
    trainer_tokenizer = Tokenizer(BPE())
    trainer_tokenizer.pre_tokenizer = pre_tokenizer
    texts = [
        hpsv3_user_text(
            "a cat, a dog on a hill at dawn, the sea, a house. Real. Painting. Detailed.", TINY_INSTRUCTION
        )
    ]
    trainer = BpeTrainer(vocab_size=vocab_size, initial_alphabet=ByteLevel.alphabet(), show_progress=False)
    trainer_tokenizer.train_from_iterator(texts, trainer)
    model = json.loads(trainer_tokenizer.to_str())["model"]
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"]]
    tokenizer = Qwen2Tokenizer(vocab=model["vocab"], merges=merges)
    tokenizer.add_tokens([AddedToken(t, special=True) for t in QWEN2_VL_SPECIAL_TOKENS])
    return tokenizer


def _legacy_config(tokenizer, vocab_size: int) -> dict:
    """A flat config.json like Qwen2-VL-7B-Instruct's (transformers 4.x), at toy sizes."""
    ids = tokenizer.convert_tokens_to_ids
    return {
        "architectures": ["Qwen2VLForConditionalGeneration"],
        "model_type": "qwen2_vl",
        "hidden_size": HIDDEN,
        "intermediate_size": 2 * HIDDEN,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "hidden_act": "silu",
        "max_position_embeddings": 4096,
        "rms_norm_eps": 1e-6,
        "rope_theta": 1000000.0,
        "rope_scaling": {"type": "mrope", "mrope_section": [2, 1, 1]},
        "tie_word_embeddings": False,
        "use_sliding_window": False,
        "vocab_size": vocab_size,
        "bos_token_id": ids("<|endoftext|>"),
        "eos_token_id": ids("<|im_end|>"),
        "vision_start_token_id": ids("<|vision_start|>"),
        "vision_end_token_id": ids("<|vision_end|>"),
        "vision_token_id": ids("<|vision_pad|>"),
        "image_token_id": ids("<|image_pad|>"),
        "video_token_id": ids("<|video_pad|>"),
        "initializer_range": 0.2,
        "vision_config": {
            "depth": 1,
            "embed_dim": 32,
            "hidden_size": HIDDEN,
            "mlp_ratio": 2,
            "num_heads": 2,
            "in_chans": 3,
            "patch_size": 14,
            "spatial_merge_size": 2,
            "spatial_patch_size": 14,
            "temporal_patch_size": 2,
            "initializer_range": 0.2,
        },
    }


def hpsv3_tensors(config, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random tensors for `config` in HPSv3's checkpoint layout (transformers 4.x names + `rm_head`)."""
    from transformers import Qwen2VLForConditionalGeneration

    torch.manual_seed(seed)
    model = Qwen2VLForConditionalGeneration(config)
    tensors = {}
    for key, value in model.state_dict().items():
        if key.startswith("model.visual."):
            key = "visual." + key[len("model.visual.") :]
        elif key.startswith("model.language_model."):
            key = "model." + key[len("model.language_model.") :]
        tensors[key] = value.clone()
    width, bottleneck = HEAD_WIDTHS
    g = torch.Generator().manual_seed(seed + 1)
    for index, (rows, cols) in zip((0, 3, 5), [(width, HIDDEN), (bottleneck, width), (2, bottleneck)]):
        tensors[f"rm_head.{index}.weight"] = torch.randn(rows, cols, generator=g) / cols**0.5
        tensors[f"rm_head.{index}.bias"] = torch.randn(rows, generator=g) * 0.1
    return tensors


def save_hpsv3_copy(folder: str, seed: int = 0) -> str:
    """Write the tiny copy to `folder` (the path to give as `"hpsv3:{folder}"`)."""
    from transformers import Qwen2VLConfig

    os.makedirs(folder, exist_ok=True)
    tokenizer = tiny_qwen2_tokenizer()
    tokenizer.save_pretrained(folder)
    rows = len(tokenizer) + 1  # grown by <|Reward|>, as HPSv3's training script resized it
    # The base config's table is padded past the tokenizer (152064 for 151657 tokens in the real one).
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(_legacy_config(tokenizer, vocab_size=rows + 7), f, indent=2)
    config = Qwen2VLConfig(**_legacy_config(tokenizer, vocab_size=rows))
    save_file(hpsv3_tensors(config, seed), os.path.join(folder, "HPSv3.safetensors"))
    with open(os.path.join(folder, "hpsv3_instruction.txt"), "w", encoding="utf-8") as f:
        f.write(TINY_INSTRUCTION)
    return folder
