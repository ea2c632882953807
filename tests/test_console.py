"""The terminal's leaderboard (bnnbench/report/console.py) in a real terminal of 100 and 120 columns (tmux):
every shown cell whole, the footnote for the shown columns only; --columns / --wide pick others."""
import shutil
import subprocess
import sys
import time

import pytest
from conftest import ROOT, make_recipe
from rich.console import Console

from bnnbench.errors import ConfigError
from bnnbench.report.console import compact, print_console, shown
from bnnbench.report.tables import build_tables, cells, collect

EVIDENCE = ROOT / "results" / "cifar10-cpu" / "runs"
BASELINE = "ovsw[ags=False,sad=False]"


@pytest.fixture(scope="module")
def out(tmp_path_factory):
    """The committed CIFAR-10 runs (their json/yaml/jsonl files, as a fresh clone has them)."""
    if not EVIDENCE.is_dir():
        pytest.skip("the committed runs of results/cifar10-cpu are absent")
    out = tmp_path_factory.mktemp("console")
    for run in EVIDENCE.iterdir():
        shutil.copytree(run, out / "runs" / run.name, ignore=shutil.ignore_patterns("*.pt"))
    return out


def expected_cells(out, ids=None) -> list[list[str]]:
    tables = build_tables(collect(out, warn=print), BASELINE)
    cols = shown(tables, ids)
    return [[compact(c, h) for c, h in zip(cells(r, cols), cols)] for t in tables for r in t["rows"]], cols


def in_terminal(width: int, args: list[str], tmp) -> str:
    """What ``run_bench.py ARGS`` shows in a tmux pane ``width`` columns wide (COLUMNS, which a test runner may
    export, would override the pane's size)."""
    session = f"bnnbench-{width}-{time.monotonic_ns()}"
    done = tmp / f"done-{width}"
    cmd = " ".join([sys.executable, str(ROOT / "run_bench.py"), *(f"'{a}'" for a in args)])
    subprocess.run(["tmux", "new-session", "-d", "-s", session, "-x", str(width), "-y", "80",
                    f"unset COLUMNS LINES; cd {ROOT} && {cmd}; touch {done}; sleep 1000"], check=True)
    try:
        deadline = time.monotonic() + 900   # a bound against a hang, not a speed check: slow or shared CPUs
        while not done.exists() and time.monotonic() < deadline:   # train the front door's runs for minutes
            time.sleep(0.2)
        assert done.exists(), "the command did not finish within 15 minutes"
        return subprocess.run(["tmux", "capture-pane", "-p", "-t", session], capture_output=True, text=True,
                              check=True).stdout
    finally:
        subprocess.run(["tmux", "kill-session", "-t", session], capture_output=True)


@pytest.mark.skipif(shutil.which("tmux") is None, reason="needs tmux (Debian package 'tmux'; .ci/run installs it)")
@pytest.mark.parametrize("width", [100, 120])
def test_default_columns_fit_the_terminal_whole(out, width, tmp_path):
    screen = in_terminal(width, ["report", "--out", str(out), "--baseline", BASELINE], tmp_path)
    rows, cols = expected_cells(out)
    assert cols == ["method", "top1 final", "rank", "Δ final vs baseline", "silent %", "1-bit ms (b1, CPU)",
                    "x FP32", "wall/run"]
    assert "…" not in screen and max(map(len, screen.splitlines())) <= width, screen
    lines = screen.splitlines()
    for row in rows:
        label, numbers = row[0], row[1:]
        i = next(k for k, ln in enumerate(lines) if numbers[0] in ln and ln.startswith(label[:8]))
        assert all(n in lines[i] for n in numbers), (row, lines[i])   # every number on its row's line, whole
        got, k = lines[i][:lines[i].index(numbers[0])].strip(), i + 1
        while k < len(lines) and len(lines[k].split()) == 1 and "±" not in lines[k]:  # a label may wrap in its cell
            got, k = got + lines[k].strip(), k + 1
        assert got == label, (got, label, screen)
    footnote = screen[screen.index("top1 final: "):]
    assert "silent%:" in footnote and "flip%" not in footnote and "OPs" not in footnote  # only shown columns


