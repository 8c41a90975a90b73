"""Model cards for SRPO results: TRL-style metadata plus a diffusers loading snippet."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

import torch
from huggingface_hub import ModelCard, ModelCardData

SAMPLES_DIR = "samples"  # sample images shown by the model card, with prompts.json saying how they were made


def result_files(trainable_component: str) -> list[str]:
    """What `push_to_hub` uploads: the diffusers-loadable result, the card, the config and the samples (never
    checkpoints, logs or staging folders)."""
    from transformers.trainer import TRAINING_ARGS_NAME

    from .checkpointing import LORA_WEIGHTS_NAME

    return [LORA_WEIGHTS_NAME, f"{trainable_component}/*", "README.md", TRAINING_ARGS_NAME, f"{SAMPLES_DIR}/*"]


CITATION = """@article{shen2025srpo,
  title   = {Directly Aligning the Full Diffusion Trajectory with Fine-Grained Human Preference},
  author  = {Shen, Xiangwei and Li, Zhimin and Yang, Zhantao and Zhang, Shiyi and Zhang, Yingfang and Li, Donghao and Wang, Chunyu and Lu, Qinglin and Tang, Yansong},
  journal = {arXiv preprint arXiv:2509.06942},
  year    = {2025}
}"""

TAGS = ["srpo", "trl", "diffusers", "text-to-image"]

# Licences of well-known bases, used when the base's own card cannot be read (offline).
KNOWN_LICENSES: dict[str, dict[str, str]] = {
    "black-forest-labs/FLUX.1-dev": {
        "license": "other",
        "license_name": "flux-1-dev-non-commercial-license",
        "license_link": "https://huggingface.co/black-forest-labs/FLUX.1-dev/blob/main/LICENSE.md",
    },
    "black-forest-labs/FLUX.1-Krea-dev": {
        "license": "other",
        "license_name": "flux-1-dev-non-commercial-license",
        "license_link": "https://huggingface.co/black-forest-labs/FLUX.1-Krea-dev/blob/main/LICENSE.md",
    },
    "black-forest-labs/FLUX.1-schnell": {"license": "apache-2.0"},
    "lodestones/Chroma1-HD": {"license": "apache-2.0"},
    # Qwen-Image 2.1 is not Apache-2.0 like earlier Qwen-Image releases: the Qwen Research License (non-commercial).
    "Qwen/Qwen-Image-2.1": {
        "license": "other",
        "license_name": "qwen-research",
        "license_link": "https://huggingface.co/Qwen/Qwen-Image-2.1/blob/main/LICENSE",
    },
    "Tongyi-MAI/Z-Image": {"license": "apache-2.0"},
    "Tongyi-MAI/Z-Image-Turbo": {"license": "apache-2.0"},
    **{
        f"Wan-AI/{name}-Diffusers": {"license": "apache-2.0"}
        for name in ("Wan2.1-T2V-1.3B", "Wan2.1-T2V-14B", "Wan2.2-T2V-A14B", "Wan2.2-TI2V-5B")
    },
    **{
        f"stabilityai/{name}": {
            "license": "other",
            "license_name": "stabilityai-ai-community",
            "license_link": f"https://huggingface.co/stabilityai/{name}/blob/main/LICENSE.md",
        }
        for name in (
            "stable-diffusion-3.5-large",
            "stable-diffusion-3.5-large-turbo",
            "stable-diffusion-3.5-medium",
            "stable-diffusion-3-medium-diffusers",
        )
    },
    **{
        f"Qwen/{name}": {"license": "apache-2.0"}
        for name in (
            "Qwen-Image",
            "Qwen-Image-2512",
            "Qwen-Image-Edit",
            "Qwen-Image-Edit-2509",
            "Qwen-Image-Edit-2511",
        )
    },
}

FLUX_DEV_NOTICE = (
    "FLUX.1 [dev] is licensed by Black Forest Labs Inc. under the FLUX.1 [dev] Non-Commercial License. "
    "Copyright Black Forest Labs Inc. IN NO EVENT SHALL BLACK FOREST LABS INC. BE LIABLE FOR ANY CLAIM, DAMAGES "
    "OR OTHER LIABILITY, WHETHER IN AN ACTION OF CONTRACT, TORT OR OTHERWISE, ARISING FROM, OUT OF OR IN "
    "CONNECTION WITH USE OF THIS MODEL."
)


def base_model_license(base_model: str | None) -> dict[str, str]:
    """Licence metadata of the base: from a local base folder's card, else from the known list."""
    if not base_model:
        return {}
    card_path = os.path.join(base_model, "README.md")
    if os.path.isfile(card_path):
        data = ModelCard.load(card_path).data.to_dict()
        return {k: data[k] for k in ("license", "license_name", "license_link") if data.get(k)}
    return dict(KNOWN_LICENSES.get(base_model, {}))


