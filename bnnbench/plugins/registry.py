"""The generic registry and plugin discovery (no plugin types: each registry is given its validator).

A :class:`Registry` maps names to plugin objects with loud errors for duplicates and unknown names; every
way of registering (``@REG.register("name")``, ``register_method``, an entry point) runs the registry's
``validate``. The two registries of the suite live beside their types: ``METHODS`` in
:mod:`bnnbench.plugins.method`, ``ARCHITECTURES`` in :mod:`bnnbench.plugins.arch`. Built-in plugins live
in the folders ``methods/`` and ``architectures/`` of the project, installed as the subpackages
``bnnbench.methods`` and ``bnnbench.architectures`` (one module each, imported in name order; never looked
up in the current folder); third-party plugins come from the entry-point groups ``bnnbench.methods`` /
``bnnbench.architectures`` or from an explicit file path or module name (:func:`load_plugin`, ``--plugin``
on the CLI). A plugin that fails to import raises :class:`~bnnbench.errors.RegistryError` naming the
plugin and the original error: nothing is swallowed.
"""
from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import pkgutil
import sys
import traceback
from collections.abc import Callable, Iterable, Iterator
from importlib import metadata
from pathlib import Path
from typing import Any, Generic, TypeVar

from bnnbench.errors import RegistryError, describe_exception, did_you_mean

T = TypeVar("T")
#: every registry created (METHODS, ARCHITECTURES): what :func:`ensure_builtins` discovers
REGISTRIES: list["Registry"] = []


class Registry(Generic[T]):
    """A name -> object mapping with loud errors for duplicates and unknown names.

    ``validate(name, obj, origin)`` refuses an object the suite could not use (it raises RegistryError);
    ``adopt(obj)`` names an object an entry point points at directly (e.g. a Method subclass), or None.
    ``package`` and ``group`` are where the built-ins and the installed plugins of this kind are found."""

    def __init__(self, kind: str, *, package: str | None = None, group: str | None = None,
                 validate: Callable[[str, Any, str], None] = lambda name, obj, origin: None,
                 adopt: Callable[[Any], str | None] = lambda obj: None):
        self.kind, self.package, self.group = kind, package, group
        self.validate, self.adopt = validate, adopt
        self._items: dict[str, T] = {}
        self._origin: dict[str, str] = {}
        self.loaded = False
        self._loading = False
        REGISTRIES.append(self)

    def register(self, name: str, obj: T | None = None, *, origin: str | None = None):
        """Register ``obj`` under ``name``; usable as ``@REG.register("name")`` on a class or function.
        The object is checked by the registry's ``validate`` first, whichever way it is registered."""
        if obj is None:
            return lambda o: self.register(name, o, origin=origin)
        origin = origin or caller_origin()
        if not isinstance(name, str) or not name.isidentifier():
            raise RegistryError(f"{self.kind} name {name!r} is not allowed: use a Python identifier "
                                f"(letters, digits, underscore), e.g. 'my_method'")
        self.validate(name, obj, origin)
        if name in self._items:
            raise RegistryError(
                f"duplicate {self.kind} name {name!r}: already registered by {self._origin[name]}; "
                f"the second registration came from {origin}. Pick another name.")
        self._items[name] = obj
        self._origin[name] = origin
        return obj

    def unregister(self, name: str) -> None:
        self._items.pop(name, None)
        self._origin.pop(name, None)

    def get(self, name: str, *, source: str = "") -> T:
        """The object registered as ``name``; unknown names raise with the list and the closest match."""
        self.discover()
        if name not in self._items:
            where = f" (from {source})" if source else ""
            raise RegistryError(
                f"unknown {self.kind} {name!r}{where}{did_you_mean(name, self._items)}; "
                f"registered {self.kind}s: {', '.join(sorted(self._items)) or '(none)'}")
        return self._items[name]

    def names(self) -> list[str]:
        self.discover()
        return sorted(self._items)

    def origin(self, name: str) -> str:
        return self._origin[name]

    def __contains__(self, name: object) -> bool:
        self.discover()
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def discover(self) -> None:
        """Import the built-in plugin modules of ``package`` and the installed entry points of ``group`` (once)."""
        if self.loaded or self._loading:
            return
        self._loading = True
        try:
            if self.package:
                pkg = _import(self.package, f"built-in plugin package {self.package!r}")
                for info in sorted(pkgutil.iter_modules(pkg.__path__), key=lambda i: i.name):
                    if not info.name.startswith("_"):
                        _import(f"{self.package}.{info.name}", f"built-in plugin {pkg.__path__[0]}/{info.name}.py")
            for ep in metadata.entry_points(group=self.group) if self.group else ():
                self.load_entry_point(ep)
            self.loaded = True
        finally:
            self._loading = False

    def load_entry_point(self, ep) -> None:
        """Load one entry point: it names a plugin module, or an object ``adopt`` names (registered here if
        its module did not register it)."""
        what = f"plugin entry point {ep.name!r} = {ep.value!r} (group {self.group})"
        try:
            obj = ep.load()
        except RegistryError:
            raise
        except (Exception, SystemExit) as exc:
            raise RegistryError(f"{what} failed to load: {describe_exception(exc, skip=('importlib',))}") from exc
        name = self.adopt(obj)
        if name is not None:
            if self._items.get(name) is not obj:
                self.register(name, obj, origin=definition_site(obj))
        elif not isinstance(obj, type(sys)):
            raise RegistryError(f"{what} names {obj!r}; an entry point must name a plugin module, a Method "
                                f"subclass (group bnnbench.methods) or an ArchSpec (group bnnbench.architectures)")


