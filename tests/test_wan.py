"""Wan (text-to-video) through the Wan adapter, on tiny offline `WanPipeline`s: the stock sampler's videos with and
without its real classifier-free guidance (Wan 2.1, Wan 2.2 A14B's two experts, Wan 2.2 TI2V-5B's per-token timesteps
and 48-channel VAE), an uphill step at the recipe defaults with fp32 masters on a bf16-loaded pipeline, both video
rewards' branch agreement, the LoRA (alpha != r, rsLoRA, DoRA) and full fine-tune round trips through the stock
loaders, and the expert choice of Wan 2.2 A14B with its LoRA round trip."""

import pytest
import torch
from datasets import Dataset
from lora_helpers import LORAS, far_from_identity
from peft import LoraConfig
from uphill import uphill_step

from srpo_trl import ColorWordReward, SRPOTrainer, direct_align
from srpo_trl.evaluation import load_result
from srpo_trl.models import WanAdapter, get_adapter
from srpo_trl.rewards.video import FrameReward, TemporalConsistencyReward
from srpo_trl.testing import tiny_clip_model, tiny_wan_pipeline

SIZE, FRAMES, STEPS = 32, 5, 4
SIZES = {"2.1": 32, "2.2-a14b": 32, "2.2-ti2v": 64}  # TI2V's VAE and patches: multiples of 32 px
PROMPTS = ["a bird", "a red tree on a hill"]
TRAIN = Dataset.from_dict({"prompt": ["a cat", "a dog on a hill", "a house", "the sea"]})


def _stock(pipe, guidance, size=SIZE, latents=None, prompts=PROMPTS, seed=3, **kwargs):
    pipe.set_progress_bar_config(disable=True)
    return pipe(
        prompt=prompts, height=size, width=size, num_frames=FRAMES, num_inference_steps=STEPS,
        guidance_scale=guidance, max_sequence_length=32, output_type="pt", latents=latents,
        generator=torch.Generator().manual_seed(seed), **kwargs,
    ).frames  # fmt: skip


def _adapter(pipe, **config):
    adapter = get_adapter(pipe, max_sequence_length=32)
    adapter.configure(_Args(**config))
    return adapter


class _Args:
    """The `SRPOConfig` fields `configure` reads, at their defaults."""

    def __init__(self, num_frames=FRAMES, start=5, end=25, size=SIZE, time_shift=None):
        self.num_frames, self.image_size, self.time_shift = num_frames, (size, size), time_shift
        self.window_grid_steps, self.window_start_index, self.window_end_index = 50, start, end


@pytest.mark.parametrize("guidance", [1.0, 5.0], ids=["cfg1", "cfg5"])
@pytest.mark.parametrize("variant", list(SIZES))
def test_our_rollout_equals_the_stock_wan_sampler(variant, guidance):
    pipe, size = tiny_wan_pipeline(0, variant=variant), SIZES[variant]
    # Low-noise window for A14B (the default one straddles its boundary): the rollout still uses both experts.
    adapter = _adapter(pipe, size=size, **({"start": 16} if variant == "2.2-a14b" else {}))
    assert isinstance(adapter, WanAdapter) and adapter.default_guidance == {
        "rollout": 5.0,
        "train": 1.0,
        "sample": 5.0,
    }
    calls = {"transformer": 0, "transformer_2": 0}
    for name in calls:
        if getattr(pipe, name) is not None:
            getattr(pipe, name).register_forward_hook(lambda *_, n=name: calls.__setitem__(n, calls[n] + 1))
    text = adapter.encode_prompts(PROMPTS, torch.device("cpu"))
    eps = adapter.sample_noise(2, size, size, torch.Generator().manual_seed(3), torch.device("cpu"))
    trained = getattr(pipe, adapter.trainable_component)
    x0 = direct_align.euler_sample(
        lambda x, s, _: adapter.velocity(trained, x, s, text, guidance, size, size),
        eps,
        adapter.rollout_sigmas(STEPS, size, size),
    )
    ours = adapter.decode(x0, size, size)
    ours_calls = dict(calls)
    stock = _stock(pipe, guidance, size, latents=eps.clone())
    assert stock.shape == ours.shape == (2, FRAMES, 3, size, size)  # output_type="pt": [B, F, 3, H, W]
    print(f"wan {variant} cfg {guidance}: largest difference to the stock sampler {(ours - stock).abs().max():.1e}")
    torch.testing.assert_close(ours, stock, atol=1e-5, rtol=0)
    assert {k: 2 * v for k, v in ours_calls.items()} == calls  # the same calls as the stock sampler's
    if variant == "2.2-a14b":
        assert adapter.trainable_component == "transformer_2" and min(ours_calls.values()) > 0  # both experts
    if guidance > 1:
        assert (stock - _stock(pipe, 1.0, size, latents=eps.clone())).abs().max() > 1e-3  # the guidance was applied


