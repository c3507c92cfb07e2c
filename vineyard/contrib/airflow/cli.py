"""``airflow vineyard gc`` and ``airflow vineyard cleanup`` (also ``python -m vineyard.contrib.airflow``).

``gc`` deletes XCom objects that no row in Airflow's database refers to (rows removed by
``airflow db clean``, the UI or the REST API, runs deleted, a task that died between storing
its value and writing its row) and applies ``[vineyard] ttl_seconds``. ``cleanup`` deletes
the objects of one dag, run or task by label. Both need the store's socket and, for ``gc``,
Airflow's database, so run them where the scheduler or API server runs, on each host that
has a store.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

__all__ = ["cleanup_command", "gc_command", "get_cli_commands", "main"]


def _connect(socket: str | None) -> Any:
    import vineyard
    from vineyard.contrib.airflow.options import load_options

    path = socket or load_options().ipc_socket
    if not path:
        raise SystemExit("no vineyard socket: pass --socket or set [vineyard] ipc_socket / VINEYARD_IPC_SOCKET")
    return vineyard.connect(path)


def gc_command(args: argparse.Namespace) -> None:
    """Delete XCom objects no row refers to, and those past the TTL."""
    from vineyard.contrib.airflow.cleanup import collect_garbage, referenced_objects, sweep_expired
    from vineyard.contrib.airflow.options import load_options

    with _connect(args.socket) as client:
        expired = []
        ttl = load_options().ttl_seconds
        if ttl is not None and not args.dry_run:
            expired = sweep_expired(client, ttl)
        orphans = collect_garbage(client, referenced_objects(), grace_seconds=args.grace_seconds, dry_run=args.dry_run)
    verb = "would delete" if args.dry_run else "deleted"
    print(f"{verb} {len(orphans)} unreferenced XCom object(s)" + "".join(f"\n  {o!r}" for o in orphans))
    if expired:
        print(f"deleted {len(expired)} XCom object(s) older than {ttl:g} s" + "".join(f"\n  {o!r}" for o in expired))


def cleanup_command(args: argparse.Namespace) -> None:
    """Delete the XCom objects of a dag, run or task."""
    from vineyard.contrib.airflow.cleanup import delete_run_objects

    with _connect(args.socket) as client:
        deleted = delete_run_objects(client, args.dag_id, args.run_id, task_id=args.task_id, older_than=args.older_than)
    print(f"deleted {len(deleted)} XCom object(s)" + "".join(f"\n  {o!r}" for o in deleted))


_ARGS: dict[str, tuple[tuple[str, ...], dict[str, Any]]] = {
    "socket": (("--socket",), {
        "help": "the daemon's socket (default: ipc_socket of the vineyard config section, or VINEYARD_IPC_SOCKET)",
    }),
    "dry_run": (("--dry-run",), {"action": "store_true", "help": "only list what would be deleted"}),
    "grace_seconds": (("--grace-seconds",), {
        "type": float, "default": 300.0,
        "help": "leave objects younger than this (their row may not be written yet; default 300)",
    }),
    "dag_id": (("--dag-id",), {"required": True, "help": "the dag whose objects to delete"}),
    "run_id": (("--run-id",), {"help": "only this run"}),
    "task_id": (("--task-id",), {"help": "only this task"}),
    "older_than": (("--older-than",), {"type": float, "help": "only objects older than this many seconds"}),
}
_COMMANDS = {
    "gc": ("Delete XCom objects no XCom row refers to (and those older than the vineyard ttl_seconds option)",
           gc_command, ("socket", "dry_run", "grace_seconds")),
    "cleanup": ("Delete the XCom objects of a dag, run or task", cleanup_command,
                ("socket", "dag_id", "run_id", "task_id", "older_than")),
}


def get_cli_commands() -> list[Any]:
    """The ``airflow vineyard`` command group (provider entry ``cli``)."""
    from airflow.cli.cli_config import ActionCommand, Arg, GroupCommand, lazy_load_command

    def arg(name: str) -> Any:
        flags, kw = _ARGS[name]
        return Arg(flags, dest=name, **kw)

    return [
        GroupCommand(
            name="vineyard",
            help="Manage the store objects of the vineyard XCom backend",
            subcommands=[
                ActionCommand(
                    name=name, help=text, args=[arg(a) for a in names],
                    func=lazy_load_command(f"{__name__}.{func.__name__}"),
                )
                for name, (text, func, names) in _COMMANDS.items()
            ],
        )
    ]


def main(argv: list[str] | None = None) -> None:
    """``python -m vineyard.contrib.airflow gc|cleanup ...`` (the same commands without the airflow CLI)."""
    parser = argparse.ArgumentParser(prog="python -m vineyard.contrib.airflow", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (text, func, names) in _COMMANDS.items():
        command = sub.add_parser(name, help=text)
        for a in names:
            flags, kw = _ARGS[a]
            command.add_argument(*flags, dest=a, **kw)
        command.set_defaults(func=func)
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    args.func(args)
