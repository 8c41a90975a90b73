"""Qwen-Image 2.1 through its adapter, on a tiny offline `QwenImage21Pipeline`: the stock sampler's images on the
authors' sigma grid with and without true CFG (prompts of two lengths, batched without padding), the grid and time
shift, the text cache's rows, an uphill step at the recipe defaults with fp32 masters on a bf16-loaded pipeline, the
LoRA (alpha != r, rsLoRA, DoRA) and full fine-tune round trips through the stock loaders, `srpo-trl eval`'s sampling
and the model card, and the FSDP2 / regional-compilation block classes."""

import math

import pytest
import torch
from datasets import Dataset
from diffusers import QwenImage21Transformer2DModel
from lora_helpers import LORAS, far_from_identity
from peft import LoraConfig
from uphill import uphill_step

from srpo_trl import ColorWordReward, SRPOTrainer, direct_align
from srpo_trl.evaluation import EvalSettings, load_result
from srpo_trl.evaluation import generate as eval_generate
from srpo_trl.models import QwenImage21Adapter, get_adapter
from srpo_trl.testing import tiny_qwen_image21_pipeline
from srpo_trl.testing.qwen_image21 import TINY_SAMPLE_SIGMAS

SIZE, STEPS = 64, 4
PROMPTS = ["a bird", "a red tree on a hill"]  # of different lengths
CPU = torch.device("cpu")


def _stock(pipe, prompts, eps, guidance):
    """The stock pipeline's RGB images, one call per prompt (the images a prompt gets on its own), from `eps`."""
    pipe.set_progress_bar_config(disable=True)
    kwargs = QwenImage21Adapter.pipeline_guidance_kwargs(guidance)
    return torch.cat(
        [
            pipe(
                p,
                height=SIZE,
                width=SIZE,
                num_inference_steps=STEPS,
                latents=eps[i : i + 1],
                output_type="pt",
                **kwargs,
            ).images[:, :3]  # fmt: skip
            for i, p in enumerate(prompts)
        ]
    )


def _rollout(pipe, adapter, text, eps, guidance):
    with torch.no_grad():
        x0 = direct_align.euler_sample(
            lambda x, s, _: adapter.velocity(pipe.transformer, x, s, text, guidance, SIZE, SIZE),
            eps,
            adapter.rollout_sigmas(STEPS, SIZE, SIZE),
        )
        return adapter.decode(x0, SIZE, SIZE)


@pytest.mark.parametrize("guidance", [1.0, 4.0], ids=["cfg1", "cfg4"])
def test_our_rollout_equals_the_stock_sampler_on_the_authors_grid(guidance):
    pipe = tiny_qwen_image21_pipeline(0, sample_sigmas=TINY_SAMPLE_SIGMAS)
    adapter = get_adapter(pipe)
    assert isinstance(adapter, QwenImage21Adapter) and adapter.default_guidance == {
        "rollout": 1.0,
        "train": 1.0,
        "sample": 1.0,
    }
    text = adapter.encode_prompts(PROMPTS, CPU)
    assert text["text_lengths"][0] < text["text_lengths"][1]  # two lengths: two transformer calls, no padding read
    eps = adapter.sample_noise(2, SIZE, SIZE, torch.Generator().manual_seed(3), CPU)
    ours, stock = _rollout(pipe, adapter, text, eps, guidance), _stock(pipe, PROMPTS, eps, guidance)
    # The stock call's own grid (8 author levels, shifted and stretched, then 0) is the adapter's.
    assert torch.equal(pipe.scheduler.sigmas, adapter.rollout_sigmas(STEPS, SIZE, SIZE))
    assert len(pipe.scheduler.sigmas) == len(TINY_SAMPLE_SIGMAS) + 1
    print(f"qwen-image-2.1 cfg {guidance}: largest difference to the stock sampler {(ours - stock).abs().max():.1e}")
    torch.testing.assert_close(ours, stock, atol=1e-5, rtol=0)
    if guidance > 1:
        assert (stock - _stock(pipe, PROMPTS, eps, 1.0)).abs().max() > 1e-3  # the guidance was applied


