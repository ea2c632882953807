"""A trained run at its real 1-bit size: ``run_bench.py export RUN_DIR --out FILE`` and :func:`load_exported`.

The file is a plain torch file (``torch.load(path, weights_only=True)`` reads it) holding:

* ``spec``: the run's :class:`~bnnbench.config.spec.RunSpec` (``config.yaml``), so the topology can be rebuilt;
* ``binary``: for every binary conv, its weight signs packed 8 to a byte (``numpy.packbits`` of
  sign > 0 over the flattened (C_out, C_in, kh, kw) tensor: 1 bit per binary weight), its shape, its
  per-output-channel float32 scale and the optional terms of its form (``threshold``, ``act_sum``,
  ``weight_sum``, ``count``; None when absent), from the layer's
  :meth:`~bnnbench.nn.layers.BinaryConv2d.inference_form` (the plugin API: no method is named here);
* ``state``: every other parameter and buffer of the model in float32 (stem, BatchNorm, shortcuts, head);
* ``recorded``: the run's final-epoch test figures, which ``run_bench.py evaluate FILE`` compares with.

On disk the tensors sit in one flat tensor per dtype (``store``), so the file is close to the packed size.

:func:`load_exported` rebuilds the backbone from the spec and puts a :class:`SignConv2d` in place of each
binary conv. That layer computes :meth:`~bnnbench.nn.layers.InferenceForm.apply` (``scale[o] *
conv(sign(x), signs)`` plus any offset terms), which is the trained model's own evaluation forward
(``BinaryConv2d.forward`` in eval mode) op for op, so the rebuilt model's outputs equal
the trained model's bit for bit; ``tests/test_export.py`` checks every test prediction.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from bnnbench.config.spec import RunSpec
from bnnbench.deploy.packed import replace_layers
from bnnbench.engine import run_model
from bnnbench.errors import BnnBenchError, ConfigError, RunError, describe_exception
from bnnbench.nn.layers import OPTIONAL_TERMS, BinaryConv2d, InferenceForm, binary_layers
from bnnbench.plugins import definition_site
from bnnbench.store import atomic_torch_save, load_torch

FORMAT = "bnnbench-1bit"
VERSION = 2           # 2: the optional form terms (threshold, act_sum, weight_sum, count)
READS = (1, 2)        # a version-1 file has the plain form only


class SignConv2d(nn.Module):
    """A binary conv rebuilt from its exported form: ``form.apply(form.input_signs(x)) (+ bias)``."""

    def __init__(self, like: BinaryConv2d, form: InferenceForm, bias: Tensor | None):
        super().__init__()
        self.stride, self.padding, self.dilation, self.groups = like.stride, like.padding, like.dilation, like.groups
        self.form = form
        self.register_buffer("bias", None if bias is None else bias.float())

    def _conv(self, x: Tensor, w: Tensor) -> Tensor:
        return nn.functional.conv2d(x, w, None, self.stride, self.padding, self.dilation, self.groups)

    def forward(self, x: Tensor) -> Tensor:
        out = self.form.apply(self.form.input_signs(x), self._conv)
        return out if self.bias is None else out + self.bias.view(1, -1, 1, 1)


def pack_bits(signs: Tensor) -> Tensor:
    """int8 +-1 signs -> uint8 bytes, 8 signs each (bit 1 = +1), over the flattened tensor."""
    return torch.from_numpy(np.packbits((signs.flatten() > 0).numpy()))


def unpack_bits(bits: Tensor, shape: list[int]) -> Tensor:
    n = int(np.prod(shape))
    flat = np.unpackbits(bits.numpy())[:n].astype(np.int8) * 2 - 1
    return torch.from_numpy(flat).view(shape)


def export_model(model: nn.Module, spec_doc: dict, num_classes: int) -> dict:
    """The export document of a trained ``model`` (see the module docstring)."""
    binary, skip = {}, set()
    for name, layer in binary_layers(model):
        try:
            form = layer.inference_form()
        except Exception as exc:  # noqa: BLE001 - a plugin's hook: named with its file and line
            site = f"{type(layer).__name__}.inference_form at {definition_site(type(layer).inference_form)}"
            why = str(exc) if isinstance(exc, ValueError) else describe_exception(exc, skip=("/torch/",))
            raise ConfigError(f"cannot export binary conv {name!r} ({site}): {why}") from None
        bias = None if layer.bias is None else layer.bias.detach().float().cpu()
        binary[name] = {**form_entry(form), "bias": bias}
        skip.add(name)
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()
             if not any(k.startswith(f"{b}.") for b in skip)}
    return {"format": FORMAT, "version": VERSION, "spec": spec_doc, "num_classes": num_classes, "binary": binary,
            "state": state}


def form_entry(form: InferenceForm) -> dict:
    """An inference form as the export stores it: packed signs, shape, scale and the optional terms."""
    return {"bits": pack_bits(form.signs), "shape": list(form.signs.shape), "scale": form.scale, **form.tensors()}


def form_from_entry(e: dict, shape: list[int], path, name: str) -> InferenceForm:
    """The inference form of binary conv ``name`` from its export entry, checked against the backbone's
    weight ``shape``; a RunError naming ``path`` and the layer when it does not fit."""
    if list(e["shape"]) != shape or not isinstance(e["bits"], Tensor) or e["bits"].dtype != torch.uint8 \
            or e["bits"].numel() != -(-int(np.prod(shape)) // 8):
        raise RunError(f"{path}: binary conv {name!r}: its packed signs do not fit the backbone's weight {shape}")
    if not isinstance(e["scale"], Tensor) or e["scale"].numel() != shape[0]:
        raise RunError(f"{path}: binary conv {name!r}: its scale is not one value per output channel")
    extra = {k: e.get(k) for k in OPTIONAL_TERMS}
    for k, v in extra.items():
        if v is not None and not (isinstance(v, Tensor) and v.numel() == (1 if k == "threshold" else shape[0])):
            raise RunError(f"{path}: binary conv {name!r}: its {k} is not "
                           f"{'one value' if k == 'threshold' else 'one value per output channel'}")
    return InferenceForm(unpack_bits(e["bits"], shape).float(), e["scale"].reshape(-1).float(),
                         **{k: None if v is None else v.float().reshape(() if k == "threshold" else -1)
                            for k, v in extra.items()})


def _pack_store(doc: dict) -> dict:
    """The document with its tensors moved into one flat tensor per dtype (``store``), each replaced by
    ``{"@": [dtype, offset, shape]}``: a torch file holds every tensor as its own archive entry, and for a
    small network those entries' overhead would outweigh the 1-bit weights."""
    store: dict[str, list[Tensor]] = {}
    sizes: dict[str, int] = {}

    def walk(o):
        if isinstance(o, Tensor):
            key = str(o.dtype).removeprefix("torch.")
            store.setdefault(key, []).append(o.detach().cpu().reshape(-1))
            ref = {"@": [key, sizes.get(key, 0), list(o.shape)]}
            sizes[key] = sizes.get(key, 0) + o.numel()
            return ref
        if isinstance(o, dict):
            return {k: walk(v) for k, v in o.items()}
        return o
    body = {k: walk(v) for k, v in doc.items() if k in ("binary", "state")}
    return {**{k: v for k, v in doc.items() if k not in body}, **body,
            "store": {k: torch.cat(v) for k, v in store.items()}}