def test_configuration_checks_frames_and_reads_the_shift_and_the_cache():
    from diffusers import UniPCMultistepScheduler

    pipe = tiny_wan_pipeline(0)
    adapter = get_adapter(pipe, max_sequence_length=32)
    with pytest.raises(ValueError, match=r"num_frames=6: .* 4k \+ 1 \(e.g. 5 or 9\)"):
        adapter.configure(_Args(num_frames=6))
    adapter.configure(_Args(num_frames=None))
    assert adapter.num_frames == 81 and adapter.default_time_shift(SIZE, SIZE) == 3.0
    assert (
        adapter.latent_granularity == 16
        and get_adapter(tiny_wan_pipeline(0, variant="2.2-ti2v")).latent_granularity == 32
    )
    pipe.scheduler = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=5.0)
    assert adapter.default_time_shift(SIZE, SIZE) == 5.0
    grid = adapter.rollout_sigmas(4, SIZE, SIZE)  # UniPC's flow grid: the shifted uniform one over [0, 0.999]
    torch.testing.assert_close(grid, direct_align.shifted_grid(4, 5.0).float(), atol=1e-3, rtol=0)
    encoded = adapter.encode_prompts(PROMPTS, torch.device("cpu"))
    rows = [adapter.cache_entry({k: v[i] for k, v in encoded.items()}) for i in range(2)]
    assert rows[0]["prompt_embeds"].shape[0] < rows[1]["prompt_embeds"].shape[0] < 32  # stored without padding
    assert torch.equal(adapter.stack_entries(rows)["prompt_embeds"], encoded["prompt_embeds"])
    assert WanAdapter.pipeline_guidance_kwargs(5.0) == {"guidance_scale": 5.0}


def test_two_experts_train_the_one_whose_levels_hold_the_window():
    pipe = tiny_wan_pipeline(0, variant="2.2-a14b")  # boundary 0.875: the shift-3 grid's level 15 of 50 (0.87499..)
    assert _adapter(pipe, start=2, end=14).trainable_component == "transformer"
    assert _adapter(pipe, start=15, end=25).trainable_component == "transformer_2"
    with pytest.raises(ValueError, match="straddles .* window_end_index=14 .* window_start_index=15"):
        _adapter(pipe)  # the recipe's window 5..25: 0.964 to 0.750
    adapter = _adapter(pipe, start=15)
    text = adapter.encode_prompts(PROMPTS, torch.device("cpu"))
    x = adapter.sample_noise(2, SIZE, SIZE, torch.Generator().manual_seed(0), torch.device("cpu"))
    sigma = torch.tensor([0.95, 0.5])  # one level per expert in one batch: each row goes to its own
    mixed = adapter.velocity(pipe.transformer_2, x, sigma, text, 5.0, SIZE, SIZE)
    rows = [
        adapter.velocity(
            pipe.transformer_2,
            x[i : i + 1],
            sigma[i : i + 1],
            {k: v[i : i + 1] for k, v in text.items()},
            5.0,
            SIZE,
            SIZE,
        )
        for i in range(2)
    ]
    torch.testing.assert_close(mixed, torch.cat(rows))
    high_only = adapter.velocity(pipe.transformer_2, x, torch.tensor([0.95, 0.95]), text, 5.0, SIZE, SIZE)
    assert not torch.allclose(high_only[1], mixed[1])


