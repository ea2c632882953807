"""The leaderboard in a terminal: a few columns that fit 100 characters, every shown number whole.

Default columns: the row, top-1 final ± 95% interval (n), rank, Δ vs the baseline (when ``--baseline`` is
given), silent %, the 1-bit latency and its speed-up over FP32, and the wall time per run. ``--columns ID ...``
picks others (:data:`CONSOLE_COLUMNS` lists the ids), ``--wide`` shows all of them; the files written next
to it (md/csv/tex/json/html) always hold every column. The footnote explains only the columns shown and
wraps at the terminal's width. A row label may wrap inside its cell; numbers never do, and are never cut.
"""
from __future__ import annotations

from rich import box
from rich.markup import escape
from rich.table import Table

from bnnbench.errors import ConfigError, did_you_mean
from bnnbench.report.tables import PGD_EPS, cells, columns, deploy_notes

#: column id -> (header in the files, header in the terminal)
CONSOLE_COLUMNS = {
    "method": ("method", "method"), "top1": ("top1 final", "top1 final"), "rank": ("rank", "rank"),
    "top1_best": ("top1 best", "top1 best"), "rank_best": ("rank best", "rank best"),
    "delta": ("Δ final vs baseline", "Δ vs baseline"), "delta_best": ("Δ best vs baseline", "Δ best vs base"),
    "top5": ("top5", "top5"), "paper": ("paper", "paper"), "gap": ("gap", "gap"), "silent": ("silent %", "silent%"),
    "flip": ("flip %", "flip%"), "binary": ("binary params %", "binary%"), "ops": ("OPs", "OPs"),
    "size": ("size", "size"), "bit_ms": ("1-bit ms (b1, CPU)", "1-bit ms"), "x_fp32": ("x FP32", "x FP32"),
    "epochs": ("epochs", "epochs"), "wall": ("wall/run", "wall"), "ips": ("img/s", "img/s"),
    "mca": ("mCA", "mCA"), "rank_mca": ("rank mCA", "rank mCA"), "delta_mca": ("Δ mCA vs baseline", "Δ mCA"),
    "pgd": (f"PGD {PGD_EPS}/255", f"PGD {PGD_EPS}/255"), "rank_pgd": ("rank PGD", "rank PGD"),
    "delta_pgd": ("Δ PGD vs baseline", "Δ PGD"),
}
DEFAULT = ("method", "top1", "rank", "delta", "silent", "bit_ms", "x_fp32", "wall")
#: one clause per column for the terminal's footnote (the files carry the full definitions)
SHORT_NOTES = {
    "top1 final": "top1 final: last-epoch test top-1, mean ± 95% CI half-width over n seeds",
    "top1 best": "top1 best: best epoch's (optimistic; what papers report)",
    "rank": "rank: 1 + rows significantly better (pairwise t-tests, Holm, alpha 0.05)",
    "rank best": "rank best: the same for top1 best",
    "Δ final vs baseline": "Δ: difference to the baseline ± 95% CI half-width, Holm-corrected p",
    "Δ best vs baseline": "Δ best: the same for top1 best",
    "top5": "top5: last-epoch top-5", "paper": "paper: the published top-1",
    "gap": "gap: top1 best - paper (n/c: not the paper's schedule and data)",
    "silent %": "silent%: binary weights whose sign never flipped",
    "flip %": "flip%: weights that flipped in the last epoch",
    "binary params %": "binary%: share of the parameters that are 1-bit",
    "OPs": "OPs: FLOPs + BOPs/64 per image", "size": "size: 1-bit weights packed, the rest at 32 bit",
    "1-bit ms (b1, CPU)": "1-bit ms: the exported 1-bit model's batch-1 latency on the CPU that trained it",
    "x FP32": "x FP32: its speed-up over the FP32 network there", "epochs": "epochs: epochs run",
    "wall/run": "wall: time per run", "img/s": "img/s: training images per second",
    "mCA": "mCA: mean top-1 over 15 corruptions x 5 severities (run_bench.py robustness)",
    "rank mCA": "rank mCA: rank by mCA", "Δ mCA vs baseline": "Δ mCA: mCA difference to the baseline",
    f"PGD {PGD_EPS}/255": f"PGD {PGD_EPS}/255: top-1 under 10-step PGD at eps {PGD_EPS}/255",
    "rank PGD": "rank PGD: rank by PGD top-1", "Δ PGD vs baseline": "Δ PGD: PGD top-1 difference to the baseline",
}


