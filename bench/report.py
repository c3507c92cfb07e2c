"""Turn the workers' samples into tables, ratios, target verdicts, JSON and a chart.

Samples of every round are pooled per (workload, case, system); a table shows each system's
median and minimum, the ratio of ours to the best peer, the physical limit, and the ratio of
ours to that limit. The limits come from the ``limits`` runs of the same benchmark run:

- put of ``n`` bytes   two socket round trips + the faster of 1- and 2-thread memcpy of ``n``;
- any get, any metadata request   one socket round trip;
- put+get pairs/s     ``clients / (3 round trips)``;
- DataFrame put       two round trips + its bytes at the 2-thread memcpy bandwidth;
- memory held         our daemon's configured reuse cache.

The round trip is the pure-Python blocking UNIX-socket echo, unpinned (the stores run unpinned
too unless ``--pin`` is given). Ratios are medians over medians of one run: compare them, not
the absolute figures, on a shared machine.
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from collections.abc import Callable
from typing import Any

__all__ = ["TABLES", "aggregate", "chart", "evaluate_targets", "format_report", "table_rows"]

#: (group, title, kind): kind "time" (lower is better), "rate" (higher), "bytes" (lower).
TABLES: list[tuple[str, str, str]] = [
    ("put", "put of a float64 array (same process)", "time"),
    ("get", "get of a float64 array (same process)", "time"),
    ("get_remote", "get in a second, already running process", "time"),
    ("pairs", "put+get pairs of tiny objects per second", "rate"),
    ("frame_put", "put: DataFrames and Arrow tables", "time"),
    ("frame_get", "get: DataFrames and Arrow tables", "time"),
    ("meta", "metadata requests", "time"),
    ("names", "get_name as names accumulate", "time"),
    ("held", "shared memory held after deleting everything", "bytes"),
]
LIMIT_TABLES: list[tuple[str, str]] = [
    ("memcpy1", "memcpy, one thread, into faulted-in shared memory"),
    ("memcpy2", "memcpy, two threads, into faulted-in shared memory"),
    ("memcpy2_private", "(not a limit) memcpy, two threads, into private memory (huge pages if given)"),
    ("fresh", "copy into fresh shared-memory pages"),
    ("rtt", "pure-Python UNIX-socket round trip (blocking echo server)"),
]
PEERS = ("upstream", "ray")
SYSTEM_ORDER = ("ours", "upstream", "ray")

Stats = dict[tuple[str, str], dict[str, dict[str, Any]]]


# -- aggregation ---------------------------------------------------------------------------
def aggregate(runs: list[dict[str, Any]]) -> Stats:
    """Pool each (group, case, system)'s samples over rounds: median, min, n, zero-copy, notes."""
    pooled: dict[tuple[str, str], dict[str, dict[str, Any]]] = defaultdict(dict)
    order: dict[tuple[str, str], int] = {}
    for run in runs:
        system = run["system"]
        for row in (run.get("result") or {}).get("rows", []):
            key = (row["group"], row["case"])
            order.setdefault(key, len(order))
            cell = pooled[key].setdefault(system, {
                "samples": [], "zero_copy": [], "notes": set(), "errors": set(), "bytes": row.get("bytes", 0),
                "first": [], "kind": row["kind"], "names": row.get("names"),
            })
            cell["samples"].extend(row["samples"])
            if row.get("zero_copy") is not None:
                cell["zero_copy"].append(bool(row["zero_copy"]))
            if row.get("note"):
                cell["notes"].add(row["note"])
            if row.get("error"):
                cell["errors"].add(row["error"].splitlines()[-1][:200])
            if row.get("first") is not None:
                cell["first"].append(row["first"])
    stats: Stats = {}
    for key in sorted(pooled, key=order.__getitem__):
        stats[key] = {}
        for system, cell in pooled[key].items():
            samples = cell["samples"]
            stats[key][system] = {
                "median": statistics.median(samples) if samples else None,
                "min": min(samples) if samples else None,
                "max": max(samples) if samples else None,
                "n": len(samples),
                "zero_copy": (all(cell["zero_copy"]) if cell["zero_copy"] else None),
                "notes": sorted(cell["notes"]),
                "errors": sorted(cell["errors"]),
                "bytes": cell["bytes"],
                "kind": cell["kind"],
                "first": statistics.median(cell["first"]) if cell["first"] else None,
                "names": cell["names"],
            }
    return stats


