"""Run identity (RunSpec hash, leaderboard row key), CLI validation, checkpoints torch opens, recipe YAML."""
import dataclasses
import json
import shutil

import pytest
import torch
from conftest import ROOT, make_recipe

from bnnbench.cli.main import build_parser, main, sweep_request
from bnnbench.config.recipes import load_recipe
from bnnbench.config.spec import RunSpec
from bnnbench.engine import train_run
from bnnbench.errors import ConfigError, RunError
from bnnbench.report.console import print_console
from bnnbench.report.tables import build_tables, collect
from bnnbench.runner import plan
from bnnbench.store import RunDir


@pytest.fixture
def tiny(tmp_path, tiny_cifar):
    recipe = make_recipe(tmp_path / "tiny.yaml", epochs=2)
    out = tmp_path / "out"

    def argv(*extra):
        return ["--methods", "ovsw", "--recipe", str(recipe), "--data-root", str(tiny_cifar), "--out", str(out),
                "--device", "cpu", *map(str, extra)]
    return argv, out, tiny_cifar


def specs(argv):
    return plan(sweep_request(build_parser().parse_args(argv)))[0]


def test_settings_that_do_not_change_the_numbers_keep_the_identity(tiny):
    argv, _, _ = tiny
    (base,) = specs(argv())
    for extra in (["--no-download"], ["--set", "workers=4", "eval_batch_size=100"], ["--device", "cpu"],
                  ["--set", "lr=0.1"]):  # 0.1 is the recipe's own lr: not a change
        (s,) = specs(argv(*extra))
        assert s.hash == base.hash and s.name == base.name and s.label == "ovsw", extra
    (lr,) = specs(argv("--set", "lr=0.05"))
    (hp,) = specs(argv("--hp", "ovsw.delta=0.02"))
    assert len({base.hash, lr.hash, hp.hash}) == 3
    assert lr.label == "ovsw[lr=0.05]" and hp.label == "ovsw[delta=0.02]"
    assert specs(argv("--seeds", "2"))[1].group == base.group != lr.group


def test_two_configurations_are_two_rows_and_no_download_finds_the_run_done(tiny, capsys):
    argv, out, _ = tiny
    assert main(argv("--epochs", "1", "--set", "warmup_epochs=0")) == 0
    assert main(argv("--epochs", "1", "--set", "warmup_epochs=0", "lr=0.05")) == 0
    capsys.readouterr()
    (table,) = build_tables(collect(out, warn=print))
    rows = {r["method"]: r["n"] for r in table["rows"]}
    assert rows == {"ovsw": 1, "ovsw[lr=0.05]": 1}, rows  # not one row "n=2"
    assert "all rows: warmup_epochs=0" in table["title"]
    assert main(argv("--epochs", "1", "--set", "warmup_epochs=0", "--no-download")) == 0
    assert "0 to run, 1 already done" in capsys.readouterr().out
    # a checkpoint is a plain torch file: torch alone opens it, with weights_only=True
    ckpt = next((out / "runs").glob("*/checkpoint.pt"))
    state = torch.load(ckpt, weights_only=True)
    assert {"model", "optimizer", "epoch", "integrity"} <= set(state)
    assert all(isinstance(v, torch.Tensor) for v in state["model"].values())


def test_resume_refuses_a_checkpoint_of_another_run(tiny, tmp_path):
    argv, _, data = tiny
    (a,) = specs(argv("--epochs", "1", "--set", "warmup_epochs=0"))
    b = dataclasses.replace(a, seed=5)
    ra, rb = RunDir(tmp_path / "a"), RunDir(tmp_path / "b")
    ra.create(a)
    train_run(a, ra, torch.device("cpu"), data)
    rb.create(b)
    shutil.copy(ra.file("checkpoint.pt"), rb.file("checkpoint.pt"))
    with pytest.raises(RunError, match=f"belongs to run '{a.hash}'"):
        train_run(b, rb, torch.device("cpu"), data)


def test_cli_values_go_through_the_recipe_rules(tiny):
    argv, _, _ = tiny
    cases = [
        (["--hp", "recu.tau_max=0.95"], "method 'recu' is not among --methods"),
        (["--epochs", "1"], "warmup_epochs = 1 must be smaller than epochs = 1"),  # no silent clamping
        (["--set", "warmup_epochs=2"], "warmup_epochs = 2 must be smaller than epochs = 2"),
        (["--set", "lr=-1", "--set", "epochs=1"], "lr = -1 is out of range"),  # the first --set is kept
        (["--set", "lr=0.1", "lr=0.2"], "--set lr: given twice"),
        (["--set", "lr=.inf"], "lr = inf is not allowed"),
        (["--set", "weight_decay=.inf"], "weight_decay = inf is not allowed"),
        (["--hp", "ovsw.delta=.nan"], "ovsw.delta = nan"),
        (["--hp", "ovsw.delta=-1"], "ovsw.delta = -1.0"),
        (["--hp", "ovsw.gamma=-5.0"], "ovsw.gamma = -5.0"),
        (["--seeds", "1000000000"], "--seeds 1000000000"),
    ]
    for extra, expected in cases:
        with pytest.raises(ConfigError) as info:
            specs(argv(*extra))
        assert expected in str(info.value), (extra, str(info.value))
    with pytest.raises(ConfigError, match="ReCU|tau_max"):
        specs(argv("--methods", "recu", "--hp", "recu.tau_max=5.0"))
    with pytest.raises(ConfigError, match="irnet.t_min"):
        specs([*argv(), "--methods", "irnet", "--hp", "irnet.t_min=-1.0"])
    # YAML 1.2 floats, as the README writes them
    (s,) = specs(argv("--hp", "ovsw.gamma=9e-4", "--set", "weight_decay=5e-4"))
    assert s.method_hparams["gamma"] == 9e-4 and s.settings.weight_decay == 5e-4


