"""Thin script for the planner benchmark: ``python benchmarks/planner.py [--repeats N]``.

Runs only the planner benchmark (compile + bind for nemotron-3-nano-30b-a3b, 128k
tokens, P1->D4 and P4->D2, with and without coalescing, beside a per-descriptor loop).
"""

from __future__ import annotations

import sys

from hybridxfer.bench import main

if __name__ == "__main__":
    sys.exit(main(["--no-e2e", *sys.argv[1:]]))
