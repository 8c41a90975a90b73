import math
import os

import pytest
import torch
from datasets import Dataset
from peft import LoraConfig
from uphill import uphill_step

from srpo_trl import ColorWordReward, SRPOTrainer
from srpo_trl.pretrained import shapes_pipeline, shapes_reward
from srpo_trl.testing import tiny_colour_flux_pipeline

TRAIN = Dataset.from_dict({"prompt": ["a cat", "a dog on a hill", "a house", "the sea"]})
HELD_OUT = Dataset.from_dict({"prompt": ["a bird", "a tree", "a car"]})
# The shipped model's world (`srpo_trl.pretrained.shapes`): prompts that leave the style open.
SHAPES_TRAIN = Dataset.from_dict(
    {
        "prompt": [
            "a red circle on the left",
            "a blue square at the top",
            "a green triangle at the bottom",
            "a yellow circle on the right",
        ]
    }
)
SHAPES_HELD_OUT = Dataset.from_dict({"prompt": ["a purple square on the left", "a red triangle at the top"]})
LORA = dict(r=8, lora_alpha=8, init_lora_weights="gaussian")


def _trainable_snapshot(module):
    return {n: p.detach().clone() for n, p in module.named_parameters() if p.requires_grad}


def _assert_recipe_defaults(args):
    """The knobs the toy tests used to change: here they are the recipe's."""
    assert args.learning_rate == 5e-6 and args.max_grad_norm == 0.1 and args.weight_decay == 1e-4
    assert args.hinge_threshold is None and args.use_inversion_branch


def test_lora_training_steps_uphill_at_the_recipe_defaults_and_changes_only_the_lora(shapes_config):
    args = shapes_config(max_steps=1, per_device_train_batch_size=2, rollout_steps=6)
    _assert_recipe_defaults(args)
    trainer = SRPOTrainer(
        model=shapes_pipeline(),
        reward_funcs=shapes_reward(),
        args=args,
        train_dataset=SHAPES_TRAIN,
        eval_dataset=SHAPES_HELD_OUT,
        peft_config=LoraConfig(r=8, lora_alpha=16),  # peft's default initialisation, alpha != r
    )
    transformer = trainer.pipeline.transformer
    before_lora = _trainable_snapshot(transformer)
    assert before_lora and all("lora" in n for n in before_lora)
    frozen_before = {n: p.detach().clone() for n, p in transformer.named_parameters() if "lora" not in n}
    vae_before = [p.detach().clone() for p in trainer.pipeline.vae.parameters()]

    step = uphill_step(trainer)

    assert set(step.dots) == {"denoise", "inversion"} and step.uphill, step.dots
    # LoRA B starts at zero, so A has no gradient on the first step; every tensor that had one moved, in fp32
    # (in bf16 most updates of lr 5e-6 would round to nothing).
    assert not step.unchanged_with_gradient and step.dtypes == {torch.float32}
    assert all(step.changed[n] for n in step.changed if "lora_B" in n)
    # Only the LoRA trained: base transformer weights, VAE and text encoders are untouched.
    assert all(torch.equal(p, frozen_before[n]) for n, p in transformer.named_parameters() if "lora" not in n)
    assert all(torch.equal(a, b) for a, b in zip(vae_before, trainer.pipeline.vae.parameters()))
    assert not any(p.requires_grad for p in trainer.pipeline.text_encoder_2.parameters())

    logged = {k for row in trainer.state.log_history for k in row}
    for key in [
        "loss",
        "grad_norm",
        "reward/denoise",
        "reward/inversion",
        "rewards/shapes-clip/denoise",
        "rewards/shapes-clip/inversion",
        "loss/denoise",
        "loss/inversion",
        "levels/m",
        "levels/gap",
        "levels/sigma",
    ]:
        assert key in logged, key
    metrics = trainer.evaluate()  # held-out rewards of full rollouts, under their documented names
    assert {"eval_reward", "eval_rewards/shapes-clip/srp", "eval_rewards/shapes-clip/plain"} <= set(metrics)
    assert all(math.isfinite(metrics[k]) for k in ("eval_reward", "eval_rewards/shapes-clip/srp"))


