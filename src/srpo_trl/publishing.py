"""What `SRPOTrainer` publishes besides its weights: sample images, the model card, the upload to the Hub.

A mixin of the trainer (it uses the trainer's config, pipeline, adapter and accelerator), kept apart so that the
trainer's file holds the training itself.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Sequence

from .callbacks import log_images_to_trackers
from .config import SRPOConfig
from .hub import result_files, save_sample_images, trainer_model_card


class PublishingMixin:
    """Samples, model card and Hub upload of an [`SRPOTrainer`]."""

    def create_model_card(self, *args, **kwargs) -> None:
        """Write srpo-trl's model card (used by `push_to_hub`) instead of the Trainer's language-model card."""
        if self.is_world_process_zero():
            card = self.model_card(self.args.hub_model_id or self.args.output_dir)
            card.save(os.path.join(self.args.output_dir, "README.md"))

    def _args_without_token(self) -> SRPOConfig:
        """The config as saved to disk: a hub token is never written."""
        args = copy.copy(self.args)
        args.hub_token = None
        return args

    def save_samples(self, prompts: Sequence[str], seed: int = 0, output_dir: str | None = None) -> list[str]:
        """Generate one image per prompt with the current model into `{output_dir}/samples/`.

        The model card shows them (and the Hub's widget) the next time it is written. Returns the paths.
        """
        output_dir = output_dir or self.args.output_dir
        # On every process: sharded models need all ranks.
        images = self.generate(list(prompts), seed=seed, guidance_scale=self.args.sample_guidance_scale)
        if not self.is_world_process_zero():
            return []
        # Each image's row says how it was made, so that the model card states the settings actually used.
        settings = {
            "seed": seed,
            "guidance_scale": self.args.sample_guidance_scale,
            "steps": self.args.rollout_steps,
            "resolution": f"{self.height}x{self.width}",
        }
        if self.args.guidance_scale_2 is not None:  # Wan 2.2 A14B: the low-noise expert's own guidance
            settings["guidance_scale_2"] = self.args.guidance_scale_2
        if images.ndim == 5:  # videos: written as animated WebP at the configured frame rate
            settings.update(frames=images.shape[1], frame_rate=self.args.frame_rate)
        return save_sample_images(images, list(prompts), output_dir, settings)

    def push_to_hub(
        self,
        commit_message: str | None = "End of training",
        blocking: bool = True,
        token: str | None = None,
        revision: str | None = None,
        private: bool | None = None,
        **kwargs,
    ):
        """Upload the diffusers-loadable result (LoRA safetensors or `transformer/`), the model card and samples.

        Only those files go up (not checkpoints, logs or staging folders). The upload reads the local folder
        and never changes it, so a failed push leaves the local result as it was.
        """
        from transformers.trainer import hf_api

        token = token if token is not None else self.args.hub_token
        if self.hub_model_id is None:
            self.init_hf_repo(token=token, private=private)
        self.save_model(_internal_call=True)
        if not self.is_world_process_zero():
            return None
        self.create_model_card()
        # The Trainer's own (private) wait for checkpoint pushes still in flight (`hub_strategy`), as its
        # `push_to_hub` does before uploading; no public method waits for them.
        self._finish_current_push()
        return hf_api().upload_folder(
            repo_id=self.hub_model_id,
            folder_path=self.args.output_dir,
            commit_message=commit_message,
            token=token,
            run_as_future=not blocking,
            allow_patterns=result_files(self.adapter.trainable_component),
            revision=revision if revision is not None else self.args.hub_revision,
        )

    def log_samples(self) -> None:
        """Generate `args.sample_prompts` (fixed seed) and log the images to the `report_to` trackers."""
        prompts = list(self.args.sample_prompts or [])
        if not prompts:
            return
        # On every process: sharded models need all ranks.
        images = self.generate(prompts, seed=self.args.seed, guidance_scale=self.args.sample_guidance_scale)
        if not self.is_world_process_zero():
            return
        if images.ndim == 5:  # videos: the trackers get each one's first frame (the saved samples are whole videos)
            images = images[:, 0]
        log_images_to_trackers(self.callback_handler.callbacks, images, prompts, self.state.global_step)

    def model_card(self, repo_or_dir: str):
        """The model card of the current result (see [`srpo_trl.hub.trainer_model_card`])."""
        return trainer_model_card(self, repo_or_dir)
