"""Side-by-side benchmarks of this store, upstream Vineyard and Ray: ``python -m bench``.

The orchestrator (:mod:`bench.run`) runs every system's workloads in that system's own
interpreter (:mod:`bench.systems`, ``bench/worker.py``), in interleaved rounds, and prints
ratio tables and target verdicts (:mod:`bench.report`). See ``bench/README.md``.
"""

__all__: list[str] = []
