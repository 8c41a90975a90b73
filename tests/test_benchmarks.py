"""benchmarks/bench_step.py on the CPU: the records' fields, never the timings' values."""

import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_step.py"
SMALL = ["--device", "cpu", "--warmup", "0", "--repeats", "1"]


@pytest.fixture(scope="module")
def bench_step():
    spec = importlib.util.spec_from_file_location("bench_step", BENCH)
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_step"] = module  # its dataclasses look their module up
    if str(BENCH.parent) not in sys.path:  # as when it runs as a script: its full-size builders sit beside it
        sys.path.insert(0, str(BENCH.parent))
    spec.loader.exec_module(module)
    return module


def _check_record(record, bench_step, *, full=False):
    assert record["benchmark"] == "srpo_step"
    assert record["device"] and record["date"] and record["versions"]["torch"]
    assert set(record["phases"]) == set(bench_step.PHASES)
    for name, phase in record["phases"].items():
        assert phase["median_s"] > 0, name
        assert len(phase["all_s"]) == record["config"]["repeats"]
        assert phase["peak_memory_bytes"] is None  # CPU
    step = record["step_median_s"]
    assert step > 0 and record["images_per_s"] == pytest.approx(record["config"]["batch_size"] / step)
    # The phases cover the step; the little left outside them is bookkeeping.
    assert record["phases_sum_median_s"] <= step * 1.02 + 1e-3
    assert record["phases_sum_median_s"] >= 0.5 * step
    # MFU is null on a CPU (no peak given); model FLOPs are counted anyway.
    assert record["peak_tflops"] is None and record["mfu_step"] is None and record["mfu_rollout"] is None
    assert record["peak_memory_bytes"] is None and record["peak_rss_bytes"] > 0
    flops = record["flops"]
    for key in ["transformer_forward_B", "transformer_forward_2B", "vae_decode_forward_2B", "reward_forward_2B"]:
        assert flops[key] > 0, key
    assert flops["transformer_forward_2B"] == 2 * flops["transformer_forward_B"]
    assert 0 < flops["reward_image_forward_2B"] < flops["reward_forward_2B"]
    assert flops["transformer_backward_factor"] == (2 if full else 1)
    assert flops["rollout"] == record["config"]["rollout_steps"] * flops["transformer_forward_B"]
    assert flops["step"] > flops["rollout"]
    assert record["achieved_tflops_step"] > 0
    params = record["params"]
    assert 0 < params["trainable"] <= params["transformer"]
    assert record["optimizer_state_bytes"] >= 2 * record["trainable_param_bytes"]  # AdamW: two moments
    assert "excluded" in record["text_encoding"]
    assert all(math.isfinite(r) for r in record["last_rewards"])
    json.dumps(record)  # serialisable as it is


def test_tiny_bench_record(bench_step, tmp_path):
    out = tmp_path / "runs.jsonl"
    (record,) = bench_step.main(["--model", "tiny", "--rollout_steps", "3", "--json_out", str(out), *SMALL])
    _check_record(record, bench_step)
    assert record["config"]["lora_rank"] == 8 and record["config"]["resolution"] == 64
    assert 0 < record["last_grad_norm"] < math.inf  # the LoRA gets gradients through both checkpointed models
    assert json.loads(out.read_text().splitlines()[-1])["step_median_s"] == record["step_median_s"]
    assert "rollout" in bench_step.summary(record)


@pytest.mark.slow  # compiles the blocks (aot_eager): about 25 s on 2 cores; the trainer's compile test runs in the extended tier
def test_compiled_blocks_and_vae_slicing_record(bench_step):
    argv = ["--model", "tiny", "--rollout_steps", "2", "--compile", "regions", "--compile_backend", "aot_eager"]
    (record,) = bench_step.main([*argv, "--no-vae_slicing", "--device", "cpu", "--warmup", "1", "--repeats", "1"])
    _check_record(record, bench_step)
    assert record["config"]["compile"] == "regions" and record["config"]["vae_slicing"] is False
    assert len(record["warmup_s"]) == 1 and record["warmup_s"][0] > 0
    assert record["dynamo_counters"]["stats"]["unique_graphs"] >= 2  # at least one graph per block kind
    assert 0 < record["last_grad_norm"] < math.inf  # gradients flow through the compiled, checkpointed blocks