def test_grid_time_shift_and_text_cache_rows():
    """Without `sample_sigmas`, the grid is the stock one of `num_inference_steps` levels; the window's shift is the
    scheduler's `exp(mu)` over the image's tokens; cached rows (unpadded) stack back to the encoded batch; a prompt's
    velocity does not depend on what it is batched with (the stock batched call's right padding would move it)."""
    pipe = tiny_qwen_image21_pipeline(0)
    adapter = get_adapter(pipe)
    assert adapter.latent_granularity == 32
    eps = adapter.sample_noise(2, SIZE, SIZE, torch.Generator().manual_seed(1), CPU)
    _stock(pipe, PROMPTS[:1], eps, 1.0)
    assert torch.equal(pipe.scheduler.sigmas, adapter.rollout_sigmas(STEPS, SIZE, SIZE))
    assert len(adapter.rollout_sigmas(7, SIZE, SIZE)) == 8
    config = pipe.scheduler.config
    slope = (config.max_shift - config.base_shift) / (config.max_image_seq_len - config.base_image_seq_len)
    mu = config.base_shift + slope * (1024 // 16 * 1024 // 16 - config.base_image_seq_len)
    assert adapter.default_time_shift(1024, 1024) == pytest.approx(math.exp(mu))  # 3.16 at 1024 px
    text = adapter.encode_prompts(PROMPTS, CPU)
    rows = [adapter.cache_entry({k: v[i] for k, v in text.items()}) for i in range(2)]
    assert [r["prompt_embeds"].shape[0] for r in rows] == text["text_lengths"].tolist()
    restacked = adapter.stack_entries(rows)
    assert all(torch.equal(restacked[k], text[k]) for k in text)
    sigma = torch.full((2,), 0.7)
    with torch.no_grad():
        batched = adapter.velocity(pipe.transformer, eps, sigma, text, 1.0, SIZE, SIZE)
        alone = adapter.velocity(
            pipe.transformer, eps[:1], sigma[:1], adapter.stack_entries(rows[:1]), 1.0, SIZE, SIZE
        )
    torch.testing.assert_close(batched[:1], alone, atol=1e-6, rtol=0)


def _far(model):
    """[`far_from_identity`], four times as far: the tiny model's gates damp a LoRA's change of the images."""
    far_from_identity(model)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.mul_(4)


def _trainer(config, lora=None, dtype=torch.float32, **overrides):
    pipe = tiny_qwen_image21_pipeline(0)
    if dtype != torch.float32:
        pipe.to(dtype=dtype)
    data = Dataset.from_dict({"prompt": ["a cat", "a dog on a hill", "a house", "the sea"]})
    peft = LoraConfig(**{"init_lora_weights": "gaussian", **lora}) if lora is not None else None
    return SRPOTrainer(pipe, ColorWordReward(), args=config(**overrides), train_dataset=data, peft_config=peft)


def test_one_step_at_the_recipe_defaults_goes_uphill_with_fp32_masters_on_a_bf16_pipeline(config):
    trainer = _trainer(
        config, dict(r=4, lora_alpha=8), dtype=torch.bfloat16, max_steps=1, per_device_train_batch_size=2
    )
    args = trainer.args
    assert (args.learning_rate, args.rollout_guidance_scale, args.train_guidance_scale) == (5e-6, 1.0, 1.0)
    assert args.use_inversion_branch and args.hinge_threshold is None
    step = uphill_step(trainer)
    assert set(step.dots) == {"denoise", "inversion"} and step.uphill, step.dots
    assert step.dtypes == {torch.float32} and not step.unchanged_with_gradient


@pytest.mark.parametrize("lora", list(LORAS))
def test_the_lora_reloads_in_the_stock_pipeline_as_trained(tmp_path, config, lora):
    trainer = _trainer(config, LORAS[lora])
    _far(trainer.model)
    trainer.save_model(str(tmp_path / "lora"))
    eps = get_adapter(trainer.pipeline).sample_noise(1, SIZE, SIZE, torch.Generator().manual_seed(5), CPU)
    with_trained = tiny_qwen_image21_pipeline(0)
    with_trained.transformer = trainer.accelerator.unwrap_model(trainer.model).eval()
    fresh = tiny_qwen_image21_pipeline(0)
    base = _stock(fresh, PROMPTS[1:], eps, 1.0)
    fresh.load_lora_weights(str(tmp_path / "lora"))
    trained, loaded = _stock(with_trained, PROMPTS[1:], eps, 1.0), _stock(fresh, PROMPTS[1:], eps, 1.0)
    assert (trained - base).abs().max() > 1e-2
    gap = (loaded - trained).abs().max().item()
    print(f"qwen-image-2.1 {lora}: reloaded against trained {gap:.1e}")
    assert gap <= 1e-5
    card = (tmp_path / "lora" / "README.md").read_text()
    snippet = card.split("```python\n", 1)[1].split("```", 1)[0]
    assert "from diffusers import QwenImage21Pipeline" in snippet and "true_cfg_scale=1.0," in snippet
    assert "- qwen-image" in card


def test_a_full_fine_tune_reloads_in_the_stock_pipeline(tmp_path, config):
    trainer = _trainer(config)
    with torch.no_grad():
        trainer.model.proj_out.weight.mul_(1.5)  # a visible change of the output
    trainer.save_model(str(tmp_path / "full"))
    reloaded = QwenImage21Transformer2DModel.from_pretrained(str(tmp_path / "full"), subfolder="transformer")
    assert type(reloaded) is QwenImage21Transformer2DModel
    eps = get_adapter(trainer.pipeline).sample_noise(1, SIZE, SIZE, torch.Generator().manual_seed(5), CPU)
    with_trained = tiny_qwen_image21_pipeline(0)
    with_trained.transformer = trainer.accelerator.unwrap_model(trainer.model).eval()
    fresh = tiny_qwen_image21_pipeline(0)
    base = _stock(fresh, PROMPTS[1:], eps, 1.0)
    fresh.transformer = reloaded.eval()
    trained, loaded = _stock(with_trained, PROMPTS[1:], eps, 1.0), _stock(fresh, PROMPTS[1:], eps, 1.0)
    assert (trained - base).abs().max() > 1e-2
    gap = (loaded - trained).abs().max().item()
    print(f"qwen-image-2.1 full fine-tune: reloaded against trained {gap:.1e}")
    assert gap <= 1e-5


def test_eval_sampling_of_a_reloaded_lora_equals_the_trained_model(tmp_path, config):
    trainer = _trainer(config, LORAS["alpha-not-r"])
    _far(trainer.model)
    trainer.save_model(str(tmp_path / "lora"))
    settings = EvalSettings(resolution=SIZE, num_inference_steps=3, batch_size=1, max_sequence_length=32)
    with_trained = tiny_qwen_image21_pipeline(0)
    with_trained.transformer = trainer.accelerator.unwrap_model(trainer.model).eval()
    expected = eval_generate(with_trained, PROMPTS, settings)
    fresh = tiny_qwen_image21_pipeline(0)
    base = eval_generate(fresh, PROMPTS, settings)
    assert load_result(fresh, str(tmp_path / "lora")) == "lora"
    loaded = eval_generate(fresh, PROMPTS, settings)
    assert expected.shape[1] == 3 and (expected - base).abs().max() > 1e-2
    gap = (loaded - expected).abs().max().item()
    print(f"qwen-image-2.1 LoRA through eval: {gap:.1e}")
    assert gap <= 1e-5
    card = (tmp_path / "lora" / "README.md").read_text()
    snippet = card.split("```python\n", 1)[1].split("```", 1)[0]
    scope = {"pipe": tiny_qwen_image21_pipeline(0)}  # the base was built in code: the snippet starts from it
    exec(snippet.replace("pipe = ...", "pass  #"), scope)  # noqa: S102 - the card's own code
    assert tuple(scope["image"].size) == (SIZE, SIZE)


def test_fsdp2_and_regional_compilation_block_classes():
    """FSDP2 wraps `_no_split_modules`; accelerate's regional compilation compiles each `_repeated_blocks` block."""
    from accelerate.utils import compile_regions
    from torch._dynamo.eval_frame import OptimizedModule

    transformer = tiny_qwen_image21_pipeline(0).transformer
    cls = type(transformer)
    assert cls._no_split_modules == ["QwenImage21TransformerBlock"]
    assert cls._repeated_blocks == ["QwenImage21TransformerBlock"]
    blocks = [type(m).__name__ for m in transformer.modules() if type(m).__name__ == "QwenImage21TransformerBlock"]
    assert len(blocks) == len(transformer.transformer_blocks) == 2
    compiled = compile_regions(transformer, backend="eager")
    wrapped = [type(m._orig_mod).__name__ for m in compiled.modules() if isinstance(m, OptimizedModule)]
    assert [n for n in wrapped if n == "QwenImage21TransformerBlock"] == blocks  # each block on its own