def _med(stats: Stats, group: str, case: str, system: str) -> float | None:
    cell = stats.get((group, case), {}).get(system)
    return None if cell is None else cell["median"]


class Limits:
    """The physical limits measured in this run."""

    def __init__(self, stats: Stats, reuse_cache: int) -> None:
        self.stats = stats
        self.rtt = _med(stats, "rtt", "unpinned", "limits")
        self.rtt_pinned = _med(stats, "rtt", "pinned to one CPU", "limits")
        self.reuse_cache = reuse_cache
        self.copy: dict[int, float] = {}
        self.bw2 = None
        for (group, _case), cells in stats.items():
            if group in ("memcpy1", "memcpy2") and "limits" in cells and cells["limits"]["median"]:
                n = cells["limits"]["bytes"]
                t = cells["limits"]["median"]
                self.copy[n] = min(self.copy.get(n, t), t)
                if group == "memcpy2" and n >= 1 << 20:
                    self.bw2 = max(self.bw2 or 0.0, n / t)

    def copy_time(self, nbytes: int) -> float | None:
        if nbytes in self.copy:
            return self.copy[nbytes]
        return nbytes / self.bw2 if self.bw2 else None

    def for_row(self, group: str, case: str, nbytes: int) -> float | None:
        rtt = self.rtt
        if group == "held":
            return float(self.reuse_cache)
        if rtt is None:
            return None
        if group == "put":
            copy = self.copy_time(nbytes)
            return None if copy is None else 2 * rtt + copy
        if group == "frame_put":
            return 2 * rtt + nbytes / self.bw2 if self.bw2 else None
        if group == "pairs":
            clients = int(case.split()[0])
            return clients / (3 * rtt)
        if group in ("get", "get_remote", "frame_get", "meta", "names"):
            return rtt
        return None


def _ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b == 0:
        return None
    return a / b


def table_rows(stats: Stats, limits: Limits, group: str, kind: str) -> list[dict[str, Any]]:
    rows = []
    for (g, case), cells in stats.items():
        if g != group:
            continue
        ours = cells.get("ours", {}).get("median")
        peers = [cells[p]["median"] for p in PEERS if p in cells and cells[p]["median"] is not None]
        best = (max(peers) if kind == "rate" else min(peers)) if peers else None
        nbytes = max((c.get("bytes") or 0) for c in cells.values())
        limit = limits.for_row(group, case, nbytes)
        rows.append({
            "case": case, "cells": cells, "best_peer": best, "ours_vs_best": _ratio(ours, best),
            "limit": limit, "ours_vs_limit": _ratio(ours, limit),
        })
    return rows


# -- targets -------------------------------------------------------------------------------
def _target(name: str, value: float | None, op: str, threshold: float, detail: str = "") -> dict[str, Any]:
    met = None if value is None else (value <= threshold if op == "<=" else value >= threshold)
    return {"name": name, "value": value, "op": op, "threshold": threshold, "met": met, "detail": detail}