def _trainer(config, lora=None, dtype=torch.float32, variant="2.1", reward=None, **overrides):
    pipe = tiny_wan_pipeline(0, variant=variant)
    if dtype != torch.float32:
        pipe.to(dtype=dtype)
    peft = LoraConfig(**{"init_lora_weights": "gaussian", **lora}) if lora is not None else None
    reward = reward if reward is not None else FrameReward(ColorWordReward(), stride=2)
    args = config(**{"resolution": SIZE, "num_frames": FRAMES, "max_sequence_length": 32, **overrides})
    return SRPOTrainer(pipe, reward, args=args, train_dataset=TRAIN, peft_config=peft)


def test_one_step_at_the_recipe_defaults_goes_uphill_with_fp32_masters_on_a_bf16_pipeline(config):
    trainer = _trainer(
        config, dict(r=4, lora_alpha=8), dtype=torch.bfloat16, max_steps=1, per_device_train_batch_size=2
    )
    args = trainer.args
    assert (args.learning_rate, args.rollout_guidance_scale, args.train_guidance_scale) == (5e-6, 5.0, 1.0)
    assert args.use_inversion_branch and args.hinge_threshold is None
    step = uphill_step(trainer)
    print(f"wan uphill: dots {step.dots}, cosines {step.cosines}")
    assert set(step.dots) == {"denoise", "inversion"} and step.uphill, step.dots
    assert step.dtypes == {torch.float32} and not step.unchanged_with_gradient


@pytest.mark.parametrize("variant", ["2.2-a14b", "2.2-ti2v"])
def test_one_step_of_wan22_goes_uphill(config, variant):
    """A14B trains its low-noise expert (window 15..25: below the boundary), TI2V its one transformer (64 px)."""
    extra = {"window_start_index": 15} if variant == "2.2-a14b" else {"resolution": 64}
    trainer = _trainer(
        config, dict(r=4, lora_alpha=8), variant=variant, max_steps=1, per_device_train_batch_size=2, **extra
    )
    if variant == "2.2-a14b":
        assert trainer.model is trainer.pipeline.transformer_2
    step = uphill_step(trainer)
    print(f"wan {variant} uphill: dots {step.dots}")
    assert set(step.dots) == {"denoise", "inversion"} and step.uphill, step.dots


def _temporal(stride=2):
    model, _ = tiny_clip_model(0)
    return TemporalConsistencyReward(model, stride=stride)


@pytest.mark.parametrize("kind", ["frame-color", "temporal"])
def test_both_branches_give_aligned_gradients_with_each_video_reward(config, kind):
    """Measured (batch 4, config seeds 0-3, one thread): FrameReward(color, stride 2) 0.85-0.95 (stride 1: 0.16-0.95);
    TemporalConsistencyReward stride 1 0.74-0.94 (stride 2: 0.48-0.95; CLIP seeds 1-3 at stride 2: 0.47-0.87). The
    tiny random models' agreement varies with the draw, as the tiny HPSv3's does (tests/test_reward_gradients.py)."""
    reward = FrameReward(ColorWordReward(), stride=2) if kind == "frame-color" else _temporal(stride=1)
    trainer = _trainer(config, dict(r=4, lora_alpha=8), reward=reward, per_device_train_batch_size=4)
    params = [p for p in trainer.model.parameters() if p.requires_grad]
    losses = trainer.branch_losses(trainer.model, trainer._collate([{"prompt": p} for p in TRAIN["prompt"]]))
    g = {}
    for branch, loss in losses.items():
        grads = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
        g[branch] = torch.cat([(x if x is not None else torch.zeros_like(p)).flatten() for x, p in zip(grads, params)])
    assert g["denoise"].norm() > 0 and g["inversion"].norm() > 0
    cosine = torch.nn.functional.cosine_similarity(g["denoise"], g["inversion"], dim=0).item()
    print(f"wan {kind}: branch cosine {cosine:.2f}")
    assert cosine > 0.5, (kind, cosine)


