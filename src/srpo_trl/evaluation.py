"""`srpo-trl eval`: score a base pipeline and a trained result on held-out prompts with reward models.

Images come from the stock diffusers pipeline (`pipe(prompt=..., num_inference_steps=..., guidance_scale=...)`, or
`true_cfg_scale` and a negative prompt for Qwen-Image),
so the numbers describe what users get at inference, with the same seeds before and after. Each reward
gives its plain score `f(x, prompt)` and, for text-conditioned rewards, the SRP score (`k = 0`, averaged
over the control words). The result is a JSON of per-reward mean and std before and after, and their
difference, plus a side-by-side image grid.

Families that take an image besides the prompt (an image to edit, a control map, Fill's source and mask) read it
from the prompts' dataset, one per prompt, resized and centre-cropped to the resolution as in training (control maps
made from its images with `control_image_preprocessor`; Fill's masks drawn at random, seeded, when the dataset has
none); the consistency rewards compare the images with the same inputs.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field

import torch

from .checkpointing import LORA_WEIGHTS_NAME


@dataclass
class EvalSettings:
    resolution: int = 1024
    num_inference_steps: int = 28
    guidance_scale: float | None = None  # the family's inference default (FLUX.1-dev 3.5, Qwen-Image 4.0)
    # Wan 2.2 A14B (two experts): the low-noise expert's guidance (None: the stock default, `guidance_scale`), and a
    # LoRA result of that expert, loaded into `transformer_2` (a full fine-tune's `transformer_2/` folder is found).
    guidance_scale_2: float | None = None
    load_into_transformer_2: bool = False
    seed: int = 0
    batch_size: int = 4
    max_sequence_length: int = 512
    positive_control_words: list[str] = field(default_factory=list)
    negative_control_words: list[str] = field(default_factory=list)
    # The dataset columns of the families that take an image besides the prompt (as SRPOConfig's).
    reference_image_column: str = "reference_image"
    control_image_column: str = "control_image"
    mask_column: str = "mask"
    control_image_preprocessor: str | None = None
    depth_model_name_or_path: str | None = None
    controlnet_conditioning_scale: list[float] | None = None  # ControlNet pipelines only; the stock default is 1
    controlnet_name_or_path: list[str] | None = None  # ControlNet(s) joined to a FLUX.1 base (see load_pipeline)
    # Video families (Wan): frames per video (None: the family's), the frame rate of the written videos, and the
    # stride at which image rewards score frames.
    num_frames: int | None = None
    frame_rate: int = 16
    reward_frame_stride: int = 4


def conditioning_inputs(family, columns: dict | None, settings: EvalSettings, count: int):
    """`(images, masks)` the family's pipeline takes besides the prompts, `[count, 3, R, R]` / `[count, 1, R, R]`
    tensors at the resolution `R` (or `None`), read from the prompts' dataset `columns` as training reads them."""
    if not family.requires_reference_image:
        return None, None
    from .data import image_to_tensor
    from .masks import mask_to_tensor, random_mask

    column = {
        "dataset_reference_image_column": settings.reference_image_column,
        "dataset_control_image_column": settings.control_image_column,
    }[family.reference_image_column_field]
    if not columns or column not in columns:
        flag = "--control_image_column" if column == settings.control_image_column else "--reference_image_column"
        raise ValueError(
            f"srpo-trl eval: the {family.family} family takes an image per prompt, and the prompts' dataset has no "
            f"column {column!r} (set {flag}); its columns: {sorted(columns or [])}"
        )
    size = settings.resolution
    images = torch.stack([image_to_tensor(image, size, size) for image in columns[column][:count]])
    if settings.control_image_preprocessor is not None:
        from .control_maps import DEFAULT_DEPTH_MODEL, DepthEstimator, make_control_maps

        depth = None
        if settings.control_image_preprocessor == "depth":
            depth = DepthEstimator(settings.depth_model_name_or_path or DEFAULT_DEPTH_MODEL)
        images = make_control_maps(settings.control_image_preprocessor, images, depth)
    masks = None
    if family.uses_mask:
        given = columns.get(settings.mask_column)
        given = (
            given[:count] if given is not None else [random_mask(size, size, settings.seed + i) for i in range(count)]
        )
        masks = torch.stack([mask_to_tensor(mask, size, size) for mask in given])
    return images, masks


