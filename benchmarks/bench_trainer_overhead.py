"""`bench_step.py --compare_trainer`: the trainer's overhead, `SRPOTrainer.train()` against a bare loop of the same
maths on the tiny model. Reuses `bench_step`'s models, step and helpers."""

from __future__ import annotations

import datetime
import tempfile
import time

import torch
from bench_models import _dtype, _sync, build_models, device_name, make_optimizer, set_checkpointing, versions
from bench_step import NEGATIVE_WORDS, POSITIVE_WORDS, PROMPTS, _median, control_words, make_context


def compare_trainer(args) -> dict:
    """Median step time of `SRPOTrainer.train()` against a bare loop of the same maths, tiny model, one run.

    The bare loop is what a hand-written script would do per step: look up the prompts' cached text embeddings,
    rollout, both branches in one transformer call, decode, SRP rewards, hinge loss, `loss.backward()`,
    `clip_grad_norm_`, fused AdamW step, `zero_grad`, on its own copy of the same model and config. The
    trainer's step is timed by a callback from `on_step_begin` to `on_step_end`, and the bare steps are
    interleaved with the trainer's: the callback runs one bare step after each trainer step (outside the
    trainer's timed window), so both see the same machine at the same moments (a shared machine's load drifts
    by 10 % and more between runs a minute apart).
    """
    from peft import LoraConfig
    from transformers import TrainerCallback

    from srpo_trl import SRPOConfig, SRPOTrainer
    from srpo_trl.testing import tiny_clip_reward, tiny_flux_pipeline

    device = torch.device(args.device)
    n_steps = args.warmup + args.repeats
    size = (args.resolution, args.resolution)

    # ---- bare loop
    torch.manual_seed(args.seed)
    bare_models = build_models(args)
    set_checkpointing(bare_models, args)
    bare_ctx = make_context(bare_models, args, make_optimizer(bare_models.trainable, args, device))
    adapter, transformer = bare_models.adapter, bare_models.transformer
    # Text conditioning cached per prompt on the host, stacked and moved per step (as the trainer's cache does).
    cache = {}
    for prompt in bare_ctx.prompts:
        cache[prompt] = {k: v[0].cpu() for k, v in adapter.encode_prompts([prompt], device).items()}

    def bare_step(step_index: int) -> float:
        _sync(device)
        start = time.perf_counter()
        with bare_ctx.autocast():
            entries = [cache[p] for p in bare_ctx.prompts]
            text = {k: torch.stack([e[k] for e in entries]).to(device) for k in entries[0]}
            bare_ctx.text = text
            generator = torch.Generator().manual_seed(step_index)
            eps = adapter.sample_noise(len(bare_ctx.prompts), *size, generator, device)
            x0 = bare_ctx.step.rollout(transformer, eps, text)
            batch = len(bare_ctx.prompts)
            levels = bare_ctx.step.draw_levels(generator, batch, 0, batch)
            words = control_words(step_index)
            loss = sum(bare_ctx.step.losses(transformer, x0, eps, text, bare_ctx.prompts, levels, words).values())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(bare_models.trainable, args.max_grad_norm)
        bare_ctx.optimizer.step()
        bare_ctx.optimizer.zero_grad(set_to_none=True)
        _sync(device)
        return time.perf_counter() - start

    # ---- SRPOTrainer, with one bare step after each of its steps
    class Interleave(TrainerCallback):
        def __init__(self):
            self.trainer_s: list[float] = []  # on_step_begin -> on_step_end
            self.bare_s: list[float] = []
            self._begin = 0.0

        def on_step_begin(self, *a, **k):
            _sync(device)
            self._begin = time.perf_counter()

        def on_step_end(self, *a, **k):
            _sync(device)
            self.trainer_s.append(time.perf_counter() - self._begin)
            self.bare_s.append(bare_step(len(self.bare_s)))

    torch.manual_seed(args.seed)
    pipe = tiny_flux_pipeline(args.seed, dtype=_dtype(args.dtype)).to(device)
    scratch = tempfile.TemporaryDirectory(prefix="srpo_bench_")
    config = SRPOConfig(
        output_dir=scratch.name,  # nothing is saved; removed at the end
        max_steps=n_steps,
        resolution=args.resolution,
        rollout_steps=args.rollout_steps,
        max_sequence_length=args.max_sequence_length,
        per_device_train_batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        max_grad_norm=args.max_grad_norm,
        positive_control_words=POSITIVE_WORDS,
        negative_control_words=NEGATIVE_WORDS,
        transformer_gradient_checkpointing=args.transformer_checkpointing,
        vae_gradient_checkpointing=args.vae_checkpointing,
        bf16=args.dtype == "bfloat16",
        use_cpu=device.type == "cpu",
        logging_strategy="no",
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        seed=args.seed,
    )
    timer = Interleave()
    prompts = [{"prompt": PROMPTS[i % len(PROMPTS)]} for i in range(max(len(PROMPTS), args.batch_size))]
    trainer = SRPOTrainer(
        pipe,
        tiny_clip_reward(args.seed, scale=1.0, name="hps", dtype=_dtype(args.reward_dtype)),
        args=config,
        train_dataset=_dataset(prompts),
        callbacks=[timer],
        peft_config=None if args.full else LoraConfig(r=args.lora_rank, lora_alpha=args.lora_rank),
    )
    trainer.train()
    scratch.cleanup()
    trainer_s, bare_s = timer.trainer_s[args.warmup :], timer.bare_s[args.warmup :]
    trainer_median, bare_median = _median(trainer_s), _median(bare_s)
    return {
        "benchmark": "trainer_overhead",
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "device": device_name(device),
        "versions": versions(),
        "config": {k: v for k, v in vars(args).items()},
        "trainer_step_median_s": trainer_median,
        "trainer_step_all_s": trainer_s,
        "bare_step_median_s": bare_median,
        "bare_step_all_s": bare_s,
        "ratio": trainer_median / bare_median,
        "paired_ratio_median": _median([t / b for t, b in zip(trainer_s, bare_s)]),
        "target_ratio": 1.10,
        "trainer_caches_text": hasattr(trainer, "text_cache"),
        "note": "same model and config, steps interleaved; the bare loop looks up cached text embeddings (the "
        "trainer caches them when trainer_caches_text is true, else it encodes per step)",
    }


def _dataset(rows: list[dict]):
    """A `datasets.Dataset` when the package is there, else the plain list (the Trainer takes both)."""
    try:
        from datasets import Dataset
    except ImportError:
        return rows
    return Dataset.from_list(rows)
