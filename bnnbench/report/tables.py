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
from dataclasses import dataclass
from pathlib import Path

import yaml
from tabulate import tabulate

from bnnbench.config.spec import RunResult, variant_label
from bnnbench.errors import RunError
from bnnbench.references import find_reference
from bnnbench.report.stats import compare, holm, mean_interval, ranks
from bnnbench.store import CONFIG, DEPLOY, RESULT, RunDir, atomic_write_text, read_json, verify_result

#: the robustness columns (bnnbench/engine/robustness.py): mCA and PGD top-1 at this radius (pixel levels)
PGD_EPS = "2"
ROBUST_COLUMNS = ["mCA", "rank mCA", f"PGD {PGD_EPS}/255", "rank PGD"]

COLUMNS = ["method", "top1 final", "rank", "top1 best", "rank best", "top5", "paper", "gap", "silent %", "flip %",
           "binary params %",
           "OPs", "size", "1-bit ms (b1, CPU)", "x FP32", "epochs", "wall/run", "img/s"]


@dataclass(frozen=True)
class StoredRun:
    """A finished run as the reports see it: its result and its directory."""

    result: RunResult
    path: Path
    deploy: dict | None = None  # deploy.json: the 1-bit model's measured latency (bnnbench/deploy/measure.py)
    robustness: dict | None = None  # robustness.json: top-1 under corruptions and attacks

    @property
    def name(self) -> str:
        return self.path.name


def load_run(d: Path) -> StoredRun:
    """The run in ``d``; ValueError/RunError when its files are missing, corrupt or do not belong together."""
    rd = RunDir(d)
    doc = verify_result(read_json(d / RESULT))
    config = rd.read_config()
    spec, cfg_hash = rd.read_spec(config), config.get("hash")
    recorded = doc.get("spec_hash", doc.get("config_hash"))
    if recorded != cfg_hash:
        raise ValueError(f"{RESULT} belongs to run {recorded}, {CONFIG} to {cfg_hash}")
    if doc.get("schema") is not None and spec.hash != cfg_hash:
        raise ValueError(f"{CONFIG} was edited: its content hashes to {spec.hash}, not {cfg_hash}")
    if doc.get("metrics_sha256") and rd.metrics_digest() != doc["metrics_sha256"]:
        raise ValueError(f"{d / 'metrics.jsonl'} was changed after the run finished")
    if doc["status"] == "done" and not isinstance(doc.get("final_top1"), (int, float)):
        raise ValueError("no final accuracy")
    robust = rd.read_robustness()
    return StoredRun(RunResult.from_dict(doc, spec, str(d / RESULT)), d, read_deploy(d),
                     robust if robust and robust.get("spec_hash") == cfg_hash else None)


def read_deploy(d: Path) -> dict | None:
    """The run's ``deploy.json``, None when the run has none; an unreadable one reads as 'unavailable'."""
    path = d / DEPLOY
    if not path.exists():
        return None
    try:
        doc = read_json(path)
        if doc.get("status") == "measured":
            float(doc["end_to_end"]["packed"]["median_s"]), float(doc["end_to_end"]["speedup_vs_fp32"])
        return doc
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        return {"status": "unavailable", "reason": f"{path} is unreadable ({type(e).__name__})"}


def collect(out: Path, warn: Callable[[str], None]) -> list[StoredRun]:
    """Every complete run under ``out/runs``; partial or corrupt ones are skipped with a warning."""
    runs = []
    root = Path(out) / "runs"
    if not root.is_dir():
        return runs
    for d in sorted(p for p in root.iterdir() if p.is_dir()):
        if not (d / RESULT).exists():
            warn(f"skipping {d}: no {RESULT} (unfinished or interrupted run)")
            continue
        try:
            runs.append(load_run(d))
        except (OSError, ValueError, RunError, yaml.YAMLError, KeyError, TypeError) as exc:
            warn(f"skipping {d}: corrupt {RESULT} or {CONFIG} ({type(exc).__name__}: {exc})")
    return runs


def common_changes(runs: list[RunResult]) -> dict:
    """The changes from the recipe that every run of a table shares (shown once, in the title)."""
    items = [set((k, repr(v)) for k, v in r.changes.items() if k != "epochs") for r in runs]
    shared = set.intersection(*items) if items else set()
    keys = {k for k, _ in shared}
    return {k: v for k, v in runs[0].changes.items() if k in keys} if runs else {}


