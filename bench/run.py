"""Run the benchmark: ours, upstream Vineyard 0.24.2 and Ray 2.60, side by side, in one run.

    .venv/bin/python -m bench            # the full run (about 15-25 minutes)
    .venv/bin/python -m bench --quick    # small sizes, few repetitions (under 2 minutes)

Each round runs every system once, one at a time, in an order that rotates from round to
round (interleaved rounds): for each system a fresh daemon (ours, upstream) and a fresh worker
process in that system's own interpreter, which exits before the next system starts, so that
2 GiB arrays of several systems are never alive at once. The ``limits`` (memcpy, fresh pages,
socket round trip) are measured in every round too. The results are printed as one table per
workload with medians, minimums and ratios, followed by the targets and whether each is met,
and written to ``bench/results/`` as JSON and a PNG chart.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import sys
import time
from dataclasses import asdict
from typing import Any

from bench import report
from bench.systems import BENCH, SYSTEMS, Env, ensure_env, run_worker

__all__ = ["GROUPS", "build_plan", "main", "parse_args"]

GROUPS = ("arrays", "remote", "pairs", "frames", "meta", "names", "held")
KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30
DAEMON_SIZE = "8Gi"
REUSE_CACHE = "2Gi"  # what our daemon defaults to at DAEMON_SIZE: a quarter of it

# size: (put reps, get reps, get-in-another-process reps, memcpy reps)
# (a get costs the same at every size when it is zero-copy: as many gets everywhere)
FULL_SIZES = {8: (500, 1000, 1000, 200), KiB: (500, 1000, 1000, 200), MiB: (200, 1000, 1000, 100),
              64 * MiB: (20, 1000, 1000, 20), 512 * MiB: (6, 1000, 1000, 6), 2 * GiB: (4, 1000, 1000, 4)}
QUICK_SIZES = {8: (100, 200, 200, 50), KiB: (100, 200, 200, 50), MiB: (50, 200, 200, 20),
               64 * MiB: (5, 200, 200, 5)}


def _parse_size(text: str) -> int:
    text = text.strip()
    units = {"Ki": KiB, "Mi": MiB, "Gi": GiB}
    for suffix, mult in units.items():
        if text.endswith(suffix):
            return int(float(text[: -len(suffix)]) * mult)
    return int(text)


def build_plan(args: argparse.Namespace) -> dict[str, Any]:
    """What every worker of this run does (the same for every system)."""
    quick = args.quick
    table = QUICK_SIZES if quick else FULL_SIZES
    sizes = sorted(table) if not args.sizes else [_parse_size(s) for s in args.sizes.split(",")]
    fallback = (20, 50, 50, 5)
    return {
        "groups": args.groups,
        "case_budget": 8.0 if quick else 30.0,
        "sizes": [[n, *table.get(n, fallback)[:3]] for n in sizes],
        "pairs": {"clients": [1, 2], "seconds": 1.0 if quick else 3.0, "reps": 1 if quick else 3},
        "frames": {"rows": 200_000 if quick else 1_000_000, "put_reps": 3 if quick else 8,
                   "get_reps": 10 if quick else 50},
        "meta": {"reps": 300 if quick else 2000},
        "names": {"checkpoints": [2_000] if quick else [1_000, 10_000, 100_000], "reps": 300 if quick else 1000,
                  "budget": 10.0 if quick else 180.0},
        "limits": {"sizes": [[n, table.get(n, fallback)[3]] for n in sizes], "rtt_reps": 3000 if quick else 20000},
        "quick": quick,
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="small sizes, few repetitions (< 2 minutes)")
    p.add_argument("--only", default=",".join(SYSTEMS),
                   help="comma-separated systems to run: ours, upstream, ray (default: all)")
    p.add_argument("--groups", default=",".join(GROUPS),
                   help=f"comma-separated workload groups (default: all): {', '.join(GROUPS)}")
    p.add_argument("--sizes", default="", help="array sizes instead of the defaults, e.g. 8,1Ki,64Mi")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    p.add_argument("--no-limits", action="store_true", help="skip measuring the physical limits")
    p.add_argument("--pin", type=int, default=None, metavar="CPU",
                   help="pin the benchmark, its daemons and workers to one CPU")
    p.add_argument("--reuse-cache", default=REUSE_CACHE,
                   help=f"our daemon's --reuse-cache, the bound of the held-memory target (default {REUSE_CACHE})")
    p.add_argument("--out", default=str(BENCH / "results"), help="where the JSON and PNG go")
    p.add_argument("--timeout", type=float, default=None,
                   help="seconds one worker may run (default 1200, --quick 150)")
    p.add_argument("--setup-only", action="store_true", help="create the peers' environments and stop")
    p.add_argument("--verbose", action="store_true", help="show the workers' output")
    args = p.parse_args(argv)
    args.systems = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = [s for s in args.systems if s not in SYSTEMS]
    args.groups = [g.strip() for g in args.groups.split(",") if g.strip()]
    unknown += [g for g in args.groups if g not in GROUPS]
    if unknown:
        p.error(f"unknown system or group: {', '.join(unknown)}")
    if args.timeout is None:
        args.timeout = 150.0 if args.quick else 1200.0
    return args


def _log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.pin is not None:
        os.sched_setaffinity(0, {args.pin})  # inherited by every daemon and worker
    envs: dict[str, Env] = {}
    skipped: dict[str, str] = {}
    for system in args.systems + ([] if args.no_limits else ["limits"]):
        try:
            envs[system] = ensure_env(system, _log)
        except Exception as exc:
            skipped[system] = str(exc)
            _log(f"skipping {system}: {exc}")
    if args.setup_only:
        for env in envs.values():
            _log(f"{env.system}: {env.python} {env.versions}")
        return 0 if not skipped else 1
    plan = build_plan(args)
    order = list(envs)
    started = dt.datetime.now()
    runs: list[dict[str, Any]] = []
    t0 = time.monotonic()
    for round_no in range(args.rounds):
        shift = round_no % len(order)
        for system in order[shift:] + order[:shift]:
            _log(f"round {round_no + 1}/{args.rounds}: {system} ...")
            run = run_worker(envs[system], plan, round_no, DAEMON_SIZE, args.reuse_cache, args.timeout,
                             args.verbose)
            if run.held_after_exit is not None:
                run.result.setdefault("rows", []).append({
                    "group": "held", "case": "after the client exited", "kind": "bytes", "bytes": 0,
                    "samples": [float(run.held_after_exit)], "zero_copy": None, "note": "", "error": None,
                })
            _log(f"round {round_no + 1}/{args.rounds}: {system} {'ok' if run.ok else 'FAILED'} in {run.wall:.1f} s"
                 + ("" if run.ok else f": {run.error}"))
            for err in run.result.get("errors", []):
                _log(f"  {system}: {err.strip().splitlines()[-1]}")
            runs.append(asdict(run))
    stats = report.aggregate(runs)
    limits = report.Limits(stats, _parse_size(args.reuse_cache))
    targets = report.evaluate_targets(stats, limits) if "ours" in envs else []
    text = report.format_report(stats, limits, targets, list(envs))
    header = (f"vineyard benchmark, {'quick' if args.quick else 'full'} run, {args.rounds} interleaved rounds, "
              f"{started:%Y-%m-%d %H:%M}, {platform.node()}, {os.cpu_count()} CPUs"
              + (f", pinned to CPU {args.pin}" if args.pin is not None else ""))
    print(header)
    print(text)
    os.makedirs(args.out, exist_ok=True)
    stamp = f"{started:%Y%m%d-%H%M%S}"
    json_path = os.path.join(args.out, f"bench-{stamp}.json")
    document = {
        "meta": {
            "started": started.isoformat(), "wall": time.monotonic() - t0, "host": platform.node(),
            "cpus": os.cpu_count(), "quick": args.quick, "rounds": args.rounds, "systems": list(envs),
            "skipped": skipped, "groups": args.groups, "pin": args.pin, "daemon_size": DAEMON_SIZE,
            "reuse_cache": args.reuse_cache, "plan": plan, "argv": sys.argv[1:] if argv is None else argv,
            "versions": {s: e.versions for s, e in envs.items()},
            "pythons": {s: e.python for s, e in envs.items()},
        },
        "runs": runs,
        "summary": {
            "stats": {f"{g}|{c}": {s: {k: v for k, v in cell.items()} for s, cell in cells.items()}
                      for (g, c), cells in stats.items()},
            "tables": {g: [{k: v for k, v in row.items() if k != "cells"} for row in
                           report.table_rows(stats, limits, g, kind)] for g, _, kind in report.TABLES},
            "limits": {"rtt": limits.rtt, "rtt_pinned": limits.rtt_pinned, "reuse_cache": limits.reuse_cache,
                       "memcpy_best": {str(k): v for k, v in limits.copy.items()}, "memcpy2_bandwidth": limits.bw2},
            "targets": targets,
        },
    }
    with open(json_path, "w") as f:
        json.dump(document, f, indent=1, default=str)
    png_path = os.path.join(args.out, f"bench-{stamp}.png")
    drew = report.chart(stats, limits, list(envs), png_path, header)
    for src, name in ((json_path, "latest.json"), (png_path if drew else None, "latest.png")):
        if src:
            shutil.copyfile(src, os.path.join(args.out, name))
    print(f"\nwrote {json_path}" + (f" and {png_path}" if drew else " (no chart: matplotlib missing)"))
    failed = [r for r in runs if not r["ok"]]
    return 1 if failed and len(failed) == len(runs) else 0
