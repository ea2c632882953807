"""The robustness track: the 15 corruptions (formulas on hand-made images, range, shape, determinism), FGSM/PGD
(eps 0 is the clean evaluation, the eps-ball is respected, surrogate gradients reach the input), and
``run_bench.py robustness`` / a recipe's ``eval: {robustness: ...}`` end to end into the leaderboard."""
import io
import json

import numpy as np
import pytest
import torch
from conftest import make_cifar, make_recipe
from PIL import Image

from bnnbench.cli.main import main
from bnnbench.config.evaluation import RobustnessRequest, parse_eval
from bnnbench.data import corruptions as C
from bnnbench.engine import trained_model
from bnnbench.engine.attacks import Normalizer, _input_grad, correct, fgsm, pgd
from bnnbench.errors import ConfigError
from bnnbench.store import RunDir


def _images(n=6, size=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=g)


# --- corruptions --------------------------------------------------------------------------------------------

def test_both_presets_give_every_corruption_five_severities():
    assert len(C.CORRUPTIONS) == 15
    for preset in ("cifar", "imagenet"):
        assert set(C.PARAMS[preset]) == set(C.CORRUPTIONS)
        assert all(len(v) == 5 for v in C.PARAMS[preset].values())
    assert C.preset_for(32, 32) == "cifar" and C.preset_for(224, 224) == "imagenet"


@pytest.mark.parametrize("name", C.CORRUPTIONS)
def test_each_corruption_keeps_shape_and_range_and_is_deterministic(name):
    x = _images()
    for sev in C.SEVERITIES:
        img = x[0].permute(1, 2, 0).numpy()
        raw = np.asarray(C.FUNCTIONS[name](img, C.PARAMS["cifar"][name][sev - 1], np.random.default_rng(0), "cifar"))
        assert raw.shape == img.shape and raw.min() >= 0 and raw.max() <= 255, (name, sev)
        y = C.corrupt_images(x, name, sev, seed=3)
        assert y.shape == x.shape and y.dtype == torch.uint8
        assert torch.equal(y, C.corrupt_images(x, name, sev, seed=3))            # a second invocation
        assert torch.equal(y[2:4], C.corrupt_images(x[2:4], name, sev, seed=3, start=2))  # batch-independent
    assert not torch.equal(C.corrupt_images(x, name, 5), x)


def test_random_corruptions_change_with_the_seed():
    x = _images()
    for name in ("gaussian_noise", "shot_noise", "impulse_noise", "snow", "frost", "fog", "glass_blur"):
        assert not torch.equal(C.corrupt_images(x, name, 3, seed=0), C.corrupt_images(x, name, 3, seed=1)), name


def test_noise_contrast_pixelate_and_jpeg_by_hand():
    x = _images(1)[0].permute(1, 2, 0).numpy()
    rng = np.random.default_rng(7)
    want = np.clip(x / 255.0 + rng.normal(size=x.shape, scale=0.08), 0, 1) * 255
    got = C.corrupt(x, "gaussian_noise", 3, np.random.default_rng(7), "cifar")
    assert np.array_equal(got, want.astype(np.uint8))
    f = x / 255.0
    m = f.mean(axis=(0, 1), keepdims=True)
    want = (np.clip((f - m) * 0.4 + m, 0, 1) * 255).astype(np.uint8)          # CIFAR-10-C contrast, severity 3
    assert np.array_equal(C.corrupt(x, "contrast", 3, np.random.default_rng(0), "cifar"), want)
    small = Image.fromarray(x).resize((27, 27), Image.BOX).resize((32, 32), Image.BOX)  # 32 * 0.85 = 27
    assert np.array_equal(C.corrupt(x, "pixelate", 3, np.random.default_rng(0), "cifar"), np.asarray(small))
    buf = io.BytesIO()
    Image.fromarray(x).save(buf, "JPEG", quality=58)
    assert np.array_equal(C.corrupt(x, "jpeg_compression", 3, np.random.default_rng(0), "cifar"),
                          np.asarray(Image.open(buf)))


def test_impulse_noise_replaces_about_the_fraction_c_with_black_or_white():
    x = np.full((64, 64, 3), 128, dtype=np.uint8)
    out = C.corrupt(x, "impulse_noise", 5, np.random.default_rng(0), "cifar")   # c = 0.07
    hit = out != 128
    assert set(np.unique(out[hit])) <= {0, 255}
    assert abs(hit.mean() - 0.07) < 0.01 and abs((out == 255).mean() - 0.035) < 0.008


def test_motion_blur_is_imagemagicks_one_sided_gaussian_trail():
    x = np.zeros((9, 31, 1))
    x[4, 20] = 255.0
    out = C._motion_blur(x, radius=3, sigma=2.0, angle=0.0)   # width 7, offsets (i, 0)
    k = np.exp(-np.arange(7) ** 2 / 8.0)
    k /= k.sum()
    assert np.allclose(out[4, 14:21, 0], 255 * k[::-1]) and out.sum() == pytest.approx(255.0)
    assert np.count_nonzero(out) == 7