def test_frame_reward_averages_the_strided_frames_and_their_srp():
    reward = FrameReward(ColorWordReward(), stride=2)
    assert (reward.name, reward.text_conditioned, reward.hinge_threshold) == ("color", True, 0.7)
    videos = torch.rand(3, FRAMES, 3, 8, 8, requires_grad=True)
    prompts = ["a red cat", "blue sea", "a house"]
    inner = ColorWordReward()
    expected = torch.stack([inner.score(videos[:, f], prompts) for f in (0, 2, 4)]).mean(0)
    score = reward.score(videos, prompts)
    torch.testing.assert_close(score, expected)
    score.sum().backward()
    touched = videos.grad.abs().sum(dim=(0, 2, 3, 4)) > 0
    assert touched.tolist() == [True, False, True, False, True]
    k = torch.tensor([0.1, 0.2, 0.3])
    per_frame = torch.stack([inner.srp(videos[:, f], prompts, "blue", "red", k) for f in (0, 2, 4)]).mean(0)
    torch.testing.assert_close(reward.srp(videos, prompts, "blue", "red", k), per_frame)


def test_temporal_consistency_rewards_a_still_video_over_a_flickering_one():
    reward = _temporal()
    assert not reward.text_conditioned and reward.hinge_threshold == 1.0
    frame = torch.rand(1, 1, 3, 32, 32)
    still = frame.expand(1, FRAMES, 3, 32, 32).clone().requires_grad_(True)
    flicker = torch.rand(1, FRAMES, 3, 32, 32)
    s_still, s_flicker = reward.score(still, ["x"]), reward.score(flicker, ["x"])
    assert abs(s_still.item() - 1) < 1e-5 and s_flicker.item() < s_still.item() - 1e-3, (s_still, s_flicker)
    reward.score(torch.cat([still, flicker]), ["x", "y"]).sum().backward()
    assert still.grad is not None and still.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="leave 1 frame"):
        reward.score(torch.rand(1, 2, 3, 32, 32), ["x"])


@pytest.mark.parametrize("lora", list(LORAS))
def test_the_lora_reloads_in_the_stock_wan_pipeline_as_trained(tmp_path, config, lora):
    trainer = _trainer(config, LORAS[lora])
    far_from_identity(trainer.model)
    trainer.save_model(str(tmp_path / "lora"))
    with_trained = tiny_wan_pipeline(0)
    with_trained.transformer = trainer.accelerator.unwrap_model(trainer.model).eval()
    fresh = tiny_wan_pipeline(0)
    base = _stock(fresh, 5.0)
    fresh.load_lora_weights(str(tmp_path / "lora"))
    trained, loaded = _stock(with_trained, 5.0), _stock(fresh, 5.0)
    assert (trained - base).abs().max() > 1e-2
    gap = (loaded - trained).abs().max().item()
    print(f"wan {lora}: reloaded against trained {gap:.1e}")
    assert gap <= 1e-5


def test_a_full_fine_tune_reloads_in_the_stock_wan_pipeline(tmp_path, config):
    from diffusers import WanTransformer3DModel

    trainer = _trainer(config)
    with torch.no_grad():
        trainer.model.proj_out.weight.mul_(1.5)  # a visible change of the output
    trainer.save_model(str(tmp_path / "full"))
    with_trained = tiny_wan_pipeline(0)
    with_trained.transformer = trainer.accelerator.unwrap_model(trainer.model).eval()
    fresh = tiny_wan_pipeline(0)
    base = _stock(fresh, 5.0)
    fresh.transformer = WanTransformer3DModel.from_pretrained(str(tmp_path / "full"), subfolder="transformer")
    expected, loaded = _stock(with_trained, 5.0), _stock(fresh, 5.0)
    assert (expected - base).abs().max() > 1e-2
    gap = (loaded - expected).abs().max().item()
    print(f"wan full fine-tune: reloaded against trained {gap:.1e}")
    assert gap <= 1e-5


