"""``python -m vineyard.contrib.airflow gc|cleanup``: see :mod:`vineyard.contrib.airflow.cli`."""

from __future__ import annotations

from vineyard.contrib.airflow.cli import main

__all__: list[str] = []

if __name__ == "__main__":
    main()
