"""Train the shipped tiny models from nothing: `python -m srpo_trl.pretrained.build --output_dir DIR`.

This is the script that made `srpo_trl/pretrained/weights`. On 2 CPU cores it runs in about 45 minutes;
`--fast` trains a few steps of each stage (the test suite runs that). Stages:

1. **data**: `--num_images` scenes of the [shapes world](shapes.py), drawn with a fixed seed;
2. **vae**: a 16-channel `AutoencoderKL` that downsamples by 8 like FLUX's, trained to reconstruct them
   (L1 + MSE, a small KL); its `shift_factor` and `scaling_factor` are then measured on the data;
3. **reward**: a transformers `CLIPModel` trained contrastively on the images and on their VAE
   reconstructions (what it will score), with captions of all three forms; a caption that leaves the style
   open matches both styles, so the loss counts every matching caption in the batch as a positive. Its
   temperature is fixed at 1/20, so that `CLIPReward`'s `"logit"` scale is 1 and a reward is a cosine;
4. **transformer**: a FLUX.1-architecture `FluxTransformer2DModel` (guidance embedding on, as FLUX.1-dev)
   and its T5 encoder, trained together by flow matching on the VAE latents, with the reward's text tower
   as the frozen CLIP encoder; the saved weights are an exponential moving average;
5. **report**: the reward's retrieval accuracy on held-out images, and what the stock `FluxPipeline`'s
   samples show for every content, with the style open or named, judged by the reward.

Deterministic by construction: every stage seeds its own random draws (two builds on one machine gave
identical VAE losses at every logged step). Float results differ in the last bits across thread counts and CPU vector instruction sets, so
other machines train slightly different weights (not measured: the shipped ones come from one run, see
docs/pretrained.md).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time

import numpy as np
import torch
import torch.nn.functional as F

from . import shapes
from .classify import classify_scenes, content_accuracy

STEPS = {"vae": 1500, "reward": 1200, "transformer": 5500}
FAST_STEPS = {"vae": 2, "reward": 2, "transformer": 2}
#: Caption forms for the transformer: half leave the style open, so an open prompt gives either style.
TRANSFORMER_CAPTIONS = {"named": 0.35, "control": 0.15, "open": 0.5}
REWARD_CAPTIONS = {"named": 0.4, "control": 0.4, "open": 0.2}
MAX_SEQUENCE_LENGTH = 16  # T5 tokens: the word-level tokenizer needs 11 for the longest caption
REWARD_TEMPERATURE = 1 / 20
TEXT_DIM = 64
VAE_CROP = 32
CLIP_MAX_LENGTH = 48  # characters of the reward's tokenizer: the longest caption has 45


# ----------------------------------------------------------------------------------------------
# Architectures


def word_t5_tokenizer():
    """A T5 (Unigram) tokenizer that reads the shapes world's words whole and anything else by character."""
    from ..testing import tiny_t5_tokenizer

    return tiny_t5_tokenizer(words=shapes.WORDS)


def make_vae():
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(16, 32, 64, 64),
        layers_per_block=1,
        latent_channels=16,
        norm_num_groups=16,
        sample_size=1024,  # large, so that tiling never kicks in on these small images
        use_quant_conv=False,
        use_post_quant_conv=False,
    )


def make_clip():
    from transformers import CLIPConfig, CLIPModel, CLIPTextConfig, CLIPVisionConfig

    from ..testing import tiny_clip_tokenizer

    tokenizer = tiny_clip_tokenizer()
    tokenizer.model_max_length = CLIP_MAX_LENGTH
    common = dict(hidden_size=TEXT_DIM, intermediate_size=4 * TEXT_DIM, num_hidden_layers=3, num_attention_heads=4)
    text = CLIPTextConfig(
        vocab_size=len(tokenizer),
        max_position_embeddings=CLIP_MAX_LENGTH,
        projection_dim=TEXT_DIM,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **common,
    )
    vision = CLIPVisionConfig(image_size=shapes.SIZE, patch_size=8, projection_dim=TEXT_DIM, **common)
    config = CLIPConfig(text_config=text.to_dict(), vision_config=vision.to_dict(), projection_dim=TEXT_DIM)
    config.logit_scale_init_value = math.log(1 / REWARD_TEMPERATURE)
    model = CLIPModel(config)
    model.logit_scale.requires_grad_(False)
    return model, tokenizer


