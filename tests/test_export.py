"""run_bench.py evaluate and export: a finished run's recorded figures reproduced, a 1-bit file that
rebuilds the trained model exactly, at about the leaderboard's packed size."""
import pytest
import torch
from conftest import make_recipe

from bnnbench.cli.main import main
from bnnbench.store import RunDir

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    from conftest import make_cifar
    tmp = tmp_path_factory.mktemp("export")
    data = make_cifar(tmp / "data")
    recipe = make_recipe(tmp / "tiny.yaml", epochs=1)
    out = tmp / "out"
    assert main(["--methods", "recu", "irnet", "adabin", "--recipe", str(recipe), "--data-root", str(data), "--out",
                 str(out), "--device", "cpu"]) == 0
    return sorted((out / "runs").iterdir()), data, tmp


def test_evaluate_reproduces_the_recorded_final_epoch(finished, capsys):
    from bnnbench.cli.models import evaluate
    runs, data, _ = finished
    for d in runs:
        now, recorded, spec = evaluate(d, data, torch.device("cpu"))
        last = RunDir(d).read_metrics()[-1]
        assert recorded["epoch"] == spec.settings.epochs - 1
        for k in ("test_top1", "test_top5", "test_loss"):
            assert now[k] == recorded[k] == last[k], k
    assert main(["evaluate", str(runs[0]), "--data-root", str(data)]) == 0
    assert "(identical)" in capsys.readouterr().out


def test_export_rebuilds_the_trained_model_bit_for_bit_at_its_packed_size(finished, capsys):
    from bnnbench.cli.models import evaluate
    from bnnbench.deploy.export import SignConv2d, load_exported
    from bnnbench.engine import trained_model
    from bnnbench.nn.layers import binary_layers
    runs, data, tmp = finished
    for d in runs:
        f = tmp / f"{d.name}.1bit.pt"
        assert main(["export", str(d), "--out", str(f), "--data-root", str(data)]) == 0
        said = capsys.readouterr().out
        assert f"wrote {f}" in said and "packed size" in said
        spec, model, test = trained_model(d, data)
        spec2, rebuilt = load_exported(f)
        assert spec2.hash == spec.hash and not binary_layers(rebuilt)
        assert sum(isinstance(m, SignConv2d) for m in rebuilt.modules()) == len(binary_layers(model))
        with torch.no_grad():
            for x, _ in test:                      # every test image
                assert torch.equal(rebuilt(x), model(x))
        now, recorded, _ = evaluate(f, data, torch.device("cpu"))
        assert now["test_top1"] == recorded["test_top1"]
        from bnnbench.nn.ops import count_ops
        packed = count_ops(model, (3, 32, 32)).packed_bytes
        float_bytes = sum(p.numel() * 4 for p in model.parameters())
        size = f.stat().st_size
        assert size < float_bytes / 3 and abs(size - packed) < 0.25 * packed + 64 * 1024, (size, packed)


def test_export_signs_roundtrip_and_bad_files_are_refused(tmp_path):
    from bnnbench.deploy.export import load_exported, pack_bits, unpack_bits
    from bnnbench.errors import RunError
    signs = torch.where(torch.rand(5, 3, 3, 3) > 0.5, 1, -1).to(torch.int8)
    bits = pack_bits(signs)
    assert bits.dtype == torch.uint8 and bits.numel() == -(-signs.numel() // 8)
    assert torch.equal(unpack_bits(bits, list(signs.shape)), signs)
    bad = tmp_path / "x.pt"
    torch.save({"model": {}}, bad)
    with pytest.raises(RunError, match="not a bnnbench 1-bit export"):
        load_exported(bad)


def test_init_from_a_finished_run_records_it_and_starts_from_its_weights(finished, tmp_path, capsys):
    import json

    from conftest import make_recipe

    from bnnbench.runner import SweepRequest, plan
    from bnnbench.store import load_torch
    runs, data, _ = finished
    source = runs[0]                      # irnet (sorted first)
    recipe = make_recipe(tmp_path / "tiny.yaml", epochs=1)
    common = ["--methods", "irnet", "--recipe", str(recipe), "--data-root", str(data), "--device", "cpu"]
    plain = plan(SweepRequest(methods=["irnet"], recipe=str(recipe))).specs[0]
    spec = plan(SweepRequest(methods=["irnet"], recipe=str(recipe), init_from=source)).specs[0]
    src_hash = RunDir(source).read_spec().hash
    assert spec.init_from["run"] == src_hash and spec.hash != plain.hash and "init_from" in spec.changes
    assert "init_from" not in plain.identity()          # runs without it keep their former hash
    out = tmp_path / "out"
    assert main([*common, "--init-from", str(source), "--out", str(out)]) == 0
    assert "initialised from" in capsys.readouterr().out
    (d,) = (out / "runs").iterdir()
    init = json.loads((d / "init.json").read_text())
    assert init["run"] == src_hash and init["loaded"] > 0 and not init["missing"] and not init["shape_mismatch"]
    start = load_torch(d / "init_weights.pt")
    final_src = RunDir(source).load_checkpoint()["model"]
    assert start and all(torch.equal(start[k], final_src[f"{k}.weight"].float()) for k in start)


def test_init_from_reports_mismatches_and_refuses_a_file_that_matches_nothing(tmp_path):
    from bnnbench.engine.init import init_from, resolve_init
    from bnnbench.errors import ConfigError, RunError
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Linear(4, 10))
    other = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Linear(4, 5))
    f = tmp_path / "fp.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in other.state_dict().items()}, "extra": 1}, f)
    report = init_from(net, resolve_init(f))
    assert report["loaded"] == 2 and torch.equal(net[0].weight, other[0].weight)
    assert report["missing"] == ["1.bias", "1.weight"] and len(report["shape_mismatch"]) == 2
    torch.save({"x.weight": torch.zeros(2)}, f)
    with pytest.raises(RunError, match="no tensor matches"):
        init_from(net, resolve_init(f))
    with pytest.raises(ConfigError, match="no such file"):
        resolve_init(tmp_path / "absent.pt")


def test_tensorboard_logger_mirrors_the_metrics_rows(tmp_path):
    pytest.importorskip("tensorboard", reason="tensorboard not installed (pip install 'bnnbench[track]')")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    out = tmp_path / "out"
    assert main(["--methods", "xnor", "--epochs", "2", "--set", "train_subset=128", "warmup_epochs=0",
                 "--logger", "tensorboard", "--out", str(out), "--device", "cpu"]) == 0
    (d,) = (out / "runs").iterdir()
    rows = RunDir(d).read_metrics()
    acc = EventAccumulator(str(d / "tensorboard"))
    acc.Reload()
    top1 = acc.Scalars("test_top1")
    assert [e.step for e in top1] == [0, 1] and [e.value for e in top1] == pytest.approx([r["test_top1"] for r in rows])
    assert "train_loss" in acc.Tags()["scalars"] and "flip_layers" not in acc.Tags()["scalars"]


def test_a_logger_that_is_not_installed_is_an_error_before_training(capsys, monkeypatch):
    import importlib

    import bnnbench.engine.loggers as L
    real = importlib.import_module

    def no_wandb(name, *a, **kw):
        if name == "wandb":
            raise ImportError("no wandb")
        return real(name, *a, **kw)
    monkeypatch.setattr(L.importlib, "import_module", no_wandb)
    assert main(["--methods", "xnor", "--logger", "wandb", "--device", "cpu", "--out", "/nonexistent/x"]) == 2
    assert "pip install wandb" in capsys.readouterr().out
