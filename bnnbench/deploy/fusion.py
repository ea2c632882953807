"""Fused binary blocks: the torch ops around each binary conv of a packed model folded into the kernel.

In a packed model (:func:`bnnbench.deploy.packed.packed_model`) every binary conv is followed by torch ops
that cost more than the XNOR-popcount conv itself at batch 1 (eval BatchNorm, the residual add, the block's
activation, then packing the next conv's input again). :func:`fuse` finds, from the model's own graph
(``torch.fx``; no backbone or method is named), chains of the form::

    PackedBinaryConv2d (plain form) -> [BatchNorm2d] -> [+ residual] -> [Shift...] -> [Hardtanh | PReLU]
                                   -> [Shift...]

each intermediate output used only by the next op, and replaces each by one :class:`FusedBinaryConv2d`::

    y[o] = act(a[o] * dot[o] + b[o] + residual[o]) + post[o]
    a = scale * gamma / sqrt(var + eps),   b = beta - mean * gamma / sqrt(var + eps) + (Shifts before act)

computed in the kernel's epilogue (``bnnbench/deploy/csrc/binconv.cpp``, ``Epilogue``). When the next op
that reads ``y`` is itself a fused binary conv, the kernel also writes the packed signs of ``y`` and that
conv reads them instead of packing ``y`` again. What does not match (a form with offsets, a pool between
conv and BatchNorm, an op the graph cannot trace) stays the packed model's layer-by-layer path;
:class:`FusionRecord` lists per binary conv what was fused and, if nothing, why.

Rounding: the folded BatchNorm rounds differently from the trained model's ``bn(scale * dot)``, so the
float outputs and logits agree within float tolerance, not bit for bit; the integer dot products are
untouched (:meth:`FusedBinaryConv2d.dot`, what :func:`bnnbench.deploy.packed.check_exact` compares), and
``check_exact`` compares top-1 predictions one for one.
"""
from __future__ import annotations

import operator
import warnings
from dataclasses import asdict, dataclass, field

import torch
from torch import Tensor, fx, nn

from bnnbench.deploy import kernels
from bnnbench.deploy.packed import PackedBinaryConv2d
from bnnbench.nn.layers import Shift

ACTS = {"none": 0, "clamp": 1, "prelu": 2}  # csrc/binconv.cpp Epilogue::act


@dataclass
class FusionRecord:
    """One binary conv of the model: the ops folded into its kernel call (module names), whether it adds a
    residual, whether it writes the packed signs its reader takes, and why nothing was fused (else None)."""
    layer: str
    absorbed: list[str] = field(default_factory=list)
    residual: bool = False
    emits_packed: bool = False
    reads_packed: bool = False
    unfused: str | None = None


@dataclass
class Chain:
    """A matched chain of graph nodes after a binary conv and what its epilogue does."""
    nodes: list[fx.Node]
    bn: nn.BatchNorm2d | None = None
    residual: fx.Node | None = None
    shifts_before: list[Tensor] = field(default_factory=list)
    act: str = "none"
    clamp: tuple[float, float] = (-1.0, 1.0)
    slope: Tensor | None = None
    shifts_after: list[Tensor] = field(default_factory=list)
    names: list[str] = field(default_factory=list)


