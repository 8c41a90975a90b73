"""HPSv2 / HPSv2.1 on transformers' `CLIPModel`: open_clip checkpoints converted, no open_clip needed.

HPS (Wu et al., 2023) is an open_clip ViT-H-14 fine-tuned on human preferences and published as an
open_clip `state_dict` (`HPS_v2.1_compressed.pt`, `HPS_v2_compressed.pt` in `xswu/HPSv2`). The
architecture is standard CLIP, so the weights map one-to-one onto transformers' `CLIPModel`
([`open_clip_to_transformers`]); that keeps open_clip and torchvision (which pulls a CUDA torch)
out of the core package. The score is the raw cosine of the image and text embeddings (scale 1).

Convert once with `srpo-trl convert-hps CHECKPOINT OUTPUT_DIR` to get a safetensors CLIP folder, or
let [`load_hps`] convert in memory on every load.
"""

from __future__ import annotations

import os
import re

import torch

# The open_clip ViT-H-14 that HPS fine-tunes: 16 heads in both towers (vision head width 80).
VIT_H_14_HEADS = {"vision_heads": 16, "text_heads": 16}
# The tokenizer HPS uses is open_clip's CLIP BPE tokenizer, published in transformers format here.
HPS_TOKENIZER = "laion/CLIP-ViT-H-14-laion2B-s32B-b79K"

_BLOCK_RENAMES = {
    "ln_1": "layer_norm1",
    "ln_2": "layer_norm2",
    "mlp.c_fc": "mlp.fc1",
    "mlp.c_proj": "mlp.fc2",
    "attn.out_proj": "self_attn.out_proj",
}


