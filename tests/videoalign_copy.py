"""A tiny local copy of VideoAlign's VideoReward, laid out as the published one (KlingTeam/VideoReward):

- `model_config.json` with VideoAlign's four sections (data, model, LoRA and inference settings, our toy values);
- `checkpoint-<step>/model.pth`: `torch.save` of a peft model's state dict under transformers 4.x names, as
  VideoAlign's training saved it (`base_model.model.visual.*`, `base_model.model.model.layers.N...q_proj.base_layer.
  weight`, `...lora_A.default.weight`, `...lora_B.default.weight`, the tied `lm_head`, `rm_head.weight` [1, hidden]);
  the embedding table has the tokenizer's rows plus the three reward tokens;
- `checkpoint-<step>/tokenizer/`: the base tokenizer with `<|VQ_reward|>`, `<|MQ_reward|>`, `<|TA_reward|>` added;
- `videoalign_instruction.txt`: a stand-in instruction (our words) in the published one's shape;
- and, in a separate `base` folder, the base model's flat transformers-4.x `config.json` and tokenizer.
A stale `checkpoint-3/model.pth` (another draw) checks that the highest step is read, by number.
"""

from __future__ import annotations

import json
import os

import torch
from hpsv3_copy import QWEN2_VL_SPECIAL_TOKENS, _legacy_config
from tokenizers import AddedToken
from tokenizers.pre_tokenizers import ByteLevel

REWARD_TOKENS = ("<|VQ_reward|>", "<|MQ_reward|>", "<|TA_reward|>")
#: Our own words, in the published instruction's shape: three sections, each ending in its reward token, the prompt
#: (`{text_prompt}`) only in the last. The real text is VideoAlign's and is not in this repository.
TINY_INSTRUCTION = (
    "\nRate this generated video from 0 (worst) to 10 (best) on three separate criteria.\n\n"
    "Visual quality: sharp, detailed, well lit and composed frames, nothing broken or unsafe.\n"
    "The visual quality rating: <|VQ_reward|>\nEND\n\n"
    "Motion quality: steady, natural, smooth and lively movement, no flicker or jumps.\n"
    "The motion quality rating: <|MQ_reward|>\nEND\n\n"
    "Text alignment: does the video show what the prompt asks, subject, action, style and setting?\n\n"
    "Prompt - {text_prompt}\nThe text alignment rating: <|TA_reward|>\nEND\n"
)
NORMALISATION = {"VQ_mean": 0.3, "VQ_std": 1.5, "MQ_mean": -0.2, "MQ_std": 0.8, "TA_mean": 0.1, "TA_std": 2.0}
LORA = {"lora_enable": True, "vision_lora": False, "lora_r": 4, "lora_alpha": 8, "use_rslora": False}
STEP = 12


def tiny_base_tokenizer(vocab_size: int = 1000):
    """A byte-level BPE `Qwen2Tokenizer` with Qwen2-VL's added tokens, merges trained on the stand-in instruction."""
    from tokenizers import Tokenizer
    from tokenizers.models import BPE
    from tokenizers.trainers import BpeTrainer
    from transformers import Qwen2Tokenizer

    trainer_tokenizer = Tokenizer(BPE())
    trainer_tokenizer.pre_tokenizer = Qwen2Tokenizer()._tokenizer.pre_tokenizer
    text = TINY_INSTRUCTION.replace("{text_prompt}", "a cat, a dog on a hill at dawn, the sea. Real. Painting.")
    trainer = BpeTrainer(vocab_size=vocab_size, initial_alphabet=ByteLevel.alphabet(), show_progress=False)
    trainer_tokenizer.train_from_iterator([text], trainer)
    model = json.loads(trainer_tokenizer.to_str())["model"]
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"]]
    tokenizer = Qwen2Tokenizer(vocab=model["vocab"], merges=merges)
    tokenizer.add_tokens([AddedToken(t, special=True) for t in QWEN2_VL_SPECIAL_TOKENS])
    return tokenizer


