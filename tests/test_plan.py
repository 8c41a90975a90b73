"""`srpo_trl.planning`: the planner's counts on the meta device equal what a real CPU step allocates and saves.

Tiers: the default tier checks one family (FLUX.1, LoRA) against a real CPU step, `srpo-trl plan` on a tiny local
pipeline folder, the report's verdict, FLUX.1-dev's shipped sizes, and the errors (about 15 s on 2 cores). The other
eleven family x LoRA/full exactness cases (about 2 minutes), the trace without checkpointing, every shipped config's
sizes, and `srpo-trl plan` on FLUX.1-dev's full-size shipped config against the recorded H200 peak (about 25 s) are
marked `extended`, the second tier that CI runs (`.ci/run`, `-m extended`).
"""

from __future__ import annotations

import pytest
import torch

from srpo_trl import testing
from srpo_trl.planning.estimate import Recipe, estimate, retarget, run_step
from srpo_trl.planning.measure import storage_keys
from srpo_trl.planning.meta import SHIPPED, CannotSize, meta_pipeline, meta_reward, text_conditioning
from srpo_trl.planning.report import GB, allowance_bytes, render, verdict

FAMILIES = [
    "tiny_flux_pipeline",
    "tiny_flux2_pipeline",
    "tiny_qwen_image_pipeline",
    "tiny_chroma_pipeline",
    "tiny_sd3_pipeline",
    "tiny_z_image_pipeline",
    "tiny_flux_kontext_pipeline",
    "tiny_flux_fill_pipeline",
    "tiny_flux_control_pipeline",
    "tiny_wan_pipeline",
]


def _real_step(pipeline, reward, recipe):
    """The trainer's set-up and one step on real CPU tensors, measured with the planner's own instruments."""
    from peft import LoraConfig

    from srpo_trl.models import get_adapter
    from srpo_trl.module_state import cast_trainable_parameters
    from srpo_trl.preparation import prepare_trainable

    adapter = get_adapter(pipeline, max_sequence_length=recipe.max_sequence_length)
    if adapter.is_video:  # frames and the decode's settings, as the planner configures them
        from srpo_trl.planning.estimate import _configure_video

        _configure_video(adapter, recipe)

    class Args:
        quantize_base = None
        transformer_gradient_checkpointing = recipe.transformer_gradient_checkpointing
        vae_gradient_checkpointing = recipe.vae_gradient_checkpointing
        vae_slicing = recipe.vae_slicing

    peft = LoraConfig(r=recipe.lora_r, lora_alpha=recipe.lora_alpha) if recipe.use_peft else None
    transformer, _ = prepare_trainable(pipeline, adapter, Args, peft)
    cast_trainable_parameters(transformer, recipe.trainable_dtype)
    modules = [m for m in pipeline.components.values() if isinstance(m, torch.nn.Module)] + [reward]
    exclude = storage_keys([t for m in modules for t in (*m.parameters(), *m.buffers())])
    real = adapter.encode_prompts(["a red cat"] * recipe.batch_size, torch.device("cpu"))
    text = text_conditioning(adapter, recipe.batch_size, recipe.max_sequence_length, "cpu", torch.float32)
    assert set(text) == set(real)  # the planner's text cache has the family's keys
    device = torch.device("cpu")
    measured = run_step(adapter, transformer, reward, recipe, device, text=text, exclude=exclude, keep_grads=True)
    trainable = [p for p in transformer.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-4)
    optimizer.step()  # states for the parameters with a gradient, as the trainer's first step makes them
    states = sum(v.numel() * v.element_size() for s in optimizer.state.values() for v in s.values() if v.ndim)
    return measured, trainable, states


FAST = ("tiny_flux_pipeline", True)
CASES = [
    pytest.param(family, use_peft, autocast, marks=() if (family, use_peft) == FAST else pytest.mark.extended)
    for family in FAMILIES
    for use_peft in (True, False)
    for autocast in (None, "cpu")
]


