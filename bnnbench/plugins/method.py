"""The method plugin API.

A method is a subclass of :class:`Method` registered in :data:`METHODS` (this module)::

    from bnnbench.plugins import Method, register_method

    @register_method                     # or @METHODS.register("mymethod"): the same checks
    class MyMethod(Method):
        name = "mymethod"
        conv_class = MyConv2d            # a BinaryConv2d subclass
        hparams = {"beta": 0.5}          # its own hyperparameters with defaults

Everything that distinguishes a method lives in the plugin:

* ``conv_class``: how a binary conv binarises its weight and input (forward + surrogate) and its scale;
* ``hparams`` / ``presets``: hyperparameters with defaults, and per dataset-family values
  (``presets = {"cifar": {...}, "imagenet": {...}}``); recipes and the CLI override them;
* ``prepare(model)``: one-off set-up after the backbone is built and initialised;
* ``on_epoch_start(model, epoch, epochs)``: per-epoch schedules (ReCU's tau, IR-Net's EDE t/k);
* ``after_backward(model)``: gradient editing after backward, after AMP unscaling, before the optimizer
  step (OvSW's AGS + SAD); works with any optimizer because it only edits ``.grad``;
* ``optimizer(model, settings, steps_per_epoch)``: a ``torch.optim.Optimizer`` over parameters the method
  updates itself (Bop's binary weights), which leave the recipe's optimizer; None (default) for none. Its
  state is checkpointed with the recipe's; keep schedules in it (e.g. from its step count), not in Python;
* ``effective_sign`` (on the conv class): the sign the forward pass really uses, for flip tracking;
* ``epoch_stats(model)``: extra per-epoch numbers for the run's metrics;
* ``lr_scale(name, param)``: a factor on the learning rate for some parameters (RBONN's u at 0.1x);
* ``decays(name, param, policy)`` / ``no_decay``: which parameters get weight decay under the recipe's
  ``wd_policy`` (default: all; no_1d: not 1-D ones; ``no_decay`` names binary-conv parameters, such as
  learnable thresholds, that never get it; ``by_name`` is a method's own rule, e.g. ReCU's);
* ``activation(channels)``: the module architectures put between binary convs (default ``nn.Hardtanh``);
* ``loss(settings)``: the training loss (default cross-entropy with the recipe's label smoothing);
* ``penalty(model)``: a term added to the training loss that depends on the model's parameters (BiPer's
  sin^2 regulariser), or None (default);
* ``references()``: its published results, for the leaderboard's paper column.

The engine only ever talks to this interface; it never names a method.
"""
from __future__ import annotations

import copy
import inspect
import math
from typing import Any, ClassVar

from torch import nn

from bnnbench.errors import ConfigError, RegistryError, did_you_mean
from bnnbench.nn.layers import BinaryConv2d, binary_layers
from bnnbench.plugins.registry import Registry, definition_site
from bnnbench.references import load_references


def check_hparams(values: dict[str, Any], defaults: dict[str, Any], *, owner: str, source: str) -> dict:
    """Validate ``values`` against the keys and types of ``defaults``; return a converted copy."""
    out = {}
    for key, value in (values or {}).items():
        if key not in defaults:
            raise ConfigError(f"unknown hyperparameter {key!r} for {owner} (from {source})"
                              f"{did_you_mean(key, defaults)}; allowed: {', '.join(sorted(defaults)) or '(none)'}")
        out[key] = coerce(value, defaults[key], what=f"{owner}.{key}", source=source)
    return out


def coerce(value: Any, default: Any, *, what: str, source: str) -> Any:
    """Convert ``value`` to the type of ``default`` (int -> float allowed; bool is strict)."""
    def bad(kind: str):
        return ConfigError(f"{what} = {value!r} (from {source}) must be {kind}")
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise bad("true or false")
        return value
    if isinstance(default, int):
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad("an integer")
        return value
    if isinstance(default, float):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad("a number")
        if not math.isfinite(value):
            raise bad("a finite number")
        return float(value)
    if isinstance(default, str):
        if not isinstance(value, str):
            raise bad("a string")
        return value
    if isinstance(default, (list, tuple)):
        if not isinstance(value, (list, tuple)):
            raise bad("a list")
        return type(default)(value)
    return value


