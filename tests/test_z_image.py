"""Z-Image through its adapter, on a tiny offline `ZImagePipeline`: the stock sampler's images with and without its
classifier-free guidance (Z-Image's own `v_c + g (v_c - v_u)`, prompts of different lengths), the time shift and the
Turbo / base guidance defaults, the unpadded text cache, an uphill step at the recipe defaults with fp32 masters on a
bf16-loaded pipeline, the LoRA (alpha != r, rsLoRA, DoRA) and full fine-tune round trips through the stock loaders and
`srpo-trl eval`'s sampling, the Img2Img / Inpaint variants, and the FSDP2 block classes."""

import math

import pytest
import torch
from datasets import Dataset
from diffusers import FlowMatchEulerDiscreteScheduler, ZImageTransformer2DModel
from lora_helpers import LORAS, far_from_identity
from peft import LoraConfig
from uphill import uphill_step

from srpo_trl import ColorWordReward, SRPOTrainer, direct_align
from srpo_trl.evaluation import EvalSettings, load_result
from srpo_trl.evaluation import generate as eval_generate
from srpo_trl.models import ZImageAdapter, get_adapter
from srpo_trl.testing import tiny_z_image_pipeline

SIZE, STEPS = 64, 4
# The tiny tokenizer is character-level and the chat template adds 19 tokens: 64 keep the prompts whole.
TOKENS = 64
PROMPTS = ["a bird", "a red tree on a hill"]  # of different lengths: the transformer masks the shorter
TRAIN = {"prompt": ["a cat", "a dog on a hill", "a house", "the sea"]}


def _stock(pipe, guidance, prompts=PROMPTS, seed=3, steps=STEPS):
    pipe.set_progress_bar_config(disable=True)
    return pipe(
        prompt=list(prompts),  # ZImagePipeline rewrites the list it is given (into the chat template) in place
        height=SIZE, width=SIZE, num_inference_steps=steps, max_sequence_length=TOKENS, output_type="pt",
        generator=torch.Generator().manual_seed(seed), **ZImageAdapter.pipeline_guidance_kwargs(guidance),
    ).images  # fmt: skip


@pytest.mark.parametrize("guidance", [0.0, 4.0], ids=["no-cfg", "cfg4"])
def test_our_rollout_equals_the_stock_z_image_sampler(guidance):
    pipe = tiny_z_image_pipeline(0)
    adapter = get_adapter(pipe, max_sequence_length=TOKENS)
    assert isinstance(adapter, ZImageAdapter) and adapter.default_guidance == {
        "rollout": 4.0,
        "train": 0.0,
        "sample": 4.0,
    }
    text = adapter.encode_prompts(PROMPTS, torch.device("cpu"))
    lengths = text["prompt_embeds_mask"].sum(1).tolist()
    assert lengths[0] < lengths[1] == text["prompt_embeds"].shape[1]  # the shorter prompt is padded, and masked
    eps = adapter.sample_noise(2, SIZE, SIZE, torch.Generator().manual_seed(3), torch.device("cpu"))
    with torch.no_grad():
        x0 = direct_align.euler_sample(
            lambda x, s, _: adapter.velocity(pipe.transformer, x, s, text, guidance, SIZE, SIZE),
            eps,
            direct_align.shifted_grid(STEPS, adapter.default_time_shift(SIZE, SIZE)).float(),
        )
        ours = adapter.decode(x0, SIZE, SIZE)
    stock = _stock(pipe, guidance)
    print(f"z-image cfg {guidance}: largest difference to the stock sampler {(ours - stock).abs().max().item():.1e}")
    torch.testing.assert_close(ours, stock, atol=1e-5, rtol=0)
    if guidance > 0:
        assert (stock - _stock(pipe, 0.0)).abs().max() > 1e-2  # the guidance was applied


def test_the_time_shift_is_the_stock_pipelines_and_turbo_checkpoints_sample_without_cfg():
    """Static shift (Z-Image-Turbo's 3) and, with a dynamically shifting scheduler, `exp(mu)` for the image's tokens:
    the stock pipeline's own grid either way. A `*Turbo*` checkpoint is sampled and trained at guidance 0."""
    pipe = tiny_z_image_pipeline(0)
    assert get_adapter(pipe).default_time_shift(1024, 1024) == 3.0
    pipe.scheduler = FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True, max_image_seq_len=4096)
    adapter = get_adapter(pipe)
    pipe.set_progress_bar_config(disable=True)
    pipe(prompt=["a bird"], height=SIZE, width=SIZE, num_inference_steps=5, guidance_scale=0.0, output_type="latent",
         max_sequence_length=TOKENS)  # fmt: skip
    grid = direct_align.shifted_grid(5, adapter.default_time_shift(SIZE, SIZE)).float()
    torch.testing.assert_close(pipe.scheduler.sigmas, grid, atol=1e-6, rtol=0)
    assert adapter.default_time_shift(1024, 1024) == pytest.approx(math.exp(1.15))  # 4096 tokens: max_shift
    pipe.register_to_config(_name_or_path="Tongyi-MAI/Z-Image-Turbo")
    assert get_adapter(pipe).default_guidance == {"rollout": 0.0, "train": 0.0, "sample": 0.0}
    assert ZImageAdapter.default_guidance["sample"] == 4.0  # the class keeps the base model's


