"""FLUX.1 ControlNets through the ControlNet adapter, on tiny offline `FluxControlNetPipeline`s: our rollout equals the
stock sampler (within 1e-5) for one net at a scale != 1, a multi-ControlNet of two nets with a scale each (sharing the
control image), an XLabs-style net (pixels through a hint block) and a union net with its control mode, and the control
image and the scale matter; the ControlNet stays frozen (no gradient, no LoRA, its dtype kept, its weights unchanged)
and the trainer moves it to the device; an uphill step at the recipe defaults with fp32 masters on a bf16-loaded
pipeline (LoRA and full fine-tune); the LoRA (alpha != r, rsLoRA, DoRA) and full fine-tune round trips through the
stock loaders; the Img2Img / Inpaint variants (`from_pipe`) get the adapter and train as the text-to-image pipeline;
the errors a user can meet."""

from types import SimpleNamespace

import diffusers
import numpy as np
import pytest
import torch
from datasets import Dataset
from diffusers import FlowMatchEulerDiscreteScheduler
from lora_helpers import LORAS, far_from_identity
from peft import LoraConfig
from PIL import Image
from uphill import uphill_step

from srpo_trl import ColorWordReward, SRPOTrainer, direct_align
from srpo_trl.models import FluxControlNetAdapter, get_adapter, sampling_pipeline
from srpo_trl.testing import tiny_flux_controlnet_pipeline

SIZE, STEPS = 64, 4
#: name -> (builder arguments, scales, union control mode)
KINDS = {
    "single": (dict(), [0.7], None),
    "multi": (dict(num_controlnets=2), [0.7, 1.3], None),
    "xlabs": (dict(hint_block=True), [0.7], None),
    "union": (dict(num_mode=3), [0.7], 2),
}


def _control(seed: int) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8))


def _pixels(image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(image, dtype=np.float32) / 255).permute(2, 0, 1)[None]


def _pipe(seed=0, **kwargs):
    pipe = tiny_flux_controlnet_pipeline(seed, **kwargs)
    pipe.scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=False)  # FLUX.1-dev's static grid
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _stock(pipe, control, latents, scales=(0.7,), mode=None):
    multi = isinstance(pipe.controlnet, diffusers.FluxMultiControlNetModel)
    return pipe(
        prompt="a bird", height=SIZE, width=SIZE, num_inference_steps=STEPS, guidance_scale=3.5,
        control_image=[control] * len(scales) if multi else control, control_mode=mode,
        controlnet_conditioning_scale=list(scales) if multi else scales[0],
        max_sequence_length=32, latents=latents, output_type="pt", generator=torch.Generator().manual_seed(3),
    ).images  # fmt: skip


def _rollout(adapter, control, eps):
    text = adapter.add_reference(adapter.encode_prompts(["a bird"], eps.device), _pixels(control), SIZE, SIZE)
    x0 = direct_align.euler_sample(
        lambda x, s, _: adapter.velocity(adapter.pipeline.transformer, x, s, text, 3.5, SIZE, SIZE),
        eps,
        direct_align.shifted_grid(STEPS, 3.0).float(),
    )
    return adapter.decode(x0, SIZE, SIZE)


def _noise(adapter):
    return adapter.sample_noise(1, SIZE, SIZE, torch.Generator().manual_seed(3), torch.device("cpu"))


@pytest.mark.parametrize("kind", list(KINDS))
def test_our_rollout_equals_the_stock_controlnet_sampler_and_the_control_image_and_scale_matter(kind):
    kwargs, scales, mode = KINDS[kind]
    pipe = _pipe(**kwargs)
    adapter = get_adapter(pipe, max_sequence_length=32)
    assert isinstance(adapter, FluxControlNetAdapter) and adapter.reference_role == "control_images"
    adapter.configure(SimpleNamespace(controlnet_conditioning_scale=scales, controlnet_control_mode=mode))
    eps = _noise(adapter)
    ours, stock = _rollout(adapter, _control(0), eps), _stock(pipe, _control(0), eps, scales, mode)
    print(f"controlnet {kind}: largest difference to the stock sampler {(ours - stock).abs().max().item():.1e}")
    torch.testing.assert_close(ours, stock, atol=1e-5, rtol=0)
    assert (stock - _stock(pipe, _control(1), eps, scales, mode)).abs().max() > 1e-3
    assert (stock - _stock(pipe, _control(0), eps, [1.0] * len(scales), mode)).abs().max() > 1e-3
    if mode is not None:
        assert (stock - _stock(pipe, _control(0), eps, scales, mode - 1)).abs().max() > 1e-3


