"""The architecture plugin API and model construction.

An architecture is an :class:`ArchSpec` registered in :data:`ARCHITECTURES` (this module). Its
``build(method, num_classes, **options)`` returns an ``nn.Module`` whose binarised convolutions come from
``method.conv(...)`` and whose full-precision layers (stem, head, downsample where the reference keeps
them FP) are plain torch layers. ``scope`` states in words what is binary, so every result can say so.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from bnnbench.errors import ConfigError, RegistryError
from bnnbench.nn.layers import BinaryConv2d
from bnnbench.plugins.method import Method, check_hparams
from bnnbench.plugins.registry import Registry, definition_site


@dataclass(frozen=True)
class ArchSpec:
    name: str
    build: Callable[..., nn.Module]
    family: str                      # "cifar" (32x32 inputs) or "imagenet" (224x224)
    input_size: tuple[int, int, int]  # (C, H, W) the backbone is designed for
    description: str
    scope: str                       # which layers are binary and which stay full precision
    options: dict[str, Any] = field(default_factory=dict)  # build options with defaults
    test_input_size: tuple[int, int, int] | None = None    # smallest input that exercises every layer

    def describe(self) -> str:
        return f"{self.description} [{self.family}, {self.input_size[1]}x{self.input_size[2]}]"


def _validate(name: str, spec, origin: str) -> None:
    if not isinstance(spec, ArchSpec):
        raise RegistryError(f"architecture {name!r} ({origin}) must be an ArchSpec, got {spec!r}")
    if spec.name != name:
        raise RegistryError(f"ArchSpec {spec.name!r} ({origin}) is registered as {name!r}; use its own name")


#: the architecture registry: built-ins from ``architectures/``, entry points of group
#: ``bnnbench.architectures``, ``--plugin``
ARCHITECTURES: Registry[ArchSpec] = Registry(
    "architecture", package="bnnbench.architectures", group="bnnbench.architectures", validate=_validate,
    adopt=lambda obj: obj.name if isinstance(obj, ArchSpec) else None)


def register_arch(spec: ArchSpec) -> ArchSpec:
    """Register an architecture (its origin: where its ``build`` function is defined)."""
    return ARCHITECTURES.register(spec.name, spec, origin=definition_site(spec.build))


def build_model(method: Method, arch: str | ArchSpec, num_classes: int, in_channels: int = 3,
                options: dict[str, Any] | None = None, source: str = "recipe") -> nn.Module:
    """Build ``arch`` with ``method``'s binary convs, then let the method prepare its state."""
    spec = ARCHITECTURES.get(arch, source=source) if isinstance(arch, str) else arch
    if not isinstance(num_classes, int) or num_classes < 2:
        raise ConfigError(f"num_classes = {num_classes!r} (from {source}) must be an integer >= 2")
    opts = dict(spec.options)
    opts.update(check_hparams(options or {}, spec.options, owner=f"architecture {spec.name}", source=source))
    model = spec.build(method, num_classes=num_classes, in_channels=in_channels, **opts)
    model.arch_name = spec.name
    method.prepare(model)
    return model


def kaiming_binary_init(model: nn.Module) -> None:
    """kaiming_normal_ (fan_in, gain sqrt 2) on every binary conv weight: OvSW's builder and ReCU's init."""
    for m in model.modules():
        if isinstance(m, BinaryConv2d):
            nn.init.kaiming_normal_(m.weight)
