"""`srpo-trl train` (directly and through accelerate) and the CLI's error paths; demo, eval and convert-hps
are exercised in test_demo_and_card.py and test_reward_models.py."""

import pytest
import yaml
from tiny_recipe import write_tiny_recipe

from srpo_trl.cli import accelerate_config_path, main
from srpo_trl.testing import tiny_flux_pipeline


@pytest.fixture
def recipe(tmp_path):
    return write_tiny_recipe(
        tmp_path, reward_funcs=["color"], positive_control_words=["blue"], negative_control_words=["red"]
    )


def test_train_reads_a_yaml_recipe_and_flags_override_it(recipe, tmp_path):
    assert main(["train", "--config", str(recipe), "--output_dir", str(tmp_path / "flagged")]) == 0
    assert (tmp_path / "flagged" / "pytorch_lora_weights.safetensors").is_file()
    assert not (tmp_path / "out").exists()  # the flag won over the recipe


@pytest.mark.extended
def test_train_through_accelerate_with_a_config_file(recipe, tmp_path, monkeypatch):
    config = tmp_path / "two_cpus.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "distributed_type": "MULTI_GPU",
                "num_processes": 2,
                "num_machines": 1,
                "mixed_precision": "no",
                "main_process_port": 29561,
            }
        )
    )
    monkeypatch.setenv("ACCELERATE_USE_CPU", "1")  # two processes on the CPU, gloo
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert main(["train", "--accelerate_config", str(config), "--config", str(recipe)]) == 0
    assert (tmp_path / "out" / "pytorch_lora_weights.safetensors").is_file()


def test_packaged_accelerate_configs_by_name():
    for name in (
        "single_gpu",
        "multi_gpu",
        "fsdp2",
        "fsdp2_qwen_image",
        "fsdp2_flux3",
        "fsdp2_z_image",
        "fsdp2_sd3",
        "fsdp2_qwen_image21",
        "fsdp2_wan",
        "deepspeed_zero2",
        "deepspeed_zero3",
    ):
        assert accelerate_config_path(name).endswith(f"{name}.yaml")
    with pytest.raises(SystemExit, match=r"'fsdp3' is neither a file nor one of \['deepspeed_zero2'"):
        accelerate_config_path("fsdp3")


def test_train_help_lists_srpo_and_lora_flags(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for flag in ("--reward_funcs", "--rho", "--use_peft", "--lora_r", "--per_process_noise", "--quantize_base"):
        assert flag in out, flag


def test_eval_rejects_a_missing_prompt_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        main(["eval", "--model", "x", "--prompts", str(tmp_path / "no.txt"), "--reward_funcs", "color"])


def _srp_and_plain(pipe, prompts, positive, negative):
    """The color reward's SRP and plain means on `pipe`'s own images, as `srpo-trl eval` should report them."""
    import torch

    from srpo_trl.rewards import load_reward, srp_score

    reward = load_reward("color")
    pipe.set_progress_bar_config(disable=True)
    images = pipe(
        prompt=prompts, height=64, width=64, num_inference_steps=3, guidance_scale=3.5, max_sequence_length=16,
        generator=torch.Generator().manual_seed(0), output_type="pt",
    ).images  # fmt: skip
    srp = srp_score(reward, images, prompts, positive, negative)
    return srp.mean().item(), reward.score(images, prompts).mean().item()


def test_eval_a_full_fine_tune_folder(tmp_path):
    """`--result` may be a folder with transformer/ (full fine-tuning): the JSON's before and after are the rewards
    of the base and of the fine-tuned pipeline, computed here independently from the stock pipelines' images."""
    import json

    import torch

    base = tiny_flux_pipeline(0)
    base.save_pretrained(tmp_path / "base")
    tuned = tiny_flux_pipeline(0).transformer
    with torch.no_grad():
        tuned.proj_out.bias.add_(0.5)  # a visible change of the output
    tuned.save_pretrained(tmp_path / "result" / "transformer")
    (tmp_path / "prompts.txt").write_text("a cat\na dog\n")
    args = ["eval", "--model", str(tmp_path / "base"), "--result", str(tmp_path / "result"), "--prompts"]
    args += [str(tmp_path / "prompts.txt"), "--reward_funcs", "color", "--control_words", "brightness"]
    args += ["--resolution", "64", "--num_inference_steps", "3", "--max_sequence_length", "16"]
    args += ["--output_dir", str(tmp_path / "eval")]
    assert main(args) == 0
    report = json.loads((tmp_path / "eval" / "eval.json").read_text())
    words = report["settings"]["positive_control_words"], report["settings"]["negative_control_words"]
    assert words[0] == ["Bright", "Well-lit"] and report["num_prompts"] == 2

    with_tuned = tiny_flux_pipeline(0)
    with_tuned.transformer = tuned
    for row, pipe in (("before", base), ("after", with_tuned)):
        srp, plain = _srp_and_plain(pipe, ["a cat", "a dog"], *words)
        assert report["rewards"]["color"]["srp"][row]["mean"] == pytest.approx(srp, abs=1e-6), row
        assert report["rewards"]["color"]["plain"][row]["mean"] == pytest.approx(plain, abs=1e-6), row
    srp = report["rewards"]["color"]["srp"]
    # The fine-tune changed the score (measured 6e-4), far beyond the 1e-6 to which the numbers are checked.
    assert abs(srp["after"]["mean"] - srp["before"]["mean"]) > 1e-4
