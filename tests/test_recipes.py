"""The recipes in examples/configs parse into valid configs and carry the published values."""

import os

import pytest

from srpo_trl.scripts.train import make_parser

CONFIGS = os.path.join(os.path.dirname(__file__), "..", "examples", "configs")


def _parse(name, tmp_path):
    parser = make_parser()
    script, args, model = parser.parse_args_and_config(
        args=["--config", os.path.join(CONFIGS, name), "--output_dir", str(tmp_path)]
    )
    return script, args, model


@pytest.mark.parametrize(
    "name", ["flux_dev_hpsv2.yaml", "flux_dev_pickscore.yaml", "flux_dev_lora_1gpu.yaml", "flux_dev_offline.yaml"]
)
def test_recipe_parses(name, tmp_path):
    script, args, model = _parse(name, tmp_path)
    assert model.model_name_or_path == "black-forest-labs/FLUX.1-dev" and model.dtype == "bfloat16"
    assert args.image_size == (720, 720)
    assert args.positive_control_words == ["Natural-lighting", "Detail", "Detailed", "Real"]


def test_published_recipe_values(tmp_path):
    script, args, model = _parse("flux_dev_hpsv2.yaml", tmp_path)
    assert script.reward_funcs == ["hpsv2.1"] and not model.use_peft
    assert (args.rollout_steps, args.rollout_guidance_scale, args.train_guidance_scale) == (25, 1.0, 3.5)
    assert (args.window_grid_steps, args.window_start_index, args.window_end_index) == (50, 5, 25)
    assert (args.num_levels, args.rho, args.hinge_threshold) == (1000, 0.9, [0.7])
    assert args.denoise_discount == [0.10, 0.25] and args.inversion_discount == [0.30, 0.01]
    assert (args.learning_rate, args.weight_decay, args.max_grad_norm) == (5e-6, 1e-4, 0.1)
    assert args.lr_scheduler_type.value == "constant"
    assert args.per_device_train_batch_size * args.gradient_accumulation_steps * 8 == 32  # on 8 GPUs


def test_pickscore_variant_values(tmp_path):
    script, args, _ = _parse("flux_dev_pickscore.yaml", tmp_path)
    assert script.reward_funcs == ["pickscore"]
    assert args.denoise_discount == [0.1, 0.5] and args.inversion_discount == [0.6, 0.01]
    assert (args.window_end_index, args.rollout_guidance_scale) == (30, 2.0)


def test_lora_and_offline_recipes(tmp_path):
    _, args, model = _parse("flux_dev_lora_1gpu.yaml", tmp_path)
    assert model.use_peft and model.lora_r == 64
    _, args, model = _parse("flux_dev_offline.yaml", tmp_path)
    assert args.offline is True and model.use_peft


@pytest.mark.parametrize("name", ["flux_dev_hpsv2.yaml", "flux_dev_pickscore.yaml", "flux_dev_lora_1gpu.yaml"])
def test_online_recipes_keep_the_best_checkpoint_by_held_out_reward(name, tmp_path):
    script, args, _ = _parse(name, tmp_path)
    assert script.eval_dataset_name and args.eval_strategy.value == "steps" and args.eval_steps == args.save_steps
    assert args.load_best_model_at_end and args.metric_for_best_model == "reward" and args.greater_is_better
    assert args.save_total_limit == 2
    assert "laion-aesthetic" in script.eval_reward_funcs
    assert not set(script.eval_reward_funcs) & set(script.reward_funcs)  # watched, never trained on


def test_qwen_image_recipe_carries_srpos_published_qwen_values(tmp_path):
    """SRPO's Qwen-Image script: CFG 4 in the rollout, none in training, uniform grids, the window 0.9 -> 0.2 in
    100 levels, k = 0, no inversion branch, lr 3e-6, PickScore (docs/models.md)."""
    script, args, model = _parse("qwen_image_pickscore.yaml", tmp_path)
    assert model.model_name_or_path == "Qwen/Qwen-Image" and script.reward_funcs == ["pickscore"]
    assert (args.rollout_steps, args.rollout_guidance_scale, args.train_guidance_scale) == (26, 4.0, 1.0)
    assert (args.time_shift, args.window_start_index, args.window_end_index, args.num_levels) == (1.0, 5, 40, 100)
    assert (args.rho, args.denoise_discount, args.use_inversion_branch) == (0.6, [0.0, 0.0], False)
    assert (args.learning_rate, args.max_grad_norm, args.image_size) == (3e-6, 50.0, (720, 720))
    assert args.negative_control_words == ["Concept art", "Painting", "Anime"]


@pytest.mark.parametrize(
    "name, distilled", [("flux3_klein_base_lora.yaml", False), ("flux3_klein_distilled_lora.yaml", True)]
)
def test_flux3_recipes_parse_with_their_chosen_guidance_and_steps(name, distilled, tmp_path):
    script, args, model = _parse(name, tmp_path)
    assert model.use_peft and model.dtype == "bfloat16" and script.reward_funcs == ["hpsv2.1"]
    assert args.rollout_steps == (16 if distilled else 25)
    assert (args.rollout_guidance_scale, args.train_guidance_scale) == ((1.0, 1.0) if distilled else (3.5, 1.0))
    assert (args.learning_rate, args.max_grad_norm, args.hinge_threshold) == (5e-6, 0.1, [0.7])
    assert args.use_inversion_branch and args.time_shift is None  # the scheduler's static shift