def test_disk_kernel_sums_to_one_and_glass_blur_copies_as_the_authors_code_did():
    assert C._disk(1.5, 0.1).sum() == pytest.approx(1.0, abs=1e-6)
    x = np.arange(5 * 5 * 3, dtype=np.uint8).reshape(5, 5, 3)
    sigma_zero = (1e-9, 1, 1)                         # blurs that leave the image as it is
    rng = np.random.default_rng(0)
    moves = np.random.default_rng(0).integers(-1, 1, size=(9, 2))
    want, j = x.copy(), 0
    for r in range(4, 1, -1):
        for q in range(4, 1, -1):
            want[r, q] = want[r + moves[j][1], q + moves[j][0]]
            j += 1
    assert np.array_equal(C.glass_blur(x, sigma_zero, rng, "cifar").round().astype(np.uint8), want)


def test_unknown_corruptions_and_severities_are_named():
    with pytest.raises(ConfigError, match="'fogg' is not a corruption.*fog"):
        C.check_corruptions(["fogg"], [1], "test")
    with pytest.raises(ConfigError, match="severity 6"):
        C.check_corruptions(["fog"], [6], "test")
    with pytest.raises(ConfigError, match="uint8 RGB"):
        C.corrupt_images(torch.zeros(1, 1, 32, 32, dtype=torch.uint8), "fog", 1)


def test_a_recipes_eval_section_is_validated():
    assert parse_eval({"robustness": {"subset": 10, "corruptions": ["fog"]}}, "r.yaml")
    assert RobustnessRequest.from_dict(True, "r") == RobustnessRequest()
    for doc, msg in (({"robustnes": {}}, "eval.robustnes.*robustness"), ({"robustness": {"subst": 1}}, "subset"),
                     ({"robustness": {"epsilons": 2}}, "non-empty list"), ({"robustness": {"subset": 0}}, "positive"),
                     ({"robustness": {"corruptions": ["rain"]}}, "'rain' is not a corruption")):
        with pytest.raises(ConfigError, match=msg):
            parse_eval(doc, "r.yaml")


# --- attacks and the command end to end --------------------------------------------------------------------

@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("robust")
    data = make_cifar(tmp / "data", n_test=60)
    recipe = make_recipe(tmp / "tiny.yaml", epochs=1)
    out = tmp / "out"
    common = ["--recipe", str(recipe), "--data-root", str(data), "--out", str(out), "--device", "cpu"]
    assert main(["--methods", "xnor", "recu", *common]) == 0
    assert main(["--methods", "xnor", "--set", "binarize=none", *common]) == 0
    runs = sorted((out / "runs").iterdir())
    fp = next(d for d in runs if RunDir(d).read_spec().settings.binarize == "none")
    return [d for d in runs if d != fp], fp, data, out, tmp


pytestmark_slow = pytest.mark.slow


@pytestmark_slow
def test_pgd_at_eps_0_is_the_clean_evaluation_and_attacks_stay_in_the_ball(trained):
    runs, _, data, _, _ = trained
    spec, model, test = trained_model(runs[0], data)
    from bnnbench.engine.rebuild import checked_data, input_normalization
    d = checked_data(spec, data)
    norm = Normalizer.of(*input_normalization(spec, d), torch.device("cpu"))
    x, y = d.test_x.float(), d.test_y
    from bnnbench.engine import evaluate
    clean = evaluate(model, test, torch.device("cpu"), amp=False)["test_top1"]
    assert 100.0 * correct(model, norm, pgd(model, norm, x, y, 0.0), y) / len(y) == clean
    assert 100.0 * correct(model, norm, fgsm(model, norm, x, y, 0.0), y) / len(y) == clean
    assert _input_grad(model, norm, x[:8], y[:8]).abs().sum() > 0        # the STE reaches the input
    for adv in (fgsm(model, norm, x, y, 8.0), pgd(model, norm, x, y, 8.0, steps=3)):
        assert (adv - x).abs().max() <= 8.0 + 1e-4 and adv.min() >= 0 and adv.max() <= 255
        assert not torch.equal(adv, x)
    g = torch.Generator().manual_seed(1)
    assert torch.equal(pgd(model, norm, x, y, 4.0, steps=2, gen=g),
                       pgd(model, norm, x, y, 4.0, steps=2, gen=torch.Generator().manual_seed(1)))