def test_full_fine_tuning_steps_the_whole_transformer_uphill_at_the_recipe_defaults(shapes_config):
    args = shapes_config(max_steps=1, per_device_train_batch_size=2, rollout_steps=6)
    _assert_recipe_defaults(args)
    trainer = SRPOTrainer(model=shapes_pipeline(), reward_funcs=shapes_reward(), args=args, train_dataset=SHAPES_TRAIN)
    transformer = trainer.pipeline.transformer
    assert all(p.requires_grad for p in transformer.parameters())
    step = uphill_step(trainer)
    assert set(step.dots) == {"denoise", "inversion"} and step.uphill, step.dots
    # Every tensor of the transformer moved: in fp32 an update of about lr = 5e-6 is far above rounding.
    assert len(step.changed) == len(list(transformer.parameters())) and step.dtypes == {torch.float32}
    assert step.all_changed, [n for n, c in step.changed.items() if not c]


def test_inversion_branch_can_be_switched_off(tiny_pipe, config):
    trainer = SRPOTrainer(
        tiny_pipe, ColorWordReward(), args=config(max_steps=2, use_inversion_branch=False), train_dataset=TRAIN
    )
    trainer.train()
    logged = {k for row in trainer.state.log_history for k in row}
    assert "reward/denoise" in logged and "reward/inversion" not in logged


def test_several_weighted_rewards_and_a_clip_reward(tiny_pipe, config):
    from srpo_trl.testing import tiny_clip_reward

    def brightness(images, prompts):
        return images.mean(dim=(1, 2, 3))

    trainer = SRPOTrainer(
        tiny_pipe,
        [ColorWordReward(), tiny_clip_reward(), brightness],
        args=config(max_steps=2, reward_weights=[1.0, 0.5, 0.1]),
        train_dataset=TRAIN,
        peft_config=LoraConfig(**LORA),
    )
    trainer.train()
    logged = {k for row in trainer.state.log_history for k in row}
    assert {"rewards/color/denoise", "rewards/clip/denoise", "rewards/brightness/inversion"} <= logged


def _stock_images(pipe, prompts, seed=0):
    return pipe(
        prompts,
        height=64,
        width=64,
        num_inference_steps=4,
        guidance_scale=3.5,
        max_sequence_length=32,
        output_type="pt",
        generator=torch.Generator().manual_seed(seed),
    ).images


def test_lora_save_loads_into_a_fresh_stock_flux_pipeline(config, tmp_path):
    from diffusers import FluxPipeline

    args = config(max_steps=10, learning_rate=3e-3, output_dir=str(tmp_path / "lora"))
    trainer = SRPOTrainer(
        tiny_colour_flux_pipeline(0), ColorWordReward(), args=args, train_dataset=TRAIN, peft_config=LoraConfig(**LORA)
    )
    trainer.train()
    trainer.save_model()
    files = set(os.listdir(args.output_dir))
    assert {"pytorch_lora_weights.safetensors", "README.md"} <= files

    prompts = ["a bird", "a tree"]
    trained = _stock_images(trainer.pipeline, prompts)
    fresh = tiny_colour_flux_pipeline(0)
    assert isinstance(fresh, FluxPipeline)
    base = _stock_images(fresh, prompts)
    fresh.load_lora_weights(args.output_dir)
    loaded = _stock_images(fresh, prompts)
    assert (loaded - base).abs().max() > 1e-2
    torch.testing.assert_close(loaded, trained, atol=1e-4, rtol=0)


def test_full_save_loads_with_from_pretrained(config, tmp_path):
    from diffusers import FluxTransformer2DModel

    args = config(max_steps=5, learning_rate=1e-3, output_dir=str(tmp_path / "full"))
    trainer = SRPOTrainer(tiny_colour_flux_pipeline(0), ColorWordReward(), args=args, train_dataset=TRAIN)
    trainer.train()
    trainer.save_model()
    prompts = ["a bird"]
    trained = _stock_images(trainer.pipeline, prompts)
    fresh = tiny_colour_flux_pipeline(0)
    base = _stock_images(fresh, prompts)
    fresh.transformer = FluxTransformer2DModel.from_pretrained(os.path.join(args.output_dir, "transformer"))
    loaded = _stock_images(fresh, prompts)
    assert (loaded - base).abs().max() > 1e-2
    torch.testing.assert_close(loaded, trained, atol=1e-4, rtol=0)


def test_model_and_reward_from_local_paths(tiny_pipe, config, tmp_path):
    from srpo_trl.testing import tiny_clip_model

    pipe_dir, clip_dir = tmp_path / "pipe", tmp_path / "clip"
    tiny_pipe.save_pretrained(pipe_dir)
    model, tokenizer = tiny_clip_model()
    model.save_pretrained(clip_dir)
    tokenizer.save_pretrained(clip_dir)
    trainer = SRPOTrainer(
        str(pipe_dir),
        str(clip_dir),
        args=config(max_steps=1, model_init_kwargs={"torch_dtype": "float32"}),
        train_dataset=TRAIN,
        peft_config=LoraConfig(**LORA),
    )
    assert trainer.pipeline.transformer.dtype == torch.float32
    trainer.train()
    assert trainer.state.global_step == 1