def row_labels(runs: list[RunResult]) -> dict[str, str]:
    """Row label per group: the method and how it differs from the recipe beyond the table's shared
    changes; the group hash is added where two groups would share a label."""
    common = common_changes(runs)

    def label(r: RunResult) -> str:
        return variant_label(r.method, r.changes, common, stage=r.stage)
    by_label: dict[str, set[str]] = defaultdict(set)
    for r in runs:
        by_label[label(r)].add(r.group)
    return {r.group: label(r) if len(by_label[label(r)]) == 1 else f"{label(r)}#{r.group[:6]}" for r in runs}


def fmt_size(nbytes: float | None) -> str:
    """The leaderboard's bit-packed size: MiB with two decimals."""
    return "-" if nbytes is None else f"{nbytes / 2**20:.2f} MiB"


def fmt_si(x: float | None) -> str:
    """The leaderboard's OPs: three significant digits with K / M / G."""
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


def build_tables(stored: list[StoredRun], baseline: str | None = None,
                 published: Callable[[str], list[dict]] | None = None) -> list[dict]:
    """Group runs into tables; each table is {'title', 'rows': [dict per configuration]} (sorted, stable).

    One table per (recipe, track, dataset, backbone, epochs, epochs changed from the recipe, full data); one row per
    run group (the RunSpec without the seed): only seeds of one configuration are averaged. ``published(method)``
    gives a method's published numbers (the command line passes the plugins' own, ``Method.references``);
    by default ``results/reference.yaml``'s.
    """
    groups: dict[tuple, list[RunResult]] = defaultdict(list)
    deploys = {id(s.result): s.deploy for s in stored}
    robust = {id(s.result): s.robustness for s in stored}
    for r in (s.result for s in stored):
        groups[(r.recipe, r.track, r.dataset, r.backbone, r.epochs, bool(r.epochs_overridden),
                bool(r.full_data))].append(r)
    tables = []
    for key in sorted(groups):
        recipe, track, dataset, backbone, epochs, overridden, full = key
        labels = row_labels(groups[key])
        by_group: dict[str, list[RunResult]] = defaultdict(list)
        for r in groups[key]:
            by_group[r.group].append(r)
        rows = [_row(labels[g], by_group[g], dataset, backbone, epochs, full, overridden,
                     [deploys.get(id(r)) for r in by_group[g]], published, [robust.get(id(r)) for r in by_group[g]])
                for g in sorted(by_group, key=lambda g: (by_group[g][0].method, labels[g]))]
        add_statistics(rows, baseline)
        sched = (f"{epochs} epochs" + (" (changed from the recipe)" if overridden else "")
                 + ("" if full else ", data subset"))
        shared = common_changes(groups[key])
        if shared:
            sched += "; all rows: " + ", ".join(f"{k}={shared[k]}" for k in sorted(shared))
        tables.append({"recipe": recipe, "track": track, "dataset": dataset, "backbone": backbone,
                       "epochs": epochs, "epochs_overridden": overridden, "full_data": full,
                       "title": f"{recipe} [{track}] {dataset} / {backbone}, {sched}", "rows": rows,
                       "baseline": baseline if any(r["method"] == baseline for r in rows) else None})
    return tables


def add_statistics(rows: list[dict], baseline: str | None) -> None:
    """Ranks (final and best top-1) and, when ``baseline`` names a row, each row's difference to it with a
    95% interval and a Holm-adjusted p-value (module bnnbench.report.stats)."""
    for key in ("final", "best", "mca", "pgd"):
        for row, rank in zip(rows, ranks([r.get(f"{key}_by_seed") or {} for r in rows])):
            row[f"rank_{key}"] = rank
        base = next((r for r in rows if r["method"] == baseline), None)
        for row in rows:
            row[f"vs_baseline_{key}"] = None
        if base is None or not base.get(f"{key}_by_seed"):
            continue
        tested = [(row, compare(row[f"{key}_by_seed"], base[f"{key}_by_seed"])) for row in rows
                  if row is not base and row.get(f"{key}_by_seed")]
        tested = [(row, c) for row, c in tested if c is not None]
        for (row, c), p in zip(tested, holm([c.p for _, c in tested])):
            row[f"vs_baseline_{key}"] = {"diff": c.diff, "low": c.low, "high": c.high, "p": c.p, "p_holm": p,
                                         "test": c.test}


def _mean(values) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.fmean(values) if values else None


