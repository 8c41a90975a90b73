"""Qwen-Image through its adapter: stock-sampler agreement with and without true CFG, the time shift, the VAE
layout, an uphill step at the recipe defaults, and the full fine-tune round trip (the LoRA round trip is in
`tests/test_lora_round_trip.py`)."""

import math
import os

import pytest
import torch
from datasets import Dataset
from diffusers import QwenImageTransformer2DModel
from peft import LoraConfig
from uphill import uphill_step

from srpo_trl import ColorWordReward, SRPOTrainer, direct_align
from srpo_trl.evaluation import load_result
from srpo_trl.models import QwenImageAdapter, get_adapter
from srpo_trl.models.qwen_image import qwen_image_mu
from srpo_trl.testing import tiny_qwen_image_pipeline

TRAIN = Dataset.from_dict({"prompt": ["a cat", "a dog on a hill", "a house", "the sea"]})
# The tiny tokenizer is character-level, so the tail of the pipeline's system prompt (it drops 34 tokens, the count
# of Qwen's own tokenizer) stays in the text; 256 tokens keep the prompts themselves.
TOKENS = 256


def vivid(pipe):
    """Scale the tiny VAE's output layer so decoded images carry visible colour."""
    with torch.no_grad():
        pipe.vae.decoder.conv_out.weight.mul_(5)
        pipe.vae.decoder.conv_out.bias.zero_()
    return pipe


def stock_images(pipe, prompts, guidance_scale, steps=3, seed=0):
    """The stock pipeline's own images; `guidance_scale` as this adapter maps it (true CFG above 1)."""
    pipe.set_progress_bar_config(disable=True)
    return pipe(
        prompt=prompts, height=64, width=64, num_inference_steps=steps, max_sequence_length=TOKENS,
        output_type="pt", generator=torch.Generator().manual_seed(seed),
        **get_adapter(pipe).pipeline_guidance_kwargs(guidance_scale),
    ).images  # fmt: skip


@pytest.mark.parametrize("guidance_scale", [1.0, 4.0])
def test_stock_sampler_and_qwen_image_adapter_agree(guidance_scale):
    """Packing, the 5-D VAE latents and their statistics, masked text of two lengths, the timestep, and true CFG
    with the negative prompt and diffusers' norm rescale all match `QwenImagePipeline`'s own sampler."""
    pipe = vivid(tiny_qwen_image_pipeline(0))
    adapter = get_adapter(pipe, max_sequence_length=TOKENS)
    assert isinstance(adapter, QwenImageAdapter) and not adapter.guidance_embeds
    prompts = ["a bird", "a red tree on a hill"]  # different lengths: the mask matters
    stock = stock_images(pipe, prompts, guidance_scale, steps=4, seed=3)
    sigmas = pipe.scheduler.sigmas.float()  # the stock grid of this call (its shift and terminal stretch)
    text = adapter.encode_prompts(prompts, torch.device("cpu"))
    assert text["prompt_embeds_mask"][0].sum() < text["prompt_embeds"].shape[1]  # the shorter prompt is padded
    eps = adapter.sample_noise(2, 64, 64, torch.Generator().manual_seed(3), torch.device("cpu"))
    with torch.no_grad():
        x0 = direct_align.euler_sample(
            lambda x, s, _: adapter.velocity(pipe.transformer, x, s, text, guidance_scale, 64, 64), eps, sigmas
        )
        ours = adapter.decode(x0, 64, 64)
    torch.testing.assert_close(ours, stock, atol=1e-5, rtol=0)


def test_the_text_cache_stores_prompts_unpadded_and_batches_them_as_the_encoder_does(tmp_path):
    """On disk each prompt takes its own length; a batch read back is the encoder's batch, and so is the velocity."""
    from srpo_trl.text_cache import TextEmbeddingCache

    pipe = tiny_qwen_image_pipeline(0)
    adapter = get_adapter(pipe, max_sequence_length=TOKENS)
    prompts = ["a bird", "a red tree on a hill at dawn"]
    cache = TextEmbeddingCache(adapter, "cpu", cache_dir=str(tmp_path), batch_size=1)
    assert cache.precompute(prompts)
    lengths = [cache._read(p)["prompt_embeds"].shape[0] for p in prompts]
    assert lengths[0] < lengths[1] < TOKENS
    direct = adapter.encode_prompts(prompts, torch.device("cpu"))
    cached = TextEmbeddingCache(adapter, "cpu", cache_dir=str(tmp_path)).get(prompts)  # read from disk
    assert cached.keys() == direct.keys()
    for key in direct:
        torch.testing.assert_close(cached[key], direct[key], atol=1e-6, rtol=0)
    x = adapter.sample_noise(2, 64, 64, torch.Generator().manual_seed(0), torch.device("cpu"))
    sigma = torch.tensor([0.7, 0.4])
    with torch.no_grad():
        torch.testing.assert_close(
            adapter.velocity(pipe.transformer, x, sigma, cached, 4.0, 64, 64),
            adapter.velocity(pipe.transformer, x, sigma, direct, 4.0, 64, 64),
            atol=1e-6,
            rtol=0,
        )