class Method:
    """Base class of every BNN training method (see the module docstring for the contract)."""

    #: registry name, set by the subclass
    name: ClassVar[str] = ""
    #: paper title, venue and year
    paper: ClassVar[str] = ""
    #: the BinaryConv2d subclass this method builds
    conv_class: ClassVar[type[BinaryConv2d]] = BinaryConv2d
    #: hyperparameters and their defaults
    hparams: ClassVar[dict[str, Any]] = {}
    #: per dataset family ("cifar", "imagenet") hyperparameter values that replace the defaults
    presets: ClassVar[dict[str, dict[str, Any]]] = {}
    #: allowed values per hyperparameter: {key: (rule in words, check)}, checked after every override
    hparam_ranges: ClassVar[dict[str, tuple[str, Any]]] = {}
    #: published results a third-party plugin ships itself (built-ins keep theirs in results/reference.yaml)
    published: ClassVar[list[dict[str, Any]]] = []

    #: names of this method's binary-conv parameters (e.g. "beta" for a learnable threshold) that never get
    #: weight decay, whatever the recipe's wd_policy
    no_decay: ClassVar[tuple[str, ...]] = ()

    def __init__(self, family: str | None = None, overrides: dict[str, Any] | None = None,
                 source: str = "method defaults"):
        hp = copy.deepcopy(dict(self.hparams))
        if family and family in self.presets:
            hp.update(check_hparams(self.presets[family], self.hparams, owner=self.name,
                                    source=f"{self.name} preset {family!r}"))
        hp.update(check_hparams(overrides or {}, self.hparams, owner=self.name, source=source))
        for key, (rule, ok) in self.hparam_ranges.items():
            if not ok(hp[key]):
                raise ConfigError(f"{self.name}.{key} = {hp[key]!r} (from {source}) is out of range; allowed: {rule}")
        self.hp = hp
        self.family = family

    # --- building ---------------------------------------------------------------------------------------
    def conv(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0, **kw) -> BinaryConv2d:
        """A binary conv of this method (architectures call this for every binarised conv)."""
        return self.conv_class(in_channels, out_channels, kernel_size, stride=stride, padding=padding,
                               hparams=self.hp, **kw)

    def prepare(self, model: nn.Module) -> None:
        """Called once after the backbone has been built and initialised."""

    # --- training hooks ----------------------------------------------------------------------------------
    def on_epoch_start(self, model: nn.Module, epoch: int, epochs: int) -> None:
        """Called before training epoch ``epoch`` (0-based) of ``epochs``."""

    def after_backward(self, model: nn.Module) -> None:
        """Edit ``.grad`` in place after backward and AMP unscaling, before the optimizer step."""

    def optimizer(self, model: nn.Module, settings, steps_per_epoch: int):
        """An optimizer over the parameters this method updates itself, or None (every parameter goes to the
        recipe's optimizer). The parameters it holds get no weight decay or momentum from the recipe; the
        learning-rate schedule sets ``lr`` on its groups too (ignore it if the rule has none)."""
        return None

    # --- seams with defaults -------------------------------------------------------------------------------
    def decays(self, name: str, param: nn.Parameter, policy: str) -> bool:
        """Whether parameter ``name`` gets weight decay under ``wd_policy = policy``."""
        if "." in name and name.rsplit(".", 1)[1] in self.no_decay:
            return False
        if policy == "all":
            return True
        if policy == "no_1d":
            return param.dim() > 1
        if policy == "by_name":
            return self.decays_by_name(name)
        raise ConfigError(f"wd_policy = {policy!r} is unknown; allowed: all, no_1d, by_name")

    def lr_scale(self, name: str, param: nn.Parameter) -> float:
        """Factor on the schedule's learning rate for parameter ``name`` (default 1; RBONN trains u at 0.1)."""
        return 1.0

    def decays_by_name(self, name: str) -> bool:
        """The method's by-name weight-decay rule (``wd_policy: by_name``); methods without one refuse it."""
        raise ConfigError(f"wd_policy = 'by_name' is a method's own rule and {self.name or 'this method'} "
                          f"defines none; use 'all' or 'no_1d'")

    def activation(self, channels: int) -> nn.Module:
        """The activation architectures place between binary convs (Bi-Real-style blocks: Hardtanh)."""
        return nn.Hardtanh(inplace=True)

    def loss(self, settings) -> nn.Module:
        """The training loss; ``settings`` is the run's TrainSettings."""
        return nn.CrossEntropyLoss(label_smoothing=settings.label_smoothing)

    def penalty(self, model: nn.Module):
        """A scalar tensor added to the training loss (inside autocast, before backward), or None: a
        regulariser over the model's parameters, e.g. BiPer's tau * sum_layers mean(sin^2(omega W))."""
        return None

    def set_binarize(self, model: nn.Module, mode: str) -> None:
        """Make the model's binary convs binarise ``mode``: "all" (1W1A), "activations" (binary activations,
        real weights: stage 1 of ReActNet-style two-stage training) or "none" (full precision, a teacher).
        Default: flags on every :class:`~bnnbench.nn.layers.BinaryConv2d`; a method whose stages differ overrides
        this."""
        for layer in self.layers(model):
            layer.binary_inputs = mode in ("all", "activations")
            layer.binary_weights = mode == "all"

    def epoch_stats(self, model: nn.Module) -> dict[str, float]:
        """Extra numbers logged once per epoch (e.g. OvSW's EMA silent fraction)."""
        return {}

    # --- metadata ----------------------------------------------------------------------------------------
    @classmethod
    def references(cls) -> list[dict[str, Any]]:
        """Published results: dicts with dataset, backbone, top1, top5, epochs, source."""
        return [r for r in load_references() if r["method"] == cls.name] + list(cls.published)

    @staticmethod
    def layers(model: nn.Module, kind: type[BinaryConv2d] = BinaryConv2d) -> list[BinaryConv2d]:
        return [m for _, m in binary_layers(model) if isinstance(m, kind)]

    def describe(self) -> str:
        return (self.__doc__ or self.name).strip().splitlines()[0]