def test_tiny_full_fine_tuning_record(bench_step):
    args = bench_step.parse_args(["--model", "tiny", "--full", "--rollout_steps", "2", *SMALL])
    record = bench_step.run_case(args)
    _check_record(record, bench_step, full=True)
    assert 0 < record["last_grad_norm"] < math.inf
    assert record["params"]["trainable"] == record["params"]["transformer"]
    estimate = record["full_finetune_memory_estimate"]
    assert estimate["pure_bf16"]["total"] == 8 * record["params"]["transformer"]


# FLUX.1-dev's widths (3072, 24 heads, T5 width 4096, 16 latent channels) with 1 + 1 blocks and a 1 + 1-layer ViT-H.
FLUX_DEV_ONE_BLOCK = ["--model", "flux-dev", "--num_layers", "1", "--num_single_layers", "1", "--reward_layers", "1"]


def test_flux_dev_architecture_builds_at_its_real_widths(bench_step):
    """What `build_models` makes of FLUX.1-dev, on the meta device: shapes and dtypes without memory or compute.

    A step at these widths (about 0.7 B parameters) is the slow test below: about 20 minutes in bf16 on a 2-core CPU
    without AVX512-BF16, and still about a minute in fp32, too long for the default run.
    """
    args = bench_step.parse_args([*FLUX_DEV_ONE_BLOCK, "--device", "meta", "--dtype", "bfloat16"])
    models = bench_step.build_models(args)
    transformer, pipe = models.transformer, models.pipe
    config = transformer.config
    assert config.num_attention_heads * config.attention_head_dim == 3072 and config.num_attention_heads == 24
    assert config.joint_attention_dim == 4096 and config.pooled_projection_dim == 768 and config.guidance_embeds
    assert pipe.vae.config.latent_channels == 16 and pipe.text_encoder_2.config.d_model == 4096
    assert len(transformer.transformer_blocks) == 1 and len(transformer.single_transformer_blocks) == 1
    vision, text = models.reward.model.config.vision_config, models.reward.model.config.text_config
    assert (vision.hidden_size, vision.num_hidden_layers) == (1280, 1)  # ViT-H-14, 1 layer
    assert (text.hidden_size, text.num_hidden_layers) == (1024, 1)
    # The base's parameters are those bench_step counts for the memory estimate; the LoRA r=64 comes on top.
    lora = sum(p.numel() for p in models.trainable)
    assert bench_step._module_params(transformer) == bench_step.flux_transformer_params(1, 1) + lora
    assert 5e8 < bench_step._module_params(transformer) < 6e8  # 1 double + 1 single block of FLUX.1-dev
    assert 8e7 < bench_step._module_params(pipe.vae) < 9e7  # FLUX.1-dev's VAE: 84 M
    assert args.lora_rank == 64 and 0 < lora < 0.05 * bench_step._module_params(transformer)
    trainable = {n for n, p in transformer.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    # peft makes the LoRA in the base layer's dtype: a bf16 pipeline trains bf16 LoRA weights (and AdamW states).
    assert {p.dtype for p in models.trainable} == {torch.bfloat16}
    everything = [*pipe.transformer.parameters(), *pipe.vae.parameters(), *models.reward.parameters()]
    assert all(p.device.type == "meta" for p in everything)  # created in place: nothing was allocated


@pytest.mark.slow  # bf16 at FLUX.1-dev's widths: seconds with AVX512-BF16, about 20 minutes on an AVX2-only CPU
def test_flux_dev_architecture_step_in_bf16(bench_step):
    """FLUX.1-dev's widths, 1 + 1 blocks, 64 px: one whole step in bf16, as on the GPU."""
    argv = [*FLUX_DEV_ONE_BLOCK, "--dtype", "bfloat16", "--resolution", "64", "--max_sequence_length", "16"]
    (record,) = bench_step.main([*argv, "--rollout_steps", "1", *SMALL])
    _check_record(record, bench_step)
    assert record["config"]["lora_rank"] == 64
    assert 5e8 < record["params"]["transformer"] < 6e8  # 1 double + 1 single block of FLUX.1-dev
    assert 8e7 < record["params"]["vae"] < 9e7  # FLUX.1-dev's VAE: 84 M
    assert record["params"]["trainable_dtype"] == "torch.bfloat16"


def test_compare_trainer_is_tiny_only(bench_step):
    with pytest.raises(SystemExit):
        bench_step.parse_args(["--model", "flux-dev", "--compare_trainer"])
    with pytest.raises(SystemExit):
        bench_step.parse_args(["--resolution", "72"])


class _GradientCapture:
    """An optimizer stand-in for `timed_step`: keeps the gradients it is asked to step with, changes nothing."""

    def __init__(self, params):
        self.params, self.grads = params, None

    def step(self):
        self.grads = [p.grad.detach().clone() for p in self.params]

    def zero_grad(self, set_to_none=True):
        for p in self.params:
            p.grad = None


def test_bench_step_times_the_trainers_own_step(bench_step, tmp_path):
    """The benchmark's phase-by-phase step (graph cut between phases) and `SRPOTrainer.compute_loss` (one
    backward) give the same loss and gradients from the same noise and levels."""
    from datasets import Dataset
    from peft import LoraConfig

    from srpo_trl import SRPOConfig, SRPOTrainer
    from srpo_trl.testing import tiny_clip_reward, tiny_flux_pipeline

    args = bench_step.parse_args(["--model", "tiny", "--rollout_steps", "2", "--batch_size", "2", *SMALL])
    prompts = bench_step.PROMPTS[:2]
    trainer = SRPOTrainer(
        tiny_flux_pipeline(0),
        tiny_clip_reward(0, scale=1.0, name="hps"),
        args=SRPOConfig(
            str(tmp_path), resolution=64, rollout_steps=2, max_sequence_length=args.max_sequence_length,
            positive_control_words=bench_step.POSITIVE_WORDS, negative_control_words=bench_step.NEGATIVE_WORDS,
            transformer_gradient_checkpointing=False, vae_gradient_checkpointing=False, report_to="none",
        ),
        train_dataset=Dataset.from_dict({"prompt": prompts}),
        peft_config=LoraConfig(r=4, lora_alpha=8, init_lora_weights="gaussian"),
    )  # fmt: skip
    params = [p for p in trainer.model.parameters() if p.requires_grad]
    models = bench_step.Models(
        key=None, pipe=trainer.pipeline, adapter=trainer.adapter, reward=trainer.rewards[0], device=torch.device("cpu")
    )
    text = trainer.adapter.encode_prompts(prompts, models.device)
    capture = _GradientCapture(params)
    ctx = bench_step.StepContext(models, args, prompts, text, trainer.step, capture)
    result = bench_step.timed_step(ctx, step_index=0)

    # The trainer's step with the generator the benchmark used for its noise and levels (drawn in the same order).
    trainer._step_generator = lambda: torch.Generator().manual_seed(args.seed * 100_003)
    trainer.state.global_step = 0  # the same control words
    loss = trainer.compute_loss(trainer.model, {"prompt": prompts})
    grads = torch.autograd.grad(loss, params)
    assert loss.item() == pytest.approx(result["loss"], rel=1e-6)
    for mine, benched in zip(grads, capture.grads):
        torch.testing.assert_close(mine, benched, rtol=1e-5, atol=1e-8)
    assert sum(g.norm() for g in grads) > 0
