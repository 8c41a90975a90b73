"""Text-embedding cache: encode each prompt once, within a memory budget, and free the text encoders when it can.

FLUX.1-dev's T5-XXL encoder alone holds 4.76 B parameters (9.5 GB in bf16) and each prompt's conditioning is
512 x 4096 values (4.2 MB in bf16): HPDv2's 10^5 training prompts would take 0.4 TB, far more than a host's RAM.
So the cache holds its entries in two tiers:

- **Memory**: a least-recently-used map bounded by `memory_budget_mb`. Its accounting (`memory_bytes`, and its
  high-water mark `peak_memory_bytes`) counts the bytes of storage each entry keeps alive; entries are copied
  out of the encoder's batch so that they never pin the whole batch. An entry larger than the budget is used
  and not kept.
- **Disk** (optional, `cache_dir`): one safetensors file per prompt, shared across runs and processes.

`precompute` streams the datasets' prompts through the encoders, `batch_size` at a time, and tells whether every
prompt is now cached: with a disk cache each process writes its share (`prompts[rank::world_size]`) and holds
one batch at a time; without one, the prompts are kept in memory only if all of them fit in the budget (they are
then kept for good: later prompts never evict them), and otherwise encoding stops after the first batch and prompts
are encoded when first needed (`get`), kept in the LRU. The trainer moves the text encoders off the accelerator
only when every prompt was cached; otherwise they stay where they are, since running T5-XXL on a CPU, or moving it
to the accelerator and back, would cost seconds at every step (see `SRPOTrainer._build_text_cache`). A prompt that
was not cached (streamed data, `generate()` on new prompts) is encoded on the fly by the encoders wherever they are.

On disk, entries live under a key made of the text encoders' identity (class, config, tokenizer and a digest of
every weight) and the sequence length: a changed encoder, tokenizer or length gives a new key, so a stale
embedding is never reused. Each prompt is one file named by its hash, with the prompt stored in its metadata and
checked on read. Writers write a private temporary file and `os.replace` it into place, which is atomic on POSIX:
readers (any process or thread) see the whole file or none, and concurrent writers of one prompt write the same
bytes. A file that cannot be read (e.g. cut short by a crash) counts as missing and is rewritten. safetensors
stores tensors bit for bit, so an embedding read back is exactly the one encoded.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from collections import OrderedDict
from collections.abc import Iterator, Sequence

import torch
from torch import nn

logger = logging.getLogger(__name__)

MIB = 2**20


def _tokenizer_identity(tokenizer) -> str:
    tokenizer = getattr(tokenizer, "tokenizer", tokenizer)  # a processor (Qwen3-VL's) holds its tokenizer
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        state = json.loads(backend.to_str())
        # Padding and truncation are per-call settings that the tokenizer's last call leaves behind: without this,
        # merely having encoded a prompt would change the key.
        state.pop("padding", None), state.pop("truncation", None)
        text = json.dumps(state, sort_keys=True)
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


def entry_nbytes(entry: dict[str, torch.Tensor]) -> int:
    """Bytes of storage an entry keeps alive (its storages, not just its views' elements)."""
    storages = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in entry.values()}
    return sum(storages.values())


