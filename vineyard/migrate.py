"""``python -m vineyard.migrate``: copy objects of other instances into a daemon, with progress.

::

    python -m vineyard.migrate --socket /var/run/vineyard.sock o0123456789abcdef [...]
    python -m vineyard.migrate --endpoint 127.0.0.1:9600 o0123456789abcdef

The daemon reached (by socket or RPC endpoint) copies each object from the instance that
owns it, once (see :mod:`vineyard.store.migration`); one line per object goes to stdout::

    o0123456789abcdef -> o0fedcba987654321

While a copy runs, its progress is read from the daemon's ``status`` on a second
connection and drawn with ``tqdm`` when it is installed, else logged as plain lines on
stderr (at most every 2 seconds). Exit status: 0 if every object was copied, 1 otherwise.
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from collections.abc import Sequence
from typing import Any

__all__ = ["Progress", "main"]


class Progress:
    """A byte-count progress display: a ``tqdm`` bar if available, else log lines.

    Parameters
    ----------
    label
        What is being copied (shown before the counts).
    stream
        Where the lines (or the bar) go.
    interval
        Minimum seconds between two plain log lines.
    """

    def __init__(self, label: str, stream: Any = None, interval: float = 2.0) -> None:
        self.label = label
        self.stream = stream if stream is not None else sys.stderr
        self.interval = interval
        self.done = 0
        self.total = 0
        self._last = 0.0
        self._bar: Any = None
        try:
            from tqdm import tqdm
        except ImportError:
            tqdm = None
        if tqdm is not None:
            self._bar = tqdm(total=None, unit="B", unit_scale=True, unit_divisor=1024, desc=label, file=self.stream)

    def update(self, done: int, total: int) -> None:
        """Show that ``done`` of ``total`` bytes have arrived."""
        self.done, self.total = done, total
        if self._bar is not None:
            if self._bar.total != total:
                self._bar.total = total
                self._bar.refresh()
            self._bar.update(done - self._bar.n)
            return
        now = time.monotonic()
        if now - self._last >= self.interval:
            self._last = now
            self._line()

    def _line(self) -> None:
        percent = 100.0 * self.done / self.total if self.total else 100.0
        print(
            f"{self.label}: {self.done / (1 << 20):.1f} of {self.total / (1 << 20):.1f} MiB ({percent:.0f}%)",
            file=self.stream,
            flush=True,
        )

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        elif self.total:
            self.done = self.total
            self._line()


def _connect(args: argparse.Namespace) -> Any:
    import vineyard

    if args.endpoint:
        return vineyard.Client(endpoint=args.endpoint, token=args.token)
    return vineyard.Client(socket=args.socket)


def migrate_one(client: Any, status_client: Any, object_id: Any, poll: float = 0.2, stream: Any = None) -> Any:
    """Migrate ``object_id`` with ``client`` while showing the daemon's progress; returns
    the copy's id.

    Raises
    ------
    VineyardException
        The migration failed (the daemon's error).
    """
    from vineyard.ids import ObjectID

    oid = ObjectID(object_id)
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["id"] = client.migrate(oid)
        except BaseException as exc:
            outcome["error"] = exc

    thread = threading.Thread(target=run, name=f"migrate-{oid!r}", daemon=True)
    thread.start()
    progress: Progress | None = None
    while thread.is_alive():
        thread.join(poll)
        if not thread.is_alive():
            break
        running = status_client.debug().get("migrations", {}).get(int(oid))
        if running is not None:
            if progress is None:
                progress = Progress(f"migrating {oid!r}", stream)
            progress.update(int(running[0]), int(running[1]))
    if progress is not None:
        progress.close()
    if "error" in outcome:
        raise outcome["error"]
    return outcome["id"]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m vineyard.migrate",
        description="Copy objects that live on other vineyard instances into this one.",
    )
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--socket", default=None, help="the daemon's IPC socket (default $VINEYARD_IPC_SOCKET)")
    where.add_argument("--endpoint", default=None, help="or its RPC endpoint, host:port")
    parser.add_argument("--token", default=None, help="RPC shared secret (default $VINEYARD_RPC_TOKEN)")
    parser.add_argument("objects", nargs="+", metavar="OBJECT_ID", help="ids like o0123456789abcdef")
    args = parser.parse_args(argv)
    from vineyard.errors import VineyardException
    from vineyard.ids import ObjectID

    try:
        ids = [ObjectID(text) for text in args.objects]
    except (ValueError, TypeError) as exc:
        parser.error(str(exc))
    try:
        client = _connect(args)
        status_client = _connect(args)
    except VineyardException as exc:
        print(f"vineyard.migrate: {exc}", file=sys.stderr)
        return 1
    failed = 0
    try:
        for oid in ids:
            try:
                copy = migrate_one(client, status_client, oid)
            except VineyardException as exc:
                print(f"vineyard.migrate: {oid!r}: {exc}", file=sys.stderr)
                failed += 1
                continue
            print(f"{oid!r} -> {copy!r}", flush=True)
    finally:
        client.close()
        status_client.close()
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
