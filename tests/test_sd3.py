"""Stable Diffusion 3 / 3.5 through the SD3 adapter, on a tiny offline `StableDiffusion3Pipeline` (SD3.5's layout: qk
norm, Medium's dual attention in one block): the text conditioning of the three encoders, the stock sampler's images
with and without its real classifier-free guidance (on our shifted grid and on the stock default grid), the time
shift (static and dynamic), the text cache, an uphill step at the recipe defaults with fp32 masters on a bf16-loaded
pipeline, the LoRA (alpha != r, rsLoRA, DoRA) and full fine-tune round trips through the stock loaders and
`srpo-trl eval`'s sampling, the Img2Img / Inpaint variants, and the blocks FSDP2 and regional compilation see."""

import math

import numpy as np
import pytest
import torch
from datasets import Dataset
from lora_helpers import LORAS, far_from_identity
from peft import LoraConfig
from uphill import uphill_step

from srpo_trl import ColorWordReward, SRPOTrainer, direct_align
from srpo_trl.evaluation import EvalSettings, load_result
from srpo_trl.evaluation import generate as eval_generate
from srpo_trl.models import SD3Adapter, get_adapter, sampling_pipeline
from srpo_trl.models.flux import pack_latents, unpack_latents
from srpo_trl.testing import tiny_sd3_pipeline

SIZE, STEPS, TOKENS = 64, 4, 32
PROMPTS = ["a bird", "a red tree on a hill"]
CPU = torch.device("cpu")


def _stock(pipe, guidance, prompts=PROMPTS, seed=3, uniform=True, steps=STEPS, **inputs):
    """The stock pipeline's images; `uniform`: on the grid `linspace(1, 1/n, n)` the pipeline then shifts (FLUX's
    pipelines pass it; SD3's default, `sigmas=None`, spaces its grid between the scheduler's shifted end levels)."""
    pipe.set_progress_bar_config(disable=True)
    grid = dict(sigmas=np.linspace(1.0, 1 / steps, steps).tolist()) if uniform else dict(num_inference_steps=steps)
    return pipe(
        prompt=prompts, height=SIZE, width=SIZE, guidance_scale=guidance, max_sequence_length=TOKENS,
        output_type="pt", generator=torch.Generator().manual_seed(seed), **grid, **inputs,
    ).images  # fmt: skip


def test_the_text_conditioning_is_the_three_encoders_as_sd3_joins_them():
    """Joint text: both CLIPs' penultimate hidden states side by side, zero-padded to T5's width, then T5's tokens;
    pooled: both CLIPs' projected pooled outputs side by side."""
    pipe = tiny_sd3_pipeline(0)
    adapter = get_adapter(pipe, max_sequence_length=TOKENS)
    text = adapter.encode_prompts(PROMPTS, CPU)
    with torch.no_grad():
        clips = []
        for tokenizer, encoder in ((pipe.tokenizer, pipe.text_encoder), (pipe.tokenizer_2, pipe.text_encoder_2)):
            ids = tokenizer(PROMPTS, padding="max_length", max_length=77, truncation=True, return_tensors="pt")
            clips.append(encoder(ids.input_ids, output_hidden_states=True))
        ids = pipe.tokenizer_3(PROMPTS, padding="max_length", max_length=TOKENS, truncation=True, return_tensors="pt")
        t5 = pipe.text_encoder_3(ids.input_ids)[0]
    clip = torch.cat([c.hidden_states[-2] for c in clips], dim=-1)
    assert clip.shape[-1] == 40 < t5.shape[-1] == 48
    joint = torch.cat([torch.nn.functional.pad(clip, (0, 8)), t5], dim=1)
    assert text["prompt_embeds"].shape == (2, 77 + TOKENS, 48)
    torch.testing.assert_close(text["prompt_embeds"], joint, atol=0, rtol=0)
    torch.testing.assert_close(text["pooled_prompt_embeds"], torch.cat([c.text_embeds for c in clips], -1))
    assert (text["negative_prompt_embeds"][0] == text["negative_prompt_embeds"][1]).all()  # "" for every row


