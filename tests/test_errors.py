"""Fail early, lose nothing: every bad input errors before model work, with the field, value and fix named.

Each case goes through the public API (`SRPOConfig`, `SRPOTrainer`, `load_reward`) and asserts on the
message. Cases that need no pipeline give `model` as a path that does not exist: reaching the pipeline
loader would raise a different error, so passing proves the check ran before any model work.
"""

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import torch
from datasets import Dataset
from peft import LoraConfig
from transformers import TrainerCallback

from srpo_trl import ColorWordReward, SRPOConfig, SRPOTrainer
from srpo_trl.rewards import load_reward
from srpo_trl.testing import tiny_colour_flux_pipeline, tiny_flux_pipeline

PROMPTS = Dataset.from_dict({"prompt": ["a cat", "a dog", "a house", "the sea"]})
TIMINGS: dict[str, float] = {}  # seconds from the call to the error, printed at the end (pytest -s)


@pytest.fixture(scope="module", autouse=True)
def _report_timings():
    yield
    if TIMINGS:
        slowest = max(TIMINGS, key=TIMINGS.get)
        print(f"\nearly errors: {len(TIMINGS)} timed; slowest {slowest} after {TIMINGS[slowest]:.3f} s")


def trl_style_reward(prompts, completions, **kwargs):
    """A TRL reward function: scores text completions, not images."""
    return [float(len(c)) for c in completions]


def _never_loaded(tmp_path):
    return str(tmp_path / "pipeline-that-is-never-loaded")


# ------------------------------------------------------------------- config values (SRPOConfig itself)

CONFIG_CASES = [
    ("rho_high", dict(rho=1.0), r"SRPOConfig.rho=1.0 is invalid: must be in the open interval \(0, 1\)"),
    ("rho_zero", dict(rho=0.0), r"SRPOConfig.rho=0.0 is invalid"),
    ("lr", dict(learning_rate=0.0), r"SRPOConfig.learning_rate=0.0 is invalid: must be positive"),
    ("lr_negative", dict(learning_rate=-1e-5), r"learning_rate=-1e-05 is invalid"),
    ("rollout", dict(rollout_steps=0), r"SRPOConfig.rollout_steps=0 is invalid: must be at least 1"),
    (
        "window_order",
        dict(window_start_index=30, window_end_index=10),
        r"window_start_index/window_end_index=\(30, 10\)",
    ),
    ("window_range", dict(window_end_index=60), r"need 0 <= start < end <= window_grid_steps \(50\)"),
    ("levels", dict(num_levels=5), r"SRPOConfig.num_levels=5 is invalid: must be at least 11"),
    ("resolution_type", dict(resolution=[64, 64, 64]), r"SRPOConfig.resolution=\[64, 64, 64\] is invalid"),
    (
        "words_string",
        dict(positive_control_words="Real"),
        r"positive_control_words='Real' is invalid: expected a list",
    ),
    ("preset", dict(control_words="painterly"), r"control_words='painterly' is not a preset; valid presets"),
    ("reward_dtype", dict(reward_dtype="int4"), r"reward_dtype='int4' is invalid: expected one of"),
    ("hinge_type", dict(hinge_threshold=["high"]), r"hinge_threshold=\['high'\] is invalid: expected a number"),
    ("hinge_nan", dict(hinge_threshold=float("nan")), r"hinge_threshold=nan is invalid"),
    ("trainable_dtype", dict(trainable_dtype="float16"), r"trainable_dtype='float16' is invalid: expected one of"),
    ("nonfinite", dict(max_consecutive_nonfinite_steps=-1), r"max_consecutive_nonfinite_steps=-1 is invalid"),
]


@pytest.mark.parametrize("name, overrides, message", CONFIG_CASES, ids=[c[0] for c in CONFIG_CASES])
def test_config_values(tmp_path, name, overrides, message):
    start = time.perf_counter()
    with pytest.raises(ValueError, match=message):
        SRPOConfig(str(tmp_path), report_to="none", **overrides)
    TIMINGS[name] = time.perf_counter() - start


# ----------------------------------------------------------------- trainer inputs (before model work)


