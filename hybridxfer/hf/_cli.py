"""``hybridxfer layout from-hf CONFIG.json [--engine vllm] [-o FILE] [--model-id ID]``."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from hybridxfer.errors import HybridXferError
from hybridxfer.hf._importer import ENGINES, write_layout_from_hf

__all__ = ["main_from_hf"]


def main_from_hf(argv: Sequence[str] | None = None) -> int:
    """Run the ``from-hf`` subcommand; returns the exit status (0 ok, 1 error, 2 usage)."""
    parser = argparse.ArgumentParser(prog="hybridxfer layout from-hf",
                                     description="Derive a layout file from a Hugging Face config.json.")
    parser.add_argument("config", help="path to config.json")
    parser.add_argument("--engine", default="vllm", choices=ENGINES)
    parser.add_argument("-o", "--output", help="write here instead of stdout")
    parser.add_argument("--model-id", help="model id in the layout (default: from _name_or_path)")
    args = parser.parse_args(argv)
    try:
        text = write_layout_from_hf(args.config, args.output, engine=args.engine, model_id=args.model_id)
    except HybridXferError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if args.output is None:
        sys.stdout.write(text)
    return 0
