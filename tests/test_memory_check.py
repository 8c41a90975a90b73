"""`SRPOConfig.memory_check`: before any weights load on a CUDA device, the planner's estimate against the free memory.

There is no GPU here: the device's (free, total) memory is given to `check_before_loading`, or stands in for
`torch.cuda.mem_get_info` through `srpo_trl.memory_check.device_memory`. The estimate itself is the planner's,
checked against real CPU steps in tests/test_plan.py.
"""

from __future__ import annotations

import logging

import pytest
from datasets import Dataset

from srpo_trl import SRPOTrainer, testing
from srpo_trl.memory_check import GB, check_before_loading, engine_from_environment, recipe_for_run
from srpo_trl.planning.estimate import estimate

TRAIN = Dataset.from_dict({"prompt": ["a cat", "a dog on a hill"]})


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("memory-check") / "tiny-flux"
    testing.tiny_flux_pipeline().save_pretrained(folder)
    return str(folder)


def _planned(folder, args) -> int:
    return estimate(recipe_for_run(folder, [testing.tiny_clip_reward()], args, None), without_checkpointing=False)


def test_the_engine_comes_from_the_launch_environment():
    assert engine_from_environment({}) == ("none", 1)
    assert engine_from_environment({"WORLD_SIZE": "4"}) == ("ddp", 4)
    assert engine_from_environment({"WORLD_SIZE": "8", "ACCELERATE_USE_FSDP": "true"}) == ("fsdp2", 8)
    zero3 = {"WORLD_SIZE": "2", "ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_DEEPSPEED_ZERO_STAGE": "3"}
    assert engine_from_environment(zero3) == ("zero3", 2)
    assert engine_from_environment({**zero3, "ACCELERATE_DEEPSPEED_ZERO_STAGE": "2"}) == ("zero2", 2)


def test_the_recipe_is_the_runs(config, tiny_folder):
    from peft import LoraConfig

    args = config(memory_check="warn", per_device_train_batch_size=2)
    args.bf16 = True  # what it resolves to on a GPU (a CPU refuses it at construction)
    lora = LoraConfig(r=8, lora_alpha=16, target_modules=["to_q", "to_k"])
    recipe = recipe_for_run(tiny_folder, ["clip"], args, lora)
    assert (recipe.lora_r, recipe.lora_alpha, recipe.lora_target_modules) == (8, 16, ["to_k", "to_q"])
    assert recipe.batch_size == 2 and recipe.resolution == tuple(args.image_size) and recipe.autocast == "cuda"
    assert recipe.rollout_steps == args.rollout_steps and recipe.reward == "clip"
    assert recipe_for_run(tiny_folder, ["clip"], config(), None).autocast is None  # bf16 off: no autocast


def test_strict_stops_before_any_weights_load(config, tiny_folder, monkeypatch):
    import srpo_trl.memory_check
    import srpo_trl.trainer

    def no_load(*args, **kwargs):
        raise AssertionError("weights were loaded")

    monkeypatch.setattr(srpo_trl.trainer, "load_pipeline", no_load)
    monkeypatch.setattr(srpo_trl.memory_check, "device_memory", lambda: (2 * GB, 24 * GB))
    args = config(memory_check="strict")
    with pytest.raises(MemoryError, match="does NOT fit") as error:
        SRPOTrainer(tiny_folder, [testing.tiny_clip_reward()], args=args, train_dataset=TRAIN)
    assert "memory_check='strict'" in str(error.value) and "estimated peak" in str(error.value)


def test_warn_names_the_changes_that_fit_and_the_logs_carry_the_estimate(config, tiny_folder, caplog):
    args = config(memory_check="warn")
    peak = _planned(tiny_folder, args).overall_peak()
    # A device whose free memory, after the allowance for a 24 GB card, is 1 KB short of the estimate.
    allowance = int(1.5 * GB + 0.05 * 24 * GB)
    free = allowance + peak - 1000
    with caplog.at_level(logging.WARNING, logger="srpo_trl"):
        check = check_before_loading(tiny_folder, [testing.tiny_clip_reward()], args, None, (free, 24 * GB))
    assert check.planned_peak == peak and check.fits is False
    assert "does NOT fit, 0.00 GB over" in caplog.text and "\n  - 8-bit AdamW" in caplog.text  # a change that fits
    roomy = check_before_loading(tiny_folder, [testing.tiny_clip_reward()], args, None, (free + 1000, 24 * GB))
    assert roomy.fits is True and roomy.metrics() == {"memory/planned_peak_gb": round(peak / GB, 3)}


def test_off_and_cpu_runs_skip_the_estimate(config, tiny_folder):
    reward = [testing.tiny_clip_reward()]
    assert check_before_loading(tiny_folder, reward, config(memory_check="off"), None, (1, GB)).planned_peak is None
    assert check_before_loading(tiny_folder, reward, config(), None, None).planned_peak is None  # no CUDA here


def test_a_model_the_planner_cannot_size_is_logged_not_refused(config, caplog):
    # A Hub id whose configs do not ship (nothing is downloaded): even `strict` lets the run go on.
    with caplog.at_level(logging.WARNING, logger="srpo_trl"):
        check = check_before_loading("someone/unknown-model", ["clip"], config(memory_check="strict"), None, (1, GB))
    assert check.planned_peak is None and "memory_check: not checked" in caplog.text


def test_under_warn_the_trainer_loads_anyway_and_logs_the_estimate(config, tiny_folder, monkeypatch, caplog):
    import srpo_trl.memory_check

    monkeypatch.setattr(srpo_trl.memory_check, "device_memory", lambda: (2 * GB, 24 * GB))
    with caplog.at_level(logging.WARNING, logger="srpo_trl"):
        trainer = SRPOTrainer(tiny_folder, [testing.tiny_clip_reward()], args=config(), train_dataset=TRAIN)
    assert "does NOT fit" in caplog.text and trainer.memory_check.planned_peak > 0
    trainer.log({"loss": 0.0})
    assert trainer.state.log_history[-1]["memory/planned_peak_gb"] == round(trainer.memory_check.planned_peak / GB, 3)