def _support(pipeline_class: str):
    """The `srpo_trl.models.PIPELINES` row of a diffusers pipeline class name."""
    import diffusers

    from .models import pipeline_support

    return pipeline_support(getattr(diffusers, pipeline_class))


def _family_tag(pipeline_class: str) -> str:
    """The Hub tag of the model family (the adapter's `hub_tag`: `flux` for every FLUX, `chroma`, `qwen-image`, ...)."""
    return _support(pipeline_class).adapter.hub_tag


@dataclass
class InferenceSettings:
    """How the model card's snippet calls the pipeline: a run's own sample prompt and settings, in the dtype the base
    was loaded in, on the device the run had. The defaults are for a card written without a run (FLUX.1-dev)."""

    prompt: str = "a portrait photo of an old fisherman"
    height: int | None = None  # None: the pipeline's default
    width: int | None = None
    num_inference_steps: int | None = None
    guidance_scale: float | None = None  # None: the family's inference default
    guidance_scale_2: float | None = None  # Wan 2.2 A14B: the low-noise expert's guidance (None: the stock default)
    max_sequence_length: int | None = None  # given only when the run's differs from the pipeline's default (512)
    dtype: str = "bfloat16"
    device: str = "cuda"
    #: A ControlNet pipeline's ControlNet(s), hub ids or folders, loaded apart from the base (as diffusers documents).
    controlnets: list[str] | None = None
    controlnet_conditioning_scale: list[float] | None = None
    #: Video families: frames per video and the frame rate the snippet writes it at.
    num_frames: int | None = None
    frame_rate: int = 16


def _call_arguments(pipeline_class: str, settings: InferenceSettings, guidance: float) -> str:
    """The pipeline call's arguments, one a line: the prompt, the class's own inputs (a variant's image and mask),
    the size and steps, the family's guidance keywords (where the class takes them)."""
    support = _support(pipeline_class)
    guidance_kwargs = support.adapter.pipeline_guidance_kwargs(guidance) if support.takes_guidance else {}
    import diffusers

    from .evaluation import takes_argument

    arguments = {
        "height": settings.height,
        "width": settings.width,
        "num_inference_steps": settings.num_inference_steps,
        **guidance_kwargs,
        "guidance_scale_2": settings.guidance_scale_2,
        "max_sequence_length": settings.max_sequence_length,
    }
    if not support.modular and not takes_argument(getattr(diffusers, pipeline_class), "max_sequence_length"):
        del arguments["max_sequence_length"]  # Qwen-Image 2.1's pipeline has none
    prompt = json.dumps(settings.prompt)
    # A modular pipeline's first positional argument is its state: the prompt goes by name.
    lines = [f"prompt={prompt}," if support.modular else f"{prompt},"] + list(support.inputs)
    lines += [f"{k}={v!r}," for k, v in arguments.items() if v is not None]
    if settings.num_frames is not None:
        lines.append(f"num_frames={settings.num_frames},")
    scales = settings.controlnet_conditioning_scale
    if scales is not None and scales != [1.0]:
        lines.append(f"controlnet_conditioning_scale={scales[0] if len(scales) == 1 else scales!r},")
    return "".join(f"\n    {line}" for line in lines) + "\n"


