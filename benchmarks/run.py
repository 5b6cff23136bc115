"""Thin script: ``python benchmarks/run.py [hybridxfer bench options]`` == ``hybridxfer bench``.

The harness lives in :mod:`hybridxfer.bench` so the installed CLI can run it; this file
only exists so the documented command works from a checkout too.
"""

from __future__ import annotations

import sys

from hybridxfer.bench import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
