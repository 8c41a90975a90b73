"""The text-embedding cache under a memory budget: exact embeddings, accounting that never exceeds the budget,
the trainer's choice between precomputing (and releasing the encoders) and encoding lazily, and a disk cache that
concurrent writers (threads, processes, ranks) share safely. See `srpo_trl.text_cache`."""

import json
import logging
import multiprocessing
import os
import random
import subprocess
import sys
import textwrap
import threading

import pytest
import torch
from datasets import Dataset

from srpo_trl import ColorWordReward, SRPOConfig, SRPOTrainer, text_cache
from srpo_trl.models import get_adapter
from srpo_trl.testing import tiny_flux_pipeline
from srpo_trl.text_cache import MIB, TextEmbeddingCache, _read_file, entry_nbytes

SEQ = 8  # T5 tokens: short, so that thousands of prompts encode in seconds
CPU = torch.device("cpu")


def _prompts(n: int) -> list[str]:
    return [f"prompt {i}: a {('red', 'blue', 'green')[i % 3]} thing" for i in range(n)]


def _counting_adapter(pipe):
    """The tiny pipeline's adapter, recording every prompt it encodes."""
    adapter = get_adapter(pipe, max_sequence_length=SEQ)
    adapter.encoded = []
    encode = adapter.encode_prompts

    def counting(prompts, device):
        adapter.encoded.extend(prompts)
        return encode(prompts, device)

    adapter.encode_prompts = counting
    return adapter


def _direct(adapter, prompts: list[str], batch: int = 8) -> dict[str, dict[str, torch.Tensor]]:
    """prompt -> its embeddings, encoded in batches of `batch` as the cache encodes them."""
    rows = {}
    for start in range(0, len(prompts), batch):
        chunk = prompts[start : start + batch]
        encoded = adapter.encode_prompts(chunk, CPU)
        rows.update({p: {k: v[i].clone() for k, v in encoded.items()} for i, p in enumerate(chunk)})
    return rows


def _check_accounting(cache: TextEmbeddingCache) -> None:
    """The cache's count is the bytes its entries keep alive, entries own no more than their data, and the count
    is within the budget."""
    assert cache.memory_bytes == sum(entry_nbytes(e) for e in cache.memory.values())
    for entry in cache.memory.values():
        assert entry_nbytes(entry) == sum(t.numel() * t.element_size() for t in entry.values())
    assert cache.memory_bytes <= cache.peak_memory_bytes <= cache.memory_budget_bytes


def _forbid(module):
    def refuse(*args, **kwargs):
        raise AssertionError(f"{type(module).__name__} was called after caching")

    module.forward = refuse


# ------------------------------------------------------------------------------------ the cache alone


def test_a_tiny_budget_over_thousands_of_prompts_serves_exact_embeddings_within_it():
    prompts = _prompts(2000)
    adapter = _counting_adapter(tiny_flux_pipeline(0))
    budget_mb = 0.05  # about 40 entries of 1.25 KB
    cache = TextEmbeddingCache(adapter, CPU, memory_budget_mb=budget_mb)
    assert not cache.precompute(prompts)  # 2.5 MB do not fit in 50 KB: encoding stops after one batch
    assert len(adapter.encoded) == cache.batch_size
    reference = _direct(get_adapter(tiny_flux_pipeline(0), max_sequence_length=SEQ), prompts)

    # First pass, in the cache's own batches: bit-identical to direct encoding, never over budget.
    for start in range(0, len(prompts), 8):
        chunk = prompts[start : start + 8]
        got = cache.get(chunk)
        for i, prompt in enumerate(chunk):
            for key, value in reference[prompt].items():
                assert torch.equal(got[key][i], value), (prompt, key)
        _check_accounting(cache)
    assert cache.evictions > len(prompts) - 100 and cache.peak_memory_bytes > 0.9 * budget_mb * MIB

    # Recently used prompts are served from memory; batches mixing hits and misses stay exact.
    adapter.encoded.clear()
    recent = list(cache.memory)[-8:]
    cache.get(recent)
    assert adapter.encoded == []
    rng = random.Random(0)
    for _ in range(60):
        chunk = rng.sample(recent, 3) + rng.sample(prompts, 5)
        got = cache.get(chunk)
        for i, prompt in enumerate(chunk):
            for key, value in reference[prompt].items():
                torch.testing.assert_close(got[key][i], value, atol=0, rtol=0)
        recent = list(cache.memory)[-8:]
        _check_accounting(cache)
    assert 0 < len(adapter.encoded) < 60 * 8


