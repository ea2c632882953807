"""Registry errors, plugin discovery (file, module, entry point) and loud import failures."""
import sys
import textwrap

import pytest
import torch

from bnnbench.engine import train_step
from bnnbench.errors import RegistryError
from bnnbench.plugins import ARCHITECTURES, METHODS, Registry, load_plugin
from bnnbench.plugins.arch import build_model

PLUGIN = textwrap.dedent('''
    import torch
    from bnnbench.nn.layers import BinaryConv2d
    from bnnbench.plugins.method import Method, register_method
    from bnnbench.nn.surrogates import sign_clipped

    class HalfConv(BinaryConv2d):
        def binarize_weight(self, w):
            return self.hparams["beta"] * sign_clipped(w)

    @register_method
    class {cls}(Method):
        """A test plugin: sign weights scaled by beta."""
        name = "{name}"
        conv_class = HalfConv
        hparams = {{"beta": 0.5}}
''')


def test_unknown_names_list_registered_and_closest():
    with pytest.raises(RegistryError) as e:
        METHODS.get("recuu", source="--methods")
    msg = str(e.value)
    assert "'recuu'" in msg and "did you mean 'recu'" in msg and "--methods" in msg
    for name in ("bireal", "irnet", "ovsw", "recu", "xnor"):
        assert name in msg
    with pytest.raises(RegistryError, match="did you mean 'cresnet20'"):
        ARCHITECTURES.get("cresnet2")


def test_duplicate_registration_is_an_error():
    reg = Registry("method")
    reg.register("a", object())
    with pytest.raises(RegistryError, match="duplicate method name 'a'"):
        reg.register("a", object())


def test_builtins_are_registered():
    assert set(METHODS.names()) >= {"xnor", "bireal", "irnet", "recu", "ovsw"}
    assert set(ARCHITECTURES.names()) >= {"resnet18", "resnet34", "cresnet18", "cresnet20", "vgg_small"}


def test_plugin_file_is_discovered_and_trains(tmp_path):
    f = tmp_path / "half_plugin.py"
    f.write_text(PLUGIN.format(cls="Half", name="half_test"))
    try:
        load_plugin(str(f))
        assert "half_test" in METHODS.names()
        m = METHODS.get("half_test")(overrides={"beta": 0.25})
        model = build_model(m, "cresnet20", 10)
        conv = model.layer1[0].conv1
        assert set(torch.unique(conv.binarize_weight(conv.weight)).tolist()) <= {-0.25, 0.25}
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        loss, _ = train_step(model, torch.randn(2, 3, 32, 32), torch.tensor([0, 1]), torch.nn.CrossEntropyLoss(),
                             opt, torch.amp.GradScaler("cpu", enabled=False), m, use_amp=False)
        assert torch.isfinite(loss)
        assert load_plugin(str(f))  # loading twice is a no-op, not a duplicate
    finally:
        METHODS.unregister("half_test")


def test_plugin_module_and_entry_point(tmp_path, monkeypatch):
    pkg = tmp_path / "site"
    pkg.mkdir()
    (pkg / "ep_plugin_mod.py").write_text(PLUGIN.format(cls="EP", name="ep_test"))
    dist = pkg / "ep_plugin-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: ep-plugin\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[bnnbench.methods]\nep_test = ep_plugin_mod\n")
    monkeypatch.syspath_prepend(str(pkg))
    from bnnbench.plugins import registry
    monkeypatch.setattr(METHODS, "loaded", False)
    try:
        registry.ensure_builtins()
        assert "ep_test" in METHODS.names()
    finally:
        METHODS.unregister("ep_test")
        sys.modules.pop("ep_plugin_mod", None)


def test_broken_plugins_fail_loudly(tmp_path):
    bad = tmp_path / "bad_syntax.py"
    bad.write_text("def broken(:\n    pass\n")
    with pytest.raises(RegistryError, match="syntax error at line 1"):
        load_plugin(str(bad))
    boom = tmp_path / "boom.py"
    boom.write_text("import not_a_real_module_xyz\n")
    with pytest.raises(RegistryError, match="ModuleNotFoundError.*not_a_real_module_xyz"):
        load_plugin(str(boom))
    dup = tmp_path / "dup.py"
    dup.write_text(PLUGIN.format(cls="Dup", name="ovsw"))
    with pytest.raises(RegistryError, match="duplicate method name 'ovsw'"):
        load_plugin(str(dup))
    with pytest.raises(RegistryError, match="no_such_plugin_module"):
        load_plugin("no_such_plugin_module")


@pytest.mark.parametrize("entry", [["-m", "bnnbench.cli"], ["RUN_BENCH"]])
def test_a_methods_folder_in_the_current_directory_neither_shadows_nor_loads(tmp_path, entry):
    import subprocess
    from pathlib import Path
    for pkg in ("methods", "architectures"):
        (tmp_path / pkg).mkdir()
        (tmp_path / pkg / "__init__.py").write_text("raise SystemExit('the user folder was imported')\n")
        (tmp_path / pkg / "foo.py").write_text("raise SystemExit('the user folder was imported')\n")
    root = Path(__file__).resolve().parent.parent
    argv = [str(root / "run_bench.py")] if entry == ["RUN_BENCH"] else entry
    r = subprocess.run([sys.executable, *argv, "--list"], cwd=tmp_path, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    for name in ("xnor", "bireal", "irnet", "recu", "ovsw", "cresnet20", "resnet18"):
        assert f"  {name} " in r.stdout, r.stdout
    assert "user folder" not in r.stdout + r.stderr


def test_every_way_of_registering_runs_the_same_checks():
    """``@METHODS.register("name")`` refuses what ``@register_method`` refuses, and a name that differs from
    the class's own ``name``; ``ARCHITECTURES.register`` takes only an ArchSpec under its own name."""
    from bnnbench.plugins import ArchSpec, Method

    class NoConv(Method):
        name = "noconv_reg"
    with pytest.raises(RegistryError, match="sets no conv_class"):
        METHODS.register("noconv_reg", NoConv)
    with pytest.raises(RegistryError, match="name attribute is 'noconv_reg'"):
        METHODS.register("other_name", NoConv)
    with pytest.raises(RegistryError, match="must be a Method subclass"):
        METHODS.register("not_a_method", object)
    with pytest.raises(RegistryError, match="must be an ArchSpec"):
        ARCHITECTURES.register("not_an_arch", object())
    spec = ArchSpec(name="a_reg", build=lambda *a, **k: None, family="cifar", input_size=(3, 32, 32),
                    description="", scope="")
    with pytest.raises(RegistryError, match="is registered as 'b_reg'"):
        ARCHITECTURES.register("b_reg", spec)
    assert "noconv_reg" not in METHODS and "b_reg" not in ARCHITECTURES