def _trainer_cases(tmp_path):
    bad_rows = Dataset.from_dict({"prompt": ["a cat", "", None]})
    return [
        ("empty_dataset", dict(train_dataset=Dataset.from_dict({"prompt": []})), r"train_dataset is empty"),
        (
            "missing_prompt_column",
            dict(train_dataset=Dataset.from_dict({"caption": ["a cat"]})),
            r"train_dataset has no column 'prompt'; its columns are \['caption'\]\. Set SRPOConfig.dataset_prompt_column",
        ),
        (
            "bad_prompts",
            dict(train_dataset=bad_rows),
            r"2 of 3 rows have an empty or non-string 'prompt' \(row 1: '', row 2: None",
        ),
        (
            "offline_without_images",
            dict(args_overrides=dict(offline=True)),
            r"train_dataset has no column 'image'.*SRPOConfig.dataset_image_column",
        ),
        (
            "empty_control_words",
            dict(args_overrides=dict(negative_control_words=[])),
            r"SRPOConfig.negative_control_words is empty, but a text-conditioned reward is in use",
        ),
        ("unknown_reward", dict(reward_funcs="hps-v9"), r"'hps-v9' is neither a registered reward name.*names: \["),
        (
            "missing_reward_path",
            dict(reward_funcs=f"hpsv2.1:{tmp_path / 'no.pt'}"),
            r"reward 'hpsv2.1': local path .*no.pt' does not exist",
        ),
        (
            "hinge_thresholds",
            dict(args_overrides=dict(hinge_threshold=[0.7, 10.0, 1.0]), reward_funcs=[ColorWordReward()] * 2),
            r"SRPOConfig.hinge_threshold has 3 values but there are 2 reward functions",
        ),
        (
            "reward_weights",
            dict(args_overrides=dict(reward_weights=[1.0, 0.5])),
            r"SRPOConfig.reward_weights has 2 values but there are 1 reward functions",
        ),
        ("reward_type", dict(reward_funcs=42), r"reward_funcs: expected a srpo_trl.rewards.Reward or a callable"),
        (
            "trl_text_reward",
            dict(reward_funcs=trl_style_reward),
            r"reward_funcs: trl_style_reward\(prompts, completions, \*\*kwargs\) looks like a TRL text reward.*"
            r"fn\(images, prompts\) -> Tensor\[B\]",
        ),
        ("output_dir", dict(args_overrides=dict(output_dir="FILE")), r"SRPOConfig.output_dir=.* cannot be written"),
    ]


TRAINER_CASE_IDS = [c[0] for c in _trainer_cases(__import__("pathlib").Path("/nonexistent"))]


@pytest.mark.parametrize("index", range(len(TRAINER_CASE_IDS)), ids=TRAINER_CASE_IDS)
def test_trainer_inputs_fail_before_model_work(tmp_path, config, index):
    name, case, message = _trainer_cases(tmp_path)[index]
    overrides = dict(case.get("args_overrides", {}))
    if overrides.get("output_dir") == "FILE":
        (tmp_path / "a-file").write_text("not a folder")
        overrides["output_dir"] = str(tmp_path / "a-file" / "out")
    start = time.perf_counter()
    with pytest.raises((ValueError, TypeError, FileNotFoundError), match=message):
        SRPOTrainer(
            _never_loaded(tmp_path),
            case.get("reward_funcs", ColorWordReward()),
            args=config(**overrides),
            train_dataset=case.get("train_dataset", PROMPTS),
        )
    TIMINGS[name] = time.perf_counter() - start


# ------------------------------------------------------------- checks that need the (tiny) pipeline


@pytest.mark.parametrize(
    "name, kwargs, message",
    [
        (
            "resolution",
            dict(args_overrides=dict(resolution=72)),
            r"SRPOConfig.resolution=72 is invalid: height and width must be multiples of 16",
        ),
        (
            "lora_targets",
            dict(peft_config=LoraConfig(r=4, target_modules=["to_qq", "nope"])),
            r"target_modules=\['nope', 'to_qq'\] matches no module of the transformer; examples of valid names",
        ),
        ("unsupported_pipeline", dict(model="not-a-pipeline-object"), r"unsupported pipeline class"),
    ],
)
def test_pipeline_dependent_inputs(tmp_path, config, name, kwargs, message):
    model = tiny_flux_pipeline(0)
    if kwargs.get("model") == "not-a-pipeline-object":
        model = torch.nn.Linear(2, 2)
    start = time.perf_counter()
    with pytest.raises(ValueError, match=message):
        SRPOTrainer(
            model,
            ColorWordReward(),
            args=config(**kwargs.get("args_overrides", {})),
            train_dataset=PROMPTS,
            peft_config=kwargs.get("peft_config"),
        )
    TIMINGS[name] = time.perf_counter() - start