def test_prompts_that_fit_are_kept_for_good_and_an_entry_larger_than_the_budget_is_not_kept():
    adapter = _counting_adapter(tiny_flux_pipeline(0))
    cache = TextEmbeddingCache(adapter, CPU, memory_budget_mb=0.05)
    assert cache.precompute(_prompts(30))  # 37 KB: they fit, so all are kept and none is evicted later
    cache.get(_prompts(60)[30:])  # 30 new prompts: kept only while room remains
    assert set(_prompts(30)) <= set(cache.memory) and cache.evictions == 0
    _check_accounting(cache)

    nothing = TextEmbeddingCache(adapter, CPU, memory_budget_mb=0)
    assert not nothing.precompute(_prompts(2))
    assert nothing.get(["a cat"])["prompt_embeds"].shape == (1, SEQ, 32) and not nothing.memory


# --------------------------------------------------------------------------------------- the trainer


def _trainer(config, prompts, **overrides):
    args = config(max_steps=2, max_sequence_length=SEQ, text_embedding_cache_memory_mb=0.02, **overrides)
    pipe = tiny_flux_pipeline(0)
    return SRPOTrainer(pipe, ColorWordReward(), args=args, train_dataset=Dataset.from_dict({"prompt": prompts}))


def test_beyond_the_budget_the_trainer_encodes_lazily_and_keeps_the_encoders(config, caplog):
    prompts = _prompts(200)
    with caplog.at_level(logging.WARNING, logger="srpo_trl"):
        trainer = _trainer(config, prompts)
    cache = trainer.text_cache
    assert "exceed text_embedding_cache_memory_mb=0.02" in caplog.text and "text_embedding_cache_dir" in caplog.text
    assert not cache.encoders_released and len(cache.memory) <= cache.batch_size
    trainer.train()
    assert trainer.state.global_step == 2
    _check_accounting(cache)


def test_a_disk_cache_precomputes_beyond_the_budget_releases_the_encoders_and_training_never_calls_them(
    tmp_path, config
):
    prompts = _prompts(200)
    trainer = _trainer(config, prompts, text_embedding_cache_dir=str(tmp_path / "cache"))
    cache = trainer.text_cache
    assert cache.encoders_released and all(p in cache for p in prompts) and not cache.memory
    _forbid(trainer.pipeline.text_encoder), _forbid(trainer.pipeline.text_encoder_2)
    trainer.train()
    assert trainer.state.global_step == 2
    assert 0 < len(cache.memory) and cache.peak_memory_bytes <= cache.memory_budget_bytes
    _check_accounting(cache)


@pytest.mark.parametrize("value", [-1, float("nan"), float("inf"), "2GB", True])
def test_the_memory_budget_is_validated(tmp_path, value):
    with pytest.raises(ValueError, match=r"text_embedding_cache_memory_mb=.* is invalid: expected a finite number"):
        SRPOConfig(output_dir=str(tmp_path), text_embedding_cache_memory_mb=value)


# --------------------------------------------------------------------------------- shared disk cache


