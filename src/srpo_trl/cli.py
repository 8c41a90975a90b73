"""The `srpo-trl` console script."""

from __future__ import annotations

import argparse
import sys

from . import __version__


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="srpo-trl", description="SRPO for diffusers pipelines.")
    parser.add_argument("--version", action="version", version=f"srpo-trl {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser("demo", help="Train a tiny FLUX.1 model on the CPU with a visible colour reward.")
    demo.add_argument("--output_dir", default="srpo-demo", help="Folder for weights, images and model card.")
    demo.add_argument("--max_steps", type=int, default=300, help="Training steps (default: 300).")
    demo.add_argument("--seed", type=int, default=0, help="Seed of the tiny model, data order and noise.")
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


def _convert_hps(args) -> None:
    import os

    from .rewards.hps import convert_hps

    if not os.path.isfile(args.checkpoint):
        raise SystemExit(f"srpo-trl convert-hps: checkpoint {args.checkpoint!r} does not exist")
    folder = convert_hps(
        args.checkpoint, args.output_dir, args.tokenizer, vision_heads=args.vision_heads, text_heads=args.text_heads
    )
    print(f"wrote {folder}; use it with reward_funcs='hpsv2.1:{folder}' (or 'hpsv2:...')")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "demo":
        if args.max_steps < 1:
            raise SystemExit(f"srpo-trl demo: --max_steps must be at least 1, got {args.max_steps}")
        from .demo import run_demo

        run_demo(output_dir=args.output_dir, max_steps=args.max_steps, seed=args.seed)
    elif args.command == "convert-hps":
        _convert_hps(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