def make_transformer():
    """FLUX.1's architecture, small, initialised as DiT's "adaLN-Zero": every block starts as the identity."""
    from diffusers import FluxTransformer2DModel

    transformer = FluxTransformer2DModel(
        patch_size=1,
        in_channels=64,  # 2x2 packing of the 16-channel latent
        num_layers=2,
        num_single_layers=4,
        attention_head_dim=32,
        num_attention_heads=4,
        joint_attention_dim=TEXT_DIM,
        pooled_projection_dim=TEXT_DIM,
        guidance_embeds=True,
        axes_dims_rope=(8, 12, 12),
    )
    # Zero modulations and output layer make the untrained model the identity map plus nothing, which trains
    # much faster than diffusers' default initialisation (DiT's finding); the guidance embedding starts at zero
    # because guidance carries no information here (the levels are drawn at random), so it stays near zero.
    zeroed = [
        transformer.norm_out.linear,
        transformer.proj_out,
        transformer.time_text_embed.guidance_embedder.linear_2,
    ]
    zeroed += [b.norm1.linear for b in transformer.transformer_blocks]
    zeroed += [b.norm1_context.linear for b in transformer.transformer_blocks]
    zeroed += [b.norm.linear for b in transformer.single_transformer_blocks]
    with torch.no_grad():
        for layer in zeroed:
            layer.weight.zero_()
            layer.bias.zero_()
    return transformer


def make_t5(tokenizer):
    from transformers import T5EncoderModel

    from ..testing import t5_config

    return T5EncoderModel(t5_config(tokenizer, TEXT_DIM, d_kv=16, d_ff=4 * TEXT_DIM, layers=2, heads=4))


# ----------------------------------------------------------------------------------------------
# Stages


class _Stage:
    """One stage's optimisation: AdamW with warm-up and cosine decay, gradient clipping at 1, the loss curve (mean
    loss per window of steps) and a progress line every 200 steps."""

    def __init__(self, name: str, params, lr: float, steps: int, log, warmup: int = 100):
        self.name, self.steps, self.log = name, steps, log
        self.params = list(params)
        self.optimizer = torch.optim.AdamW(self.params, lr=lr, betas=(0.9, 0.99), weight_decay=0.0)
        warmup = min(warmup, steps)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda s: _schedule(s, steps, warmup))
        self.every, self.window, self.curve = max(1, steps // 100), [], []

    def update(self, step: int, loss: torch.Tensor) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.params, 1.0)
        self.optimizer.step()
        self.scheduler.step()
        value = loss.item()
        self.window.append(value)
        if len(self.window) == self.every:
            self.curve.append((step, float(np.mean(self.window))))
            self.window = []
        if step % 200 == 0:
            self.log(f"  {self.name} step {step}/{self.steps}: loss {value:.4f}")