def test_ranks_share_the_disk_precompute_whatever_the_other_wrote_already(tmp_path):
    prompts = _prompts(10)
    first, second = _counting_adapter(tiny_flux_pipeline(0)), _counting_adapter(tiny_flux_pipeline(0))
    # Rank 0 finishes before rank 1 starts: rank 1 still encodes exactly its own share.
    assert TextEmbeddingCache(first, CPU, str(tmp_path)).precompute(prompts, rank=0, world_size=2)
    assert TextEmbeddingCache(second, CPU, str(tmp_path)).precompute(prompts, rank=1, world_size=2)
    assert first.encoded == prompts[0::2] and second.encoded == prompts[1::2]
    assert all(p in TextEmbeddingCache(first, CPU, str(tmp_path)) for p in prompts)


def _whole_and_exact(path: str, prompt: str, reference: dict[str, torch.Tensor]) -> bool:
    entry = _read_file(path, prompt)  # the file itself, not the reader's memory
    return entry is not None and all(torch.equal(entry[k], v) for k, v in reference.items())


def test_threads_encoding_the_same_prompts_at_once_leave_one_whole_file_each(tmp_path):
    prompts = _prompts(48)
    reference = _direct(get_adapter(tiny_flux_pipeline(0), max_sequence_length=SEQ), prompts)
    # A pipeline per thread, as per process: a tokenizer's padding settings are not safe to share across threads.
    caches = [TextEmbeddingCache(_counting_adapter(tiny_flux_pipeline(0)), CPU, str(tmp_path)) for _ in range(4)]
    batches = [prompts[i : i + 8] for i in range(0, len(prompts), 8)]
    done, reads, errors = threading.Event(), [], []

    def write(k):
        try:
            for batch in batches[k:] + batches[:k]:  # every writer asks for every batch, each from another one
                caches[k].get(batch)
        except Exception as error:  # reported below: an exception in a thread does not fail the test
            errors.append(error)

    def read():  # whatever file exists is whole
        while not done.is_set():
            for prompt in prompts:
                path = caches[0]._path(prompt)
                if os.path.isfile(path):
                    reads.append(prompt)
                    if not _whole_and_exact(path, prompt, reference[prompt]):
                        errors.append(AssertionError(f"partial or wrong file for {prompt!r}"))

    writers = [threading.Thread(target=write, args=(k,)) for k in range(4)]
    reader = threading.Thread(target=read)
    reader.start(), [w.start() for w in writers], [w.join() for w in writers]
    done.set(), reader.join()
    assert not errors, errors[:3]
    assert reads and all(_whole_and_exact(caches[0]._path(p), p, reference[p]) for p in prompts)
    files = [name for _, _, names in os.walk(tmp_path) for name in names]
    assert len(files) == len(prompts) and all(name.endswith(".safetensors") for name in files)  # no temp left
    # Each thread encoded at most what it found missing; together at least every prompt once.
    assert set(prompts) <= {p for c in caches for p in c.adapter.encoded}


def _overwrite(paths_and_prompts, entries, rounds):
    for _ in range(rounds):
        for (path, prompt), entry in zip(paths_and_prompts, entries, strict=True):
            text_cache._write_atomically(path, entry, prompt)


def test_processes_overwriting_the_files_never_show_a_reader_a_partial_one(tmp_path):
    # Separate processes, unlike threads, write while the reader reads (no shared interpreter lock). The entries
    # are 1 MB, so that a write takes many system calls: a writer that writes the file in place fails this test
    # at once (checked by hand).
    prompts = _prompts(8)
    generator = torch.Generator().manual_seed(0)
    reference = {p: {"prompt_embeds": torch.randn(256, 1024, generator=generator)} for p in prompts}
    cache = TextEmbeddingCache(get_adapter(tiny_flux_pipeline(0), max_sequence_length=SEQ), CPU, str(tmp_path))
    targets = [(cache._path(p), p) for p in prompts]
    entries = [reference[p] for p in prompts]
    _overwrite(targets, entries, 1)
    fork = multiprocessing.get_context("fork")  # the writers need nothing but this process's imports
    writers = [fork.Process(target=_overwrite, args=(targets, entries, 20)) for _ in range(2)]
    [w.start() for w in writers]
    reads = 0
    while any(w.is_alive() for w in writers):
        for path, prompt in targets:
            assert _whole_and_exact(path, prompt, reference[prompt]), f"partial or wrong file for {prompt!r}"
            reads += 1
    [w.join() for w in writers]
    assert all(w.exitcode == 0 for w in writers) and reads > 10
    files = [name for _, _, names in os.walk(tmp_path) for name in names]
    assert len(files) == len(prompts)  # no temporary file left behind


