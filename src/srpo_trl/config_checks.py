"""The checks of `SRPOConfig`'s own fields, run in its `__post_init__`: each bad value fails with the field's name, the
value and what would be valid, before any model work."""

from __future__ import annotations

import math

import torch

from .control_words import RECIPE_NEGATIVE_WORDS, RECIPE_POSITIVE_WORDS, control_word_preset
from .quantization import QUANTIZATIONS

REWARD_DTYPES = ("float32", "bfloat16", "float16")
TRAINABLE_DTYPES = ("float32", "bfloat16", "auto")
MEMORY_CHECKS = ("warn", "strict", "off")


def _normalised_model_init_kwargs(kwargs: dict, fail) -> dict:
    """`dtype` (transformers 5, TRL) or `torch_dtype` (diffusers) as the `torch_dtype` diffusers takes."""
    kwargs = dict(kwargs)
    if "dtype" in kwargs:
        dtype = kwargs.pop("dtype")
        if kwargs.get("torch_dtype", dtype) != dtype:
            fail("model_init_kwargs", {**kwargs, "dtype": dtype}, "give the dtype once, as dtype or as torch_dtype")
        kwargs["torch_dtype"] = dtype
    dtype = kwargs.get("torch_dtype")
    if isinstance(dtype, str) and dtype != "auto" and not isinstance(getattr(torch, dtype, None), torch.dtype):
        fail("model_init_kwargs", kwargs, f"torch_dtype={dtype!r} is not a torch dtype (e.g. 'bfloat16', 'auto')")
    return kwargs