def _loading_snippet(
    base_model: str | None,
    repo_or_dir: str,
    lora: bool,
    pipeline_class: str,
    transformer_class: str,
    guidance: float,
    settings: InferenceSettings,
    component: str = "transformer",
) -> str:
    """How to load the result in a stock diffusers pipeline and make an image as the run's samples were made; the full
    fine-tune's transformer class is the family's, and the guidance is given as the family's pipeline takes it
    (Qwen-Image: true CFG with a negative prompt). `component`: the pipeline attribute that was trained (Wan 2.2
    A14B's low-noise expert is `transformer_2`: a full fine-tune loads from that subfolder into it, a LoRA with
    `load_into_transformer_2=True`)."""
    if _support(pipeline_class).modular:
        return _modular_loading_snippet(
            base_model, repo_or_dir, lora, pipeline_class, transformer_class, guidance, settings
        )
    dtype = f"torch.{settings.dtype}"
    to_device = "" if settings.device == "cpu" else f'.to("{settings.device}")'
    prompt_line = f"image = pipe({_call_arguments(pipeline_class, settings, guidance)}).images[0]"
    if settings.num_frames is not None:  # a video family: the first video of the batch, written as an mp4
        prompt_line = (
            f"video = pipe({_call_arguments(pipeline_class, settings, guidance)}).frames[0]\n"
            f'export_to_video(video, "video.mp4", fps={settings.frame_rate})'
        )
    if base_model is None:  # built in code: no id to load it by, so the snippet starts from the user's object
        load_base = f"pipe = ...  # the {pipeline_class} this was trained from (built in code: no hub id recorded)"
        load_base_with_transformer = load_base + f"\npipe.{component} = {component}"
    else:
        load_base = f'pipe = {pipeline_class}.from_pretrained("{base_model}", torch_dtype={dtype}){to_device}'
        load_base_with_transformer = (
            f'pipe = {pipeline_class}.from_pretrained("{base_model}", {component}={component}, '
            f"torch_dtype={dtype}){to_device}"
        )
    imports = f"import torch\nfrom diffusers import {pipeline_class}"
    if _support(pipeline_class).inputs:  # a variant's own inputs are images
        imports += "\nfrom diffusers.utils import load_image"
    if settings.num_frames is not None:
        imports += "\nfrom diffusers.utils import export_to_video  # pip install imageio imageio-ffmpeg"
    if settings.controlnets and base_model is not None:  # the ControlNet(s) load apart, and join the base pipeline
        imports = imports.replace(pipeline_class, f"FluxControlNetModel, {pipeline_class}", 1)
        nets = [f'FluxControlNetModel.from_pretrained("{c}", torch_dtype={dtype})' for c in settings.controlnets]
        if len(nets) == 1:
            load_nets = f"controlnet = {nets[0]}"
        else:
            imports = imports.replace("FluxControlNetModel,", "FluxControlNetModel, FluxMultiControlNetModel,", 1)
            load_nets = "controlnet = FluxMultiControlNetModel([\n" + "".join(f"    {n},\n" for n in nets) + "])"
        load_base = load_nets + "\n" + load_base.replace(", torch_dtype=", ", controlnet=controlnet, torch_dtype=")
        load_base_with_transformer = (
            load_nets
            + "\n"
            + load_base_with_transformer.replace(
                "transformer=transformer,", "transformer=transformer, controlnet=controlnet,"
            )
        )
    if lora:
        into = ", load_into_transformer_2=True" if component == "transformer_2" else ""
        return f"""{imports}

{load_base}
pipe.load_lora_weights("{repo_or_dir}"{into})
{prompt_line}"""
    return f"""{imports.replace(pipeline_class, f"{pipeline_class}, {transformer_class}", 1)}

{component} = {transformer_class}.from_pretrained("{repo_or_dir}", subfolder="{component}", torch_dtype={dtype})
{load_base_with_transformer}
{prompt_line}"""


