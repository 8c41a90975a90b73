"""The example script under `accelerate launch` with a YAML recipe, and the packaged accelerate configs."""

import os
import subprocess
import sys

import pytest
from tiny_recipe import write_tiny_recipe

ROOT = os.path.join(os.path.dirname(__file__), "..")
CONFIGS = os.path.join(ROOT, "examples", "accelerate_configs")


def _newer_families() -> dict:
    import diffusers.models.transformers.transformer_qwenimage21 as qwen_image21
    import diffusers.models.transformers.transformer_sd3 as sd3
    import diffusers.models.transformers.transformer_wan as wan
    import diffusers.models.transformers.transformer_z_image as z_image

    return {"fsdp2_z_image": z_image, "fsdp2_sd3": sd3, "fsdp2_qwen_image21": qwen_image21, "fsdp2_wan": wan}


@pytest.mark.parametrize(
    "name, distributed_type",
    [
        ("single_gpu", "NO"),
        ("multi_gpu", "MULTI_GPU"),
        ("fsdp2", "FSDP"),
        ("fsdp2_qwen_image", "FSDP"),
        ("fsdp2_flux3", "FSDP"),
        ("fsdp2_z_image", "FSDP"),
        ("fsdp2_sd3", "FSDP"),
        ("fsdp2_qwen_image21", "FSDP"),
        ("fsdp2_wan", "FSDP"),
        ("deepspeed_zero2", "DEEPSPEED"),
        ("deepspeed_zero3", "DEEPSPEED"),
    ],
)
def test_accelerate_configs_load(name, distributed_type):
    from accelerate.commands.config.config_args import load_config_from_file

    config = load_config_from_file(os.path.join(CONFIGS, f"{name}.yaml"))
    assert config.distributed_type.name == distributed_type
    if name.startswith("deepspeed"):
        # SRPOConfig's `bf16` decides (DeepSpeed stops at a config that contradicts it); tests/test_deepspeed.py
        # launches these configs as they are.
        assert config.mixed_precision == "no"
    else:
        assert config.mixed_precision == "bf16"
    if name.startswith("fsdp2"):
        import diffusers.models.transformers.transformer_flux as flux
        import diffusers.models.transformers.transformer_flux3 as flux3
        import diffusers.models.transformers.transformer_qwenimage as qwen_image

        fsdp = config.fsdp_config
        assert fsdp["fsdp_version"] == 2
        families = {"fsdp2_qwen_image": qwen_image, "fsdp2_flux3": flux3, **_newer_families()}
        family = families.get(name, flux)
        if name == "fsdp2_flux3":  # the blocks diffusers itself keeps whole and compiles regionally
            blocks = fsdp["fsdp_transformer_layer_cls_to_wrap"].split(",")
            assert (
                blocks
                == flux3.Flux3Transformer2DModel._no_split_modules
                == flux3.Flux3Transformer2DModel._repeated_blocks
            )
        for cls in fsdp["fsdp_transformer_layer_cls_to_wrap"].split(","):
            assert hasattr(family, cls), cls  # the blocks FSDP shards exist in the family's transformer
        newer = {"fsdp2_z_image": "ZImage", "fsdp2_sd3": "SD3", "fsdp2_qwen_image21": "QwenImage21"}
        if name in newer:  # the blocks diffusers itself keeps whole
            import diffusers

            transformer = getattr(diffusers, f"{newer[name]}Transformer2DModel")
            assert fsdp["fsdp_transformer_layer_cls_to_wrap"].split(",") == transformer._no_split_modules
        if name == "fsdp2_wan":  # Wan's video transformer (Wan 2.1 and both of Wan 2.2 A14B's experts)
            from diffusers import WanTransformer3DModel

            assert fsdp["fsdp_transformer_layer_cls_to_wrap"].split(",") == WanTransformer3DModel._no_split_modules
    if name.startswith("deepspeed"):
        assert config.deepspeed_config["zero_stage"] == int(name[-1])


@pytest.mark.extended
def test_example_script_runs_under_accelerate_launch_with_a_yaml_recipe(tmp_path):
    recipe = write_tiny_recipe(
        tmp_path, reward_funcs=["clip-vit-l-14:" + str(_clip_copy(tmp_path))], per_process_noise=True
    )
    command = [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines",
        "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "29541",
        os.path.join(ROOT, "examples", "train_srpo.py"), "--config", str(recipe),
    ]  # fmt: skip
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "out" / "pytorch_lora_weights.safetensors").is_file()
    assert "clip-vit-l-14" in (tmp_path / "out" / "README.md").read_text()


def _clip_copy(tmp_path):
    from srpo_trl.testing import tiny_clip_model

    folder = tmp_path / "clip"
    model, tokenizer = tiny_clip_model(0)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
