"""What a run is and what it produced: typed, frozen, shared by the CLI, trainer, store, reports and plots.

* :class:`TrainSettings` is generated from the recipe's field table (:data:`bnnbench.config.settings.TRAIN_FIELDS`),
  one attribute per training setting.
* :class:`RunSpec` is one run: recipe, track, dataset, backbone, method with its resolved
  hyperparameters, the settings, the seed, what differs from the recipe (``changes``) and, for third-party
  plugins, where their code came from and a hash of it.
* :class:`RunResult` is what ``result.json`` holds: the spec's part, a :class:`Summary` (what the run
  measured) and an :class:`Environment` (where it ran), assembled by :meth:`RunResult.assemble`.

Identity: :attr:`RunSpec.hash` covers exactly the fields in :meth:`RunSpec.identity` (everything that
changes the numbers; not the device, paths, download permission, data-loader workers or evaluation batch
size). :attr:`RunSpec.group` is the same hash without the seed: runs with one group are seeds of one
configuration, one leaderboard row.
"""
from __future__ import annotations

import copy
import dataclasses
import functools
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from bnnbench.config.settings import TRAIN_FIELDS, pretrained_teacher
from bnnbench.errors import RunError

SCHEMA = 2
#: training settings that do not change the numbers and stay out of the run's identity
UNHASHED_SETTINGS = frozenset({"eval_batch_size", "workers"})
#: settings added after schema 2 came out: in the identity only when they differ from this default, so a
#: run made before the setting existed keeps its hash (and is found, resumed and reused)
LATE_SETTINGS = {"deterministic": False, "binarize": "all", "distill_weight": 0.0, "distill_temperature": 1.0}

TrainSettings = dataclasses.make_dataclass(
    "TrainSettings",
    [(key, Any, field(default_factory=functools.partial(copy.deepcopy, default)))
     for key, (_, default, _, _) in TRAIN_FIELDS.items() if key != "method_hparams"],
    frozen=True,
    namespace={"__doc__": "The training settings of one run (one attribute per key of settings.TRAIN_FIELDS).",
               "as_dict": lambda self: dataclasses.asdict(self),
               "replace": lambda self, **kw: dataclasses.replace(self, **kw)},
)
TrainSettings.__module__ = __name__


def settings_from(values: Mapping[str, Any]) -> Any:
    """A :class:`TrainSettings` from a validated mapping (``method_hparams`` is not a setting)."""
    names = {f.name for f in dataclasses.fields(TrainSettings)}
    return TrainSettings(**{k: v for k, v in values.items() if k in names})


def variant_label(method: str, changes: Mapping[str, Any], shared: Mapping[str, Any] | None = None,
                  stage: str = "") -> str:
    """``method[key=value,...]`` for the changes from the recipe, leaving out ``epochs`` (named in a table's
    title) and the ``shared`` ones (named once for a whole table); a method's own keys lose their prefix."""
    diff = {k: v for k, v in changes.items() if k != "epochs" and k not in (shared or {})}
    at = f"@{stage}" if stage else ""
    if not diff:
        return method + at
    prefix = f"{method}."
    return method + at + "[" + ",".join(f"{k.removeprefix(prefix)}={diff[k]}" for k in sorted(diff)) + "]"


def _dependency(ref: Mapping[str, Any], with_seed: bool, prefix: str = "") -> str:
    """A run another run depends on, in the identity: its hash, or its group in the seed-free identity (where
    the reference records one; ``reference`` below)."""
    if with_seed or not ref.get("group"):
        return prefix + ref["run"]
    return f"group:{ref['group']}"


def _digest(obj: Any) -> str:
    return hashlib.sha1(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:8]


