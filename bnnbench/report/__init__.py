"""Reports, built only from run directories (plus ``results/reference.yaml``).

* :mod:`~bnnbench.report.tables`: leaderboards (one table per recipe x track x backbone x schedule, one row
  per configuration over seeds), md/csv/tex/json rendering, the console table;
* :mod:`~bnnbench.report.console`: the terminal's table (default columns that fit 100 characters,
  ``--columns``, ``--wide``) and its footnote;
* :mod:`~bnnbench.report.stats`: mean and 95% interval, paired/Welch tests, Holm correction, ranks;
* :mod:`~bnnbench.report.plots`: accuracy curves, flip and silent-weight plots; :mod:`~bnnbench.report.html`:
  the self-contained report page; :mod:`~bnnbench.report.publish`: print one format, write them all.

Layering: reads the store and the config; never imports the engine, deploy, tools, the runner or a plugin
(the command line hands :func:`publish` the plugins' published numbers).
"""
from bnnbench.report.console import print_console
from bnnbench.report.publish import publish
from bnnbench.report.tables import StoredRun, build_tables, collect, load_run, render, write_reports

__all__ = ["StoredRun", "build_tables", "collect", "load_run", "print_console", "publish", "render", "write_reports"]