def test_unsupported_family_in_a_local_folder(tmp_path, config):
    folder = tmp_path / "sd15"
    folder.mkdir()
    (folder / "model_index.json").write_text('{"_class_name": "StableDiffusionPipeline"}')
    start = time.perf_counter()
    with pytest.raises(ValueError, match="unsupported pipeline class 'StableDiffusionPipeline'; supported"):
        SRPOTrainer(str(folder), ColorWordReward(), args=config(), train_dataset=PROMPTS)
    TIMINGS["unsupported_folder"] = time.perf_counter() - start


def test_unknown_reward_name_through_load_reward():
    with pytest.raises(ValueError, match=r"'pickscore-v2' is neither a registered reward name"):
        load_reward("pickscore-v2")


# ---------------------------------------------------------------------- reward contract (first batch)


def _shape_wrong(images, prompts):
    return images.mean(dim=(1, 2, 3)).unsqueeze(-1)  # [B, 1]


def _one_scalar(images, prompts):
    return images.mean()  # one score for the whole batch: SRP's (1 + k) with k of shape [B] would hide it


def _nan_reward(images, prompts):
    return images.mean(dim=(1, 2, 3)) * float("nan")


def _no_gradient(images, prompts):
    return torch.tensor([float(x) for x in images.mean(dim=(1, 2, 3))])  # through Python floats: no graph


@pytest.mark.parametrize(
    "fn, message",
    [
        (
            _shape_wrong,
            r"reward '_shape_wrong' returned shape \(2, 1\); it must return one score per image, shape \[2\]",
        ),
        (_one_scalar, r"reward '_one_scalar' returned shape \(\); it must return one score per image, shape \[2\]"),
        (_nan_reward, r"reward '_nan_reward' returned NaN or inf on the first batch"),
        (_no_gradient, r"reward '_no_gradient' has no gradient path to the images"),
    ],
    ids=["shape", "scalar", "nan", "no_gradient"],
)
def test_reward_contract_is_checked_on_the_first_batch(config, fn, message):
    trainer = SRPOTrainer(
        tiny_flux_pipeline(0), fn, args=config(max_steps=2, per_device_train_batch_size=2), train_dataset=PROMPTS
    )
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    start = time.perf_counter()
    with pytest.raises(ValueError, match=message):
        trainer.train()
    TIMINGS[f"reward_{fn.__name__}"] = time.perf_counter() - start
    assert trainer.state.global_step == 0
    assert all(torch.equal(p, before[n]) for n, p in trainer.model.named_parameters())


# -------------------------------------------------------------------------------- numerical guards


class _NaNAfter:
    """A colour reward that turns NaN from its `start`-th call on (a reward model blowing up mid-run)."""

    __name__ = "flaky"

    def __init__(self, start: int):
        self.calls, self.start = 0, start
        self.color = ColorWordReward()

    def __call__(self, images, prompts):
        self.calls += 1
        value = self.color.score(images, prompts)
        return value * float("nan") if self.calls >= self.start else value