def evaluate_targets(stats: Stats, limits: Limits) -> list[dict[str, Any]]:
    """The issue's targets, each with the measured ratio and whether it is met (None: not measured)."""
    m = _med
    out = []
    def ours_vs(group: str, case: str, peer: str) -> float | None:
        return _ratio(m(stats, group, case, "ours"), m(stats, group, case, peer))

    out.append(_target("tiny get ≤ 0.25x upstream", ours_vs("get", "8 B", "upstream"), "<=", 0.25))
    out.append(_target("tiny get ≤ Ray", ours_vs("get", "8 B", "ray"), "<=", 1.0))
    out.append(_target("tiny put ≤ 0.35x upstream", ours_vs("put", "8 B", "upstream"), "<=", 0.35))

    remote = [(case, cells) for (g, case), cells in stats.items() if g == "get_remote"]
    ratios = [(ours_vs("get_remote", case, "upstream"), case) for case, _ in remote]
    ratios = [(r, case) for r, case in ratios if r is not None]
    worst = max(ratios) if ratios else (None, "")
    out.append(_target("get in another process ≤ 0.25x upstream at every size", worst[0], "<=", 0.25,
                       f"worst at {worst[1]}" if worst[0] is not None else ""))
    sized = sorted((c["ours"]["bytes"], case, c["ours"]["median"]) for case, c in remote
                   if "ours" in c and c["ours"]["median"])
    flat = sized[-1][2] / sized[0][2] if len(sized) > 1 else None
    out.append(_target("get in another process flat (largest size ≤ 1.5x smallest)", flat, "<=", 1.5,
                       f"{sized[-1][1]} vs {sized[0][1]}" if flat else ""))

    for clients in ("1 client", "2 clients"):
        out.append(_target(f"pairs/s ≥ 4x upstream, {clients}", ours_vs("pairs", clients, "upstream"), ">=", 4.0))
        out.append(_target(f"pairs/s ≥ 3x Ray, {clients}", ours_vs("pairs", clients, "ray"), ">=", 3.0))

    for case in ("512 MiB", "2 GiB"):
        put = m(stats, "put", case, "ours")
        copy2 = m(stats, "memcpy2", case, "limits")
        out.append(_target(f"put {case} ≥ 0.9x two-thread memcpy (speed)", _ratio(copy2, put), ">=", 0.9))

    for group, what in (("frame_put", "put"), ("frame_get", "get")):
        out.append(_target(f"1e6x8 DataFrame {what} ≤ Ray", ours_vs(group, "numeric", "ray"), "<=", 1.0))

    names = [(cells["ours"].get("names") or 0, case, cells["ours"]["median"])
             for (g, case), cells in stats.items() if g == "names" and "ours" in cells and case != "1 name"]
    one = m(stats, "names", "1 name", "ours")
    if names:
        count, case, most = max(names)
        target = _target("get_name with 100,000 names ≤ 1.2x with 1 name", _ratio(most, one), "<=", 1.2,
                         f"measured with {case}")
        if count < 100_000 and target["met"]:
            target["met"] = None  # not measured at the size the target names
            target["detail"] += " (fewer than 100,000: not conclusive)"
        out.append(target)
    else:
        out.append(_target("get_name with 100,000 names ≤ 1.2x with 1 name", None, "<=", 1.2))

    held = m(stats, "held", "after deleting everything", "ours")
    out.append(_target("memory held after deleting everything ≤ reuse cache (MiB)",
                       None if held is None else held / 2**20, "<=", limits.reuse_cache / 2**20))

    verdicts = [c["zero_copy"] for (g, _), cells in stats.items() if g in ("get", "get_remote", "frame_get")
                for s, c in cells.items() if s == "ours" and c["zero_copy"] is not None]
    bad = [f"{g} {case}" for (g, case), cells in stats.items() if g in ("get", "get_remote", "frame_get")
           and cells.get("ours", {}).get("zero_copy") is False]
    out.append({"name": "every get of ours is zero-copy (mapping, read-only, RssAnon flat)",
                "value": None, "op": "", "threshold": None, "met": (all(verdicts) if verdicts else None),
                "detail": ("not zero-copy: " + ", ".join(bad)) if bad else f"{len(verdicts)} cases checked"})
    return out


# -- text ----------------------------------------------------------------------------------
def fmt_time(s: float | None) -> str:
    if s is None:
        return "—"
    if s < 1e-3:
        return f"{s * 1e6:.1f} µs"
    if s < 1:
        return f"{s * 1e3:.2f} ms"
    return f"{s:.2f} s"


def fmt_rate(r: float | None) -> str:
    return "—" if r is None else f"{r:,.0f}/s"


def fmt_bytes(b: float | None) -> str:
    return "—" if b is None else f"{b / 2**20:,.1f} MiB"


FORMATS: dict[str, Callable[[Any], str]] = {"time": fmt_time, "rate": fmt_rate, "bytes": fmt_bytes}


def _fmt_ratio(r: float | None) -> str:
    return "—" if r is None else f"{r:.2f}x"


def _cell(cell: dict[str, Any] | None, fmt: Callable[[Any], str]) -> str:
    if cell is None:
        return "—"
    if cell["median"] is None:
        return "ERROR" if cell["errors"] else "—"
    text = fmt(cell["median"])
    if cell["n"] > 1:
        text += f" ({fmt(cell['min']).split()[0]})"
    if cell["zero_copy"] is False:
        text += " !zc"
    if any("WRONG" in n for n in cell["notes"]):
        text += " !val"
    return text


def _render(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    line = "  ".join(h.ljust(w) for h, w in zip(headers, widths))
    out = [line, "  ".join("-" * w for w in widths)]
    out += ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in rows]
    return "\n".join(out)


