"""The `srpo-trl` console script: `train`, `plan`, `eval`, `demo`, `convert-hps`.

`srpo-trl train` hands its arguments to the training script's own parser (TRL's `TrlParser` over
`ScriptArguments`, `SRPOConfig` and `ModelConfig`), as `trl sft` does; `--accelerate_config NAME` first
re-launches it through `accelerate launch` with one of the packaged configs (or a YAML path).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

from . import __version__
from .control_words import CONTROL_WORD_PRESETS
from .rewards.registry import reward_names

ACCELERATE_CONFIGS = os.path.join(os.path.dirname(__file__), "accelerate_configs")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="srpo-trl", description="SRPO for diffusers pipelines.")
    parser.add_argument("--version", action="version", version=f"srpo-trl {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser(
        "train",
        add_help=False,
        help="Train with SRPO: srpo-trl train --config recipe.yaml [--accelerate_config NAME] [any SRPOConfig flag]; "
        "'srpo-trl train --help' lists every flag.",
    )

    commands.add_parser(
        "plan",
        add_help=False,
        help="Memory per process and step time of a train recipe, and whether it fits a GPU, without downloading: "
        "srpo-trl plan --config recipe.yaml --gpu H100 [--engine fsdp2 --num_processes 8]; 'srpo-trl plan --help'.",
    )

    evaluate = commands.add_parser("eval", help="Score a base pipeline and a trained result with reward models.")
    evaluate.add_argument("--model", required=True, help="Base pipeline: hub id or local folder.")
    evaluate.add_argument("--result", help="Trained result: LoRA folder, folder with transformer/, or hub id.")
    evaluate.add_argument(
        "--prompts", required=True, help="Held-out prompts: .txt/.csv/.json/.jsonl/.parquet or hub id."
    )
    evaluate.add_argument("--prompt_column", default="prompt", help="Column of the prompts (default: prompt).")
    evaluate.add_argument("--split", default="test", help="Split of a hub dataset (default: test).")
    evaluate.add_argument("--num_prompts", type=int, default=None, help="Use only the first N prompts.")
    evaluate.add_argument(
        "--reward_funcs", nargs="+", required=True, help=f"Reward names ({', '.join(reward_names())}) or 'name:path'."
    )
    evaluate.add_argument(
        "--control_words",
        default="hps-realism",
        choices=sorted(CONTROL_WORD_PRESETS),
        help="Control-word preset for SRP scores (default: hps-realism).",
    )
    evaluate.add_argument("--positive_control_words", nargs="+", help="Explicit positive words (override the preset).")
    evaluate.add_argument("--negative_control_words", nargs="+", help="Explicit negative words (override the preset).")
    evaluate.add_argument("--resolution", type=int, default=1024, help="Image size (default: 1024).")
    evaluate.add_argument("--num_inference_steps", type=int, default=28, help="Sampling steps (default: 28).")
    evaluate.add_argument(
        "--guidance_scale",
        type=float,
        default=None,
        help="Guidance scale (default: the family's, 3.5 for FLUX.1-dev; Qwen-Image: true CFG 4.0).",
    )
    evaluate.add_argument(
        "--guidance_scale_2",
        type=float,
        default=None,
        help="Wan 2.2 A14B: guidance of the low-noise expert (transformer_2); default: --guidance_scale.",
    )
    evaluate.add_argument(
        "--load_into_transformer_2",
        action="store_true",
        help="Wan 2.2 A14B: the --result LoRA is of the low-noise expert (a full fine-tune's transformer_2/ is "
        "found by its folder).",
    )
    evaluate.add_argument("--max_sequence_length", type=int, default=512, help="Text tokens (default: 512).")
    evaluate.add_argument(
        "--reference_image_column", default="reference_image", help="Images to edit (Kontext) or repaint (Fill)."
    )
    evaluate.add_argument("--num_frames", type=int, help="Video families: frames per video (default: the family's).")
    evaluate.add_argument("--frame_rate", type=int, default=16, help="Video families: fps of the written videos.")
    evaluate.add_argument(
        "--control_image_column", default="control_image", help="Control maps (Control, ControlNet)."
    )
    evaluate.add_argument("--mask_column", default="mask", help="Fill's masks, white = repaint (default: random).")
    evaluate.add_argument(
        "--control_image_preprocessor", choices=["canny", "depth"], help="Make the control maps from the images."
    )
    evaluate.add_argument("--depth_model_name_or_path", help="Depth model of the 'depth' preprocessor and reward.")
    evaluate.add_argument(
        "--controlnet_name_or_path", nargs="+", help="FLUX.1 ControlNet(s) to join to --model (hub ids or folders)."
    )
    evaluate.add_argument(
        "--controlnet_conditioning_scale", type=float, nargs="+", help="ControlNet scale(s) (default: the pipeline's)."
    )
    evaluate.add_argument("--batch_size", type=int, default=4, help="Prompts per pipeline call (default: 4).")
    evaluate.add_argument("--seed", type=int, default=0, help="Seed of the first batch (default: 0).")
    evaluate.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    evaluate.add_argument("--device", default=None, help="Device (default: cuda if available, else cpu).")
    evaluate.add_argument("--output_dir", default="srpo-eval", help="Where eval.json and eval_grid.png go.")
    evaluate.add_argument(
        "--overwrite_output_dir",
        action="store_true",
        help="Write into an --output_dir that holds a previous result (its eval.json and eval_grid.png are "
        "replaced); without it such a folder stops the evaluation before any model loads.",
    )

    demo = commands.add_parser(
        "demo",
        help="SRPO on the shipped tiny FLUX.1-architecture model, on the CPU: photo vs drawing (about 2 minutes).",
        description="Train a LoRA with SRPO on the tiny FLUX.1-architecture model shipped in the package (2.4 M "
        "parameters, 64 px, drawn shapes), against the tiny CLIP reward shipped beside it, with the control words "
        "+photo / -drawing in the roles of the paper's Real / Painting. Before and after training it samples the "
        "held-out prompts, whose style is left open, and reports how many the reward reads as photos and how many "
        "keep the prompted shape, colour and position. It writes the LoRA, a model card, a before/after grid, a "
        "reward curve and the results to --output_dir, and prints the `srpo-trl eval` command that scores the "
        "result in the stock diffusers pipeline. A content-keeping reward (shapes-content, weight 0.2) trains beside "
        "the style reward, so that the style moves without the content being given up. About two minutes on 2 CPU "
        "cores at the default 300 steps (106-119 s measured on a 2-core AVX-512 machine); no GPU, no download.",
    )
    demo.add_argument("--output_dir", default="srpo-demo", help="Folder for weights, images and model card.")
    demo.add_argument(
        "--overwrite_output_dir",
        action="store_true",
        help="Replace a previous demo in --output_dir (deleted first); without it a used folder stops the demo.",
    )
    demo.add_argument("--max_steps", type=int, default=300, help="Training steps (default: 300).")
    demo.add_argument("--seed", type=int, default=0, help="Seed of the LoRA, data order and noise.")
    demo.add_argument(
        "--words",
        nargs=2,
        metavar=("POSITIVE", "NEGATIVE"),
        default=["photo", "drawing"],
        help="SRP control words (default: photo drawing); 'drawing photo' trains the other way.",
    )
    demo.add_argument("--learning_rate", type=float, default=None, help="LoRA learning rate (default: 1e-4).")
    demo.add_argument(
        "--content_weight",
        type=float,
        default=None,
        help="Weight of the content-keeping reward shapes-content (default: 0.2; 0: the style reward alone).",
    )

    convert = commands.add_parser(
        "convert-hps",
        help="Convert an HPSv2/HPSv2.1 open_clip checkpoint into a safetensors transformers CLIP folder.",
    )
    convert.add_argument("checkpoint", help="HPS_v2.1_compressed.pt (or another open_clip ViT-H-14 state dict).")
    convert.add_argument("output_dir", help="Folder to write; load it with reward_funcs='hpsv2.1:<output_dir>'.")
    convert.add_argument(
        "--tokenizer",
        default="laion/CLIP-ViT-H-14-laion2B-s32B-b79K",
        help="CLIP tokenizer folder or hub id to save beside the model (default: the ViT-H-14 one HPS uses).",
    )
    convert.add_argument("--vision_heads", type=int, default=16, help="Attention heads of the image tower.")
    convert.add_argument("--text_heads", type=int, default=16, help="Attention heads of the text tower.")
    return parser


def accelerate_config_path(name: str) -> str:
    """A packaged accelerate config by name (`multi_gpu`, `fsdp2`, ...), or a YAML path as is."""
    if os.path.isfile(name):
        return name
    path = os.path.join(ACCELERATE_CONFIGS, f"{name}.yaml")
    if not os.path.isfile(path):
        names = sorted(f[:-5] for f in os.listdir(ACCELERATE_CONFIGS) if f.endswith(".yaml"))
        raise SystemExit(f"srpo-trl train: --accelerate_config {name!r} is neither a file nor one of {names}")
    return path


def _train(argv: list[str]) -> int:
    if "--accelerate_config" in argv:
        i = argv.index("--accelerate_config")
        if i + 1 >= len(argv):
            raise SystemExit("srpo-trl train: --accelerate_config needs a name or a path")
        config = accelerate_config_path(argv[i + 1])
        rest = argv[:i] + argv[i + 2 :]
        command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", config]
        command += ["-m", "srpo_trl.scripts.train", *rest]
        return subprocess.call(command)
    from .scripts.train import main as train_main

    train_main(argv)
    return 0


def _eval(args) -> int:
    import torch

    from .control_words import control_word_preset
    from .data import load_prompt_dataset
    from .evaluation import EvalSettings, run_eval

    preset = control_word_preset(args.control_words)
    dataset = load_prompt_dataset(args.prompts, split=args.split, prompt_column=args.prompt_column)
    if args.num_prompts is not None:
        dataset = dataset.select(range(min(args.num_prompts, len(dataset))))
    prompts = list(dataset[args.prompt_column])
    image_columns = (args.reference_image_column, args.control_image_column, args.mask_column)
    columns = {name: list(dataset[name]) for name in image_columns if name in dataset.column_names}
    if not prompts:
        raise SystemExit(f"srpo-trl eval: {args.prompts!r} holds no prompts")
    settings = EvalSettings(
        resolution=args.resolution,
        num_inference_steps=args.num_inference_steps,
        guidance_scale=args.guidance_scale,
        guidance_scale_2=args.guidance_scale_2,
        load_into_transformer_2=args.load_into_transformer_2,
        seed=args.seed,
        batch_size=args.batch_size,
        max_sequence_length=args.max_sequence_length,
        positive_control_words=args.positive_control_words or list(preset.positive),
        negative_control_words=args.negative_control_words or list(preset.negative),
        reference_image_column=args.reference_image_column,
        control_image_column=args.control_image_column,
        mask_column=args.mask_column,
        control_image_preprocessor=args.control_image_preprocessor,
        depth_model_name_or_path=args.depth_model_name_or_path,
        controlnet_conditioning_scale=args.controlnet_conditioning_scale,
        controlnet_name_or_path=args.controlnet_name_or_path,
        num_frames=args.num_frames,
        frame_rate=args.frame_rate,
    )
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    run_eval(
        args.model,
        args.result,
        prompts,
        args.reward_funcs,
        args.output_dir,
        settings,
        dtype=getattr(torch, args.dtype),
        device=device,
        overwrite_output_dir=args.overwrite_output_dir,
        columns=columns,
    )
    return 0


def _convert_hps(args) -> None:
    from .rewards.hps import convert_hps

    if not os.path.isfile(args.checkpoint):
        raise SystemExit(f"srpo-trl convert-hps: checkpoint {args.checkpoint!r} does not exist")
    folder = convert_hps(
        args.checkpoint, args.output_dir, args.tokenizer, vision_heads=args.vision_heads, text_heads=args.text_heads
    )
    print(f"wrote {folder}; use it with reward_funcs='hpsv2.1:{folder}' (or 'hpsv2:...')")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "train":  # the training script parses its own (many) flags
        return _train(argv[1:])
    if argv and argv[0] == "plan":  # the recipe is train's, parsed by the training script's parser
        from .planning.command import main as plan_main

        return plan_main(argv[1:])
    args = build_parser().parse_args(argv)
    try:
        return _run(args)
    except FileExistsError as error:  # a used output folder: the message says the ways on
        raise SystemExit(f"error: {error}") from None


def _run(args) -> int:
    if args.command == "demo":
        if args.max_steps < 1:
            raise SystemExit(f"srpo-trl demo: --max_steps must be at least 1, got {args.max_steps}")
        from .demo import run_demo

        options = {} if args.learning_rate is None else {"learning_rate": args.learning_rate}
        if args.content_weight is not None:
            options["content_weight"] = args.content_weight
        run_demo(
            output_dir=args.output_dir,
            max_steps=args.max_steps,
            seed=args.seed,
            words=tuple(args.words),
            overwrite_output_dir=args.overwrite_output_dir,
            **options,
        )
    elif args.command == "eval":
        return _eval(args)
    elif args.command == "convert-hps":
        _convert_hps(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
