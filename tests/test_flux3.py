"""FLUX.3 [klein] through the Flux3 adapter, on tiny offline modular pipelines (`tiny_flux3_pipeline`): the stock
modular loop's images (base with and without its classifier-free guidance, the step-distilled flow map), prompts of
different text windows in one batch, the flow map's inversion velocity, an uphill step at the recipe defaults on a
bf16-loaded pipeline, and the LoRA / full fine-tune round trips through the stock loaders and `srpo-trl eval`'s
sampling."""

import pytest
import torch
from datasets import Dataset
from lora_helpers import LORAS, far_from_identity
from peft import LoraConfig
from uphill import uphill_step

from srpo_trl import ColorWordReward, SRPOTrainer, direct_align
from srpo_trl.evaluation import EvalSettings, load_result
from srpo_trl.evaluation import generate as eval_generate
from srpo_trl.models import Flux3Adapter, get_adapter
from srpo_trl.testing import tiny_flux3_pipeline

SIZE, STEPS = 64, 4
PROMPT = "a red bird"
LONG_PROMPT = "a very small red bird sitting on the branch of an old apple tree in the warm light of a late summer day"


def _stock(pipe, prompt=PROMPT, latents=None, seed=3, steps=STEPS):
    """The stock modular loop's images as a tensor, from `latents` (`[1, C, H/16, W/16]`) or the seed."""
    pipe.set_progress_bar_config(disable=True)
    kwargs = {"latents": latents} if latents is not None else {"generator": torch.Generator().manual_seed(seed)}
    return pipe(prompt=prompt, height=SIZE, width=SIZE, num_inference_steps=steps, output_type="pt", output="images",
                **kwargs)  # fmt: skip


def _stock_grid(adapter, steps=STEPS) -> torch.Tensor:
    """The stock loop's levels: `linspace(1, 1/N, N)` under the scheduler's static shift, then 0."""
    shift = adapter.default_time_shift(SIZE, SIZE)
    return torch.cat([direct_align.time_shift(torch.linspace(1, 1 / steps, steps, dtype=torch.float64), shift),
                      torch.zeros(1, dtype=torch.float64)]).float()  # fmt: skip


def _ours(pipe, adapter, guidance, prompt=PROMPT, seed=3):
    eps = adapter.sample_noise(1, SIZE, SIZE, torch.Generator().manual_seed(seed), torch.device("cpu"))
    text = adapter.encode_prompts([prompt], torch.device("cpu"))
    x0 = direct_align.euler_sample(
        lambda x, s, t: adapter.velocity(pipe.transformer, x, s, text, guidance, SIZE, SIZE, target=t),
        eps,
        _stock_grid(adapter),
    )
    latents = eps.transpose(1, 2).reshape(1, -1, SIZE // 16, SIZE // 16)  # the same noise as the stock loop's input
    return adapter.decode(x0, SIZE, SIZE), latents


CASES = {"base-cfg1": (False, 1.0), "base-cfg": (False, None), "distilled": (True, None)}


@pytest.mark.parametrize("case", list(CASES))
def test_our_rollout_equals_the_stock_modular_loop(case):
    distilled, guidance = CASES[case]
    pipe = tiny_flux3_pipeline(0, distilled=distilled, guidance_scale=guidance)
    adapter = get_adapter(pipe)
    assert isinstance(adapter, Flux3Adapter) and adapter.flow_map == distilled
    guidance = adapter.default_guidance["sample"] if guidance is None else guidance  # the family's: the stock guider's
    assert guidance == (1.0 if distilled else 3.5 if case == "base-cfg" else 1.0)
    ours, latents = _ours(pipe, adapter, guidance)
    stock = _stock(pipe, latents=latents)
    print(f"{case}: largest difference to the stock modular loop {(ours - stock).abs().max().item():.1e}")
    torch.testing.assert_close(ours, stock, atol=1e-5, rtol=0)


def _picture(seed: int):
    import numpy as np
    from PIL import Image

    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8))