def test_the_text_cache_stores_prompts_unpadded_and_gives_the_encoders_velocity(tmp_path):
    from srpo_trl.text_cache import TextEmbeddingCache

    pipe = tiny_z_image_pipeline(0)
    adapter = get_adapter(pipe, max_sequence_length=TOKENS)
    cache = TextEmbeddingCache(adapter, "cpu", cache_dir=str(tmp_path), batch_size=1)
    assert cache.precompute(PROMPTS)
    lengths = [cache._read(p)["prompt_embeds"].shape[0] for p in PROMPTS]
    assert lengths[0] < lengths[1] < TOKENS
    direct = adapter.encode_prompts(PROMPTS, torch.device("cpu"))
    cached = TextEmbeddingCache(adapter, "cpu", cache_dir=str(tmp_path)).get(PROMPTS)  # read from disk
    assert set(cached) == {"prompt_embeds", "prompt_embeds_mask"}  # the negative prompt is the adapter's, once
    x = adapter.sample_noise(2, SIZE, SIZE, torch.Generator().manual_seed(0), torch.device("cpu"))
    sigma = torch.tensor([0.7, 0.4])
    with torch.no_grad():
        torch.testing.assert_close(
            adapter.velocity(pipe.transformer, x, sigma, cached, 4.0, SIZE, SIZE),
            adapter.velocity(pipe.transformer, x, sigma, direct, 4.0, SIZE, SIZE),
            atol=1e-6,
            rtol=0,
        )


def test_encode_images_inverts_the_decode_layout():
    pipe = tiny_z_image_pipeline(0)
    adapter = get_adapter(pipe)
    images = torch.rand(1, 3, SIZE, SIZE)
    x0 = adapter.encode_images(images, SIZE, SIZE)
    assert x0.shape == (1, 16, 16)  # 4x4 tokens of 2x2 patches of 4 channels
    with torch.no_grad():
        z = pipe.vae.encode(images * 2 - 1).latent_dist.mode()
        expected = (pipe.vae.decode(z).sample / 2 + 0.5).clamp(0, 1)
        torch.testing.assert_close(adapter.decode(x0, SIZE, SIZE), expected, atol=1e-5, rtol=0)


def _trainer(config, lora=None, pipe=None, dtype=torch.float32, **overrides):
    pipe = pipe if pipe is not None else tiny_z_image_pipeline(0, dtype=dtype)
    peft = LoraConfig(**{"init_lora_weights": "gaussian", **lora}) if lora is not None else None
    return SRPOTrainer(pipe, ColorWordReward(), args=config(max_sequence_length=TOKENS, **overrides),
                       train_dataset=Dataset.from_dict(TRAIN), peft_config=peft)  # fmt: skip


def test_one_step_at_the_recipe_defaults_goes_uphill_with_fp32_masters_on_a_bf16_pipeline(config):
    trainer = _trainer(
        config, dict(r=4, lora_alpha=8), dtype=torch.bfloat16, max_steps=1, per_device_train_batch_size=2
    )
    assert trainer.pipeline.text_encoder.dtype == trainer.pipeline.vae.dtype == torch.bfloat16
    args = trainer.args
    assert (args.learning_rate, args.rollout_guidance_scale, args.train_guidance_scale) == (5e-6, 4.0, 0.0)
    assert args.use_inversion_branch and args.hinge_threshold is None
    step = uphill_step(trainer)
    assert set(step.dots) == {"denoise", "inversion"} and step.uphill, step.dots
    assert step.dtypes == {torch.float32} and not step.unchanged_with_gradient


