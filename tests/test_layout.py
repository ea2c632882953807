"""The house by concern (README, "Layout"): the layering contract catches an upward import, no module-level
import cycle, no private name imported across modules, every deferred import gives its reason."""
import ast
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "bnnbench"
grimp = pytest.importorskip("grimp", reason="import-linter not installed (the test extra installs it)")


def modules() -> list[tuple[str, Path]]:
    out = []
    for p in sorted(PACKAGE.rglob("*.py")):
        parts = p.relative_to(ROOT).with_suffix("").parts
        out.append((".".join(parts[:-1] if parts[-1] == "__init__" else parts), p))
    return out


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's strongly connected components with more than one member (the import cycles)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))
    sys.setrecursionlimit(10_000)
    for v in graph:
        if v not in index:
            visit(v)
    return out


def test_strongly_connected_finds_a_cycle_and_only_cycles():
    assert strongly_connected({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert strongly_connected({"a": {"b"}, "b": set()}) == []


def test_no_import_cycle_between_modules():
    """Module to module (a package's __init__ re-exporting its own submodules is its public face, not a
    cycle: those edges are left out)."""
    g = grimp.build_graph("bnnbench")
    graph = {m: {i for i in g.find_modules_directly_imported_by(m) if i.rsplit(".", 1)[0] != m} for m in g.modules}
    assert strongly_connected(graph) == []


def test_no_private_name_is_imported_from_another_module():
    bad = []
    for name, path in modules():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("bnnbench"):
                bad += [f"{name}: from {node.module} import {a.name}" for a in node.names
                        if a.name.startswith("_") and not a.name.startswith("__")]
    assert bad == []


def test_every_deferred_import_of_the_suite_says_why():
    """An import inside a function is for start-up time or an optional dependency, with a one-line reason."""
    bad = []
    for _, path in modules():
        lines = path.read_text().splitlines()
        for fn in ast.walk(ast.parse("\n".join(lines))):
            if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for node in ast.walk(fn):
                if not isinstance(node, (ast.Import, ast.ImportFrom)):
                    continue
                line = lines[node.lineno - 1]
                if "deferred:" not in line.partition("#")[2]:
                    bad.append(f"{path.relative_to(ROOT)}:{node.lineno}: {line.strip()}")
    assert bad == []


def test_an_upward_import_breaks_the_layering_contract(tmp_path):
    """The contract of pyproject.toml on a copy of the package: as it is, kept; with nn importing the
    engine (an upward import), broken, naming the offending import."""
    lint = shutil.which("lint-imports", path=str(Path(sys.executable).parent))
    if lint is None:
        pytest.skip("lint-imports not installed (the test extra installs import-linter)")
    shutil.copytree(PACKAGE, tmp_path / "bnnbench", ignore=shutil.ignore_patterns("__pycache__", "csrc"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")  # the contracts, as CI reads them

    def check():
        return subprocess.run([lint, "--no-cache"], cwd=tmp_path,
                              capture_output=True, text=True, env={"PYTHONPATH": str(tmp_path), "PATH": "/usr/bin"})
    kept = check()
    assert kept.returncode == 0, kept.stdout[-2000:]
    layers = tmp_path / "bnnbench" / "nn" / "layers.py"
    layers.write_text(layers.read_text() + "\nfrom bnnbench.engine import step  # noqa: E402\n")
    broken = check()
    assert broken.returncode != 0, broken.stdout[-2000:]
    assert "bnnbench.nn.layers -> bnnbench.engine.step" in broken.stdout, broken.stdout[-2000:]



def test_old_plugin_paths_reexport_the_new_ones_and_warn_once():
    """``bnnbench.layers`` / ``.surrogates`` / ``.method`` / ``.arch`` / ``.registry`` (the README's plugin imports
    of earlier versions) give the same objects as ``bnnbench.nn`` / ``bnnbench.plugins``, each with one
    DeprecationWarning per process however often it is imported."""
    code = textwrap.dedent("""
        import importlib, warnings
        warnings.simplefilter("always")
        with warnings.catch_warnings(record=True) as caught:
            for _ in range(2):
                from bnnbench.layers import BinaryConv2d, FILTER_DIMS
                from bnnbench.surrogates import sign_approx, sign_ste
                from bnnbench.method import Method, register_method
                from bnnbench.arch import ArchSpec, register_arch
                from bnnbench.registry import METHODS, ARCHITECTURES, load_plugin
        import bnnbench.nn as nn, bnnbench.plugins as plugins
        same = (BinaryConv2d is nn.BinaryConv2d and sign_ste is nn.sign_ste and sign_approx is nn.sign_approx
                and Method is plugins.Method and register_method is plugins.register_method
                and ArchSpec is plugins.ArchSpec and METHODS is plugins.METHODS and load_plugin is plugins.load_plugin)
        print(same, sorted(str(w.message).split()[0] for w in caught if w.category is DeprecationWarning))
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split(" ", 1) == ["True", "['bnnbench.arch', 'bnnbench.layers', 'bnnbench.method', "
                                              "'bnnbench.registry', 'bnnbench.surrogates']\n"], r.stdout
