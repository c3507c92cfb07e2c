"""Ray's servers (GCS, raylet, workers, dashboard agents) listen on loopback only."""

from __future__ import annotations

import os

from vineyard.testing import non_loopback_listeners


def _pid() -> int:
    return os.getpid()


def test_ray_listens_on_loopback_only(ray_cluster):
    remote_pid = ray_cluster.remote(_pid)
    assert ray_cluster.get(remote_pid.remote()) != os.getpid()  # a worker is up
    assert non_loopback_listeners() == []