@pytest.mark.parametrize(("family", "use_peft", "autocast"), CASES)
def test_planner_matches_a_real_cpu_step(family, use_peft, autocast):
    """The meta trace against a real CPU step, without autocast and under bf16 autocast: the planner replays
    the CPU's casts (`planning.autocast.CPU`) on meta tensors, the real step runs `torch.autocast("cpu")`."""
    build = getattr(testing, family)
    recipe = Recipe(
        autocast=autocast,
        model=build(),
        resolution=64,
        dtype=None,
        reward=testing.tiny_clip_reward(),
        max_sequence_length=16,
        lora_r=4,
        lora_alpha=4,
        use_peft=use_peft,
        rollout_steps=2,
        num_frames=5,  # video families: 2 latent frames
    )
    plan = estimate(recipe, without_checkpointing=False)
    measured, trainable, states = _real_step(build(), testing.tiny_clip_reward(), recipe)
    width = trainable[0].element_size()
    assert plan.trainable_params == sum(p.numel() for p in trainable)
    assert plan.state["master weights"] == sum(p.numel() * width for p in trainable)
    assert plan.state["AdamW states"] == states
    assert plan.state["gradients"] == measured.grad_bytes
    ratios = {phase: plan.measured.saved[phase] / max(value, 1) for phase, value in measured.saved.items()}
    ratios |= {"train peak": plan.measured.train_peak / measured.train_peak}
    ratios |= {"rollout peak": plan.measured.rollout_peak / measured.rollout_peak}
    print(
        f"plan/real {family} peft={use_peft} autocast={autocast}: "
        + ", ".join(f"{k} {v:.4f}" for k, v in ratios.items())
    )
    for phase, value in measured.saved.items():
        assert plan.measured.saved[phase] == pytest.approx(value, rel=0.02), phase
    assert plan.measured.train_peak == pytest.approx(measured.train_peak, rel=0.02)
    assert plan.measured.rollout_peak == pytest.approx(measured.rollout_peak, rel=0.02)


@pytest.mark.extended
def test_checkpointing_off_saves_more():
    recipe = Recipe(
        model=testing.tiny_flux_pipeline(),
        resolution=64,
        dtype=None,
        reward=testing.tiny_clip_reward(),
        max_sequence_length=16,
        lora_r=4,
    )
    plan = estimate(recipe)
    assert plan.no_checkpointing.saved["transformer"] > plan.measured.saved["transformer"]
    assert plan.flops["step"] > plan.flops["rollout"] > 0


def test_unknown_model_stops_without_download(tmp_path):
    with pytest.raises(CannotSize, match="nothing was downloaded"):
        meta_pipeline("someone/unknown-model")
    with pytest.raises(CannotSize, match="model_index.json"):
        meta_pipeline(str(tmp_path))


def _params(module) -> float:
    return sum(p.numel() for p in module.parameters())


#: Published parameter counts (billions) and the tolerance the shipped configs must meet.
PUBLISHED = {
    "black-forest-labs/FLUX.1-dev": {
        "transformer": 11.90,
        "text_encoder_2": 4.76,
        "text_encoder": 0.123,
        "vae": 0.084,
    },
    "black-forest-labs/FLUX.2-dev": {"transformer": 32.2, "text_encoder": 24.0},
    "Qwen/Qwen-Image": {"transformer": 20.43, "text_encoder": 8.29},
    "lodestones/Chroma1-HD": {"transformer": 8.9},
    "stabilityai/stable-diffusion-3.5-large": {"transformer": 8.06},
    "Tongyi-MAI/Z-Image-Turbo": {"transformer": 6.15, "text_encoder": 4.02},
}


