"""Leaderboards from run directories (plus ``results/reference.yaml``) only.

One table per (recipe, track, dataset, backbone, schedule); one row per method aggregated over seeds:
final-epoch top-1 as mean +- std (n), best-epoch top-1 (what the papers report), final top-5, the paper's
number and the gap best - paper (only when the runs trained the paper's full schedule on the full data;
otherwise "n/c", not comparable), silent-weight % and last-epoch flip %, binary share of the parameters,
OPs and bit-packed size, epochs, wall time per run and training images/s. Failed runs are listed with
their reason. Written as Markdown, CSV, LaTeX (tabulate) and JSON; shown as a rich table.
"""
from __future__ import annotations

import csv
import io
import json
import statistics
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import yaml
from tabulate import tabulate

from .references import find_reference
from .store import CONFIG, RESULT, atomic_write_text, read_json, verify_result

COLUMNS = ["method", "top1 final", "top1 best", "top5", "paper", "gap", "silent %", "flip %", "binary params %",
           "OPs", "size", "epochs", "wall/run", "img/s"]


def collect(out: Path, warn: Callable[[str], None]) -> list[dict]:
    """Results of every complete run under ``out/runs``; partial or corrupt ones are skipped with a warning."""
    runs = []
    root = Path(out) / "runs"
    if not root.is_dir():
        return runs
    for d in sorted(p for p in root.iterdir() if p.is_dir()):
        res_path = d / RESULT
        if not res_path.exists():
            warn(f"skipping {d}: no {RESULT} (unfinished or interrupted run)")
            continue
        try:
            res = verify_result(read_json(res_path))
            cfg = yaml.safe_load((d / CONFIG).read_text())
            if not isinstance(cfg, dict):
                raise ValueError(f"{CONFIG} is not a mapping")
            if res.get("config_hash") != cfg.get("hash"):
                raise ValueError(f"config hash {res.get('config_hash')} does not match {CONFIG} ({cfg.get('hash')})")
            if res["status"] == "done" and not isinstance(res.get("final_top1"), (int, float)):
                raise ValueError("no final accuracy")
        except (OSError, ValueError, yaml.YAMLError, KeyError, TypeError) as exc:
            warn(f"skipping {d}: corrupt {RESULT} or {CONFIG} ({type(exc).__name__}: {exc})")
            continue
        res["run_dir"] = d.name
        res["_path"] = str(d)
        runs.append(res)
    return runs


def variant_label(result: dict) -> str:
    """Method name, plus the hyperparameters set on the command line (--hp) that make it a variant."""
    hp = result.get("hp_cli") or {}
    if not hp:
        return result["method"]
    return result["method"] + "[" + ",".join(f"{k}={hp[k]}" for k in sorted(hp)) + "]"


def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def _fmt_si(x: float | None) -> str:
    if x is None:
        return "-"
    for unit, f in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(x) >= f:
            return f"{x / f:.3g}{unit}"
    return f"{x:.3g}"


def _fmt_time(s: float | None) -> str:
    if s is None:
        return "-"
    if s < 120:
        return f"{s:.0f}s"
    if s < 7200:
        return f"{s / 60:.1f}m"
    return f"{s / 3600:.1f}h"