def base_config(tokenizer, vocab_size: int) -> dict:
    """Qwen2-VL-2B-Instruct's flat config.json at toy sizes (2B ties its LM head to the embeddings)."""
    return {**_legacy_config(tokenizer, vocab_size), "tie_word_embeddings": True}


def lora_config():
    """VideoAlign's LoRA: every linear layer of the decoder (not the vision tower, lm_head, rm_head, embeddings);
    `init_lora_weights=False` draws B at random, so the LoRA changes the scores."""
    from peft import LoraConfig

    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    return LoraConfig(r=LORA["lora_r"], lora_alpha=LORA["lora_alpha"], target_modules=targets, init_lora_weights=False)


def to_legacy(key: str) -> str:
    """transformers 5 -> 4.x names inside a peft state dict."""
    for new, old in (("base_model.model.model.visual.", "base_model.model.visual."),
                     ("base_model.model.model.language_model.", "base_model.model.model.")):  # fmt: skip
        if key.startswith(new):
            return old + key[len(new) :]
    return key


def videoalign_state_dict(config, seed: int = 0) -> dict[str, torch.Tensor]:
    """A random peft-wrapped Qwen2-VL with VideoAlign's LoRA and head, as VideoAlign saved it (4.x names)."""
    from peft import get_peft_model
    from transformers import Qwen2VLForConditionalGeneration

    torch.manual_seed(seed)
    model = get_peft_model(Qwen2VLForConditionalGeneration(config), lora_config())
    state = {to_legacy(k): v.clone() for k, v in model.state_dict().items()}
    state["base_model.model.rm_head.weight"] = torch.randn(1, config.text_config.hidden_size) / 4
    return state


def save_videoalign_copy(folder: str, seed: int = 0) -> tuple[str, str]:
    """Write the tiny copy; returns `(checkpoint folder, base folder)`: `load_reward("videoalign:<checkpoint>",
    base=<base>)`."""
    from transformers import Qwen2VLConfig

    checkpoint, base = os.path.join(folder, "VideoReward"), os.path.join(folder, "base")
    tokenizer = tiny_base_tokenizer()
    tokenizer.save_pretrained(base)
    rows = len(tokenizer) + len(REWARD_TOKENS)  # VideoAlign resized the table to the tokenizer with its tokens
    with open(os.path.join(base, "config.json"), "w") as f:
        json.dump(base_config(tokenizer, vocab_size=rows + 9), f, indent=2)  # the base's table is padded further
    config = Qwen2VLConfig(**base_config(tokenizer, vocab_size=rows))
    for step, draw in ((3, seed + 100), (STEP, seed)):
        os.makedirs(os.path.join(checkpoint, f"checkpoint-{step}"), exist_ok=True)
        torch.save(videoalign_state_dict(config, draw), os.path.join(checkpoint, f"checkpoint-{step}", "model.pth"))
    tokenizer.add_special_tokens({"additional_special_tokens": list(REWARD_TOKENS)})
    tokenizer.save_pretrained(os.path.join(checkpoint, f"checkpoint-{STEP}", "tokenizer"))
    settings = {
        "data_config": {
            "max_frame_pixels": 200704,
            "num_frames": None,
            "fps": 2.0,
            "eval_dim": ["VQ", "MQ", "TA"],
            "prompt_template_type": "detailed_special",
            "sample_type": "uniform",
        },
        "model_config": {
            "model_name_or_path": "Qwen/Qwen2-VL-2B-Instruct",
            "output_dim": 1,
            "use_special_tokens": True,
            "reward_token": "special",
        },
        "peft_lora_config": {**LORA, "lora_namespan_exclude": ["lm_head", "rm_head", "embed_tokens", "visual"]},
        "inference_config": NORMALISATION,
    }
    with open(os.path.join(checkpoint, "model_config.json"), "w") as f:
        json.dump(settings, f, indent=2)
    with open(os.path.join(checkpoint, "videoalign_instruction.txt"), "w", encoding="utf-8") as f:
        f.write(TINY_INSTRUCTION)
    return checkpoint, base
