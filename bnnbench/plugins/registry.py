"""Registries of methods and architectures, and plugin discovery.

Two registries, :data:`METHODS` and :data:`ARCHITECTURES`. Built-in plugins live in the folders
``methods/`` and ``architectures/`` of the project, installed as the subpackages ``bnnbench.methods`` and
``bnnbench.architectures`` (one module each, imported in name order; never looked up in the current
folder); third-party plugins come from the entry-point groups ``bnnbench.methods`` /
``bnnbench.architectures`` or from an explicit file path or module name (:func:`load_plugin`, ``--plugin``
on the CLI). A plugin that fails to import raises :class:`~bnnbench.errors.RegistryError` naming the
plugin and the original error: nothing is swallowed.
"""
from __future__ import annotations

import importlib
import importlib.util
import pkgutil
import sys
import traceback
import types
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path
from typing import Any, Generic, TypeVar

from bnnbench.errors import RegistryError, did_you_mean

T = TypeVar("T")


class Registry(Generic[T]):
    """A name -> object mapping with loud errors for duplicates and unknown names."""

    def __init__(self, kind: str):
        self.kind = kind
        self._items: dict[str, T] = {}
        self._origin: dict[str, str] = {}

    def register(self, name: str, obj: T | None = None, *, origin: str | None = None):
        """Register ``obj`` under ``name``; usable as ``@REG.register("name")`` on a class or function."""
        if obj is None:
            return lambda o: self.register(name, o, origin=origin)
        if not isinstance(name, str) or not name.isidentifier():
            raise RegistryError(f"{self.kind} name {name!r} is not allowed: use a Python identifier "
                                f"(letters, digits, underscore), e.g. 'my_method'")
        if name in self._items:
            raise RegistryError(
                f"duplicate {self.kind} name {name!r}: already registered by {self._origin[name]}; "
                f"the second registration came from {origin or _caller_origin()}. Pick another name.")
        self._items[name] = obj
        self._origin[name] = origin or _caller_origin()
        return obj

    def unregister(self, name: str) -> None:
        self._items.pop(name, None)
        self._origin.pop(name, None)

    def get(self, name: str, *, source: str = "") -> T:
        """The object registered as ``name``; unknown names raise with the list and the closest match."""
        ensure_builtins()
        if name not in self._items:
            where = f" (from {source})" if source else ""
            raise RegistryError(
                f"unknown {self.kind} {name!r}{where}{did_you_mean(name, self._items)}; "
                f"registered {self.kind}s: {', '.join(sorted(self._items)) or '(none)'}")
        return self._items[name]

    def names(self) -> list[str]:
        ensure_builtins()
        return sorted(self._items)

    def origin(self, name: str) -> str:
        return self._origin[name]

    def __contains__(self, name: object) -> bool:
        ensure_builtins()
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())


def _caller_origin() -> str:
    for frame in reversed(traceback.extract_stack()[:-2]):
        if "registry.py" not in frame.filename:
            return f"{frame.filename}:{frame.lineno}"
    return "<unknown>"


METHODS: Registry[Any] = Registry("method")
ARCHITECTURES: Registry[Any] = Registry("architecture")

_GROUPS = {"bnnbench.methods": METHODS, "bnnbench.architectures": ARCHITECTURES}
_BUILTIN_PACKAGES = ("bnnbench.methods", "bnnbench.architectures")
_state = {"loaded": False, "loading": False}
_loaded_plugins: dict[str, str] = {}


def ensure_builtins() -> None:
    """Import every built-in plugin module and every installed entry point (once)."""
    if _state["loaded"] or _state["loading"]:
        return
    _state["loading"] = True
    try:
        for package in _BUILTIN_PACKAGES:
            pkg = _import(package, f"built-in plugin package {package!r}")
            for info in sorted(pkgutil.iter_modules(pkg.__path__), key=lambda i: i.name):
                if not info.name.startswith("_"):
                    _import(f"{package}.{info.name}", f"built-in plugin {pkg.__path__[0]}/{info.name}.py")
        for group in _GROUPS:
            for ep in metadata.entry_points(group=group):
                _load_entry_point(ep, group)
        _state["loaded"] = True
    finally:
        _state["loading"] = False