def test_an_unreadable_file_counts_as_missing_and_is_rewritten(tmp_path):
    adapter = _counting_adapter(tiny_flux_pipeline(0))
    cache = TextEmbeddingCache(adapter, CPU, str(tmp_path))
    expected = cache.get(["a cat"])
    with open(cache._path("a cat"), "r+b") as f:
        f.truncate(20)  # cut short, as by a crash on a filesystem without atomic rename
    fresh = TextEmbeddingCache(adapter, CPU, str(tmp_path))
    assert torch.equal(fresh.get(["a cat"])["prompt_embeds"], expected["prompt_embeds"])
    assert adapter.encoded == ["a cat", "a cat"] and TextEmbeddingCache(adapter, CPU, str(tmp_path))._read("a cat")


SCRIPT = textwrap.dedent(
    """
    import json, sys
    import torch
    from datasets import Dataset
    from srpo_trl import ColorWordReward, SRPOTrainer
    from srpo_trl.testing import tiny_flux_pipeline, tiny_srpo_config

    out, cache_dir, prompts = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
    args = tiny_srpo_config(out, max_sequence_length=8, text_embedding_cache_dir=cache_dir,
                            text_embedding_cache_memory_mb=0.02)
    pipe = tiny_flux_pipeline(0)
    encoded, encode = [], pipe.encode_prompt
    pipe.encode_prompt = lambda prompt, **kw: encoded.extend(prompt) or encode(prompt=prompt, **kw)
    trainer = SRPOTrainer(pipe, ColorWordReward(), args=args, train_dataset=Dataset.from_dict({"prompt": prompts}))
    rank = trainer.accelerator.process_index
    record = {"world": trainer.accelerator.num_processes, "encoded": list(encoded),
              "released": trainer.text_cache.encoders_released}
    torch.save(trainer.text_cache.get(prompts), f"{out}/rank{rank}.pt")
    with open(f"{out}/rank{rank}.json", "w") as f:
        json.dump(record, f)
    """
)


@pytest.mark.slow  # about a minute on 2 busy cores: two interpreters importing torch, diffusers and transformers
def test_two_processes_share_one_disk_cache(tmp_path):
    script, out, cache_dir = tmp_path / "share.py", tmp_path / "out", tmp_path / "cache"
    script.write_text(SCRIPT)
    out.mkdir()
    prompts = _prompts(40)
    command = [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines",
        "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "29561",
        str(script), str(out), str(cache_dir), json.dumps(prompts),
    ]  # fmt: skip
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    records = [json.loads((out / f"rank{r}.json").read_text()) for r in range(2)]
    assert all(r["world"] == 2 and r["released"] for r in records)
    assert records[0]["encoded"] == prompts[0::2] and records[1]["encoded"] == prompts[1::2]  # each its share
    reference = _direct(get_adapter(tiny_flux_pipeline(0), max_sequence_length=SEQ), prompts[0::2])
    reference.update(_direct(get_adapter(tiny_flux_pipeline(0), max_sequence_length=SEQ), prompts[1::2]))
    for rank in range(2):
        got = torch.load(out / f"rank{rank}.pt")
        for i, prompt in enumerate(prompts):
            for key, value in reference[prompt].items():
                assert torch.equal(got[key][i], value), (rank, prompt, key)
