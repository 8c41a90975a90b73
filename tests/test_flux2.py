"""FLUX.2 [klein] and [dev] through the Flux2 adapter: stock-sampler agreement, an uphill step, LoRA round trip."""

import math

import pytest
import torch
from datasets import Dataset
from peft import LoraConfig
from uphill import uphill_step

from srpo_trl import ColorWordReward, SRPOTrainer, direct_align
from srpo_trl.models import Flux2Adapter, get_adapter
from srpo_trl.models.flux2 import flux2_empirical_mu
from srpo_trl.testing import tiny_flux2_pipeline

TRAIN = Dataset.from_dict({"prompt": ["a cat", "a dog on a hill", "a house", "the sea"]})


def _vivid(pipe):
    """Scale the tiny VAE's output layer so decoded images carry visible colour (as `srpo_trl.testing.tiny_colour_flux_pipeline` does)."""
    with torch.no_grad():
        pipe.vae.decoder.conv_out.weight.mul_(5)
        pipe.vae.decoder.conv_out.bias.zero_()
    return pipe


def _guidance(variant):
    return 1.0 if variant == "klein" else 3.5  # klein: no CFG at 1.0; dev: the embedded guidance


def _our_images(pipe, adapter, prompts, steps, guidance, seed=3):
    text = adapter.encode_prompts(prompts, torch.device("cpu"))
    eps = adapter.sample_noise(len(prompts), 64, 64, torch.Generator().manual_seed(seed), torch.device("cpu"))
    shift = math.exp(flux2_empirical_mu(16, steps))  # the stock pipeline's mu for 4x4 tokens and `steps` steps
    x0 = direct_align.euler_sample(
        lambda x, s, _: adapter.velocity(pipe.transformer, x, s, text, guidance, 64, 64),
        eps,
        direct_align.shifted_grid(steps, shift).float(),
    )
    return adapter.decode(x0, 64, 64)


# (variant, distilled, guidance): [klein] base unguided and with its classifier-free guidance (the family's 4.0),
# distilled [klein] (whose stock pipeline ignores a guidance above 1), [dev] with its embedded guidance.
CASES = {
    "klein-base-cfg1": ("klein", False, 1.0),
    "klein-base-cfg4": ("klein", False, 4.0),
    "klein-distilled": ("klein", True, 3.5),
    "dev": ("dev", False, 3.5),
}


@pytest.mark.parametrize("case", list(CASES))
def test_stock_sampler_and_flux2_adapter_agree(case):
    """Patchify/pack layout, 4-D ids, batch-norm latents, timestep and guidance match diffusers' own pipeline."""
    variant, distilled, guidance = CASES[case]
    pipe = tiny_flux2_pipeline(0, variant=variant, distilled=distilled)
    adapter = get_adapter(pipe, max_sequence_length=32)
    assert isinstance(adapter, Flux2Adapter) and adapter.guidance_embeds == (variant == "dev")
    assert adapter.classifier_free_guidance == (variant == "klein" and not distilled)
    prompts, steps = ["a bird", "a red tree"], 4
    stock = pipe(
        prompt=prompts, height=64, width=64, num_inference_steps=steps, guidance_scale=guidance,
        max_sequence_length=32, output_type="pt", generator=torch.Generator().manual_seed(3),
    ).images  # fmt: skip
    ours = _our_images(pipe, adapter, prompts, steps, guidance)
    print(f"{case}: largest difference to the stock sampler {(ours - stock).abs().max().item():.1e}")
    torch.testing.assert_close(ours, stock, atol=1e-5, rtol=0)


def test_klein_base_guidance_is_applied_and_its_defaults_say_so():
    """[klein] base: a guidance above 1 changes the images (classifier-free guidance, as the stock pipeline); the
    distilled model is unguided, and its defaults label samples with the guidance they had (1.0)."""
    base = tiny_flux2_pipeline(0, variant="klein")
    adapter = get_adapter(base, max_sequence_length=32)
    unguided = _our_images(base, adapter, ["a bird"], 3, 1.0)
    guided = _our_images(base, adapter, ["a bird"], 3, 3.5)
    assert (guided - unguided).abs().max() > 1e-3
    assert adapter.default_guidance == {"rollout": 4.0, "train": 1.0, "sample": 4.0}
    distilled = get_adapter(tiny_flux2_pipeline(0, variant="klein", distilled=True))
    assert distilled.default_guidance == {"rollout": 1.0, "train": 1.0, "sample": 1.0}
    dev = get_adapter(tiny_flux2_pipeline(0, variant="dev"))
    assert dev.default_guidance == {"rollout": 1.0, "train": 3.5, "sample": 3.5}


