"""Tracker callbacks adjusted to diffusers models.

transformers' `TensorBoardCallback` writes the model's config with `model.config.to_json_string()`, which a
diffusers model's config (a `FrozenDict`) lacks, so `report_to="tensorboard"` would crash at the start of
training. The replacement writes the config as JSON itself and leaves everything else to transformers.
"""

from __future__ import annotations

import json

from transformers.integrations import TensorBoardCallback


class DiffusersTensorBoardCallback(TensorBoardCallback):
    def on_train_begin(self, args, state, control, **kwargs):
        model = kwargs.pop("model", None)
        super().on_train_begin(args, state, control, **kwargs)
        config = getattr(model, "config", None)
        if self.tb_writer is not None and config is not None:
            self.tb_writer.add_text("model_config", json.dumps(dict(config), default=str, indent=2))


def adapt_tracker_callbacks(callback_handler) -> None:
    """Swap transformers' tracker callbacks that assume a transformers model for their diffusers-safe versions."""
    callbacks = callback_handler.callbacks
    for i, callback in enumerate(callbacks):
        if type(callback) is TensorBoardCallback:
            callbacks[i] = DiffusersTensorBoardCallback(tb_writer=callback.tb_writer)
