"""A second run never silently replaces the first: what counts as a previous result in an output folder, the refusal,
and the explicit overwrite.

transformers 5 dropped `overwrite_output_dir`, and with it the only guard: a relaunch without
`--resume_from_checkpoint` would replace the weights and, step by step, every checkpoint of the run before it. Every
entry point that writes a result (`SRPOTrainer.train`, `srpo-trl train`, `srpo-trl demo`, `srpo-trl eval`) checks its
output folder with [`refuse_previous_result`] before any expensive work. The two ways on are to resume (the folder is
kept as it is) or to overwrite explicitly (the previous result is deleted first, so that the folder never mixes two
runs: a stale `checkpoint-900` beside a new `checkpoint-2` would be what the next `resume_from_checkpoint=True` picks).
"""

from __future__ import annotations

import logging
import os
import re
import shutil

from .checkpointing import LORA_WEIGHTS_NAME, STAGING_DIR_NAME

logger = logging.getLogger(__name__)

#: Files a previous run leaves that a new one would replace: weights, the config they were trained with, evaluation
#: results (`srpo-trl eval`'s and the demo's), and the pictures made from them.
RESULT_FILES = (
    LORA_WEIGHTS_NAME,
    "training_args.bin",
    "eval.json",
    "eval_grid.png",
    "demo_results.json",
    "before_after.png",
    "reward_curve.png",
    "all_results.json",
    "train_results.json",
    "eval_results.json",
)
#: Folders of a previous run: a full fine-tune's weights, the sample images, the checkpoints being written.
RESULT_DIRS = ("transformer", "samples", STAGING_DIR_NAME)
_CHECKPOINT = re.compile(r"^checkpoint-\d+$")


def previous_result(output_dir: str, extra: tuple[str, ...] = ()) -> list[str]:
    """The entries of `output_dir` that a previous run left (sorted names); empty when the folder is new or unused.

    `extra` names more entries that count for one entry point (the demo's `eval/` folder, for instance).
    """
    if not os.path.isdir(output_dir):
        return []
    found = []
    for name in os.listdir(output_dir):
        path = os.path.join(output_dir, name)
        if os.path.isdir(path):
            if name in RESULT_DIRS or name in extra or _CHECKPOINT.match(name):
                found.append(name)
        elif name in RESULT_FILES or name in extra:
            found.append(name)
    return sorted(found, key=_natural_key)


def _natural_key(name: str) -> tuple:
    match = _CHECKPOINT.match(name)
    return (1, int(name.rsplit("-", 1)[1])) if match else (0, name)


def _shown(names: list[str], most: int = 6) -> str:
    return ", ".join(names[:most]) + (f" and {len(names) - most} more" if len(names) > most else "")


def refuse_previous_result(
    output_dir: str,
    entry_point: str,
    *,
    overwrite: bool,
    resume: bool | str | None = None,
    can_resume: bool = True,
    extra: tuple[str, ...] = (),
    overwrite_effect: str = "deletes the previous result first",
) -> None:
    """Stop when `output_dir` holds a previous result, unless the run resumes or overwrites it explicitly.

    Args:
        output_dir: the folder the run writes to.
        entry_point: how the user started the run, for the message (`"SRPOTrainer.train()"`, `"srpo-trl demo"`).
        overwrite: `overwrite_output_dir` was set: the previous result may be replaced.
        resume: `resume_from_checkpoint` as given (`True` or a checkpoint path continue the run in the folder).
        can_resume: whether this entry point can resume at all (the demo and `srpo-trl eval` cannot).
        extra: more entries that count as a previous result for this entry point.
        overwrite_effect: what an overwrite does to the folder, for the message.
    """
    if overwrite or resume:
        return
    found = previous_result(output_dir, extra)
    if not found:
        return
    python = entry_point == "SRPOTrainer.train()"
    ways = []
    if can_resume:
        ways.append(
            "resume it: train(resume_from_checkpoint=True)"
            if python
            else "resume it: --resume_from_checkpoint true (or a checkpoint's path)"
        )
    ways.append(
        f"replace it: SRPOConfig(overwrite_output_dir=True), which {overwrite_effect}"
        if python
        else f"replace it: --overwrite_output_dir ({overwrite_effect})"
    )
    ways.append("or choose another output_dir" if python else "or choose another --output_dir")
    raise FileExistsError(
        f"{entry_point}: output_dir {output_dir!r} holds a previous result ({_shown(found)}); this run would "
        f"replace it. To go on, " + "; ".join(ways) + "."
    )


def resume_argument(value: bool | str | None) -> bool | str | None:
    """`resume_from_checkpoint` as `Trainer.train` takes it: `True` (the last checkpoint in output_dir), a path, or
    `None`. The command line gives strings: "true" and "false" mean the booleans."""
    if isinstance(value, str) and value.strip().lower() in ("true", "false", ""):
        return True if value.strip().lower() == "true" else None
    return value or None


def clear_previous_result(output_dir: str, extra: tuple[str, ...] = ()) -> list[str]:
    """Delete what [`previous_result`] finds in `output_dir` (for an explicit overwrite); other files stay. Returns
    the deleted names."""
    found = previous_result(output_dir, extra)
    for name in found:
        path = os.path.join(output_dir, name)
        if os.path.isdir(path):
            shutil.rmtree(path)
        else:
            os.remove(path)
    return found


def claim_for_training(args, resume: bool | str | None, on_any_process, wait_for_everyone) -> None:
    """What `SRPOTrainer.train()` does with its output folder before the first step: refuse a previous result
    (on every process when any one sees it, so that no process is left waiting in a collective), or delete it for
    an explicit `overwrite_output_dir` (on the process that saves). A resumed run keeps the folder as it is."""
    try:
        refuse_previous_result(
            args.output_dir, "SRPOTrainer.train()", overwrite=args.overwrite_output_dir, resume=resume
        )
        refusal = None
    except FileExistsError as error:
        refusal = error
    if on_any_process(refusal is not None):
        raise refusal or FileExistsError(
            f"SRPOTrainer.train(): output_dir {args.output_dir!r} holds a previous result on another process's "
            "machine; resume it, set overwrite_output_dir, or choose another output_dir"
        )
    if args.overwrite_output_dir and not resume and args.should_save:
        removed = clear_previous_result(args.output_dir)
        if removed:
            logger.warning(
                "overwrite_output_dir: deleted the previous result in %s: %s", args.output_dir, _shown(removed)
            )
    wait_for_everyone()