def _load_entry_point(ep, group: str) -> None:
    """Load one entry point: it names a plugin module, or a Method subclass / ArchSpec (registered here
    if its module did not register it)."""
    from bnnbench.plugins.arch import ArchSpec, register_arch
    from bnnbench.plugins.method import Method, register_method
    what = f"plugin entry point {ep.name!r} = {ep.value!r} (group {group})"
    try:
        obj = ep.load()
    except RegistryError:
        raise
    except (Exception, SystemExit) as exc:
        raise RegistryError(f"{what} failed to load: {_describe(exc)}") from exc
    registry = _GROUPS[group]
    if isinstance(obj, type) and issubclass(obj, Method) and registry is METHODS:
        if obj.name not in registry._items or registry._items[obj.name] is not obj:
            register_method(obj)
    elif isinstance(obj, ArchSpec) and registry is ARCHITECTURES:
        if obj.name not in registry._items:
            register_arch(obj)
    elif not isinstance(obj, types.ModuleType):
        raise RegistryError(f"{what} names {obj!r}; an entry point must name a plugin module, a Method "
                            f"subclass (group bnnbench.methods) or an ArchSpec (group bnnbench.architectures)")


def _describe(exc: BaseException) -> str:
    """'Type: message (at file:line)' with the innermost frame outside the standard library."""
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if "importlib" not in f.filename]
    where = f" (at {frames[-1].filename}:{frames[-1].lineno})" if frames else ""
    if isinstance(exc, SystemExit):
        return f"it called sys.exit({exc.code!r}){where}"
    return f"{type(exc).__name__}: {exc}{where}"


def _import(module: str, what: str):
    try:
        return importlib.import_module(module)
    except RegistryError:
        raise
    except (Exception, SystemExit) as exc:
        raise RegistryError(f"{what} failed to import: {_describe(exc)}") from exc


def load_plugin(spec: str) -> str:
    """Load a third-party plugin from a ``.py`` file path or an importable module name.

    The plugin registers itself on import (``@METHODS.register(...)``). Loading the same file twice is a
    no-op. Returns the module name it was imported as.
    """
    ensure_builtins()
    path = Path(spec)
    if spec.endswith(".py") or path.exists():
        path = path.resolve()
        if not path.is_file():
            raise RegistryError(f"--plugin {spec!r}: no such file; give a .py file or an importable "
                                f"module name (e.g. mypkg.my_method)")
        key = str(path)
        if key in _loaded_plugins:
            return _loaded_plugins[key]
        mod_name = f"bnnbench_plugin_{path.stem}_{abs(hash(key)) % 10**8}"
        module_spec = importlib.util.spec_from_file_location(mod_name, path)
        if module_spec is None or module_spec.loader is None:
            raise RegistryError(f"--plugin {spec!r}: cannot be imported as a Python module")
        module = importlib.util.module_from_spec(module_spec)
        sys.modules[mod_name] = module
        try:
            module_spec.loader.exec_module(module)
        except RegistryError:
            del sys.modules[mod_name]
            raise
        except SyntaxError as exc:
            del sys.modules[mod_name]
            raise RegistryError(f"plugin file {path} has a syntax error at line {exc.lineno}: {exc.msg}") from exc
        except (Exception, SystemExit) as exc:
            del sys.modules[mod_name]
            raise RegistryError(f"plugin file {path} failed to import: {_describe(exc)}") from exc
        _loaded_plugins[key] = mod_name
        return mod_name
    if spec in _loaded_plugins:
        return _loaded_plugins[spec]
    _import(spec, f"plugin module {spec!r} (from --plugin)")
    _loaded_plugins[spec] = spec
    return spec


def provenance(obj: Any) -> dict[str, str] | None:
    """Where a third-party plugin's code came from and a sha256 of its source file; None for built-ins.

    Part of every run's identity, so editing a plugin makes new runs instead of reusing stale results.
    """
    import hashlib
    owner = obj if isinstance(obj, type) else getattr(obj, "build", obj)  # a Method class, or an ArchSpec's build
    module_name = getattr(owner, "__module__", "") or ""
    if module_name.split(".")[:2] in (["bnnbench", "methods"], ["bnnbench", "architectures"]):
        return None
    module = sys.modules.get(module_name)
    path = Path(getattr(module, "__file__", "") or "")
    if not path.is_file():
        return {"origin": module_name, "sha256": "unknown (no source file)"}
    origin = str(path)
    top = module_name.split(".")[0]
    dists = metadata.packages_distributions().get(top, [])
    if dists and not module_name.startswith("bnnbench_plugin_"):
        origin = f"{dists[0]}=={metadata.version(dists[0])} ({module_name})"
    return {"origin": origin, "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}
