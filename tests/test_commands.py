"""Every subcommand checks its arguments and output paths before any work: one message, exit 2, no traceback
(the cases of evaluate, export, bench and deploy-bench that used to end in tracebacks)."""
import pytest
from conftest import TALLY

from bnnbench.cli.main import main


@pytest.fixture
def files(tmp_path):
    (tmp_path / "a_file").write_text("text\n")
    (tmp_path / "binary.bin").write_bytes(bytes(range(256)) * 4)
    (tmp_path / "a_dir").mkdir()
    return tmp_path


CASES = [
    (["evaluate", "{tmp}/a_file"], "is not a bnnbench 1-bit export"),
    (["evaluate", "{tmp}/binary.bin"], "is not a bnnbench 1-bit export"),
    (["export", "{tmp}/a_dir", "--out", "{tmp}/a_dir"], "is a directory"),
    (["export", "{tmp}/a_dir", "--out", "{tmp}/a_file/model.pt"], "is a file, not a folder"),
    (["export", "{tmp}/a_dir", "--out", "/proc/version"], "cannot be written here"),
    (["deploy-bench", "--threads", "-1"], "--threads -1: must be at least 1"),
    (["bench", "--threads", "-2"], "--threads -2: must be at least 1"),
    (["bench", "--batch", "0"], "--batch 0: must be at least 1"),
    (["bench", "--steps", "0"], "--steps 0: must be at least 1"),
    (["bench", "--json", "{tmp}/a_file/out.json"], "is a file, not a folder"),
    (["deploy-bench", "--json", "/proc/out.json"], "cannot be written here"),
    (["summary", "--arch", "cresnet20", "--num-classes", "1"], "--num-classes 1: must be at least 2"),
]


@pytest.mark.parametrize("argv, message", CASES, ids=[" ".join(c[0][:3]) for c in CASES])
def test_bad_arguments_give_one_message_and_exit_2(files, capsys, argv, message):
    rc = main([a.format(tmp=files) for a in argv])
    out = capsys.readouterr()
    text = (out.out + out.err).replace("\n", "")
    assert rc == 2 and message in text and "Traceback" not in text, text
    TALLY["bad inputs tried"] += 1