def check_srpo_fields(config) -> None:
    """Check (and normalise in place: lists, floats) the SRPO fields of an `SRPOConfig`."""

    def fail(name, value, valid):
        raise ValueError(f"SRPOConfig.{name}={value!r} is invalid: {valid}")

    res = config.resolution
    if isinstance(res, (tuple, list)):
        if len(res) not in (1, 2) or not all(isinstance(v, int) for v in res):
            fail("resolution", res, "expected an int or [height, width] of ints")
        config.resolution = list(res)
    elif not isinstance(res, int):
        fail("resolution", res, "expected an int or [height, width] of ints")
    if min(config.image_size) <= 0:
        fail("resolution", res, "sizes must be positive")
    if config.decode_latent_frames is not None and config.decode_latent_frames < 1:
        fail("decode_latent_frames", config.decode_latent_frames, "must be at least 1 (or None: all)")
    if config.num_frames is not None and config.num_frames < 1:
        fail("num_frames", config.num_frames, "must be at least 1")
    if config.frame_rate < 1 or config.reward_frame_stride < 1:
        fail("frame_rate/reward_frame_stride", (config.frame_rate, config.reward_frame_stride), "must be at least 1")
    if config.rollout_steps < 1:
        fail("rollout_steps", config.rollout_steps, "must be at least 1")
    if config.time_shift is not None and config.time_shift <= 0:
        fail("time_shift", config.time_shift, "must be positive")
    if not 0 <= config.window_start_index < config.window_end_index <= config.window_grid_steps:
        fail(
            "window_start_index/window_end_index",
            (config.window_start_index, config.window_end_index),
            f"need 0 <= start < end <= window_grid_steps ({config.window_grid_steps})",
        )
    if config.num_levels < 11:
        fail("num_levels", config.num_levels, "must be at least 11 (m is drawn from [5, L - 5])")
    if not 0 < config.rho < 1:
        fail("rho", config.rho, "must be in the open interval (0, 1)")
    for name in ("denoise_discount", "inversion_discount"):
        value = getattr(config, name)
        if len(value) != 2:
            fail(name, value, "expected [start, end]")
        setattr(config, name, [float(v) for v in value])
    if config.learning_rate <= 0:
        fail("learning_rate", config.learning_rate, "must be positive")
    if config.max_sequence_length < 1:
        fail("max_sequence_length", config.max_sequence_length, "must be at least 1")
    budget = config.text_embedding_cache_memory_mb
    if isinstance(budget, bool) or not isinstance(budget, (int, float)) or not 0 <= budget < math.inf:
        fail("text_embedding_cache_memory_mb", budget, "expected a finite number of MiB >= 0")
    if config.control_words is not None:
        preset = control_word_preset(config.control_words)
        given = (list(config.positive_control_words), list(config.negative_control_words))
        # The recipe's lists are the defaults; the preset's own lists come back when a saved config is reloaded.
        if given not in [
            (RECIPE_POSITIVE_WORDS, RECIPE_NEGATIVE_WORDS),
            (list(preset.positive), list(preset.negative)),
        ]:
            fail(
                "control_words",
                config.control_words,
                "give either a preset or explicit positive_control_words/negative_control_words, not both",
            )
        config.positive_control_words = list(preset.positive)
        config.negative_control_words = list(preset.negative)
    for name in ("positive_control_words", "negative_control_words"):
        words = getattr(config, name)
        if isinstance(words, str):
            fail(name, words, "expected a list of words, not one string")
        # Emptiness is checked by the trainer: image-only rewards need no control words.
        if not all(isinstance(w, str) and w.strip() for w in words):
            fail(name, words, "expected a list of non-empty strings")
    if config.model_init_kwargs is not None:
        config.model_init_kwargs = _normalised_model_init_kwargs(config.model_init_kwargs, fail)
    if config.reward_weights is not None:
        config.reward_weights = [float(w) for w in config.reward_weights]
    if config.hinge_threshold is not None:
        values = (
            config.hinge_threshold if isinstance(config.hinge_threshold, (list, tuple)) else [config.hinge_threshold]
        )
        if not values or not all(isinstance(v, (int, float)) and math.isfinite(v) for v in values):
            fail("hinge_threshold", config.hinge_threshold, "expected a number or a list of numbers, one per reward")
        config.hinge_threshold = [float(v) for v in values]
    if config.trainable_dtype not in TRAINABLE_DTYPES:
        fail("trainable_dtype", config.trainable_dtype, f"expected one of {list(TRAINABLE_DTYPES)}")
    if config.sample_steps < 0:
        fail("sample_steps", config.sample_steps, "must be >= 0 (0: only at the end of training)")
    if config.sample_prompts is not None and not all(isinstance(p, str) and p.strip() for p in config.sample_prompts):
        fail("sample_prompts", config.sample_prompts, "expected a list of non-empty strings")
    if config.quantize_base is not None and config.quantize_base not in QUANTIZATIONS:
        fail("quantize_base", config.quantize_base, f"expected one of {list(QUANTIZATIONS)}")
    if config.memory_check not in MEMORY_CHECKS:
        fail("memory_check", config.memory_check, f"expected one of {list(MEMORY_CHECKS)}")
    if config.max_consecutive_nonfinite_steps < 0:
        fail("max_consecutive_nonfinite_steps", config.max_consecutive_nonfinite_steps, "must be >= 0 (0: never stop)")
    if config.reward_dtype is not None and config.reward_dtype not in REWARD_DTYPES:
        fail("reward_dtype", config.reward_dtype, f"expected one of {list(REWARD_DTYPES)}")
    if config.control_image_preprocessor not in (None, "canny", "depth"):
        fail("control_image_preprocessor", config.control_image_preprocessor, "expected 'canny', 'depth' or None")
    scales = config.controlnet_conditioning_scale
    scales = list(scales) if isinstance(scales, (list, tuple)) else [scales]
    if not scales or not all(isinstance(v, (int, float)) and math.isfinite(v) for v in scales):
        fail("controlnet_conditioning_scale", config.controlnet_conditioning_scale, "expected a number or a list")
    config.controlnet_conditioning_scale = [float(v) for v in scales]
    if isinstance(config.controlnet_name_or_path, str):
        config.controlnet_name_or_path = [config.controlnet_name_or_path]
    mode = config.controlnet_control_mode
    if mode is not None:
        mode = list(mode) if isinstance(mode, (list, tuple)) else [mode]
        if not mode or not all(isinstance(v, int) and not isinstance(v, bool) for v in mode):
            fail("controlnet_control_mode", config.controlnet_control_mode, "expected an int or a list of ints")
        config.controlnet_control_mode = mode