def test_wan22_low_noise_expert_trains_and_its_lora_reloads_into_transformer_2(tmp_path, config):
    trainer = _trainer(config, LORAS["alpha-not-r"], variant="2.2-a14b", window_start_index=16)
    assert trainer.adapter.trainable_component == "transformer_2"
    assert trainer.model is trainer.pipeline.transformer_2
    assert not any(p.requires_grad for p in trainer.pipeline.transformer.parameters())
    far_from_identity(trainer.model)
    trainer.save_model(str(tmp_path / "lora"))
    with_trained = tiny_wan_pipeline(0, variant="2.2-a14b")
    with_trained.transformer_2 = trainer.accelerator.unwrap_model(trainer.model).eval()
    fresh = tiny_wan_pipeline(0, variant="2.2-a14b")
    base = _stock(fresh, 5.0)
    fresh.load_lora_weights(str(tmp_path / "lora"), load_into_transformer_2=True)
    trained, loaded = _stock(with_trained, 5.0), _stock(fresh, 5.0)
    assert (trained - base).abs().max() > 1e-2
    gap = (loaded - trained).abs().max().item()
    print(f"wan 2.2 A14B transformer_2 LoRA: reloaded against trained {gap:.1e}")
    assert gap <= 1e-5
    # `srpo-trl eval --load_into_transformer_2` and the card's snippet load it into the same expert.
    by_eval = tiny_wan_pipeline(0, variant="2.2-a14b")
    assert load_result(by_eval, str(tmp_path / "lora"), load_into_transformer_2=True) == "lora"
    assert (_stock(by_eval, 5.0) - trained).abs().max().item() <= 1e-5
    card = (tmp_path / "lora" / "README.md").read_text()
    assert f'pipe.load_lora_weights("{tmp_path / "lora"}", load_into_transformer_2=True)' in card
    assert "a LoRA of the low-noise expert `transformer_2`" in card


def test_guidance_scale_2_guides_the_low_noise_expert_as_the_stock_wan22_sampler(config):
    """`SRPOConfig.guidance_scale_2`: the rollout (and the samples, made with it) guide `transformer_2`'s steps with
    it, as the stock pipeline's `guidance_scale_2`; the two training calls keep `train_guidance_scale`."""
    trainer = _trainer(config, variant="2.2-a14b", window_start_index=16, guidance_scale_2=2.0, rollout_steps=STEPS)
    args = trainer.args
    assert (args.rollout_guidance_scale, args.guidance_scale_2, args.train_guidance_scale) == (5.0, 2.0, 1.0)
    ours = trainer.generate(PROMPTS, seed=3)  # the rollout's sampler, at the rollout's guidance
    eps = trainer.adapter.sample_noise(2, SIZE, SIZE, torch.Generator().manual_seed(3), torch.device("cpu"))
    pipe = tiny_wan_pipeline(0, variant="2.2-a14b")
    stock = _stock(pipe, 5.0, latents=eps.clone(), guidance_scale_2=2.0)
    gap = (ours - stock).abs().max().item()
    print(f"wan 2.2 A14B guidance 5 / guidance_scale_2 2: largest difference to the stock sampler {gap:.1e}")
    assert gap <= 1e-5
    assert (stock - _stock(pipe, 5.0, latents=eps.clone())).abs().max() > 1e-3  # the second guidance was applied
    seen = []
    velocity = trainer.adapter.velocity
    trainer.adapter.velocity = lambda *a, **k: seen.append(a[4]) or velocity(*a, **k)
    trainer.branch_losses(trainer.model, trainer._collate([{"prompt": p} for p in PROMPTS]))
    assert seen == [(5.0, 2.0)] * STEPS + [1.0]  # the rollout's steps, then the one batched training call


def test_guidance_scale_2_is_refused_without_two_experts(config):
    with pytest.raises(
        ValueError, match=r"guidance_scale_2=2.0 is the guidance of the low-noise expert .* WanPipeline"
    ):
        _trainer(config, guidance_scale_2=2.0)