@dataclass(frozen=True)
class RunSpec:
    recipe: str
    track: str
    dataset: str
    backbone: str
    method: str
    method_hparams: Mapping[str, Any]
    settings: Any  # TrainSettings
    seed: int
    backbone_options: Mapping[str, Any] = field(default_factory=dict)
    #: what differs from the recipe: {"lr": 0.05, "ovsw.ags": False, "epochs": 8, ...} (--set, --hp, --epochs)
    changes: Mapping[str, Any] = field(default_factory=dict)
    recipe_epochs: int | None = None
    track_note: str = ""
    #: third-party plugin code: {registry name: {"origin": file or package==version, "sha256": ...}}
    plugins: Mapping[str, Any] = field(default_factory=dict)
    #: --init-from: {"path", "sha256", "run" (spec hash of the run that wrote it, or None)}; the sha256 is
    #: part of the identity (only when set, so runs made before the field existed keep their hash)
    init_from: Mapping[str, Any] = field(default_factory=dict)
    #: two-stage track (bnnbench/runner/stages.py): the recipe stage this run is ("" for a single-stage run,
    #: "teacher"), and the teacher it distils from ({"run", "name", "group"}, {"torchvision": model} or
    #: {"timm": model}); both in the identity only when set. A stage's init_from is {"run": hash, "name": dir name,
    #: "group"} of the stage before it.
    stage: str = ""
    teacher: Mapping[str, Any] = field(default_factory=dict)
    download: bool = True  # not part of the identity
    #: the recipe's evaluation extras (``eval:``, bnnbench/config/evaluation.py); not part of the identity
    evaluation: Mapping[str, Any] = field(default_factory=dict)

    def identity(self, with_seed: bool = True) -> dict:
        settings = {k: v for k, v in self.settings.as_dict().items()
                    if k not in UNHASHED_SETTINGS and not (k in LATE_SETTINGS and v == LATE_SETTINGS[k])}
        ident = {"recipe": self.recipe, "track": self.track, "dataset": self.dataset, "backbone": self.backbone,
                 "backbone_options": dict(self.backbone_options), "method": self.method,
                 "method_hparams": dict(self.method_hparams), "settings": settings, "plugins": dict(self.plugins)}
        if self.init_from:
            ident["init_from"] = self.init_from.get("sha256") or _dependency(self.init_from, with_seed, "run:")
        if self.stage:
            ident["stage"] = self.stage
        if self.teacher:
            ident["teacher"] = (_dependency(self.teacher, with_seed) if self.teacher.get("run")
                                else ":".join(pretrained_teacher(self.teacher)))
        if with_seed:
            ident["seed"] = self.seed
        return ident

    @property
    def hash(self) -> str:
        return _digest(self.identity())

    @property
    def group(self) -> str:
        """The identity without the seed: the leaderboard row key."""
        return _digest(self.identity(with_seed=False))

    @property
    def name(self) -> str:
        return f"{self.recipe}__{self.track}__{self.backbone}__{self.method}__s{self.seed}__{self.hash}"

    @property
    def label(self) -> str:
        """Method name plus how the run differs from the recipe (``--epochs`` is in the table title), and
        ``@stage`` for a stage of a two-stage recipe."""
        return variant_label(self.method, self.changes, stage=self.stage)

    @property
    def epochs_overridden(self) -> bool:
        return "epochs" in self.changes

    @property
    def full_data(self) -> bool:
        return self.settings.train_subset is None and self.settings.test_subset is None

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["settings"] = self.settings.as_dict()
        return {"schema": SCHEMA, **d, "hash": self.hash, "group": self.group}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], where: str = "config.yaml") -> RunSpec:
        """Read a ``config.yaml`` document (this schema, or the first one, converted)."""
        if not isinstance(d, Mapping):
            raise RunError(f"{where}: not a run configuration (a mapping was expected)")
        if d.get("schema") is None and "train" in d:
            d = _from_schema1(d)
        if d.get("schema") != SCHEMA:
            raise RunError(f"{where}: run configuration schema {d.get('schema')!r} is not supported (this "
                           f"bnnbench reads schema {SCHEMA}); rerun the command that made it with --force")
        names = {f.name for f in dataclasses.fields(cls)}
        try:
            kw = {k: v for k, v in d.items() if k in names}
            kw["settings"] = settings_from(d["settings"])
            return cls(**kw)
        except (KeyError, TypeError) as exc:
            raise RunError(f"{where}: incomplete run configuration ({type(exc).__name__}: {exc}); "
                           f"rerun the command that made it with --force") from None


def _from_schema1(d: Mapping[str, Any]) -> dict:
    """The first config.yaml layout (``train`` dict, ``hp_cli``, ``epochs_overridden``) as schema 2."""
    train = dict(d["train"])
    changes = {f"{d['method']}.{k}": v for k, v in (d.get("hp_cli") or {}).items()}
    if d.get("epochs_overridden"):
        changes["epochs"] = train["epochs"]
    for key in ("train_subset", "test_subset"):
        if train.get(key) is not None:
            changes[key] = train[key]
    return {"schema": SCHEMA, "recipe": d["recipe"], "track": d["track"], "dataset": d["dataset"],
            "backbone": d["backbone"], "method": d["method"], "method_hparams": d["method_hparams"],
            "settings": train, "seed": d["seed"], "backbone_options": d.get("backbone_options") or {},
            "changes": changes, "recipe_epochs": d.get("recipe_epochs"), "track_note": d.get("track_note", ""),
            "download": d.get("download", True)}


@dataclass(frozen=True)
class Summary:
    """What a run measured: the result's own numbers (final and best epoch, flips, time, memory, ops)."""

    epochs_run: int = 0
    final_top1: float | None = None
    final_top5: float | None = None
    final_test_loss: float | None = None
    best_top1: float | None = None
    best_top5_at_best: float | None = None
    best_epoch: int | None = None
    silent: float | None = None
    flip_any: float | None = None
    flip_net: float | None = None
    net_change: float | None = None
    wall_time_s: float = 0.0
    train_time_s: float = 0.0
    images_per_s: float | None = None
    peak_memory_bytes: int = 0
    peak_memory_scope: str = ""      # "run" (reset when the run started) or "process" (lifetime maximum)
    ops: Mapping[str, Any] = field(default_factory=dict)
    metrics_sha256: str | None = None  # of metrics.jsonl as the run left it (plots read that file)


