"""``run_bench.py report --format html``: one self-contained page (``OUT/report.html``).

No network and no external files: styles and the small column-sorting script are inline, and every plot
(accuracy and flip-ratio curves per table, the silent-weight histogram of every run) is embedded as a PNG
data URI. Per table: the leaderboard (click a header to sort), its notes, its plots, each row's
hyperparameters and how it differs from the recipe, and the provenance of every run (directory, seed,
status, commit, command, device, torch and bnnbench versions, wall time).
"""
from __future__ import annotations

import base64
import html
import json
from pathlib import Path

from bnnbench.report.plots import curve_stem
from bnnbench.report.tables import NOTES, StoredRun, cells, columns, deploy_notes, row_labels

STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:24px;color:#222}h1{font-size:22px}h2{font-size:17px;margin-top:32px}
table{border-collapse:collapse;margin:8px 0}
th,td{border:1px solid #ccc;padding:3px 7px;text-align:right;white-space:nowrap}
th{background:#f1f1f1;cursor:pointer;user-select:none}td:first-child,th:first-child{text-align:left}
.notes{color:#555;font-size:12px;max-width:1100px}img{max-width:640px;margin:4px;border:1px solid #ddd}
code{font-size:12px}details{margin:6px 0}
"""

SCRIPT = """
function sortBy(th){const t=th.closest('table'),i=[...th.parentNode.children].indexOf(th),b=t.tBodies[0];
const num=s=>{const m=s.replace(/[^0-9eE.+-]/g,' ').trim().split(' ')[0];const v=parseFloat(m);return isNaN(v)?null:v};
const dir=th.dataset.dir==='asc'?-1:1;th.dataset.dir=dir===1?'asc':'desc';
[...b.rows].sort((x,y)=>{const a=x.cells[i].textContent,c=y.cells[i].textContent,na=num(a),nc=num(c);
return dir*((na!==null&&nc!==null)?na-nc:a.localeCompare(c))}).forEach(r=>b.appendChild(r))}
document.querySelectorAll('th').forEach(th=>th.addEventListener('click',()=>sortBy(th)));
window.addEventListener('load',()=>{const imgs=[...document.images];
document.body.dataset.images=imgs.length;document.body.dataset.loaded=imgs.filter(i=>i.complete&&i.naturalWidth>0).length});
"""


def _img(path: Path, alt: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def _table(head: list[str], rows: list[list[str]], cls: str = "") -> str:
    th = "".join(f"<th>{html.escape(h)}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>" for r in rows)
    return f'<table class="{cls}"><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table>'


def _section(t: dict, runs: list[StoredRun], plots: Path) -> str:
    cols = columns([t])
    parts = [f"<h2>{html.escape(t['title'])}</h2>", _table(cols, [cells(r, cols) for r in t["rows"]], "leaderboard")]
    stem = curve_stem(t["recipe"], t["track"], t["backbone"], t["epochs"], t["full_data"])
    for kind in ("curves", "flips"):
        if (plots / f"{kind}__{stem}.png").exists():
            parts.append(_img(plots / f"{kind}__{stem}.png", f"{kind} of {t['title']}"))
    mine = [s for s in runs if (s.result.recipe, s.result.track, s.result.backbone, s.result.epochs,
                                bool(s.result.full_data)) == (t["recipe"], t["track"], t["backbone"], t["epochs"],
                                                              t["full_data"])]
    labels = row_labels([s.result for s in mine])
    first = {}
    for s in sorted(mine, key=lambda s: s.result.seed):
        first.setdefault(s.result.group, s.result)
    parts.append("<h3>Hyperparameters</h3>" + _table(
        ["row", "method hyperparameters", "changes from the recipe"],
        [[labels[g], json.dumps(dict(r.method_hparams), sort_keys=True), json.dumps(dict(r.changes), sort_keys=True)]
         for g, r in sorted(first.items(), key=lambda kv: labels[kv[0]])]))
    parts.append("<h3>Runs</h3>" + _table(
        ["run", "row", "seed", "status", "git commit", "command", "device", "torch", "bnnbench", "wall s"],
        [[s.name, labels[s.result.group], s.result.seed, s.result.status + (f": {s.result.reason}" if s.result.reason
          else ""), s.result.git_commit or "-", s.result.command or "-", s.result.device, s.result.torch,
          s.result.bnnbench, f"{s.result.wall_time_s:.0f}"] for s in sorted(mine, key=lambda s: s.name)]))
    hists = [(s.name, plots / f"silent__{s.name}.png") for s in mine if (plots / f"silent__{s.name}.png").exists()]
    if hists:
        parts.append("<details open><summary>Silent-weight histograms</summary>"
                     + "".join(_img(p, f"silent weights of {name}") for name, p in hists) + "</details>")
    return "\n".join(parts)


def render_html(tables: list[dict], runs: list[StoredRun], out: Path) -> str:
    """The report page for the tables and runs under ``out`` (plots are read from ``out/plots``)."""
    plots = Path(out) / "plots"
    body = "\n".join(_section(t, runs, plots) for t in tables) or "<p>No finished runs.</p>"
    notes = " ".join(filter(None, (NOTES, deploy_notes(tables))))
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>bnnbench report</title>'
            f"<style>{STYLE}</style></head><body><h1>bnnbench leaderboard</h1>"
            f'<p class="notes">{html.escape(notes)}</p>{body}<script>{SCRIPT}</script></body></html>\n')