def test_a_full_fine_tune_of_the_low_noise_expert_reloads_into_transformer_2(tmp_path, config, monkeypatch):
    """A full fine-tune of A14B's `transformer_2` is saved as `transformer_2/`; `srpo-trl eval` and the model card's
    snippet (run here as written) load it into `pipe.transformer_2`, and both give the trained model's videos, at the
    run's `guidance_scale_2`."""
    import json

    from srpo_trl.cli import main
    from srpo_trl.evaluation import EvalSettings, generate

    trainer = _trainer(config, variant="2.2-a14b", window_start_index=16, guidance_scale_2=2.0)
    assert trainer.model is trainer.pipeline.transformer_2 and trainer.peft_config is None
    with torch.no_grad():
        trainer.model.proj_out.weight.mul_(1.5)  # a visible change of the low-noise expert's output
    trainer.save_samples(["a bird"], seed=0)
    trainer.save_model(str(tmp_path / "full"))
    assert (tmp_path / "full" / "transformer_2" / "config.json").is_file()
    assert not (tmp_path / "full" / "transformer").exists()
    with_trained = tiny_wan_pipeline(0, variant="2.2-a14b")
    with_trained.transformer_2 = trainer.accelerator.unwrap_model(trainer.model).eval()
    expected = _stock(with_trained, 5.0, guidance_scale_2=2.0)
    assert (expected - _stock(tiny_wan_pipeline(0, variant="2.2-a14b"), 5.0, guidance_scale_2=2.0)).abs().max() > 1e-2
    fresh = tiny_wan_pipeline(0, variant="2.2-a14b")
    assert load_result(fresh, str(tmp_path / "full")) == "transformer_2"
    gap = (_stock(fresh, 5.0, guidance_scale_2=2.0) - expected).abs().max().item()
    settings = EvalSettings(resolution=SIZE, num_inference_steps=STEPS, guidance_scale=5.0, guidance_scale_2=2.0,
                            seed=3, batch_size=2, max_sequence_length=32, num_frames=FRAMES)  # fmt: skip
    assert torch.equal(generate(fresh, PROMPTS, settings), _stock(fresh, 5.0, guidance_scale_2=2.0))  # eval's call
    card = (tmp_path / "full" / "README.md").read_text()
    assert "a full fine-tune of the low-noise expert `transformer_2`" in card
    assert "guidance 5.0 (2.0 for the low-noise expert)" in card  # how the samples were made
    snippet = card.split("```python\n", 1)[1].split("```", 1)[0]
    assert (
        f'transformer_2 = WanTransformer3DModel.from_pretrained("{tmp_path / "full"}", subfolder="transformer_2"'
        in (snippet)
    )
    assert "pipe.transformer_2 = transformer_2" in snippet and "guidance_scale_2=2.0," in snippet
    monkeypatch.chdir(tmp_path)  # the snippet writes video.mp4
    scope = {
        "pipe": tiny_wan_pipeline(0, variant="2.2-a14b")
    }  # the base was built in code: the snippet starts from it
    exec(snippet.replace("pipe = ...", "pass  #"), scope)  # noqa: S102 - the card's own code
    assert (tmp_path / "video.mp4").is_file()
    card_gap = (_stock(scope["pipe"], 5.0, guidance_scale_2=2.0) - expected).abs().max().item()
    print(f"wan 2.2 A14B transformer_2 full fine-tune: eval's reload {gap:.1e}, the card's {card_gap:.1e}")
    assert gap <= 1e-5 and card_gap <= 1e-5
    tiny_wan_pipeline(0, variant="2.2-a14b").save_pretrained(tmp_path / "base")
    (tmp_path / "prompts.txt").write_text("a bird\na red tree\n")
    command = ["eval", "--model", str(tmp_path / "base"), "--result", str(tmp_path / "full"), "--prompts",
               str(tmp_path / "prompts.txt"), "--reward_funcs", "color", "--control_words", "brightness",
               "--resolution", str(SIZE), "--num_inference_steps", "3", "--num_frames", str(FRAMES),
               "--guidance_scale_2", "2", "--max_sequence_length", "32",
               "--output_dir", str(tmp_path / "eval")]  # fmt: skip
    assert main(command) == 0
    report = json.loads((tmp_path / "eval" / "eval.json").read_text())
    assert report["settings"]["guidance_scale_2"] == 2.0 and report["rewards"]["color"]["plain"]["delta"] != 0


