"""FLUX.1 Kontext: the reference image is conditioning; only the generated image is rewarded."""

import pytest
import torch
from datasets import Dataset
from diffusers import FluxKontextPipeline
from peft import LoraConfig
from PIL import Image

from srpo_trl import ColorWordReward, SRPOTrainer
from srpo_trl.models import FluxKontextAdapter, get_adapter
from srpo_trl.testing import tiny_colour_flux_pipeline, tiny_flux_kontext_pipeline


def kontext(pipe):
    """The demo's FLUX.1 components (a VAE with visible colour) under the Kontext pipeline class."""
    names = ("scheduler", "vae", "text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2", "transformer")
    return FluxKontextPipeline(**{name: pipe.components[name] for name in names})


def test_tiny_kontext_pipeline_builder():
    pipe = tiny_flux_kontext_pipeline(0)
    assert isinstance(pipe, FluxKontextPipeline) and isinstance(get_adapter(pipe), FluxKontextAdapter)


def _data(n):
    colors = [(200, 30, 30), (30, 30, 200), (30, 200, 30), (200, 200, 30)]
    prompts = ["a cat", "a dog on a hill", "a house", "the sea"]
    return Dataset.from_dict(
        {"prompt": prompts[:n], "reference_image": [Image.new("RGB", (64, 64), c) for c in colors[:n]]}
    )


def test_reference_tokens_condition_but_only_generated_tokens_come_out():
    pipe = kontext(tiny_colour_flux_pipeline(0))
    adapter = get_adapter(pipe, max_sequence_length=16)
    assert isinstance(adapter, FluxKontextAdapter) and adapter.requires_reference_image
    text = adapter.encode_prompts(["a cat"], torch.device("cpu"))
    x = adapter.sample_noise(1, 64, 64, torch.Generator().manual_seed(0), torch.device("cpu"))
    sigma = torch.tensor([0.7])
    red = adapter.add_reference(text, torch.tensor([1.0, 0, 0]).view(1, 3, 1, 1).expand(1, 3, 64, 64), 64, 64)
    blue = adapter.add_reference(text, torch.tensor([0, 0, 1.0]).view(1, 3, 1, 1).expand(1, 3, 64, 64), 64, 64)
    assert red["reference_ids"][0, :, 0].eq(1).all()
    with torch.no_grad():
        v_red = adapter.velocity(pipe.transformer, x, sigma, red, 3.5, 64, 64)
        v_blue = adapter.velocity(pipe.transformer, x, sigma, blue, 3.5, 64, 64)
    assert v_red.shape == x.shape
    assert (v_red - v_blue).abs().max() > 1e-4  # the reference matters
    with pytest.raises(ValueError, match="no reference"):
        adapter.velocity(pipe.transformer, x, sigma, text, 3.5, 64, 64)


def _stock_images(pipe, references):
    """The stock Kontext pipeline's images at 64 px (no resize to Kontext's preferred sizes) from fixed noise."""
    pipe.set_progress_bar_config(disable=True)
    return pipe(
        image=references, prompt=["a bird", "a tree"], height=64, width=64, max_area=64 * 64, _auto_resize=False,
        num_inference_steps=3, guidance_scale=3.5, max_sequence_length=32, output_type="pt",
        generator=torch.Generator().manual_seed(0),
    ).images  # fmt: skip


def test_kontext_lora_training_loads_in_the_stock_pipeline(tmp_path, config):
    """A Kontext LoRA (lora_alpha != r, moved far from identity, then trained) reloads in a fresh stock
    `FluxKontextPipeline` and gives the trained model's images from the same noise and references."""
    args = config(max_steps=2, learning_rate=1e-3, per_device_train_batch_size=2, rollout_steps=4)
    trainer = SRPOTrainer(
        kontext(tiny_colour_flux_pipeline(0)),
        ColorWordReward(),
        args=args,
        train_dataset=_data(4),
        peft_config=LoraConfig(r=4, lora_alpha=8, init_lora_weights="gaussian"),
    )
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():  # peft starts lora_B at zero: random values make the LoRA change the images a lot
        for name, p in trainer.model.named_parameters():
            if "lora_B" in name:
                p.copy_(0.05 * torch.randn(p.shape, generator=generator))
    start = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if p.requires_grad}
    trainer.train()
    assert all(not torch.equal(p, start[n]) for n, p in trainer.model.named_parameters() if n in start)
    trainer.save_model(str(tmp_path / "lora"))

    references = list(_data(2)["reference_image"])
    with_trained = kontext(tiny_colour_flux_pipeline(0))
    with_trained.transformer = trainer.accelerator.unwrap_model(trainer.model).eval()
    trained = _stock_images(with_trained, references)
    stock = kontext(tiny_colour_flux_pipeline(0))
    base = _stock_images(stock, references)
    stock.load_lora_weights(str(tmp_path / "lora"))
    loaded = _stock_images(stock, references)
    assert (trained - base).abs().max() > 0.1  # the LoRA matters
    gap = (loaded - trained).abs().max().item()
    assert gap <= 1e-5, f"the reloaded LoRA's images differ from the trained model's by up to {gap:.3g}"


def test_kontext_needs_a_reference_column(tmp_path, config):
    with pytest.raises(ValueError, match="no column 'reference_image'"):
        SRPOTrainer(
            kontext(tiny_colour_flux_pipeline(0)),
            ColorWordReward(),
            args=config(),
            train_dataset=Dataset.from_dict({"prompt": ["a cat"]}),
        )


def test_generate_takes_a_reference_of_any_size_as_the_data_pipeline_resizes_it(config):
    """A reference of another size than the training size is resized and centre-cropped as training rows are (it
    used to stop with a bare size-mismatch RuntimeError); a tensor, a PIL image and a path give the same images."""
    import numpy as np

    from srpo_trl.data import image_to_tensor

    trainer = SRPOTrainer(
        kontext(tiny_colour_flux_pipeline(0)), ColorWordReward(), args=config(), train_dataset=_data(1)
    )
    picture = Image.fromarray(np.random.default_rng(0).integers(0, 256, (80, 112, 3), dtype=np.uint8))  # 112 x 80
    as_trained = trainer.generate(["a cat"], reference_images=image_to_tensor(picture, 64, 64)[None])
    from_pil = trainer.generate(["a cat"], reference_images=[picture])
    as_tensor = torch.from_numpy(np.asarray(picture, dtype=np.float32) / 255).permute(2, 0, 1)[None]
    from_tensor = trainer.generate(["a cat"], reference_images=as_tensor)
    assert from_pil.shape == (1, 3, 64, 64)
    torch.testing.assert_close(from_pil, as_trained, atol=0, rtol=0)
    torch.testing.assert_close(from_tensor, as_trained, atol=0, rtol=0)
    with pytest.raises(ValueError, match=r"reference_images: expected a tensor \[B, 3, H, W\]"):
        trainer.generate(["a cat"], reference_images=torch.rand(1, 64, 64))