def _to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 `[N, H, W, 3]` -> float `[N, 3, H, W]` in [0, 1]."""
    return torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255


def _schedule(step: int, total: int, warmup: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


def train_vae(images: np.ndarray, steps: int, batch_size: int, log) -> tuple:
    vae = make_vae().train()
    stage = _Stage("vae", vae.parameters(), 1e-3, steps, log)
    for step in range(steps):
        # Random 32-px crops: the VAE is convolutional, and a quarter of the pixels costs a quarter of the time.
        x = _to_tensor(images[torch.randint(0, len(images), (batch_size,)).numpy()]) * 2 - 1
        top, left = torch.randint(0, shapes.SIZE - VAE_CROP + 1, (2,)).tolist()
        x = x[..., top : top + VAE_CROP, left : left + VAE_CROP]
        posterior = vae.encode(x).latent_dist
        recon = vae.decode(posterior.sample()).sample
        kl = posterior.kl().mean() / posterior.mean[0].numel()
        stage.update(step, F.l1_loss(recon, x) + F.mse_loss(recon, x) + 1e-4 * kl)
    vae.eval().requires_grad_(False)
    # FLUX's convention: latents are used as (z - shift_factor) * scaling_factor, about unit variance.
    z = encode_latents(vae, images[:2048], normalise=False)
    vae.register_to_config(shift_factor=float(z.mean()), scaling_factor=float(1 / z.std()))
    return vae, stage.curve


@torch.no_grad()
def encode_latents(vae, images: np.ndarray, normalise: bool = True, batch_size: int = 256) -> torch.Tensor:
    out = []
    for i in range(0, len(images), batch_size):
        z = vae.encode(_to_tensor(images[i : i + batch_size]) * 2 - 1).latent_dist.mode()
        out.append((z - vae.config.shift_factor) * vae.config.scaling_factor if normalise else z)
    return torch.cat(out)


@torch.no_grad()
def reconstruct(vae, images: np.ndarray, batch_size: int = 256) -> np.ndarray:
    out = []
    for i in range(0, len(images), batch_size):
        x = _to_tensor(images[i : i + batch_size]) * 2 - 1
        recon = vae.decode(vae.encode(x).latent_dist.mode()).sample
        out.append(((recon / 2 + 0.5).clamp(0, 1) * 255 + 0.5).to(torch.uint8).permute(0, 2, 3, 1).numpy())
    return np.concatenate(out)


def _matches(scenes: list[shapes.Scene], captions: list[str]) -> torch.Tensor:
    """`[images, captions]`: 1 where the caption describes the image (an open caption fits either style)."""
    fits = [{s.caption("named"), s.caption("control"), s.caption("open")} for s in scenes]
    return torch.tensor([[c in f for c in captions] for f in fits], dtype=torch.float32)


def train_reward(images: np.ndarray, recons: np.ndarray, scenes, steps: int, batch_size: int, rng, log) -> tuple:
    from ..rewards.preprocess import clip_preprocess

    model, tokenizer = make_clip()
    model.train()
    stage = _Stage("reward", [p for p in model.parameters() if p.requires_grad], 1e-3, steps, log)
    scale = 1 / REWARD_TEMPERATURE
    for step in range(steps):
        idx = rng.integers(0, len(images), batch_size)
        pool = np.where(rng.random(batch_size) < 0.5, 0, 1)  # originals or VAE reconstructions
        batch = np.stack([(images, recons)[p][i] for p, i in zip(pool, idx)])
        batch_scenes = [scenes[i] for i in idx]
        captions = shapes.random_captions(batch_scenes, rng, REWARD_CAPTIONS)
        tokens = tokenizer(captions, padding="max_length", truncation=True, return_tensors="pt")
        e_img = F.normalize(
            model.get_image_features(pixel_values=clip_preprocess(_to_tensor(batch), shapes.SIZE)).pooler_output,
            dim=-1,
        )
        e_txt = F.normalize(model.get_text_features(**tokens).pooler_output, dim=-1)
        logits = scale * e_img @ e_txt.T
        match = _matches(batch_scenes, captions)
        # Every matching caption (image) in the batch is a positive: -log of the softmax mass on the positives.
        i2t = torch.logsumexp(logits, 1) - torch.logsumexp(logits.masked_fill(match == 0, -1e4), 1)
        t2i = torch.logsumexp(logits.T, 1) - torch.logsumexp(logits.T.masked_fill(match.T == 0, -1e4), 1)
        stage.update(step, (i2t.mean() + t2i.mean()) / 2)
    return model.eval().requires_grad_(False), tokenizer, stage.curve


def clip_text_encoder(clip_model):
    """The reward's text tower as the pipeline's `CLIPTextModel` (FLUX reads its pooled output)."""
    from transformers import CLIPTextModel

    text = CLIPTextModel(clip_model.config.text_config)
    text.load_state_dict(clip_model.text_model.state_dict())
    return text.eval().requires_grad_(False)


def train_transformer(pipe, latents: torch.Tensor, scenes, steps: int, batch_size: int, rng, log) -> list:
    from ..models.flux import latent_positions, pack_latents

    transformer, t5 = pipe.transformer.train(), pipe.text_encoder_2.train()
    stage = _Stage("transformer", [*transformer.parameters(), *t5.parameters()], 5e-4, steps, log, warmup=200)
    ema = [p.detach().clone() for p in stage.params]
    image_ids = latent_positions(*latents.shape[-2:], torch.device("cpu"))
    for step in range(steps):
        idx = rng.integers(0, len(latents), batch_size)
        captions = shapes.random_captions([scenes[i] for i in idx], rng, TRANSFORMER_CAPTIONS)
        prompt_embeds, pooled, text_ids = pipe.encode_prompt(
            prompt=captions, prompt_2=None, device=torch.device("cpu"), max_sequence_length=MAX_SEQUENCE_LENGTH
        )
        x0 = pack_latents(latents[idx])
        eps = torch.randn_like(x0)
        sigma = torch.sigmoid(torch.randn(batch_size))  # logit-normal levels, as SD3 and FLUX train
        x_t = (1 - sigma[:, None, None]) * x0 + sigma[:, None, None] * eps
        guidance = torch.from_numpy(rng.uniform(1.0, 5.0, batch_size)).float()
        v = transformer(
            hidden_states=x_t,
            timestep=sigma,
            guidance=guidance,
            pooled_projections=pooled,
            encoder_hidden_states=prompt_embeds,
            txt_ids=text_ids,
            img_ids=image_ids,
            return_dict=False,
        )[0]
        stage.update(step, F.mse_loss(v, eps - x0))
        decay = min(0.999, (1 + step) / (10 + step))
        with torch.no_grad():
            for e, p in zip(ema, stage.params):
                e.lerp_(p, 1 - decay)
    with torch.no_grad():
        for e, p in zip(ema, stage.params):
            p.copy_(e)
    transformer.eval().requires_grad_(False)
    t5.eval().requires_grad_(False)
    return stage.curve


# ----------------------------------------------------------------------------------------------
# Report


def _retrieval_report(reward, images: np.ndarray, scenes) -> dict:
    predicted = classify_scenes(reward, _to_tensor(images))
    report = {"top1": float(np.mean([p == s for p, s in zip(predicted, scenes)]))}
    for attribute in ("shape", "colour", "position", "style"):
        report[attribute] = float(
            np.mean([getattr(p, attribute) == getattr(s, attribute) for p, s in zip(predicted, scenes)])
        )
    return report


@torch.no_grad()
def _sample_report(pipe, reward, steps: int, seed: int, contents) -> tuple[dict, list[torch.Tensor]]:
    """Samples of the stock pipeline for `contents` with the style open and named, judged by the reward."""
    report, grids = {}, []
    for form in ("open", "photo", "drawing"):
        scenes = [shapes.Scene(*c, "photo" if form == "open" else form) for c in contents]
        prompts = [s.caption("open" if form == "open" else "named") for s in scenes]
        images = sample(pipe, prompts, steps, seed)
        report[form] = content_accuracy(reward, images, scenes)
        grids.append(images[:12])
    return report, grids


def sample(pipe, prompts, steps: int, seed: int) -> torch.Tensor:
    """The stock `FluxPipeline`'s images `[N, 3, 64, 64]` in [0, 1], one seeded generator per prompt."""
    generators = [torch.Generator().manual_seed(seed + i) for i in range(len(prompts))]
    out = pipe(
        prompts,
        height=shapes.SIZE,
        width=shapes.SIZE,
        num_inference_steps=steps,
        guidance_scale=3.5,
        max_sequence_length=MAX_SEQUENCE_LENGTH,
        generator=generators,
        output_type="pt",
    )
    return out.images.float().clamp(0, 1)