@pytest.mark.skipif(shutil.which("tmux") is None, reason="needs tmux (Debian package 'tmux'; .ci/run installs it)")
@pytest.mark.slow
def test_the_front_doors_final_table_is_whole_in_the_terminal(tmp_path, tiny_cifar, width=100):
    """``run_bench.py --methods ovsw recu`` (the README's main command, on a tiny recipe): its final table."""
    recipe = make_recipe(tmp_path / "tiny.yaml", epochs=1)
    out = tmp_path / "out"
    screen = in_terminal(width, ["--methods", "ovsw", "recu", "--recipe", str(recipe), "--data-root", str(tiny_cifar),
                                 "--out", str(out), "--device", "cpu"], tmp_path)
    tables = build_tables(collect(out, warn=print))
    cols = shown(tables)
    assert cols == ["method", "top1 final", "rank", "silent %", "1-bit ms (b1, CPU)", "x FP32", "wall/run"]
    assert "…" not in screen, screen
    table = screen[screen.index("method "):]
    for row in tables[0]["rows"]:
        line = next(ln for ln in table.splitlines() if ln.startswith(row["method"] + " "))
        assert all(c in line for c in cells(row, cols)), (cells(row, cols), line)


def test_columns_and_wide_pick_what_the_terminal_shows(out):
    tables = build_tables(collect(out, warn=print), BASELINE)
    assert shown(tables, ["top5", "ops"]) == ["method", "top5", "OPs"]
    robustness = ["mCA", "rank mCA", "Δ mCA vs baseline", "PGD 2/255", "rank PGD", "Δ PGD vs baseline"]
    wide = shown(tables, wide=True)   # the committed runs carry robustness.json: its columns join the rest
    assert len(wide) == 26 and wide[wide.index("Δ best vs baseline") + 1:wide.index("top5")] == robustness
    assert "Δ final vs baseline" not in shown(build_tables(collect(out, warn=print)))  # no baseline asked
    with pytest.raises(ConfigError, match="'sillent'.*did you mean 'silent'"):
        shown(tables, ["sillent"])
    console = Console(width=100, record=True)
    print_console(tables, console, ["top5", "size"])
    text = console.export_text()
    assert "top5" in text and "0.04 MiB" in text and "silent" not in text and "…" not in text


def test_a_narrow_terminal_leaves_columns_out_instead_of_cutting_them(out):
    tables = build_tables(collect(out, warn=print), BASELINE)
    console = Console(width=72, record=True)
    print_console(tables, console)
    text = console.export_text()
    assert "…" not in text and "1-bit ms" not in text.split("top1 final:")[0]
    assert "Not shown in a terminal this narrow: 1-bit ms, x FP32, wall." in " ".join(text.split())


@pytest.mark.parametrize("arch", sorted(__import__("bnnbench.plugins", fromlist=["x"]).ARCHITECTURES.names()))
def test_summary_totals_are_the_leaderboards_columns(arch):
    """``run_bench.py summary``'s totals: the counter a run records (count_ops of the model a run builds)."""
    from bnnbench.nn.ops import count_ops
    from bnnbench.plugins import ARCHITECTURES, METHODS, build_model
    from bnnbench.report.tables import fmt_si, fmt_size
    from bnnbench.tools.summary import print_summary, summarize
    rows, totals = summarize(arch, "ovsw")
    spec = ARCHITECTURES.get(arch)
    model = build_model(METHODS.get("ovsw")(family=spec.family), spec, 1000 if spec.family == "imagenet" else 10)
    assert totals == count_ops(model, spec.input_size).as_dict()
    assert sum(r.params for r in rows) == sum(p.numel() for p in model.parameters()) == totals["params"]
    assert sum(r.macs for r in rows if r.kind == "binary conv") == totals["bops"] > 0
    console = Console(width=200, record=True)
    print_summary(rows, totals, arch, console)
    text = console.export_text()
    assert f"OPs {fmt_si(totals['ops'])}" in text and f"size {fmt_size(totals['packed_bytes'])}" in text


def test_summary_matches_what_the_committed_runs_recorded():
    """The committed cResNet-20 runs recorded their ops with the counter of that time: the same numbers."""
    from bnnbench.store import read_json
    from bnnbench.tools.summary import summarize
    results = sorted(EVIDENCE.glob("*__ovsw__s0__*/result.json")) if EVIDENCE.is_dir() else []
    if not results:
        pytest.skip("the committed runs of results/cifar10-cpu are absent")
    recorded = read_json(results[0])["ops"]
    _, totals = summarize("cresnet20", "ovsw")
    assert {k: totals[k] for k in recorded} == recorded


def test_robustness_notes_show_only_with_their_columns(out):
    tables = build_tables(collect(out, warn=print), BASELINE)
    texts = {}
    for ids in (None, ["method", "top1", "mca", "pgd"]):
        console = Console(record=True, width=160)
        print_console(tables, console, ids)
        texts[bool(ids)] = console.export_text()
    assert "Robustness on the first 1000 test images." in texts[True] and "mCA: mean top-1" in texts[True]
    assert "Robustness on the first" not in texts[False] and "mCA" not in texts[False]