@pytest.mark.parametrize(
    "model",
    [pytest.param(m, marks=() if m == "black-forest-labs/FLUX.1-dev" else pytest.mark.extended) for m in PUBLISHED],
)
def test_shipped_configs_have_the_published_sizes(model):
    pipeline = meta_pipeline(model)
    for name, billions in PUBLISHED[model].items():
        assert _params(getattr(pipeline, name)) / 1e9 == pytest.approx(billions, rel=0.01), name
    assert model in SHIPPED


def test_shipped_reward_sizes():
    assert _params(meta_reward("hpsv2.1", torch.bfloat16).model) / 1e6 == pytest.approx(986.1, rel=0.001)
    assert _params(meta_reward("clip", torch.bfloat16).model) / 1e6 == pytest.approx(427.6, rel=0.001)


def test_report_verdict_and_changes():
    recipe = Recipe(
        model=testing.tiny_flux_pipeline(),
        resolution=64,
        dtype=None,
        reward=testing.tiny_clip_reward(),
        max_sequence_length=16,
        lora_r=32,
        lora_alpha=32,
        rollout_steps=2,
    )
    plan = estimate(recipe, without_checkpointing=False)
    peak = plan.overall_peak()
    roomy = verdict(plan, 10 * GB)
    assert roomy.fits and roomy.largest_batch > 1
    assert plan.overall_peak(batch=roomy.largest_batch) <= roomy.budget
    tight = peak + allowance_bytes(peak) - 1  # one byte short once the allowance is taken
    short = verdict(plan, tight)
    assert not short.fits and short.largest_batch == 0
    assert any("LoRA rank" in c.what for c in short.changes) and any("FSDP2" in c.what for c in short.changes)
    text = render(plan, 10 * GB, "H100", peak_flops=989.4e12)
    assert "FITS" in text and "step time at 40% MFU" in text


def _plan_cli(capsys, *argv):
    from srpo_trl.cli import main

    assert main(["plan", *argv]) == 0
    return capsys.readouterr().out


def test_plan_command_on_a_tiny_local_folder(tmp_path, capsys):
    folder = tmp_path / "tiny-flux"
    testing.tiny_flux_pipeline().save_pretrained(folder)
    out = _plan_cli(
        capsys,
        *("--model_name_or_path", str(folder), "--resolution", "64", "--max_sequence_length", "16"),
        *("--use_peft", "--lora_r", "4", "--lora_alpha", "4", "--rollout_steps", "2", "--reward_funcs", "clip"),
        *("--engine", "fsdp2", "--num_processes", "2", "--memory_gb", "24", "--no_checkpointing_trace"),
    )
    assert "FluxPipeline" in out and "FITS" in out and "nothing was downloaded" in out
    assert "gathered blocks" in out  # FSDP2's prefetched blocks


def test_plan_command_stops_on_an_unsizable_model(capsys):
    from srpo_trl.cli import main

    with pytest.raises(SystemExit, match="nothing was downloaded"):
        main(["plan", "--model_name_or_path", "someone/unknown-model"])


@pytest.mark.extended
def test_plan_command_on_flux1_dev_matches_the_h200_record(capsys):
    """FLUX.1-dev LoRA r=64, 720 px, bf16 LoRA and AdamW (as bench_step.py ran then), VAE slicing: the H200 run 5
    recorded 36.25 GB (`max_memory_allocated`, docs/gpu/2026-11-26-h200-run5-issue6.json); issue 28 asks 10 %."""
    out = _plan_cli(
        capsys,
        *("--model_name_or_path", "black-forest-labs/FLUX.1-dev", "--dtype", "bfloat16", "--use_peft"),
        *("--lora_r", "64", "--lora_alpha", "64", "--trainable_dtype", "bfloat16", "--rollout_steps", "2"),
        *("--reward_funcs", "hpsv2.1", "--reward_dtype", "bfloat16", "--gpu", "H200", "--no_checkpointing_trace"),
    )
    peak = float(out.split("Peak per process: ")[1].split(" GB")[0])
    assert peak == pytest.approx(36.25, rel=0.02)  # 36.11 GB under CUDA's replayed autocast (docs/benchmarks.md)


