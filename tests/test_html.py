"""The HTML report renders in a real browser (headless Chromium): tables, every image decoded, no horizontal
overflow at 1280 px, no console message."""
import re
import shutil
import subprocess

import pytest
from conftest import ROOT, make_recipe

from bnnbench.cli.main import main

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(CHROMIUM is None, reason="needs Chromium (Debian package 'chromium'; .ci/run installs it)")
def test_html_report_renders_in_chromium(tmp_path, tiny_cifar, capsys):
    # a second table: the committed CIFAR-10 runs of seed 0, without weight files (as in a fresh clone)
    for run in (ROOT / "results" / "cifar10-cpu" / "runs").glob("*__s0__*"):
        shutil.copytree(run, tmp_path / "runs" / run.name, ignore=shutil.ignore_patterns("*.pt"))
    recipe = make_recipe(tmp_path / "tiny.yaml", epochs=1)
    assert main(["--methods", "xnor", "ovsw", "--recipe", str(recipe), "--data-root", str(tiny_cifar), "--out",
                 str(tmp_path), "--device", "cpu", "--seeds", "2"]) == 0
    assert main(["report", "--out", str(tmp_path), "--format", "html", "--baseline", "ovsw"]) == 0
    assert "report page:" in capsys.readouterr().out
    page = tmp_path / "report.html"
    text = page.read_text()
    assert "http://" not in text and "https://" not in text and "<script src" not in text  # self-contained
    r = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                        "--disable-background-networking", "--disable-component-update", "--disable-sync",
                        f"--user-data-dir={tmp_path / 'profile'}", "--enable-logging=stderr", "--v=0",
                        "--window-size=1280,900", "--virtual-time-budget=5000", "--dump-dom", page.as_uri()],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    dom = r.stdout
    body = re.search(r'<body data-images="(\d+)" data-loaded="(\d+)" data-scrollwidth="(\d+)" '
                     r'data-viewport="(\d+)"', dom)
    assert body, "the page's script did not run: " + dom[:500]
    n_images, n_loaded, scroll_width, viewport = map(int, body.groups())
    assert 1200 < viewport <= 1280 and scroll_width <= viewport  # no horizontal overflow at 1280 px
    assert dom.count('class="scroll"') == 3 * 2 and 'class="kv"' in dom  # wide tables scroll in their own box
    plots = len(list((tmp_path / "plots").glob("*.png")))
    # curves and flips per table, 4 silent histograms, the committed table's robustness heat map
    assert n_images == plots == n_loaded == 2 + 2 + 4 + 1
    assert len(list((tmp_path / "plots").glob("robustness__*.png"))) == 1 and "mCA" in dom
    assert dom.count('class="leaderboard"') == 2 and "ovsw[ags=False,sad=False]" in dom
    assert "Δ final vs baseline" in dom and "Hyperparameters" in dom and "git commit" in dom
    assert "CONSOLE" not in r.stderr, [line for line in r.stderr.splitlines() if "CONSOLE" in line]
