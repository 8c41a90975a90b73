"""Train a diffusers FLUX pipeline with SRPO (the same script as `srpo-trl train`).

    python examples/train_srpo.py --model_name_or_path black-forest-labs/FLUX.1-dev --dtype bfloat16 \
        --dataset_name prompts.txt --reward_funcs hpsv2.1 --output_dir flux-srpo --use_peft --lora_r 64
    accelerate launch --config_file examples/accelerate_configs/multi_gpu.yaml examples/train_srpo.py \
        --config examples/configs/flux_dev_hpsv2.yaml

The script lives in the package (`srpo_trl/scripts/train.py`) so that the `srpo-trl train` command and
`accelerate launch` run the same code; read it there: TrlParser over `ScriptArguments`, `SRPOConfig` and
TRL's `ModelConfig`, a prompt dataset from the Hub or local files, `SRPOTrainer`, save, and push.
"""

from srpo_trl.scripts.train import main

if __name__ == "__main__":
    main()
