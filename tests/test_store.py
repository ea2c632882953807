"""Run store under faults: claims, --force, damaged or edited files, full and read-only disks, file modes."""
import errno
import json
import os
import shutil
import socket
import subprocess
import sys
import time

import pytest
import torch
from conftest import ROOT, TALLY, make_recipe

from bnnbench.cli.main import main
from bnnbench.engine import run_or_fail, train_run
from bnnbench.errors import RunError
from bnnbench.report.tables import collect
from bnnbench.runner import SweepRequest, plan
from bnnbench.store import RunDir, atomic_write_text


@pytest.fixture
def tiny(tmp_path, tiny_cifar):
    recipe = make_recipe(tmp_path / "tiny.yaml", epochs=2)
    out = tmp_path / "out"

    def argv(*extra):
        return ["--methods", "xnor", "--recipe", str(recipe), "--data-root", str(tiny_cifar), "--out", str(out),
                "--device", "cpu", *map(str, extra)]
    (spec,) = plan(SweepRequest(methods=["xnor"], recipe=str(recipe))).specs
    return argv, out, spec, tiny_cifar


@pytest.mark.parametrize("content", ["", "123", json.dumps({"pid": os.getpid(), "host": socket.gethostname()}),
                                     json.dumps({"pid": 1, "host": "another-host", "time": time.time()})])
def test_a_claim_file_nobody_holds_is_free_whatever_it_says(tmp_path, content):
    rd = RunDir(tmp_path / "run")
    rd.path.mkdir()
    rd.file("lock").write_text(content)  # empty, garbage, a live unrelated pid, another host
    assert rd.claim()
    other = RunDir(rd.path)
    assert not other.claim()  # a live holder keeps it
    rd.release()
    assert other.claim() and not rd.file("lock").read_text() == content
    other.release()
    TALLY["faults injected"] += 1


def test_a_directory_named_lock_is_reported(tmp_path):
    rd = RunDir(tmp_path / "run")
    (rd.path / "lock").mkdir(parents=True)
    with pytest.raises(RunError, match="is a directory"):
        rd.claim()


def test_the_claim_of_a_killed_worker_is_free_at_once(tmp_path):
    rd = RunDir(tmp_path / "run")
    rd.path.mkdir()
    code = (f"import sys, time; sys.path.insert(0, {str(ROOT)!r}); from bnnbench.store import RunDir; "
            f"r = RunDir({str(rd.path)!r}); assert r.claim(); print('claimed', flush=True); time.sleep(600)")
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "claimed"  # progress, not time: the worker holds its claim now
    assert not rd.claim()
    p.kill()
    p.wait()
    assert rd.claim(), "the kernel dropped the dead worker's lock"
    rd.release()
    TALLY["faults injected"] += 1


def test_force_reruns_only_what_was_done_before_the_sweep_and_keeps_unfinished_work(tiny, tmp_path):
    _, _, spec, data = tiny
    rd = RunDir(tmp_path / "r")
    rd.create(spec)
    train_run(spec, rd, torch.device("cpu"), data)
    started = time.time()
    assert rd.prepare(spec, force=True, since=started) == "run" and not rd.is_done()  # done before: rerun
    rd.release()
    train_run(spec, rd, torch.device("cpu"), data)
    assert rd.prepare(spec, force=True, since=started) == "finished by another worker"  # rerun in this sweep
    # an unfinished run keeps its checkpoint under --force
    rd.file("result.json").unlink()
    assert rd.prepare(spec, force=True, since=started) == "run" and rd.file("checkpoint.pt").exists()
    rd.release()


def test_edited_config_and_resealed_result_are_not_done(tiny, tmp_path):
    _, _, spec, data = tiny
    rd = RunDir(tmp_path / "r")
    rd.create(spec)
    train_run(spec, rd, torch.device("cpu"), data)
    assert rd.is_done(spec.hash)
    from bnnbench.store import seal_result
    doc = json.loads(rd.file("result.json").read_text())
    doc["spec_hash"] = "0badc0de"
    rd.file("result.json").write_text(json.dumps(seal_result({k: v for k, v in doc.items() if k != "checksum"})))
    assert not rd.is_done(spec.hash)  # a result of another run does not make this one done
    rd.file("config.yaml").write_text("{not: [valid")
    assert rd.prepare(spec) == "run"  # the worker that claims the run rewrites its config
    assert rd.read_spec().hash == spec.hash
    rd.release()
    TALLY["faults injected"] += 2