def check_columns(ids: list[str] | None) -> None:
    """``--columns`` ids must be known (error naming the bad one, the closest and every allowed id)."""
    for c in ids or []:
        if c not in CONSOLE_COLUMNS:
            raise ConfigError(f"--columns {c!r} is not a column{did_you_mean(c, CONSOLE_COLUMNS)}; "
                              f"allowed: {', '.join(CONSOLE_COLUMNS)}")


def shown(tables: list[dict], ids: list[str] | None = None, wide: bool = False) -> list[str]:
    """The file headers of the columns to show: all (``wide``), the ``ids`` asked for, or the default set;
    the row label always first, the baseline columns only when a baseline was given."""
    check_columns(ids)
    every = columns(tables)
    if wide:
        return every
    want = ["method"] + [c for c in (ids or DEFAULT) if c != "method"]
    headers = [CONSOLE_COLUMNS[c][0] for c in want]
    return [h for h in headers if h in every]


def compact(cell: str, header: str) -> str:
    """A Δ cell as ``+13.25 ± 2.70 p=0.011`` (the files keep ``+13.25 [+10.56, +15.95] p=0.0111``)."""
    if not header.startswith("Δ") or "[" not in cell:
        return cell
    diff, rest = cell.split(" [", 1)
    low, high = (float(x) for x in rest.split("]", 1)[0].split(", "))
    p = float(cell.rsplit("p=", 1)[1])
    return f"{diff} ± {(high - low) / 2:.2f} p={p:.2g}"


def print_console(tables: list[dict], console, ids: list[str] | None = None, wide: bool = False) -> None:
    """Each table with the shown columns, then the footnote for exactly those columns. In a terminal too
    narrow for the default set, the last columns are left out (the footnote says which) rather than cut."""
    if not tables:
        console.print("No finished runs.")
        return
    cols = shown(tables, ids, wide)
    rendered = [[[compact(c, h) for c, h in zip(cells(r, cols), cols)] for r in t["rows"]] for t in tables]
    widths = [max([len(_TERMINAL.get(h, h))] + [len(r[i]) for rows in rendered for r in rows])
              for i, h in enumerate(cols)]
    dropped = []
    while not (ids or wide) and len(cols) > 3 and _needed(widths) > console.width:
        dropped.insert(0, _TERMINAL[cols.pop()])
        widths.pop()
        rendered = [[r[:len(cols)] for r in rows] for rows in rendered]
    for t, rows in zip(tables, rendered):
        console.print(escape(t["title"]), style="italic")   # as wide as the terminal, not the table
        table = Table(box=box.SIMPLE_HEAD, padding=(0, 0), pad_edge=False, show_edge=False)
        for h, width in zip(cols, widths):
            if h == "method":
                table.add_column(_TERMINAL[h], overflow="fold", min_width=min(width, METHOD_MIN), ratio=1)
            else:
                table.add_column(_TERMINAL.get(h, h), justify="right", no_wrap=True, min_width=width)
        for r in rows:
            table.add_row(*(escape(c) for c in r))
        console.print(table)
    notes = [SHORT_NOTES[h] for h in cols if h in SHORT_NOTES]
    more = f" Not shown in a terminal this narrow: {', '.join(dropped)}." if dropped else ""
    console.print(escape("; ".join(notes) + f". Full definitions and every column: leaderboard.md.{more}"),
                  style="dim")
    extra = deploy_notes(tables, robustness=any(h in _ROBUST for h in cols))
    if extra:
        console.print(escape(extra), style="yellow")


#: the row label's narrowest width (longer labels wrap inside the cell)
METHOD_MIN = 12
_TERMINAL = {v[0]: v[1] for v in CONSOLE_COLUMNS.values()}
#: the robustness columns' headers: their notes show only with them
_ROBUST = {CONSOLE_COLUMNS[k][0] for k in ("mca", "rank_mca", "delta_mca", "pgd", "rank_pgd", "delta_pgd")}


def _needed(widths: list[int]) -> int:
    """Characters a table of these column widths needs (label at its narrowest, one space between columns)."""
    return min(widths[0], METHOD_MIN) + sum(widths[1:]) + len(widths) - 1
