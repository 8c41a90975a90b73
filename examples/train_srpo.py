"""Train a FLUX.1 pipeline with SRPO.

    python examples/train_srpo.py --model_name_or_path black-forest-labs/FLUX.1-dev \
        --dataset_name prompts.txt --reward_funcs hpsv2.1 --output_dir flux-srpo --use_lora
    accelerate launch examples/train_srpo.py --config recipe.yaml

Any `SRPOConfig` field is a flag too (`--rho 0.8`, `--resolution 720`, `--max_steps 200`, ...).
"""

from dataclasses import dataclass, field

from peft import LoraConfig
from trl import TrlParser

from srpo_trl import SRPOConfig, SRPOTrainer
from srpo_trl.data import load_prompt_dataset


@dataclass
class ScriptArguments:
    model_name_or_path: str = field(metadata={"help": "Hub id or local path of a FluxPipeline."})
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
            "help": "Reward names (hpsv2.1, hpsv2, pickscore, clip-vit-h-14, clip-vit-l-14, laion-aesthetic), "
            "'name:local_path', or local CLIP folders; weights via --reward_weights.",
            "nargs": "+",
        },
    )
    use_lora: bool = field(default=False, metadata={"help": "Train a LoRA instead of the full transformer."})
    lora_r: int = field(default=64, metadata={"help": "LoRA rank."})
    lora_alpha: int = field(default=64, metadata={"help": "LoRA alpha."})


def main():
    script_args, training_args = TrlParser((ScriptArguments, SRPOConfig)).parse_args_and_config()
    dataset = load_prompt_dataset(
        script_args.dataset_name,
        split=script_args.dataset_split,
        prompt_column=training_args.dataset_prompt_column,
        shuffle_seed=script_args.dataset_shuffle_seed,
    )
    peft_config = LoraConfig(r=script_args.lora_r, lora_alpha=script_args.lora_alpha) if script_args.use_lora else None
    trainer = SRPOTrainer(
        model=script_args.model_name_or_path,
        reward_funcs=script_args.reward_funcs,
        args=training_args,
        train_dataset=dataset,
        peft_config=peft_config,
    )
    trainer.train()
    trainer.save_model(training_args.output_dir)


if __name__ == "__main__":
    main()
