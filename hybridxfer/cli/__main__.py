"""``python -m hybridxfer.cli``: the same as the ``hybridxfer`` script (used by demo children)."""

from __future__ import annotations

import sys

from hybridxfer.cli import main

sys.exit(main())
