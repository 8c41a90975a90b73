"""Checks on what launched trainings saved: which process wrote each file (read from the records of
tests/scripts/write_recorder.py), and the saved result as a stock diffusers pipeline loads it."""

from __future__ import annotations

import glob
import json
import os
from collections import defaultdict

FILE_WRITES = {"open", "torch.save", "safetensors.torch.save_file"}
COPIES = {"shutil.copyfile", "shutil.move"}  # recorded with their destination in "to"
RENAMES = {"os.rename", "shutil.move"}


def read_records(records_dir: str) -> list[dict]:
    """Every process's records, rank 0's first, each in the order it wrote them."""
    rows = []
    for path in sorted(glob.glob(os.path.join(records_dir, "writes-rank*.jsonl"))):
        with open(path) as f:
            rows.extend(json.loads(line) for line in f)
    return rows


def _published(path: str, renames: list[tuple[str, str]]) -> str:
    """Where a file written at `path` ended up, following renames of it or of a folder above it."""
    for source, target in renames:
        if path == source or path.startswith(source + os.sep):
            path = target + path[len(source) :]
    return path


def writers(records: list[dict], folder: str) -> dict[str, set[int]]:
    """`{path relative to folder: ranks that wrote it}` for the files written under `folder`, where they ended up.

    A file written into a staging folder that was then renamed counts at its final place. Opening a folder (as
    `tempfile` does when it creates a file in it) is not a file write.
    """
    folder = os.path.abspath(folder)
    renames = [(row["path"], row["to"]) for row in records if row["event"] in RENAMES]
    result: dict[str, set[int]] = defaultdict(set)
    for row in records:
        if row["event"] in FILE_WRITES:
            path = row["path"]
        elif row["event"] in COPIES:
            path = row["to"]
        else:
            continue
        path = _published(path, renames)
        if path.startswith(folder + os.sep) and not os.path.isdir(path):
            result[os.path.relpath(path, folder)].add(row["rank"])
    return dict(result)


def files_in(folder: str) -> set[str]:
    paths = (os.path.join(root, name) for root, _, names in os.walk(folder) for name in names)
    return {os.path.relpath(path, folder) for path in paths}


#: What other processes than the main one write under output_dir, by design:
#: - `rng_state_{rank}.pth` in each checkpoint: the Trainer's `_save_rng_state` saves each process's own random
#:   number generators, which only that process has (and reads back on resume);
#: - `.srpo-write-check-*`: `SRPOTrainer.__init__` checks on every process that output_dir is writable (on several
#:   machines each has its own disk) with a temporary file that is deleted at once.
def allowed_for_other_ranks(path: str, rank: int) -> bool:
    name = os.path.basename(path)
    return name == f"rng_state_{rank}.pth" or name.startswith(".srpo-write-check-")


def lora_loaded_by_diffusers(folder) -> dict:
    """The LoRA in `folder` as diffusers' stock `FluxPipeline.load_lora_weights` loads it onto the tiny base, named
    as the trainer names its parameters (`...lora_A.default.weight`)."""
    from diffusers import FluxPipeline
    from peft.utils import get_peft_model_state_dict

    from srpo_trl.testing import tiny_colour_flux_pipeline

    pipe = tiny_colour_flux_pipeline(0)  # the base the LoRA was trained on
    assert type(pipe) is FluxPipeline
    pipe.load_lora_weights(str(folder))
    (adapter,) = pipe.transformer.peft_config
    weights = get_peft_model_state_dict(pipe.transformer, adapter_name=adapter)  # without the adapter's name
    return {name.replace(".weight", ".default.weight"): tensor for name, tensor in weights.items()}