#: the hooks a method may override, with the arguments the trainer passes (after ``self``)
HOOKS = {"prepare": ("model",), "on_epoch_start": ("model", "epoch", "epochs"), "after_backward": ("model",),
         "optimizer": ("model", "settings", "steps_per_epoch"), "lr_scale": ("name", "param"),
         "epoch_stats": ("model",), "decays": ("name", "param", "policy"), "decays_by_name": ("name",),
         "activation": ("channels",), "loss": ("settings",), "penalty": ("model",), "set_binarize": ("model", "mode")}


def check_method_class(cls) -> None:
    """Refuse a Method subclass the trainer could not use: no BinaryConv2d, or hooks with wrong arguments."""
    where = definition_site(cls)
    conv = cls.__dict__.get("conv_class") or next((c.__dict__["conv_class"] for c in cls.__mro__[1:-1]
                                                    if "conv_class" in c.__dict__ and c is not Method), None)
    if conv is None:
        raise RegistryError(f"method {cls.name!r} ({where}) sets no conv_class: give it a BinaryConv2d subclass "
                            f"(from bnnbench.nn.layers) that binarises weights and inputs")
    if not (isinstance(conv, type) and issubclass(conv, BinaryConv2d)) or conv is BinaryConv2d:
        raise RegistryError(f"method {cls.name!r} ({where}): conv_class = {conv!r} must be a subclass of "
                            f"bnnbench.nn.layers.BinaryConv2d (not BinaryConv2d itself, not nn.Conv2d)")
    for hook, params in HOOKS.items():
        fn = getattr(cls, hook)
        if fn is getattr(Method, hook):
            continue
        try:
            inspect.signature(fn).bind(None, *params)
        except TypeError:
            raise RegistryError(f"method {cls.name!r}: hook {hook}{inspect.signature(fn)} at {definition_site(fn)} "
                                f"must accept (self, {', '.join(params)})") from None


def _validate(name: str, cls, origin: str) -> None:
    """What every registration of a method runs: a Method subclass registered under its own ``name``, which
    the trainer can use (:func:`check_method_class`)."""
    if not (isinstance(cls, type) and issubclass(cls, Method)):
        raise RegistryError(f"method {name!r} ({origin}) must be a Method subclass, got {cls!r}")
    if cls.name != name:
        raise RegistryError(f"method class {cls.__name__} ({origin}) is registered as {name!r} but its name "
                            f"attribute is {cls.name!r}; set name = {name!r} in the class")
    check_method_class(cls)


def _adopt(obj) -> str | None:
    return obj.name if isinstance(obj, type) and issubclass(obj, Method) else None


#: the method registry: built-ins from ``methods/``, entry points of group ``bnnbench.methods``, ``--plugin``
METHODS: Registry[type[Method]] = Registry("method", package="bnnbench.methods", group="bnnbench.methods",
                                           validate=_validate, adopt=_adopt)


def register_method(cls: type[Method]) -> type[Method]:
    """Class decorator: register a :class:`Method` subclass under its ``name`` (checked first)."""
    if not (isinstance(cls, type) and issubclass(cls, Method)):
        raise RegistryError(f"register_method expects a Method subclass, got {cls!r}")
    return METHODS.register(cls.name, cls, origin=definition_site(cls))