class FusedBinaryConv2d(nn.Module):
    """A :class:`~bnnbench.deploy.packed.PackedBinaryConv2d` with its chain's epilogue (see the module doc).
    ``forward(x, residual=None)``: ``x`` float NCHW, or the packed signs a fused reader was handed; returns
    ``y``, or ``(y, packed signs of y)`` when :attr:`emit` is set."""

    def __init__(self, conv: PackedBinaryConv2d, chain: Chain):
        super().__init__()
        self.conv, self.emit = conv, False
        c = conv.out_channels
        a, b = conv.scale.clone(), torch.zeros(c)
        if chain.bn is not None:
            bn = chain.bn
            inv = (bn.running_var + bn.eps).rsqrt() * (bn.weight if bn.affine else 1.0)
            a = a * inv
            b = (bn.bias if bn.affine else 0.0) - bn.running_mean * inv
        for s in chain.shifts_before:
            b = b + s
        post = sum(chain.shifts_after) if chain.shifts_after else None
        slope = None if chain.slope is None else chain.slope.expand(c)
        for name, t in (("a", a), ("b", b), ("slope", slope), ("post", post)):   # absent: an empty tensor each
            self.register_buffer(name, torch.empty(0) if t is None else t.detach().float().reshape(c).contiguous())
        self.act, self.lo, self.hi = ACTS[chain.act], float(chain.clamp[0]), float(chain.clamp[1])

    def epilogue(self) -> dict:
        """The epilogue's operands as :func:`bnnbench.deploy.kernels.binconv2d_fused` takes them."""
        return {"scale": self.a, "bias": self.b, "act": self.act, "lo": self.lo, "hi": self.hi,
                "slope": self.slope, "post": self.post}

    def dot(self, x: Tensor) -> Tensor:
        """The integer conv outputs (int32) of the input's signs: the exactness check's operand."""
        return self.conv.dot(x)

    def _out_shape(self, packed_shape: torch.Size) -> tuple[int, int, int, int]:
        c = self.conv
        n, h, w, _ = packed_shape
        (kh, kw), s, p = c.kernel_size, c.stride, c.padding
        return n, c.out_channels, (h + 2 * p - kh) // s + 1, (w + 2 * p - kw) // s + 1

    def _residual(self, residual: Tensor, packed_shape: torch.Size) -> Tensor:
        """The residual as the kernel takes it (float32, channels_last), broadcast to the output's shape as the
        torch add did (a residual that would widen the output is refused by name)."""
        out = self._out_shape(packed_shape)
        if tuple(residual.shape) != out:
            if torch.broadcast_shapes(out, residual.shape) != torch.Size(out):
                raise ValueError(f"fused binary conv: a residual of shape {tuple(residual.shape)} does not "
                                 f"broadcast to the conv's output {out}")
            residual = residual.expand(out)
        return residual.float().contiguous(memory_format=torch.channels_last)

    def forward(self, x: Tensor, residual: Tensor | None = None):
        c = self.conv
        bits = x if x.dtype == torch.uint64 else \
            kernels.ops().pack_activations(x.float().contiguous(memory_format=torch.channels_last), c._isa)
        res = None if residual is None else self._residual(residual, bits.shape)
        y, packed = kernels.binconv2d_fused(bits, c.packed_weight.view(c.packed_shape), c.in_channels,
                                            c.out_channels, c.kernel_size, c.stride, c.padding, self.epilogue(),
                                            res, self.emit, c._isa)
        return (y, packed) if self.emit else y


def _module(gm: fx.GraphModule, node: fx.Node) -> nn.Module | None:
    return gm.get_submodule(node.target) if node.op == "call_module" else None


def _only_user(node: fx.Node) -> fx.Node | None:
    users = list(node.users)
    return users[0] if len(users) == 1 else None


def _is_add(node: fx.Node | None, operand: fx.Node) -> fx.Node | None:
    """The other operand when ``node`` is ``operand + other`` (two tensors), else None."""
    if node is None or not ((node.op == "call_function" and node.target in (operator.add, torch.add)) or
                            (node.op == "call_method" and node.target == "add")) or node.kwargs or len(node.args) != 2:
        return None
    a, b = node.args
    other = b if a is operand else a if b is operand else None
    return other if isinstance(other, fx.Node) and other is not operand else None


def _match(gm: fx.GraphModule, conv: fx.Node) -> Chain | str:
    """The chain after ``conv`` (a plain packed conv), or why there is none."""
    chain, cur = Chain([conv]), conv
    nxt = _only_user(cur)

    def take(node):
        nonlocal cur, nxt
        chain.nodes.append(node)
        if node.op == "call_module":
            chain.names.append(str(node.target))
        cur, nxt = node, _only_user(node)

    bn = _module(gm, nxt) if nxt is not None else None
    if isinstance(bn, nn.BatchNorm2d) and not bn.training and bn.running_mean is not None:
        chain.bn = bn
        take(nxt)
    residual = _is_add(nxt, cur)
    if residual is not None:
        chain.residual = residual
        take(nxt)
    while isinstance(_module(gm, nxt) if nxt is not None else None, Shift):
        chain.shifts_before.append(_module(gm, nxt).bias.detach().reshape(-1))
        take(nxt)
    act = _module(gm, nxt) if nxt is not None else None
    if isinstance(act, nn.Hardtanh):
        chain.act, chain.clamp = "clamp", (act.min_val, act.max_val)
        take(nxt)
    elif isinstance(act, nn.PReLU):
        chain.act, chain.slope = "prelu", act.weight.detach().reshape(-1)
        take(nxt)
    if chain.act != "none":
        while isinstance(_module(gm, nxt) if nxt is not None else None, Shift):
            chain.shifts_after.append(_module(gm, nxt).bias.detach().reshape(-1))
            take(nxt)
    if len(chain.nodes) == 1:
        user = "several ops" if len(conv.users) > 1 else "nothing" if nxt is None else _describe(gm, nxt)
        return f"its output goes to {user}, not to BatchNorm2d/add/Hardtanh/PReLU"
    return chain