def test_fsdp2_block_classes():
    from diffusers import WanTransformer3DModel

    assert WanTransformer3DModel._no_split_modules == ["WanTransformerBlock"]
    assert WanTransformer3DModel._repeated_blocks == ["WanTransformerBlock"]


def test_the_trainer_scores_frames_with_an_image_reward_and_can_decode_only_the_first_frames(config):
    """A plain image reward given to a video pipeline scores every `reward_frame_stride`-th frame (`FrameReward`);
    `decode_latent_frames` decodes, for the rewards, exactly the first `4 (N - 1) + 1` frames of the full decode
    (Wan's VAE is causal in time), and a step with it still goes uphill."""
    trainer = _trainer(config, dict(r=4, lora_alpha=8), reward=ColorWordReward(), reward_frame_stride=3,
                       decode_latent_frames=1, max_steps=1, per_device_train_batch_size=2)  # fmt: skip
    (reward,) = trainer.rewards
    assert isinstance(reward, FrameReward) and reward.stride == 3 and reward.name == "color"
    adapter = trainer.adapter
    latents = adapter.sample_noise(1, SIZE, SIZE, torch.Generator().manual_seed(0), torch.device("cpu"))
    with torch.no_grad():
        full = adapter.decode(latents, SIZE, SIZE)
        first = trainer.step.decode(latents)
    assert first.shape[1] == 1 and full.shape[1] == FRAMES
    torch.testing.assert_close(first, full[:, :1], atol=1e-6, rtol=0)
    step = uphill_step(trainer)
    assert set(step.dots) == {"denoise", "inversion"} and step.uphill, step.dots


def test_samples_and_eval_write_videos_and_the_card_writes_one(tmp_path, config):
    """Samples are animated WebP videos of `num_frames` frames; the model card's snippet samples a video (`.frames[0]`,
    `num_frames`) and writes it with `export_to_video`; `srpo-trl eval` scores the stock pipeline's videos (image
    rewards per frame) and writes them."""
    import json

    from PIL import Image

    from srpo_trl.cli import main

    tiny_wan_pipeline(0).save_pretrained(tmp_path / "base")
    trainer = _trainer(config, dict(r=4, lora_alpha=8), reward=ColorWordReward(), sample_prompts=["a bird"])
    far_from_identity(trainer.model)
    (path,) = trainer.save_samples(["a bird"], seed=0)
    assert path.endswith(".webp") and Image.open(path).n_frames == FRAMES
    trainer.save_model(str(tmp_path / "lora"))
    snippet = (tmp_path / "lora" / "README.md").read_text().split("```python\n", 1)[1].split("```", 1)[0]
    assert ".frames[0]" in snippet and f"num_frames={FRAMES}," in snippet and "export_to_video(video" in snippet
    (tmp_path / "prompts.txt").write_text("a bird\na red tree\n")
    command = ["eval", "--model", str(tmp_path / "base"), "--result", str(tmp_path / "lora"), "--prompts",
               str(tmp_path / "prompts.txt"), "--reward_funcs", "color", "--control_words", "brightness",
               "--resolution", str(SIZE), "--num_inference_steps", "3", "--num_frames", str(FRAMES),
               "--max_sequence_length", "32", "--output_dir", str(tmp_path / "eval")]  # fmt: skip
    assert main(command) == 0
    report = json.loads((tmp_path / "eval" / "eval.json").read_text())
    assert report["rewards"]["color"]["srp"]["delta"] != 0
    with pytest.raises(
        ValueError, match="--guidance_scale_2 is the guidance of the low-noise expert .* one transformer"
    ):
        main([*command[:-1], str(tmp_path / "eval-2"), "--guidance_scale_2", "2"])
    assert Image.open(tmp_path / "eval" / "eval_videos" / "after_0.webp").n_frames == FRAMES
