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


PLUGIN = '''
import torch
from bnnbench.nn import BinaryConv2d, sign_ste
from bnnbench.plugins import Method, register_method


class NoFormConv(BinaryConv2d):
    def binarize_input(self, x):
        return sign_ste(x)

    def binarize_weight(self, w):
        return sign_ste(w)

    def inference_form(self):
        raise ValueError("this layer has no 1-bit form")


@register_method
class NoForm(Method):
    """Trains, but its layers cannot be exported."""
    name = "noform_cmd"
    conv_class = NoFormConv


@register_method
class TensorStats(NoForm):
    """Reports a tensor from epoch_stats."""
    name = "tensorstats_cmd"

    def epoch_stats(self, model):
        return {"my_number": torch.tensor(1.0)}
'''


def test_plugin_hooks_that_fail_outside_training_are_named_and_crafted_exports_refused(tmp_path, tiny_cifar,
                                                                                       capsys):
    import torch
    from conftest import make_recipe

    from bnnbench.store import RunDir
    plugin = tmp_path / "hooks_plugin.py"
    plugin.write_text(PLUGIN)
    out = tmp_path / "out"
    common = ["--plugin", str(plugin), "--recipe", str(make_recipe(tmp_path / "tiny.yaml", epochs=1)),
              "--data-root", str(tiny_cifar), "--device", "cpu"]
    assert main(["--methods", "noform_cmd", "tensorstats_cmd", *common, "--out", str(out)]) == 3
    text = capsys.readouterr().out.replace("\n", "")
    assert "epoch_stats at" in text and "hooks_plugin.py" in text and "key 'my_number'" in text, text
    run = next((out / "runs").glob("*noform_cmd*"))
    assert main(["export", str(run), "--out", str(tmp_path / "m.pt"), *common[:2], "--data-root",
                 str(tiny_cifar)]) == 2
    text = capsys.readouterr().out.replace("\n", "")
    assert "NoFormConv.inference_form at" in text and "hooks_plugin.py" in text and "Traceback" not in text, text
    # a crafted export asking for 10^9 classes is refused before anything is allocated
    from bnnbench.deploy import export
    spec, model, test = __import__("bnnbench.engine", fromlist=["x"]).trained_model(
        next((out / "runs").glob("*noform_cmd*")), tiny_cifar)
    doc = {"format": export.FORMAT, "version": export.VERSION, "spec": RunDir(run).read_spec().to_dict(),
           "num_classes": 10**9, "binary": {}, "state": {k: v for k, v in model.state_dict().items()}}
    torch.save(doc, tmp_path / "crafted.pt")
    assert main(["evaluate", str(tmp_path / "crafted.pt"), *common[:2], "--data-root", str(tiny_cifar)]) == 2
    assert "num_classes = 1000000000 is not an integer between 2 and" in capsys.readouterr().out.replace("\n", "")
    TALLY["bad inputs tried"] += 3


@pytest.mark.parametrize("content, message", [([1, 2, 3], "holds no tensors by name (a list)"),
                                              ("tensor", "holds no tensors by name (a Tensor)"),
                                              ({"other.weight": "tensor"}, "no tensor matches xnor on cresnet20")])
def test_init_from_that_cannot_fit_is_refused_before_any_run(tmp_path, tiny_cifar, capsys, content, message):
    import torch
    from conftest import make_recipe
    as_tensor = {"tensor": torch.zeros(3)}
    obj = {k: as_tensor.get(v, v) for k, v in content.items()} if isinstance(content, dict) else \
        as_tensor.get(content, content) if isinstance(content, str) else content
    torch.save(obj, tmp_path / "init.pt")
    out = tmp_path / "out"
    rc = main(["--methods", "xnor", "--recipe", str(make_recipe(tmp_path / "tiny.yaml", epochs=1)), "--data-root",
               str(tiny_cifar), "--device", "cpu", "--out", str(out), "--init-from", str(tmp_path / "init.pt")])
    assert rc == 2 and message in capsys.readouterr().out.replace("\n", "")
    assert not (out / "runs").exists()
    TALLY["bad inputs tried"] += 1
