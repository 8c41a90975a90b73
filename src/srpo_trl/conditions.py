"""What a batch is conditioned on besides its prompts, for the families that take an image (and Fill's mask).

[`BatchConditions`] is the trainer's one place for it:

- before training, it checks that every reward's `conditions` are given by the pipeline (an edge reward needs a
  control image), and gives a Fill dataset without masks seeded random ones (`srpo_trl.masks`);
- per batch, it makes the control maps when `SRPOConfig.control_image_preprocessor` is set (Canny or depth, from the
  control column's images), and names the images for the rewards that compare with them: the adapter's
  `reference_role` (`control_images`, `source_images`, ...) and `masks`.
"""

from __future__ import annotations

import logging

import torch

from .data import has_image_column

logger = logging.getLogger(__name__)


class BatchConditions:
    """The conditioning images of an adapter's family for an `SRPOConfig` and its rewards (see the module)."""

    def __init__(self, adapter, args, rewards):
        self.adapter, self.args = adapter, args
        self.preprocessor = args.control_image_preprocessor
        given = self.given()
        for reward in rewards:
            missing = [name for name in reward.conditions if name not in given]
            if missing:
                raise ValueError(
                    f"reward {reward.name!r} compares the image with {missing}, which "
                    f"{type(adapter.pipeline).__name__} does not take; conditions of this pipeline: {sorted(given)}"
                )
        if self.preprocessor is not None and adapter.reference_role != "control_images":
            raise ValueError(
                f"SRPOConfig.control_image_preprocessor={self.preprocessor!r}: {type(adapter.pipeline).__name__} takes "
                "no control image (Canny / Depth Control and ControlNet pipelines do)"
            )
        self.depth = None
        if self.preprocessor == "depth":
            from .control_maps import DepthEstimator

            self.depth = DepthEstimator(args.depth_model_name_or_path)

    def given(self) -> set[str]:
        """The names of the conditions the family's batches hold."""
        names = set()
        if self.adapter.requires_reference_image:
            names.add(self.adapter.reference_role)
        if self.adapter.uses_mask:
            names.add("masks")
        return names

    def with_masks(self, dataset, what: str):
        """`dataset` itself, or, for a family that takes masks when it has no mask column, with seeded random
        masks at the training size."""
        if dataset is None or not self.adapter.uses_mask or has_image_column(dataset, self.args.dataset_mask_column):
            return dataset
        from .masks import with_random_masks

        logger.info(
            "%s has no %r column: each row gets a seeded random mask (boxes and brush strokes, srpo_trl.masks)",
            what,
            self.args.dataset_mask_column,
        )
        height, width = self.adapter.reference_image_size(*self.args.image_size)
        return with_random_masks(dataset, self.args.dataset_mask_column, height, width, self.args.seed)

    def to(self, device: torch.device) -> BatchConditions:
        if self.depth is not None:
            self.depth.to(device)
        return self

    def references(self, images: torch.Tensor | None, device: torch.device) -> torch.Tensor | None:
        """The batch's reference images on `device`: the control maps of the column's images when a preprocessor
        is set."""
        if images is None:
            return None
        images = images.to(device)
        if self.preprocessor is None:
            return images
        from .control_maps import make_control_maps

        return make_control_maps(self.preprocessor, images, self.depth)

    def for_rewards(self, references: torch.Tensor | None, masks: torch.Tensor | None) -> dict[str, torch.Tensor]:
        """The batch's conditions by the names rewards ask for them (`Reward.conditions`)."""
        conditions = {}
        if references is not None:
            conditions[self.adapter.reference_role] = references
        if masks is not None:
            conditions["masks"] = masks.to(references.device if references is not None else masks.device)
        return conditions