def test_damaged_weight_files_and_edited_metrics(tiny, capsys):
    argv, out, spec, data = tiny
    assert main(argv("--seeds", "2")) == 0
    a, b = sorted((out / "runs").iterdir())
    for name in ("flips.pt", "init_weights.pt"):  # truncated files of a finished run
        (a / name).write_bytes((a / name).read_bytes()[:100])
    capsys.readouterr()
    assert main(["report", "--out", str(out), "--format", "md"]) == 0
    text = capsys.readouterr().out.replace("\n", "")
    assert "no silent-weight histogram" in text and "is unreadable" in text and "| xnor" in text
    with open(b / "metrics.jsonl", "a") as f:
        f.write('{"epoch": 9, "test_top1": 99.0}\n')
    assert [r.name for r in collect(out, warn=print)] == [a.name]
    assert "was changed after the run finished" in capsys.readouterr().out.replace("\n", "")
    TALLY["faults injected"] += 3


def test_truncated_initial_weights_of_an_unfinished_run_do_not_block_it(tiny, tmp_path, capsys):
    _, _, spec, data = tiny
    rd = RunDir(tmp_path / "r")
    rd.create(spec)
    train_run(spec, rd, torch.device("cpu"), data)
    rd.file("result.json").unlink()
    rd.file("init_weights.pt").write_bytes(b"PK\x03\x04 truncated")
    warnings = []
    res = train_run(spec, rd, torch.device("cpu"), data, warn=warnings.append)
    assert res.status == "done" and any("init_weights.pt is unreadable" in w for w in warnings)
    TALLY["faults injected"] += 1


def test_a_full_disk_during_training_is_one_message_and_the_run_resumes(tiny, tmp_path, monkeypatch):
    _, _, spec, data = tiny
    rd = RunDir(tmp_path / "r")
    rd.create(spec)

    def full(self, state):
        raise OSError(errno.ENOSPC, "No space left on device", str(self.file("checkpoint.pt")))
    monkeypatch.setattr(RunDir, "save_checkpoint", full)
    with pytest.raises(RunError, match="No space left on device.*run the same command again"):
        run_or_fail(spec, rd, torch.device("cpu"), data)
    assert not rd.file("result.json").exists()  # not recorded as a failed run: the disk failed, not the run
    monkeypatch.undo()
    assert run_or_fail(spec, rd, torch.device("cpu"), data).status == "done"
    TALLY["faults injected"] += 1


def test_report_prints_the_table_when_its_files_cannot_be_written(tiny, capsys, monkeypatch):
    argv, out, _, _ = tiny
    assert main(argv("--epochs", "1", "--set", "warmup_epochs=0")) == 0
    import bnnbench.report.tables as report

    def read_only(path, text):
        raise OSError(errno.EROFS, "Read-only file system", str(path))
    monkeypatch.setattr(report, "atomic_write_text", read_only)
    capsys.readouterr()
    assert main(["report", "--out", str(out), "--format", "csv"]) == 0
    text = capsys.readouterr().out
    assert ",xnor," in text and "could not write the leaderboard" in text.replace("\n", "")
    TALLY["faults injected"] += 1


def test_written_files_follow_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "f.json", "{}")
    finally:
        os.umask(old)
    assert (tmp_path / "f.json").stat().st_mode & 0o777 == 0o644


@pytest.mark.parametrize("kind", ["link", "dangling link", "fifo"])
def test_a_lock_that_is_a_link_or_fifo_is_refused_and_its_target_untouched(tmp_path, kind):
    rd = RunDir(tmp_path / "run")
    rd.path.mkdir()
    target = tmp_path / "outside.txt"
    if kind == "link":
        target.write_text("precious")
    if kind == "fifo":
        os.mkfifo(rd.file("lock"))
    else:
        os.symlink(target, rd.file("lock"))
    with pytest.raises(RunError, match="symbolic link|not a plain file") as e:
        rd.claim()
    assert str(rd.file("lock")) in str(e.value)
    assert (target.read_text() == "precious") if kind == "link" else not target.exists()
    TALLY["bad inputs tried"] += 1


@pytest.mark.parametrize("name", ["error.log", "init.json"])
def test_files_a_run_writes_refuse_a_link_instead_of_writing_through(tmp_path, name):
    rd = RunDir(tmp_path / "run")
    rd.path.mkdir()
    target = tmp_path / "outside.txt"
    target.write_text("precious")
    os.symlink(target, rd.file(name))
    with pytest.raises(RunError, match="symbolic link or not a plain file"):
        rd.write_text(name, "the run's own text\n")
    assert target.read_text() == "precious" and rd.file(name).is_symlink()
    os.unlink(rd.file(name))
    rd.write_text(name, "the run's own text\n")
    assert rd.file(name).read_text() == "the run's own text\n"
    TALLY["bad inputs tried"] += 1


