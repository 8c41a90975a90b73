"""Chroma through the Chroma adapter, on a tiny offline `ChromaPipeline`: the stock sampler's images with and without
its real classifier-free guidance (negative prompt, text mask), an uphill step at the recipe defaults with fp32 masters
on a bf16-loaded pipeline, and the LoRA (alpha != r, rsLoRA, DoRA) and full fine-tune round trips through the stock
loaders and `srpo-trl eval`'s sampling. (Its Img2Img / Inpaint variants are in tests/test_variants.py.)"""

import pytest
import torch
from datasets import Dataset
from lora_helpers import LORAS, far_from_identity
from peft import LoraConfig
from uphill import uphill_step

from srpo_trl import ColorWordReward, SRPOTrainer, direct_align
from srpo_trl.evaluation import EvalSettings, load_result
from srpo_trl.evaluation import generate as eval_generate
from srpo_trl.models import ChromaAdapter, get_adapter
from srpo_trl.testing import tiny_chroma_pipeline

SIZE, STEPS = 64, 4
PROMPTS = ["a bird", "a red tree on a hill"]  # of different lengths: the text masks differ


def _stock(pipe, guidance, prompts=PROMPTS, seed=3):
    pipe.set_progress_bar_config(disable=True)
    return pipe(
        prompt=prompts, height=SIZE, width=SIZE, num_inference_steps=STEPS, guidance_scale=guidance,
        max_sequence_length=32, output_type="pt", generator=torch.Generator().manual_seed(seed),
    ).images  # fmt: skip


@pytest.mark.parametrize("guidance", [1.0, 5.0], ids=["cfg1", "cfg5"])
def test_our_rollout_equals_the_stock_chroma_sampler(guidance):
    pipe = tiny_chroma_pipeline(0)
    adapter = get_adapter(pipe, max_sequence_length=32)
    assert isinstance(adapter, ChromaAdapter) and adapter.default_guidance == {
        "rollout": 5.0,
        "train": 1.0,
        "sample": 5.0,
    }
    text = adapter.encode_prompts(PROMPTS, torch.device("cpu"))
    assert text["prompt_attention_mask"].sum(1).tolist() != text["negative_prompt_attention_mask"].sum(1).tolist()
    eps = adapter.sample_noise(2, SIZE, SIZE, torch.Generator().manual_seed(3), torch.device("cpu"))
    x0 = direct_align.euler_sample(
        lambda x, s, _: adapter.velocity(pipe.transformer, x, s, text, guidance, SIZE, SIZE),
        eps,
        direct_align.shifted_grid(STEPS, adapter.default_time_shift(SIZE, SIZE)).float(),
    )
    ours, stock = adapter.decode(x0, SIZE, SIZE), _stock(pipe, guidance)
    print(f"chroma cfg {guidance}: largest difference to the stock sampler {(ours - stock).abs().max().item():.1e}")
    torch.testing.assert_close(ours, stock, atol=1e-5, rtol=0)
    if guidance > 1:
        assert (stock - _stock(pipe, 1.0)).abs().max() > 1e-3  # the guidance was applied


def _trainer(config, lora=None, dtype=torch.float32, **overrides):
    pipe = tiny_chroma_pipeline(0)
    if dtype != torch.float32:
        pipe.to(dtype=dtype)
    data = Dataset.from_dict({"prompt": ["a cat", "a dog on a hill", "a house", "the sea"]})
    peft = LoraConfig(**{"init_lora_weights": "gaussian", **lora}) if lora is not None else None
    return SRPOTrainer(pipe, ColorWordReward(), args=config(max_sequence_length=32, **overrides), train_dataset=data,
                       peft_config=peft)  # fmt: skip


def test_one_step_at_the_recipe_defaults_goes_uphill_with_fp32_masters_on_a_bf16_pipeline(config):
    trainer = _trainer(
        config, dict(r=4, lora_alpha=8), dtype=torch.bfloat16, max_steps=1, per_device_train_batch_size=2
    )
    args = trainer.args
    assert (args.learning_rate, args.rollout_guidance_scale, args.train_guidance_scale) == (5e-6, 5.0, 1.0)
    assert args.use_inversion_branch and args.hinge_threshold is None
    step = uphill_step(trainer)
    assert set(step.dots) == {"denoise", "inversion"} and step.uphill, step.dots
    assert step.dtypes == {torch.float32} and not step.unchanged_with_gradient


@pytest.mark.parametrize("lora", list(LORAS))
def test_the_lora_reloads_in_the_stock_chroma_pipeline_as_trained(tmp_path, config, lora):
    trainer = _trainer(config, LORAS[lora])
    far_from_identity(trainer.model)
    trainer.save_model(str(tmp_path / "lora"))
    with_trained = tiny_chroma_pipeline(0)
    with_trained.transformer = trainer.accelerator.unwrap_model(trainer.model).eval()
    fresh = tiny_chroma_pipeline(0)
    base = _stock(fresh, 5.0)
    fresh.load_lora_weights(str(tmp_path / "lora"))
    trained, loaded = _stock(with_trained, 5.0), _stock(fresh, 5.0)
    assert (trained - base).abs().max() > 1e-2
    gap = (loaded - trained).abs().max().item()
    print(f"chroma {lora}: reloaded against trained {gap:.1e}")
    assert gap <= 1e-5
    card = (tmp_path / "lora" / "README.md").read_text()
    assert "from diffusers import ChromaPipeline" in card and "guidance_scale=5.0," in card and "- chroma" in card


def test_a_full_fine_tune_reloads_through_eval(tmp_path, config):
    from diffusers import ChromaTransformer2DModel

    trainer = _trainer(config)
    with torch.no_grad():
        trainer.model.proj_out.weight.mul_(1.5)  # a visible change of the output
    trainer.save_model(str(tmp_path / "full"))
    assert type(
        ChromaTransformer2DModel.from_pretrained(str(tmp_path / "full"), subfolder="transformer")
    ).__name__ == ("ChromaTransformer2DModel")
    settings = EvalSettings(resolution=SIZE, num_inference_steps=3, batch_size=2, max_sequence_length=32)
    with_trained = tiny_chroma_pipeline(0)
    with_trained.transformer = trainer.accelerator.unwrap_model(trainer.model).eval()
    expected = eval_generate(with_trained, PROMPTS, settings)  # the family's sample guidance: CFG 5
    fresh = tiny_chroma_pipeline(0)
    base = eval_generate(fresh, PROMPTS, settings)
    assert load_result(fresh, str(tmp_path / "full")) == "transformer"
    loaded = eval_generate(fresh, PROMPTS, settings)
    assert (expected - base).abs().max() > 1e-2
    gap = (loaded - expected).abs().max().item()
    print(f"chroma full fine-tune through eval: {gap:.1e}")
    assert gap <= 1e-5
