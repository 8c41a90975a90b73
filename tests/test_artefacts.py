"""Progress artefacts: sample images in the trackers, the reward curve, and one progress bar per run."""

import glob

from datasets import Dataset
from peft import LoraConfig
from PIL import Image

from srpo_trl import ColorWordReward, SRPOTrainer
from srpo_trl.testing import tiny_colour_flux_pipeline


def _images_in_tensorboard(log_dir):
    from tensorboard.backend.event_processing.event_accumulator import IMAGES, EventAccumulator

    steps = []
    for path in glob.glob(f"{log_dir}/**/events.out.tfevents.*", recursive=True):
        events = EventAccumulator(path, size_guidance={IMAGES: 0})
        events.Reload()
        for tag in events.Tags()["images"]:
            steps += [(tag, e.step) for e in events.Images(tag)]
    return steps


def test_samples_go_to_tensorboard_and_the_reward_curve_is_written(config, tmp_path, capsys):
    args = config(
        max_steps=4,
        report_to="tensorboard",
        sample_prompts=["a red house", "the blue sea"],
        sample_steps=2,
        disable_tqdm=False,
    )
    trainer = SRPOTrainer(
        tiny_colour_flux_pipeline(0),
        ColorWordReward(),
        args=args,
        train_dataset=Dataset.from_dict({"prompt": ["a cat", "a dog"]}),
        peft_config=LoraConfig(r=4, lora_alpha=4),
    )
    trainer.train()
    logged = _images_in_tensorboard(tmp_path / "out" / "runs")  # the TensorBoard callback's default folder
    # every 2 steps (steps 2 and 4), and once more at the end of training (step 4); one grid of both prompts each
    assert sorted(step for _, step in logged) == [2, 4, 4]
    curve = Image.open(tmp_path / "out" / "reward_curve.png")
    assert curve.size[0] > 100
    assert (tmp_path / "out" / "samples" / "sample_1.png").is_file()
    # One progress bar for the run: the rollout and the sampling never open their own.
    err = capsys.readouterr().err
    bars = [line for line in err.replace("\r", "\n").splitlines() if "it/s]" in line or "s/it]" in line]
    assert bars and all("/4 [" in line for line in bars), bars[:5]


TRACKIO_SCRIPT = """
import sys
from datasets import Dataset
from peft import LoraConfig
from srpo_trl import ColorWordReward, SRPOTrainer
from srpo_trl.testing import tiny_colour_flux_pipeline
from srpo_trl.testing import tiny_srpo_config

args = tiny_srpo_config(sys.argv[1], max_steps=2, report_to="trackio", project="srpo-test", run_name="run0",
                        sample_prompts=["a red house", "the blue sea"], sample_steps=1)
trainer = SRPOTrainer(tiny_colour_flux_pipeline(0), ColorWordReward(), args=args,
                      train_dataset=Dataset.from_dict({"prompt": ["a cat", "a dog"]}),
                      peft_config=LoraConfig(r=4, lora_alpha=8))
trainer.train()
"""


def test_trackio_gets_the_metrics_and_the_sample_images_offline(tmp_path):
    """TRL's recommended tracker, local only (its storage is chosen by TRACKIO_DIR when it is imported)."""
    import json
    import os
    import sqlite3
    import subprocess
    import sys

    script = tmp_path / "run.py"
    script.write_text(TRACKIO_SCRIPT)
    env = {**os.environ, "TRACKIO_DIR": str(tmp_path / "trackio"), "HF_HUB_OFFLINE": "1"}
    env.pop("TRACKIO_SPACE_ID", None)
    done = subprocess.run(
        [sys.executable, str(script), str(tmp_path / "out")], env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    with sqlite3.connect(tmp_path / "trackio" / "srpo-test.db") as db:
        rows = [(step, json.loads(metrics)) for step, metrics in db.execute("select step, metrics from metrics")]
    assert any("train/reward/denoise" in metrics for _, metrics in rows)
    samples = [(step, m) for step, m in rows if "samples/0" in m]
    # every step (1 and 2), and once more at the end of training (step 2); each with both prompts' images
    assert sorted(step for step, _ in samples) == [1, 2, 2]
    for _, metrics in samples:
        assert [metrics[f"samples/{i}"]["caption"] for i in (0, 1)] == ["a red house", "the blue sea"]
        image = Image.open(tmp_path / "trackio" / "media" / metrics["samples/1"]["file_path"])
        assert image.size == (64, 64)
