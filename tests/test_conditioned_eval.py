"""`srpo-trl eval` on the families that take an image besides the prompt: FLUX.1 Control with Canny maps made from the
dataset's images, and FLUX.1 Fill with seeded random masks (the dataset has none). The report's numbers are the
rewards, consistency rewards included, of the stock pipeline's images before and after loading the trained LoRA,
recomputed here independently; a reward that needs a condition the pipeline lacks is refused before sampling."""

import json

import numpy as np
import pytest
import torch
from datasets import Dataset
from lora_helpers import far_from_identity
from peft import LoraConfig
from PIL import Image

from srpo_trl import ColorWordReward, SRPOTrainer
from srpo_trl.cli import main
from srpo_trl.control_maps import canny_maps
from srpo_trl.data import image_to_tensor
from srpo_trl.masks import mask_to_tensor, random_mask
from srpo_trl.rewards import EdgeConsistencyReward, UnmaskedFidelityReward
from srpo_trl.testing import tiny_flux_control_pipeline, tiny_flux_fill_pipeline, tiny_flux_pipeline

SIZE, STEPS = 64, 3
PROMPTS = ["a cat", "a dog", "a house"]
FAMILIES = {
    "control": (tiny_flux_control_pipeline, "control_image", EdgeConsistencyReward, 3.5),
    "fill": (tiny_flux_fill_pipeline, "reference_image", UnmaskedFidelityReward, 30.0),
}


def _photo(seed: int) -> Image.Image:
    generator = torch.Generator().manual_seed(seed)
    image = torch.nn.functional.interpolate(torch.rand(1, 3, 8, 8, generator=generator), size=SIZE, mode="bilinear")
    image[..., 20:44, 12:40] = torch.rand(3, 1, 1, generator=generator)
    return Image.fromarray((image[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8))


def _pil(images: torch.Tensor) -> list[Image.Image]:
    pixels = (images * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    return [Image.fromarray(p[..., 0] if p.shape[-1] == 1 else p) for p in pixels]


@pytest.mark.parametrize("family", list(FAMILIES))
def test_eval_scores_the_stock_pipeline_with_the_datasets_images(tmp_path, config, family):
    build, column, consistency, guidance = FAMILIES[family]
    build(0).save_pretrained(tmp_path / "base")
    paths = []
    for i in range(len(PROMPTS)):
        paths.append(str(tmp_path / f"image{i}.png"))
        _photo(i).save(paths[-1])
    rows = Dataset.from_dict({"prompt": PROMPTS, column: [Image.open(p) for p in paths]})
    trainer = SRPOTrainer(build(0), ColorWordReward(), args=config(max_sequence_length=32), train_dataset=rows,
                          peft_config=LoraConfig(r=4, lora_alpha=8, init_lora_weights="gaussian"))  # fmt: skip
    far_from_identity(trainer.model)
    trainer.save_model(str(tmp_path / "result"))
    with open(tmp_path / "prompts.jsonl", "w") as f:
        for prompt, path in zip(PROMPTS, paths):
            f.write(json.dumps({"prompt": prompt, column: path}) + "\n")

    command = ["eval", "--model", str(tmp_path / "base"), "--result", str(tmp_path / "result"), "--prompts",
               str(tmp_path / "prompts.jsonl"), "--reward_funcs", "color", consistency.name, "--control_words",
               "brightness", "--resolution", str(SIZE), "--num_inference_steps", str(STEPS), "--max_sequence_length",
               "32", "--batch_size", "2", "--output_dir", str(tmp_path / "eval")]  # fmt: skip
    if family == "control":
        command += ["--control_image_preprocessor", "canny"]
    assert main(command) == 0
    report = json.loads((tmp_path / "eval" / "eval.json").read_text())["rewards"][consistency.name]["plain"]

    # The same numbers, independently: the stock pipeline, before and after loading the LoRA, on the same inputs.
    images = torch.stack([image_to_tensor(p, SIZE, SIZE) for p in paths])
    conditions, inputs = {}, {}
    if family == "control":
        conditions["control_images"] = canny_maps(images)
        inputs["control_image"] = _pil(conditions["control_images"])
    else:
        masks = torch.stack([mask_to_tensor(random_mask(SIZE, SIZE, i), SIZE, SIZE) for i in range(len(PROMPTS))])
        conditions.update(source_images=images, masks=masks)
        inputs.update(image=_pil(images), mask_image=_pil(masks))
    pipe = build(0).from_pretrained(str(tmp_path / "base"))
    pipe.set_progress_bar_config(disable=True)
    means = []
    for load in (False, True):
        if load:
            pipe.load_lora_weights(str(tmp_path / "result"))
        batches = []
        for b, start in enumerate(range(0, len(PROMPTS), 2)):
            rows = slice(start, start + 2)
            batches.append(pipe(
                prompt=PROMPTS[rows], **{k: v[rows] for k, v in inputs.items()}, height=SIZE, width=SIZE,
                num_inference_steps=STEPS, guidance_scale=guidance, max_sequence_length=32, output_type="pt",
                generator=torch.Generator().manual_seed(b),
            ).images)  # fmt: skip
        means.append(consistency().score(torch.cat(batches), PROMPTS, **conditions).mean().item())
    print(f"{family}: {consistency.name} before {means[0]:.4f}, after {means[1]:.4f}; report {report}")
    assert abs(report["before"]["mean"] - means[0]) < 1e-5 and abs(report["after"]["mean"] - means[1]) < 1e-5
    assert abs(means[1] - means[0]) > 1e-4  # the LoRA changed the images


def test_eval_refuses_a_consistency_reward_the_pipeline_cannot_feed(tmp_path):
    tiny_flux_pipeline(0).save_pretrained(tmp_path / "base")
    (tmp_path / "prompts.txt").write_text("a cat\n")
    with pytest.raises(ValueError, match="reward 'edge-consistency' compares the images with \\['control_images'\\]"):
        main(["eval", "--model", str(tmp_path / "base"), "--prompts", str(tmp_path / "prompts.txt"), "--reward_funcs",
              "edge-consistency", "--resolution", str(SIZE), "--output_dir", str(tmp_path / "eval")])  # fmt: skip