def _modular_loading_snippet(
    base_model: str | None,
    repo_or_dir: str,
    lora: bool,
    pipeline_class: str,
    transformer_class: str,
    guidance: float,
    settings: InferenceSettings,
) -> str:
    """The same for a diffusers `ModularPipeline`: `ModularPipeline.from_pretrained` and `load_components`, the prompt
    upsampler left out (FLUX.3's default blocks rewrite every prompt; training never did), the guidance through the
    pipeline's guider where the family has one, and `output="images"`."""
    dtype = f"torch.{settings.dtype}"
    if base_model is None:
        lines = [f"pipe = ...  # the {pipeline_class} this was trained from (built in code: no hub id recorded)"]
    else:
        lines = [
            f'pipe = ModularPipeline.from_pretrained("{base_model}")',
            'pipe.blocks.sub_blocks.pop("prompt_upsampler", None)  # srpo-trl trains and samples without it',
            f"pipe.load_components(torch_dtype={dtype})",
        ]
        if settings.device != "cpu":
            lines.append(f'pipe.to("{settings.device}")')
    imports = "import torch\nfrom diffusers import ModularPipeline"
    if lora:
        lines.append(f'pipe.load_lora_weights("{repo_or_dir}")')
    else:
        imports += f", {transformer_class}"
        lines.append(
            f'pipe.update_components(transformer={transformer_class}.from_pretrained("{repo_or_dir}", '
            f'subfolder="transformer", torch_dtype={dtype}))'
        )
    call = _call_arguments(pipeline_class, settings, guidance)
    if not _support(pipeline_class).adapter.pipeline_guidance_kwargs(guidance) and guidance != 1:
        lines.append(f"pipe.update_components(guider=pipe.guider.new(guidance_scale={guidance!r}))")
    lines.append(f'image = pipe({call}    output="images",\n)[0]')
    return imports + "\n\n" + "\n".join(lines)


def build_model_card(
    *,
    base_model: str | None,
    lora: bool,
    repo_or_dir: str,
    training_summary: dict[str, object],
    pipeline_class: str = "FluxPipeline",
    transformer_class: str = "FluxTransformer2DModel",
    reward_names: list[str] | None = None,
    samples: list[tuple[str, str]] | None = None,
    sample_settings: dict[str, object] | None = None,
    inference: InferenceSettings | None = None,
    trainable_component: str = "transformer",
) -> ModelCard:
    """A model card for an SRPO result.

    Args:
        base_model: hub id or path of the base pipeline (`None` when unknown, e.g. built in code).
        lora: whether the result is a LoRA (else a full `transformer/`).
        repo_or_dir: where users load the result from (hub repo id or output folder).
        training_summary: config values shown in the card's table.
        pipeline_class: the diffusers pipeline class that loads the result.
        transformer_class: the diffusers class of its transformer (loads a full fine-tune's `transformer/`).
        reward_names: names of the reward functions used.
        samples: `(prompt, relative image path)` pairs; shown in the card and as the Hub's widget.
        sample_settings: how the samples were made (`steps`, `guidance_scale`, `resolution`, `seed`); stated under
            them, and the loading snippet uses the same guidance.
        inference: how the loading snippet calls the pipeline (prompt, size, steps, dtype, device); a run passes its
            own. Its guidance, when given, wins over the samples'.
        trainable_component: the pipeline attribute the result replaces or adapts (`"transformer_2"`: Wan 2.2
            A14B's low-noise expert).
    """
    license_meta = base_model_license(base_model)
    is_hub_id = bool(base_model) and not os.path.isdir(base_model)
    data = ModelCardData(
        base_model=base_model if is_hub_id else None,
        library_name="diffusers",
        pipeline_tag="text-to-image",
        # diffusers' LoRA cards carry "lora" and "template:sd-lora" (the Hub's LoRA widget) besides the family.
        tags=TAGS + [_family_tag(pipeline_class)] + (["lora", "template:sd-lora"] if lora else []),
        widget=[{"text": prompt, "output": {"url": path}} for prompt, path in samples] if samples else None,
        **license_meta,
    )
    gallery = ""
    guidance = _support(pipeline_class).adapter.default_guidance["sample"]  # the family's inference default
    if samples:
        made_with = ""
        if sample_settings:
            guidance = sample_settings["guidance_scale"]
            low_noise = sample_settings.get("guidance_scale_2")
            low_noise = f" ({low_noise} for the low-noise expert)" if low_noise is not None else ""
            made_with = (
                f"Made with srpo-trl's Euler sampler, in eval mode: {sample_settings['steps']} steps, "
                f"guidance {guidance}{low_noise}, {sample_settings['resolution']} px, "
                f"seed {sample_settings['seed']}.\n\n"
            )
        gallery = "\n## Samples\n\n" + made_with + "\n".join(f"![{prompt}]({path})" for prompt, path in samples) + "\n"
    kind = "a LoRA" if lora else "a full fine-tune of the transformer"
    if trainable_component == "transformer_2":  # Wan 2.2 A14B
        kind = f"{'a LoRA' if lora else 'a full fine-tune'} of the low-noise expert `transformer_2`"
    if is_hub_id:
        origin = f"of [{base_model}](https://huggingface.co/{base_model})"
    elif base_model:
        origin = f"of the local pipeline `{base_model}`"
    else:
        origin = "of a pipeline built in code (no hub id or folder was recorded)"
    inference = inference or InferenceSettings()
    if inference.guidance_scale is not None:
        guidance = inference.guidance_scale
    rows = "\n".join(f"| `{k}` | `{v}` |" for k, v in training_summary.items())
    notice = ""
    if license_meta.get("license_name") == "flux-1-dev-non-commercial-license":
        notice = f"\n## License\n\n{FLUX_DEV_NOTICE}\n"
    rewards = ", ".join(f"`{n}`" for n in (reward_names or [])) or "not recorded"
    snippet = _loading_snippet(
        base_model, repo_or_dir, lora, pipeline_class, transformer_class, guidance, inference, trainable_component
    )
    content = f"""---
{data.to_yaml()}
---

# {os.path.basename(os.path.normpath(repo_or_dir))}

This is {kind} {origin}, trained with **SRPO** (Semantic Relative Preference Optimization
with Direct-Align, [arXiv 2509.06942](https://huggingface.co/papers/2509.06942)) using the srpo-trl
library. Reward functions: {rewards}.

## Use it with diffusers

```python
{snippet}
```

{gallery}
## Training configuration

| setting | value |
| --- | --- |
{rows}
{notice}
## Citation

```bibtex
{CITATION}
```
"""
    return ModelCard(content)


