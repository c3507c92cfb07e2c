"""Benchmarks of the engine adapters (Airflow, Dask, Ray): one script per engine."""

from __future__ import annotations

__all__: list[str] = []
