"""``hybridxfer layout from-hf CONFIG.json [--engine vllm] [-o FILE] [--model-id ID]``: a layout
file from a Hugging Face ``config.json`` (the importer is :mod:`hybridxfer.hf`)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from hybridxfer.errors import HybridXferError
from hybridxfer.hf import ENGINES, write_layout_from_hf

__all__ = ["main_from_hf"]


def main_from_hf(argv: Sequence[str] | None = None) -> int:
    """Run the ``from-hf`` subcommand; returns the exit status (0 ok, 1 error, 2 usage)."""
    parser = argparse.ArgumentParser(prog="hybridxfer layout from-hf",
                                     description="Derive a layout file from a Hugging Face config.json.")
    parser.add_argument("config", help="path to config.json")
    parser.add_argument("--engine", default="vllm", choices=ENGINES)
    parser.add_argument("-o", "--output", help="write here instead of stdout")
    parser.add_argument("--model-id", help="model id in the layout (default: from the config's _name_or_path, "
                                           "a Hugging Face cache path, or the file name; never model_type)")
    args = parser.parse_args(argv)
    from hybridxfer.cli._model_id import ModelIdError, derive_model_id

    try:
        model_id, origin = (args.model_id, "") if args.model_id else derive_model_id(args.config)
        text = write_layout_from_hf(args.config, args.output, engine=args.engine, model_id=model_id)
    except ModelIdError as exc:
        print(f"hybridxfer layout from-hf: error: {exc}", file=sys.stderr)
        return 2
    except HybridXferError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if origin:
        print(f"model id {model_id!r} ({origin}; --model-id sets another)", file=sys.stderr)
    if args.output is None:
        sys.stdout.write(text)
    return 0
