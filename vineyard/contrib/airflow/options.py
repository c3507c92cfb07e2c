"""The ``[vineyard]`` options of the XCom backend, read from Airflow's configuration.

Every option can be set in ``airflow.cfg`` or as ``AIRFLOW__VINEYARD__<OPTION>``; the socket
also falls back to ``VINEYARD_IPC_SOCKET``, as upstream's backend did. Options are read on
every use rather than cached: they are a handful of dictionary look-ups, and a cached copy
would ignore a change made for one task (``env`` of a worker, a test).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

__all__ = ["DEFAULT_THRESHOLD", "SECTION", "XComOptions", "load_options"]

SECTION = "vineyard"
# Below 1 MiB Airflow's own serialization is cheap and a store object would only add a
# lifetime to manage.
DEFAULT_THRESHOLD = 1 << 20
_ON_UNAVAILABLE = ("error", "inline")


@dataclass(frozen=True, slots=True)
class XComOptions:
    """The backend's settings.

    Attributes
    ----------
    ipc_socket
        The daemon's UNIX socket, or ``None`` when neither ``[vineyard] ipc_socket`` nor
        ``VINEYARD_IPC_SOCKET`` is set.
    persist
        Persist stored objects (publish their metadata to the cluster).
    threshold_bytes
        Values of a storable type at least this large go to the store; ``-1`` keeps
        everything in the database.
    on_unavailable
        ``"error"`` fails the task when the store cannot take a value; ``"inline"`` falls
        back to Airflow's serialization with one warning.
    ttl_seconds
        Stored XCom objects older than this are deleted whenever a task stores a value and
        by ``airflow vineyard gc``; ``None`` turns the sweep off.
    """

    ipc_socket: str | None = None
    persist: bool = False
    threshold_bytes: int = DEFAULT_THRESHOLD
    on_unavailable: str = "error"
    ttl_seconds: float | None = None


def _conf() -> Any:
    # The task SDK's parser exists in every Airflow 3 process (workers have no core config).
    from airflow.sdk.configuration import conf

    return conf


def load_options() -> XComOptions:
    """Read the options now.

    Raises
    ------
    ValueError
        An option has a value it cannot take; the message names the option.
    """
    conf = _conf()

    def get(name: str) -> str:
        return str(conf.get(SECTION, name, fallback="") or "").strip()

    socket = get("ipc_socket") or os.environ.get("VINEYARD_IPC_SOCKET", "").strip() or None
    persist = get("persist").lower()
    if persist not in ("", "true", "false", "1", "0", "t", "f", "yes", "no"):
        raise ValueError(f"[{SECTION}] persist must be true or false, not {persist!r}")
    threshold_text = get("threshold_bytes")
    try:
        threshold = int(threshold_text) if threshold_text else DEFAULT_THRESHOLD
    except ValueError:
        raise ValueError(f"[{SECTION}] threshold_bytes must be an integer, not {threshold_text!r}") from None
    if threshold < -1:
        raise ValueError(f"[{SECTION}] threshold_bytes must be -1 (off), 0 or a positive size, not {threshold}")
    mode = get("on_unavailable").lower() or "error"
    if mode not in _ON_UNAVAILABLE:
        raise ValueError(f"[{SECTION}] on_unavailable must be one of {', '.join(_ON_UNAVAILABLE)}, not {mode!r}")
    ttl_text = get("ttl_seconds")
    try:
        ttl = float(ttl_text) if ttl_text else 0.0
    except ValueError:
        raise ValueError(f"[{SECTION}] ttl_seconds must be a number of seconds, not {ttl_text!r}") from None
    return XComOptions(
        ipc_socket=socket,
        persist=persist in ("true", "1", "t", "yes"),
        threshold_bytes=threshold,
        on_unavailable=mode,
        ttl_seconds=ttl if ttl > 0 else None,
    )