def caller_origin() -> str:
    """``file:line`` of the code that called into this module (where a registration came from)."""
    for frame in reversed(traceback.extract_stack()[:-2]):
        if "registry.py" not in frame.filename:
            return f"{frame.filename}:{frame.lineno}"
    return "<unknown>"


def definition_site(obj) -> str:
    """``file:line`` where a class or function is defined (for messages that point at a plugin's code)."""
    target = getattr(obj, "build", obj) if not isinstance(obj, type) and not callable(obj) else obj
    try:
        return f"{inspect.getsourcefile(target)}:{inspect.getsourcelines(target)[1]}"
    except (OSError, TypeError):
        return getattr(target, "__module__", "<unknown>")


def _import(module: str, what: str):
    try:
        return importlib.import_module(module)
    except RegistryError:
        raise
    except (Exception, SystemExit) as exc:
        raise RegistryError(f"{what} failed to import: {describe_exception(exc, skip=('importlib',))}") from exc


_loaded_plugins: dict[str, str] = {}


def ensure_builtins() -> None:
    """Discover the built-in plugins and installed entry points of every registry (once each)."""
    for registry in REGISTRIES:
        registry.discover()


def load_plugins(specs: Iterable[str]) -> list[str]:
    """The built-ins, then each ``--plugin`` of ``specs`` (:func:`load_plugin`): the one loading loop of the
    command line, the Slurm jobs and the tools."""
    ensure_builtins()
    return [load_plugin(spec) for spec in specs]


def load_plugin(spec: str) -> str:
    """Load a third-party plugin from a ``.py`` file path or an importable module name.

    The plugin registers itself on import (``@register_method`` / ``@METHODS.register(...)``). Loading the
    same file twice is a no-op. Returns the module name it was imported as.
    """
    ensure_builtins()
    if spec.endswith(".py") or Path(spec).exists():
        return _load_file(spec, Path(spec).resolve())
    if spec not in _loaded_plugins:
        _import(spec, f"plugin module {spec!r} (from --plugin)")
        _loaded_plugins[spec] = spec
    return _loaded_plugins[spec]


def _load_file(spec: str, path: Path) -> str:
    """Import the plugin file ``path`` under a unique module name (once per process)."""
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
    except BaseException as exc:
        del sys.modules[mod_name]
        if isinstance(exc, RegistryError) or not isinstance(exc, (Exception, SystemExit)):
            raise
        if isinstance(exc, SyntaxError):
            raise RegistryError(f"plugin file {path} has a syntax error at line {exc.lineno}: {exc.msg}") from exc
        raise RegistryError(f"plugin file {path} failed to import: "
                            f"{describe_exception(exc, skip=('importlib',))}") from exc
    _loaded_plugins[key] = mod_name
    return mod_name


def provenance(obj: Any) -> dict[str, str] | None:
    """Where a third-party plugin's code came from and a sha256 of its source file; None for built-ins.

    Part of every run's identity, so editing a plugin makes new runs instead of reusing stale results.
    """
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
