"""`srpo-trl demo`: SRPO on the shipped tiny FLUX.1-architecture model, on the CPU, in about two minutes.

The base is [`~srpo_trl.pretrained.shapes_pipeline`], a FLUX.1-architecture pipeline trained on the
shapes world (one shape, in one colour, at one position, as a `photo` or a `drawing`), and the reward is the
shipped CLIP reward `shapes-clip` trained on the same images. The control words `+photo / -drawing` play
the part of the paper's `Real` / `Painting`: SRP rewards an image for looking more like a photo than like a
drawing of the same prompt. The held-out prompts leave the style open, so the base draws both styles for
them; training moves the samples towards photos. Trained on the style alone, this small model gives content up
for style (a photo-like texture without its shape): reward hacking in miniature. So a content-keeping reward
(`shapes-content`, the shipped reward's reading of the prompted shape, colour and position) trains beside it
with weight 0.2, as a real run would add a prompt-following reward beside a preference reward; the shipped reward
checks both by reading the samples back (docs/concepts.md gives the numbers). `--words drawing photo` reverses
the direction.

The demo writes the LoRA weights, a before/after grid, a reward curve, the measured results and a model card.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass

import torch

from .pretrained import MAX_SEQUENCE_LENGTH, PIPELINE_DIR, RESOLUTION, shapes

DEFAULT_WORDS = ("photo", "drawing")
#: Held out from training: every shape and colour, each position twice; the style is left open.
EVAL_CONTENTS = [
    ("circle", "red", "on the left"),
    ("square", "blue", "at the top"),
    ("triangle", "yellow", "on the right"),
    ("circle", "purple", "at the bottom"),
    ("square", "green", "on the left"),
    ("triangle", "red", "at the top"),
    ("circle", "blue", "on the right"),
    ("triangle", "green", "at the bottom"),
]
EVAL_PROMPTS = [shapes.content_prompt(*c) for c in EVAL_CONTENTS]
TRAIN_PROMPTS = [shapes.content_prompt(*c) for c in shapes.all_contents() if c not in EVAL_CONTENTS]
#: Each held-out prompt is sampled with this many seeds (one evaluation batch per seed).
EVAL_SEEDS = 4
ROLLOUT_STEPS = 10
#: A 2.4 M-parameter model and a rank-8 LoRA take a far larger step than the recipe's 5e-6 for 12 B-parameter
#: FLUX.1-dev. Larger still (2e-4 and up) and within 150 steps the LoRA wipes the shapes out of the photos: a bare
#: textured background is what this reward finds most photo-like (measured in docs/concepts.md).
DEFAULT_LEARNING_RATE = 1e-4
#: SRP's `k` on the denoise branch, `R = (1 + k) f(x, "photo. p") - f(x, "drawing. p")`: with k = 1 the reward is
#: `f(x, "photo. p")`, which also asks for the prompt's content, plus the style difference. The recipe's
#: `[0.10, 0.25]` leaves the content term small.
DENOISE_DISCOUNT = (1.0, 1.0)
#: Weight of the content-keeping reward `shapes-content` beside the SRP style reward (0: the style reward alone, which
#: reward-hacks at this scale: 12-25 points of content lost for 7-10 points of style). 0.2 with 300 steps keeps the
#: content within 3 points and the style gain as large as without it; 0.3 keeps the content but stops the style on
#: two seeds of three; docs/concepts.md has the runs.
DEFAULT_CONTENT_WEIGHT = 0.2
#: Training steps: twice the unguarded demo's 150, since the content reward slows the style down.
DEFAULT_MAX_STEPS = 300
#: Besides what any run leaves (weights, samples, results): the folder of the evaluation command the demo prints.
DEMO_EXTRA_RESULTS = ("eval", "eval_prompts.txt")


@dataclass
class DemoResult:
    output_dir: str
    reward_before: float
    reward_after: float
    #: `srpo_trl.pretrained.classify.content_accuracy` of the held-out samples before and after.
    content_before: dict[str, float]
    content_after: dict[str, float]
    seconds: float
    files: dict[str, str]


def demo_config(output_dir: str, max_steps: int, seed: int, words: tuple[str, str], learning_rate: float):
    """The demo's `SRPOConfig`: a LoRA on the tiny pipeline with the recipe's hinge and inversion branch."""
    from .config import SRPOConfig

    return SRPOConfig(
        output_dir=output_dir,
        max_steps=max_steps,
        resolution=RESOLUTION,
        rollout_steps=ROLLOUT_STEPS,
        max_sequence_length=MAX_SEQUENCE_LENGTH,
        positive_control_words=[words[0]],
        negative_control_words=[words[1]],
        per_device_train_batch_size=2,
        learning_rate=learning_rate,
        denoise_discount=list(DENOISE_DISCOUNT),
        max_grad_norm=1.0,
        logging_steps=10,
        eval_strategy="steps",
        eval_steps=max(1, max_steps // 5),
        per_device_eval_batch_size=len(EVAL_PROMPTS),
        # Written to samples/ at the end for the model card, whose loading snippet then uses the first of them.
        sample_prompts=EVAL_PROMPTS[:4],
        save_strategy="no",
        report_to="none",
        seed=seed,
        # The memory savers off: nothing to save at this size, and faster without.
        transformer_gradient_checkpointing=False,
        vae_gradient_checkpointing=False,
        vae_slicing=False,
        disable_tqdm=False,
    )


def run_demo(
    output_dir: str = "srpo-demo",
    max_steps: int = DEFAULT_MAX_STEPS,
    seed: int = 0,
    words: tuple[str, str] = DEFAULT_WORDS,
    learning_rate: float = DEFAULT_LEARNING_RATE,
    log=print,
    overwrite_output_dir: bool = False,
    content_weight: float = DEFAULT_CONTENT_WEIGHT,
) -> DemoResult:
    """Train the demo LoRA and write its artefacts to `output_dir`; see the module docstring.

    An `output_dir` that holds a previous result (an earlier demo, or any training run's weights or checkpoints)
    stops the demo before any model loads, unless `overwrite_output_dir` is set: then that result, with the `eval/`
    folder the printed evaluation command writes, is deleted first.
    """
    from datasets import Dataset
    from peft import LoraConfig

    from .output_folder import clear_previous_result, refuse_previous_result

    refuse_previous_result(
        output_dir, "srpo-trl demo", overwrite=overwrite_output_dir, can_resume=False, extra=DEMO_EXTRA_RESULTS
    )
    if overwrite_output_dir:
        clear_previous_result(output_dir, extra=DEMO_EXTRA_RESULTS)

    from .plotting import image_grid, reward_curve
    from .pretrained import shapes_reward
    from .pretrained.classify import content_accuracy
    from .trainer import SRPOTrainer

    start = time.perf_counter()
    positive, negative = words
    style = shapes_reward()
    rewards = [style]
    args = demo_config(output_dir, max_steps, seed, words, learning_rate)
    if content_weight > 0:  # the same shipped CLIP, read as a content classifier (one model in memory)
        from .pretrained.content import ShapesContentReward

        rewards.append(ShapesContentReward(style))
        args.reward_weights = [1.0, float(content_weight)]
    trainer = SRPOTrainer(
        model=PIPELINE_DIR,
        reward_funcs=rewards,
        args=args,
        train_dataset=Dataset.from_dict({"prompt": TRAIN_PROMPTS}),
        eval_dataset=Dataset.from_dict({"prompt": EVAL_PROMPTS * EVAL_SEEDS}),
        # lora_alpha != r, as in real runs; peft's default initialisation (B = 0: training starts at the base).
        peft_config=LoraConfig(r=8, lora_alpha=16),
    )
    log(
        f"srpo-trl demo: LoRA SRPO on the shipped tiny FLUX.1-architecture model, {max_steps} steps, control words "
        f"+{positive!r} / -{negative!r}"
    )

    # The images evaluate() scores: batch i of the evaluation set is drawn with seed `seed + i`.
    def held_out_images() -> torch.Tensor:
        return torch.cat([trainer.generate(EVAL_PROMPTS, seed=seed + i) for i in range(EVAL_SEEDS)])

    scenes = [shapes.Scene(*c, positive) for c in EVAL_CONTENTS] * EVAL_SEEDS
    reward = trainer.rewards[0]
    before_images = held_out_images()
    style_srp = f"eval_rewards/{style.name}/srp"  # the style reward's SRP alone, whatever else trains beside it
    before = trainer.evaluate()[style_srp]
    content_before = content_accuracy(reward, before_images, scenes)
    trainer.train()
    after_images = held_out_images()
    after = trainer.evaluate()[style_srp]
    content_after = content_accuracy(reward, after_images, scenes)
    trainer.save_model(output_dir)

    files = {
        "weights": os.path.join(output_dir, "pytorch_lora_weights.safetensors"),
        "model card": os.path.join(output_dir, "README.md"),
        "before/after grid": os.path.join(output_dir, "before_after.png"),
        "reward curve": os.path.join(output_dir, "reward_curve.png"),
        "results": os.path.join(output_dir, "demo_results.json"),
        "held-out prompts": os.path.join(output_dir, "eval_prompts.txt"),
    }
    with open(files["held-out prompts"], "w") as f:
        f.write("\n".join(EVAL_PROMPTS) + "\n")
    n = len(EVAL_PROMPTS)
    rows = [before_images[:n], after_images[:n], before_images[n : 2 * n], after_images[n : 2 * n]]
    labels = [f"before, seed {seed}", "after", f"before, seed {seed + 1}", "after"]
    captions = [reading_marks(reward, images, scenes[:n]) for images in rows]
    image_grid(rows, labels, captions=captions).save(files["before/after grid"])
    keys = ["reward/denoise", "reward/inversion", "eval_reward"]
    curve = reward_curve(trainer.state.log_history, keys, title=f"SRP reward ({positive} - {negative})")
    curve.save(files["reward curve"])
    seconds = time.perf_counter() - start
    results = {
        "words": {"positive": positive, "negative": negative},
        "max_steps": max_steps,
        "seed": seed,
        "threads": torch.get_num_threads(),
        "held_out_srp_reward": {"before": before, "after": after},
        "content_weight": content_weight,
        "held_out_content": {"before": content_before, "after": content_after},
        "seconds": round(seconds, 1),
    }
    with open(files["results"], "w") as f:
        json.dump(results, f, indent=1)
    log(
        f"held-out SRP reward (mean {positive} - {negative}): before {before:.4f}, after {after:.4f} ({seconds:.0f} s)"
    )
    log(
        f"held-out samples the reward reads as photos: before {content_before['photo']:.0%}, after "
        f"{content_after['photo']:.0%}; shape, colour and position all as prompted: before "
        f"{content_before['content']:.0%}, after {content_after['content']:.0%}"
    )
    for name, path in files.items():
        log(f"  {name}: {path}")
    log("evaluate it with the stock diffusers pipeline:\n  " + eval_command(output_dir, words))
    return DemoResult(output_dir, before, after, content_before, content_after, seconds, files)


def reading_marks(reward, images: torch.Tensor, scenes) -> list[tuple[str, str]]:
    """How the shipped reward reads each image, for the grid: its style, and whether its shape, colour and position
    are the prompted ones (green) or not (red)."""
    from .pretrained.classify import classify_scenes

    marks = []
    for seen, asked in zip(classify_scenes(reward, images), scenes):
        right = (seen.shape, seen.colour, seen.position) == (asked.shape, asked.colour, asked.position)
        marks.append((f"{seen.style}, {'as asked' if right else 'content off'}", "green" if right else "red"))
    return marks


def eval_command(output_dir: str, words: tuple[str, str] = DEFAULT_WORDS) -> str:
    """The `srpo-trl eval` command that scores the demo's result against its base."""
    return (
        f"srpo-trl eval --model {PIPELINE_DIR} --result {output_dir} --prompts {output_dir}/eval_prompts.txt "
        f"--reward_funcs shapes-clip --positive_control_words {words[0]} --negative_control_words {words[1]} "
        f"--resolution {RESOLUTION} --num_inference_steps {ROLLOUT_STEPS} --max_sequence_length {MAX_SEQUENCE_LENGTH} "
        f"--output_dir {output_dir}/eval"
    )