def test_eval_and_the_model_card_use_true_cfg_with_the_negative_prompt():
    """`srpo-trl eval`'s images are the stock pipeline's at Qwen-Image's CFG 4; the card's snippet says so."""
    from srpo_trl.evaluation import EvalSettings
    from srpo_trl.evaluation import generate as eval_generate
    from srpo_trl.hub import build_model_card

    pipe = vivid(tiny_qwen_image_pipeline(0))
    settings = EvalSettings(resolution=64, num_inference_steps=3, max_sequence_length=TOKENS, batch_size=2)
    torch.testing.assert_close(eval_generate(pipe, ["a bird"], settings), stock_images(pipe, ["a bird"], 4.0))
    card = build_model_card(
        base_model="Qwen/Qwen-Image",
        lora=True,
        repo_or_dir="me/qwen-srpo",
        pipeline_class="QwenImagePipeline",
        transformer_class="QwenImageTransformer2DModel",
        training_summary={},
    )
    assert "true_cfg_scale=4.0,\n    negative_prompt=' '," in str(card)
    assert "qwen-image" in card.data.tags and "flux" not in card.data.tags
    assert card.data.license == "apache-2.0"  # Qwen-Image's, known offline


def test_true_cfg_changes_the_velocity_and_keeps_the_conditional_norm():
    pipe = tiny_qwen_image_pipeline(0)
    adapter = get_adapter(pipe, max_sequence_length=TOKENS)
    text = adapter.encode_prompts(["a bird"], torch.device("cpu"))
    x = adapter.sample_noise(1, 64, 64, torch.Generator().manual_seed(0), torch.device("cpu"))
    sigma = torch.tensor([0.7])
    with torch.no_grad():
        plain = adapter.velocity(pipe.transformer, x, sigma, text, 1.0, 64, 64)
        guided = adapter.velocity(pipe.transformer, x, sigma, text, 4.0, 64, 64)
    assert (plain - guided).abs().max() > 1e-3
    torch.testing.assert_close(guided.norm(dim=-1), plain.norm(dim=-1), atol=1e-5, rtol=1e-5)


def test_qwen_image_trains_without_a_shift_and_knows_the_pipelines_own():
    """SRPO's Qwen-Image script uses uniform grids; the stock pipeline's shift (Qwen/Qwen-Image's scheduler config,
    which the tiny pipeline copies) is the documented 2.30 at 1328 px, 2.00 at 1024 px and 1.80 at 720 px."""
    pipe = tiny_qwen_image_pipeline(0)
    adapter = get_adapter(pipe)
    assert adapter.default_time_shift(720, 720) == adapter.default_time_shift(1328, 1328) == 1.0
    assert adapter.inference_time_shift(1024, 1024) == pytest.approx(
        math.exp(qwen_image_mu(64 * 64, pipe.scheduler.config))
    )
    shifts = [adapter.inference_time_shift(s, s) for s in (1328, 1024, 720)]
    assert shifts == pytest.approx([2.3033, 2.0008, 1.8025], abs=1e-4)


def test_qwen_image_encode_images_inverts_the_decode_layout():
    pipe = tiny_qwen_image_pipeline(0)
    adapter = get_adapter(pipe)
    images = torch.rand(1, 3, 64, 64)
    tokens = adapter.encode_images(images, 64, 64)
    assert tokens.shape == (1, 16, 16)  # 4x4 tokens of 2x2 patches of 4 channels
    # decode(encode(x)) == the VAE's own decode of its own posterior mean: layout and statistics round-trip.
    with torch.no_grad():
        z = pipe.vae.encode(images.unsqueeze(2) * 2 - 1).latent_dist.mode()
        expected = (pipe.vae.decode(z).sample[:, :, 0] / 2 + 0.5).clamp(0, 1)
        torch.testing.assert_close(adapter.decode(tokens, 64, 64), expected, atol=1e-5, rtol=0)


