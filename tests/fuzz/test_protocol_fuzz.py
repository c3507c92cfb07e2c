"""The fuzz targets of :mod:`fuzz_protocol`, bounded for CI; run them longer standalone with
``python -m tests.fuzz.fuzz_protocol --runs N``."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from fuzz_protocol import InProcessDaemon, LiveDaemon, check_decoder, payloads
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

REPO = Path(__file__).resolve().parents[2]
_HEALTH = [HealthCheck.too_slow, HealthCheck.data_too_large]


@settings(max_examples=500, deadline=None, suppress_health_check=_HEALTH)
@given(data=st.one_of(payloads(), st.binary(max_size=512)), cuts=st.lists(st.integers(0, 2048), max_size=8))
def test_decoder_never_raises_anything_but_protocol_errors(data: bytes, cuts: list[int]) -> None:
    check_decoder(data, cuts)


@settings(max_examples=300, deadline=None, suppress_health_check=_HEALTH)
@given(data=payloads())
def test_request_handling_in_process(data: bytes) -> None:
    daemon = InProcessDaemon()
    try:
        daemon.check_example(data)
    finally:
        daemon.close()


@pytest.fixture(scope="module")
def live() -> LiveDaemon:
    target = LiveDaemon()
    yield target  # type: ignore[misc]
    target.close()


@settings(max_examples=400, deadline=None, suppress_health_check=_HEALTH)
@given(data=payloads())
def test_live_daemon_survives_hostile_connections(live: LiveDaemon, data: bytes) -> None:
    live.check_example(data)


def test_live_daemon_logged_no_internal_error_and_frees_everything(live: LiveDaemon) -> None:
    live.check_example(b"")
    live.check_end()


def test_standalone_runner(tmp_path) -> None:
    """``python -m tests.fuzz.fuzz_protocol`` runs every target and says so."""
    out = subprocess.run(
        [sys.executable, "-m", "tests.fuzz.fuzz_protocol", "--runs", "5", "--target", "all", "--seed", "1"],
        capture_output=True, text=True, timeout=120, cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert out.returncode == 0, out.stderr[-3000:]
    for target in ("decoder", "handler", "live"):
        assert f"fuzz {target}: passed" in out.stdout