def _describe(gm: fx.GraphModule, node: fx.Node) -> str:
    m = _module(gm, node)
    if m is not None:
        return f"{node.target} ({type(m).__name__})"
    return str(getattr(node.target, "__name__", node.target))


class _Tracer(fx.Tracer):
    """Packed convs and every module without children are leaves (what the fusion matches on)."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, PackedBinaryConv2d) or not any(True for _ in m.children()) or \
            super().is_leaf_module(m, qualname)


def _replace(gm: fx.GraphModule, chain: Chain, fused_name: str) -> fx.Node:
    last, x = chain.nodes[-1], chain.nodes[0].args[0]
    with gm.graph.inserting_after(last):
        args = (x, chain.residual) if chain.residual is not None else (x,)
        node = gm.graph.call_module(fused_name, args)
    last.replace_all_uses_with(node)
    for n in reversed(chain.nodes):
        gm.graph.erase_node(n)
    return node


def _link_packed(gm: fx.GraphModule, fused: dict[fx.Node, FusionRecord]) -> None:
    """A fused conv whose output a fused conv reads as its input emits the packed signs for it."""
    for node, rec in fused.items():
        readers = [u for u in node.users if u in fused and u.args[0] is node]
        if not readers:
            continue
        gm.get_submodule(node.target).emit = True
        rec.emits_packed = True
        with gm.graph.inserting_after(node):
            y = gm.graph.call_function(operator.getitem, (node, 0))
            with gm.graph.inserting_after(y):
                bits = gm.graph.call_function(operator.getitem, (node, 1))
        node.replace_all_uses_with(y, delete_user_cb=lambda u, own=(y, bits): u not in own)
        for r in readers:
            r.update_arg(0, bits)
            fused[r].reads_packed = True


def fuse(packed: nn.Module) -> tuple[nn.Module, list[FusionRecord]]:
    """The packed model with every matching chain fused (a new module; ``packed`` is left as it was) and a
    record per binary conv. A model the tracer cannot follow, or none of whose convs fuses, comes back as
    ``packed`` itself, each record saying why (its graph would only add a cost: AdaBin's 2x)."""
    convs = [n for n, m in packed.named_modules() if isinstance(m, PackedBinaryConv2d)]
    try:
        graph = _Tracer().trace(packed)
    except Exception as e:  # noqa: BLE001 - data-dependent control flow etc.: reported per layer, never hidden
        why = f"the model cannot be traced by torch.fx ({type(e).__name__}: {str(e).splitlines()[0][:200]})"
        return packed, [FusionRecord(n, unfused=why) for n in convs]
    gm = fx.GraphModule(packed, graph)
    records, fused = {n: FusionRecord(n) for n in convs}, {}
    for node in list(gm.graph.nodes):
        conv = _module(gm, node)
        if not isinstance(conv, PackedBinaryConv2d) or node not in gm.graph.nodes:
            continue
        rec = records[str(node.target)]
        if not conv.form.plain:
            rec.unfused = "its inference form has offsets (threshold, box sum or border terms)"
            continue
        chain = _match(gm, node)
        if isinstance(chain, str):
            rec.unfused = chain
            continue
        gm.add_submodule(str(node.target), FusedBinaryConv2d(conv, chain))
        rec.absorbed, rec.residual = chain.names, chain.residual is not None
        fused[_replace(gm, chain, str(node.target))] = rec
    if not fused:
        return packed, [records[n] for n in convs]
    _link_packed(gm, fused)
    gm.graph.lint()
    gm.recompile()
    gm.delete_all_unused_submodules()
    return gm, [records[n] for n in convs]


class Traced(nn.Module):
    """``model`` run as a TorchScript trace (``torch.jit.trace``), one per input shape: the kernels are torch
    operators (``torch.ops.bnnbench``), so a fused graph runs without a Python frame per layer. A trace
    records the shapes and the branches of the first call, hence one per shape; outputs equal the model's
    (tested)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self._traces: dict[tuple, torch.jit.ScriptModule] = {}

    def forward(self, x: Tensor) -> Tensor:
        key = (tuple(x.shape), x.dtype, x.is_contiguous(memory_format=torch.channels_last))
        if key not in self._traces:
            with torch.no_grad(), warnings.catch_warnings():
                warnings.simplefilter("ignore")   # TracerWarning: the shape checks are constants of this shape
                self._traces[key] = torch.jit.trace(self.model.eval(), x, check_trace=False)
        return self._traces[key](x)


def summary(records: list[FusionRecord]) -> dict:
    """What ``deploy.json`` keeps: counts and the records."""
    return {"binary_convs": len(records), "fused": sum(r.unfused is None for r in records),
            "packed_links": sum(r.emits_packed for r in records), "layers": [asdict(r) for r in records]}