@pytest.mark.parametrize("distilled", [False, True], ids=["base-cfg", "distilled"])
def test_with_a_reference_image_our_rollout_equals_the_stock_image_conditioned_loop(distilled):
    """Editing: the reference's VAE tokens as their own mode (`image_cond_hidden_states`, ids with l = -1), never
    noised; the stock loop is given the same picture as `image=`."""
    import numpy as np

    pipe = tiny_flux3_pipeline(0, distilled=distilled)
    adapter = get_adapter(pipe)
    reference = _picture(7)
    pixels = torch.from_numpy(np.asarray(reference, dtype=np.float32) / 255).permute(2, 0, 1)[None]
    eps = adapter.sample_noise(1, SIZE, SIZE, torch.Generator().manual_seed(3), torch.device("cpu"))
    text = adapter.add_reference(adapter.encode_prompts([PROMPT], eps.device), pixels, SIZE, SIZE)
    guidance = adapter.default_guidance["sample"]
    x0 = direct_align.euler_sample(
        lambda x, s, t: adapter.velocity(pipe.transformer, x, s, text, guidance, SIZE, SIZE, target=t),
        eps,
        _stock_grid(adapter),
    )
    ours = adapter.decode(x0, SIZE, SIZE)
    latents = eps.transpose(1, 2).reshape(1, -1, SIZE // 16, SIZE // 16)
    pipe.set_progress_bar_config(disable=True)
    stock = pipe(prompt=PROMPT, image=reference, height=SIZE, width=SIZE, num_inference_steps=STEPS, latents=latents,
                 output_type="pt", output="images")  # fmt: skip
    without = _stock(pipe, latents=latents)
    assert (stock - without).abs().max() > 1e-3  # the reference matters
    print(f"{'distilled' if distilled else 'base'} with a reference: {(ours - stock).abs().max().item():.1e}")
    torch.testing.assert_close(ours, stock, atol=1e-5, rtol=0)


def test_a_reference_column_makes_flux3_an_editing_run_that_steps_uphill(config):
    data = Dataset.from_dict({"prompt": ["a cat", "a dog"], "reference_image": [_picture(1), _picture(2)]})
    trainer = SRPOTrainer(tiny_flux3_pipeline(0), ColorWordReward(), args=config(max_steps=1,
                          per_device_train_batch_size=2), train_dataset=data,
                          peft_config=LoraConfig(r=4, lora_alpha=8))  # fmt: skip
    assert trainer.adapter.requires_reference_image
    seen = []
    call = trainer.adapter._call

    def spy(transformer, latents, sigma, target, embeds, reference, height, width):
        seen.append(reference is not None)
        return call(transformer, latents, sigma, target, embeds, reference, height, width)

    trainer.adapter._call = spy
    step = uphill_step(trainer)
    assert seen and all(seen) and step.uphill, step.dots  # every call, rollout and training, saw the references
    assert any("mode_blocks.image_cond." in n for n, p in trainer.model.named_parameters() if p.requires_grad)
    text_only = SRPOTrainer(tiny_flux3_pipeline(0), ColorWordReward(), args=config(),
                            train_dataset=Dataset.from_dict({"prompt": ["a cat"]}))  # fmt: skip
    assert not text_only.adapter.requires_reference_image


def test_prompts_of_different_windows_share_a_batch_each_in_its_own_window():
    """A 10-token and a 110-token prompt (windows of 80 and 160 tokens): one batch gives each row exactly what that
    prompt alone gives (the transformer reads the window's padding, so padding to a common length would not)."""
    pipe = tiny_flux3_pipeline(0)
    adapter = get_adapter(pipe)
    text = adapter.encode_prompts([PROMPT, LONG_PROMPT], torch.device("cpu"))
    assert text["text_lengths"].tolist() == [80, 160]
    x, sigma = torch.randn(2, 16, 16, generator=torch.Generator().manual_seed(0)), torch.tensor([0.9, 0.6])
    batched = adapter.velocity(pipe.transformer, x, sigma, text, 3.5, SIZE, SIZE)
    for i, prompt in enumerate([PROMPT, LONG_PROMPT]):
        alone = adapter.velocity(
            pipe.transformer,
            x[i : i + 1],
            sigma[i : i + 1],
            adapter.encode_prompts([prompt], x.device),
            3.5,
            SIZE,
            SIZE,
        )
        torch.testing.assert_close(batched[i : i + 1], alone, atol=1e-5, rtol=0)


def test_the_flow_maps_inversion_velocity_is_the_limit_of_small_downward_jumps():
    """The inversion branch steps up, which a flow map never learned: it is given its current level as the target,
    v(x, b -> b). On the model, v(x, b -> b - d) approaches it as the jump d shrinks, linearly (measured on seeds
    0-2: about 2e-2, 3e-3, 3e-4, 3e-5 for d = 1e-3 .. 1e-6, against velocities of about 1.6)."""
    pipe = tiny_flux3_pipeline(0, distilled=True)
    adapter = get_adapter(pipe)
    text = adapter.encode_prompts([PROMPT], torch.device("cpu"))
    x, b = torch.randn(1, 16, 16, generator=torch.Generator().manual_seed(0)), torch.tensor([0.85])
    with torch.no_grad():
        instantaneous = adapter.velocity(pipe.transformer, x, b, text, 1.0, SIZE, SIZE, target=b)
        gaps = [
            (adapter.velocity(pipe.transformer, x, b, text, 1.0, SIZE, SIZE, target=b - d) - instantaneous).abs().max()
            for d in (1e-3, 1e-4, 1e-5, 1e-6)
        ]
    print("|v(b -> b - d) - v(b -> b)| for d = 1e-3 .. 1e-6:", [f"{g:.1e}" for g in gaps])
    assert all(5 < float(a / b) < 20 for a, b in zip(gaps[:-1], gaps[1:]))  # linear in d: the limit is v(b -> b)
    assert gaps[-1] < 1e-4
    # and Direct-Align's step tells it so: the end of a step down, the start of a step up
    start, end = torch.tensor([0.9, 0.8]), torch.tensor([0.8, 0.9])
    assert direct_align.flow_map_target(start, end).tolist() == pytest.approx([0.8, 0.8])


def _trainer(config, distilled, lora=None, dtype=torch.float32, **overrides):
    pipe = tiny_flux3_pipeline(0, distilled=distilled)
    if dtype != torch.float32:
        for module in (pipe.transformer, pipe.vae, pipe.text_encoder):
            module.to(dtype)
    data = Dataset.from_dict({"prompt": ["a cat", "a dog on a hill", "a house", LONG_PROMPT]})
    peft = LoraConfig(**{"init_lora_weights": "gaussian", **lora}) if lora is not None else None
    return SRPOTrainer(pipe, ColorWordReward(), args=config(**overrides), train_dataset=data, peft_config=peft)


@pytest.mark.parametrize("distilled", [False, True], ids=["base", "distilled"])
def test_one_step_at_the_recipe_defaults_goes_uphill_with_fp32_masters_on_a_bf16_pipeline(config, distilled):
    trainer = _trainer(config, distilled, dict(r=4, lora_alpha=8), dtype=torch.bfloat16, max_steps=1,
                       per_device_train_batch_size=2)  # fmt: skip
    assert trainer.args.learning_rate == 5e-6 and trainer.args.use_inversion_branch
    assert trainer.args.hinge_threshold is None and trainer.pipeline.transformer.dtype == torch.bfloat16
    step = uphill_step(trainer)
    assert set(step.dots) == {"denoise", "inversion"} and step.uphill, step.dots
    assert step.dtypes == {torch.float32} and not step.unchanged_with_gradient
    # text-to-image never calls the reference mode: no LoRA there (it would never train, and hold no optimizer state)
    names = [n for n, p in trainer.model.named_parameters() if p.requires_grad]
    assert names and not any("image_cond" in n for n in names) and any("mode_blocks.image." in n for n in names)


@pytest.mark.parametrize(
    "distilled, lora", [(False, "alpha-not-r"), (False, "rslora"), (False, "dora"), (True, "alpha-not-r")]
)
def test_the_lora_reloads_in_the_stock_modular_pipeline_as_trained(tmp_path, config, distilled, lora):
    trainer = _trainer(config, distilled, LORAS[lora])
    far_from_identity(trainer.model)
    trainer.save_model(str(tmp_path / "lora"))
    with_trained = tiny_flux3_pipeline(0, distilled=distilled)
    with_trained.update_components(transformer=trainer.accelerator.unwrap_model(trainer.model).eval())
    fresh = tiny_flux3_pipeline(0, distilled=distilled)
    base = _stock(fresh)
    fresh.load_lora_weights(str(tmp_path / "lora"))  # the stock loader of the modular pipeline
    trained, loaded = _stock(with_trained), _stock(fresh)
    assert (trained - base).abs().max() > 1e-2
    gap = (loaded - trained).abs().max().item()
    print(f"{'distilled' if distilled else 'base'} {lora}: reloaded against trained {gap:.1e}")
    assert gap <= 1e-5


def test_a_full_fine_tune_reloads_and_eval_samples_and_loads_both_kinds(tmp_path, config):
    """`transformer/` loads with `Flux3Transformer2DModel.from_pretrained`; `srpo-trl eval`'s sampling (the stock
    modular loop, one prompt a call) and its result loading give the trained model's images for both kinds."""
    from diffusers import Flux3Transformer2DModel

    settings = EvalSettings(resolution=SIZE, num_inference_steps=3, batch_size=2, max_sequence_length=512)
    prompts = [PROMPT, "a house"]
    for kind in ("full", "lora"):
        trainer = _trainer(config, False, LORAS["alpha-not-r"] if kind == "lora" else None)
        if kind == "full":
            with torch.no_grad():
                trainer.model.proj_out.weight.mul_(1.5)  # a visible change of the output
        else:
            far_from_identity(trainer.model)
        trainer.save_model(str(tmp_path / kind))
        with_trained = tiny_flux3_pipeline(0)
        with_trained.update_components(transformer=trainer.accelerator.unwrap_model(trainer.model).eval())
        expected = eval_generate(with_trained, prompts, settings)
        if kind == "full":
            reloaded = Flux3Transformer2DModel.from_pretrained(str(tmp_path / "full"), subfolder="transformer")
            assert type(reloaded) is Flux3Transformer2DModel
        fresh = tiny_flux3_pipeline(0)
        base = eval_generate(fresh, prompts, settings)
        assert load_result(fresh, str(tmp_path / kind)) == ("transformer" if kind == "full" else "lora")
        loaded = eval_generate(fresh, prompts, settings)
        assert (expected - base).abs().max() > 1e-2
        gap = (loaded - expected).abs().max().item()
        print(f"{kind}: eval's sampling of the reloaded result against the trained model: {gap:.1e}")
        assert gap <= 1e-5, kind


def test_the_card_s_snippet_runs_on_the_modular_pipeline(tmp_path, config):
    trainer = _trainer(config, False, LORAS["alpha-not-r"], sample_prompts=[PROMPT])
    far_from_identity(trainer.model)
    trainer.save_model(str(tmp_path / "lora"))
    card = (tmp_path / "lora" / "README.md").read_text()
    snippet = card.split("```python\n", 1)[1].split("```", 1)[0]
    assert "from diffusers import ModularPipeline" in snippet and 'output="images"' in snippet
    assert f'prompt="{PROMPT}",' in snippet and "guider=pipe.guider.new(guidance_scale=3.5)" in snippet
    # The base was built in code, so the snippet starts from the user's object: give it the tiny base.
    scope = {"pipe": tiny_flux3_pipeline(0)}
    exec(snippet.replace("pipe = ...", "pass  #"), scope)  # noqa: S102 - the card's own code
    assert tuple(scope["image"].size) == (SIZE, SIZE)


def test_regional_compilation_compiles_each_of_flux3s_repeated_blocks():
    """accelerate's regional compilation (the trainer's default under `torch_compile`) compiles each block of the
    classes diffusers lists in `_repeated_blocks`, one graph reused by every block of a class (wrapped only here: the
    `eager` backend compiles on the first call)."""
    from accelerate.utils import compile_regions
    from torch._dynamo.eval_frame import OptimizedModule

    transformer = tiny_flux3_pipeline(0).transformer
    repeated = set(type(transformer)._repeated_blocks)
    blocks = [type(m).__name__ for m in transformer.modules() if type(m).__name__ in repeated]
    compiled = compile_regions(transformer, backend="eager")  # a compiled copy
    wrapped = [type(m._orig_mod).__name__ for m in compiled.modules() if isinstance(m, OptimizedModule)]
    assert repeated == {"Flux3ModeTransformerBlock", "Flux3SingleTransformerBlock"}
    assert len(blocks) == 4 and sorted(n for n in wrapped if n in repeated) == sorted(blocks)  # each block on its own
