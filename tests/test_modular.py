"""diffusers' modular pipelines of the families with a classic pipeline (FLUX.1, Kontext, FLUX.2, [klein] and
[klein] base): each is read through its classic pipeline over the same components; our rollout equals the stock modular
FLUX.1 loop; a modular folder trains through `SRPOTrainer(model=path)` and the LoRA loads back in the modular and the
classic pipeline. (FLUX.3, which exists only as a modular pipeline, is tests/test_flux3.py.)"""

import pytest
import torch
from datasets import Dataset
from peft import LoraConfig

from srpo_trl import ColorWordReward, SRPOTrainer, direct_align
from srpo_trl.models import Flux2Adapter, FluxAdapter, FluxKontextAdapter, get_adapter
from srpo_trl.testing import tiny_flux2_pipeline, tiny_flux_kontext_pipeline, tiny_flux_pipeline


def modular(name: str, classic):
    """A diffusers modular pipeline `name` holding `classic`'s components, as `blocks.init_pipeline()` makes one."""
    import diffusers.modular_pipelines as modular_pipelines

    blocks = {
        "FluxModularPipeline": "FluxAutoBlocks",
        "FluxKontextModularPipeline": "FluxKontextAutoBlocks",
        "Flux2ModularPipeline": "Flux2AutoBlocks",
        "Flux2KleinModularPipeline": "Flux2KleinAutoBlocks",
        "Flux2KleinBaseModularPipeline": "Flux2KleinBaseAutoBlocks",
    }[name]
    pipe = getattr(modular_pipelines, blocks)().init_pipeline()
    # [klein] base's blocks make a Flux2KleinModularPipeline whose config says is_distilled=False (loading a folder
    # gives the Flux2KleinBaseModularPipeline class): the config, not the class, tells base from distilled.
    assert type(pipe).__name__ == name.replace("KleinBase", "Klein")
    pipe.update_components(**{k: v for k, v in classic.components.items() if k in pipe.components})
    return pipe


CLASSES = {
    "FluxModularPipeline": (tiny_flux_pipeline, FluxAdapter, "FluxPipeline"),
    "FluxKontextModularPipeline": (tiny_flux_kontext_pipeline, FluxKontextAdapter, "FluxKontextPipeline"),
    "Flux2ModularPipeline": (lambda s: tiny_flux2_pipeline(s, variant="dev"), Flux2Adapter, "Flux2Pipeline"),
    "Flux2KleinModularPipeline": (tiny_flux2_pipeline, Flux2Adapter, "Flux2KleinPipeline"),
    "Flux2KleinBaseModularPipeline": (tiny_flux2_pipeline, Flux2Adapter, "Flux2KleinPipeline"),
}


@pytest.mark.parametrize("name", list(CLASSES))
def test_a_modular_pipeline_is_read_through_its_classic_pipeline_over_the_same_modules(name):
    build, adapter_class, classic = CLASSES[name]
    pipe = modular(name, build(0))
    adapter = get_adapter(pipe)
    assert type(adapter) is adapter_class and type(adapter.pipeline).__name__ == classic
    assert adapter.pipeline.transformer is pipe.transformer and adapter.pipeline.vae is pipe.vae  # nothing copied
    if name.startswith("Flux2Klein"):  # the distilled [klein] is unguided, the base one takes CFG
        assert adapter.classifier_free_guidance == (name == "Flux2KleinBaseModularPipeline")


def test_our_rollout_equals_the_stock_modular_flux1_loop():
    from diffusers import FlowMatchEulerDiscreteScheduler

    classic = tiny_flux_pipeline(0)
    classic.scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=False)
    pipe = modular("FluxModularPipeline", classic)
    pipe.set_progress_bar_config(disable=True)
    stock = pipe(
        prompt="a bird", height=64, width=64, num_inference_steps=4, guidance_scale=3.5, max_sequence_length=32,
        generator=torch.Generator().manual_seed(3), output_type="pt", output="images",
    )  # fmt: skip
    adapter = get_adapter(pipe, max_sequence_length=32)
    text = adapter.encode_prompts(["a bird"], torch.device("cpu"))
    eps = adapter.sample_noise(1, 64, 64, torch.Generator().manual_seed(3), torch.device("cpu"))
    x0 = direct_align.euler_sample(
        lambda x, s, _: adapter.velocity(pipe.transformer, x, s, text, 3.5, 64, 64),
        eps,
        direct_align.shifted_grid(4, 3.0).float(),
    )
    ours = adapter.decode(x0, 64, 64)
    print(f"FluxModularPipeline: largest difference to the stock modular loop {(ours - stock).abs().max().item():.1e}")
    torch.testing.assert_close(ours, stock, atol=1e-5, rtol=0)


def test_a_modular_folder_trains_and_its_lora_loads_in_the_modular_and_the_classic_pipeline(tmp_path, config):
    from diffusers import FluxPipeline, ModularPipeline

    modular("FluxModularPipeline", tiny_flux_pipeline(0)).save_pretrained(str(tmp_path / "base"))
    assert (tmp_path / "base" / "modular_model_index.json").is_file()
    assert not (tmp_path / "base" / "model_index.json").exists()
    trainer = SRPOTrainer(
        str(tmp_path / "base"),
        ColorWordReward(),
        args=config(max_steps=1, output_dir=str(tmp_path / "out")),
        train_dataset=Dataset.from_dict({"prompt": ["a cat", "a dog"]}),
        peft_config=LoraConfig(r=4, lora_alpha=8),
    )
    assert type(trainer.pipeline).__name__ == "FluxModularPipeline"
    trainer.train()
    trainer.save_model()
    card = (tmp_path / "out" / "README.md").read_text()
    assert f'ModularPipeline.from_pretrained("{tmp_path / "base"}")' in card

    trained = {n: p.detach() for n, p in trainer.model.named_parameters() if "lora" in n}
    for pipe in (
        ModularPipeline.from_pretrained(str(tmp_path / "base")),
        FluxPipeline(**tiny_flux_pipeline(0).components),
    ):
        if hasattr(pipe, "load_components"):
            pipe.load_components(torch_dtype=torch.float32)
        pipe.load_lora_weights(str(tmp_path / "out"))
        loaded = {
            n.replace(".default_0.", ".default."): p for n, p in pipe.transformer.named_parameters() if "lora" in n
        }
        assert loaded.keys() == trained.keys(), type(pipe).__name__
        assert all(torch.equal(loaded[n], trained[n]) for n in trained), type(pipe).__name__

    # `srpo-trl eval` on the modular folder: loaded by path, sampled with the classic pipeline over its components
    from srpo_trl.cli import main

    (tmp_path / "prompts.txt").write_text("a cat\na dog\n")
    command = ["eval", "--model", str(tmp_path / "base"), "--result", str(tmp_path / "out"), "--prompts",
               str(tmp_path / "prompts.txt"), "--reward_funcs", "color", "--control_words", "brightness", "--resolution",
               "64", "--num_inference_steps", "3", "--max_sequence_length", "32", "--output_dir", str(tmp_path / "eval")]  # fmt: skip
    assert main(command) == 0
    assert (tmp_path / "eval" / "eval.json").is_file()
