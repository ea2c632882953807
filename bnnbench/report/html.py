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
from bnnbench.report.tables import StoredRun, cells, columns, notes, row_labels

STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:24px;color:#222;max-width:1400px}h1{font-size:22px}
h2{font-size:17px;margin-top:32px;overflow-wrap:anywhere}
.scroll{overflow-x:auto;max-width:100%;margin:8px 0;border-right:1px solid #eee}
table{border-collapse:collapse}
th,td{border:1px solid #ccc;padding:3px 7px;text-align:right;white-space:nowrap;vertical-align:top}
th{background:#f1f1f1;cursor:pointer;user-select:none}td:first-child,th:first-child{text-align:left}
.scroll>table>*>tr>:first-child{position:sticky;left:0;z-index:1;background:#fff;box-shadow:1px 0 0 #ccc}
.scroll>table>thead>tr>:first-child{background:#f1f1f1}
table.kv{margin:0;font-size:12px}table.kv td{border:none;padding:0 6px 0 0;text-align:left}
table.kv td:first-child{color:#666;position:static;box-shadow:none}
.notes{color:#555;font-size:12px;max-width:1100px}img{max-width:min(640px,100%);margin:4px;border:1px solid #ddd}
code{font-size:12px}details{margin:6px 0}
"""

SCRIPT = """
function sortBy(th){const t=th.closest('table'),i=[...th.parentNode.children].indexOf(th),b=t.tBodies[0];
const num=s=>{const m=s.replace(/[^0-9eE.+-]/g,' ').trim().split(' ')[0];const v=parseFloat(m);return isNaN(v)?null:v};
const dir=th.dataset.dir==='asc'?-1:1;th.dataset.dir=dir===1?'asc':'desc';
[...b.rows].sort((x,y)=>{const a=x.cells[i].textContent,c=y.cells[i].textContent,na=num(a),nc=num(c);
return dir*((na!==null&&nc!==null)?na-nc:a.localeCompare(c))}).forEach(r=>b.appendChild(r))}
document.querySelectorAll('th').forEach(th=>th.addEventListener('click',()=>sortBy(th)));
window.addEventListener('load',()=>{const imgs=[...document.images],d=document.body.dataset;
d.images=imgs.length;d.loaded=imgs.filter(i=>i.complete&&i.naturalWidth>0).length;
d.scrollwidth=document.documentElement.scrollWidth;d.viewport=document.documentElement.clientWidth});
"""


def _img(path: Path, alt: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


class Html(str):
    """A cell that is already HTML (a nested key/value table), put in as it is."""


def _cell(c) -> str:
    return c if isinstance(c, Html) else html.escape(str(c))


def _table(head: list[str], rows: list[list[str]], cls: str = "") -> str:
    """A table in its own horizontally scrolling box (its first column stays in view)."""
    th = "".join(f"<th>{html.escape(h)}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{_cell(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f'<div class="scroll"><table class="{cls}"><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table></div>'


def _kv(d) -> Html:
    """A mapping as a small key/value table ("-" when empty); nested values as compact JSON."""
    if not d:
        return Html("-")
    rows = "".join(f"<tr><td>{html.escape(str(k))}</td><td>{html.escape(_value(v))}</td></tr>"
                   for k, v in sorted(d.items()))
    return Html(f'<table class="kv">{rows}</table>')


def _value(v) -> str:
    return v if isinstance(v, str) else json.dumps(v, sort_keys=True) if isinstance(v, (dict, list)) else str(v)


def _section(t: dict, runs: list[StoredRun], plots: Path) -> str:
    cols = columns([t])
    parts = [f"<h2>{html.escape(t['title'])}</h2>", _table(cols, [cells(r, cols) for r in t["rows"]], "leaderboard")]
    stem = curve_stem(t["recipe"], t["track"], t["backbone"], t["epochs"], t["full_data"])
    for kind in ("curves", "flips", "robustness"):
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
        [[labels[g], _kv(r.method_hparams), _kv(r.changes)]
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


def render_html(tables: list[dict], runs: list[StoredRun], out: Path, skipped: list[str] = ()) -> str:
    """The report page for the tables and runs under ``out`` (plots are read from ``out/plots``); ``skipped``:
    the run directories left out and why (unfinished, damaged), listed at the end."""
    plots = Path(out) / "plots"
    body = "\n".join(_section(t, runs, plots) for t in tables) or "<p>No finished runs.</p>"
    if skipped:
        body += ("<h2>Run directories not reported</h2><ul>"
                 + "".join(f"<li><code>{html.escape(s)}</code></li>" for s in skipped) + "</ul>")
    text = notes(tables)
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>bnnbench report</title>'
            f"<style>{STYLE}</style></head><body><h1>bnnbench leaderboard</h1>"
            f'<p class="notes">{html.escape(text)}</p>{body}<script>{SCRIPT}</script></body></html>\n')
