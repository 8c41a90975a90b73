"""Text-embedding cache: encode each prompt once, then get the text encoders off the accelerator.

FLUX.1-dev's T5-XXL encoder alone holds 4.76 B parameters (9.5 GB in bf16). Training never changes
it, so the trainer encodes the dataset's prompts once, keeps the conditioning (in memory, or on disk
with `text_embedding_cache_dir`), and moves the text encoders to the CPU, freeing that memory for
training. A prompt that was not cached (streamed data, `generate()` on new prompts) is encoded on the
fly by the encoders wherever they are.

On disk, entries live under a key made of the text encoders' identity (class, config, tokenizer and a
digest of every weight) and the sequence length: a changed encoder, tokenizer or length gives a new key,
so a stale embedding is never reused. Each prompt is one safetensors file named by its hash, written
atomically, with the prompt stored in its metadata and checked on read.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence

import torch
from torch import nn


def _tokenizer_identity(tokenizer) -> str:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        text = backend.to_str()
    else:
        text = json.dumps(sorted(tokenizer.get_vocab().items()))
    return f"{type(tokenizer).__name__}:{hashlib.sha256(text.encode()).hexdigest()}"


@torch.no_grad()
def _weights_digest(module: nn.Module) -> str:
    """Shape, dtype and two float64 moments of every tensor: changes when any weight does."""
    digest = hashlib.sha256()
    for name, tensor in list(module.named_parameters()) + list(module.named_buffers()):
        t = tensor.detach().double()
        positions = torch.arange(t.numel(), device=t.device, dtype=torch.float64).reshape(t.shape)
        moments = torch.stack([t.sum(), (t * t).sum(), (t * (positions % 9973)).sum()]).tolist()
        digest.update(f"{name}:{tuple(t.shape)}:{tensor.dtype}:{moments!r}".encode())
    return digest.hexdigest()


def text_encoder_fingerprint(pipeline, components: Sequence[str], max_sequence_length: int) -> str:
    """A hex key identifying the text conditioning `pipeline` computes (see the module docstring)."""
    digest = hashlib.sha256(f"max_sequence_length={max_sequence_length}".encode())
    for name in components:
        module = getattr(pipeline, name, None)
        if module is None:
            continue
        if isinstance(module, nn.Module):
            config = module.config.to_json_string() if hasattr(module, "config") else ""
            digest.update(f"{name}:{type(module).__name__}:{config}:{_weights_digest(module)}".encode())
        else:  # a tokenizer
            digest.update(f"{name}:{_tokenizer_identity(module)}".encode())
    return digest.hexdigest()


class TextEmbeddingCache:
    """Prompt -> text conditioning (`adapter.encode_prompts` output, one sample), computed once.

    Args:
        adapter: the model adapter; it encodes prompts and names the text components.
        device: where batches are returned.
        cache_dir (`str`, *optional*): keep entries on disk under this folder (shared across runs).
        batch_size (`int`): prompts per text-encoder call while precomputing.
    """

    def __init__(self, adapter, device: torch.device, cache_dir: str | None = None, batch_size: int = 8):
        self.adapter = adapter
        self.device = torch.device(device)
        self.batch_size = batch_size
        self.memory: dict[str, dict[str, torch.Tensor]] = {}
        # Whether `get` stores prompts it had to encode; off for endless streams kept only in memory.
        self.keep_new_prompts = True
        self.encoders_released = False
        self.folder = None
        if cache_dir is not None:
            key = text_encoder_fingerprint(adapter.pipeline, adapter.text_components, adapter.max_sequence_length)
            self.folder = os.path.join(cache_dir, key[:32])
            os.makedirs(self.folder, exist_ok=True)

    # ------------------------------------------------------------------ storage

    def _path(self, prompt: str) -> str:
        name = hashlib.sha256(prompt.encode()).hexdigest()
        return os.path.join(self.folder, name[:2], name + ".safetensors")

    def _read(self, prompt: str) -> dict[str, torch.Tensor] | None:
        if prompt in self.memory:
            return self.memory[prompt]
        if self.folder is None:
            return None
        path = self._path(prompt)
        if not os.path.isfile(path):
            return None
        from safetensors import safe_open

        with safe_open(path, framework="pt") as f:
            if (f.metadata() or {}).get("prompt") != prompt:  # a hash collision: treat as missing
                return None
            return {k: f.get_tensor(k) for k in f.keys()}

    def _write(self, prompt: str, entry: dict[str, torch.Tensor]) -> None:
        if self.folder is None:
            self.memory[prompt] = entry
            return
        from safetensors.torch import save_file

        path = self._path(prompt)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = f"{path}.{os.getpid()}.tmp"
        save_file({k: v.contiguous() for k, v in entry.items()}, tmp, metadata={"prompt": prompt})
        os.replace(tmp, path)  # atomic: readers see the whole file or none

    def __contains__(self, prompt: str) -> bool:
        return prompt in self.memory or (self.folder is not None and os.path.isfile(self._path(prompt)))

    # ----------------------------------------------------------------- encoding

    def _encode(self, prompts: list[str]) -> dict[str, torch.Tensor]:
        # Released encoders sit on the CPU: encode there, then move the (small) result.
        device = torch.device("cpu") if self.encoders_released else self.device
        return self.adapter.encode_prompts(prompts, device)

    def precompute(self, prompts: Sequence[str], rank: int = 0, world_size: int = 1) -> int:
        """Encode the prompts not cached yet; returns how many were encoded by this process.

        With a disk cache, processes split the work (`prompts[rank::world_size]`); callers then wait
        for every process before reading. In memory, each process encodes all of them.
        """
        missing = [p for p in dict.fromkeys(prompts) if p not in self]
        if self.folder is not None:
            missing = missing[rank::world_size]
        for start in range(0, len(missing), self.batch_size):
            chunk = missing[start : start + self.batch_size]
            encoded = self._encode(chunk)
            for i, prompt in enumerate(chunk):
                self._write(prompt, {k: v[i].detach().to("cpu") for k, v in encoded.items()})
        return len(missing)

    def get(self, prompts: Sequence[str]) -> dict[str, torch.Tensor]:
        """Batched conditioning for `prompts` on `device`; uncached prompts are encoded now (and kept)."""
        entries = [self._read(p) for p in prompts]
        missing = list(dict.fromkeys(p for p, e in zip(prompts, entries) if e is None))
        if missing and self.keep_new_prompts:
            self.precompute(missing)
            entries = [self._read(p) for p in prompts]
        elif missing:  # streamed prompts without a disk cache: encode, use once, forget
            encoded = self._encode(missing)
            fresh = {p: {k: v[i].detach().to("cpu") for k, v in encoded.items()} for i, p in enumerate(missing)}
            entries = [e if e is not None else fresh[p] for p, e in zip(prompts, entries)]
        return {k: torch.stack([e[k] for e in entries]).to(self.device) for k in entries[0]}

    def release_encoders(self) -> None:
        """Move the text encoders to the CPU and free their accelerator memory."""
        for name in self.adapter.text_components:
            module = getattr(self.adapter.pipeline, name, None)
            if isinstance(module, nn.Module):
                module.to("cpu")
        self.encoders_released = True
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