def robustness_cells(runs: list[tuple[RunResult, dict | None]]) -> dict:
    """mCA (complete 15 x 5 corruption sets only) and PGD top-1 at :data:`PGD_EPS` over the row's seeds, with
    95% intervals, or why there are none."""
    mca = {r.seed: d["summary"]["mca"] for r, d in runs if d and (d.get("summary") or {}).get("complete")}
    pgd = {r.seed: d["pgd"][PGD_EPS] for r, d in runs if d and PGD_EPS in (d.get("pgd") or {})}
    cells: dict = {"mca_by_seed": mca or None, "pgd_by_seed": pgd or None,
                   "robust_images": sorted({d["setup"]["images"] for _, d in runs if d})}
    for key, values in (("mca", mca), ("pgd", pgd)):
        m = mean_interval(list(values.values())) if values else None
        cells[key], cells[f"{key}_ci"], cells[f"{key}_n"] = (m.mean, m.half, len(values)) if m else (None, None, 0)
    if not any(d for _, d in runs):
        cells["robust_note"] = "not evaluated (run_bench.py robustness RUN_DIR)"
    elif not mca:
        cells["robust_note"] = "corruption set incomplete (mCA needs all 15 corruptions x 5 severities)"
    return cells


def _deploy_cells(deploys: list[dict | None]) -> dict:
    """Median 1-bit latency (ms) and speed-up over FP32 of the runs' measured exports, or why there is none."""
    measured = [d["end_to_end"] for d in deploys if d and d.get("status") == "measured"]
    reasons = sorted({d["reason"] for d in deploys if d and d.get("status") != "measured" and d.get("reason")})
    if not measured:
        return {"deploy_ms": None, "deploy_speedup": None, "deploy_note": "; ".join(reasons) or None}
    unsteady = [e for e in measured if (e.get("conditions") or {}).get("contended")
                or (e.get("conditions") or {}).get("wide_spread")]
    return {"deploy_ms": 1000 * statistics.median(e["packed"]["median_s"] for e in measured),
            "deploy_speedup": statistics.median(e["speedup_vs_fp32"] for e in measured), "deploy_note": None,
            # the median over runs is one of them: starred when most were timed unsteadily
            "deploy_unsteady": 2 * len(unsteady) > len(measured)}


def _row(label: str, rs: list[RunResult], dataset: str, backbone: str, epochs: int, full: bool,
         overridden: bool, deploys: list[dict | None] | None = None,
         published: Callable[[str], list[dict]] | None = None, robust: list[dict | None] | None = None) -> dict:
    ok = [r for r in rs if r.status == "done"]
    failed = [r for r in rs if r.status == "failed"]
    row = {"method": label, "group": rs[0].group, "n": len(ok), "failed": len(failed),
           "seeds": sorted(r.seed for r in ok), "failures": [f"seed {r.seed}: {r.reason}" for r in failed]}
    if ok:
        final, best = mean_interval([r.final_top1 for r in ok]), mean_interval([r.best_top1 for r in ok])
        ops = dict(ok[0].ops or {})
        silent, flip = _mean(r.silent for r in ok), _mean(r.flip_any for r in ok)
        row.update(final_top1=final.mean, final_top1_ci=final.half, best_top1=best.mean, best_top1_ci=best.half,
                   final_by_seed={r.seed: r.final_top1 for r in ok}, best_by_seed={r.seed: r.best_top1 for r in ok},
                   top5=_mean(r.final_top5 for r in ok), silent=None if silent is None else 100 * silent,
                   flip=None if flip is None else 100 * flip,
                   binary_params=100 * ops["binary_param_ratio"] if ops else None,
                   ops=ops.get("ops"), packed_bytes=ops.get("packed_bytes"),
                   wall=_mean(r.wall_time_s for r in ok), ips=_mean(r.images_per_s for r in ok) or 0.0,
                   epochs_run=max(r.epochs_run for r in ok))
        row.update(_deploy_cells([d for r, d in zip(rs, deploys or [None] * len(rs)) if r.status == "done"]))
    row.update(robustness_cells([(r, d) for r, d in zip(rs, robust or [None] * len(rs)) if r.status == "done"]))
    ref = find_reference(rs[0].method, dataset, backbone, rs[0].stage,
                         published(rs[0].method) if published else None)
    row["paper"] = ref["top1"] if ref else None
    row["paper_source"] = ref["source"] if ref else None
    comparable = (ref is not None and full and not overridden and not rs[0].changes
                  and (ref["epochs"] is None or ref["epochs"] == epochs))
    row["comparable"] = comparable
    row["gap"] = (row["best_top1"] - ref["top1"]) if (comparable and ok) else None
    return row


def _ci(mean: float, half: float | None) -> str:
    return f"{mean:.2f} ± {half:.2f}" if half is not None else f"{mean:.2f} –"


