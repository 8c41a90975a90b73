"""Record, in each process of a launched script, which files and folders it writes, renames or deletes.

`install(path, rank)` before anything else is imported; each write-like operation then appends one JSON line,
`{"rank", "event", "path"}` (plus `"to"` for renames and copies), to `path`. Two sources together:

- Python's audit hook: `open` for writing, `os.rename` / `os.replace`, `os.remove`, `os.mkdir`, `shutil.rmtree`, ...:
  every write that goes through Python, including torch.distributed.checkpoint's and the `json` / model-card writes.
- Wrappers around the two writers that write from native code, where no `open` passes through Python:
  `torch.save` (C++ `PyTorchFileWriter`) and `safetensors.torch.save_file` (Rust).

tests/write_records.py reads the records back. Used by distributed_train.py and save_resume.py.
"""

import json
import os
import sys

_WRITING = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC
_PATH_EVENTS = {"os.remove", "os.rmdir", "os.mkdir", "shutil.rmtree", "os.truncate"}
_PAIR_EVENTS = {"os.rename", "shutil.copyfile", "shutil.move"}


def install(log_path: str, rank: int) -> None:
    log = open(log_path, "a")  # opened before the hook: writing to it raises no further audit events
    busy = [False]

    def record(event: str, path, to=None) -> None:
        if busy[0] or not isinstance(path, (str, bytes, os.PathLike)):
            return
        busy[0] = True  # the hook's own work must not record itself
        try:
            row = {"rank": rank, "event": event, "path": os.path.abspath(os.fsdecode(path))}
            if to is not None:
                row["to"] = os.path.abspath(os.fsdecode(to))
            log.write(json.dumps(row) + "\n")
            log.flush()
        finally:
            busy[0] = False

    def hook(event, args):
        if event == "open" and isinstance(args[2], int) and args[2] & _WRITING:
            record("open", args[0])
        elif event in _PAIR_EVENTS:
            record(event, args[0], args[1])
        elif event in _PATH_EVENTS:
            record(event, args[0])

    sys.addaudithook(hook)
    _wrap_native_writers(record)


def _wrap_native_writers(record) -> None:
    import safetensors.torch
    import torch

    def wrap(module, name: str, position: int, keyword: str) -> None:
        original = getattr(module, name)

        def wrapper(*args, **kwargs):
            record(f"{module.__name__}.{name}", args[position] if len(args) > position else kwargs.get(keyword))
            return original(*args, **kwargs)

        setattr(module, name, wrapper)

    wrap(torch, "save", 1, "f")
    wrap(safetensors.torch, "save_file", 1, "filename")