def load_state_dict_file(path: str) -> dict[str, torch.Tensor]:
    """Tensors of a `.safetensors` file, or of a `.pt`/`.pth`/`.bin` file read with `weights_only=True`.

    A checkpoint that wraps its weights (`{"state_dict": ...}`) is unwrapped, and a DataParallel
    `module.` prefix is dropped.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint {path!r} does not exist")
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        state = load_file(path)
    else:
        # weights_only: a pickled checkpoint can run arbitrary code when fully unpickled.
        state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"checkpoint {path!r} does not hold a state dict of tensors")
    return {k.removeprefix("module."): v for k, v in state.items()}


def _count_blocks(state: dict, prefix: str) -> int:
    pattern = re.compile(re.escape(prefix) + r"(\d+)\.")
    indices = {int(m.group(1)) for k in state if (m := pattern.match(k))}
    if not indices:
        raise ValueError(f"not an open_clip CLIP state dict: no keys start with {prefix!r}")
    return max(indices) + 1


def _convert_tower(state: dict, src: str, dst: str, num_layers: int, out: dict) -> None:
    """Transformer blocks `{src}{i}.*` (open_clip) into `{dst}{i}.*` (transformers), popping from `state`."""
    for i in range(num_layers):
        block = f"{src}{i}."
        for kind in ("weight", "bias"):  # nn.MultiheadAttention packs q, k, v into one projection
            q, k, v = state.pop(f"{block}attn.in_proj_{kind}").chunk(3, dim=0)
            for name, tensor in zip(("q_proj", "k_proj", "v_proj"), (q, k, v)):
                out[f"{dst}{i}.self_attn.{name}.{kind}"] = tensor.clone()
        for old, new in _BLOCK_RENAMES.items():
            for kind in ("weight", "bias"):
                out[f"{dst}{i}.{new}.{kind}"] = state.pop(f"{block}{old}.{kind}")


def open_clip_to_transformers(
    state_dict: dict[str, torch.Tensor],
    *,
    vision_heads: int = 16,
    text_heads: int = 16,
    hidden_act: str = "gelu",
    bos_token_id: int | None = None,
    eos_token_id: int | None = None,
    pad_token_id: int = 0,
):
    """A transformers `CLIPConfig` and state dict equal to an open_clip CLIP `state_dict`.

    Sizes are read from the tensors; the head counts cannot be, so they are arguments (ViT-H-14: 16
    and 16). open_clip's ViT-H-14 uses exact GELU (`hidden_act="gelu"`), not OpenAI's quick GELU.
    The tokens default to open_clip's: start-of-text `vocab - 2`, end-of-text `vocab - 1`, padding 0.
    Keys that are neither mapped nor known buffers raise, so a different architecture never loads
    half-converted.
    """
    from transformers import CLIPConfig, CLIPTextConfig, CLIPVisionConfig

    state = dict(state_dict)
    state.pop("attn_mask", None)  # open_clip's causal-mask buffer; transformers builds its own
    vision_layers = _count_blocks(state, "visual.transformer.resblocks.")
    text_layers = _count_blocks(state, "transformer.resblocks.")
    patch = state["visual.conv1.weight"]
    vision_width, _, patch_size, _ = patch.shape
    num_patches = state["visual.positional_embedding"].shape[0] - 1
    grid = round(num_patches**0.5)
    if grid * grid != num_patches:
        raise ValueError(f"visual.positional_embedding has {num_patches} patch positions, not a square grid")
    vocab_size, text_width = state["token_embedding.weight"].shape
    projection_dim = state["text_projection"].shape[1]
    if state["visual.proj"].shape[1] != projection_dim:
        raise ValueError("visual.proj and text_projection project to different sizes")
    if vision_width % vision_heads or text_width % text_heads:
        raise ValueError(
            f"head counts do not divide the widths: vision {vision_width}/{vision_heads}, text {text_width}/{text_heads}"
        )

    config = CLIPConfig(
        text_config=CLIPTextConfig(
            vocab_size=vocab_size,
            hidden_size=text_width,
            intermediate_size=state["transformer.resblocks.0.mlp.c_fc.weight"].shape[0],
            num_hidden_layers=text_layers,
            num_attention_heads=text_heads,
            max_position_embeddings=state["positional_embedding"].shape[0],
            hidden_act=hidden_act,
            projection_dim=projection_dim,
            bos_token_id=vocab_size - 2 if bos_token_id is None else bos_token_id,
            eos_token_id=vocab_size - 1 if eos_token_id is None else eos_token_id,
            pad_token_id=pad_token_id,
        ).to_dict(),
        vision_config=CLIPVisionConfig(
            hidden_size=vision_width,
            intermediate_size=state["visual.transformer.resblocks.0.mlp.c_fc.weight"].shape[0],
            num_hidden_layers=vision_layers,
            num_attention_heads=vision_heads,
            image_size=grid * patch_size,
            patch_size=patch_size,
            hidden_act=hidden_act,
            projection_dim=projection_dim,
        ).to_dict(),
        projection_dim=projection_dim,
    )

    out: dict[str, torch.Tensor] = {
        "vision_model.embeddings.class_embedding": state.pop("visual.class_embedding"),
        "vision_model.embeddings.position_embedding.weight": state.pop("visual.positional_embedding"),
        "vision_model.embeddings.patch_embedding.weight": state.pop("visual.conv1.weight"),
        "visual_projection.weight": state.pop("visual.proj").t().contiguous(),
        "text_model.embeddings.token_embedding.weight": state.pop("token_embedding.weight"),
        "text_model.embeddings.position_embedding.weight": state.pop("positional_embedding"),
        "text_projection.weight": state.pop("text_projection").t().contiguous(),
        "logit_scale": state.pop("logit_scale").reshape(()),
    }
    for old, new in (
        ("visual.ln_pre", "vision_model.pre_layrnorm"),
        ("visual.ln_post", "vision_model.post_layernorm"),
        ("ln_final", "text_model.final_layer_norm"),
    ):
        for kind in ("weight", "bias"):
            out[f"{new}.{kind}"] = state.pop(f"{old}.{kind}")
    _convert_tower(state, "visual.transformer.resblocks.", "vision_model.encoder.layers.", vision_layers, out)
    _convert_tower(state, "transformer.resblocks.", "text_model.encoder.layers.", text_layers, out)
    if state:
        raise ValueError(f"open_clip state dict has keys this conversion does not know: {sorted(state)[:8]}")
    return config, out


def hps_clip_model(checkpoint: str, **conversion_kwargs):
    """A transformers `CLIPModel` with an HPS (open_clip layout) checkpoint's weights."""
    from transformers import CLIPModel

    config, state = open_clip_to_transformers(load_state_dict_file(checkpoint), **conversion_kwargs)
    with torch.device("meta"):
        model = CLIPModel(config)
    missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
    missing = [k for k in missing if not k.endswith("position_ids")]
    if missing or unexpected:
        raise ValueError(f"HPS conversion mismatch: missing {missing[:5]}, unexpected {unexpected[:5]}")
    for name, buffer in model.named_buffers():  # position_ids are not in checkpoints: rebuild them
        if buffer.is_meta:
            length = buffer.shape[-1]
            parent = model.get_submodule(name.rsplit(".", 1)[0])
            parent.register_buffer("position_ids", torch.arange(length).expand(1, -1), persistent=False)
    return model.eval()


def convert_hps(checkpoint: str, output_dir: str, tokenizer: str = HPS_TOKENIZER, **conversion_kwargs) -> str:
    """Write an HPS checkpoint as a safetensors transformers CLIP folder (model + tokenizer); returns the folder.

    The folder loads with `CLIPModel.from_pretrained` and with `load_reward("hpsv2.1:<folder>")`.
    """
    from transformers import CLIPTokenizer

    tok = CLIPTokenizer.from_pretrained(tokenizer)
    kwargs = {"bos_token_id": tok.bos_token_id, "eos_token_id": tok.eos_token_id, **conversion_kwargs}
    model = hps_clip_model(checkpoint, **kwargs)
    os.makedirs(output_dir, exist_ok=True)
    model.save_pretrained(output_dir, safe_serialization=True)
    tok.save_pretrained(output_dir)
    return output_dir