def _unpack_store(doc: dict) -> dict:
    store = doc.pop("store", None)
    if store is None:
        return doc

    def walk(o):
        if isinstance(o, dict) and set(o) == {"@"}:
            key, offset, shape = o["@"]
            n = int(np.prod(shape)) if shape else 1
            return store[key][offset:offset + n].reshape(shape).clone()
        if isinstance(o, dict):
            return {k: walk(v) for k, v in o.items()}
        return o
    return {k: walk(v) for k, v in doc.items()}


def save(doc: dict, path: Path) -> int:
    """Write the export atomically; returns its size in bytes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_torch_save(_pack_store(doc), path)
    return path.stat().st_size


def read(path: Path) -> dict:
    """The export document of ``path`` (tensors restored from the flat store)."""
    hint = "make one with run_bench.py export RUN_DIR --out FILE"
    try:
        doc = load_torch(Path(path))
    except Exception as exc:  # noqa: BLE001 - torch raises many types for a file that is not its own
        raise RunError(f"{path} is not a bnnbench 1-bit export ({type(exc).__name__}: "
                       f"{str(exc).splitlines()[0][:200] if str(exc) else 'unreadable'}); {hint}") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise RunError(f"{path} is not a bnnbench 1-bit export (format {FORMAT!r}); {hint}")
    try:
        return _unpack_store(doc)
    except (KeyError, TypeError, ValueError, RuntimeError, AttributeError, IndexError, OverflowError) as exc:
        raise RunError(f"{path} is a damaged bnnbench 1-bit export ({type(exc).__name__}: {exc}); {hint}") from None


def recorded(path: Path) -> dict:
    """What the run recorded for its final epoch (epoch, test loss, top-1, top-5), kept in the export."""
    return dict(read(path).get("recorded") or {})


def _check_classes(doc: dict, path: Path) -> None:
    """``num_classes`` before anything is allocated: an integer >= 2 and no larger than the values the file
    holds (a model's head stores at least one value per class), so a crafted file cannot ask for gigabytes."""
    n = doc.get("num_classes")
    held = sum(v.numel() for v in _tensors(doc))
    if not isinstance(n, int) or isinstance(n, bool) or not 2 <= n <= held:
        raise RunError(f"{path}: num_classes = {str(n)[:40]} is not an integer between 2 and the {held} values "
                       f"the file holds; a damaged or crafted export")


def _tensors(o):
    if isinstance(o, torch.Tensor):
        yield o
    elif isinstance(o, dict):
        for v in o.values():
            yield from _tensors(v)
    elif isinstance(o, (list, tuple)):
        for v in o:
            yield from _tensors(v)


def load_exported(path: Path) -> tuple[object, nn.Module]:
    """(RunSpec, the rebuilt model in eval mode) from an export file. Every part is checked against the
    backbone its spec names before it is used; a damaged or crafted file is one RunError naming it."""
    doc = read(path)
    if doc.get("version") not in READS:
        raise RunError(f"{path}: export version {str(doc.get('version'))[:40]!r} is not supported (this bnnbench "
                       f"reads versions {', '.join(map(str, READS))})")
    try:
        return _rebuild(doc, path)
    except BnnBenchError:
        raise
    except (KeyError, TypeError, ValueError, RuntimeError, AttributeError, IndexError, OverflowError) as exc:
        raise RunError(f"{path}: a damaged bnnbench 1-bit export ({type(exc).__name__}: {str(exc)[:200]})") from None


def _rebuild(doc: dict, path: Path) -> tuple[object, nn.Module]:
    spec = RunSpec.from_dict(doc["spec"], where=str(path))
    _check_classes(doc, path)
    _, model = run_model(spec, doc["num_classes"], Path(path).name)
    names = {n for n, _ in binary_layers(model)}
    if not isinstance(doc["binary"], dict) or names != set(doc["binary"]):
        raise RunError(f"{path}: its binary layers do not match the backbone {spec.backbone!r} this bnnbench builds")

    def rebuild(layer: BinaryConv2d, name: str) -> SignConv2d:
        e = doc["binary"][name]
        if not (e["bias"] is None or isinstance(e["bias"], Tensor) and e["bias"].numel() == layer.out_channels):
            raise RunError(f"{path}: binary conv {name!r}: its bias is not one value per output channel")
        return SignConv2d(layer, form_from_entry(e, list(layer.weight.shape), path, name), e["bias"])
    model = replace_layers(model, rebuild)
    missing, unexpected = model.load_state_dict(doc["state"], strict=False)
    missing = [k for k in missing if not any(k.startswith(f"{n}.") for n in names)]
    if missing or unexpected:
        raise RunError(f"{path}: the state does not fit the rebuilt {spec.backbone!r}: missing {missing[:5]}, "
                       f"unexpected {unexpected[:5]}")
    return spec, model.eval()