@dataclass(frozen=True)
class Environment:
    """Where and with what a run executed (not part of its identity)."""

    numerics: Mapping[str, Any] = field(default_factory=dict)  # bnnbench/engine/numerics.py: TF32, cuDNN, AMP, ...
    device: str = ""
    torch: str = ""
    bnnbench: str = ""
    git_commit: str | None = None
    processes: int = 1
    keep_freed_memory: bool = False
    command: str = ""  # the command line of the process that finished the run


_TYPES = {"float": (int, float), "int": (int,), "str": (str,), "bool": (bool,), "None": (type(None),)}


def check_types(cls, values: Mapping[str, Any], where: str) -> None:
    """Every value of ``values`` of the type its dataclass field of ``cls`` declares (ints count as floats;
    a bool is no number; ``Mapping[...]`` means a dict); RunError naming ``where``, the field and the value."""
    for f in dataclasses.fields(cls):
        if f.name not in values:
            continue
        value, allowed = values[f.name], str(f.type)
        kinds = tuple(t for part in allowed.split("|") for t in
                      ((dict,) if part.strip().startswith("Mapping") else _TYPES.get(part.strip(), (object,))))
        if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
            raise RunError(f"{where}: {f.name} = {str(value)[:80]!r} has the wrong type; expected {allowed}")


def spec_fields(spec: RunSpec) -> dict[str, Any]:
    """The part of a result that comes from its spec (what the run was)."""
    return dict(spec_hash=spec.hash, group=spec.group, label=spec.label, recipe=spec.recipe, track=spec.track,
                dataset=spec.dataset, backbone=spec.backbone, method=spec.method,
                method_hparams=dict(spec.method_hparams), changes=dict(spec.changes), seed=spec.seed,
                epochs=spec.settings.epochs, epochs_overridden=spec.epochs_overridden, full_data=spec.full_data,
                plugins=dict(spec.plugins), stage=spec.stage)


@dataclass(frozen=True, kw_only=True)
class RunResult(Summary, Environment):
    """The outcome of one run, as written to ``result.json`` (plus ``checksum``): what the run was (the spec's
    part, below), what it measured (:class:`Summary`) and where it ran (:class:`Environment`), kept flat in
    the file."""

    status: str                      # "done" or "failed"
    reason: str | None
    spec_hash: str
    group: str
    label: str
    recipe: str
    track: str
    dataset: str
    backbone: str
    method: str
    method_hparams: Mapping[str, Any]
    changes: Mapping[str, Any]
    seed: int
    epochs: int
    epochs_run: int                  # required here (a result names how many epochs it ran)
    epochs_overridden: bool
    full_data: bool
    plugins: Mapping[str, Any] = field(default_factory=dict)
    stage: str = ""    # the two-stage recipe's stage ("teacher", "stage1", ...), "" for a single-stage run

    def to_dict(self) -> dict:
        return {"schema": SCHEMA, **dataclasses.asdict(self)}

    @classmethod
    def assemble(cls, spec: RunSpec, status: str, reason: str | None, summary: Summary | None = None,
                 environment: Environment | None = None) -> RunResult:
        """The result of ``spec``: what it was (its spec), what it measured, where it ran. ``result.json``
        keeps these parts flat (its layout is unchanged)."""
        return cls(status=status, reason=reason, **spec_fields(spec),
                   **dataclasses.asdict(summary or Summary()), **dataclasses.asdict(environment or Environment()))

    @classmethod
    def failed(cls, spec: RunSpec, reason: str, summary: Summary | None = None,
               environment: Environment | None = None) -> RunResult:
        """The result of a run that raised before it could produce one of its own."""
        return cls.assemble(spec, "failed", reason, summary, environment)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], spec: RunSpec, where: str = "result.json") -> RunResult:
        """A result.json document; fields the first schema lacked are taken from the run's spec. A field of the
        wrong type (a string where a number belongs, a null wall time) is a RunError naming ``where``."""
        names = {f.name for f in dataclasses.fields(cls)}
        kw = {k: v for k, v in d.items() if k in names}
        check_types(cls, kw, where)
        kw.setdefault("spec_hash", spec.hash)
        kw["group"], kw["label"], kw["changes"] = spec.group, spec.label, dict(spec.changes)
        kw["stage"] = spec.stage
        if spec.settings.binarize != "all":  # real-valued weights: no silent/flip figures (bnnbench/engine/flips.py;
            kw.update(silent=None, flip_any=None, flip_net=None, net_change=None)  # results before it had them)
        kw.setdefault("full_data", spec.full_data)
        kw.setdefault("epochs_overridden", spec.epochs_overridden)
        return cls(**kw)


def reference(spec) -> dict:
    """How a dependent run names ``spec``: its hash (identity), directory and group. The group stands for the
    dependency in the dependent run's own group, so a stage's seeds form one leaderboard row."""
    return {"run": spec.hash, "name": spec.name, "group": spec.group}


def dependencies(spec) -> list[dict]:
    """The runs ``spec`` needs finished first: [{"run": hash, "name": dir name}, ...]."""
    return [d for d in (dict(spec.init_from), dict(spec.teacher)) if d.get("run") and d.get("name")]
