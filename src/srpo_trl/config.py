"""SRPOConfig: every knob of SRPO, as `transformers.TrainingArguments`."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import TrainingArguments

from .config_checks import check_srpo_fields
from .control_words import CONTROL_WORD_PRESETS, RECIPE_NEGATIVE_WORDS, RECIPE_POSITIVE_WORDS


@dataclass
class SRPOConfig(TrainingArguments):
    r"""
    Configuration class for the [`SRPOTrainer`].

    This class holds only the parameters specific to SRPO; see [`~transformers.TrainingArguments`] for the rest.
    Defaults follow the published recipe (FLUX.1-dev + HPSv2.1, see docs/method.md) where it applies.

    Parameters:
        > Parameters that control the model

        model_init_kwargs (`dict[str, Any]` or `str`, *optional*):
            Keyword arguments for `DiffusionPipeline.from_pretrained`, used when the `model` argument of the
            [`SRPOTrainer`] is a hub id or a path. The dtype may be given as `dtype` (transformers 5 and TRL) or
            `torch_dtype` (diffusers), as a string such as `"bfloat16"` or `"auto"`.
        trainable_dtype (`str`, *optional*, defaults to `"float32"`):
            Dtype of the trainable parameters (the LoRA, or the whole transformer in full fine-tuning) and so of the
            optimizer's states, whatever dtype the pipeline was loaded in: `"float32"` keeps fp32 master weights, as
            the recipe does, while the frozen weights stay in the loaded dtype and compute runs under bf16 autocast
            (`bf16=True`). `"bfloat16"` trains in pure bf16 to save memory (2 bytes a parameter instead of 4 for
            the weights, and for each AdamW moment), at a cost: at the recipe's lr 5e-6 most bf16 updates round to
            nothing (measured on a tiny model: 3 AdamW steps left half of the LoRA tensors unchanged). `"auto"`
            keeps the dtype the pipeline was loaded in.
        max_sequence_length (`int`, *optional*, defaults to `512`):
            Maximum number of T5 tokens per prompt (512 for FLUX.1-dev, 256 for FLUX.1-schnell).
        transformer_gradient_checkpointing (`bool`, *optional*, defaults to `True`):
            Recompute the transformer's activations in the backward pass to save memory. The TrainingArguments
            flag `activation_checkpointing` (or `gradient_checkpointing`) turns this on too.
        vae_gradient_checkpointing (`bool`, *optional*, defaults to `True`):
            Recompute the VAE decoder's activations in the backward pass; the recipe notes this "reduces memory
            greatly". VAEs that do not support it (Qwen-Image's, in diffusers 0.42) keep them, with a warning.
        memory_check (`str`, *optional*, defaults to `"warn"`):
            On a CUDA device, before any weights load, `srpo_trl.planning` estimates the run's peak per process from
            the model's configs (as `srpo-trl plan` does) and compares it with the device's free memory: `"warn"`
            logs a warning naming the changes that would fit, `"strict"` stops the run, `"off"` skips the check
            (which takes 10-40 s of CPU for a 12-32 B model). The estimate and the measured
            `torch.cuda.max_memory_allocated` go in the logs (`memory/planned_peak_gb`, `memory/max_allocated_gb`).
        torch_compile_regions (`bool`, *optional*, defaults to `True`):
            With TrainingArguments' `torch_compile=True`, compile each repeated block of the transformer (the
            double- and single-stream blocks) instead of the whole model: accelerate's regional compilation, the
            same idea as diffusers' `compile_repeated_blocks`. Every block of a kind reuses one compiled graph, so
            the first step compiles in a fraction of the whole-model time. `False` compiles the whole model.

        > Parameters that control the data

        dataset_prompt_column (`str`, *optional*, defaults to `"prompt"`):
            Column of the dataset that holds the prompts.
        remove_unused_columns (`bool`, *optional*, defaults to `False`):
            Kept `False`: the trainer reads the columns it needs itself.
        dataset_image_column (`str`, *optional*, defaults to `"image"`):
            Column of real images (PIL images or paths) for offline mode.
        dataset_reference_image_column (`str`, *optional*, defaults to `"reference_image"`):
            Column of reference images (PIL or paths) for image-editing families (FLUX.1 Kontext): the image each
            prompt edits, resized and centre-cropped to `resolution`. Used as conditioning, never rewarded.
        dataset_control_image_column (`str`, *optional*, defaults to `"control_image"`):
            Column of control images (PIL or paths) for the FLUX.1 Canny / Depth Control family: the edge or depth map
            each prompt follows, resized and centre-cropped to `resolution`. Used as conditioning, and by the
            consistency rewards. With `control_image_preprocessor`, the column holds the images the maps are made of.
        control_image_preprocessor (`str`, *optional*):
            Make the control images on the fly from `dataset_control_image_column`'s images: `"canny"` (kornia's Canny)
            or `"depth"` (the depth model `depth_model_name_or_path`, normalised to [0, 1], near is bright).
        depth_model_name_or_path (`str`, *optional*, defaults to `"depth-anything/Depth-Anything-V2-Small-hf"`):
            transformers depth-estimation model (hub id or local folder) of the `"depth"` preprocessor.
        dataset_mask_column (`str`, *optional*, defaults to `"mask"`):
            Column of masks (PIL or paths, white where the image is repainted) for FLUX.1 Fill, whose image to repaint
            is `dataset_reference_image_column`'s. Without the column, seeded random masks are drawn per row
            (`srpo_trl.masks.random_mask`: boxes and brush strokes).
        controlnet_name_or_path (`list[str]`, *optional*):
            FLUX.1 ControlNet(s) to train beside: hub ids or folders of `FluxControlNetModel`s. With a model id or path,
            the trainer builds `FluxControlNetPipeline.from_pretrained(model, controlnet=...)` (several: a
            `FluxMultiControlNetModel`), as diffusers documents it; a pipeline object already holds its ControlNet.
        controlnet_conditioning_scale (`list[float]`, *optional*, defaults to `[1.0]`):
            Scale of a FLUX.1 ControlNet's residuals: one value, or one per ControlNet of a multi-ControlNet.
        controlnet_control_mode (`list[int]`, *optional*):
            A union ControlNet's mode (the kind of control image, as the stock pipeline's `control_mode`): one value, or
            one per ControlNet. Required by union ControlNets; other ControlNets ignore it.
        offline (`bool`, *optional*):
            Offline mode (the paper's real-image variant): `x0` is the VAE encoding of the dataset's image, resized
            and centre-cropped to `resolution`, with fresh noise per sample, instead of a rollout. Defaults to on
            when the train dataset has `dataset_image_column`.
        cache_text_embeddings (`bool`, *optional*, defaults to `True`):
            Encode the datasets' prompts once before training and reuse the embeddings.
        text_embedding_cache_dir (`str`, *optional*):
            Keep the cache on disk, shared across runs; entries are keyed by the text encoders' identity and the
            prompt, so a changed encoder never reuses a stale embedding.
        release_text_encoders (`bool`, *optional*, defaults to `True`):
            After caching, move the text encoders to the CPU, freeing their accelerator memory (T5-XXL: 9.5 GB).
        text_embedding_cache_memory_mb (`float`, *optional*, defaults to `4096`):
            Most MiB of text embeddings each process keeps in RAM (FLUX.1: 4.2 MB a prompt, so about 1,000
            prompts). When the datasets' prompts fit, they are all encoded before training and the text encoders
            are released; when they do not, prompts are encoded when first needed and kept in a least-recently-used
            cache under this budget, and the text encoders stay on the accelerator, unless `text_embedding_cache_dir`
            is set: then every prompt is precomputed to disk (each process its share) and the encoders are released.

        > Parameters that control the rollout

        resolution (`int` or `list[int]`, *optional*, defaults to `720`):
            Training image size: one int for a square, or `[height, width]`. Must be a multiple of the pipeline's
            latent granularity (16 for FLUX).
        num_frames (`int`, *optional*):
            Video families (Wan): frames per training video (the family's default when unset: Wan's 81).
        frame_rate (`int`, *optional*, defaults to `16`):
            Video families: frames per second of the videos srpo-trl writes (samples, evaluation); Wan's 16.
        decode_latent_frames (`int`, *optional*):
            Video families: in the training step, decode (with gradient) only the first N latent frames, the first
            `4 (N - 1) + 1` video frames, for the rewards. Exact (Wan's VAE is causal in time) and what makes real
            sizes fit: the decode's backward costs about `H W (20 KB + 17 KB F)` for `F` frames of `H x W`, or with
            `vae_gradient_checkpointing` (chunked over time) about `H W (90 KB + 2.4 KB F)` (docs/models.md): at
            480 x 832, 81 frames about 556 or 115 GB, N = 1 about 15 GB. Default: all.
        reward_frame_stride (`int`, *optional*, defaults to `4`):
            Video families: an image reward scores every `reward_frame_stride`-th decoded frame (the first included) and
            averages, with SRP's control words per frame.
        rollout_steps (`int`, *optional*, defaults to `25`):
            Euler steps of the gradient-free rollout that produces the clean latent `x0`.
        rollout_guidance_scale (`float`, *optional*):
            Guidance of the rollout. Defaults to the family's (`ModelAdapter.default_guidance`): `1.0` for FLUX (an
            input of guidance-distilled models, not CFG); `4.0` for Qwen-Image (true CFG with a negative prompt: two
            transformer calls per step).
        guidance_scale_2 (`float`, *optional*):
            Wan 2.2 A14B (two experts): guidance of the low-noise expert `transformer_2` in the rollout and in the
            sample images, as the stock pipeline's `guidance_scale_2` (also given to it by the model card's snippet);
            the high-noise expert keeps `rollout_guidance_scale` / `sample_guidance_scale`. Unset, the low-noise
            expert uses those too, as the stock pipeline defaults it to `guidance_scale`. The two training calls use
            `train_guidance_scale` whichever expert trains: `guidance_scale_2` is the sampler's, not the training
            calls'. Refused on a pipeline without two experts.
        per_process_noise (`bool`, *optional*, defaults to `False`):
            The recipe draws the same rollout noise `eps` and levels on every process (each with its own prompts).
            With `True`, each process takes its own slice of one draw for the global batch, so `N` processes with
            batch `B` see exactly what one process with batch `N * B` would.
        time_shift (`float`, *optional*):
            Static time shift `k` of the rollout and window grids. Defaults to the family's: the pipeline
            scheduler's `shift` for FLUX.1 (3 for FLUX.1-dev, as the recipe uses), FLUX.2's resolution-dependent
            shift, and 1 (no shift, as SRPO's Qwen-Image script) for Qwen-Image.

        > Parameters that control Direct-Align

        train_guidance_scale (`float`, *optional*):
            Guidance in the two training calls. Defaults to the family's: `3.5` for FLUX (the recipe's), `1.0` for
            Qwen-Image (SRPO's Qwen-Image script trains the conditional velocity alone; above 1, true CFG doubles
            the training calls' cost).
        window_grid_steps (`int`, *optional*, defaults to `50`):
            Steps of the shifted grid `S` that the training window is cut from.
        window_start_index (`int`, *optional*, defaults to `5`):
            The window starts (noisiest level) at `S[window_start_index]` (about 0.964 in the recipe).
        window_end_index (`int`, *optional*, defaults to `25`):
            The window ends (least noisy level) at `S[window_end_index]` (0.75 in the recipe).
        num_levels (`int`, *optional*, defaults to `1000`):
            Number of levels `L` the window is discretised into.
        rho (`float`, *optional*, defaults to `0.9`):
            Gap parameter in (0, 1): the denoise step spans `K = min(int((1 - rho) L) + 1, L - m, m)` levels.
        denoise_discount (`list[float]`, *optional*, defaults to `[0.10, 0.25]`):
            SRP `k` of the denoise branch, a linear ramp over the `L` levels (PickScore recipe: `[0.1, 0.5]`).
        inversion_discount (`list[float]`, *optional*, defaults to `[0.30, 0.01]`):
            SRP `k` of the inversion branch, a linear ramp over the `L` levels (PickScore recipe: `[0.6, 0.01]`).
        use_inversion_branch (`bool`, *optional*, defaults to `True`):
            Train the inversion branch (control words swapped), the regulariser against reward hacking. Without
            it, a small negative early `denoise_discount` is the authors' suggested substitute.
        hinge_threshold (`float` or `list[float]`, *optional*):
            `tau` of each reward's loss `relu(tau - R) / 2` per branch, on that reward's scale: one value for every
            reward, or one per reward function. Unset, each reward uses its own (`Reward.hinge_threshold`: the
            recipe's 0.7 for HPS, PickScore and CLIP, whose SRP scores lie around 0.1-0.4; 10, the top of its scale,
            for `laion-aesthetic`; 0.7 for a plain callable unless it says otherwise). Above the threshold a sample
            gives no gradient; the logged `hinge_active/{branch}` says how many samples still train, and a warning
            names a reward whose hinge has been inactive on every sample for several steps.

        > Parameters that control the reward

        positive_control_words (`list[str]`, *optional*, defaults to the recipe's):
            Words put before the prompt for the reward's positive text, cycled by step:
            `["Natural-lighting", "Detail", "Detailed", "Real"]`.
        negative_control_words (`list[str]`, *optional*, defaults to the recipe's):
            Words for the negative text, cycled by step: `["Concept art", "Painting", "Anime", "Flat", "Oil"]`.
        control_words (`str`, *optional*):
            A preset that sets both word lists: `"hps-realism"` (the recipe's), `"detail"`, `"brightness"` (see
            `srpo_trl.control_words`). Give either a preset or changed lists, not both.
        reward_weights (`list[float]`, *optional*):
            Weight of each reward function; all `1.0` when unset.
        reward_dtype (`str`, *optional*):
            Dtype the reward models run in: `"float32"`, `"bfloat16"` or `"float16"`. Defaults to `"bfloat16"` when
            `bf16` is on, else `"float32"`. Preprocessing and scores stay in float32.

        > Parameters that control progress reports and artefacts

        sample_prompts (`list[str]`, *optional*):
            Prompts whose images (same seed each time) are logged to the trackers of `report_to` (`"trackio"`,
            TRL's recommended tracker, `"tensorboard"`, `"wandb"`) every `sample_steps` steps and at the end of training, when they are also written to
            `output_dir/samples/` for the model card.
        sample_guidance_scale (`float`, *optional*):
            Guidance of the sample images, the value the model card's loading snippet uses. Defaults to the
            family's inference default: `3.5` for FLUX.1-dev, `4.0` (true CFG) for Qwen-Image. The training
            rollout's own guidance is `rollout_guidance_scale`. The samples are made
            with `rollout_steps` Euler steps at `resolution`, in eval mode, and the model card says so.
        sample_steps (`int`, *optional*, defaults to `0`):
            Steps between sample images; `0` logs them only at the end.
        plot_reward_curve (`bool`, *optional*, defaults to `True`):
            At the end of training, write `reward_curve.png` (the logged rewards against the step) to `output_dir`.

        > Parameters that save memory

        quantize_base (`str`, *optional*):
            With a LoRA, store the frozen transformer's linear weights in `"int8"`, `"nf4"` (QLoRA's 4-bit
            NormalFloat; CPU and GPU) or `"int4"` (CUDA, torchao's `mslk` kernels) through torchao
            (`pip install "srpo-trl[quant]"`); the LoRA trains in full precision on top and saves as a usual
            diffusers LoRA. Other savers: `vae_slicing`, `transformer_gradient_checkpointing`,
            `vae_gradient_checkpointing`, `bf16`, `reward_dtype`, `release_text_encoders`, and TrainingArguments'
            `optim` (e.g. `"adamw_torch_8bit"`).
        vae_slicing (`bool`, *optional*, defaults to `True`):
            Decode one image at a time (the VAE's `enable_slicing`), in training and in sampling. The VAE
            decoder's backward then holds one image's activations instead of those of both branches of every
            prompt: on FLUX.1-dev at 720 px the largest single saving after the checkpointing itself.

        > Parameters that guard the run

        overwrite_output_dir (`bool`, *optional*, defaults to `False`):
            Let `train()` write into an `output_dir` that holds a previous result (weights, checkpoints, samples, eval
            results): that result is deleted when training starts (other files stay). Without it, and without
            `resume_from_checkpoint`, such a folder stops the run before its first step: a relaunch never silently
            replaces the run before it (transformers 5 dropped this guard; srpo-trl keeps it).
        allow_cudnn_attention (`bool`, *optional*, defaults to `False`):
            Let `scaled_dot_product_attention` use cuDNN's fused kernel in training and sampling. Off because its
            backward returned NaN gradients, and an illegal memory access at FLUX.1-dev size, on an H200 with
            torch 2.11 (see `srpo_trl.attention`); the flash, memory-efficient and math kernels are used instead.
        max_consecutive_nonfinite_steps (`int`, *optional*, defaults to `5`):
            A step whose loss or gradient is NaN or inf is skipped (weights unchanged), logged and counted
            (`nonfinite_steps`); after this many in a row training stops with an error, before anything is saved.
            `0` never stops. SIGTERM or SIGINT during training writes a checkpoint after the current step and stops.

    Defaults that differ from [`~transformers.TrainingArguments`] (the recipe's): `learning_rate=5e-6`,
    `weight_decay=1e-4`, `lr_scheduler_type="constant"`, `max_grad_norm=0.1`, `per_device_train_batch_size=1`,
    `logging_steps=10`, `remove_unused_columns=False`, `metric_for_best_model="reward"` (the held-out reward
    `evaluate()` returns as `eval_reward`, higher is better: quality peaks after some steps and collapses if
    training goes on, so `load_best_model_at_end=True` with `save_total_limit` keeps and loads the best
    checkpoint, and transformers' `EarlyStoppingCallback` stops on it), and `bf16` on when CUDA is available
    (unless `fp16`).
    """

    # Model
    model_init_kwargs: dict[str, Any] | str | None = field(
        default=None,
        metadata={"help": "Keyword arguments for `DiffusionPipeline.from_pretrained` when `model` is a string."},
    )
    trainable_dtype: str = field(
        default="float32",
        metadata={
            "help": "Dtype of the trainable weights and optimizer states: float32 (fp32 master weights), "
            "bfloat16 (pure bf16, saves memory; small updates round away) or auto (as loaded)."
        },
    )
    max_sequence_length: int = field(default=512, metadata={"help": "Maximum T5 tokens per prompt."})
    transformer_gradient_checkpointing: bool = field(
        default=True, metadata={"help": "Gradient checkpointing in the transformer."}
    )
    vae_gradient_checkpointing: bool = field(
        default=True, metadata={"help": "Gradient checkpointing in the VAE decoder."}
    )
    memory_check: str = field(
        default="warn",
        metadata={"help": "Before loading on CUDA: estimate the peak and warn (warn), stop (strict) or skip (off)."},
    )
    torch_compile_regions: bool = field(
        default=True,
        metadata={"help": "With torch_compile: compile the transformer's repeated blocks (regional compilation)."},
    )

    # Data
    dataset_prompt_column: str = field(default="prompt", metadata={"help": "Dataset column holding the prompts."})
    dataset_image_column: str = field(
        default="image", metadata={"help": "Dataset column holding real images (PIL or paths) for offline mode."}
    )
    dataset_reference_image_column: str = field(
        default="reference_image",
        metadata={"help": "Dataset column holding each prompt's reference image (image-editing families: Kontext)."},
    )
    dataset_control_image_column: str = field(
        default="control_image",
        metadata={"help": "Dataset column holding each prompt's control image (FLUX.1 Canny / Depth, ControlNet)."},
    )
    control_image_preprocessor: str | None = field(
        default=None,
        metadata={
            "help": "Make control images from the control column's images on the fly: 'canny' or 'depth'.",
            "choices": ["canny", "depth"],
        },
    )
    depth_model_name_or_path: str = field(
        default="depth-anything/Depth-Anything-V2-Small-hf",
        metadata={"help": "Depth-estimation model of the 'depth' control preprocessor (hub id or local folder)."},
    )
    dataset_mask_column: str = field(
        default="mask",
        metadata={"help": "Dataset column of FLUX.1 Fill's masks (white = repaint); random masks when absent."},
    )
    controlnet_name_or_path: list[str] | None = field(
        default=None,
        metadata={"help": "FLUX.1 ControlNet(s) (hub ids or folders) joined to the base model's pipeline."},
    )
    controlnet_conditioning_scale: list[float] = field(
        default_factory=lambda: [1.0],
        metadata={"help": "ControlNet residual scale: one value, or one per ControlNet of a multi-ControlNet."},
    )
    controlnet_control_mode: list[int] | None = field(
        default=None,
        metadata={"help": "A union ControlNet's control mode: one value, or one per ControlNet."},
    )
    offline: bool | None = field(
        default=None,
        metadata={
            "help": "Offline mode: x0 from the dataset's real images (VAE) instead of a rollout. Default: on when "
            "the train dataset has `dataset_image_column`."
        },
    )
    cache_text_embeddings: bool = field(
        default=True, metadata={"help": "Encode each prompt once and reuse its text embeddings."}
    )
    text_embedding_cache_dir: str | None = field(
        default=None,
        metadata={"help": "Keep cached text embeddings on disk here, keyed by text-encoder identity and prompt."},
    )
    release_text_encoders: bool = field(
        default=True,
        metadata={"help": "After caching, move the text encoders to the CPU (frees ~9.5 GB for FLUX.1-dev)."},
    )
    text_embedding_cache_memory_mb: float = field(
        default=4096,
        metadata={
            "help": "Most MiB of text embeddings kept in RAM per process (FLUX.1: 4.2 MB a prompt). Prompts beyond "
            "it are encoded when first needed (LRU), or precomputed to text_embedding_cache_dir when set."
        },
    )
    remove_unused_columns: bool = field(
        default=False, metadata={"help": "Kept False: the trainer reads the columns it needs itself."}
    )

    # Rollout
    resolution: list[int] = field(
        default_factory=lambda: [720],
        metadata={"help": "Training image size: one int for a square, or height and width.", "nargs": "+"},
    )
    num_frames: int | None = field(
        default=None, metadata={"help": "Video families: frames per training video (default: the family's)."}
    )
    frame_rate: int = field(default=16, metadata={"help": "Video families: frames per second of written videos."})
    decode_latent_frames: int | None = field(
        default=None,
        metadata={"help": "Video families: decode only the first N latent frames for the rewards (default: all)."},
    )
    reward_frame_stride: int = field(
        default=4, metadata={"help": "Video families: an image reward scores every N-th frame and averages."}
    )
    rollout_steps: int = field(default=25, metadata={"help": "Euler steps of the gradient-free rollout."})
    rollout_guidance_scale: float | None = field(
        default=None,
        metadata={"help": "Guidance of the rollout; defaults to the family's (FLUX 1.0, Qwen-Image 4.0)."},
    )
    guidance_scale_2: float | None = field(
        default=None,
        metadata={
            "help": "Wan 2.2 A14B: guidance of the low-noise expert (transformer_2) in the rollout and samples, as the "
            "stock pipeline's guidance_scale_2; defaults to the rollout's / samples' guidance."
        },
    )
    time_shift: float | None = field(
        default=None, metadata={"help": "Static time shift k; defaults to the scheduler config's `shift`."}
    )

    per_process_noise: bool = field(
        default=False,
        metadata={
            "help": "Give each process its own rollout noise and levels (slices of one global draw) instead of the "
            "recipe's noise shared by all processes."
        },
    )

    # Direct-Align
    train_guidance_scale: float | None = field(
        default=None,
        metadata={"help": "Guidance in the two training calls; defaults to the family's (FLUX 3.5, Qwen-Image 1.0)."},
    )
    window_grid_steps: int = field(default=50, metadata={"help": "Steps of the grid the window is cut from."})
    window_start_index: int = field(default=5, metadata={"help": "Window start (noisiest) index on the grid."})
    window_end_index: int = field(default=25, metadata={"help": "Window end (least noisy) index on the grid."})
    num_levels: int = field(default=1000, metadata={"help": "Number of levels L in the window."})
    rho: float = field(default=0.9, metadata={"help": "Gap parameter in (0, 1)."})
    denoise_discount: list[float] = field(
        default_factory=lambda: [0.10, 0.25], metadata={"help": "SRP k ramp of the denoise branch (start, end)."}
    )
    inversion_discount: list[float] = field(
        default_factory=lambda: [0.30, 0.01], metadata={"help": "SRP k ramp of the inversion branch (start, end)."}
    )
    use_inversion_branch: bool = field(default=True, metadata={"help": "Train the inversion branch too."})
    hinge_threshold: list[float] | None = field(
        default=None,
        metadata={
            "help": "tau of each reward's loss relu(tau - R) / 2: one value, or one per reward; unset, each reward's "
            "own (0.7 for HPS/PickScore/CLIP, 10 for laion-aesthetic)."
        },
    )

    # Reward
    positive_control_words: list[str] = field(
        default_factory=lambda: list(RECIPE_POSITIVE_WORDS),
        metadata={"help": "Positive control words, cycled by step."},
    )
    negative_control_words: list[str] = field(
        default_factory=lambda: list(RECIPE_NEGATIVE_WORDS),
        metadata={"help": "Negative control words, cycled by step."},
    )
    control_words: str | None = field(
        default=None,
        metadata={
            "help": "Control-word preset setting both lists: "
            + ", ".join(f"'{name}'" for name in CONTROL_WORD_PRESETS)
            + " ('hps-realism' is the recipe's)."
        },
    )
    reward_weights: list[float] | None = field(
        default=None, metadata={"help": "Weight of each reward function; all 1.0 when unset."}
    )
    reward_dtype: str | None = field(
        default=None,
        metadata={"help": "Reward model dtype: float32, bfloat16 or float16; bfloat16 when bf16 is on, else float32."},
    )

    # Progress and artefacts
    sample_prompts: list[str] | None = field(
        default=None,
        metadata={"help": "Prompts whose images are logged to the report_to trackers.", "nargs": "+"},
    )
    sample_guidance_scale: float | None = field(
        default=None,
        metadata={"help": "Guidance of the sample images (the model card's); defaults to the family's (3.5, 4.0)."},
    )
    sample_steps: int = field(
        default=0, metadata={"help": "Log sample images every this many steps (0: only at the end of training)."}
    )
    plot_reward_curve: bool = field(
        default=True, metadata={"help": "Write reward_curve.png to output_dir at the end of training."}
    )

    # Memory
    quantize_base: str | None = field(
        default=None,
        metadata={
            "help": "LoRA only: store the frozen transformer in 'int8', 'nf4' or 'int4' (torchao; the [quant] extra)."
        },
    )
    vae_slicing: bool = field(
        default=True, metadata={"help": "Decode one image at a time (less VAE memory in the backward)."}
    )

    # Guards
    overwrite_output_dir: bool = field(
        default=False,
        metadata={
            "help": "Replace a previous result in output_dir (deleted when training starts); without it, or "
            "--resume_from_checkpoint, a used output_dir stops the run before its first step."
        },
    )
    allow_cudnn_attention: bool = field(
        default=False,
        metadata={"help": "Let attention use cuDNN's fused kernel (its backward gave NaN on H200, torch 2.11)."},
    )
    max_consecutive_nonfinite_steps: int = field(
        default=5,
        metadata={"help": "Stop after this many optimizer steps in a row with a NaN/inf loss or gradient (0: never)."},
    )

    # TrainingArguments defaults replaced by the recipe's.
    learning_rate: float = field(default=5e-6, metadata={"help": "AdamW learning rate (recipe: 5e-6)."})
    weight_decay: float = field(default=1e-4, metadata={"help": "AdamW weight decay (recipe: 1e-4)."})
    lr_scheduler_type: str = field(default="constant", metadata={"help": "Learning-rate schedule."})
    max_grad_norm: float = field(default=0.1, metadata={"help": "Gradient clipping max norm (recipe: 0.1)."})
    per_device_train_batch_size: int = field(default=1, metadata={"help": "Prompts per device per step."})
    logging_steps: float = field(default=10, metadata={"help": "Log every X update steps."})
    metric_for_best_model: str | None = field(
        default="reward",
        metadata={
            "help": "Evaluation metric that picks the best checkpoint (save_total_limit keeps it, "
            "load_best_model_at_end loads it): the held-out reward `eval_reward` by default."
        },
    )
    bf16: bool | None = field(
        default=None,
        metadata={"help": "bf16 mixed precision; defaults to True on a GPU that supports bf16, when fp16 is off."},
    )

    def __post_init__(self):
        if self.bf16 is None:  # a GPU without bf16 (V100, T4) trains in fp32 rather than failing
            self.bf16 = torch.cuda.is_available() and torch.cuda.is_bf16_supported() and not self.fp16
        if isinstance(self.model_init_kwargs, str):
            self.model_init_kwargs = json.loads(self.model_init_kwargs)
        self._validate_srpo_fields()
        super().__post_init__()
        # The Trainer would call `gradient_checkpointing_enable` on the model, which diffusers models lack:
        # route the generic flag to the transformer's own switch instead.
        if self.activation_checkpointing:
            self.transformer_gradient_checkpointing = True
            self.activation_checkpointing = self.gradient_checkpointing = False
        # Batches are prompt strings, which accelerate cannot broadcast from rank 0: every rank reads its own
        # shard of a streamed dataset instead.
        if self.accelerator_config.dispatch_batches is None:
            self.accelerator_config.dispatch_batches = False

    @property
    def image_size(self) -> tuple[int, int]:
        """`(height, width)` from `resolution`."""
        res = self.resolution
        if isinstance(res, int):
            return res, res
        res = list(res)
        return (res[0], res[0]) if len(res) == 1 else (res[0], res[1])

    def _validate_srpo_fields(self) -> None:
        check_srpo_fields(self)

    @property
    def reward_torch_dtype(self) -> torch.dtype:
        """The dtype reward models run in (see `reward_dtype`)."""
        name = self.reward_dtype or ("bfloat16" if self.bf16 else "float32")
        return getattr(torch, name)
