"""`srpo-trl eval`: score a base pipeline and a trained result on held-out prompts with reward models.

Images come from the stock diffusers pipeline (`pipe(prompt=..., num_inference_steps=..., guidance_scale=...)`, or
`true_cfg_scale` and a negative prompt for Qwen-Image),
so the numbers describe what users get at inference, with the same seeds before and after. Each reward
gives its plain score `f(x, prompt)` and, for text-conditioned rewards, the SRP score (`k = 0`, averaged
over the control words). The result is a JSON of per-reward mean and std before and after, and their
difference, plus a side-by-side image grid.
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
    seed: int = 0
    batch_size: int = 4
    max_sequence_length: int = 512
    positive_control_words: list[str] = field(default_factory=list)
    negative_control_words: list[str] = field(default_factory=list)


def _load_transformer(pipeline, source: str) -> None:
    from .modular import is_modular

    cls = type(pipeline.transformer)
    transformer = cls.from_pretrained(source, subfolder="transformer", torch_dtype=pipeline.transformer.dtype)
    if is_modular(pipeline):
        pipeline.update_components(transformer=transformer)
    else:
        pipeline.transformer = transformer


def load_result(pipeline, result: str) -> str:
    """Apply a trained result to `pipeline`: a LoRA folder, a folder with `transformer/`, or a hub id (LoRA first).

    A LoRA is loaded with the pipeline's own `load_lora_weights`, which reads the LoRA's config (alpha, rsLoRA,
    DoRA) from the file's metadata, where `SRPOTrainer` writes it: the result is the trained model.
    """
    if os.path.isdir(result):
        if os.path.isfile(os.path.join(result, LORA_WEIGHTS_NAME)):
            pipeline.load_lora_weights(result)
            return "lora"
        if os.path.isdir(os.path.join(result, "transformer")):
            _load_transformer(pipeline, result)
            return "transformer"
        raise ValueError(f"--result {result!r} holds neither {LORA_WEIGHTS_NAME} nor a transformer/ folder")
    try:
        pipeline.load_lora_weights(result)
        return "lora"
    except Exception as lora_error:  # noqa: BLE001 - a hub repo of a full fine-tune has no LoRA file
        try:
            _load_transformer(pipeline, result)
            return "transformer"
        except Exception as error:  # noqa: BLE001
            raise ValueError(f"--result {result!r}: not a LoRA ({lora_error}) nor a transformer ({error})") from error


@torch.no_grad()
def generate(pipeline, prompts: list[str], settings: EvalSettings) -> torch.Tensor:
    """Images `[N, 3, H, W]` in [0, 1] from the stock pipeline; batch `i` uses seed `settings.seed + i`."""
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
        out = pipeline(
            prompt=batch,
            height=settings.resolution,
            width=settings.resolution,
            num_inference_steps=settings.num_inference_steps,
            max_sequence_length=settings.max_sequence_length,
            generator=torch.Generator().manual_seed(settings.seed + i),
            output_type="pt",
            **family.pipeline_guidance_kwargs(guidance),  # Qwen-Image: true CFG with its negative prompt
        )
        images.append(out.images.float().cpu())
    return torch.cat(images)


@torch.no_grad()
def score(rewards, images: torch.Tensor, prompts: list[str], settings: EvalSettings) -> dict[str, dict]:
    """Per reward: `{"plain": tensor[N]}` and, when text-conditioned, `"srp"`."""
    from .rewards import srp_score

    scores = {}
    for reward in rewards:
        device = next(reward.parameters(), torch.empty(0)).device
        x = images.to(device)
        entry = {"plain": reward.score(x, prompts).float().cpu()}
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
) -> dict:
    """Score `model` (and `model` + `result`) on `prompts`; write `eval.json` and `eval_grid.png` to `output_dir`.

    An `output_dir` that holds a previous result (an earlier evaluation, or a training run's weights or checkpoints)
    stops the evaluation before any model loads, unless `overwrite_output_dir` is set: then this evaluation's two
    files replace their namesakes, and nothing else there is touched.
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
    pipeline = sampling_pipeline(load_pipeline(model, {"torch_dtype": dtype})).to(device)
    family = adapter_class(type(pipeline))
    if family.requires_reference_image:
        raise ValueError(f"srpo-trl eval scores text-to-image pipelines; {type(pipeline).__name__} edits images")
    if settings.guidance_scale is None:  # recorded in eval.json as used: the family's inference default
        settings = dataclasses.replace(settings, guidance_scale=get_adapter(pipeline).default_guidance["sample"])
    pipeline.set_progress_bar_config(disable=True)
    log(f"srpo-trl eval: {len(prompts)} prompts, rewards {reward_funcs}, {settings.resolution}px")
    before_images = generate(pipeline, prompts, settings)
    before = score(rewards, before_images, prompts, settings)
    after_images = after = None
    if result is not None:
        kind = load_result(pipeline, result)
        pipeline.to(device)
        log(f"  loaded {result} ({kind})")
        after_images = generate(pipeline, prompts, settings)
        after = score(rewards, after_images, prompts, settings)
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
    image_grid(rows, labels).save(os.path.join(output_dir, "eval_grid.png"))
    for name, kinds in report["rewards"].items():
        for kind, row in kinds.items():
            text = f"  {name}/{kind}: before {row['before']['mean']:.4f} +- {row['before']['std']:.4f}"
            if "after" in row:
                text += f", after {row['after']['mean']:.4f} +- {row['after']['std']:.4f}, delta {row['delta']:+.4f}"
            log(text)
    log(f"  wrote {os.path.join(output_dir, 'eval.json')} and {os.path.join(output_dir, 'eval_grid.png')}")
    return report