def save_video(frames: torch.Tensor, path: str, frame_rate: int) -> None:
    """A video `[F, 3, H, W]` in [0, 1] as an animated, looping, lossless WebP (Pillow's encoder) at `frame_rate`."""
    from PIL import Image

    pixels = (frames.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    images = [Image.fromarray(array) for array in pixels]
    duration = round(1000 / frame_rate)
    images[0].save(path, save_all=True, append_images=images[1:], duration=duration, loop=0, lossless=True)


def save_sample_images(images: torch.Tensor, prompts: list[str], output_dir: str, settings: dict) -> list[str]:
    """Write `images` (`[B, 3, H, W]` in [0, 1]) as `{output_dir}/samples/sample_{i}.png`, or videos (`[B, F, 3, H,
    W]`) as animated `sample_{i}.webp` at `settings["frame_rate"]`, and `prompts.json`: one row per sample with its
    prompt, its path and how it was made (`settings`). Returns the paths."""
    from PIL import Image

    folder = os.path.join(output_dir, SAMPLES_DIR)
    os.makedirs(folder, exist_ok=True)
    paths = []
    if images.ndim == 5:
        for i, video in enumerate(images):
            paths.append(os.path.join(folder, f"sample_{i}.webp"))
            save_video(video, paths[-1], settings["frame_rate"])
    else:
        pixels = (images.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
        for i, array in enumerate(pixels):
            paths.append(os.path.join(folder, f"sample_{i}.png"))
            Image.fromarray(array).save(paths[-1])
    names = [os.path.basename(path) for path in paths]
    rows = [{"prompt": p, "image": f"{SAMPLES_DIR}/{name}", **settings} for p, name in zip(prompts, names)]
    with open(os.path.join(folder, "prompts.json"), "w") as f:
        json.dump(rows, f)
    return paths


def read_samples(output_dir: str) -> tuple[list[tuple[str, str]] | None, dict | None]:
    """The `(prompt, image path)` pairs of `{output_dir}/samples/prompts.json` and how they were made, if any."""
    index = os.path.join(output_dir, SAMPLES_DIR, "prompts.json")
    if not os.path.isfile(index):
        return None, None
    with open(index) as f:
        rows = json.load(f)
    samples = [(row["prompt"], row["image"]) for row in rows]
    settings = None
    if rows and "guidance_scale" in rows[0]:
        settings = {k: rows[0][k] for k in ("steps", "guidance_scale", "resolution", "seed")}
        if "guidance_scale_2" in rows[0]:
            settings["guidance_scale_2"] = rows[0]["guidance_scale_2"]
    return samples, settings


def _first_prompt(trainer, samples) -> str | None:
    """The prompt the snippet shows: the run's first sample prompt, else its first training prompt."""
    if trainer.args.sample_prompts:
        return trainer.args.sample_prompts[0]
    if samples:
        return samples[0][0]
    dataset = trainer.train_dataset
    column = trainer.args.dataset_prompt_column
    if dataset is not None and hasattr(dataset, "__getitem__") and len(dataset):
        return dataset[0][column]
    return None


def _run_inference_settings(trainer, samples) -> InferenceSettings:
    """The run's own inference settings for the card's snippet: its sample prompt, resolution, steps and guidance,
    the text length it trained with (when not the pipeline's 512), in the dtype the base was loaded in (the VAE's:
    it is never cast) and on the kind of device the run had."""
    args = trainer.args
    vae = getattr(trainer.pipeline, "vae", None)
    dtype = next(vae.parameters()).dtype if vae is not None else trainer.pipeline.dtype
    settings = InferenceSettings(
        height=trainer.height,
        width=trainer.width,
        num_inference_steps=args.rollout_steps,
        guidance_scale=args.sample_guidance_scale,
        guidance_scale_2=args.guidance_scale_2,
        max_sequence_length=args.max_sequence_length if args.max_sequence_length != 512 else None,
        dtype=str(dtype).removeprefix("torch."),
        device=trainer.accelerator.device.type,
    )
    prompt = _first_prompt(trainer, samples)
    if prompt is not None:
        settings.prompt = prompt
    if trainer.adapter.is_video:
        settings.num_frames, settings.frame_rate = trainer.adapter.num_frames, args.frame_rate
    if hasattr(trainer.pipeline, "controlnet"):
        settings.controlnet_conditioning_scale = list(args.controlnet_conditioning_scale)
        nets = getattr(trainer.pipeline.controlnet, "nets", [trainer.pipeline.controlnet])
        names = [net.config.get("_name_or_path") for net in nets]
        # Loaded by its own id or folder (as diffusers documents), not from a subfolder of a saved pipeline.
        if all(names) and not any(os.path.isfile(os.path.join(os.path.dirname(n), "model_index.json")) for n in names):
            settings.controlnets = names
    return settings


def trainer_model_card(trainer, repo_or_dir: str) -> ModelCard:
    """The model card of an `SRPOTrainer`'s current result: its recipe, rewards, samples and how to load it."""
    args = trainer.args
    lora = trainer.peft_config
    summary = {
        "resolution": f"{trainer.height}x{trainer.width}",
        "rollout_steps": args.rollout_steps,
        "window": f"S[{args.window_start_index}]..S[{args.window_end_index}] of {args.window_grid_steps}",
        "num_levels": args.num_levels,
        "rho": args.rho,
        "denoise_discount": args.denoise_discount,
        "inversion_discount": args.inversion_discount if args.use_inversion_branch else "off",
        "x0": "real images (offline mode)" if trainer.offline else "rollouts of the current model",
        "hinge_threshold": dict(zip((r.name for r in trainer.rewards), trainer.hinge_thresholds)),
        "positive_control_words": args.positive_control_words,
        "negative_control_words": args.negative_control_words,
        "learning_rate": args.learning_rate,
        "max_grad_norm": args.max_grad_norm,
        "steps": trainer.state.global_step,
        "lora": f"r={lora.r}, lora_alpha={lora.lora_alpha}" if lora is not None else "no (full fine-tune)",
        "trainable_dtype": args.trainable_dtype,
    }
    image_only = [r.name for r in trainer.rewards if not r.text_conditioned]
    if image_only:
        summary["image_only_rewards"] = f"{image_only} (plain Direct-Align: no control words, no SRP)"
    samples, sample_settings = read_samples(args.output_dir)
    return build_model_card(
        inference=_run_inference_settings(trainer, samples),
        samples=samples,
        sample_settings=sample_settings,
        base_model=trainer.base_model,
        lora=lora is not None,
        repo_or_dir=repo_or_dir,
        training_summary=summary,
        pipeline_class=type(trainer.pipeline).__name__,
        transformer_class=type(trainer.accelerator.unwrap_model(trainer.model)).__name__,
        reward_names=[r.name for r in trainer.rewards],
        trainable_component=trainer.adapter.trainable_component,
    )
