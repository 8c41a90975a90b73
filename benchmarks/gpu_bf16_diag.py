"""Where do non-finite gradients come from in bf16 training of the tiny pipeline on a GPU?

The first GPU validation run (docs/benchmarks.md) found that the tiny pipeline, trained with
`SRPOConfig(bf16=True)` on an H200, had NaN gradients in many steps (the non-finite guard skipped them and
stopped the run). This script runs short bf16 trainings of the same set-up under each attention backend
and reports, for each, the skipped steps and the held-out reward before and after; then it runs one
training step under `torch.autograd.detect_anomaly` and prints the operation whose backward made the NaN.

    python3 benchmarks/gpu_bf16_diag.py [--steps 20] [--cpu]

Writes `$OUT/gpu_bf16_diag.json` (default ./gpu_out).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
import traceback

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # gpu_validation.py beside this file


def _trainer(steps: int, seed: int, cpu: bool, **overrides):
    """gpu_validation.py's tiny bf16 set-up, counting non-finite steps instead of stopping on them."""
    from gpu_validation import tiny_bf16_trainer

    return tiny_bf16_trainer(steps, seed, cpu, logging_steps=1000, max_consecutive_nonfinite_steps=0, **overrides)


def _backend(name: str):
    if name == "default":
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel({"math": SDPBackend.MATH, "efficient": SDPBackend.EFFICIENT_ATTENTION,
                        "flash": SDPBackend.FLASH_ATTENTION, "cudnn": SDPBackend.CUDNN_ATTENTION}[name])  # fmt: skip


def run_variant(name: str, steps: int, cpu: bool, **overrides) -> dict:
    start = time.perf_counter()
    try:
        with _backend(name.split("+")[0]):
            trainer = _trainer(steps, 0, cpu, **overrides)
            before = trainer.evaluate()["eval_reward"]
            trainer.train()
            after = trainer.evaluate()["eval_reward"]
        guard = trainer._nonfinite_guard
        return {"variant": name, "skipped_steps": guard.skipped_total, "steps": steps, "reward_before": before,
                "reward_after": after, "seconds": time.perf_counter() - start}  # fmt: skip
    except Exception as error:  # noqa: BLE001
        return {"variant": name, "error": f"{type(error).__name__}: {error}", "seconds": time.perf_counter() - start}


def anomaly_trace(cpu: bool, tries: int = 12) -> dict:
    """Train step by step under anomaly detection until a backward produces NaN; return where."""
    trainer = _trainer(tries, 0, cpu)
    try:
        with torch.autograd.detect_anomaly(check_nan=True):
            trainer.train()
        return {"found": False, "note": f"no NaN in {tries} steps under anomaly detection"}
    except Exception as error:  # noqa: BLE001
        return {
            "found": True,
            "error": f"{type(error).__name__}: {error}"[:2000],
            "traceback": traceback.format_exc()[-6000:],
        }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--cpu", action="store_true")
    opts = parser.parse_args()
    out = os.environ.get("OUT", "gpu_out")
    os.makedirs(out, exist_ok=True)
    results = {"torch": torch.__version__, "device": "cpu" if opts.cpu else torch.cuda.get_device_name(0)}
    variants = ["default", "math", "efficient", "flash"] if not opts.cpu else ["default", "math"]
    results["variants"] = []
    for name in variants:
        results["variants"].append(run_variant(name, opts.steps, opts.cpu))
        print(json.dumps(results["variants"][-1]), flush=True)
    results["fp32"] = run_variant("default+fp32", opts.steps, opts.cpu, bf16=False)
    print(json.dumps(results["fp32"]), flush=True)
    results["anomaly"] = anomaly_trace(opts.cpu)
    print(results["anomaly"].get("error", results["anomaly"].get("note")), flush=True)
    print(results["anomaly"].get("traceback", "")[-3000:], flush=True)
    with open(os.path.join(out, "gpu_bf16_diag.json"), "w") as f:
        json.dump(results, f, indent=2, default=str)


if __name__ == "__main__":
    main()