def test_a_failed_runs_error_log_link_is_not_written_through(tiny, tmp_path):
    _, _, spec, data = tiny
    rd = RunDir(tmp_path / "r")
    rd.create(spec)
    target = tmp_path / "outside.txt"
    target.write_text("precious")
    os.symlink(target, rd.file("error.log"))
    result = run_or_fail(spec, rd, torch.device("cpu"), tmp_path / "no-data-here")
    assert result.status == "failed" and target.read_text() == "precious"
    assert "no traceback written" in result.reason and "symbolic link" in result.reason


BOMB = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{c}: &{c} [*{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}]\n" for p, c in zip("abcdefgh", "bcdefghi"))


def test_an_alias_bomb_in_a_runs_config_is_refused_at_once(tiny, tmp_path, capsys):
    """9^9 list items if expanded (minutes and gigabytes): refused before expansion by the runner's check, the
    report and evaluate."""
    argv, out, spec, _ = tiny
    assert main(argv()) == 0
    rd = RunDir(out / "runs" / spec.name)
    rd.file("config.yaml").write_text(BOMB)
    import bnnbench.config.yamlio as yamlio

    def never(*a, **k):
        raise AssertionError("the document was constructed (its aliases expanded)")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(yamlio.yaml, "load", never)         # refused from the parser's events, before construction
        assert not rd.is_done(spec.hash)                # not done for the runner: it reruns the run
        assert collect(out, warn=print) == []           # the report leaves it out, naming it
        assert "YAML aliases" in capsys.readouterr().out
        assert main(["evaluate", str(rd.path), "--data-root", str(tiny[3])]) == 2
    assert "YAML aliases (*a) are not allowed" in capsys.readouterr().out
    TALLY["bad inputs tried"] += 1


def test_an_edited_config_beside_a_valid_result_is_rerun_and_refused_by_evaluate(tiny, capsys):
    argv, out, spec, data = tiny
    assert main(argv()) == 0
    rd = RunDir(out / "runs" / spec.name)
    rd.file("config.yaml").write_text(rd.file("config.yaml").read_text().replace("lr: 0.1", "lr: 0.2"))
    assert rd.read_spec().hash != spec.hash and not rd.is_done(spec.hash)
    assert main(["evaluate", str(rd.path), "--data-root", str(data)]) == 2
    assert "does not describe the run its result.json is of" in capsys.readouterr().out
    assert main([*argv(), "--dry-run"]) == 0
    assert "1 to run, 0 already done" in capsys.readouterr().out   # the same command repairs it
    assert main(argv()) == 0 and rd.is_done(spec.hash)
    TALLY["faults injected"] += 1


def test_report_names_bad_run_directories_and_prints_the_other_rows(tmp_path, capsys):
    """One truncated result.json and one with a wrong type (resealed, so its checksum is valid) among good
    runs: the leaderboard shows the good rows and names both bad directories with the reason."""
    from bnnbench.store import seal_result
    runs = sorted((ROOT / "results" / "cifar10-cpu" / "runs").glob("*__s0__*"))
    if len(runs) < 3:
        pytest.skip("the committed runs of results/cifar10-cpu are absent")
    for run in runs:
        shutil.copytree(run, tmp_path / "runs" / run.name, ignore=shutil.ignore_patterns("*.pt"))
    good, truncated, swapped = (tmp_path / "runs" / r.name for r in runs[:3])
    (truncated / "result.json").write_text((truncated / "result.json").read_text()[:100])
    for field, bad in (("ops", "lots"), ("wall_time_s", None)):
        doc = {k: v for k, v in json.loads((swapped / "result.json").read_text()).items() if k != "checksum"}
        atomic_write_text(swapped / "result.json", json.dumps(seal_result({**doc, field: bad})))
        assert main(["report", "--out", str(tmp_path), "--format", "md"]) == 0
        out = capsys.readouterr().out.replace("\n", "")
        assert f"skipping {truncated}" in out and f"skipping {swapped}" in out and f"{field} = " in out, out
        method = good.name.split("__")[3]
        assert f"| {method} " in out                      # the other rows are reported
        page = (tmp_path / "report.html").read_text()
        assert "Run directories not reported" in page and truncated.name in page and swapped.name in page
        TALLY["bad inputs tried"] += 1


def test_a_logger_folder_that_is_a_link_is_refused(tmp_path):
    from bnnbench.engine.loggers import logger_dir
    (tmp_path / "elsewhere").mkdir()
    os.symlink(tmp_path / "elsewhere", tmp_path / "tensorboard")
    with pytest.raises(RunError, match="symbolic link or a file"):
        logger_dir(tmp_path, "tensorboard")
    assert list((tmp_path / "elsewhere").iterdir()) == []
    assert logger_dir(tmp_path / "elsewhere", "tensorboard").is_dir()   # a plain folder is made and kept
    TALLY["bad inputs tried"] += 1