def test_flux2_time_shift_is_the_resolution_dependent_empirical_mu():
    adapter = get_adapter(tiny_flux2_pipeline(0))
    assert adapter.default_time_shift(720, 720) == pytest.approx(math.exp(flux2_empirical_mu(45 * 45, 50)))
    assert adapter.default_time_shift(1024, 1024) > adapter.default_time_shift(512, 512)


def test_flux2_encode_images_inverts_decode_layout():
    pipe = tiny_flux2_pipeline(0)
    adapter = get_adapter(pipe)
    with torch.no_grad():
        pipe.vae.bn.running_mean.uniform_(-0.5, 0.5)
        pipe.vae.bn.running_var.uniform_(0.5, 2.0)
    images = torch.rand(1, 3, 64, 64)
    tokens = adapter.encode_images(images, 64, 64)
    # decode(encode(x)) == the VAE's own decode of its own posterior mean: layout and statistics round-trip.
    z = pipe.vae.encode(images * 2 - 1).latent_dist.mode()
    expected = (pipe.vae.decode(z).sample / 2 + 0.5).clamp(0, 1)
    torch.testing.assert_close(adapter.decode(tokens, 64, 64), expected, atol=1e-5, rtol=0)


def _flux2_trainer(config, variant, **overrides):
    args = config(per_device_train_batch_size=2, rollout_steps=4, train_guidance_scale=_guidance(variant), **overrides)
    return SRPOTrainer(
        _vivid(tiny_flux2_pipeline(0, variant=variant)),
        ColorWordReward(),
        args=args,
        train_dataset=TRAIN,
        peft_config=LoraConfig(r=8, lora_alpha=8, init_lora_weights="gaussian"),
    )


@pytest.mark.parametrize("variant", ["klein", "dev"])
def test_flux2_lora_steps_uphill_on_both_branches_at_the_recipe_defaults(config, variant):
    """One real step at lr 5e-6, max grad norm 0.1, the reward's own hinge and the inversion branch on: the weights
    move uphill on both branches' rewards (see `tests/uphill.py`)."""
    trainer = _flux2_trainer(config, variant, max_steps=1)
    args = trainer.args
    assert args.learning_rate == 5e-6 and args.max_grad_norm == 0.1
    assert args.hinge_threshold is None and args.use_inversion_branch
    step = uphill_step(trainer)
    assert set(step.dots) == {"denoise", "inversion"} and step.uphill, (variant, step.dots)
    # LoRA B starts at zero, so A has no gradient on the first step; every tensor that had one moved, in fp32.
    assert not step.unchanged_with_gradient and step.dtypes == {torch.float32}
    assert all(step.changed[n] for n in step.changed if "lora_B" in n)


@pytest.mark.parametrize("variant", ["klein", "dev"])
def test_flux2_trained_lora_loads_in_the_stock_pipeline(tmp_path, config, variant):
    # The claim is equality of images, not improvement: a large lr moves the LoRA far enough from zero in two steps
    # that the loaded LoRA visibly changes the images, so that the comparison below is not between two bases.
    trainer = _flux2_trainer(config, variant, max_steps=2, learning_rate=0.3, output_dir=str(tmp_path / "lora"))
    trainer.train()
    trainer.save_model()

    def stock(pipe):
        return pipe(
            prompt=["a bird"], height=64, width=64, num_inference_steps=3, guidance_scale=_guidance(variant),
            max_sequence_length=32, output_type="pt", generator=torch.Generator().manual_seed(0),
        ).images  # fmt: skip

    trained = stock(trainer.pipeline)
    fresh = _vivid(tiny_flux2_pipeline(0, variant=variant))
    base = stock(fresh)
    fresh.load_lora_weights(trainer.args.output_dir)
    loaded = stock(fresh)
    assert (loaded - base).abs().max() > 1e-2
    torch.testing.assert_close(loaded, trained, atol=1e-4, rtol=0)
