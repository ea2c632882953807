"""Plugin authors' failure modes: a plugin that raises fails its run only; a plugin the trainer could not
use is refused at registration, naming its own file and line; a plugin's code is part of run identity."""
import json
import sys
import textwrap
from importlib import metadata

import pytest
from conftest import TALLY, make_recipe

from bnnbench.cli.main import main
from bnnbench.errors import RegistryError
from bnnbench.plugins import METHODS
from bnnbench.runner import SweepRequest, plan

HEADER = textwrap.dedent('''
    import sys
    import torch
    from torch import nn
    from bnnbench.nn.layers import BinaryConv2d
    from bnnbench.plugins.method import Method, register_method
    from bnnbench.nn.surrogates import sign_ste
''')


def plugin(tmp_path, name, body):
    p = tmp_path / f"{name}.py"
    p.write_text(HEADER + textwrap.dedent(body))
    return p


@pytest.fixture
def tiny(tmp_path, tiny_cifar):
    recipe = make_recipe(tmp_path / "tiny.yaml", epochs=1)
    out = tmp_path / "out"

    def argv(*extra):
        return ["--recipe", str(recipe), "--data-root", str(tiny_cifar), "--out", str(out), "--device", "cpu",
                *map(str, extra)]
    return argv, out


@pytest.fixture(autouse=True)
def _forget_test_methods():
    before = set(METHODS.names())
    yield
    for name in set(METHODS.names()) - before:
        METHODS.unregister(name)


RAISES = '''
class BoomConv(BinaryConv2d):
    def binarize_input(self, x):
        raise RuntimeError("boom in the plugin")

@register_method
class Boom(Method):
    """Raises in its forward pass."""
    name = "boom_{tag}"
    conv_class = BoomConv
'''


def test_an_exception_in_a_plugin_fails_that_run_and_the_sweep_goes_on(tiny, tmp_path, capsys):
    argv, out = tiny
    path = plugin(tmp_path, "boom", RAISES.format(tag="a") + '''
class ExitConv(BinaryConv2d):
    def binarize_weight(self, w):
        sys.exit(0)

class NanEvalConv(BinaryConv2d):
    def binarize_input(self, x):
        return sign_ste(x) if self.training else x * float("nan")

@register_method
class NanEval(Method):
    """Finite while training, NaN at evaluation."""
    name = "nan_eval_a"
    conv_class = NanEvalConv

@register_method
class Exits(Method):
    """Calls sys.exit in its forward pass."""
    name = "exits_a"
    conv_class = ExitConv
''')
    rc = main(argv("--plugin", path, "--methods", "boom_a", "exits_a", "nan_eval_a", "xnor"))
    assert rc == 3, capsys.readouterr().out
    results = {json.loads((d / "result.json").read_text())["method"]: (d, json.loads((d / "result.json").read_text()))
               for d in (out / "runs").iterdir()}
    d, boom = results["boom_a"]
    assert boom["status"] == "failed" and "RuntimeError: boom in the plugin" in boom["reason"]
    assert f"{path}:" in boom["reason"] and "binarize_input" in boom["reason"]  # the plugin's file and line
    assert "boom in the plugin" in (d / "error.log").read_text() and "Traceback" in (d / "error.log").read_text()
    assert results["exits_a"][1]["status"] == "failed" and "sys.exit(0)" in results["exits_a"][1]["reason"]
    nan_eval = results["nan_eval_a"][1]
    assert nan_eval["status"] == "failed" and "non-finite test loss" in nan_eval["reason"]  # not "done, 10%"
    assert results["xnor"][1]["status"] == "done"  # the sweep went on
    assert "boom_a" in (out / "leaderboard.md").read_text()
    TALLY["faults injected"] += 2


@pytest.mark.parametrize("body, expected", [
    ('''
@register_method
class NoConv(Method):
    """No conv_class."""
    name = "noconv_b"
''', "sets no conv_class"),
    ('''
@register_method
class PlainConv(Method):
    """A plain nn.Conv2d."""
    name = "plainconv_b"
    conv_class = nn.Conv2d
''', "must be a subclass of bnnbench.nn.layers.BinaryConv2d"),
    ('''
class C(BinaryConv2d):
    pass

@register_method
class BadHook(Method):
    """A hook with the wrong arguments."""
    name = "badhook_b"
    conv_class = C
    def on_epoch_start(self, model):
        pass
''', "hook on_epoch_start"),
    ('''
class C(BinaryConv2d):
    pass

@register_method
class Dup(Method):
    """Takes a built-in's name."""
    name = "recu"
    conv_class = C
''', "duplicate method name 'recu'"),
    ("x = 1 / 0\n", "ZeroDivisionError"),
    ("sys.exit(0)\n", "sys.exit(0)"),
])
def test_a_plugin_the_trainer_cannot_use_is_refused_before_compute(tiny, tmp_path, capsys, body, expected):
    argv, out = tiny
    path = plugin(tmp_path, "bad", body)
    rc = main(argv("--plugin", path, "--methods", "xnor"))
    text = capsys.readouterr().out.replace("\n", "")
    assert rc == 2 and expected in text, text
    # the line the message must name: the bad hook's def, else where the plugin's definition starts (a
    # decorated class starts at its decorator) or the module-level statement that raised
    starts = ("    def on_epoch",) if "def on_epoch" in body else ("@register_method", "x =", "sys.exit")
    line = next(i for i, s in enumerate(path.read_text().splitlines(), 1) if s.startswith(starts))
    if expected.startswith("duplicate"):
        assert "methods/recu.py:" in text  # both registrations are named, by their own files
    assert f"{path}:{line}" in text, text
    assert not (out / "runs").exists()
    TALLY["bad inputs tried"] += 1


def test_an_entry_point_may_name_an_unregistered_method_class(tmp_path, monkeypatch):
    (tmp_path / "ep_pkg.py").write_text(HEADER + textwrap.dedent('''
        class C(BinaryConv2d):
            pass

        class FromEntryPoint(Method):
            """Not decorated: registered through its entry point."""
            name = "from_entry_point"
            conv_class = C
        '''))
    monkeypatch.syspath_prepend(str(tmp_path))
    METHODS.load_entry_point(metadata.EntryPoint("fep", "ep_pkg:FromEntryPoint", "bnnbench.methods"))
    assert "from_entry_point" in METHODS.names()
    with pytest.raises(RegistryError, match="must name a plugin module, a Method subclass"):
        METHODS.load_entry_point(metadata.EntryPoint("x", "ep_pkg:sign_ste", "bnnbench.methods"))
    sys.modules.pop("ep_pkg", None)


def test_editing_a_plugin_changes_the_run_identity(tiny, tmp_path):
    argv, _ = tiny
    recipe = argv()[1]  # the tiny recipe's path
    path = plugin(tmp_path, "edited", RAISES.format(tag="c"))
    main(argv("--plugin", path, "--methods", "boom_c", "--dry-run"))
    (before,) = plan(SweepRequest(methods=["boom_c"], recipe=recipe)).specs
    path.write_text(path.read_text() + "\n# changed\n")
    (after,) = plan(SweepRequest(methods=["boom_c"], recipe=recipe)).specs
    assert before.plugins["method"]["origin"] == str(path)
    assert before.plugins["method"]["sha256"] != after.plugins["method"]["sha256"]
    assert before.hash != after.hash
    (builtin,) = plan(SweepRequest(methods=["xnor"], recipe=recipe)).specs
    assert builtin.plugins == {}
