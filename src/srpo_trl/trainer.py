"""SRPOTrainer: Direct-Align + Semantic Relative Preference as a `transformers.Trainer`."""

from __future__ import annotations

import logging
import os
import shutil
from collections import defaultdict
from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import nn
from transformers import Trainer, TrainerCallback
from transformers.trainer import TRAINING_ARGS_NAME
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, get_last_checkpoint, rotate_checkpoints

from .attention import training_attention
from .callbacks import SamplesAndRewardCurve, StopOnSignal
from .checkpointing import (
    STAGING_DIR_NAME,
    load_full_checkpoint,
    load_lora_checkpoint,
    point_best_checkpoint_at_published,
    publish_staged_folder,
)
from .conditions import BatchConditions
from .config import SRPOConfig
from .data import check_dataset, collate_rows, has_image_column, reference_batch
from .guards import InactiveHingeWatch, InterruptionHandler, NonFiniteGuard
from .integrations import adapt_tracker_callbacks
from .memory_check import check_before_loading
from .metrics import MetricsBuffer
from .models import get_adapter
from .module_state import cast_trainable_parameters, eval_mode
from .output_folder import claim_for_training, resume_argument
from .preparation import (
    check_output_dir,
    check_pipeline_inputs,
    load_pipeline,
    prepare_trainable,
    resolve_reward_setup,
)
from .publishing import PublishingMixin
from .rewards import Reward
from .rewards.base import held_out_scores
from .step import SRPOStep
from .text_cache import build_text_cache

logger = logging.getLogger(__name__)


RewardLike = Reward | Callable | str