def _trainer(config, lora=None, dtype=torch.float32, pipe=None, **overrides):
    pipe = _pipe() if pipe is None else pipe
    if dtype != torch.float32:
        pipe.to(dtype=dtype)
    data = Dataset.from_dict(
        {"prompt": ["a cat", "a dog", "a house", "the sea"], "control_image": [_control(i) for i in range(4)]}
    )
    peft = LoraConfig(**{"init_lora_weights": "gaussian", **lora}) if lora is not None else None
    args = config(max_sequence_length=32, controlnet_conditioning_scale=[0.7], **overrides)
    return SRPOTrainer(pipe, ColorWordReward(), args=args, train_dataset=data, peft_config=peft)


@pytest.mark.parametrize("lora", [dict(r=4, lora_alpha=8), None], ids=["lora", "full"])
def test_the_controlnet_stays_frozen_on_the_device_and_a_step_goes_uphill_on_a_bf16_pipeline(config, lora):
    pipe = _pipe().to(dtype=torch.bfloat16)
    moved = []
    to = pipe.controlnet.to
    pipe.controlnet.to = lambda *a, **k: (moved.append((a, k)), to(*a, **k))[1]
    before = {n: p.detach().clone() for n, p in pipe.controlnet.named_parameters()}
    trainer = _trainer(config, lora, pipe=pipe, max_steps=1, per_device_train_batch_size=2)
    assert trainer.adapter.conditioning_scale == [0.7]
    calls = []
    forward = pipe.controlnet.forward

    def spy(*args, **kwargs):
        calls.append((torch.is_grad_enabled(), kwargs["conditioning_scale"], kwargs["hidden_states"].dtype))
        return forward(*args, **kwargs)

    pipe.controlnet.forward = spy
    step = uphill_step(trainer)
    assert set(step.dots) == {"denoise", "inversion"} and step.uphill, step.dots
    # fp32 masters: the LoRA's, or the whole transformer upcast; the frozen ControlNet keeps the pipeline's bf16.
    assert step.dtypes == {torch.float32}
    assert trainer.pipeline.transformer.dtype == (torch.bfloat16 if lora else torch.float32)
    # Called in every rollout step and both training calls, without gradient, in its own dtype, at the config's scale.
    assert len(calls) > STEPS and set(calls) == {(False, 0.7, torch.bfloat16)}, set(calls)
    assert any(trainer.accelerator.device in (*a, *k.values()) for a, k in moved), moved  # the trainer moved it
    controlnet = trainer.pipeline.controlnet
    assert not any("lora" in n for n, _ in controlnet.named_parameters())
    for name, p in controlnet.named_parameters():
        assert not p.requires_grad and p.grad is None and p.dtype == torch.bfloat16, name
        assert torch.equal(p, before[name]), name


@pytest.mark.parametrize("kind", [*LORAS, "full"])
def test_the_result_reloads_in_the_stock_controlnet_pipeline_as_trained(tmp_path, config, kind):
    from diffusers import FluxTransformer2DModel

    trainer = _trainer(config, LORAS.get(kind))
    if kind == "full":  # far from the base, so that the comparison means something
        with torch.no_grad():
            weight = trainer.model.proj_out.weight
            weight.add_(0.05 * torch.randn(weight.shape, generator=torch.Generator().manual_seed(0)))
    else:
        far_from_identity(trainer.model)
    trainer.save_model(str(tmp_path / kind))
    eps = _noise(get_adapter(_pipe()))
    with_trained = _pipe()
    with_trained.transformer = trainer.accelerator.unwrap_model(trainer.model).eval()
    fresh = _pipe()
    base = _stock(fresh, _control(0), eps)
    if kind == "full":
        fresh.transformer = FluxTransformer2DModel.from_pretrained(str(tmp_path / kind), subfolder="transformer")
    else:
        fresh.load_lora_weights(str(tmp_path / kind))
    trained, loaded = _stock(with_trained, _control(0), eps), _stock(fresh, _control(0), eps)
    assert (trained - base).abs().max() > 1e-2
    gap = (loaded - trained).abs().max().item()
    print(f"controlnet {kind}: reloaded against trained {gap:.1e}")
    assert gap <= 1e-5


@pytest.mark.parametrize("name", ["FluxControlNetImg2ImgPipeline", "FluxControlNetInpaintPipeline"])
def test_a_variant_gets_the_adapter_and_trains_as_the_text_to_image_pipeline(config, name):
    base = _pipe()
    variant = getattr(diffusers, name).from_pipe(base)
    adapter = get_adapter(variant, max_sequence_length=32)
    assert isinstance(adapter, FluxControlNetAdapter) and adapter.pipeline.controlnet is base.controlnet
    sampler = sampling_pipeline(variant)
    assert type(sampler).__name__ == "FluxControlNetPipeline" and sampler.controlnet is base.controlnet
    eps = _noise(adapter)
    assert torch.equal(
        _rollout(adapter, _control(0), eps), _rollout(get_adapter(base, max_sequence_length=32), _control(0), eps)
    )
    trainer = _trainer(config, dict(r=4, lora_alpha=8), pipe=variant, max_steps=1, per_device_train_batch_size=2)
    assert type(trainer.pipeline).__name__ == name and isinstance(trainer.adapter, FluxControlNetAdapter)
    step = uphill_step(trainer)
    assert set(step.dots) == {"denoise", "inversion"} and step.uphill, step.dots


