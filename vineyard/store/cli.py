"""``python -m vineyard``: flags, size parsing, socket checks, logging and signals."""

from __future__ import annotations

import argparse
import gc
import grp
import logging
import os
import pwd
import re
import resource
import socket
import stat
import sys
from collections.abc import Sequence

from vineyard._version import __version__
from vineyard.store.allocator import format_bytes
from vineyard.store.memory import shared_memory_backend

__all__ = ["DEFAULT_SOCKET", "default_size", "main", "parse_size"]

DEFAULT_SOCKET = "/var/run/vineyard.sock"
log = logging.getLogger("vineyard.store")

_SIZE = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([kKmMgGtTpP]?)([iI]?[bB]?)\s*$")
_UNITS = {"": 0, "k": 10, "m": 20, "g": 30, "t": 40, "p": 50}


def parse_size(text: str) -> int:
    """``'256Mi'``, ``'4G'``, ``'1.5Gi'``, ``'1024'`` → bytes. Suffixes are binary, as upstream's.

    Raises
    ------
    ValueError
        If the text is not a size.
    """
    match = _SIZE.match(text)
    if match is None:
        raise ValueError(f"not a memory size: {text!r} (try 256Mi, 4G or 1.5Gi)")
    number, unit, _ = match.groups()
    value = int(float(number) * (1 << _UNITS[unit.lower()]))
    if value <= 0:
        raise ValueError(f"a memory size must be positive: {text!r}")
    return value


def default_size() -> int:
    """Half of the memory this process may use (physical RAM or the cgroup's limit)."""
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            with open(path) as f:
                raw = f.read().strip()
        except OSError:
            continue
        if raw.isdigit():
            total = min(total, int(raw))
    return max(64 << 20, total // 2)


def _size_arg(text: str) -> int:
    try:
        return parse_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _cache_arg(text: str) -> int:
    """Like ``--size``, but 0 is allowed: keep no freed memory for reuse."""
    if text.strip() in ("0", "0.0"):
        return 0
    return _size_arg(text)


def _port_arg(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"a port must be between 0 and 65535, not {port}")
    return port


def _reason(exc: OSError) -> str:
    """Why a system call failed, for a person (some OSErrors carry no strerror)."""
    return exc.strerror or str(exc)


def _mode_arg(text: str) -> int:
    try:
        mode = int(text, 8)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an octal file mode: {text!r} (e.g. 0660)") from None
    if not 0 <= mode <= 0o777:
        raise argparse.ArgumentTypeError(f"file mode out of range: {text!r}")
    return mode


def _rate_arg(text: str) -> float:
    """A fraction of ``--size`` between 0 and 1 (spill watermarks)."""
    try:
        rate = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a fraction: {text!r} (e.g. 0.8)") from None
    if not 0.0 <= rate <= 1.0:
        raise argparse.ArgumentTypeError(f"a spill rate must be between 0 and 1, not {text}")
    return rate


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m vineyard",
        description="The vineyard daemon: an in-memory immutable object store on a UNIX socket.",
    )
    p.add_argument("--socket", default=DEFAULT_SOCKET, help=f"IPC socket path (default {DEFAULT_SOCKET})")
    p.add_argument("--size", type=_size_arg, default=None,
                   help="shared-memory limit, e.g. 256Mi, 4G, 1.5Gi (default: half of memory)")
    p.add_argument("--rpc", dest="rpc", action="store_true", default=True, help="serve RPC over TCP (default)")
    p.add_argument("--norpc", "--no-rpc", dest="rpc", action="store_false", help="do not serve RPC")
    p.add_argument("--rpc-port", "--rpc_socket_port", dest="rpc_port", type=_port_arg, default=9600,
                   help="RPC port (default 9600; 0 picks a free one)")
    p.add_argument("--rpc-host", "--rpc_host", dest="rpc_host", default="127.0.0.1",
                   help="address the RPC server binds (default 127.0.0.1)")
    p.add_argument("--rpc-token", "--rpc_token", dest="rpc_token", default=os.environ.get("VINEYARD_RPC_TOKEN"),
                   help="shared secret RPC clients must present (default $VINEYARD_RPC_TOKEN)")
    p.add_argument("--meta", choices=["local", "etcd"], default="local",
                   help="metadata backend: local (alone, default) or etcd (a cluster; see --etcd-endpoints)")
    p.add_argument("--socket-mode", "--socket_mode", dest="socket_mode", type=_mode_arg, default=0o600,
                   help="permissions of the socket file, octal (default 0600: owner only)")
    p.add_argument("--allow-user", "--allow_user", dest="allow_users", action="append", default=[],
                   help="only this user (name or uid) may connect; repeatable")
    p.add_argument("--allow-group", "--allow_group", dest="allow_groups", action="append", default=[],
                   help="members of this group (name or gid) may connect; repeatable")
    p.add_argument("--reuse-cache", "--reuse_cache", dest="reuse_cache", type=_cache_arg, default=None,
                   help="freed memory kept resident for reuse (default: a quarter of --size)")
    p.add_argument("--busy-poll-us", "--busy_poll_us", dest="busy_poll_us", type=int, default=100,
                   help="after answering, poll for the next request this long before sleeping "
                        "(microseconds, default 100, 0 = off): saves a cross-CPU wake-up per "
                        "request in a busy exchange; only while requests come close together")
    p.add_argument("--log-level", "--log_level", dest="log_level", default="INFO",
                   choices=["DEBUG", "INFO", "WARNING", "ERROR", "debug", "info", "warning", "error"])
    p.add_argument("--deployment", default="local", choices=["local", "distributed"])
    p.add_argument("--spill-path", "--spill_path", dest="spill_path", default="",
                   help="directory cold blobs are spilled to when memory runs high (default: no spilling)")
    p.add_argument("--spill-lower-rate", "--spill_lower_rate", dest="spill_lower_rate", type=_rate_arg,
                   default=0.3, help="spill down to this fraction of --size (default 0.3)")
    p.add_argument("--spill-upper-rate", "--spill_upper_rate", dest="spill_upper_rate", type=_rate_arg,
                   default=0.8, help="spill when usage passes this fraction of --size (default 0.8)")
    # accepted for compatibility with upstream's command line; they change nothing here
    for flag in ("--allocator", "--reserve_memory", "--compression", "--meta_timeout", "--stream_threshold"):
        p.add_argument(flag, help=argparse.SUPPRESS)
    from vineyard.store.cluster import add_arguments

    add_arguments(p)  # --etcd-endpoints, --etcd-prefix, --etcd-launch, --lease-ttl, --rpc-advertise
    p.add_argument("--version", action="version", version=f"vineyard {__version__}")
    return p