# ----------------------------------------------------------------------------------------------


def build(output_dir: str, *, fast: bool = False, seed: int = 0, num_images: int = 12000, log=print) -> dict:
    """Train every stage and write `pipeline/`, `reward/`, `report.json` and the loss curves to `output_dir`."""
    from ..plotting import image_grid, line_plot
    from ..testing import flux1_pipeline

    steps = FAST_STEPS if fast else STEPS
    num_images = min(num_images, 64) if fast else num_images
    start = time.perf_counter()
    rng = np.random.default_rng(seed)
    timings = {}

    log(f"data: {num_images} scenes")
    scenes = shapes.random_scenes(rng, num_images)
    images = shapes.render(scenes, rng)
    held_out_scenes = shapes.random_scenes(np.random.default_rng(seed + 1000), 24 if fast else 1200)
    held_out = shapes.render(held_out_scenes, np.random.default_rng(seed + 1001))
    timings["data"] = time.perf_counter() - start

    log("vae")
    torch.manual_seed(seed)  # each stage seeds its own randomness: a stage's result does not depend on another's draws
    vae, vae_curve = train_vae(images, steps["vae"], 24, log)
    recons = reconstruct(vae, images)
    vae_mse = float(np.mean((reconstruct(vae, held_out).astype(np.float32) / 255 - held_out / 255) ** 2))
    timings["vae"] = time.perf_counter() - start - sum(timings.values())

    log("reward")
    torch.manual_seed(seed + 1)
    clip, clip_tokenizer, reward_curve = train_reward(
        images, recons, scenes, steps["reward"], 64, np.random.default_rng([seed, 1]), log
    )
    from ..rewards import CLIPReward

    reward = CLIPReward(clip, clip_tokenizer, name="shapes-clip")
    retrieval = {
        "images": _retrieval_report(reward, held_out, held_out_scenes),
        "vae reconstructions": _retrieval_report(reward, reconstruct(vae, held_out), held_out_scenes),
    }
    log(f"  held-out retrieval: {retrieval}")
    timings["reward"] = time.perf_counter() - start - sum(timings.values())

    log("transformer")
    torch.manual_seed(seed + 2)
    t5_tokenizer = word_t5_tokenizer()
    pipe = flux1_pipeline(
        make_transformer(), vae, clip_text_encoder(clip), clip_tokenizer, make_t5(t5_tokenizer), t5_tokenizer
    )
    latents = encode_latents(vae, images)
    transformer_curve = train_transformer(
        pipe, latents, scenes, steps["transformer"], 32, np.random.default_rng([seed, 2]), log
    )
    timings["transformer"] = time.perf_counter() - start - sum(timings.values())

    log("report")
    contents = shapes.all_contents()[:: 10 if fast else 1]
    samples, sample_rows = _sample_report(pipe, reward, steps=2 if fast else 20, seed=seed, contents=contents)
    log(f"  samples judged by the reward: {samples}")
    os.makedirs(output_dir, exist_ok=True)
    pipe.save_pretrained(os.path.join(output_dir, "pipeline"), safe_serialization=True)
    clip.save_pretrained(os.path.join(output_dir, "reward"), safe_serialization=True)
    clip_tokenizer.save_pretrained(os.path.join(output_dir, "reward"))
    timings["report"] = time.perf_counter() - start - sum(timings.values())
    report = {
        "seed": seed,
        "fast": fast,
        "num_images": num_images,
        "steps": steps,
        "threads": torch.get_num_threads(),
        "seconds": {k: round(v, 1) for k, v in timings.items()},
        "vae_held_out_mse": vae_mse,
        "reward_held_out_retrieval": retrieval,
        "samples_judged_by_reward": samples,
        "parameters": {
            "transformer": sum(p.numel() for p in pipe.transformer.parameters()),
            "vae": sum(p.numel() for p in pipe.vae.parameters()),
            "clip_text_encoder": sum(p.numel() for p in pipe.text_encoder.parameters()),
            "t5_encoder": sum(p.numel() for p in pipe.text_encoder_2.parameters()),
            "reward": sum(p.numel() for p in clip.parameters()),
        },
        "loss_curves": {"vae": vae_curve, "reward": reward_curve, "transformer": transformer_curve},
    }
    with open(os.path.join(output_dir, "report.json"), "w") as f:
        json.dump(report, f, indent=1)
    curves = {
        name: ([s for s, _ in curve], [v / curve[0][1] for _, v in curve])
        for name, curve in report["loss_curves"].items()
        if curve
    }
    if curves:
        line_plot(curves, "training loss / first logged loss").save(os.path.join(output_dir, "loss_curves.png"))
    image_grid(sample_rows, ["style open", "photo", "drawing"]).save(os.path.join(output_dir, "samples.png"))
    log(f"done in {time.perf_counter() - start:.0f} s: {output_dir}")
    return report


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output_dir", required=True)
    parser.add_argument(
        "--fast", action="store_true", help="A few steps per stage: checks the script, trains nothing."
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--num_images", type=int, default=12000)
    args = parser.parse_args(argv)
    build(args.output_dir, fast=args.fast, seed=args.seed, num_images=args.num_images)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