def _ci_n(row: dict, key: str) -> str:
    if row.get(key) is None:
        return "-"
    n = row[f"{key}_n"]
    return _ci(row[key], row[f"{key}_ci"]) + (f" (n={n})" if n != row["n"] else "")


def _vs(v: dict | None) -> str:
    if v is None:
        return "-"
    return f"{v['diff']:+.2f} [{v['low']:+.2f}, {v['high']:+.2f}] p={v['p_holm']:.3g}"


def columns(tables: list[dict]) -> list[str]:
    """The leaderboard's columns; the baseline columns only when some row was compared to a baseline."""
    compared = any(t.get("baseline") for t in tables)
    cols = COLUMNS[:5] + ["Δ final vs baseline", "Δ best vs baseline"] + COLUMNS[5:] if compared else list(COLUMNS)
    if any(r.get("mca") is not None or r.get("pgd") is not None for t in tables for r in t.get("rows", [])):
        at = cols.index("top5")
        cols[at:at] = ROBUST_COLUMNS[:2] + (["Δ mCA vs baseline"] if compared else []) + ROBUST_COLUMNS[2:] \
            + (["Δ PGD vs baseline"] if compared else [])
    return cols


def cells(row: dict, cols: list[str]) -> list[str]:
    if not row["n"]:
        return [row["method"], f"failed ({'; '.join(row['failures'])})"] + ["-"] * (len(cols) - 2)
    top1 = f"{_ci(row['final_top1'], row['final_top1_ci'])} (n={row['n']})"
    if row["failed"]:
        top1 += f" [{row['failed']} failed]"
    paper = "-" if row["paper"] is None else f"{row['paper']:.2f}"
    gap = (f"{row['gap']:+.2f}" if row["gap"] is not None else ("n/c" if row["paper"] is not None else "-"))
    cells = {"method": row["method"], "top1 final": top1, "rank": str(row.get("rank_final") or "-"),
             "top1 best": _ci(row["best_top1"], row["best_top1_ci"]), "rank best": str(row.get("rank_best") or "-"),
             "Δ final vs baseline": _vs(row.get("vs_baseline_final")),
             "Δ best vs baseline": _vs(row.get("vs_baseline_best")),
             "mCA": _ci_n(row, "mca"), "rank mCA": str(row.get("rank_mca") or "-"),
             "Δ mCA vs baseline": _vs(row.get("vs_baseline_mca")),
             f"PGD {PGD_EPS}/255": _ci_n(row, "pgd"), "rank PGD": str(row.get("rank_pgd") or "-"),
             "Δ PGD vs baseline": _vs(row.get("vs_baseline_pgd")),
             "top5": "-" if row["top5"] is None else f"{row['top5']:.2f}", "paper": paper, "gap": gap,
             "silent %": "-" if row["silent"] is None else f"{row['silent']:.2f}",
             "flip %": "-" if row["flip"] is None else f"{row['flip']:.2f}",
             "binary params %": "-" if row["binary_params"] is None else f"{row['binary_params']:.1f}",
             "OPs": fmt_si(row["ops"]),
             "size": fmt_size(row["packed_bytes"]),
             "1-bit ms (b1, CPU)": "-" if row.get("deploy_ms") is None else
                                   f"{row['deploy_ms']:.3f}" + ("*" if row.get("deploy_unsteady") else ""),
             "x FP32": "-" if row.get("deploy_speedup") is None else f"{row['deploy_speedup']:.2f}",
             "epochs": str(row["epochs_run"]), "wall/run": _fmt_time(row["wall"]), "img/s": f"{row['ips']:.0f}"}
    return [cells[c] for c in cols]