#: name -> (base model, rewards, their weights, rollout / train / sample guidance, control preprocessor)
CONDITIONED = {
    "flux_fill_dev_lora.yaml": ("FLUX.1-Fill-dev", ["hpsv2.1", "unmasked-fidelity"], [1.0, 0.5], 30.0, None),
    "flux_canny_dev_lora.yaml": ("FLUX.1-Canny-dev", ["hpsv2.1", "edge-consistency"], [1.0, 0.5], 30.0, "canny"),
    "flux_depth_dev_lora.yaml": ("FLUX.1-Depth-dev", ["hpsv2.1", "depth-consistency"], [1.0, 0.5], 10.0, "depth"),
}


@pytest.mark.parametrize("name", list(CONDITIONED))
def test_conditioned_flux_recipes_pair_hps_with_a_consistency_reward(name, tmp_path):
    base, rewards, weights, guidance, preprocessor = CONDITIONED[name]
    script, args, model = _parse(name, tmp_path)
    assert model.model_name_or_path == f"black-forest-labs/{base}" and model.use_peft
    assert script.reward_funcs == rewards and args.reward_weights == weights
    assert args.hinge_threshold is None  # each reward's own: one value would put HPS's 0.7 on the consistency reward
    assert (args.rollout_guidance_scale, args.train_guidance_scale, args.sample_guidance_scale) == (guidance,) * 3
    assert args.control_image_preprocessor == preprocessor and args.control_words == "hps-realism"
    assert (args.learning_rate, args.max_grad_norm, args.use_inversion_branch) == (5e-6, 0.1, True)


def test_the_chroma_recipe_uses_real_cfg_in_the_rollout_and_one_call_in_training(tmp_path):
    script, args, model = _parse("chroma1_hd_lora.yaml", tmp_path)
    assert model.model_name_or_path == "lodestones/Chroma1-HD" and script.reward_funcs == ["hpsv2.1"]
    assert (args.rollout_guidance_scale, args.train_guidance_scale, args.sample_guidance_scale) == (5.0, 1.0, 5.0)
    assert args.time_shift is None and (args.learning_rate, args.hinge_threshold) == (5e-6, [0.7])


#: name -> (base model, reward, resolution, rollout steps, rollout / train / sample guidance)
NEWER_FAMILIES = {
    "sd35_medium_pickscore_lora.yaml": (
        "stabilityai/stable-diffusion-3.5-medium",
        "pickscore",
        512,
        10,
        (4.5, 1.0, 4.5),
    ),
    "z_image_turbo_lora.yaml": ("Tongyi-MAI/Z-Image-Turbo", "hpsv2.1", 720, 9, (0.0, 0.0, 0.0)),
    "qwen_image21_lora.yaml": ("Qwen/Qwen-Image-2.1", "hpsv2.1", 1024, 25, (1.0, 1.0, 1.0)),
}


@pytest.mark.parametrize("name", list(NEWER_FAMILIES))
def test_the_newer_families_recipes_carry_their_chosen_and_cited_settings(name, tmp_path):
    base, reward, resolution, steps, guidance = NEWER_FAMILIES[name]
    script, args, model = _parse(name, tmp_path)
    assert model.model_name_or_path == base and model.use_peft and script.reward_funcs == [reward]
    assert args.image_size == (resolution, resolution) and args.rollout_steps == steps
    assert (args.rollout_guidance_scale, args.train_guidance_scale, args.sample_guidance_scale) == guidance
    assert (args.learning_rate, args.hinge_threshold, args.use_inversion_branch) == (5e-6, [0.7], True)


@pytest.mark.parametrize("name", ["wan21_t2v_1.3b_lora.yaml", "wan22_t2v_a14b_lora.yaml"])
def test_the_wan_recipes_decode_the_first_frame_and_the_a14b_window_lies_in_one_expert(name, tmp_path):
    from srpo_trl import direct_align

    script, args, model = _parse(name, tmp_path)
    assert model.model_name_or_path.startswith("Wan-AI/Wan2.") and script.reward_funcs == ["hpsv2.1"]
    assert (args.num_frames, args.frame_rate, args.decode_latent_frames, args.reward_frame_stride) == (81, 16, 1, 4)
    assert args.image_size == (480, 832) and (args.learning_rate, args.use_inversion_branch) == (5e-6, True)
    if "a14b" in name:  # wholly below Wan 2.2 A14B's boundary_ratio 0.875 at the scheduler's shift 3
        grid = direct_align.shifted_grid(args.window_grid_steps, 3.0)
        assert grid[args.window_start_index] < 0.875 and grid[args.window_end_index] < 0.875
