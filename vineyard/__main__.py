"""``python -m vineyard``: run the daemon."""

from __future__ import annotations

import sys

from vineyard.store.cli import main

if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit(0)
