"""The benchmark harness runs end to end on our store and writes the JSON it documents.

Functional only: no timing is asserted (timing has no place in tests). One tiny workload,
``--quick --only ours``, two small sizes, one round.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.slow


def test_quick_run_writes_expected_json(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("matplotlib")
    monkeypatch.syspath_prepend(str(REPO))
    from bench.run import main

    out = tmp_path / "results"
    code = main(["--quick", "--only", "ours", "--groups", "arrays", "--sizes", "8,1Ki", "--rounds", "1",
                 "--out", str(out)])
    assert code == 0

    doc = json.loads((out / "latest.json").read_text())
    assert set(doc) == {"meta", "runs", "summary"}
    assert doc["meta"]["systems"] == ["ours", "limits"]
    assert doc["meta"]["quick"] is True
    assert {"stats", "tables", "targets", "limits"} <= set(doc["summary"])

    runs = {r["system"]: r for r in doc["runs"]}
    assert runs["ours"]["ok"], runs["ours"]["error"]
    assert runs["limits"]["ok"], runs["limits"]["error"]
    rows = {(r["group"], r["case"]): r for r in runs["ours"]["result"]["rows"]}
    for group in ("put", "get"):
        for case in ("8 B", "1 KiB"):
            row = rows[(group, case)]
            assert row["error"] is None
            assert row["samples"]
            assert all(s > 0 for s in row["samples"])
    assert rows[("get", "8 B")]["zero_copy"] is True  # the address lies in /memfd:vineyard-<n>

    put_rows = {row["case"]: row for row in doc["summary"]["tables"]["put"]}
    assert set(put_rows) == {"8 B", "1 KiB"}
    assert {"best_peer", "ours_vs_best", "limit", "ours_vs_limit"} <= set(put_rows["8 B"])
    assert doc["summary"]["limits"]["rtt"] is not None
    names = {t["name"] for t in doc["summary"]["targets"]}
    assert "tiny get ≤ 0.25x upstream" in names
    assert all({"value", "threshold", "met"} <= set(t) for t in doc["summary"]["targets"])
    assert (out / "latest.png").stat().st_size > 0
    limit_rows = {(r["group"], r["case"]) for r in runs["limits"]["result"]["rows"]}
    assert {("memcpy1", "8 B"), ("memcpy2", "1 KiB")} <= limit_rows


def test_memcpy_limits_copy_into_faulted_in_shared_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    import numpy as np

    monkeypatch.syspath_prepend(str(REPO))
    from bench.worker_lib import shared_like

    src = np.arange(300_000, dtype=np.float64)
    segment, dst = shared_like(src)
    assert dst.shape == src.shape
    assert dst.dtype == src.dtype
    assert (dst == 1).all()
    address = dst.__array_interface__["data"][0]
    with open("/proc/self/maps") as f:
        spans = [line.split() for line in f]
    perms = [p[1] for p in spans if int(p[0].split("-")[0], 16) <= address < int(p[0].split("-")[1], 16)]
    assert len(perms) == 1
    assert perms[0].endswith("s")  # a shared mapping, not numpy's private memory
    del dst
    segment.close()