@pytest.mark.parametrize("guidance", [1.0, 7.0], ids=["cfg1", "cfg7"])
def test_our_rollout_equals_the_stock_sd3_sampler(guidance):
    """On our shifted grid (the stock pipeline given `sigmas=linspace(1, 1/n, n)`) and on the stock default grid.
    The adapter's CFG is one transformer call on `[negative; prompt]`, as the stock pipeline's (two calls: 2e-5 off).

    With CFG the stock pipeline encodes the negative prompt `""` once per prompt of the batch, the adapter once for
    all: CLIP's pooled projection of a batch of 1 and of 2 differs in the last bit (2.4e-7), which CFG 7 and the tiny
    VAE amplify to 2e-5 in the images. So a batch of two is compared given the adapter's negative encoding, and one
    prompt with the stock pipeline's own."""
    pipe = tiny_sd3_pipeline(0)
    adapter = get_adapter(pipe, max_sequence_length=TOKENS)
    assert isinstance(adapter, SD3Adapter)
    assert adapter.default_guidance == {"rollout": 7.0, "train": 1.0, "sample": 7.0}
    assert adapter.latent_granularity == 16 and adapter.default_time_shift(SIZE, SIZE) == 3.0

    def rollout(prompts, grid):
        text = adapter.encode_prompts(prompts, CPU)
        eps = adapter.sample_noise(len(prompts), SIZE, SIZE, torch.Generator().manual_seed(3), CPU)
        assert eps.shape == (len(prompts), 16, 64)  # 4 x 4 patches of 2 x 2 x 16
        with torch.no_grad():
            x0 = direct_align.euler_sample(
                lambda x, s, _: adapter.velocity(pipe.transformer, x, s, text, guidance, SIZE, SIZE), eps, grid
            )
            return adapter.decode(x0, SIZE, SIZE), text

    ours, text = rollout(PROMPTS, direct_align.shifted_grid(STEPS, adapter.default_time_shift(SIZE, SIZE)).float())
    negative = {k: v for k, v in text.items() if k.startswith("negative_")} if guidance > 1 else {}
    stock = _stock(pipe, guidance, **negative)
    torch.testing.assert_close(pipe.scheduler.sigmas, direct_align.shifted_grid(STEPS, 3.0).float())
    gaps = {"shifted grid": (ours - stock).abs().max().item()}
    prompts = PROMPTS if guidance <= 1 else PROMPTS[1:]  # the stock negative encoding, of one prompt with CFG
    stock_default = _stock(pipe, guidance, prompts=prompts, uniform=False)  # the default grid, off the scheduler
    assert pipe.scheduler.sigmas[-2].item() == pytest.approx(0.00893, abs=1e-5)  # its end level, shifted twice
    gaps["stock default grid"] = (
        (rollout(prompts, pipe.scheduler.sigmas.float())[0] - stock_default).abs().max().item()
    )
    print(f"sd3 cfg {guidance}: largest differences to the stock sampler", {k: f"{v:.1e}" for k, v in gaps.items()})
    assert max(gaps.values()) <= 1e-5, gaps
    if guidance > 1:
        assert (stock - _stock(pipe, 1.0)).abs().max() > 1e-3  # the guidance was applied
        stock_negative = pipe.encode_prompt(PROMPTS, None, None, max_sequence_length=TOKENS)
        torch.testing.assert_close(stock_negative[1], text["negative_prompt_embeds"], atol=1e-6, rtol=0)
        torch.testing.assert_close(stock_negative[3], text["negative_pooled_prompt_embeds"], atol=1e-6, rtol=0)