@pytest.mark.parametrize("lora", list(LORAS))
def test_the_lora_reloads_in_the_stock_z_image_pipeline_as_trained(tmp_path, config, lora):
    trainer = _trainer(config, LORAS[lora])
    wrapped = [n.removesuffix(".lora_A") for n, _ in trainer.model.named_modules() if n.endswith(".lora_A")]
    targets = ZImageAdapter.default_lora_target_modules  # every block's attention and feed-forward, nothing else
    assert {t for t in targets if any(n.endswith(t) for n in wrapped)} == set(targets)
    assert all(any(n.endswith(t) for t in targets) for n in wrapped) and len(wrapped) == 4 * len(targets)
    far_from_identity(trainer.model)
    trainer.save_model(str(tmp_path / "lora"))
    with_trained = tiny_z_image_pipeline(0)
    with_trained.transformer = trainer.accelerator.unwrap_model(trainer.model).eval()
    fresh = tiny_z_image_pipeline(0)
    base = _stock(fresh, 4.0, steps=2)
    fresh.load_lora_weights(str(tmp_path / "lora"))
    trained, loaded = _stock(with_trained, 4.0, steps=2), _stock(fresh, 4.0, steps=2)
    assert (trained - base).abs().max() > 1e-2
    gap = (loaded - trained).abs().max().item()
    print(f"z-image {lora}: reloaded against trained {gap:.1e}")
    assert gap <= 1e-5
    card = (tmp_path / "lora" / "README.md").read_text()
    assert "from diffusers import ZImagePipeline" in card and "guidance_scale=4.0," in card and "- z-image" in card


def test_a_full_fine_tune_reloads_through_eval(tmp_path, config):
    trainer = _trainer(config)
    with torch.no_grad():
        for p in trainer.model.parameters():  # far from the base, so that a wrong reload would show
            p.add_(0.02 * torch.randn_like(p))
    trainer.save_model(str(tmp_path / "full"))
    reloaded = ZImageTransformer2DModel.from_pretrained(str(tmp_path / "full"), subfolder="transformer")
    assert type(reloaded) is ZImageTransformer2DModel
    settings = EvalSettings(resolution=SIZE, num_inference_steps=2, batch_size=2, max_sequence_length=TOKENS)
    with_trained = tiny_z_image_pipeline(0)
    with_trained.transformer = trainer.accelerator.unwrap_model(trainer.model).eval()
    expected = eval_generate(with_trained, PROMPTS, settings)  # the family's sample guidance: CFG 4
    fresh = tiny_z_image_pipeline(0)
    base = eval_generate(fresh, PROMPTS, settings)
    assert load_result(fresh, str(tmp_path / "full")) == "transformer"
    loaded = eval_generate(fresh, PROMPTS, settings)
    assert (expected - base).abs().max() > 1e-2
    gap = (loaded - expected).abs().max().item()
    print(f"z-image full fine-tune through eval: {gap:.1e}")
    assert gap <= 1e-5


@pytest.mark.parametrize("name", ["ZImageImg2ImgPipeline", "ZImageInpaintPipeline"])
def test_a_variant_trains_the_z_image_transformer_with_checkpointing(config, name):
    """Given the variant, the trainer trains the Z-Image transformer with the text-to-image rollout; gradient
    checkpointing of the transformer and the VAE, as the recipe defaults ask, works through `velocity`."""
    import diffusers

    variant = getattr(diffusers, name).from_pipe(tiny_z_image_pipeline(0))
    adapter = get_adapter(variant)
    assert isinstance(adapter, ZImageAdapter)
    checkpointing = dict(transformer_gradient_checkpointing=True, vae_gradient_checkpointing=True)  # as the defaults
    trainer = _trainer(config, dict(r=4, lora_alpha=8), pipe=variant, max_steps=1, rollout_steps=2, **checkpointing)
    assert trainer.model.gradient_checkpointing
    assert type(trainer.pipeline).__name__ == name
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if p.requires_grad}
    trainer.train()
    after = dict(trainer.model.named_parameters())
    assert any(not torch.equal(before[n], after[n]) for n in before)


def test_fsdp2_wraps_the_repeated_single_stream_blocks():
    """The class FSDP2 shards one by one (`_no_split_modules`) and regional compilation compiles once
    (`_repeated_blocks`): the single-stream block, which the refiners and the main stack all repeat."""
    transformer = tiny_z_image_pipeline(0).transformer
    assert ZImageTransformer2DModel._no_split_modules == ["ZImageTransformerBlock"]
    assert ZImageTransformer2DModel._repeated_blocks == ["ZImageTransformerBlock"]
    blocks = [m for m in transformer.modules() if type(m).__name__ == "ZImageTransformerBlock"]
    assert len(blocks) == len(transformer.layers) + len(transformer.noise_refiner) + len(transformer.context_refiner)
