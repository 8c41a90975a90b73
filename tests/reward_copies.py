"""Tiny local copies of every registered reward model, laid out on disk as users would have them."""

from __future__ import annotations

import os

import torch

from srpo_trl.rewards import AestheticMLP
from srpo_trl.testing import tiny_clip_model, tiny_clip_tokenizer


def open_clip_state_dict(
    seed: int = 0,
    *,
    vision_width: int = 32,
    vision_layers: int = 2,
    patch: int = 32,
    image_size: int = 224,
    text_width: int = 24,
    text_layers: int = 2,
    vocab_size: int = 200,
    context: int = 77,
    embed_dim: int = 16,
) -> dict[str, torch.Tensor]:
    """A random state dict in open_clip's CLIP layout (nn.MultiheadAttention, c_fc/c_proj, ln_pre...)."""
    g = torch.Generator().manual_seed(seed)

    def randn(*shape, std=0.05):
        return torch.randn(*shape, generator=g) * std

    def block(prefix: str, width: int) -> dict[str, torch.Tensor]:
        return {
            f"{prefix}ln_1.weight": 1 + randn(width, std=0.1),
            f"{prefix}ln_1.bias": randn(width),
            f"{prefix}attn.in_proj_weight": randn(3 * width, width, std=0.2),
            f"{prefix}attn.in_proj_bias": randn(3 * width),
            f"{prefix}attn.out_proj.weight": randn(width, width, std=0.2),
            f"{prefix}attn.out_proj.bias": randn(width),
            f"{prefix}ln_2.weight": 1 + randn(width, std=0.1),
            f"{prefix}ln_2.bias": randn(width),
            f"{prefix}mlp.c_fc.weight": randn(4 * width, width, std=0.2),
            f"{prefix}mlp.c_fc.bias": randn(4 * width),
            f"{prefix}mlp.c_proj.weight": randn(width, 4 * width, std=0.1),
            f"{prefix}mlp.c_proj.bias": randn(width),
        }

    grid = image_size // patch
    state = {
        "visual.class_embedding": randn(vision_width, std=0.5),
        "visual.positional_embedding": randn(grid * grid + 1, vision_width, std=0.5),
        "visual.conv1.weight": randn(vision_width, 3, patch, patch, std=0.05),
        "visual.ln_pre.weight": 1 + randn(vision_width, std=0.1),
        "visual.ln_pre.bias": randn(vision_width),
        "visual.ln_post.weight": 1 + randn(vision_width, std=0.1),
        "visual.ln_post.bias": randn(vision_width),
        "visual.proj": randn(vision_width, embed_dim, std=0.2),
        "token_embedding.weight": randn(vocab_size, text_width, std=0.5),
        "positional_embedding": randn(context, text_width, std=0.5),
        "ln_final.weight": 1 + randn(text_width, std=0.1),
        "ln_final.bias": randn(text_width),
        "text_projection": randn(text_width, embed_dim, std=0.2),
        "logit_scale": torch.tensor(4.6052),
        "attn_mask": torch.full((context, context), float("-inf")).triu(1),
    }
    for i in range(vision_layers):
        state.update(block(f"visual.transformer.resblocks.{i}.", vision_width))
    for i in range(text_layers):
        state.update(block(f"transformer.resblocks.{i}.", text_width))
    return state


def save_hps_copy(folder: str, seed: int = 0, filename: str = "HPS_v2.1_compressed.pt") -> str:
    """An HPS-style checkpoint (`{"state_dict": ...}`, `module.` prefixes) with the tiny tokenizer beside it."""
    os.makedirs(folder, exist_ok=True)
    tokenizer = tiny_clip_tokenizer()
    # Widths divisible by 16, the ViT-H-14 head count the loader assumes by default.
    state = open_clip_state_dict(seed, vocab_size=len(tokenizer), text_width=32)
    path = os.path.join(folder, filename)
    torch.save({"epoch": 3, "state_dict": {f"module.{k}": v for k, v in state.items()}}, path)
    tokenizer.save_pretrained(folder)
    return path


def save_clip_copy(folder: str, seed: int = 0) -> str:
    """A transformers CLIP folder (model + tokenizer), as PickScore and the CLIP names are published."""
    model, tokenizer = tiny_clip_model(seed)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def save_aesthetic_copy(folder: str, seed: int = 0) -> str:
    """A CLIP folder with the aesthetic head's weights (`aesthetic-model.pth`) beside it."""
    save_clip_copy(folder, seed)
    torch.manual_seed(seed)
    head = AestheticMLP(embedding_dim=32)
    torch.save(head.state_dict(), os.path.join(folder, "aesthetic-model.pth"))
    return folder


def save_copy(name: str, folder: str, seed: int = 0) -> str:
    """The local path to give as `"{name}:{path}"` for a registered reward name."""
    if name in ("hpsv2.1", "hpsv2"):
        return save_hps_copy(folder, seed)
    if name == "laion-aesthetic":
        return save_aesthetic_copy(folder, seed)
    if name == "hpsv3":
        from hpsv3_copy import save_hpsv3_copy

        return save_hpsv3_copy(folder, seed)
    return save_clip_copy(folder, seed)
