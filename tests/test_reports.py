"""Leaderboard and plots built from a tiny real run matrix; the bench command runs."""
import copy
import dataclasses
import json
import subprocess
import sys
import time

import pytest
import torch
from conftest import make_cifar, make_recipe

from bnnbench.cli.main import main
from bnnbench.report.plots import plot_all, plot_curves, plot_silent_hist
from bnnbench.report.tables import StoredRun, build_tables, collect, render
from bnnbench.runner import SweepRequest, execute, plan
from bnnbench.store import RunDir


@pytest.fixture(scope="module")
def matrix(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("matrix")
    data = make_cifar(tmp / "data")
    recipe = make_recipe(tmp / "tiny.yaml", epochs=2)
    out = tmp / "out"
    for cfg in plan(SweepRequest(methods=["ovsw", "recu"], recipe=str(recipe))).specs:  # the runner's protocol
        assert execute(cfg, RunDir(out / "runs" / cfg.name), torch.device("cpu"), data).result.status == "done"
    return out


def test_plots_have_one_series_per_method(matrix):
    runs = collect(matrix, warn=print)
    written = plot_curves(runs, matrix)
    assert len(written) == 2
    for path, n in written.items():
        assert path.stat().st_size > 5000 and n == 2
    hist = [plot_silent_hist(r.path, matrix) for r in runs]
    assert all(p is not None and p.stat().st_size > 5000 for p in hist)
    assert len(plot_all(runs, matrix)) == 4
    with pytest.raises(KeyError, match="binary layers"):
        plot_silent_hist(runs[0].path, matrix, layer="nope")


def test_leaderboard_rows_and_failed_runs(matrix, tmp_path):
    runs = collect(matrix, warn=print)
    tables = build_tables(runs)
    assert len(tables) == 1 and [r["method"] for r in tables[0]["rows"]] == ["ovsw", "recu"]
    row = tables[0]["rows"][0]
    assert row["n"] == 1 and 0 <= row["silent"] <= 100 and row["binary_params"] > 95
    # a failed run is listed with its reason, not hidden
    failed = dataclasses.replace(runs[0].result, status="failed", reason="non-finite training loss (nan) in epoch 1",
                                 method="xnor", group="f" * 8)
    tables = build_tables(runs + [StoredRun(failed, runs[0].path)])
    md = render(tables, "md")
    assert "failed (seed 0: non-finite training loss (nan) in epoch 1)" in md
    latex = render(tables, "latex")
    assert "\\toprule" in latex and "ovsw" in latex
    data = json.loads(render(tables, "json"))
    assert data["tables"][0]["rows"][0]["method"] == "ovsw"


def test_bench_command_writes_figures(tmp_path, capsys):
    out = tmp_path / "bench.json"
    rc = main(["bench", "--methods", "ovsw", "--batch", "8", "--steps", "2", "--warmup", "1", "--json", str(out)])
    assert rc == 0
    res = json.loads(out.read_text())
    assert set(res["methods"]) == {"fp", "ovsw"}
    o = res["methods"]["ovsw"]
    assert o["step_s"] > 0 and o["hook_s"] > 0 and o["flip_s"] > 0 and o["ratio_to_fp"] > 0
    assert o["ratio_q1"] <= o["ratio_to_fp"] <= o["ratio_q3"]
    assert res["methods"]["fp"]["ratio_to_fp"] == 1.0  # each round's fp step against itself
    assert res["memory_format"] == "channels_last" and isinstance(res["keep_freed_memory"], bool)
    assert res["loader_images_per_s"] > 0


def test_every_run_records_its_one_bit_export_and_the_leaderboard_shows_it(matrix):
    from bnnbench.deploy import kernels
    runs = collect(matrix, warn=print)
    docs = [json.loads((r.path / "deploy.json").read_text()) for r in runs]
    md = render(build_tables(runs), "md")
    assert "1-bit ms (b1, CPU)" in md and "x FP32" in md
    if kernels.unavailable_reason():
        assert all(d["status"] == "unavailable" for d in docs) and "1-bit columns empty" in md
        return
    for d in docs:
        assert d["status"] == "measured" and d["exact"]["exact"] and d["exact"]["samples"] > 1
        assert d["exact"]["top1_same"] == d["exact"]["samples"] or any(
            c["zero_inputs"] for c in d["exact"]["layers"])
        assert d["end_to_end"]["packed"]["median_s"] > 0 and d["end_to_end"]["speedup_vs_fp32"] > 0
    row = build_tables(runs)[0]["rows"][0]
    want = 1000 * docs[[r.result.method for r in runs].index("ovsw")]["end_to_end"]["packed"]["median_s"]
    assert row["deploy_ms"] == pytest.approx(want)
    # a run whose export could not be measured: '-' and the reason under the table
    gone = dataclasses.replace(runs[0], deploy={"status": "unavailable", "reason": "ValueError: 3 weights have sign 0"})
    md = render(build_tables([gone]), "md")
    assert "1-bit columns empty: ValueError: 3 weights have sign 0." in md
    # every measurement records its conditions; one timed under contention is starred, with what to do
    assert all({"other_cores_busy", "cpus", "threads", "spread", "contended", "wide_spread"}
               <= set(d["end_to_end"]["conditions"]) for d in docs)
    busy = copy.deepcopy(runs[0].deploy)
    busy["end_to_end"]["conditions"].update(other_cores_busy=1.7, contended=True)
    quiet = copy.deepcopy(runs[0].deploy)
    quiet["end_to_end"]["conditions"].update(other_cores_busy=0.0, contended=False, wide_spread=False)
    starred = render(build_tables([dataclasses.replace(runs[0], deploy=busy)]), "md")
    plain = render(build_tables([dataclasses.replace(runs[0], deploy=quiet)]), "md")
    assert "deploy-bench --run RUN_DIR re-measures" in starred and "re-measures" not in plain
    ms = f"{1000 * busy['end_to_end']['packed']['median_s']:.3f}"
    assert f"{ms}*" in starred and f"{ms}*" not in plain and ms in plain


def test_load_probe_sees_other_work_and_the_conditions_verdicts():
    """LoadProbe counts the CPU time of other processes (a busy child here), not its own; conditions() calls a
    latency contended above CONTENDED_CORES other busy cores and unsteady above WIDE_SPREAD."""
    from bnnbench.deploy.measure import CONTENDED_CORES, conditions
    from bnnbench.deploy.timing import LoadProbe, busy_cpu_seconds
    if busy_cpu_seconds() is None:
        pytest.skip("/proc/stat is not readable here")
    child = subprocess.Popen([sys.executable, "-c", "import time\nt = time.time()\nwhile time.time() - t < 3: pass"])
    try:
        time.sleep(0.3)
        with LoadProbe() as probe:
            time.sleep(1.5)
    finally:
        child.wait()
    assert probe.result()["other_cores_busy"] > 0.5    # the child kept (at least half) a core busy
    c = conditions({"other_cores_busy": CONTENDED_CORES + 0.1, "cpus": 2}, [1.0, 1.0, 1.0, 1.0])
    assert c["contended"] and not c["wide_spread"] and c["spread"] == 0.0
    c = conditions({"other_cores_busy": None, "cpus": 2}, [1.0, 1.0, 2.0, 3.0])
    assert not c["contended"] and c["wide_spread"]


def test_deploy_bench_command_writes_figures(tmp_path):
    from bnnbench.deploy import kernels
    if kernels.unavailable_reason():
        pytest.skip(kernels.unavailable_reason())
    out = tmp_path / "deploy.json"
    rc = main(["deploy-bench", "--arch", "cresnet20", "--batch", "1", "2", "--rounds", "2", "--warmup", "0",
               "--threads", "1", "--json", str(out)])
    assert rc == 0
    res = json.loads(out.read_text())
    assert [c["batch"] for c in res["cases"]] == [1, 2]
    for c in res["cases"]:
        assert len(c["layers"]) == 18 and c["exact"]["exact"]
        assert all(r["packed"]["median_s"] > 0 and r["fp32"]["median_s"] > 0 for r in c["layers"])
        assert c["end_to_end"]["speedup_vs_fp32"] > 0 and c["end_to_end"]["speedup_vs_simulated"] > 0
    assert res["machine"]["threads"] == 1 and res["machine"]["isa"] in kernels.ISAS
    want = {"avx512": "3.0", "avx2": "2.5"}[res["machine"]["isa"]]   # the targets of the path that ran
    assert [t["target"] for t in res["targets"]] == [f"cresnet20 batch 1 end to end >= {want}x FP32"]
    for c in res["cases"]:   # the fused path by default: every block of cResNet-20 fuses
        assert c["path"] == "fused" and c["end_to_end"]["speedup_vs_unfused"] > 0 and c["exact"]["traced_equal"]
        assert (c["fusion"]["binary_convs"], c["fusion"]["fused"], c["fusion"]["packed_links"]) == (18, 18, 17)
    assert main(["deploy-bench", "--arch", "cresnet20", "--rounds", "1", "--warmup", "0", "--exact", "--isa",
                 "portable", "--json", str(out)]) == 0
    res = json.loads(out.read_text())
    (case,) = res["cases"]
    assert res["machine"]["isa"] == case["machine"]["isa"] == "portable" and res["targets"] == []   # forced
    assert case["path"] == "exact" and case["fusion"] is None and "unfused" not in case["end_to_end"]
    assert case["exact"]["max_logit_diff"] == 0.0   # the unfused path: the trained model's floats
    # a method none of whose blocks fuses (AdaBin: its extra terms) runs the packed model itself, not its trace
    assert main(["deploy-bench", "--arch", "cresnet20", "--method", "adabin", "--rounds", "1", "--warmup", "0",
                 "--json", str(out)]) == 0
    (case,) = json.loads(out.read_text())["cases"]
    assert case["path"] == "exact" and case["fusion"]["fused"] == 0 and len(case["fusion"]["layers"]) == 18
    assert all(r["unfused"] for r in case["fusion"]["layers"]) and "unfused" not in case["end_to_end"]


def test_deploy_bench_remeasures_finished_runs(matrix):
    from bnnbench.deploy import kernels
    if kernels.unavailable_reason():
        pytest.skip(kernels.unavailable_reason())
    run = sorted((matrix / "runs").iterdir())[0]
    (run / "deploy.json").unlink()
    assert main(["deploy-bench", "--run", str(run), "--rounds", "2"]) == 2   # --data-root is required
    assert main(["deploy-bench", "--run", str(run), "--data-root", str(matrix.parent / "data"), "--rounds", "2"]) == 0
    doc = json.loads((run / "deploy.json").read_text())
    assert doc["status"] == "measured" and doc["exact"]["exact"] and doc["exact"]["samples"] == 16
    agreement = doc["agreement"]
    assert agreement["same"] == agreement["images"] > 16 and doc["path"] == "fused"   # every test image
    assert agreement["zero_sign"] == 0
    assert agreement["trained_top1"] == agreement["deployed_top1"]


def test_top1_agreement_tells_zero_sign_images_from_faults(matrix):
    """A prediction that differs is the sign(0) convention only on an image that gave a binary conv an input
    exactly at its threshold; on any other image it is counted as a fault (deploy-bench --run fails)."""
    from bnnbench.deploy.measure import top1_agreement
    from bnnbench.engine.rebuild import trained_model
    from bnnbench.nn.layers import binary_layers
    run = sorted((matrix / "runs").iterdir())[0]
    _, model, test = trained_model(run, matrix.parent / "data")
    x, y = next(iter(test))
    x, y = x[:6], y[:6]

    class Rolled(torch.nn.Module):   # a deployed form whose top-1 differs from the trained model's on every image
        def forward(self, inp):
            return model(inp).roll(1, dims=1)

    clean = top1_agreement(model, model, [(x, y)])
    assert clean["same"] == 6 and clean["zero_sign"] == 0 and clean["trained_top1"] == clean["deployed_top1"]
    faulty = top1_agreement(model, Rolled(), [(x, y)])
    assert faulty["same"] == 0 and faulty["zero_sign"] == 0
    _, first = next(iter(binary_layers(model)))
    keep = torch.ones(6, 1, 1, 1)
    keep[[1, 4]] = 0                  # images 1 and 4: every input of the first binary conv exactly 0
    hook = first.register_forward_pre_hook(lambda mod, args: (args[0] * keep.to(args[0]),))
    try:
        zeroed = top1_agreement(model, Rolled(), [(x, y)])
    finally:
        hook.remove()
    assert zeroed["same"] == 0 and zeroed["zero_sign"] == 2


def test_agreement_allows_sign_zero_images_and_the_fused_paths_rounding_only():
    from bnnbench.deploy.measure import agreement_ok
    doc = {"images": 10000, "same": 9990, "zero_sign": 4}           # 6 images differ without a zero input
    assert agreement_ok(doc, "fused") and not agreement_ok(doc, "exact")
    assert agreement_ok({**doc, "zero_sign": 10}, "exact")             # every difference has a sign-0 input
    assert not agreement_ok({**doc, "same": 9980}, "fused")           # 16 > 1 in 1,000 of 10,000
    assert agreement_ok({**doc, "same": 9986}, "fused") and not agreement_ok({**doc, "same": 9985}, "fused")