class StartupError(Exception):
    """The daemon cannot start; the message is for the person who started it."""


def _ids(values: list[str], lookup: object, kind: str) -> frozenset[int] | None:
    if not values:
        return None
    out = set()
    for value in values:
        if value.isdigit():
            out.add(int(value))
            continue
        try:
            out.add(lookup(value)[2])  # type: ignore[operator]
        except KeyError:
            raise StartupError(f"unknown {kind} {value!r} in the allow-list") from None
    return frozenset(out)


def open_ipc_socket(path: str, mode: int) -> socket.socket:
    """Bind the UNIX socket at ``path``, replacing a stale one, refusing a live one."""
    path = os.path.abspath(path)
    parent = os.path.dirname(path)
    hint = "Choose a path you may write to, e.g.: python -m vineyard --socket /tmp/vineyard.sock"
    try:
        os.makedirs(parent, exist_ok=True)
    except OSError as exc:
        raise StartupError(
            f"Cannot create the directory '{parent}' for the IPC socket '{path}': "
            f"{_reason(exc)}. {hint}"
        ) from None
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        st = None
    except OSError as exc:
        raise StartupError(f"Cannot inspect the IPC socket path '{path}': {_reason(exc)}. {hint}") from None
    if st is not None:
        if not stat.S_ISSOCK(st.st_mode):
            raise StartupError(f"'{path}' exists and is not a socket; refusing to replace it. {hint}")
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.settimeout(1.0)
            probe.connect(path)
        except OSError:
            try:
                os.unlink(path)  # stale socket of a daemon that is gone
            except OSError as exc:
                raise StartupError(
                    f"Permission error when removing the stale IPC socket '{path}': {_reason(exc)}. {hint}"
                ) from None
        else:
            raise StartupError(
                f"The IPC socket '{path}' is already in use by a running daemon; "
                f"stop it or use another path. {hint}"
            )
        finally:
            probe.close()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old_umask = os.umask(0o777 & ~mode)
    try:
        sock.bind(path)
        os.chmod(path, mode)
    except OSError as exc:
        sock.close()
        raise StartupError(f"Cannot create the IPC socket '{path}': {_reason(exc)}. {hint}") from None
    finally:
        os.umask(old_umask)
    sock.listen(512)
    return sock