def build_tables(runs: list[dict]) -> list[dict]:
    """Group runs into tables; each table is {'title', 'notes', 'rows': [dict per method]} (sorted, stable)."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in runs:
        key = (r["recipe"], r["track"], r["dataset"], r["backbone"], r["epochs"], bool(r["epochs_overridden"]),
               bool(r["full_data"]))
        groups[key].append(r)
    tables = []
    for key in sorted(groups):
        recipe, track, dataset, backbone, epochs, overridden, full = key
        rows = []
        by_method: dict[tuple[str, str], list[dict]] = defaultdict(list)
        for r in groups[key]:
            by_method[(r["method"], variant_label(r))].append(r)
        for method, label in sorted(by_method):
            rs = by_method[(method, label)]
            ok = [r for r in rs if r["status"] == "done"]
            failed = [r for r in rs if r["status"] == "failed"]
            row = {"method": label, "n": len(ok), "failed": len(failed),
                   "failures": [f"seed {r['seed']}: {r.get('reason')}" for r in failed]}
            if ok:
                f_mean, f_std = _mean_std([r["final_top1"] for r in ok])
                b_mean, _ = _mean_std([r["best_top1"] for r in ok])
                top5 = [r["final_top5"] for r in ok if r.get("final_top5") is not None]
                silent = [r["silent"] for r in ok if r.get("silent") is not None]
                flip = [r["flip_any"] for r in ok if r.get("flip_any") is not None]
                ops = ok[0].get("ops") or {}
                row.update(final_top1=f_mean, final_top1_std=f_std, best_top1=b_mean,
                           top5=statistics.fmean(top5) if top5 else None,
                           silent=100 * statistics.fmean(silent) if silent else None,
                           flip=100 * statistics.fmean(flip) if flip else None,
                           binary_params=100 * ops["binary_param_ratio"] if ops else None,
                           ops=ops.get("ops"), packed_bytes=ops.get("packed_bytes"),
                           wall=statistics.fmean([r["wall_time_s"] for r in ok]),
                           ips=statistics.fmean([r["images_per_s"] for r in ok if r.get("images_per_s")] or [0]),
                           epochs_run=max(r["epochs_run"] for r in ok))
            ref = find_reference(method, dataset, backbone)
            row["paper"] = ref["top1"] if ref else None
            row["paper_source"] = ref["source"] if ref else None
            comparable = (ref is not None and full and not overridden
                          and (ref["epochs"] is None or ref["epochs"] == epochs))
            row["comparable"] = comparable
            row["gap"] = (row["best_top1"] - ref["top1"]) if (comparable and ok) else None
            rows.append(row)
        sched = f"{epochs} epochs" + (" (--epochs override)" if overridden else "") + ("" if full else ", data subset")
        tables.append({"recipe": recipe, "track": track, "dataset": dataset, "backbone": backbone,
                       "epochs": epochs, "epochs_overridden": overridden, "full_data": full,
                       "title": f"{recipe} [{track}] {dataset} / {backbone}, {sched}", "rows": rows})
    return tables


def _cells(row: dict) -> list[str]:
    if not row["n"]:
        return [row["method"], f"failed ({'; '.join(row['failures'])})"] + ["-"] * (len(COLUMNS) - 2)
    top1 = f"{row['final_top1']:.2f} ± {row['final_top1_std']:.2f} (n={row['n']})"
    if row["failed"]:
        top1 += f" [{row['failed']} failed]"
    paper = "-" if row["paper"] is None else f"{row['paper']:.2f}"
    gap = (f"{row['gap']:+.2f}" if row["gap"] is not None else ("n/c" if row["paper"] is not None else "-"))
    return [row["method"], top1, f"{row['best_top1']:.2f}",
            "-" if row["top5"] is None else f"{row['top5']:.2f}", paper, gap,
            "-" if row["silent"] is None else f"{row['silent']:.2f}",
            "-" if row["flip"] is None else f"{row['flip']:.2f}",
            "-" if row["binary_params"] is None else f"{row['binary_params']:.1f}",
            _fmt_si(row["ops"]), "-" if row["packed_bytes"] is None else f"{row['packed_bytes'] / 2**20:.2f} MiB",
            str(row["epochs_run"]), _fmt_time(row["wall"]), f"{row['ips']:.0f}"]


NOTES = ("top1 final: last-epoch test top-1, mean ± std over n seeds. top1 best: best-epoch top-1 (what the "
         "papers report). gap = top1 best - paper, shown only for runs of the paper's full schedule on the full "
         "data (n/c: not comparable). silent %: binary weights whose effective sign never flipped; flip %: "
         "weights that flipped at least once in the last epoch. OPs = FLOPs + BOPs/64 per image; size: binary "
         "weights at 1 bit, other parameters at 32 bit.")


def render(tables: list[dict], fmt: str) -> str:
    if fmt == "json":
        return json.dumps({"tables": tables, "notes": NOTES}, indent=2, sort_keys=True) + "\n"
    if fmt == "csv":
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(["table"] + COLUMNS)
        for t in tables:
            for row in t["rows"]:
                w.writerow([t["title"]] + _cells(row))
        return buf.getvalue()
    tablefmt = {"md": "github", "latex": "latex_booktabs"}[fmt]
    parts = []
    for t in tables:
        body = tabulate([_cells(r) for r in t["rows"]], headers=COLUMNS, tablefmt=tablefmt, disable_numparse=True)
        if fmt == "md":
            parts.append(f"### {t['title']}\n\n{body}\n")
        else:
            parts.append(f"% {t['title']}\n{body}\n")
    if fmt == "md":
        parts.append(f"_{NOTES}_\n")
        if not tables:
            parts.insert(0, "No finished runs.\n")
    return "\n".join(parts)


def write_reports(out: Path, tables: list[dict]) -> dict[str, Path]:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    files = {}
    for fmt, name in (("md", "leaderboard.md"), ("csv", "leaderboard.csv"), ("latex", "leaderboard.tex"),
                      ("json", "leaderboard.json")):
        atomic_write_text(out / name, render(tables, fmt))
        files[fmt] = out / name
    return files


def print_console(tables: list[dict], console) -> None:
    from rich.table import Table
    if not tables:
        console.print("No finished runs.")
    for t in tables:
        table = Table(title=t["title"], title_justify="left")
        for c in COLUMNS:
            table.add_column(c, justify="left" if c == "method" else "right")
        for row in t["rows"]:
            table.add_row(*_cells(row))
        console.print(table)
