"""A daemon's session: one lease, kept alive on a thread, and word when it is lost.

The daemon's registry entry and its persisted objects are written under
:attr:`Session.lease`, so they vanish together when the daemon dies. A daemon that was
merely stopped or cut off must not go on as if it were still a member: once the lease is
lost (etcd says so, or no keep-alive succeeded for a whole TTL, after which etcd will have
expired it), :attr:`Session.lost` is set and ``on_lost`` is called once, so the daemon can
fence itself (refuse cluster operations and exit).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from vineyard.errors import EtcdErrorException
from vineyard.store.meta import LeaseExpired, MetaBackend

if TYPE_CHECKING:
    from types import TracebackType

__all__ = ["Session"]

_log = logging.getLogger(__name__)


class Session:
    """A lease of ``ttl`` seconds on ``backend``, renewed every ``interval`` seconds.

    Parameters
    ----------
    backend
        Where the lease lives.
    ttl
        The lease's time to live, in seconds.
    interval
        Seconds between keep-alives (default ``ttl / 3``); after a failed one the next
        comes sooner.
    on_lost
        Called once, on the keep-alive thread, with the reason, when the lease is lost.

    Raises
    ------
    EtcdErrorException
        The lease could not be granted.
    """

    def __init__(
        self,
        backend: MetaBackend,
        ttl: int = 10,
        *,
        interval: float | None = None,
        on_lost: Callable[[str], None] | None = None,
    ) -> None:
        self.backend = backend
        self.ttl = ttl
        self.interval = interval if interval is not None else ttl / 3
        self.lease = backend.grant(ttl)
        self.lost = threading.Event()
        self.reason = ""
        self.keepalives = 0
        self._on_lost = on_lost
        self._stop = threading.Event()
        self._last_ok = time.monotonic()
        self._thread = threading.Thread(target=self._run, name=f"vineyard-lease-{self.lease:x}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        wait = self.interval
        while not self._stop.wait(wait):
            try:
                self.backend.keepalive(self.lease)
            except LeaseExpired as exc:
                self._lose(f"lease {self.lease:x} is gone: {exc}")
                return
            except EtcdErrorException as exc:
                if time.monotonic() - self._last_ok > self.ttl:
                    self._lose(f"no keep-alive of lease {self.lease:x} succeeded for {self.ttl} s: {exc}")
                    return
                wait = self.interval / 2
                continue
            self._last_ok = time.monotonic()
            self.keepalives += 1
            wait = self.interval

    def _lose(self, reason: str) -> None:
        self.reason = reason
        self.lost.set()
        if self._on_lost is not None:
            try:
                self._on_lost(reason)
            except Exception:
                _log.exception("on_lost callback of lease %x failed", self.lease)

    def silent_for(self) -> float:
        """Seconds since the last keep-alive succeeded (or the grant). Past :attr:`ttl`,
        the lease may have expired even if nobody has said so yet: after a stop of the
        whole process (SIGSTOP, a frozen VM), the keep-alive thread has not run either."""
        return time.monotonic() - self._last_ok

    def check(self) -> None:
        """Fence: raise if the lease is lost.

        Raises
        ------
        LeaseExpired
            The session is over; the daemon must not act as a cluster member.
        """
        if self.lost.is_set():
            raise LeaseExpired(self.reason, lease=self.lease)

    def close(self, revoke: bool = True) -> None:
        """Stop the keep-alives and (by default) revoke the lease, deleting its keys now."""
        self._stop.set()
        if self._thread is not threading.current_thread():
            self._thread.join()
        if revoke and not self.lost.is_set():
            try:
                self.backend.revoke(self.lease)
            except EtcdErrorException:
                _log.warning("could not revoke lease %x; it will expire in %d s", self.lease, self.ttl)

    def __enter__(self) -> Session:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