def test_stock_sampler_and_adapter_agree(tiny_pipe):
    """Packing, positional ids, timestep and guidance conventions match diffusers' own FluxPipeline."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    from srpo_trl import direct_align
    from srpo_trl.models import get_adapter

    tiny_pipe.scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=False)
    prompts = ["a bird", "a red tree"]
    stock = _stock_images(tiny_pipe, prompts, seed=3)
    adapter = get_adapter(tiny_pipe, max_sequence_length=32)
    text = adapter.encode_prompts(prompts, torch.device("cpu"))
    eps = adapter.sample_noise(2, 64, 64, torch.Generator().manual_seed(3), torch.device("cpu"))
    x0 = direct_align.euler_sample(
        lambda x, s, _: adapter.velocity(tiny_pipe.transformer, x, s, text, 3.5, 64, 64),
        eps,
        direct_align.shifted_grid(4, 3.0).float(),
    )
    ours = adapter.decode(x0, 64, 64)
    torch.testing.assert_close(ours, stock, atol=1e-5, rtol=0)


@pytest.mark.parametrize(
    "kwargs, error, fragment",
    [
        (dict(resolution=72), ValueError, "resolution"),
        (dict(reward_weights=[1.0, 2.0]), ValueError, "reward_weights"),
        (dict(positive_control_words=[]), ValueError, "positive_control_words"),
    ],
)
def test_bad_trainer_inputs_fail_early(tiny_pipe, config, kwargs, error, fragment):
    with pytest.raises(error, match=fragment):
        SRPOTrainer(tiny_pipe, ColorWordReward(), args=config(**kwargs), train_dataset=TRAIN)


def test_unsupported_pipeline_and_bad_lora_targets(tiny_pipe, config):
    with pytest.raises(ValueError, match="unsupported pipeline"):
        SRPOTrainer(object(), ColorWordReward(), args=config(), train_dataset=TRAIN)
    with pytest.raises(ValueError, match="target_modules"):
        SRPOTrainer(
            tiny_pipe,
            ColorWordReward(),
            args=config(),
            train_dataset=TRAIN,
            peft_config=LoraConfig(r=4, target_modules=["no_such_layer"]),
        )
    with pytest.raises(TypeError, match="reward_funcs"):
        SRPOTrainer(tiny_pipe, [42], args=config(), train_dataset=TRAIN)


def test_the_issue_snippet_with_recipe_defaults_runs(tmp_path):
    """Default SRPOConfig (recipe window, 25 rollout steps, 512 T5 tokens, gradient checkpointing on)."""
    from srpo_trl import SRPOConfig
    from srpo_trl.testing import tiny_flux_pipeline

    def fn(images, prompts):
        return images.mean(dim=(1, 2, 3))

    trainer = SRPOTrainer(
        model=tiny_flux_pipeline(),
        reward_funcs=fn,
        args=SRPOConfig(output_dir=str(tmp_path), max_steps=2, resolution=32, report_to="none"),
        train_dataset=Dataset.from_dict({"prompt": ["a cat", "a dog"]}),
        peft_config=LoraConfig(r=4),
    )
    assert trainer.pipeline.transformer.is_gradient_checkpointing
    before = _trainable_snapshot(trainer.pipeline.transformer)
    trainer.train()
    after = _trainable_snapshot(trainer.pipeline.transformer)
    assert any(not torch.equal(before[n], after[n]) for n in before)


def test_schnell_like_pipeline_uses_its_own_shift_and_no_guidance(config):
    from diffusers import FlowMatchEulerDiscreteScheduler

    from srpo_trl.testing import tiny_flux_pipeline

    pipe = tiny_flux_pipeline(guidance_embeds=False)
    pipe.scheduler = FlowMatchEulerDiscreteScheduler(shift=1.0, use_dynamic_shifting=False)
    trainer = SRPOTrainer(
        pipe, ColorWordReward(), args=config(max_steps=2), train_dataset=TRAIN, peft_config=LoraConfig(**LORA)
    )
    assert trainer.step.window.levels[0].item() == pytest.approx(0.9)  # S[5] of an unshifted 50-step grid
    assert trainer.step.rollout_sigmas[1].item() == pytest.approx(0.75)  # 4 unshifted rollout steps
    trainer.train()
    assert trainer.state.global_step == 2
