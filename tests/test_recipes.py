"""Recipe validation: every shipped recipe loads; bad keys, types and values are named errors."""
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bnnbench.config.recipes import load_recipe, parse_recipe, recipe_names
from bnnbench.config.settings import TRAIN_FIELDS
from bnnbench.errors import BnnBenchError, ConfigError
from bnnbench.plugins import METHODS


def test_every_shipped_recipe_loads_and_resolves_for_every_method():
    names = recipe_names()
    assert {"digits-cresnet20", "cifar10-cresnet20", "cifar10-cresnet18", "cifar10-vgg_small",
            "cifar100-cresnet18", "imagenet-resnet18", "imagenet-resnet34"} <= set(names)
    for name in names:
        r = load_recipe(name)
        for method in METHODS.names():
            for track in ("unified", "paper"):
                cfg, note = r.resolve(method, track)
                assert cfg["epochs"] > 0 and note


def test_unified_recipe_values_follow_the_spec():
    r = load_recipe("cifar10-cresnet20")
    t = r.train
    assert (t["epochs"], t["batch_size"], t["lr"], t["weight_decay"], t["warmup_epochs"]) == (600, 256, 0.1, 5e-4, 5)
    irnet, note = r.resolve("irnet", "paper")
    assert (irnet["epochs"], irnet["batch_size"], irnet["method_hparams"]["t_min"]) == (400, 128, 1e-3)
    assert "published" in note
    xnor, note = r.resolve("xnor", "paper")
    assert "unified" in note and xnor["epochs"] == 600
    im = load_recipe("imagenet-resnet18")
    assert im.train["wd_policy"] == "no_1d" and im.resolve("recu", "paper")[0]["wd_policy"] == "by_name"


def doc(**train):
    base = {"name": "t", "dataset": "digits", "backbone": "cresnet20", "train": {"epochs": 3}}
    base["train"].update(train)
    return base


@pytest.mark.parametrize("train,match", [
    ({"schedul": "cosine"}, "unknown key 'schedul'.*did you mean 'schedule'"),
    ({"epoch": 3}, "did you mean 'epochs'"),
    ({"lr": -0.1}, r"lr = -0.1 is out of range; allowed: > 0"),
    ({"epochs": 0}, r"epochs = 0 is out of range"),
    ({"epochs": "ten"}, "wrong type; expected int"),
    ({"amp": "yes"}, "wrong type; expected bool"),
    ({"batch_size": 2.5}, "wrong type"),
    ({"optimizer": "rmsprop"}, "allowed: one of 'sgd', 'adam', 'adamw'"),
    ({"warmup_epochs": 3}, "warmup_epochs = 3 must be smaller than epochs = 3"),
    ({"milestones": [0, -2]}, "milestones"),
])
def test_bad_train_values_are_named(train, match):
    with pytest.raises(ConfigError, match=match) as e:
        parse_recipe(doc(**train), "recipes/t.yaml")
    assert "recipes/t.yaml" in str(e.value)


def test_bad_top_level():
    with pytest.raises(ConfigError, match="unknown key 'dataet'.*did you mean 'dataset'"):
        parse_recipe({**doc(), "dataet": "x"}, "f.yaml")
    with pytest.raises(ConfigError, match="dataset = 'cifar11'.*did you mean 'cifar10'"):
        parse_recipe({**doc(), "dataset": "cifar11"}, "f.yaml")
    with pytest.raises(BnnBenchError, match="unknown architecture 'resnet21'"):
        parse_recipe({**doc(), "backbone": "resnet21"}, "f.yaml")
    with pytest.raises(ConfigError, match="paper.recu"):
        parse_recipe({**doc(), "paper": {"recu": {"lrr": 1}}}, "f.yaml")


def test_unknown_recipe_name_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="unknown recipe 'cifar10-cresnet2'.*did you mean"):
        load_recipe("cifar10-cresnet2")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_recipe(str(bad))


values = st.one_of(st.none(), st.booleans(), st.integers(-5, 1000), st.floats(allow_nan=True),
                   st.text(max_size=8), st.lists(st.integers(-3, 10), max_size=3))
keys = st.one_of(st.sampled_from(sorted(TRAIN_FIELDS)), st.text(min_size=1, max_size=10))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(train=st.dictionaries(keys, values, max_size=6),
       top=st.dictionaries(st.sampled_from(["name", "dataset", "backbone", "paper", "extra", "description"]),
                           values, max_size=3))
def test_random_recipe_documents_are_accepted_or_rejected_cleanly(train, top):
    d = doc(**train)
    d.update(top)
    try:
        r = parse_recipe(d, "fuzz.yaml")
    except BnnBenchError:
        return
    assert r.train["epochs"] > 0 and r.train["lr"] > 0
    yaml.safe_dump(r.train)