def _trainer(config, lora=True, **overrides):
    args = config(per_device_train_batch_size=2, max_sequence_length=TOKENS, **overrides)
    peft_config = LoraConfig(r=8, lora_alpha=16, init_lora_weights="gaussian") if lora else None
    return SRPOTrainer(
        vivid(tiny_qwen_image_pipeline(0)), ColorWordReward(), args=args, train_dataset=TRAIN, peft_config=peft_config
    )


@pytest.mark.parametrize("train_guidance_scale", [None, 4.0])
def test_qwen_image_lora_steps_uphill_on_both_branches_at_the_recipe_defaults(config, caplog, train_guidance_scale):
    """One real step at lr 5e-6, the reward's own hinge, the inversion branch on, the family's guidance (CFG 4 in
    the rollout, none in training), and with true CFG in the training calls too: the weights move uphill on both
    branches' rewards (see `tests/uphill.py`). Gradient checkpointing as the defaults ask: the transformer's, and
    the VAE's, which Qwen-Image's VAE does not support (it once stopped training; now a warning)."""
    checkpointing = dict(transformer_gradient_checkpointing=True, vae_gradient_checkpointing=True)
    trainer = _trainer(config, max_steps=1, train_guidance_scale=train_guidance_scale, **checkpointing)
    assert "AutoencoderKLQwenImage does not support gradient checkpointing" in caplog.text
    args = trainer.args
    assert args.learning_rate == 5e-6 and args.hinge_threshold is None and args.use_inversion_branch
    assert (args.rollout_guidance_scale, args.train_guidance_scale) == (4.0, train_guidance_scale or 1.0)
    step = uphill_step(trainer)
    assert set(step.dots) == {"denoise", "inversion"} and step.uphill, step.dots
    assert not step.unchanged_with_gradient and step.dtypes == {torch.float32}


def test_qwen_image_full_fine_tune_reloads_as_the_trained_model(tmp_path, config):
    """A full fine-tune's `transformer/` loads into the stock pipeline (directly and through `srpo-trl eval`'s
    loader) and gives the trained model's images."""
    trainer = _trainer(config, lora=False, max_steps=1, output_dir=str(tmp_path / "full"))
    with torch.no_grad():  # far from the base, so that a wrong reload would show
        for p in trainer.model.parameters():
            p.add_(0.02 * torch.randn_like(p))
    trainer.save_model()
    trained = stock_images(trainer.pipeline, ["a bird"], 4.0)
    fresh = vivid(tiny_qwen_image_pipeline(0))
    base = stock_images(fresh, ["a bird"], 4.0)
    fresh.transformer = QwenImageTransformer2DModel.from_pretrained(
        os.path.join(trainer.args.output_dir, "transformer")
    )
    assert (trained - base).abs().max() > 0.05
    torch.testing.assert_close(stock_images(fresh, ["a bird"], 4.0), trained, atol=1e-5, rtol=0)
    other = vivid(tiny_qwen_image_pipeline(0))
    assert load_result(other, trainer.args.output_dir) == "transformer"
    torch.testing.assert_close(stock_images(other, ["a bird"], 4.0), trained, atol=1e-5, rtol=0)


@pytest.mark.parametrize("lora", [True, False], ids=["lora", "full"])
def test_a_bf16_loaded_qwen_image_pipeline_trains_fp32_master_weights_uphill(config, lora):
    """As real runs load it: the pipeline in bf16 (text encoder, VAE and frozen transformer), the trainable weights
    fp32; one step at the recipe's lr moves every tensor that has a gradient, uphill on both branches."""
    pipe = vivid(tiny_qwen_image_pipeline(0, dtype=torch.bfloat16))
    assert pipe.text_encoder.dtype == pipe.vae.dtype == torch.bfloat16
    args = config(per_device_train_batch_size=2, max_sequence_length=TOKENS, max_steps=1)
    peft_config = LoraConfig(r=4, lora_alpha=8) if lora else None
    trainer = SRPOTrainer(pipe, ColorWordReward(), args=args, train_dataset=TRAIN, peft_config=peft_config)
    step = uphill_step(trainer)
    assert step.uphill and step.dtypes == {torch.float32} and not step.unchanged_with_gradient, step.dots