def test_recipe_yaml_floats_duplicates_aliases_and_unsafe_names(tmp_path):
    base = (ROOT / "recipes" / "digits-cresnet20.yaml").read_text()
    ok = tmp_path / "ok.yaml"
    ok.write_text(base.replace("weight_decay: 5.0e-4", "weight_decay: 5e-4"))
    assert "weight_decay: 5e-4" in ok.read_text() and load_recipe(str(ok)).train["weight_decay"] == 5e-4
    bad = {
        "dup.yaml": (base + "\ndescription: twice\n", "duplicate key 'description'"),
        "alias.yaml": ("a: &x [1, 2]\nb: [*x, *x]\n" + base, "aliases"),
        "escape.yaml": (base.replace("name: digits-cresnet20", 'name: "../../../escaped"'), "is not allowed"),
        "abs.yaml": (base.replace("name: digits-cresnet20", 'name: "/tmp/abs"'), "is not allowed"),
        "nul.yaml": (base.replace("name: digits-cresnet20", 'name: "a\\0b"'), "is not allowed"),
        "deep.yaml": ("[" * 5000 + "]" * 5000, "recipe"),
    }
    for fname, (text, expected) in bad.items():
        p = tmp_path / fname
        p.write_text(text)
        with pytest.raises(ConfigError, match=expected):
            load_recipe(str(p))
    utf16 = tmp_path / "utf16.yaml"
    utf16.write_bytes(base.encode("utf-16"))
    with pytest.raises(ConfigError, match="UTF-8"):
        load_recipe(str(utf16))


def test_first_schema_run_directories_still_report(tmp_path):
    """Run directories of the first config.yaml layout (the single-seed CIFAR-10 runs once committed under
    results/cifar10-cpu, kept in tests/data/schema1) still load and report."""
    src = ROOT / "tests" / "data" / "schema1" / "runs"
    shutil.copytree(src, tmp_path / "runs", ignore=shutil.ignore_patterns("*.pt"))
    warnings = []
    runs = collect(tmp_path, warn=warnings.append)
    assert len(runs) == len(list(src.iterdir())) and not warnings
    (table,) = build_tables(runs)
    labels = sorted(r["method"] for r in table["rows"])
    assert labels == ["bireal", "irnet", "ovsw", "ovsw[ags=False,sad=False]", "recu", "xnor"]
    assert "train_subset=20000" in table["title"]
    old = json.loads(next(src.glob("*xnor*/result.json")).read_text())
    cfg = RunSpec.from_dict(__import__("yaml").safe_load(next(src.glob("*xnor*/config.yaml")).read_text()))
    assert cfg.method == "xnor" and old["config_hash"] in next(src.glob("*xnor*")).name


def test_console_leaderboard_keeps_bracketed_labels(tmp_path):
    from rich.console import Console
    src = ROOT / "tests" / "data" / "schema1" / "runs"
    shutil.copytree(src, tmp_path / "runs", ignore=shutil.ignore_patterns("*.pt"))
    console = Console(record=True, width=300)
    print_console(build_tables(collect(tmp_path, warn=print)), console)
    assert "ovsw[ags=False,sad=False]" in console.export_text()


def test_more_bad_inputs_are_one_message(tiny, tmp_path, capsys):
    argv, _, _ = tiny
    not_a_dir = tmp_path / "a_file"
    not_a_dir.write_text("x")
    cases = [
        (argv("--device", "cuda:x"), "--device 'cuda:x' is not allowed"),
        (argv("--set", "seed=100000000000000"), "seed = 100000000000000 is out of range"),
        (argv("--set", "loader=dali"), "loader = 'dali' is for ImageFolder datasets"),
        (["--methods", "ovsw[/b]", "--out", str(tmp_path / "o")], "unknown method 'ovsw[/b]'"),  # markup kept
        (["report", "--out", str(not_a_dir)], "is a file"),
        (["report", "--out", str(tmp_path / "nothing")], "no runs/ folder"),
    ]
    if not torch.cuda.is_available():
        cases.append((argv("--device", "cuda:0"), "--device cuda:0: no CUDA device is available"))
    for args, expected in cases:
        rc = main(args)
        text = capsys.readouterr().out.replace("\n", "")
        assert rc == 2 and expected in text and "Traceback" not in text, (args, text)


def test_recipe_method_hparams_survive_overrides(tiny):
    """A shipped recipe's per-method hyperparameters (cifar10-cresnet20: OvSW delta 0.04) reach the run
    whether or not --epochs/--set change the training settings."""
    argv, _, data = tiny
    base = ["--methods", "ovsw", "--recipe", "cifar10-cresnet20", "--data-root", str(data), "--device", "cpu"]
    for extra in ([], ["--epochs", "2", "--set", "warmup_epochs=1"]):
        (s,) = specs(base + extra)
        assert s.method_hparams["delta"] == 0.04 and s.method_hparams["gamma"] == 9.0e-4, extra