def test_the_time_shift_is_the_stock_pipelines_static_or_dynamic_one():
    """Static: the scheduler's `shift` at every size. Dynamic: `exp(mu)` of the stock pipeline's `calculate_shift` for
    the image's patch count, from the scheduler config's settings: the very grid the stock pipeline sets."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    pipe = tiny_sd3_pipeline(0)
    adapter = get_adapter(pipe)
    assert adapter.default_time_shift(1024, 1024) == adapter.default_time_shift(64, 128) == 3.0
    pipe.scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True, base_image_seq_len=4,
                                                     max_image_seq_len=64, base_shift=0.5, max_shift=1.2)  # fmt: skip
    adapter = get_adapter(pipe, max_sequence_length=TOKENS)
    shift = adapter.default_time_shift(SIZE, SIZE)  # 16 patches
    assert shift == pytest.approx(math.exp(0.5 + (1.2 - 0.5) * (16 - 4) / (64 - 4)))
    _stock(pipe, 1.0, prompts=["a bird"], steps=2)
    torch.testing.assert_close(pipe.scheduler.sigmas, direct_align.shifted_grid(2, shift).float())


def test_the_text_cache_keeps_the_prompts_and_the_adapter_the_negative(tmp_path):
    from srpo_trl.text_cache import TextEmbeddingCache

    pipe = tiny_sd3_pipeline(0)
    adapter = get_adapter(pipe, max_sequence_length=TOKENS)
    cache = TextEmbeddingCache(adapter, "cpu", cache_dir=str(tmp_path), batch_size=1)
    assert cache.precompute(PROMPTS)
    assert set(cache._read(PROMPTS[0])) == {"prompt_embeds", "pooled_prompt_embeds"}
    cached = TextEmbeddingCache(adapter, "cpu", cache_dir=str(tmp_path)).get(PROMPTS)  # read from disk
    direct = adapter.encode_prompts(PROMPTS, CPU)
    for key in cached:  # cached one at a time, encoded two at a time: CLIP's projection differs in the last bit
        torch.testing.assert_close(cached[key], direct[key], atol=1e-6, rtol=0)
    x = adapter.sample_noise(2, SIZE, SIZE, torch.Generator().manual_seed(0), CPU)
    sigma = torch.tensor([0.7, 0.4])
    with torch.no_grad():
        from_cache = adapter.velocity(pipe.transformer, x, sigma, cached, 7.0, SIZE, SIZE)
        torch.testing.assert_close(from_cache, adapter.velocity(pipe.transformer, x, sigma, direct, 7.0, SIZE, SIZE))


def test_the_vae_normalisation_is_sd3s_shift_and_scale():
    """`x0 = (z - shift) * scale` of the posterior's mean; decoding undoes it as the stock pipeline does."""
    pipe = tiny_sd3_pipeline(0)
    adapter = get_adapter(pipe)
    shift, scale = pipe.vae.config.shift_factor, pipe.vae.config.scaling_factor
    assert (shift, scale) == (0.0609, 1.5305)
    images = torch.rand(1, 3, SIZE, SIZE)
    latents = adapter.encode_images(images, SIZE, SIZE)
    with torch.no_grad():
        z = pipe.vae.encode(images * 2 - 1).latent_dist.mode()
        torch.testing.assert_close(latents, pack_latents((z - shift) * scale), atol=0, rtol=0)
        unpacked = unpack_latents(latents, 8, 8)  # the stock pipeline's latents
        stock = pipe.image_processor.postprocess(pipe.vae.decode(unpacked / scale + shift).sample, output_type="pt")
        torch.testing.assert_close(adapter.decode(latents, SIZE, SIZE), stock, atol=0, rtol=0)
        # and round trips to the VAE's own reconstruction (the normalisation's rounding, amplified by the decoder)
        reconstruction = (pipe.vae.decode(z).sample / 2 + 0.5).clamp(0, 1)
        torch.testing.assert_close(adapter.decode(latents, SIZE, SIZE), reconstruction, atol=1e-4, rtol=0)


def _trainer(config, lora=None, dtype=torch.float32, pipe=None, **overrides):
    pipe = pipe if pipe is not None else tiny_sd3_pipeline(0)
    if dtype != torch.float32:
        pipe.to(dtype=dtype)
    data = Dataset.from_dict({"prompt": ["a cat", "a dog on a hill", "a house", "the sea"]})
    peft = LoraConfig(**{"init_lora_weights": "gaussian", **lora}) if lora is not None else None
    return SRPOTrainer(pipe, ColorWordReward(), args=config(max_sequence_length=TOKENS, **overrides),
                       train_dataset=data, peft_config=peft)  # fmt: skip


def test_one_step_at_the_recipe_defaults_goes_uphill_with_fp32_masters_on_a_bf16_pipeline(config):
    trainer = _trainer(
        config, dict(r=4, lora_alpha=8), dtype=torch.bfloat16, max_steps=1, per_device_train_batch_size=2
    )
    args = trainer.args
    assert (args.learning_rate, args.rollout_guidance_scale, args.train_guidance_scale) == (5e-6, 7.0, 1.0)
    assert args.use_inversion_branch and args.hinge_threshold is None
    assert trainer.pipeline.transformer.dtype == torch.bfloat16
    step = uphill_step(trainer)
    assert set(step.dots) == {"denoise", "inversion"} and step.uphill, step.dots
    assert step.dtypes == {torch.float32} and not step.unchanged_with_gradient
    names = [n for n, p in trainer.model.named_parameters() if p.requires_grad]
    for module in ("attn.to_q", "attn.add_k_proj", "attn2.to_v", "ff.net.2", "ff_context.net.0.proj"):
        assert any(f".{module}.lora_A" in n for n in names), module


@pytest.mark.parametrize("lora", list(LORAS))
def test_the_lora_reloads_in_the_stock_sd3_pipeline_as_trained(tmp_path, config, lora):
    trainer = _trainer(config, LORAS[lora])
    far_from_identity(trainer.model)
    trainer.save_model(str(tmp_path / "lora"))
    with_trained = tiny_sd3_pipeline(0)
    with_trained.transformer = trainer.accelerator.unwrap_model(trainer.model).eval()
    fresh = tiny_sd3_pipeline(0)
    base = _stock(fresh, 7.0)
    fresh.load_lora_weights(str(tmp_path / "lora"))
    trained, loaded = _stock(with_trained, 7.0), _stock(fresh, 7.0)
    assert (trained - base).abs().max() > 1e-2
    gap = (loaded - trained).abs().max().item()
    print(f"sd3 {lora}: reloaded against trained {gap:.1e}")
    assert gap <= 1e-5
    card = (tmp_path / "lora" / "README.md").read_text()
    snippet = card.split("```python\n", 1)[1].split("```", 1)[0]
    assert "from diffusers import StableDiffusion3Pipeline" in snippet and "guidance_scale=7.0," in snippet
    assert "- sd3" in card


