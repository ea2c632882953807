"""Received files, fuzzed (hypothesis): a 1-bit export file truncated anywhere or with any part swapped for a
wrong type, a huge or negative shape, missing or extra keys, and a result.json with swapped field types, each
give one clear error of the suite (or load correctly), never another exception."""
import io
import json
import random

import pytest
import torch
from conftest import TALLY, make_recipe
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bnnbench.cli.main import main
from bnnbench.config.spec import RunResult
from bnnbench.deploy import export
from bnnbench.errors import BnnBenchError
from bnnbench.store import RunDir

JUNK = st.one_of(st.none(), st.integers(-10**12, 10**12), st.floats(allow_nan=True), st.text(max_size=5),
                 st.lists(st.integers(-3, 10**12), max_size=4), st.dictionaries(st.text(max_size=3), st.integers(),
                                                                                 max_size=2))


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    from conftest import make_cifar
    tmp = tmp_path_factory.mktemp("fuzz")
    data = make_cifar(tmp / "data")
    out = tmp / "out"
    assert main(["--methods", "xnor", "--recipe", str(make_recipe(tmp / "tiny.yaml", epochs=1)), "--data-root",
                 str(data), "--device", "cpu", "--out", str(out)]) == 0
    run = next((out / "runs").iterdir())
    assert main(["export", str(run), "--out", str(tmp / "model.pt"), "--data-root", str(data)]) == 0
    return tmp, tmp / "model.pt", run


def _load(tmp, data: bytes):
    path = tmp / f"case-{random.random()}.pt"
    path.write_bytes(data)
    try:
        export.load_exported(path)
    except BnnBenchError as exc:
        assert str(path) in str(exc)
    finally:
        path.unlink()


def _paths(o, prefix=()):
    """Every (path, value) in a nested export document."""
    yield prefix, o
    if isinstance(o, dict):
        for k, v in o.items():
            yield from _paths(v, (*prefix, k))


@settings(max_examples=40, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cut=st.floats(0, 1, exclude_max=True))
def test_a_truncated_export_is_one_message(exported, cut):
    tmp, model, _ = exported
    data = model.read_bytes()
    _load(tmp, data[:int(cut * len(data))])
    TALLY["fuzzed files"] += 1


@settings(max_examples=60, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(pick=st.integers(0, 10**6), junk=JUNK, drop=st.booleans())
def test_an_export_with_a_part_swapped_or_missing_is_one_message(exported, pick, junk, drop):
    tmp, model, _ = exported
    doc = torch.load(model, weights_only=True)
    paths = [p for p, _ in _paths(doc) if p]
    path = paths[pick % len(paths)]
    parent = doc
    for k in path[:-1]:
        parent = parent[k]
    if drop:
        del parent[path[-1]]
    else:
        parent[path[-1]] = junk
    buf = io.BytesIO()
    torch.save(doc, buf)
    _load(tmp, buf.getvalue())
    TALLY["fuzzed files"] += 1


@settings(max_examples=60, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(pick=st.integers(0, 10**6), junk=JUNK)
def test_a_result_with_a_field_of_the_wrong_type_is_refused_or_kept_as_it_is(exported, pick, junk):
    _, _, run = exported
    rd = RunDir(run)
    doc = json.loads(rd.file("result.json").read_text())
    key = sorted(doc)[pick % len(doc)]
    doc[key] = junk
    try:
        result = RunResult.from_dict(doc, rd.read_spec(), "result.json")
    except BnnBenchError as exc:
        assert f"{key} = " in str(exc)
    else:
        assert key not in {f for f in RunResult.__dataclass_fields__} - {"group", "label", "changes", "stage"} \
            or getattr(result, key) == junk
    TALLY["fuzzed files"] += 1
