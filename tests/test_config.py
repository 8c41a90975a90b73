import pytest

from srpo_trl import SRPOConfig


def test_recipe_defaults(tmp_path):
    c = SRPOConfig(output_dir=str(tmp_path), report_to="none")
    assert c.image_size == (720, 720)
    assert c.rollout_steps == 25
    # Unset guidance takes the family's (FLUX: 1.0 rollout, 3.5 training and samples; tests/test_models.py).
    assert c.rollout_guidance_scale is c.train_guidance_scale is c.sample_guidance_scale is None
    assert (c.window_grid_steps, c.window_start_index, c.window_end_index, c.num_levels) == (50, 5, 25, 1000)
    assert (c.rho, c.hinge_threshold, c.trainable_dtype) == (0.9, None, "float32")  # None: each reward's own tau
    assert c.denoise_discount == [0.10, 0.25] and c.inversion_discount == [0.30, 0.01]
    assert (c.learning_rate, c.weight_decay, c.max_grad_norm) == (5e-6, 1e-4, 0.1)
    assert c.lr_scheduler_type == "constant" and c.per_device_train_batch_size == 1
    assert c.positive_control_words[-1] == "Real" and c.negative_control_words[1] == "Painting"
    assert c.remove_unused_columns is False and c.time_shift is None


def test_resolution_forms(tmp_path):
    assert SRPOConfig(output_dir=str(tmp_path), resolution=64).image_size == (64, 64)
    assert SRPOConfig(output_dir=str(tmp_path), resolution=(48, 80)).image_size == (48, 80)
    assert SRPOConfig(output_dir=str(tmp_path), resolution=[96]).image_size == (96, 96)


@pytest.mark.parametrize(
    "field, value, fragment",
    [
        ("rho", 1.0, "rho"),
        ("rho", 0.0, "rho"),
        ("rollout_steps", 0, "rollout_steps"),
        ("learning_rate", 0.0, "learning_rate"),
        ("learning_rate", -1e-5, "learning_rate"),
        ("resolution", [64, 64, 64], "resolution"),
        ("resolution", -16, "resolution"),
        ("resolution", "big", "resolution"),
        ("window_start_index", 30, "window_start_index"),
        ("window_end_index", 51, "window_end_index"),
        ("num_levels", 10, "num_levels"),
        ("denoise_discount", [0.1], "denoise_discount"),
        ("positive_control_words", "Real", "positive_control_words"),
        ("negative_control_words", ["Oil", " "], "negative_control_words"),
        ("time_shift", -1.0, "time_shift"),
    ],
)
def test_bad_values_name_the_field(tmp_path, field, value, fragment):
    with pytest.raises(ValueError, match=fragment):
        SRPOConfig(output_dir=str(tmp_path), **{field: value})


def test_activation_checkpointing_routes_to_the_transformer(tmp_path):
    c = SRPOConfig(output_dir=str(tmp_path), gradient_checkpointing=True, transformer_gradient_checkpointing=False)
    assert c.transformer_gradient_checkpointing is True
    assert not c.activation_checkpointing  # the Trainer must not call a method diffusers models lack


def test_every_field_has_help():
    from dataclasses import fields

    from transformers import TrainingArguments

    base = {f.name for f in fields(TrainingArguments)}
    own = [f for f in fields(SRPOConfig) if f.name not in base or f.name in SRPOConfig.__annotations__]
    assert own and all(f.metadata.get("help") for f in own)


def test_hf_argument_parser_parses_srpo_fields(tmp_path):
    from transformers import HfArgumentParser

    (c,) = HfArgumentParser(SRPOConfig).parse_args_into_dataclasses(
        [
            "--output_dir",
            str(tmp_path),
            "--resolution",
            "48",
            "80",
            "--rho",
            "0.8",
            "--positive_control_words",
            "Real",
            "Detail",
            "--report_to",
            "none",
        ]
    )
    assert c.image_size == (48, 80) and c.rho == 0.8 and c.positive_control_words == ["Real", "Detail"]


def test_model_init_kwargs_take_dtype_as_transformers_5_and_trl_spell_it(tmp_path):
    for kwargs in (
        {"dtype": "bfloat16"},
        {"torch_dtype": "bfloat16"},
        {"dtype": "bfloat16", "torch_dtype": "bfloat16"},
    ):
        assert SRPOConfig(str(tmp_path), model_init_kwargs=kwargs).model_init_kwargs == {"torch_dtype": "bfloat16"}
    assert SRPOConfig(str(tmp_path), model_init_kwargs='{"dtype": "auto"}').model_init_kwargs == {
        "torch_dtype": "auto"
    }
    with pytest.raises(ValueError, match="give the dtype once, as dtype or as torch_dtype"):
        SRPOConfig(str(tmp_path), model_init_kwargs={"dtype": "bfloat16", "torch_dtype": "float16"})
    with pytest.raises(ValueError, match=r"torch_dtype='bf17' is not a torch dtype"):
        SRPOConfig(str(tmp_path), model_init_kwargs={"dtype": "bf17"})