def test_nonfinite_steps_are_skipped_counted_and_stop_training_with_the_checkpoint_intact(config, tmp_path):
    # The generic SRP calls the reward 4 times a step (2 texts x 2 branches), and the first batch's contract
    # check twice more (the 2 texts): from call 7 on it is NaN, so step 1 is good and steps 2, 3, 4 are not; the
    # third bad step in a row stops training.
    reward = _NaNAfter(start=7)
    args = config(
        max_steps=20,
        learning_rate=1e-2,
        save_strategy="steps",
        save_steps=2,
        max_consecutive_nonfinite_steps=3,
        output_dir=str(tmp_path / "run"),
    )
    trainer = SRPOTrainer(
        tiny_colour_flux_pipeline(0),
        reward,
        args=args,
        train_dataset=PROMPTS,
        peft_config=LoraConfig(r=4, lora_alpha=4),
    )
    initial = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if p.requires_grad}
    snapshots = []

    class Snapshot(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            snapshots.append({n: p.detach().clone() for n, p in trainer.model.named_parameters() if p.requires_grad})

    trainer.add_callback(Snapshot())
    with pytest.raises(
        FloatingPointError, match=r"3 consecutive steps had a non-finite loss or gradient.*checkpoint-2"
    ):
        trainer.train()
    assert len(snapshots) == 3  # steps 1-3 ended; step 4's skipped update raised
    assert any(not torch.equal(initial[n], snapshots[0][n]) for n in initial)  # the good step moved the weights
    for n in initial:  # the skipped steps did not
        assert torch.equal(snapshots[0][n], snapshots[1][n]) and torch.equal(snapshots[0][n], snapshots[2][n])
        assert torch.equal(getattr_param(trainer, n), snapshots[0][n])
    assert trainer._nonfinite_guard.skipped_total == 3
    assert any(row.get("nonfinite_steps") for row in trainer.state.log_history)
    assert [d for d in os.listdir(tmp_path / "run") if d.startswith("checkpoint-")] == ["checkpoint-2"]
    from safetensors.torch import load_file

    saved = load_file(str(tmp_path / "run" / "checkpoint-2" / "pytorch_lora_weights.safetensors"))
    assert saved and all(torch.isfinite(t).all() for t in saved.values())


def getattr_param(trainer, name):
    return dict(trainer.model.named_parameters())[name].detach()


# --------------------------------------------------------------------------------------- interruption

TRAIN_SCRIPT = textwrap.dedent(
    """
    import sys
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import TrainerCallback
    from srpo_trl import ColorWordReward, SRPOConfig, SRPOTrainer
    from srpo_trl.testing import tiny_flux_pipeline

    output_dir, max_steps, resume = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "resume"

    class Announce(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            print(f"STEP {state.global_step}", flush=True)

    args = SRPOConfig(
        output_dir=output_dir, max_steps=max_steps, resolution=64, rollout_steps=2, max_sequence_length=16,
        positive_control_words=["blue"], negative_control_words=["red"], report_to="none", save_strategy="no",
        disable_tqdm=True, seed=0, learning_rate=1e-2,
    )
    trainer = SRPOTrainer(
        tiny_flux_pipeline(0), ColorWordReward(), args=args,
        train_dataset=Dataset.from_dict({"prompt": ["a cat", "a dog", "a house"]}),
        peft_config=LoraConfig(r=4, lora_alpha=4, init_lora_weights="gaussian"), callbacks=[Announce()],
    )
    trainer.train(resume_from_checkpoint=True if resume else None)
    print(f"FINISHED {trainer.state.global_step}", flush=True)
    """
)


@pytest.mark.extended  # launches a training process and signals it (about 20 s on 2 cores): the second tier
def test_sigterm_writes_a_resumable_checkpoint_and_exits(tmp_path):
    script = tmp_path / "train.py"
    script.write_text(TRAIN_SCRIPT)
    out = tmp_path / "run"
    process = subprocess.Popen(
        [sys.executable, str(script), str(out), "100000", "fresh"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    for line in process.stdout:  # wait until training is under way, then interrupt it
        if line.startswith("STEP 3"):
            process.send_signal(signal.SIGTERM)
            break
    stdout, stderr = process.communicate(timeout=300)
    assert process.returncode == 128 + signal.SIGTERM, stderr[-2000:]
    assert "SIGTERM received" in stderr and "Resume with trainer.train(resume_from_checkpoint=True)" in stderr
    checkpoints = [d for d in os.listdir(out) if d.startswith("checkpoint-")]
    assert len(checkpoints) == 1
    stopped_at = int(checkpoints[0].split("-")[1])
    assert stopped_at >= 3
    assert {"pytorch_lora_weights.safetensors", "optimizer.pt", "trainer_state.json"} <= set(
        os.listdir(out / checkpoints[0])
    )

    resumed = subprocess.run(
        [sys.executable, str(script), str(out), str(stopped_at + 2), "resume"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    steps = [int(line.split()[1]) for line in resumed.stdout.splitlines() if line.startswith("STEP")]
    assert steps == [stopped_at + 1, stopped_at + 2]  # continued from where it stopped
    assert f"FINISHED {stopped_at + 2}" in resumed.stdout


# ---------------------------------------------------------------------------------------- safe loading


def test_no_unsafe_loading_in_the_package():
    root = os.path.join(os.path.dirname(__file__), "..", "src", "srpo_trl")
    for folder, _, names in os.walk(root):
        for name in names:
            if not name.endswith(".py"):
                continue
            text = open(os.path.join(folder, name)).read()
            for line in text.splitlines():
                if "torch.load(" in line:
                    assert "weights_only=True" in line, f"{name}: {line.strip()}"
                assert "trust_remote_code=True" not in line, f"{name}: {line.strip()}"
