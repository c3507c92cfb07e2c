"""Daemons that die or stall: lease expiry, reaping, fencing. Real processes on loopback.

Effects are awaited by bounded polling, never by sleeping for a lease's TTL; every
process is stopped by its own PID (a stopped one is killed outright).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys

import numpy as np
import pandas as pd
import psutil
import pytest

import vineyard
from vineyard.data.dataframe import make_global_dataframe
from vineyard.errors import ObjectNotExistsException, VineyardException
from vineyard.store.cluster import EXIT_FENCED
from vineyard.testing import Daemon


def test_kill_9_expires_the_instance_and_a_survivor_reaps(make_nodes, wait_until):
    a, b, c = make_nodes(3, ttl=2)
    dead_id = a.client.instance_id
    x = a.client.put(pd.DataFrame({"v": [1, 2]}), persist=True, name="on-a")
    y = b.client.put(pd.DataFrame({"v": [3]}), persist=True, name="on-b")
    spanning = make_global_dataframe(c.client, [x, y]).id  # owned by c, refers to a's object
    only_b = make_global_dataframe(c.client, [y]).id
    assert b.client.exists(spanning)
    a.close_client()
    a.daemon.kill()  # kill -9: no revoke, the lease must expire

    wait_until(lambda: dead_id not in b.client.meta, what="b to see a's lease expire")
    assert dead_id not in c.client.meta
    for survivor in (b, c):
        assert not survivor.client.exists(x)
        with pytest.raises(ObjectNotExistsException):
            survivor.client.get_meta(x)
    # b, now the lowest live instance, deletes what referred to a, wherever it lives
    wait_until(lambda: not c.client.exists(spanning), what="the global object over a's data to be reaped")
    wait_until(lambda: "on-a" not in c.client.list_names("*", limit=100), what="a's name to be reaped")
    with pytest.raises(ObjectNotExistsException):
        b.client.get_name("on-a")
    # what did not refer to a stays
    assert c.client.exists(only_b)
    assert b.client.get_name("on-b") == y
    pd.testing.assert_frame_equal(c.client.get(y), pd.DataFrame({"v": [3]}))


def test_a_stalled_daemon_is_fenced_and_exits(make_nodes, wait_until):
    a, b = make_nodes(2, ttl=2)
    stalled_id = a.client.instance_id
    obj = a.client.put(np.arange(100), persist=True)
    pending = a.client.put(np.arange(5))  # transient: persisting it needs the cluster
    assert b.client.exists(obj)
    os.kill(a.pid, signal.SIGSTOP)  # a partition, as far as the cluster can tell
    try:
        wait_until(lambda: stalled_id not in b.client.meta, what="b to see a's lease expire")
        assert not b.client.exists(obj)
    finally:
        os.kill(a.pid, signal.SIGCONT)
    # a finds its lease gone: it refuses cluster operations, then exits non-zero
    with pytest.raises((VineyardException, OSError)):
        a.client.persist(pending)
    wait_until(lambda: a.daemon.proc.poll() is not None, what="the fenced daemon to exit")
    assert a.daemon.proc.returncode == EXIT_FENCED
    assert "lost the cluster membership" in a.daemon.log
    assert sorted(b.client.meta) == [b.client.instance_id]


def test_etcd_launch_runs_a_private_etcd_and_stops_it(tmp_path):
    daemon = Daemon(size="64Mi", rpc=True, args=["--meta", "etcd", "--etcd-launch", "--rpc-host", "127.0.0.1"])
    etcd_pid = None
    try:
        found = re.search(r"launched etcd \(pid (\d+)\)", daemon.log)
        assert found, daemon.log
        etcd_pid = int(found.group(1))
        assert psutil.pid_exists(etcd_pid)
        with vineyard.connect(daemon.socket) as client:
            assert client.instance_id == 0
            assert list(client.meta) == [0]
            oid = client.put("value", persist=True, name="l")
            assert client.get(name="l") == "value"
            assert client.get_name("l") == oid
        assert daemon.stop() == 0
        proc = psutil.Process(etcd_pid) if psutil.pid_exists(etcd_pid) else None
        assert proc is None or proc.status() == psutil.STATUS_ZOMBIE
    finally:
        daemon.kill()
        if etcd_pid is not None and psutil.pid_exists(etcd_pid):
            os.kill(etcd_pid, signal.SIGKILL)  # by the PID it told us; never by name


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--meta", "etcd"], "--etcd-endpoints"),
        (["--meta", "etcd", "--etcd-endpoints", "http://127.0.0.1:{port}"], "cannot join the cluster"),
        (["--meta", "etcd", "--etcd-endpoints", "http://127.0.0.1:{port}", "--lease-ttl", "0"], "--lease-ttl"),
    ],
)
def test_bad_cluster_flags_fail_at_start(tmp_path, flags, message):
    from vineyard.store.meta.launch import free_port

    port = free_port()  # nothing listens there
    sock = str(tmp_path / "v.sock")
    cmd = [sys.executable, "-m", "vineyard", "--socket", sock, "--norpc", *(f.format(port=port) for f in flags)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert done.returncode == 1, done.stderr
    assert message in done.stderr
    assert not os.path.exists(sock)


def test_upstream_flag_spellings_are_accepted():
    from vineyard.store.cli import build_parser

    args = build_parser().parse_args(
        ["--meta", "etcd", "--etcd_endpoint", "http://127.0.0.1:2379", "--etcd_prefix", "p", "--lease_ttl", "3"]
    )
    assert (args.meta, args.etcd_endpoints, args.etcd_prefix, args.lease_ttl) == (
        "etcd",
        "http://127.0.0.1:2379",
        "p",
        3,
    )
    assert build_parser().parse_args([]).meta == "local"
