"""Fixtures of the reliability suite: the repository on ``sys.path`` (for :mod:`bench.soak`)."""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))  # bench.soak holds the workers the soak and concurrency tests share