class SRPOTrainer(PublishingMixin, Trainer):
    """Trainer for SRPO (Shen et al., 2025): Direct-Align with Semantic Relative Preference rewards.

    Args:
        model (`DiffusionPipeline`, `ModularPipeline` or `str`):
            A diffusers pipeline of a supported class (`srpo_trl.models.PIPELINES`: FLUX.1, Kontext, FLUX.2, FLUX.3
            [klein], their Img2Img / Inpaint / KV variants, diffusers' modular pipelines, Qwen-Image and its editing
            models), or a hub id / local path loaded with `DiffusionPipeline.from_pretrained(**args.model_init_kwargs)`
            (or `ModularPipeline.from_pretrained` where the index names a modular pipeline). Only its transformer
            trains.
        reward_funcs (`Reward`, callable, `str`, or a list of them):
            Rewards to maximise. A callable `fn(images, prompts) -> Tensor[B]` gets float images `[B, 3, H, W]`
            in [0, 1] and must be differentiable in them; a [`~srpo_trl.rewards.CLIPReward`] scores CLIP
            embeddings; a string is a registered name (`"hpsv2.1"`, `"pickscore"`, ...), a name with a local
            copy (`"hpsv2.1:/path/HPS_v2.1_compressed.pt"`) or a local transformers CLIP folder (see
            [`~srpo_trl.rewards.load_reward`]).
        args ([`SRPOConfig`], *optional*): configuration; defaults to `SRPOConfig("<model>-SRPO")`.
        train_dataset (`datasets.Dataset` or `IterableDataset`): prompts, in `args.dataset_prompt_column`.
        eval_dataset (`datasets.Dataset`, *optional*): held-out prompts for [`evaluate`].
        callbacks (`list[TrainerCallback]`, *optional*): extra Trainer callbacks.
        optimizers (`tuple`, *optional*): `(optimizer, lr_scheduler)`; AdamW and the config's schedule by default.
        peft_config (`peft.LoraConfig`, *optional*): train a LoRA instead of the full transformer.
        eval_reward_funcs (same types as `reward_funcs`, *optional*): rewards that [`evaluate`] also scores the
            held-out images with, but that are never trained on (e.g. train on `"hpsv2.1"`, watch `"pickscore"`
            and `"laion-aesthetic"`): a trained reward that rises while these fall is the signature of reward
            hacking. Logged as `eval_rewards/{name}/srp` and `eval_rewards/{name}/plain`, outside `eval_reward`.
    """

    # compute_loss returns the mean loss of its micro-batch, so the Trainer must divide it by the accumulation
    # steps. Pinned: left to `None`, transformers would decide from whether the transformer's `forward` takes
    # `**kwargs` (FLUX's does), and a diffusers release could change the scaling silently.
    loss_is_scaled_for_ga = False
    _tag_names = ["trl", "srpo", "diffusers", "flux", "text-to-image"]
    _name = "SRPO"
    _paper = {
        "title": "Directly Aligning the Full Diffusion Trajectory with Fine-Grained Human Preference",
        "id": "2509.06942",
    }

    def __init__(
        self,
        model,
        reward_funcs: RewardLike | Sequence[RewardLike],
        args: SRPOConfig | None = None,
        train_dataset=None,
        eval_dataset=None,
        callbacks: list[TrainerCallback] | None = None,
        optimizers=(None, None),
        peft_config=None,
        eval_reward_funcs: RewardLike | Sequence[RewardLike] | None = None,
    ):
        if args is None:
            name = model if isinstance(model, str) else "flux"
            args = SRPOConfig(f"{name.split('/')[-1]}-SRPO")
        if not isinstance(args, SRPOConfig):
            raise TypeError(f"args: expected an SRPOConfig, got {type(args).__name__}")

        # Everything that can be checked without models is checked first: data, output folder, then the rewards
        # (whose names and paths are checked before any weights load).
        self.offline = (
            args.offline if args.offline is not None else has_image_column(train_dataset, args.dataset_image_column)
        )
        image_column = args.dataset_image_column if self.offline else None
        check_dataset(train_dataset, args.dataset_prompt_column, "train_dataset", image_column)
        if not isinstance(eval_dataset, dict):
            check_dataset(eval_dataset, args.dataset_prompt_column, "eval_dataset")

        check_output_dir(args.output_dir)

        rewards = resolve_reward_setup(reward_funcs, eval_reward_funcs, args)
        self.rewards, self.eval_only_rewards = rewards.trained, rewards.watched
        self.reward_weights, self.hinge_thresholds = rewards.weights, rewards.hinge_thresholds

        # On CUDA, before any weights load: the planner's estimate against the free memory (SRPOConfig.memory_check).
        self.memory_check = check_before_loading(model, reward_funcs, args, peft_config)
        self.pipeline = load_pipeline(model, args.model_init_kwargs, args.controlnet_name_or_path)
        # Where the base came from, for the model card (a modular pipeline records no `name_or_path`).
        self.base_model = model if isinstance(model, str) else getattr(self.pipeline, "name_or_path", None) or None
        self.adapter = get_adapter(self.pipeline, max_sequence_length=args.max_sequence_length)
        if self.adapter.reference_image_optional:  # FLUX.3: editing when each prompt comes with a reference image
            self.adapter.requires_reference_image = has_image_column(
                train_dataset, args.dataset_reference_image_column
            )
        self.adapter.configure(args)
        if self.adapter.is_video:  # image rewards score every `reward_frame_stride`-th decoded frame
            from .rewards.video import for_videos

            self.rewards = for_videos(self.rewards, args.reward_frame_stride)
            self.eval_only_rewards = for_videos(self.eval_only_rewards, args.reward_frame_stride)
        # The conditioning images rewards compare with; Fill datasets without masks get seeded random ones.
        self.conditions = BatchConditions(self.adapter, args, [*self.rewards, *self.eval_only_rewards])
        train_dataset = self.conditions.with_masks(train_dataset, "train_dataset")
        if isinstance(eval_dataset, dict):
            eval_dataset = {k: self.conditions.with_masks(v, f"eval_dataset[{k!r}]") for k, v in eval_dataset.items()}
        else:
            eval_dataset = self.conditions.with_masks(eval_dataset, "eval_dataset")
        for use, guidance in self.adapter.default_guidance.items():  # unset guidance: the family's
            if getattr(args, f"{use}_guidance_scale") is None:
                setattr(args, f"{use}_guidance_scale", guidance)
        self.height, self.width = args.image_size
        check_pipeline_inputs(self.adapter, args, train_dataset, eval_dataset)
        self.step = SRPOStep.from_config(self.adapter, args, self.rewards, self.reward_weights, self.hinge_thresholds)

        if args.quantize_base is not None and peft_config is None:
            raise ValueError(
                f"SRPOConfig.quantize_base={args.quantize_base!r} needs a LoRA (peft_config): a quantised base cannot "
                "be fully fine-tuned"
            )
        transformer, self.peft_config = prepare_trainable(self.pipeline, self.adapter, args, peft_config)
        cast_trainable_parameters(transformer, args.trainable_dtype)
        super().__init__(
            model=transformer,
            args=args,
            data_collator=self._collate,
            train_dataset=train_dataset,
            eval_dataset=eval_dataset,
            callbacks=callbacks,
            optimizers=optimizers,
        )
        adapt_tracker_callbacks(self.callback_handler)
        self._move_frozen_parts(self.accelerator.device)
        if self.offline:
            logger.warning(
                "offline mode: x0 is the VAE encoding of the train dataset's %r images (resized and centre-cropped "
                "to %sx%s) with fresh noise per sample; no rollout",
                args.dataset_image_column,
                self.height,
                self.width,
            )
        self.text_cache = build_text_cache(self.adapter, self.accelerator, self.args, train_dataset, eval_dataset)
        self._metrics = {"train": MetricsBuffer(), "eval": MetricsBuffer()}
        self._noise_key = (-1, 0)  # (global step, micro-batch index within it)
        self._staging_checkpoint = False
        self._rewards_checked = False  # the reward contract is checked on the first batch
        self._evaluating = False  # which metrics `log` reports: evaluate()'s or the training steps'
        self._nonfinite_guard: NonFiniteGuard | None = None
        self._hinge_watch = InactiveHingeWatch(dict(zip((r.name for r in self.rewards), self.hinge_thresholds)))
        self._interruption = InterruptionHandler()
        self.add_callback(StopOnSignal(self))
        # First in line, so that at the end of training the trackers' writers are still open for the last samples.
        self.callback_handler.callbacks.insert(0, SamplesAndRewardCurve(self))

    # ------------------------------------------------------------------ set-up

    def _build_accelerator_args(self, **kwargs) -> dict:
        """The Trainer's accelerator arguments, with regional compilation of the transformer's blocks by default.

        Private override: the Trainer builds accelerate's `TorchDynamoPlugin` from `TrainingArguments` itself, with
        no public argument for `use_regional_compilation`, and the plugin must be set before the accelerator exists.
        """
        accelerator_args = super()._build_accelerator_args(**kwargs)
        dynamo_plugin = accelerator_args.get("dynamo_plugin")
        if dynamo_plugin is not None and self.args.torch_compile:
            dynamo_plugin.use_regional_compilation = self.args.torch_compile_regions
        return accelerator_args

    def _move_frozen_parts(self, device: torch.device) -> None:
        for name, component in self.pipeline.components.items():
            if isinstance(component, nn.Module) and name != self.adapter.trainable_component:
                component.to(device)
        for reward in [*self.rewards, *self.eval_only_rewards]:
            reward.to(device)
        self.conditions.to(device)

    def _collate(self, features: list[dict]) -> dict:
        reference = None
        if self.adapter.requires_reference_image:
            reference = self.adapter.reference_image_size(self.height, self.width)
        column = getattr(self.args, self.adapter.reference_image_column_field)
        return collate_rows(
            features, self.args, self.height, self.width, reference, self.offline, column, self.adapter.uses_mask
        )

    def _step_generator(self) -> torch.Generator:
        """A CPU generator keyed by (seed, step, micro-batch): the same on every rank, and reproducible on resume."""
        step = self.state.global_step
        micro = self._noise_key[1] + 1 if self._noise_key[0] == step else 0
        self._noise_key = (step, micro)
        seed = int(np.random.SeedSequence([self.args.seed, step, micro]).generate_state(1)[0])
        return torch.Generator().manual_seed(seed)

    def _control_words(self, step: int) -> tuple[str, str]:
        pos, neg = self.args.positive_control_words, self.args.negative_control_words
        return (pos[step % len(pos)] if pos else "", neg[step % len(neg)] if neg else "")

    # ------------------------------------------------------ randomness, sampling

    def _conditioning(
        self, prompts: list[str], reference_images: torch.Tensor | None, masks: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        """Cached text embeddings, plus the reference images' latents for image-editing families (and Fill's masks).
        A family whose text encoder sees the reference (Qwen-Image-Edit) encodes the text with it, per batch."""
        if not self.adapter.requires_reference_image:
            return self.text_cache.get(prompts)
        if reference_images is None:
            raise ValueError(
                f"{type(self.pipeline).__name__} edits a reference image: give one per prompt "
                f"(dataset column {getattr(self.args, self.adapter.reference_image_column_field)!r}, or "
                "generate(reference_images=...))"
            )
        device = self.accelerator.device
        reference_images = reference_images.to(device)
        if self.adapter.text_sees_reference:
            conditioning = self.adapter.encode_prompts(prompts, device, reference_images=reference_images)
        else:
            conditioning = self.text_cache.get(prompts)
        if not self.adapter.uses_mask:
            return self.adapter.add_reference(conditioning, reference_images, self.height, self.width)
        if masks is None:
            raise ValueError(
                f"{type(self.pipeline).__name__} repaints the masked part of an image: give a mask per image (dataset "
                f"column {self.args.dataset_mask_column!r}, or generate(masks=...))"
            )
        return self.adapter.add_reference(
            conditioning, reference_images, self.height, self.width, masks=masks.to(device)
        )

    @torch.no_grad()
    def generate(
        self,
        prompts: Sequence[str],
        seed: int = 0,
        reference_images: torch.Tensor | None = None,
        guidance_scale: float | None = None,
        masks: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Images `[B, 3, H, W]` in [0, 1] from the current model with the rollout's Euler sampler, in eval mode.

        `guidance_scale` defaults to the rollout's (`rollout_guidance_scale`). `reference_images` (a tensor
        `[B, 3, H, W]` in [0, 1], or PIL images or paths) are required by the families that take an image (Kontext's
        to edit, Control's map, Fill's source); any size is resized and centre-cropped as the data pipeline does for
        training, and made into control maps when `control_image_preprocessor` is set. Fill also takes `masks`
        (`[B, 1, H, W]` at the training size, 1 where repainted, or PIL masks or paths).
        """
        size = self.adapter.reference_image_size(self.height, self.width)
        if reference_images is not None:
            reference_images = reference_batch(reference_images, *size)
        if masks is not None and not isinstance(masks, torch.Tensor):
            from .masks import mask_to_tensor

            masks = torch.stack([mask_to_tensor(mask, *size) for mask in masks])
        references = self.conditions.references(reference_images, self.accelerator.device)
        return self._generate(list(prompts), seed, references, masks, guidance_scale)

    @torch.no_grad()
    def _generate(self, prompts, seed, references, masks, guidance_scale) -> torch.Tensor:
        """[`generate`] with the reference images already prepared (on the device, control maps made)."""
        device = self.accelerator.device
        text = self._conditioning(prompts, references, masks)
        generator = torch.Generator().manual_seed(seed)
        eps = self.adapter.sample_noise(len(prompts), self.height, self.width, generator, device)
        if guidance_scale is None:
            guidance_scale = self.args.rollout_guidance_scale
        with training_attention(self.args.allow_cudnn_attention), eval_mode(self.model_wrapped):
            x0 = self.step.rollout(self.model_wrapped, eps, text, guidance_scale)
            return self.adapter.decode(x0, self.height, self.width)

    # ------------------------------------------------------------ train step

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """One SRPO sample per prompt: rollout, then the denoise and inversion branches in one batched call."""
        with training_attention(self.args.allow_cudnn_attention):
            losses = self.branch_losses(model, inputs)
        return sum(losses.values())

    def branch_losses(self, model, inputs) -> dict[str, torch.Tensor]:
        """The SRPO loss of each branch (`{"denoise": ..., "inversion": ...}`) for one batch of prompts.

        The data and the randomness are prepared here; the step itself is [`srpo_trl.step.SRPOStep.losses`].
        """
        prompts = inputs["prompt"]
        batch = len(prompts)
        device = self.accelerator.device
        generator = self._step_generator()

        # Clean latents x0 (a rollout of the current model, or real images offline) and their noise eps.
        references = self.conditions.references(inputs.get("reference_images"), device)
        masks = inputs.get("masks")
        text = self._conditioning(prompts, references, masks)
        # Every process draws the same numbers. The recipe shares eps and levels across processes; with
        # `per_process_noise` each takes its slice of a draw for the global batch, so that N processes x batch B
        # see exactly what one process x batch N*B would.
        draws, offset = batch, 0
        if self.args.per_process_noise:
            draws, offset = batch * self.accelerator.num_processes, batch * self.accelerator.process_index
        eps = self.adapter.sample_noise(draws, self.height, self.width, generator, device)[offset : offset + batch]
        if self.offline:
            x0 = self.adapter.encode_images(inputs["images"].to(device), self.height, self.width)
        else:
            with eval_mode(model):  # a deterministic rollout: no LoRA dropout
                x0 = self.step.rollout(model, eps, text)
        levels = self.step.draw_levels(generator, draws, offset, batch)
        words = self._control_words(self.state.global_step)
        conditions = self.conditions.for_rewards(references, masks)
        losses = self.step.losses(
            model, x0, eps, text, prompts, levels, words, self._record, not self._rewards_checked, conditions
        )
        self._rewards_checked = True
        return losses

    def _record(self, key: str, values: torch.Tensor, with_std: bool = False) -> None:
        """Keep a training metric on the device (see `srpo_trl.metrics`): no host sync, no collective in the step."""
        self._metrics["train"].record(key, values, with_std)

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        # An explicit flag, not `self.model.training`: under regional compilation the Trainer switches modes on
        # a copy of the top-level module, so the original's flag would say "eval" for the whole run.
        mode = "eval" if self._evaluating else "train"
        batches = self._metrics[mode].batches("loss/denoise")
        metrics = self._metrics[mode].gathered(self.accelerator.gather)
        if mode == "train":
            self._hinge_watch.update(metrics, batches)
        if mode == "train" and self._nonfinite_guard is not None and self._nonfinite_guard.skipped_total:
            metrics["nonfinite_steps"] = self._nonfinite_guard.skipped_total
        if mode == "eval":
            metrics = {f"eval_{k}": v for k, v in metrics.items()}
        logs = {**logs, **metrics, **(self.memory_check.metrics() if mode == "train" else {})}
        super().log(logs, start_time)
        self._metrics[mode].clear()

    # ------------------------------------------------------------ evaluation

    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval") -> dict[str, float]:
        """Mean reward of full rollouts on held-out prompts (fixed noise per batch, so runs compare).

        For each reward: `{prefix}_rewards/{name}/srp`, the SRP score with `k = 0` averaged over the control
        words, `mean_p f(x, p. prompt) - mean_n f(x, n. prompt)` (plain `f(x)` for image-only rewards), and
        `{prefix}_rewards/{name}/plain`, `f(x, prompt)`. `{prefix}_reward` is the weighted sum of the SRP scores.
        """
        dataset = eval_dataset if eval_dataset is not None else self.eval_dataset
        if dataset is None:
            raise ValueError("evaluate: no eval_dataset was given to the trainer or to evaluate()")
        dataloader = self.get_eval_dataloader(dataset)
        was_training = self.model.training
        self.model.eval()
        self._evaluating = True
        try:
            metrics = self._held_out_rewards(dataloader, metric_key_prefix)
            self.log(dict(metrics))  # while still evaluating, so that no pending train metrics are mixed in
        finally:
            self._evaluating = False
            if was_training:
                self.model.train()
        self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics)
        return metrics

    def _held_out_rewards(self, dataloader, prefix: str) -> dict[str, float]:
        """Rewards of full rollouts on the dataloader's prompts, averaged over every process's samples."""
        sums: dict[str, list[torch.Tensor]] = defaultdict(list)
        words = (self.args.positive_control_words, self.args.negative_control_words)
        for index, inputs in enumerate(dataloader):
            prompts = inputs["prompt"]
            references = self.conditions.references(inputs.get("reference_images"), self.accelerator.device)
            masks = inputs.get("masks")
            images = self._generate(prompts, self.args.seed + index, references, masks, None)
            conditions = self.conditions.for_rewards(references, masks)
            scores = held_out_scores(
                self.rewards, self.reward_weights, self.eval_only_rewards, images, prompts, words, conditions
            )
            for key, values in scores.items():
                sums[key].append(values)
        return {
            f"{prefix}_{k}": self.accelerator.gather_for_metrics(torch.cat(v)).mean().item() for k, v in sums.items()
        }

    # ---------------------------------------------------------------- saving

    def _save(self, output_dir: str | None = None, state_dict=None) -> None:
        """Write diffusers-loadable weights (LoRA safetensors or `transformer/`) and a model card, on the main process.

        `Trainer.save_model` calls this on every process. Under FSDP (FULL_STATE_DICT) and DeepSpeed it first gathers
        the whole model with a collective every process joins, and passes it as `state_dict` (on the main process;
        the others get an empty dict). That gathered dict is what is written: a sharded module's own `state_dict()`
        holds only this process's shards. Without one (one process, DDP) the module itself is whole.

        Private override: this is where the Trainer hands over the gathered model; the public `save_model`, which
        picks the gathering for each engine, is kept as it is.
        """
        if not self.args.should_save:  # nothing left to join here: the gathering collective ran in save_model
            return
        output_dir = output_dir or self.args.output_dir
        os.makedirs(output_dir, exist_ok=True)
        transformer = self.accelerator.unwrap_model(self.model)
        if state_dict is not None and not state_dict:
            # Nothing was gathered here: DeepSpeed ZeRO-3 without stage3_gather_16bit_weights_on_model_save (the Trainer
            # then writes DeepSpeed's own checkpoint, from which zero_to_fp32.py recovers the weights), or, with
            # save_on_each_node, another machine than the one FSDP2 gathers the model on.
            logger.warning("no gathered weights handed over for %s: no diffusers weights written there", output_dir)
        elif self.peft_config is not None:
            from peft.utils import get_peft_model_state_dict

            lora = get_peft_model_state_dict(transformer, state_dict=state_dict)
            # The config goes with the weights: diffusers reloads a LoRA saved without it with lora_alpha = r.
            self.adapter.save_lora_weights(output_dir, lora, self.peft_config)
        else:
            from .checkpointing import save_transformer

            save_transformer(transformer, os.path.join(output_dir, self.adapter.trainable_component), state_dict)
        torch.save(self._args_without_token(), os.path.join(output_dir, TRAINING_ARGS_NAME))
        self.model_card(output_dir).save(os.path.join(output_dir, "README.md"))

    # ------------------------------------------------------------------ guards

    def create_optimizer(self, model=None):
        """The Trainer's optimizer (or the one given), with its `step` guarded against non-finite steps."""
        optimizer = super().create_optimizer(model) if model is not None else super().create_optimizer()
        if self._nonfinite_guard is None or self._nonfinite_guard.optimizer is not self.optimizer:
            self._nonfinite_guard = NonFiniteGuard(
                self.optimizer,
                self.model.parameters(),
                self.args.max_consecutive_nonfinite_steps,
                any_process=self._on_any_process,
                describe_last_checkpoint=self._describe_last_checkpoint,
            )
        return optimizer

    def training_step(self, model, inputs, num_items_in_batch=None):
        loss = super().training_step(model, inputs, num_items_in_batch)
        if self._nonfinite_guard is not None:
            self._nonfinite_guard.observe_loss(loss)
        return loss

    def _get_grad_norm(self, model, grad_norm=None):
        """The Trainer's gradient norm of the step, passed on to the non-finite guard (which would compute it again).

        Private override: no callback sees the norm before the optimizer steps (`on_pre_optimizer_step` gets no
        metrics), and computing it a second time is one more pass over every gradient per step.
        """
        grad_norm = super()._get_grad_norm(model, grad_norm=grad_norm)
        if self._nonfinite_guard is not None and grad_norm is not None:
            self._nonfinite_guard.observe_grad_norm(grad_norm)
        return grad_norm

    def _on_any_process(self, flag: bool | torch.Tensor) -> bool:
        """Whether `flag` (a bool, or a 0/1 tensor) is true on any process; one collective only when there are several."""
        if self.accelerator.num_processes == 1:
            return bool(flag)
        value = torch.as_tensor(flag, dtype=torch.float32, device=self.accelerator.device).reshape(1)
        return bool(self.accelerator.reduce(value, reduction="sum").item() > 0)

    def _describe_last_checkpoint(self) -> str:
        last = os.path.isdir(self.args.output_dir) and get_last_checkpoint(self.args.output_dir)
        return f"The last good checkpoint, {last}, is intact." if last else "No checkpoint had been written yet."

    def train(self, resume_from_checkpoint: str | bool | None = None, trial=None, **kwargs):
        """`Trainer.train`, plus:

        - an `output_dir` that holds a previous result (weights, checkpoints, samples, eval results) stops the run
          before its first step, unless it resumes (`resume_from_checkpoint`, which defaults to
          `args.resume_from_checkpoint`) or `args.overwrite_output_dir` is set, which deletes that result first;
        - SIGTERM/SIGINT write a checkpoint after the current step and stop. After such a stop, SIGTERM exits with
          status 143 (128 + 15) and SIGINT raises `KeyboardInterrupt`; `train(resume_from_checkpoint=True)`
          continues exactly.
        """
        if resume_from_checkpoint is None:
            resume_from_checkpoint = self.args.resume_from_checkpoint
        resume_from_checkpoint = resume_argument(resume_from_checkpoint)
        claim_for_training(self.args, resume_from_checkpoint, self._on_any_process, self.accelerator.wait_for_everyone)
        self._interruption = InterruptionHandler()
        with self._interruption:
            output = super().train(resume_from_checkpoint, trial, **kwargs)
        self._interruption.stop_if_received(self.state.global_step, self._describe_last_checkpoint())
        return output

    # ------------------------------------------------------ checkpoints, resume

    def _get_output_dir(self, trial) -> str:
        # Private override: the Trainer derives each checkpoint's folder from it and has no option for where checkpoints
        # are written. While a checkpoint is being written, the Trainer writes it under the staging folder.
        run_dir = super()._get_output_dir(trial)
        return os.path.join(run_dir, STAGING_DIR_NAME) if self._staging_checkpoint else run_dir

    def _save_checkpoint(self, model, trial) -> None:
        """The Trainer's checkpoint (weights, optimizer, scheduler, RNG, state), written atomically.

        Everything is written to `{output_dir}/.srpo-staging/checkpoint-N` first and renamed to
        `checkpoint-N` once every process has finished, so an interrupted save leaves the previous
        checkpoint as the latest complete one. The control-word cycle and the rollout noise are keyed
        by the global step, which the checkpoint's trainer state restores.

        Every process runs it: the Trainer's checkpoint needs them all (gathering a sharded model, each process's
        RNG state); only the main process clears, publishes and rotates. Private override: the Trainer has no hook
        around the writing of a checkpoint folder (callbacks' `on_save` comes after it).
        """
        run_dir = super()._get_output_dir(trial)
        name = f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
        staged = os.path.join(run_dir, STAGING_DIR_NAME, name)
        if self.args.should_save:
            shutil.rmtree(staged, ignore_errors=True)  # leftovers of an interrupted save
        self.accelerator.wait_for_everyone()
        self._staging_checkpoint = True
        try:
            super()._save_checkpoint(model, trial)
        finally:
            self._staging_checkpoint = False
        point_best_checkpoint_at_published(self.state, staged, run_dir, write=self.args.should_save)
        self.accelerator.wait_for_everyone()
        if self.args.should_save:
            publish_staged_folder(staged, os.path.join(run_dir, name))
            rotate_checkpoints(run_dir, self.args.save_total_limit, self.state.best_model_checkpoint, use_mtime=True)
        self.accelerator.wait_for_everyone()

    def _load_best_model(self) -> None:
        """`load_best_model_at_end`: the best checkpoint's weights, read as [`_load_from_checkpoint`] reads them.

        Private override because the Trainer's own looks for transformers' or peft's file names, not the diffusers
        layout our checkpoints have, and would only log that it found nothing. Under DeepSpeed the Trainer's own is
        right (it reads DeepSpeed's checkpoint into the partitioned model), and is used.
        """
        if self.is_deepspeed_enabled:
            super()._load_best_model()
            return
        logger.info("loading the best checkpoint %s (%s = %s)", self.state.best_model_checkpoint,
                    self.args.metric_for_best_model, self.state.best_metric)  # fmt: skip
        self._load_from_checkpoint(self.state.best_model_checkpoint)

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
        """Load the trainable weights of a checkpoint written by [`_save_checkpoint`].

        Private override because the Trainer's own reads transformers' or peft's file names, not the diffusers layout
        of our weights. Under FSDP the Trainer's own is used after all: the checkpoint also holds accelerate's FSDP
        model files (written with the optimizer's), which accelerate's `load_fsdp_model` puts into the sharded
        model; with FSDP2 and FULL_STATE_DICT, read on the main process and broadcast into every process's shards
        (`set_model_state_dict(full_state_dict=True, broadcast_from_rank0=True)`).
        """
        component = self.adapter.trainable_component
        if self.is_fsdp_enabled:
            from .checkpointing import check_lora_checkpoint_config

            if self.peft_config is not None:  # a LoRA of another rank or scale fails here with a clear message
                check_lora_checkpoint_config(
                    self.accelerator.unwrap_model(self.model), resume_from_checkpoint, component
                )
            super()._load_from_checkpoint(resume_from_checkpoint, model)
            return
        transformer = self.accelerator.unwrap_model(model if model is not None else self.model)
        if self.peft_config is not None:
            load_lora_checkpoint(transformer, resume_from_checkpoint, component)
        else:
            load_full_checkpoint(transformer, resume_from_checkpoint, component)