def test_another_engine_without_tracing_again_equals_a_fresh_estimate():
    """`retarget` (what benchmarks/plan_tables.py uses for docs/distributed.md) against `estimate` itself."""

    def recipe(**engine):
        return Recipe(
            model=testing.tiny_flux_pipeline(),
            resolution=64,
            dtype=None,
            reward=testing.tiny_clip_reward(),
            max_sequence_length=16,
            lora_r=4,
            use_peft=False,
            **engine,
        )

    base = estimate(recipe(), without_checkpointing=False)
    for engine, n in (("ddp", 2), ("fsdp2", 4), ("zero2", 2), ("zero3", 2)):
        fresh = estimate(recipe(engine=engine, processes=n), without_checkpointing=False)
        moved = retarget(base, engine, n)
        assert (moved.resident, moved.state, moved.extras) == (fresh.resident, fresh.state, fresh.extras), engine
        assert moved.overall_peak() == fresh.overall_peak() and moved.caching_peak == fresh.caching_peak
    assert retarget(base, "fsdp2", 4).overall_peak() < base.overall_peak()


def test_sharding_engines_drop_autocasts_copies_of_the_trainable_weights():
    """Under CUDA's bf16 autocast a full fine-tune's fp32 weights get bf16 copies that autograd keeps; FSDP2 and
    ZeRO-3 gather bf16 blocks themselves instead, so their peaks leave exactly those copies out."""
    recipe = Recipe(
        model=testing.tiny_flux_pipeline(),
        resolution=64,
        dtype=None,
        reward=testing.tiny_clip_reward(),
        max_sequence_length=16,
        use_peft=False,
        rollout_steps=2,
    )
    transformer = recipe.model.transformer
    plan = estimate(recipe, without_checkpointing=False)
    m = plan.measured
    # One bf16 copy of each weight (and bias) a matrix product or convolution reads, live at the forward's end.
    products = [mod for mod in transformer.modules() if isinstance(mod, (torch.nn.Linear, torch.nn.Conv2d))]
    copies = 2 * sum(p.numel() for mod in products for p in mod.parameters(recurse=False))
    assert m.forward_peak - m.forward_peak_sharded == copies
    # The rollout's casts too: autocast caches them for its region, without gradient as well (FSDP2 makes none).
    # Its peak comes before the last layers' casts are made: most copies, not all, are live then.
    assert 0.8 * copies < m.rollout_peak - m.rollout_peak_sharded <= copies
    assert plan.phase_peaks() == (m.rollout_peak, m.forward_peak, m.train_peak)
    assert retarget(plan, "fsdp2", 2).phase_peaks() == (m.rollout_peak_sharded, m.forward_peak_sharded,
                                                         m.train_peak_sharded)  # fmt: skip
    assert plan.peak_bytes() - retarget_peak(plan, "ddp") == -plan.state["gradients"]  # DDP adds buckets, no less
    assert retarget_peak(plan, "fsdp2") < retarget_peak(plan, "zero2")


def retarget_peak(plan, engine):
    return retarget(plan, engine, 2).peak_bytes()


@pytest.mark.parametrize(
    "family",
    [
        "tiny_flux3_pipeline",
        pytest.param("tiny_qwen_image21_pipeline", marks=pytest.mark.extended),
        pytest.param("tiny_qwen_image_edit_pipeline", marks=pytest.mark.extended),
    ],
)
def test_a_family_the_planner_cannot_size_stops_with_a_clear_error(family):
    recipe = Recipe(
        model=getattr(testing, family)(), resolution=64, dtype=None, reward=testing.tiny_clip_reward(), lora_r=4
    )
    with pytest.raises(CannotSize, match="nothing was downloaded"):
        estimate(recipe, without_checkpointing=False)
