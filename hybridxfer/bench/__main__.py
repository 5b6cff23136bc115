"""``python -m hybridxfer.bench``: same as ``hybridxfer bench``."""

from __future__ import annotations

import sys

from hybridxfer.bench import main

sys.exit(main())
