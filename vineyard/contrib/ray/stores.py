"""Which store a process talks to, and one cached connection per store per process.

Ray reuses worker processes across tasks, so connecting once per process (not per task)
matters: a connection is a socket plus the mappings of every segment it has seen. The cache
is keyed by socket path and by PID, so a forked child never uses its parent's socket.

A store is named by its socket path and the host it runs on. The default store of a process
is ``VINEYARD_IPC_SOCKET``, the variable upstream's adapters read; a reference carries the
socket of the store that holds its object, so a consumer on the same host needs no
configuration at all.
"""

from __future__ import annotations

import os
import socket
import threading
from typing import TYPE_CHECKING

from vineyard.errors import ConnectionFailedException, StoreUnavailable

if TYPE_CHECKING:
    from vineyard.client import Client

__all__ = ["client_for", "default_socket", "drop_client", "local_host"]

_clients: dict[tuple[int, str], Client] = {}
_lock = threading.Lock()


def local_host() -> str:
    """The host name references record, so a consumer can tell a remote store from a dead one."""
    return socket.gethostname()


def default_socket(socket_path: str | None = None) -> str:
    """``socket_path`` if given, else ``$VINEYARD_IPC_SOCKET``.

    Raises
    ------
    ConnectionFailedException
        Neither is set: the message says how to configure Ray workers.
    """
    path = socket_path or os.environ.get("VINEYARD_IPC_SOCKET")
    if not path:
        raise ConnectionFailedException(
            "no vineyard socket: pass socket=... or set VINEYARD_IPC_SOCKET for the driver and "
            "the Ray workers (e.g. runtime_env={'env_vars': {'VINEYARD_IPC_SOCKET': path}})"
        )
    return str(path)


def client_for(socket_path: str) -> Client:
    """This process's connection to the store at ``socket_path`` (made on first use).

    A connection the daemon dropped is replaced, so a restarted daemon is picked up.

    Raises
    ------
    ConnectionFailedException
        No daemon listens at ``socket_path`` (the message names it).
    """
    import vineyard

    key = (os.getpid(), socket_path)
    with _lock:
        client = _clients.get(key)
        if client is not None and client.connected:
            return client
        client = vineyard.connect(socket_path)
        _clients[key] = client
        return client


def drop_client(socket_path: str) -> None:
    """Forget the cached connection to ``socket_path`` (after it broke)."""
    with _lock:
        client = _clients.pop((os.getpid(), socket_path), None)
    if client is not None:
        try:
            client.close()
        except (OSError, StoreUnavailable):  # already broken: nothing left to release
            pass