def test_the_errors_a_user_can_meet(config):
    multi = get_adapter(_pipe(num_controlnets=2))
    with pytest.raises(ValueError, match="3 values for 2 ControlNets"):
        multi.configure(SimpleNamespace(controlnet_conditioning_scale=[1.0, 1.0, 1.0], controlnet_control_mode=None))
    multi.configure(SimpleNamespace(controlnet_conditioning_scale=[0.5], controlnet_control_mode=None))
    assert multi.conditioning_scale == [0.5, 0.5]
    union = get_adapter(_pipe(num_mode=3), max_sequence_length=32)
    with pytest.raises(ValueError, match="union ControlNet .*controlnet_control_mode"):
        union.configure(SimpleNamespace(controlnet_conditioning_scale=[1.0], controlnet_control_mode=None))
    with pytest.raises(ValueError, match="union ControlNet .*controlnet_control_mode"):  # before any model work
        SRPOTrainer(_pipe(num_mode=3), ColorWordReward(), args=config(), train_dataset=Dataset.from_dict(
            {"prompt": ["a cat"], "control_image": [_control(0)]}))  # fmt: skip
    union.configure(SimpleNamespace(controlnet_conditioning_scale=[1.0], controlnet_control_mode=[1]))
    assert union.control_mode == [1] and _rollout(union, _control(0), _noise(union)).isfinite().all()
    with pytest.raises(ValueError, match="no column 'control_image'"):
        SRPOTrainer(_pipe(), ColorWordReward(), args=config(), train_dataset=Dataset.from_dict({"prompt": ["a cat"]}))


def test_a_controlnet_given_by_id_trains_and_the_card_loads_it_apart_from_the_base(tmp_path, config, monkeypatch):
    """The diffusers way to use a FLUX.1 ControlNet: the base and the ControlNet load apart
    (`SRPOConfig.controlnet_name_or_path`); the model card's snippet does the same, with the run's scale, and runs;
    `srpo-trl eval --controlnet_name_or_path` samples the base + ControlNet + LoRA as the trained model."""
    import json

    from diffusers import FluxPipeline

    from srpo_trl.cli import main

    pipe = _pipe()
    FluxPipeline(**{k: v for k, v in pipe.components.items() if k != "controlnet"}).save_pretrained(tmp_path / "base")
    pipe.controlnet.save_pretrained(tmp_path / "controlnet")
    (tmp_path / "data").mkdir()
    _control(0).save(tmp_path / "data" / "control.png")
    data = Dataset.from_dict(
        {"prompt": ["a cat", "a dog"], "control_image": [str(tmp_path / "data" / "control.png")] * 2}
    )
    args = config(max_sequence_length=32, controlnet_name_or_path=[str(tmp_path / "controlnet")],
                  controlnet_conditioning_scale=[0.7], sample_prompts=["a bird"], sample_steps=0)  # fmt: skip
    trainer = SRPOTrainer(str(tmp_path / "base"), ColorWordReward(), args=args, train_dataset=data,
                          peft_config=LoraConfig(**LORAS["alpha-not-r"], init_lora_weights="gaussian"))  # fmt: skip
    assert type(trainer.pipeline).__name__ == "FluxControlNetPipeline"
    far_from_identity(trainer.model)
    trainer.save_model(str(tmp_path / "lora"))
    snippet = (tmp_path / "lora" / "README.md").read_text().split("```python\n", 1)[1].split("```", 1)[0]
    assert f'controlnet = FluxControlNetModel.from_pretrained("{tmp_path / "controlnet"}"' in snippet
    assert "controlnet=controlnet," in snippet and "controlnet_conditioning_scale=0.7," in snippet
    monkeypatch.chdir(tmp_path / "data")  # the snippet reads control.png
    scope = {}
    exec(snippet, scope)  # noqa: S102 - the card's own code
    assert scope["image"].size == (SIZE, SIZE)

    with open(tmp_path / "prompts.jsonl", "w") as f:
        f.write(json.dumps({"prompt": "a bird", "control_image": str(tmp_path / "data" / "control.png")}) + "\n")
    command = ["eval", "--model", str(tmp_path / "base"), "--controlnet_name_or_path", str(tmp_path / "controlnet"),
               "--controlnet_conditioning_scale", "0.7", "--result", str(tmp_path / "lora"), "--prompts",
               str(tmp_path / "prompts.jsonl"), "--reward_funcs", "color", "--control_words", "brightness",
               "--resolution", str(SIZE), "--num_inference_steps", "3", "--max_sequence_length", "32",
               "--output_dir", str(tmp_path / "eval")]  # fmt: skip
    assert main(command) == 0
    report = json.loads((tmp_path / "eval" / "eval.json").read_text())
    assert report["rewards"]["color"]["srp"]["delta"] != 0