def takes_argument(pipeline_class: type, name: str) -> bool:
    """Whether the pipeline class's `__call__` takes the keyword `name`."""
    import inspect

    parameters = inspect.signature(pipeline_class.__call__).parameters
    return name in parameters or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())


def _to_pil(images: torch.Tensor) -> list:
    from PIL import Image

    pixels = (images.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    return [Image.fromarray(p[..., 0] if p.shape[-1] == 1 else p) for p in pixels]


def _load_transformer(pipeline, source: str, component: str = "transformer") -> None:
    """`{source}/{component}` (a folder or a hub repo's subfolder) as the pipeline's `component`."""
    from .modular import is_modular

    current = getattr(pipeline, component, None)
    if current is None:  # a full fine-tune of Wan 2.2 A14B's low-noise expert on a pipeline without one
        raise ValueError(
            f"--result {source!r} holds a fine-tuned {component}/, and this {type(pipeline).__name__} has no "
            f"{component} (Wan 2.2 A14B's low-noise expert): evaluate it on the base it was trained from"
        )
    module = type(current).from_pretrained(source, subfolder=component, torch_dtype=current.dtype)
    if is_modular(pipeline):
        pipeline.update_components(**{component: module})
    else:
        setattr(pipeline, component, module)


def _load_lora(pipeline, source: str, into_transformer_2: bool) -> None:
    if into_transformer_2:  # Wan 2.2 A14B's low-noise expert: diffusers' own switch
        pipeline.load_lora_weights(source, load_into_transformer_2=True)
    else:
        pipeline.load_lora_weights(source)


def load_result(pipeline, result: str, load_into_transformer_2: bool = False) -> str:
    """Apply a trained result to `pipeline`: a LoRA folder, a folder with `transformer/` (or, for Wan 2.2 A14B's
    low-noise expert, `transformer_2/`), or a hub id (LoRA first). Returns what was loaded: `"lora"` or the component.

    A LoRA is loaded with the pipeline's own `load_lora_weights`, which reads the LoRA's config (alpha, rsLoRA,
    DoRA) from the file's metadata, where `SRPOTrainer` writes it: the result is the trained model. A LoRA of
    `transformer_2` says nothing of its expert in the file: `load_into_transformer_2` puts it there.
    """
    if os.path.isdir(result):
        if os.path.isfile(os.path.join(result, LORA_WEIGHTS_NAME)):
            _load_lora(pipeline, result, load_into_transformer_2)
            return "lora"
        for component in ("transformer", "transformer_2"):
            if os.path.isdir(os.path.join(result, component)):
                _load_transformer(pipeline, result, component)
                return component
        raise ValueError(
            f"--result {result!r} holds neither {LORA_WEIGHTS_NAME} nor a transformer/ (or transformer_2/) folder"
        )
    try:
        _load_lora(pipeline, result, load_into_transformer_2)
        return "lora"
    except Exception as lora_error:  # noqa: BLE001 - a hub repo of a full fine-tune has no LoRA file
        errors = [f"not a LoRA ({lora_error})"]
        components = ["transformer"] + (["transformer_2"] if getattr(pipeline, "transformer_2", None) else [])
        for component in components:
            try:
                _load_transformer(pipeline, result, component)
                return component
            except Exception as error:  # noqa: BLE001
                errors.append(f"nor a {component} ({error})")
        raise ValueError(f"--result {result!r}: " + ", ".join(errors)) from lora_error


@torch.no_grad()
def generate(pipeline, prompts: list[str], settings: EvalSettings, references=None, masks=None) -> torch.Tensor:
    """Images `[N, 3, H, W]` in [0, 1] from the stock pipeline; batch `i` uses seed `settings.seed + i`.
    `references` / `masks`: the families' images besides the prompts (see [`conditioning_inputs`])."""
    from .models import adapter_class, get_adapter
    from .modular import is_modular, modular_images

    family = adapter_class(type(pipeline))
    guidance = settings.guidance_scale
    if guidance is None:  # the family's inference default (FLUX.2 [klein]'s depends on the model: base or distilled)
        guidance = get_adapter(pipeline).default_guidance["sample"]
    if is_modular(pipeline):  # FLUX.3: the stock modular loop, one prompt a call
        return modular_images(
            pipeline, prompts, height=settings.resolution, width=settings.resolution,
            steps=settings.num_inference_steps, guidance=guidance, max_sequence_length=settings.max_sequence_length,
            seed=settings.seed,
        )  # fmt: skip
    images = []
    for i, start in enumerate(range(0, len(prompts), settings.batch_size)):
        batch = prompts[start : start + settings.batch_size]
        extra = {}
        if references is not None:
            rows = slice(start, start + settings.batch_size)
            extra = family.pipeline_condition_kwargs(
                _to_pil(references[rows]), _to_pil(masks[rows]) if masks is not None else None
            )
        nets = getattr(getattr(pipeline, "controlnet", None), "nets", None)
        if nets is not None and "control_image" in extra:  # a multi-ControlNet takes a batch per net: the same one
            extra["control_image"] = [extra["control_image"]] * len(nets)
        if settings.controlnet_conditioning_scale is not None:
            scales = settings.controlnet_conditioning_scale
            extra["controlnet_conditioning_scale"] = scales[0] if len(scales) == 1 else list(scales)
        if takes_argument(type(pipeline), "max_sequence_length"):  # Qwen-Image 2.1 never truncates: it has none
            extra["max_sequence_length"] = settings.max_sequence_length
        if family.is_video and settings.num_frames is not None:
            extra["num_frames"] = settings.num_frames
        if settings.guidance_scale_2 is not None:  # Wan 2.2 A14B's low-noise expert (checked by run_eval)
            extra["guidance_scale_2"] = settings.guidance_scale_2
        out = pipeline(
            prompt=list(batch),  # a copy: Z-Image's pipeline rewrites its prompt list in place
            height=settings.resolution,
            width=settings.resolution,
            num_inference_steps=settings.num_inference_steps,
            generator=torch.Generator().manual_seed(settings.seed + i),
            output_type="pt",
            **family.pipeline_guidance_kwargs(guidance),  # Qwen-Image: true CFG with its negative prompt
            **extra,
        )
        if family.is_video:  # videos [B, F, 3, H, W]
            images.append(out.frames.float().cpu())
        else:
            images.append(out.images[:, :3].float().cpu())  # Qwen-Image 2.1's VAE gives RGBA
    return torch.cat(images)


@torch.no_grad()
def score(rewards, images: torch.Tensor, prompts: list[str], settings: EvalSettings, conditions=None) -> dict:
    """Per reward: `{"plain": tensor[N]}` and, when text-conditioned, `"srp"`. `conditions`: the inputs the
    consistency rewards compare with (`Reward.conditions`)."""
    from .rewards import srp_score

    scores = {}
    for reward in rewards:
        device = next(reward.parameters(), torch.empty(0)).device
        x = images.to(device)
        given = {name: value.to(device) for name, value in (conditions or {}).items()}
        entry = {"plain": reward.conditioned_score(x, prompts, given).float().cpu()}
        if reward.text_conditioned:
            entry["srp"] = srp_score(
                reward, x, prompts, settings.positive_control_words, settings.negative_control_words
            ).cpu()
        scores[reward.name] = entry
    return scores


def _stats(values: torch.Tensor) -> dict[str, float]:
    return {"mean": values.mean().item(), "std": values.std(unbiased=False).item()}


def summarise(before: dict, after: dict | None) -> dict:
    """`{reward: {kind: {"before": {mean, std}, "after": {mean, std}, "delta": after - before}}}`."""
    summary = {}
    for name, kinds in before.items():
        summary[name] = {}
        for kind, values in kinds.items():
            row = {"before": _stats(values)}
            if after is not None:
                row["after"] = _stats(after[name][kind])
                row["delta"] = row["after"]["mean"] - row["before"]["mean"]
            summary[name][kind] = row
    return summary


def run_eval(
    model: str,
    result: str | None,
    prompts: list[str],
    reward_funcs: list[str],
    output_dir: str,
    settings: EvalSettings,
    dtype: torch.dtype = torch.float32,
    device: str = "cpu",
    log=print,
    overwrite_output_dir: bool = False,
    columns: dict | None = None,
) -> dict:
    """Score `model` (and `model` + `result`) on `prompts`; write `eval.json` and `eval_grid.png` to `output_dir`.

    An `output_dir` that holds a previous result (an earlier evaluation, or a training run's weights or checkpoints)
    stops the evaluation before any model loads, unless `overwrite_output_dir` is set: then this evaluation's two
    files replace their namesakes, and nothing else there is touched. `columns`: the prompts' dataset's other
    columns (name -> values, row-aligned with `prompts`), read by the families that take an image besides the prompt.
    """
    from .output_folder import refuse_previous_result
    from .preparation import load_pipeline

    refuse_previous_result(
        output_dir,
        "srpo-trl eval",
        overwrite=overwrite_output_dir,
        can_resume=False,
        overwrite_effect="eval.json and eval_grid.png are replaced, nothing else",
    )

    from .models import adapter_class, get_adapter, sampling_pipeline
    from .plotting import image_grid
    from .rewards import load_reward

    os.makedirs(output_dir, exist_ok=True)
    rewards = [load_reward(name, dtype=dtype).to(device).eval() for name in reward_funcs]
    if any(r.text_conditioned for r in rewards) and not (
        settings.positive_control_words and settings.negative_control_words
    ):
        raise ValueError("srpo-trl eval: a text-conditioned reward needs positive and negative control words")
    # A variant (Img2Img, Inpaint, KV) is scored as the text-to-image model it holds: the family's own pipeline over
    # the same components.
    loaded = load_pipeline(model, {"torch_dtype": dtype}, settings.controlnet_name_or_path)
    pipeline = sampling_pipeline(loaded).to(device)
    family = adapter_class(type(pipeline))
    if settings.guidance_scale_2 is not None and not getattr(get_adapter(pipeline), "two_experts", False):
        raise ValueError(
            "srpo-trl eval: --guidance_scale_2 is the guidance of the low-noise expert of a pipeline with two "
            f"experts (Wan 2.2 A14B); {type(pipeline).__name__} from {model!r} has one transformer"
        )
    if family.is_video:  # image rewards score every `reward_frame_stride`-th frame, as in training
        from .rewards.video import for_videos

        rewards = for_videos(rewards, settings.reward_frame_stride)
    references, masks = conditioning_inputs(family, columns, settings, len(prompts))
    conditions = {}
    if references is not None:
        conditions[family.reference_role] = references
    if masks is not None:
        conditions["masks"] = masks
    for reward in rewards:
        if any(name not in conditions for name in reward.conditions):
            raise ValueError(
                f"srpo-trl eval: reward {reward.name!r} compares the images with {list(reward.conditions)}; "
                f"{type(pipeline).__name__} takes {sorted(conditions) or 'only the prompt'}"
            )
    if settings.guidance_scale is None:  # recorded in eval.json as used: the family's inference default
        settings = dataclasses.replace(settings, guidance_scale=get_adapter(pipeline).default_guidance["sample"])
    pipeline.set_progress_bar_config(disable=True)
    log(f"srpo-trl eval: {len(prompts)} prompts, rewards {reward_funcs}, {settings.resolution}px")
    before_images = generate(pipeline, prompts, settings, references, masks)
    before = score(rewards, before_images, prompts, settings, conditions)
    after_images = after = None
    if result is not None:
        kind = load_result(pipeline, result, settings.load_into_transformer_2)
        pipeline.to(device)
        log(f"  loaded {result} ({kind})")
        after_images = generate(pipeline, prompts, settings, references, masks)
        after = score(rewards, after_images, prompts, settings, conditions)
    report = {
        "model": model,
        "result": result,
        "num_prompts": len(prompts),
        "settings": settings.__dict__,
        "rewards": summarise(before, after),
    }
    with open(os.path.join(output_dir, "eval.json"), "w") as f:
        json.dump(report, f, indent=2)
    shown = slice(0, 8)
    rows, labels = [before_images[shown]], ["before"]
    if after_images is not None:
        rows.append(after_images[shown])
        labels.append("after")
    if family.is_video:  # the grid shows first frames; the videos themselves go to eval_videos/
        from .hub import save_video

        os.makedirs(os.path.join(output_dir, "eval_videos"), exist_ok=True)
        for label, videos in zip(labels, rows):
            for i, video in enumerate(videos[:4]):
                save_video(video, os.path.join(output_dir, "eval_videos", f"{label}_{i}.webp"), settings.frame_rate)
        rows = [videos[:, 0] for videos in rows]
    image_grid(rows, labels).save(os.path.join(output_dir, "eval_grid.png"))
    for name, kinds in report["rewards"].items():
        for kind, row in kinds.items():
            text = f"  {name}/{kind}: before {row['before']['mean']:.4f} +- {row['before']['std']:.4f}"
            if "after" in row:
                text += f", after {row['after']['mean']:.4f} +- {row['after']['std']:.4f}, delta {row['delta']:+.4f}"
            log(text)
    log(f"  wrote {os.path.join(output_dir, 'eval.json')} and {os.path.join(output_dir, 'eval_grid.png')}")
    return report
