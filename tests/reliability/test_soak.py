"""A bounded soak: four client processes, ten seconds of mixed checksummed operations; the
report must show work done, no error, and the daemon's memory back where it started.
``python -m bench.soak`` runs the long version."""

from __future__ import annotations

from bench.soak import run


def test_soak_four_processes_ten_seconds(make_daemon) -> None:
    daemon = make_daemon(size="1Gi")
    report = run(seconds=10, procs=4, socket=daemon.socket)
    print(report.text())
    assert report.hung == [], "a worker did not finish"
    assert report.error_count == 0, "\n".join(report.errors)
    assert report.daemon_alive
    assert daemon.proc.poll() is None
    assert len(report.workers) == 4
    assert all(sum(w.ops.values()) > 0 and w.verified > 0 for w in report.workers)
    for kind in ("put", "get_own", "get_other", "hold", "delete", "wait_name", "status"):
        assert report.ops.get(kind, 0) > 0, kind
    assert report.memory_peak > report.memory_start  # it really stored things
    assert report.memory_end == report.memory_start, report.text()
    assert (report.objects_end, report.blobs_end) == (report.objects_start, report.blobs_start)
    assert "internal error" not in daemon.log
    assert "Traceback" not in daemon.log