def open_rpc_socket(host: str, port: int) -> socket.socket:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise StartupError(f"Cannot resolve the RPC host {host!r}: {exc}") from None
    family, _, _, _, addr = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(addr)
    except OSError as exc:
        sock.close()
        raise StartupError(
            f"Cannot listen for RPC on {host}:{port}: {_reason(exc)}. "
            "Pick another port with --rpc-port (0 for any free one) or disable RPC with --norpc."
        ) from None
    sock.listen(128)
    return sock


def _raise_fd_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s vineyardd[%(process)d] %(message)s",
        stream=sys.stderr,
    )
    from vineyard.store.server import Server, ServerConfig, install_signal_handlers

    size = args.size if args.size is not None else default_size()
    try:
        config = ServerConfig(
            socket=os.path.abspath(args.socket),
            size=size,
            rpc=args.rpc,
            rpc_host=args.rpc_host,
            rpc_port=args.rpc_port,
            socket_mode=args.socket_mode,
            reuse_cache=args.reuse_cache,
            busy_poll_us=max(0, args.busy_poll_us),
            meta=args.meta,
            token=args.rpc_token,
            deployment=args.deployment,
            allow_uids=_ids(args.allow_users, pwd.getpwnam, "user"),
            allow_gids=_ids(args.allow_groups, grp.getgrnam, "group"),
            spill_path=os.path.abspath(args.spill_path) if args.spill_path else None,
            spill_lower_rate=args.spill_lower_rate,
            spill_upper_rate=args.spill_upper_rate,
        )
        if config.spill_path:
            from vineyard.store.spill import check_spill_config

            problem = check_spill_config(config.spill_path, config.spill_lower_rate, config.spill_upper_rate)
            if problem is not None:
                raise StartupError(problem)
        ipc = open_ipc_socket(config.socket, config.socket_mode)
        try:
            rpc = open_rpc_socket(config.rpc_host, config.rpc_port) if config.rpc else None
        except StartupError:
            ipc.close()
            os.unlink(config.socket)
            raise
    except StartupError as exc:
        print(f"vineyard: {exc}", file=sys.stderr)
        return 1
    _raise_fd_limit()
    cluster = None
    if args.meta == "etcd" or args.etcd_launch:
        from vineyard.store.cluster import join_cluster

        try:
            cluster = join_cluster(args, config.socket, rpc, config.token)
        except Exception as exc:
            print(f"vineyard: cannot join the cluster: {exc}", file=sys.stderr)
            for sock in (ipc, rpc):
                if sock is not None:
                    sock.close()
            os.unlink(config.socket)
            return 1
        config.instance_id = cluster.instance_id
    server = Server(config)
    server.bind(ipc, rpc)
    if cluster is not None:
        cluster.attach(server)
    wakeup = install_signal_handlers(server)
    rpc_text = f", RPC on {server.rpc_endpoint}" if rpc is not None else ", RPC off"
    print(
        f"vineyard {__version__} listening on {config.socket}{rpc_text}; "
        f"memory limit {format_bytes(size)} ({shared_memory_backend()})",
        file=sys.stderr,
        flush=True,
    )
    try:
        # Request objects die by reference counting; only the object table lives long. Keep
        # the cycle collector from walking it often (it cost ~10% of CPU under load).
        gc.collect()
        gc.freeze()
        gc.set_threshold(50_000, 20, 100)
        server.serve_forever(wakeup)
    finally:
        if cluster is not None:
            cluster.close()
        try:
            if os.path.exists(config.socket) and stat.S_ISSOCK(os.lstat(config.socket).st_mode):
                os.unlink(config.socket)
        except OSError:
            pass
    log.info("stopped")
    return 0 if cluster is None else cluster.exit_status