def _write_atomically(path: str, entry: dict[str, torch.Tensor], prompt: str) -> None:
    """Write `entry` to `path` so that a reader sees the whole file or none (see the module docstring)."""
    from safetensors.torch import save_file

    folder = os.path.dirname(path)
    os.makedirs(folder, exist_ok=True)
    # A private name per writer (process and thread): concurrent writers never share a temporary file.
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=os.path.basename(path) + ".", suffix=".tmp")
    os.close(fd)
    try:
        save_file({k: v.contiguous() for k, v in entry.items()}, tmp, metadata={"prompt": prompt})
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def _read_file(path: str, prompt: str) -> dict[str, torch.Tensor] | None:
    """The entry stored at `path` for `prompt`, or `None` if absent, unreadable or another prompt's."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(path, framework="pt") as f:
            if (f.metadata() or {}).get("prompt") != prompt:  # a hash collision: treat as missing
                return None
            return {k: f.get_tensor(k) for k in f.keys()}
    except FileNotFoundError:
        return None
    except (OSError, SafetensorError) as error:  # cut short by a crash, say: encode again and overwrite
        logger.warning("unreadable text-embedding cache file %s (%s): encoding the prompt again", path, error)
        return None


class TextEmbeddingCache:
    """Prompt -> text conditioning (`adapter.encode_prompts` output, one sample, as `adapter.cache_entry` keeps it;
    `adapter.stack_entries` batches them), in memory within a budget and optionally on disk (see the module
    docstring).

    Args:
        adapter: the model adapter; it encodes prompts and names the text components.
        device: where batches are returned.
        cache_dir (`str`, *optional*): keep entries on disk under this folder (shared across runs and processes).
        batch_size (`int`): prompts per text-encoder call.
        memory_budget_mb (`float`, *optional*, defaults to 4096): most MiB of entries held in memory; `None` for
            no bound.
    """

    def __init__(
        self,
        adapter,
        device: torch.device,
        cache_dir: str | None = None,
        batch_size: int = 8,
        memory_budget_mb: float | None = 4096,
    ):
        self.adapter = adapter
        self.device = torch.device(device)
        self.batch_size = batch_size
        self.memory_budget_bytes = None if memory_budget_mb is None else int(memory_budget_mb * MIB)
        self.memory: OrderedDict[str, dict[str, torch.Tensor]] = OrderedDict()  # oldest use first
        self.memory_bytes = 0
        self.peak_memory_bytes = 0
        self.evictions = 0
        self.entry_bytes: int | None = None  # the size of the last encoded entry, for the trainer's estimates
        # False once the datasets' prompts were all kept in memory: then later prompts may not evict them.
        self.evict = True
        self.encoders_released = False
        self.folder = None
        if cache_dir is not None:
            key = text_encoder_fingerprint(adapter.pipeline, adapter.text_components, adapter.max_sequence_length)
            self.folder = os.path.join(cache_dir, key[:32])
            os.makedirs(self.folder, exist_ok=True)

    # ------------------------------------------------------------------ memory

    def _fits(self, size: int) -> bool:
        return self.memory_budget_bytes is None or self.memory_bytes + size <= self.memory_budget_bytes

    def _remember(self, prompt: str, entry: dict[str, torch.Tensor]) -> None:
        """Keep `entry` in memory, evicting the least recently used entries to stay within the budget."""
        if prompt in self.memory:
            self.memory.move_to_end(prompt)
            return
        size = entry_nbytes(entry)
        while self.evict and self.memory and not self._fits(size):
            _, old = self.memory.popitem(last=False)
            self.memory_bytes -= entry_nbytes(old)
            self.evictions += 1
        if not self._fits(size):
            return  # larger than the budget (or not evicting): used by the caller, not kept
        self.memory[prompt] = entry
        self.memory_bytes += size
        self.peak_memory_bytes = max(self.peak_memory_bytes, self.memory_bytes)

    # -------------------------------------------------------------------- disk

    def _path(self, prompt: str) -> str:
        name = hashlib.sha256(prompt.encode()).hexdigest()
        return os.path.join(self.folder, name[:2], name + ".safetensors")

    def _on_disk(self, prompt: str) -> bool:
        return self.folder is not None and os.path.isfile(self._path(prompt))

    def _read(self, prompt: str) -> dict[str, torch.Tensor] | None:
        """The cached entry (memory first, then disk, which then goes to memory), or `None`."""
        entry = self.memory.get(prompt)
        if entry is not None:
            self.memory.move_to_end(prompt)
            return entry
        if self.folder is None:
            return None
        entry = _read_file(self._path(prompt), prompt)
        if entry is not None:
            self._remember(prompt, entry)
        return entry

    def _write(self, prompt: str, entry: dict[str, torch.Tensor]) -> None:
        _write_atomically(self._path(prompt), entry, prompt)

    def __contains__(self, prompt: str) -> bool:
        return prompt in self.memory or self._on_disk(prompt)

    # ---------------------------------------------------------------- encoding

    def _encode(self, prompts: list[str]) -> Iterator[tuple[str, dict[str, torch.Tensor]]]:
        """(prompt, entry on the CPU) for each prompt, `batch_size` prompts per encoder call."""
        # Released encoders sit on the CPU: encode there, then move the (small) result.
        device = torch.device("cpu") if self.encoders_released else self.device
        for start in range(0, len(prompts), self.batch_size):
            chunk = prompts[start : start + self.batch_size]
            encoded = self.adapter.encode_prompts(chunk, device)
            for i, prompt in enumerate(chunk):
                row = self.adapter.cache_entry({k: v[i] for k, v in encoded.items()})  # e.g. without padding
                # A copy: a view would keep the whole batch's storage alive (and escape the accounting).
                entry = {k: v.detach().to("cpu", copy=True) for k, v in row.items()}
                self.entry_bytes = entry_nbytes(entry)
                yield prompt, entry

    def precompute(self, prompts: Sequence[str], rank: int = 0, world_size: int = 1) -> bool:
        """Encode the prompts not cached yet; `True` if every prompt is then cached (once every process is done).

        With a disk cache, processes split the prompts (`prompts[rank::world_size]`, before looking at the disk, so
        that every prompt has exactly one owner whatever the others have written already); callers then wait for
        every process before reading. In memory, each process encodes all of them, and only if they fit the budget.
        """
        unique = list(dict.fromkeys(prompts))
        if self.folder is not None:
            self._precompute_to_disk([p for p in unique[rank::world_size] if not self._on_disk(p)])
            return True
        return self._precompute_in_memory([p for p in unique if p not in self.memory])

    def _precompute_to_disk(self, missing: list[str]) -> None:
        for prompt, entry in self._encode(missing):  # one batch in memory at a time
            self._write(prompt, entry)

    def _precompute_in_memory(self, missing: list[str]) -> bool:
        evictions = self.evictions
        for done, (prompt, entry) in enumerate(self._encode(missing), start=1):
            self._remember(prompt, entry)
            rest = self.entry_bytes * (len(missing) - done)  # the prompts still to come, at this one's size
            end_of_batch = done % self.batch_size == 0
            if prompt not in self.memory or self.evictions > evictions or (end_of_batch and not self._fits(rest)):
                # They do not all fit: stop encoding (the rest would be evicted before use); prompts are encoded
                # when first needed instead. What was encoded stays, within the budget.
                return False
        self.evict = False  # every prompt is in memory: keep them there for good
        return True

    def get(self, prompts: Sequence[str]) -> dict[str, torch.Tensor]:
        """Batched conditioning for `prompts` on `device`; uncached prompts are encoded now (and kept)."""
        entries = {p: self._read(p) for p in dict.fromkeys(prompts)}
        missing = [p for p, e in entries.items() if e is None]
        for prompt, entry in self._encode(missing):
            entries[prompt] = entry
            self._remember(prompt, entry)
            if self.folder is not None:
                self._write(prompt, entry)
        batch = self.adapter.stack_entries([entries[p] for p in prompts])
        return {k: v.to(self.device) for k, v in batch.items()}

    def release_encoders(self) -> None:
        """Move the text encoders to the CPU and free their accelerator memory."""
        for name in self.adapter.text_components:
            module = getattr(self.adapter.pipeline, name, None)
            if isinstance(module, nn.Module):
                module.to("cpu")
        self.encoders_released = True
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def build_text_cache(adapter, accelerator, args, train_dataset, eval_dataset) -> TextEmbeddingCache:
    """The trainer's cache: the datasets' prompts precomputed within the memory budget (or to the disk folder), and
    the text encoders released when every prompt is cached."""
    from .data import dataset_prompts

    if not args.cache_text_embeddings:  # no cache at all: every prompt is encoded at every use
        return TextEmbeddingCache(adapter, accelerator.device, memory_budget_mb=0)
    if adapter.text_sees_reference:
        # The text encoder sees each prompt's reference image (Qwen-Image-Edit): the conditioning is made per batch
        # from the prompt and its image, so there is nothing to cache per prompt, and the encoder stays in place.
        logger.info("the text encoder sees the reference images: text conditioning is encoded per batch, not cached")
        return TextEmbeddingCache(adapter, accelerator.device, memory_budget_mb=0)
    cache = TextEmbeddingCache(
        adapter,
        accelerator.device,
        args.text_embedding_cache_dir,
        memory_budget_mb=args.text_embedding_cache_memory_mb,
    )
    column = args.dataset_prompt_column
    train_prompts = dataset_prompts(train_dataset, column)
    eval_sets = eval_dataset.values() if isinstance(eval_dataset, dict) else [eval_dataset]
    eval_prompts = [p for d in eval_sets for p in (dataset_prompts(d, column) or [])]
    # The samples logged during training too, so that a complete cache spares the encoders every call.
    prompts = (train_prompts or []) + eval_prompts + list(args.sample_prompts or [])
    complete = cache.precompute(prompts, accelerator.process_index, accelerator.num_processes)
    accelerator.wait_for_everyone()  # a shared disk cache is complete before anyone reads it
    if train_prompts is None:
        # A stream's prompts are unknown in advance: they are encoded as they arrive, so the encoders stay.
        logger.warning("streamed train_dataset: prompts are encoded as they arrive; text encoders stay in place")
    elif not complete:
        count = len(set(prompts))
        # Lazy encoding needs the encoders at every step: running T5-XXL on the CPU, or moving its 9.5 GB to the
        # accelerator and back, would cost seconds a step, so they stay (the warning names the ways out).
        logger.warning(
            "the text embeddings of %d prompts (about %.0f MiB) exceed text_embedding_cache_memory_mb=%s: prompts "
            "are encoded when first needed and the text encoders stay on %s; set text_embedding_cache_dir to "
            "precompute them to disk and release the encoders",
            count,
            count * (cache.entry_bytes or 0) / 2**20,
            args.text_embedding_cache_memory_mb,
            accelerator.device,
        )
    elif args.release_text_encoders:
        cache.release_encoders()
    return cache