#: what each column means, by its header: the files print them all (``NOTES``), the console only the shown ones
COLUMN_NOTES = {
    "top1 final": "top1 final: last-epoch test top-1, mean ± 95% confidence half-width over n seeds (Student t; "
                  "'–': one seed, no interval).",
    "top1 best": "top1 best: best-epoch top-1, what the papers report; choosing the best epoch on the test set is "
                 "optimistic.",
    "rank": "rank: 1 + the rows of the table significantly better (pairwise t-tests, paired on common seeds, Welch "
            "otherwise, Holm-corrected over the table's pairs, alpha 0.05); rows not significantly different from "
            "the best share rank 1, and one seed per row never separates rows.",
    "Δ final vs baseline": "Δ vs baseline: difference to the baseline row with its 95% interval and "
                           "Holm-corrected p (same tests).",
    "mCA": "mCA: mean top-1 over the 15 common corruptions x 5 severities (Hendrycks & Dietterich; CIFAR-10-C's "
           "parameters at 32 px, ImageNet-C's at 224 px; bnnbench/data/corruptions.py), mean ± 95% interval over "
           "seeds; rank mCA and Δ mCA as for top-1.",
    f"PGD {PGD_EPS}/255": f"PGD {PGD_EPS}/255: top-1 under a 10-step L-inf PGD attack of radius {PGD_EPS}/255 through "
                          "the model's own surrogate gradients (bnnbench/engine/attacks.py; robustness.json also "
                          "holds FGSM, other radii and the transfer attack from a full-precision network); "
                          "'-': not evaluated.",
    "gap": "gap = top1 best - paper, shown only for runs of the paper's full schedule on the full data "
           "(n/c: not comparable).",
    "silent %": "silent %: binary weights whose effective sign never flipped;",
    "flip %": "flip %: weights that flipped at least once in the last epoch.",
    "OPs": "OPs = FLOPs + BOPs/64 per image;",
    "size": "size: binary weights at 1 bit, other parameters at 32 bit.",
    "1-bit ms (b1, CPU)": "1-bit ms: measured latency of the run's exported model at batch 1 on the CPU that "
                          "trained it (bit-packed XNOR-popcount kernels, bnnbench/deploy/kernels.py; median over "
                          "runs);",
    "x FP32": "x FP32: speed-up over the same network with FP32 convolutions on that CPU, same threads; '-': not "
              "measured (the row's footnote says why).",
    "wall/run": "wall/run: wall-clock time per run.",
}
NOTES = " ".join(v for k, v in COLUMN_NOTES.items() if k != "wall/run" and k not in ROBUST_COLUMNS)


def notes(tables: list[dict]) -> str:
    """The column definitions of ``tables`` (the robustness ones only when its columns are shown) and the
    rows' footnotes."""
    shown = columns(tables)
    robust = " ".join(COLUMN_NOTES[c] for c in ROBUST_COLUMNS if c in COLUMN_NOTES and c in shown)
    return " ".join(filter(None, (NOTES, robust, deploy_notes(tables))))


UNSTEADY_NOTE = ("* 1-bit ms of most of the row's runs was timed while other work kept the CPU busy or with a "
                 "wide spread between timing rounds, so it is not a latency figure (x FP32 is paired per round and "
                 "stays valid); run_bench.py deploy-bench --run RUN_DIR re-measures on a quiet machine.")


def deploy_notes(tables: list[dict], robustness: bool = True) -> str:
    """Why rows have no 1-bit figures (one line per distinct reason), what a starred latency means and, unless
    ``robustness`` is false (a view without those columns), the robustness subset and why rows have no
    robustness figures; or ''."""
    reasons = sorted({r["deploy_note"] for t in tables for r in t["rows"] if r.get("deploy_note")})
    unsteady = any(r.get("deploy_unsteady") for t in tables for r in t["rows"])
    robust = robustness and any(r.get("mca") is not None or r.get("pgd") is not None for t in tables
                                for r in t["rows"])
    missing = sorted({f"{r['method']}: {r['robust_note']}" for t in tables for r in t["rows"]
                      if robust and r.get("robust_note")})
    images = sorted({n for t in tables for r in t["rows"] for n in r.get("robust_images") or []}) if robust else []
    return " ".join([f"1-bit columns empty: {why}." for why in reasons] + ([UNSTEADY_NOTE] if unsteady else [])
                    + ([f"Robustness on the first {', '.join(map(str, images))} test images."] if images else [])
                    + [f"No robustness figures for {m}." for m in missing])


def render(tables: list[dict], fmt: str) -> str:
    if fmt == "json":
        return json.dumps({"tables": tables, "notes": notes(tables)}, indent=2, sort_keys=True) + "\n"
    if fmt == "csv":
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        cols = columns(tables)
        w.writerow(["table"] + cols)
        for t in tables:
            for row in t["rows"]:
                w.writerow([t["title"]] + cells(row, cols))
        return buf.getvalue()
    tablefmt = {"md": "github", "latex": "latex_booktabs"}[fmt]
    parts = []
    for t in tables:
        cols = columns([t])
        body = tabulate([cells(r, cols) for r in t["rows"]], headers=cols, tablefmt=tablefmt, disable_numparse=True)
        if fmt == "md":
            parts.append(f"### {t['title']}\n\n{body}\n")
        else:
            parts.append(f"% {t['title']}\n{body}\n")
    text = notes(tables)
    if fmt == "md":
        parts.append(f"_{text}_\n")
    else:
        parts.append(f"% {text}\n")
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
