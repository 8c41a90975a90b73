"""Train a diffusers FLUX pipeline with SRPO: `srpo-trl train`, and `examples/train_srpo.py`.

    # one GPU, LoRA
    srpo-trl train --model_name_or_path black-forest-labs/FLUX.1-dev --dtype bfloat16 \
        --dataset_name prompts.txt --reward_funcs hpsv2.1 --output_dir flux-srpo --use_peft --lora_r 64
    # a recipe on 8 GPUs (any packaged accelerate config: single_gpu, multi_gpu, fsdp2, deepspeed_zero2/3)
    srpo-trl train --accelerate_config fsdp2 --config examples/configs/flux_dev_hpsv2.yaml
    # the same, with accelerate directly
    accelerate launch --config_file examples/accelerate_configs/fsdp2.yaml examples/train_srpo.py \
        --config examples/configs/flux_dev_hpsv2.yaml

Arguments come from three dataclasses, as in TRL's scripts: `ScriptArguments` (data and rewards),
`SRPOConfig` (every SRPO and Trainer knob: `--rho 0.8`, `--resolution 720`, `--max_steps 200`, ...) and TRL's
`ModelConfig` (the pipeline, its dtype, and the LoRA: `--use_peft --lora_r 64 --lora_alpha 64
--lora_target_modules ...`). `--config recipe.yaml` sets any of them from a file.
"""

from dataclasses import dataclass, field

from peft import LoraConfig
from trl import ModelConfig, TrlParser

from srpo_trl import SRPOConfig, SRPOTrainer
from srpo_trl.data import load_prompt_dataset
from srpo_trl.output_folder import refuse_previous_result, resume_argument
from srpo_trl.rewards import reward_names


@dataclass
class ScriptArguments:
    dataset_name: str = field(
        metadata={
            "help": "Hub dataset id, local folder, or local file: .txt (one prompt a line), .csv, .json, .jsonl, "
            ".parquet. A column of images (see --dataset_image_column) turns on offline mode."
        }
    )
    dataset_split: str = field(default="train", metadata={"help": "Dataset split to train on (hub datasets)."})
    dataset_shuffle_seed: int | None = field(default=None, metadata={"help": "Shuffle the rows once with this seed."})
    reward_funcs: list[str] = field(
        default_factory=lambda: ["hpsv2.1"],
        metadata={
            "help": f"Reward names ({', '.join(reward_names())}), 'name:local_path', or local CLIP folders; weights "
            "via --reward_weights.",
            "nargs": "+",
        },
    )
    eval_dataset_name: str | None = field(
        default=None,
        metadata={
            "help": "Held-out prompts (same formats as --dataset_name) for evaluation: the held-out reward picks "
            "the best checkpoint (--metric_for_best_model reward, --load_best_model_at_end)."
        },
    )
    eval_dataset_split: str = field(default="train", metadata={"help": "Split of --eval_dataset_name to use."})
    eval_reward_funcs: list[str] | None = field(
        default=None,
        metadata={
            "help": "Rewards that only score the held-out images (never trained on), e.g. pickscore "
            "laion-aesthetic: a trained reward that rises while these fall is reward hacking.",
            "nargs": "+",
        },
    )


def lora_config(model_args: ModelConfig) -> LoraConfig | None:
    """The LoRA that TRL's `ModelConfig` describes (targets default to the model family's)."""
    if not model_args.use_peft:
        return None
    return LoraConfig(
        r=model_args.lora_r,
        lora_alpha=model_args.lora_alpha,
        lora_dropout=model_args.lora_dropout,
        target_modules=model_args.lora_target_modules,
        use_rslora=model_args.use_rslora,
        use_dora=model_args.use_dora,
    )


def make_parser() -> TrlParser:
    return TrlParser((ScriptArguments, SRPOConfig, ModelConfig))


def main(argv: list[str] | None = None) -> None:
    parser = make_parser()
    script_args, training_args, model_args = parser.parse_args_and_config(args=argv)
    if model_args.model_name_or_path is None:
        parser.error("--model_name_or_path is required")
    # A used output_dir stops here, before any dataset or model loads (SRPOTrainer.train() checks it again).
    resume = resume_argument(training_args.resume_from_checkpoint)
    try:
        refuse_previous_result(
            training_args.output_dir, "srpo-trl train", overwrite=training_args.overwrite_output_dir, resume=resume
        )
    except FileExistsError as error:
        parser.exit(2, f"error: {error}\n")
    if model_args.dtype not in (None, "auto"):
        training_args.model_init_kwargs = {**(training_args.model_init_kwargs or {}), "torch_dtype": model_args.dtype}
    dataset = load_prompt_dataset(
        script_args.dataset_name,
        split=script_args.dataset_split,
        prompt_column=training_args.dataset_prompt_column,
        shuffle_seed=script_args.dataset_shuffle_seed,
    )
    eval_dataset = None
    if script_args.eval_dataset_name is not None:
        eval_dataset = load_prompt_dataset(
            script_args.eval_dataset_name,
            split=script_args.eval_dataset_split,
            prompt_column=training_args.dataset_prompt_column,
        )
    trainer = SRPOTrainer(
        model=model_args.model_name_or_path,
        reward_funcs=script_args.reward_funcs,
        args=training_args,
        train_dataset=dataset,
        eval_dataset=eval_dataset,
        peft_config=lora_config(model_args),
        eval_reward_funcs=script_args.eval_reward_funcs,
    )
    trainer.train(resume_from_checkpoint=resume)
    trainer.save_model(training_args.output_dir)
    if training_args.push_to_hub:
        trainer.push_to_hub()


if __name__ == "__main__":
    main()