def format_report(stats: Stats, limits: Limits, targets: list[dict[str, Any]], systems: list[str]) -> str:
    parts = []
    shown = [s for s in SYSTEM_ORDER if s in systems]
    for group, title, kind in TABLES:
        rows = table_rows(stats, limits, group, kind)
        if not rows:
            continue
        fmt = FORMATS[kind]
        lines = []
        notes = []
        for row in rows:
            cells = row["cells"]
            lines.append([row["case"], *(_cell(cells.get(s), fmt) for s in shown),
                          _fmt_ratio(row["ours_vs_best"]), fmt(row["limit"]), _fmt_ratio(row["ours_vs_limit"])])
            for s in shown:
                c = cells.get(s)
                if c is None:
                    continue
                for n in c["notes"]:
                    notes.append(f"  {s}, {row['case']}: {n}")
                for e in c["errors"]:
                    notes.append(f"  {s}, {row['case']}: error: {e}")
                if c.get("first") is not None and group == "put" and (c["bytes"] or 0) >= 64 << 20:
                    notes.append(f"  {s}, {row['case']}: first put (fresh pages) {fmt_time(c['first'])}")
        unit = {"time": "median (min)", "rate": "median (min) pairs/s", "bytes": "bytes"}[kind]
        parts.append(f"\n== {title} — {unit}; !zc = not zero-copy")
        parts.append(_render(["case", *shown, "ours/best peer", "limit", "ours/limit"], lines))
        parts.extend(notes)
    lim_lines = []
    for group, title in LIMIT_TABLES:
        for (g, case), cells in stats.items():
            if g == group and "limits" in cells:
                c = cells["limits"]
                extra = ""
                if c["bytes"] >= 1 << 20 and c["median"]:
                    extra = f"{c['bytes'] / c['median'] / 1e9:.1f} GB/s"
                lim_lines.append([title, case, fmt_time(c["median"]), fmt_time(c["min"]), extra])
    if lim_lines:
        parts.append("\n== physical limits, measured in this run")
        parts.append(_render(["what", "case", "median", "min", "speed"], lim_lines))
    parts.append("\n== targets (ratios of medians in this run)")
    t_lines = []
    for t in targets:
        verdict = {True: "MET", False: "MISSED", None: "not measured"}[t["met"]]
        value = "—" if t["value"] is None else f"{t['value']:.3g}"
        threshold = "" if t["threshold"] is None else f"{t['op']} {t['threshold']:g}"
        t_lines.append([t["name"], value, threshold, verdict, t["detail"]])
    parts.append(_render(["target", "value", "needs", "verdict", "detail"], t_lines))
    return "\n".join(parts)


# -- chart ---------------------------------------------------------------------------------
def chart(stats: Stats, limits: Limits, systems: list[str], path: str, title: str) -> bool:
    """One panel per table: grouped bars per system (log scale), the limit as a black tick."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    panels = [(g, t, k) for g, t, k in TABLES if table_rows(stats, limits, g, k)]
    if not panels:
        return False
    cols = 3
    nrows = -(-len(panels) // cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(6 * cols, 4 * nrows), squeeze=False)
    colours = {"ours": "#2a9d8f", "upstream": "#e76f51", "ray": "#457b9d"}
    shown = [s for s in SYSTEM_ORDER if s in systems]
    for ax, (group, ttl, kind) in zip(axes.flat, panels):
        rows = table_rows(stats, limits, group, kind)
        scale = {"time": 1e6, "rate": 1.0, "bytes": 1 / 2**20}[kind]
        width = 0.8 / max(1, len(shown))
        for i, system in enumerate(shown):
            xs, ys = [], []
            for j, row in enumerate(rows):
                cell = row["cells"].get(system)
                if cell and cell["median"]:
                    xs.append(j + (i - (len(shown) - 1) / 2) * width)
                    ys.append(cell["median"] * scale)
            ax.bar(xs, ys, width, label=system, color=colours.get(system))
        lx = [j for j, r in enumerate(rows) if r["limit"]]
        ly = [r["limit"] * scale for r in rows if r["limit"]]
        ax.scatter(lx, ly, marker="_", s=400, color="black", label="limit", zorder=3)
        ax.set_xticks(range(len(rows)), [r["case"] for r in rows], rotation=30, ha="right", fontsize=8)
        if kind != "rate":
            ax.set_yscale("log")
        ax.set_ylabel({"time": "µs (median)", "rate": "pairs/s (median)", "bytes": "MiB"}[kind])
        ax.set_title(ttl, fontsize=10)
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return True
