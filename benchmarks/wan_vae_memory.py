"""Memory and time of Wan's VAE decode with gradient: the stock `vae.decode` against the chunked, checkpointed decode
(`srpo_trl.models.wan_decode.checkpointed_decode`), on the real Wan 2.1 VAE architecture (`AutoencoderKLWan()`'s
default config, random weights, frozen as in training, CPU, float32; nothing is downloaded).

Each case and mode runs in its own subprocess (so that no other case's freed memory can hide its peak), which repeats
one decode of `F x H x W` plus a backward to the latents `--repeats` times. It reports:

- `peak_mb`: the peak resident memory of the decode and backward above the resident memory just before it (Linux:
  `VmHWM` reset through `/proc/self/clear_refs` before each decode; glibc's mmap threshold is fixed at 64 KiB so
  that large freed blocks go back to the system between repeats instead of staying in the heap);
- `saved_mb`: what the backward keeps, counted exactly: the unique storages of the tensors saved for backward
  (`torch.autograd.graph.saved_tensors_hooks`, parameters left out) plus, for the checkpointed decode, the tensors
  each checkpoint keeps as its inputs (the latent chunk and the causal caches);
- `seconds`: wall time of decode + backward, and `cpu_seconds`, the process's CPU time for it (one thread: steadier
  than the wall time on a shared machine).

MB = 10^6 bytes. Medians over the repeats.

    OMP_NUM_THREADS=1 python benchmarks/wan_vae_memory.py                       # the default cases
    OMP_NUM_THREADS=1 python benchmarks/wan_vae_memory.py --cases 5x64x64 9x64x64 --repeats 3
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import subprocess
import sys
import time

DEFAULT_CASES = ["1x64x64", "5x64x64", "9x64x64", "17x64x64", "5x128x128"]


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _measure(vae, mode: str, frames: int, height: int, width: int, seed: int) -> dict:
    import torch

    from srpo_trl.models import wan_decode

    torch.manual_seed(seed)
    latent_frames = (frames - 1) // 4 + 1
    z = torch.randn(1, vae.config.z_dim, latent_frames, height // 8, width // 8, requires_grad=True)

    params = {p.untyped_storage().data_ptr() for p in vae.parameters()}
    saved: dict[int, int] = {}

    def pack(t):
        storage = t.untyped_storage()
        if storage.data_ptr() not in params:
            saved[storage.data_ptr()] = storage.nbytes()
        return t

    real_checkpoint = wan_decode.checkpoint

    def counting_checkpoint(fn, *args, **kwargs):  # a checkpoint keeps its tensor inputs for the recomputation
        for arg in args:
            if isinstance(arg, torch.Tensor):
                pack(arg)
        return real_checkpoint(fn, *args, **kwargs)

    wan_decode.checkpoint = counting_checkpoint
    gc.collect()
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM to the current resident size
    before_kb = _status_kb("VmRSS")
    start, cpu_start = time.perf_counter(), time.process_time()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        if mode == "plain":
            video = vae.decode(z, return_dict=False)[0]
        else:
            video = wan_decode.checkpointed_decode(vae, z)
    video.mean().backward()
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    peak_kb = _status_kb("VmHWM")
    wan_decode.checkpoint = real_checkpoint
    assert video.shape == (1, 3, frames, height, width), video.shape
    return {
        "mode": mode,
        "case": f"{frames}x{height}x{width}",
        "peak_mb": (peak_kb - before_kb) * 1024 / 1e6,
        "saved_mb": sum(saved.values()) / 1e6,
        "seconds": seconds,
        "cpu_seconds": cpu_seconds,
    }


def _child(mode: str, case: str, repeats: int) -> list[dict]:
    import torch
    from diffusers import AutoencoderKLWan

    torch.manual_seed(0)
    vae = AutoencoderKLWan().eval().requires_grad_(False)  # frozen, as in training: the gradient goes to the latents
    frames, height, width = (int(v) for v in case.split("x"))
    return [_measure(vae, mode, frames, height, width, seed) for seed in range(repeats)]


def _run_child(mode: str, case: str, repeats: int) -> list[dict]:
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536")
    env.setdefault("OMP_NUM_THREADS", "1")
    cmd = [sys.executable, __file__, "--child", mode, case, str(repeats)]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", nargs="+", default=DEFAULT_CASES, help="FxHxW cases (F = 4k + 1 frames)")
    parser.add_argument("--modes", nargs="+", default=["plain", "checkpointed"])
    parser.add_argument("--repeats", type=int, default=3, help="decodes per case and mode (medians)")
    parser.add_argument("--json_out", help="append one JSON line per case and mode")
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        mode, case, repeats = args.child
        print(json.dumps(_child(mode, case, int(repeats))))
        return
    columns = ("peak_mb", "saved_mb", "seconds", "cpu_seconds")
    print(f"{'case':>10} {'mode':>12} {'peak MB':>9} {'saved MB':>9} {'seconds':>8} {'CPU s':>8}  (medians)")
    for case in args.cases:
        for mode in args.modes:
            runs = _run_child(mode, case, args.repeats)
            row = {
                "case": case,
                "mode": mode,
                "repeats": args.repeats,
                **{k: statistics.median(r[k] for r in runs) for k in columns},
                "peak_mb_all": [round(r["peak_mb"], 1) for r in runs],
                "seconds_all": [round(r["seconds"], 2) for r in runs],
                "cpu_seconds_all": [round(r["cpu_seconds"], 2) for r in runs],
            }
            values = " ".join(
                f"{row[k]:{9 if k.endswith('mb') else 8}.{1 if k.endswith('mb') else 2}f}" for k in columns
            )
            print(f"{case:>10} {mode:>12} {values}", flush=True)
            if args.json_out:
                with open(args.json_out, "a") as f:
                    f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
