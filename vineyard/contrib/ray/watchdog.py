"""The process that deletes a Ray job's objects when its driver dies without cleaning up.

Started by the driver (``python -m vineyard.contrib.ray.watchdog``) the first time it
tracks a job; see :mod:`vineyard.contrib.ray.lifetime`. It reads JSON lines on stdin::

    {"op": "track", "job": "<session>/<job id>", "socket": "/path/to/vineyard.sock"}
    {"op": "forget", "job": "<session>/<job id>"}

The driver is the only writer of that pipe, so end-of-file means the driver is gone, however
it died. The watchdog then deletes the objects of every job it still tracks and exits. It
never imports Ray and holds no store connection while waiting.
"""

from __future__ import annotations

import json
import signal
import sys

__all__ = ["main"]


def main() -> int:
    """Track jobs until stdin closes, then clean up after them. Returns the exit status."""
    # The driver's terminal may hang up or be interrupted: neither should stop the cleanup.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    jobs: dict[str, set[str]] = {}
    for line in sys.stdin.buffer:
        try:
            message = json.loads(line)
        except ValueError:
            continue
        if message.get("op") == "track":
            jobs.setdefault(str(message["job"]), set()).add(str(message["socket"]))
        elif message.get("op") == "forget":
            jobs.pop(str(message["job"]), None)
    if not jobs:
        return 0
    from vineyard.contrib.ray.lifetime import cleanup_job

    status = 0
    for job, sockets in jobs.items():
        for socket in sorted(sockets):
            try:
                cleanup_job(job, socket)
            except Exception as exc:  # one dead store must not keep the others from being cleaned
                print(f"vineyard ray watchdog: could not clean {job} in {socket}: {exc}", file=sys.stderr)
                status = 1
    return status


if __name__ == "__main__":
    sys.exit(main())