def test_a_full_fine_tune_reloads_through_eval(tmp_path, config):
    from diffusers import SD3Transformer2DModel

    trainer = _trainer(config)
    with torch.no_grad():
        trainer.model.proj_out.weight.mul_(1.5)  # a visible change of the output
    trainer.save_model(str(tmp_path / "full"))
    reloaded = SD3Transformer2DModel.from_pretrained(str(tmp_path / "full"), subfolder="transformer")
    assert type(reloaded) is SD3Transformer2DModel and reloaded.config.dual_attention_layers == [0]
    settings = EvalSettings(resolution=SIZE, num_inference_steps=3, batch_size=2, max_sequence_length=TOKENS)
    with_trained = tiny_sd3_pipeline(0)
    with_trained.transformer = trainer.accelerator.unwrap_model(trainer.model).eval()
    expected = eval_generate(with_trained, PROMPTS, settings)  # the family's sample guidance: CFG 7
    torch.testing.assert_close(expected, _stock(with_trained, 7.0, seed=0, uniform=False, steps=3), atol=0, rtol=0)
    fresh = tiny_sd3_pipeline(0)
    base = eval_generate(fresh, PROMPTS, settings)
    assert load_result(fresh, str(tmp_path / "full")) == "transformer"
    loaded = eval_generate(fresh, PROMPTS, settings)
    assert (expected - base).abs().max() > 1e-2
    gap = (loaded - expected).abs().max().item()
    print(f"sd3 full fine-tune through eval: {gap:.1e}")
    assert gap <= 1e-5


@pytest.mark.parametrize("name", ["StableDiffusion3Img2ImgPipeline", "StableDiffusion3InpaintPipeline"])
def test_a_variant_trains_the_sd3_transformer_uphill(config, name):
    import diffusers

    variant = getattr(diffusers, name).from_pipe(tiny_sd3_pipeline(0))
    sampler = sampling_pipeline(variant)
    assert type(sampler).__name__ == "StableDiffusion3Pipeline" and sampler.transformer is variant.transformer
    assert isinstance(get_adapter(variant), SD3Adapter)
    trainer = _trainer(config, dict(r=4, lora_alpha=8), pipe=variant, max_steps=1, per_device_train_batch_size=2)
    assert type(trainer.pipeline).__name__ == name
    step = uphill_step(trainer)
    assert set(step.dots) == {"denoise", "inversion"} and step.uphill, (name, step.dots)


def test_the_blocks_fsdp2_keeps_whole_and_regional_compilation_compiles():
    """`_no_split_modules` names the joint block, every block the transformer repeats (FSDP2's
    `fsdp_transformer_layer_cls_to_wrap`). `_repeated_blocks` is empty in diffusers 0.42.1, so diffusers' own
    `compile_repeated_blocks` refuses; accelerate's `compile_regions` (the trainer's regional compilation) does not
    read it: it compiles each block of every `ModuleList` of one class (here each `JointTransformerBlock`) and each
    other child whole."""
    from accelerate.utils import compile_regions
    from diffusers import SD3Transformer2DModel
    from torch._dynamo.eval_frame import OptimizedModule

    transformer = tiny_sd3_pipeline(0).transformer
    assert SD3Transformer2DModel._no_split_modules == ["JointTransformerBlock"]
    assert SD3Transformer2DModel._repeated_blocks == []
    blocks = {type(b).__name__ for b in transformer.transformer_blocks}
    assert blocks == {"JointTransformerBlock"} and len(transformer.transformer_blocks) == 2
    with pytest.raises(ValueError, match="_repeated_blocks"):
        transformer.compile_repeated_blocks(backend="eager")
    compiled = compile_regions(transformer, backend="eager")  # a compiled copy
    wrapped = [type(m._orig_mod).__name__ for m in compiled.modules() if isinstance(m, OptimizedModule)]
    assert wrapped.count("JointTransformerBlock") == 2
    assert set(wrapped) == {"JointTransformerBlock", "PatchEmbed", "CombinedTimestepTextProjEmbeddings",
                            "AdaLayerNormContinuous", "Linear"}  # fmt: skip
