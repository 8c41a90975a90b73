"""A tiny training recipe on disk, for the tests of `srpo-trl train` and of the example script."""

import yaml

from srpo_trl.testing import tiny_flux_pipeline


def write_tiny_recipe(tmp_path, **values):
    """A YAML training recipe for `srpo-trl train` / the example script: the tiny pipeline saved to
    `tmp_path/pipe`, four prompts in `tmp_path/prompts.txt`, a 2-step LoRA run into `tmp_path/out`."""
    tiny_flux_pipeline(0).save_pretrained(tmp_path / "pipe")
    (tmp_path / "prompts.txt").write_text("a cat\na dog\na house\nthe sea\n")
    recipe = {
        "model_name_or_path": str(tmp_path / "pipe"),
        "dataset_name": str(tmp_path / "prompts.txt"),
        "output_dir": str(tmp_path / "out"),
        "max_steps": 2,
        "resolution": 64,
        "rollout_steps": 2,
        "max_sequence_length": 16,
        "report_to": "none",
        "use_peft": True,
        "lora_r": 4,
        "lora_alpha": 4,
        **values,
    }
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path
