"""Publishing a results folder: the leaderboard printed in one format and written in all of them
(md/csv/tex/json), the plots, and the self-contained HTML page."""
from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

from bnnbench.errors import ConfigError, did_you_mean, warn_to
from bnnbench.report.console import check_columns, print_console
from bnnbench.report.html import render_html
from bnnbench.report.plots import plot_all
from bnnbench.report.tables import build_tables, collect, render, write_reports
from bnnbench.store import atomic_write_text


def publish(out: Path, console, fmt: str, baseline: str | None = None,
            published: Callable[[str], list[dict]] | None = None, columns: list[str] | None = None,
            wide: bool = False) -> tuple[dict, list]:
    """Collect the runs under ``out``, print the leaderboard in ``fmt`` and write its files and plots.

    The table is printed first; files that cannot be written (read-only folder, full disk) are reported as
    warnings, not tracebacks. ``published``: a method's published numbers (see :func:`build_tables`);
    ``columns`` / ``wide``: the console's columns (:mod:`bnnbench.report.console`; the files keep all).
    """
    check_columns(columns)
    warn, skipped = warn_to(console), []
    runs = collect(out, lambda msg: (skipped.append(msg), warn(msg)))  # named on the page too
    tables = build_tables(runs, baseline, published)
    if baseline and not any(r["method"] == baseline for t in tables for r in t["rows"]):
        labels = sorted({r["method"] for t in tables for r in t["rows"]})
        raise ConfigError(f"--baseline {baseline!r} is no row of the leaderboard{did_you_mean(baseline, labels)}; "
                          f"rows: {', '.join(labels) or '(none)'}")
    if fmt == "rich":
        print_console(tables, console, columns, wide)
    elif fmt != "html":
        sys.stdout.write(render(tables, fmt))
        sys.stdout.flush()
    files, plots = {}, []
    try:
        files = write_reports(out, tables)
        plots = plot_all(runs, out, warn)
        atomic_write_text(out / "report.html", render_html(tables, runs, out, skipped))
        files["html"] = out / "report.html"
    except OSError as exc:
        warn(f"could not write the leaderboard files or plots under {out} ({exc.strerror or exc}); the table "
             f"above is complete")
    if fmt == "html" and "html" in files:
        console.print(f"report page: {files['html']}")
    return files, plots

