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
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "demo":
        if args.max_steps < 1:
            raise SystemExit(f"srpo-trl demo: --max_steps must be at least 1, got {args.max_steps}")
        from .demo import run_demo

        run_demo(output_dir=args.output_dir, max_steps=args.max_steps, seed=args.seed)
    return 0


if __name__ == "__main__":
    sys.exit(main())
