"""``python -m vineyard.migrate``'s progress display, with stand-in clients (no daemon)."""

from __future__ import annotations

import io
import sys
import threading
import types
from typing import Any

import pytest

from vineyard.ids import ObjectID
from vineyard.migrate import Progress, migrate_one

ORIGIN = ObjectID(0x1234)


class SlowDaemon:
    """Answers ``migrate`` once ``status`` has reported progress a few times."""

    def __init__(self, total: int = 100 << 20) -> None:
        self.total = total
        self.polls = 0
        self.done = threading.Event()

    def migrate(self, oid: Any) -> ObjectID:
        assert oid == ORIGIN
        if not self.done.wait(10):
            raise AssertionError("the progress was never polled")
        return ObjectID(0x99)

    def debug(self) -> dict[str, Any]:
        self.polls += 1
        if self.polls >= 4:
            self.done.set()
        return {"migrations": {int(ORIGIN): [min(self.total, self.polls * (self.total // 4)), self.total]}}


def test_plain_lines_without_tqdm(monkeypatch):
    monkeypatch.setitem(sys.modules, "tqdm", None)  # as if it were not installed
    out = io.StringIO()
    daemon = SlowDaemon()
    assert migrate_one(daemon, daemon, ORIGIN, poll=0.01, stream=out) == ObjectID(0x99)
    lines = out.getvalue().splitlines()
    assert lines[0].startswith(f"migrating {ORIGIN!r}: ")
    assert lines[-1].endswith("of 100.0 MiB (100%)")
    assert daemon.polls >= 4


def test_a_tqdm_bar_when_installed(monkeypatch):
    bars: list[Any] = []

    class FakeBar:
        def __init__(self, **kw: Any) -> None:
            self.kw, self.total, self.n, self.closed = kw, kw["total"], 0, False
            bars.append(self)

        def refresh(self) -> None:
            pass

        def update(self, n: int) -> None:
            self.n += n

        def close(self) -> None:
            self.closed = True

    monkeypatch.setitem(sys.modules, "tqdm", types.SimpleNamespace(tqdm=FakeBar))
    daemon = SlowDaemon()
    migrate_one(daemon, daemon, ORIGIN, poll=0.01, stream=io.StringIO())
    (bar,) = bars
    assert bar.total == 100 << 20
    assert 0 < bar.n <= bar.total
    assert bar.closed


def test_an_error_reaches_the_caller():
    class Failing(SlowDaemon):
        def migrate(self, oid: Any) -> ObjectID:
            raise ValueError("no")

    daemon = Failing()
    with pytest.raises(ValueError, match="no"):
        migrate_one(daemon, daemon, ORIGIN, poll=0.01, stream=io.StringIO())
    assert Progress("x", io.StringIO()).total == 0