@pytestmark_slow
def test_robustness_command_writes_resumes_and_the_report_shows_the_columns(trained, capsys):
    runs, fp, data, out, _ = trained
    args = ["robustness", *map(str, runs), "--data-root", str(data), "--epsilons", "0", "2", "--pgd-steps", "2",
            "--subset", "40", "--transfer-source", str(fp)]
    assert main(args) == 0
    log = capsys.readouterr().out   # not a terminal: a line at every tenth of the work, besides the end table
    assert log.count(" steps (") == 10 and f"robustness: {81 * len(runs)}/{81 * len(runs)} steps" in log
    docs = [RunDir(d).read_robustness() for d in runs]
    for doc in docs:
        assert doc["setup"]["images"] == 40 and doc["summary"]["complete"] and doc["summary"]["conditions"] == 75
        assert doc["pgd"]["0"] == doc["fgsm"]["0"] == doc["clean_top1"]
        assert set(doc["transfer"]["pgd"]) == {"0", "2"} and doc["transfer"]["pgd"]["0"] == doc["clean_top1"]
    # resumable: a lost entry is recomputed, identically, and nothing else changes
    first = json.loads((runs[0] / "robustness.json").read_text())
    cut = dict(first, corruptions={k: v for k, v in first["corruptions"].items() if k != "fog"})
    (runs[0] / "robustness.json").write_text(json.dumps(cut))
    assert main(args) == 0
    assert json.loads((runs[0] / "robustness.json").read_text()) == first
    capsys.readouterr()
    assert main(["report", "--out", str(out), "--format", "md"]) == 0
    md = (out / "leaderboard.md").read_text()
    assert "mCA" in md and "PGD 2/255" in md and "Robustness on the first 40 test images" in md
    table = json.loads((out / "leaderboard.json").read_text())["tables"]
    rows = {r["method"]: r for t in table for r in t["rows"]}
    assert rows["xnor"]["mca"] == pytest.approx(docs[[RunDir(d).read_spec().method for d in runs].index("xnor")]
                                                 ["summary"]["mca"])
    assert rows["xnor[binarize=none]"]["mca"] is None and "not evaluated" in rows["xnor[binarize=none]"]["robust_note"]
    assert len(list((out / "plots").glob("robustness__*.png"))) == 1   # one table: one heat map
    # figures of another setup are never silently replaced; a binary run is not a transfer source
    other = ["robustness", str(runs[0]), "--data-root", str(data), "--corruptions", "fog", "--severities", "1",
             "--epsilons", "1", "--pgd-steps", "1"]
    assert main(other) == 3
    assert "holds figures for another setup (subset 40, seed 0, pgd_steps 2" in capsys.readouterr().out
    assert json.loads((runs[0] / "robustness.json").read_text()) == first
    assert main([*args[:1], str(runs[0]), *args[len(runs) + 1:-1], str(runs[1])]) == 3
    assert "binarize: none" in capsys.readouterr().out
    assert main([*other, "--overwrite"]) == 0
    assert RunDir(runs[0]).read_robustness()["setup"]["pgd_steps"] == 1


@pytestmark_slow
def test_a_recipe_asking_for_robustness_gets_it_after_training(tmp_path):
    data = make_cifar(tmp_path / "data", n_test=30)
    recipe = make_recipe(tmp_path / "tiny.yaml", epochs=1)
    recipe.write_text(recipe.read_text() + "eval:\n  robustness: {corruptions: [fog, contrast], severities: [2],"
                      " epsilons: [1], pgd_steps: 1}\n")
    out = tmp_path / "out"
    common = ["--methods", "xnor", "--recipe", str(recipe), "--data-root", str(data), "--out", str(out),
              "--device", "cpu"]
    assert main(common) == 0
    (run,) = (out / "runs").iterdir()
    doc = RunDir(run).read_robustness()
    assert set(doc["corruptions"]) == {"fog", "contrast"} and set(doc["pgd"]) == {"1"}
    spec = RunDir(run).read_spec()
    assert spec.evaluation and "evaluation" not in spec.identity()
    mtime = (run / "robustness.json").stat().st_mtime_ns
    assert main(common) == 0                                  # complete: not evaluated again
    assert (run / "robustness.json").stat().st_mtime_ns == mtime


def test_imagefolder_test_images_cover_every_class_and_take_imagenet_c_parameters(tmp_path):
    from bnnbench.data.loaders import folder_test_images
    g = torch.Generator().manual_seed(0)
    for c in ("a", "b", "c"):
        (tmp_path / "val" / c).mkdir(parents=True)
        for i in range(4):
            arr = (torch.rand(300, 260, 3, generator=g) * 255).to(torch.uint8).numpy()
            Image.fromarray(arr).save(tmp_path / "val" / c / f"{i}.png")
    x, y = folder_test_images(tmp_path, 3)
    assert x.shape == (3, 3, 224, 224) and x.dtype == torch.uint8 and y.tolist() == [0, 1, 2]
    assert folder_test_images(tmp_path, None)[0].shape[0] == 12
    assert C.preset_for(224, 224) == "imagenet"
    out = C.corrupt_images(x[:1], "contrast", 5)          # ImageNet-C contrast, severity 5: c = 0.05
    f = x[0].permute(1, 2, 0).numpy() / 255.0
    m = f.mean(axis=(0, 1), keepdims=True)
    assert np.array_equal(out[0].permute(1, 2, 0).numpy(), (np.clip((f - m) * 0.05 + m, 0, 1) * 255).astype(np.uint8))
