"""Sign-flip and silent-weight tracking for every binary layer (README, "What a run gives you").

The tracked sign is each layer's ``effective_sign()``: the sign pattern the forward pass really uses
(sign(W) for XNOR, Bi-Real and OvSW; sign(W - mean_c W) for IR-Net and ReCU). 0 is its own value.
State per binary layer, all on the weights' device: s0 (initial sign, int8), prev (last sign), ever
(flipped at least once), ep_flip (flipped at least once this epoch), ep_start (sign at epoch start).
:meth:`FlipTracker.step` runs after every optimizer step with a handful of elementwise ops and no host
synchronisation; :meth:`FlipTracker.epoch_stats` (once per epoch) reads the numbers back:

* ``silent``      = 1 - mean(ever): never flipped since initialisation (the OvSW paper's statistic);
* ``flip_any``    = mean(ep_flip): flipped at least once during the epoch;
* ``flip_net``    = mean(sign at epoch end != sign at epoch start);
* ``net_change``  = mean(sign now != s0): a weight can flip an even number of times.

Each is reported per layer and numel-weighted over all binary layers. Only layers that binarise their
weights are tracked (``binary_weights``; not in a teacher or a stage-1 run, ``binarize`` setting): with
real-valued weights there is no binary weight to stay silent, and the figures are None. A step skipped by
AMP's GradScaler leaves the weights unchanged and records no flip.
"""
from __future__ import annotations

import torch
from torch import nn

from bnnbench.nn.layers import BinaryConv2d, binary_layers


class FlipTracker:
    def __init__(self, model: nn.Module, keep_init: bool = True):
        self.layers: list[tuple[str, BinaryConv2d]] = [(n, m) for n, m in binary_layers(model) if m.binary_weights]
        self.state: dict[str, dict[str, torch.Tensor]] = {}
        self.init_weights: dict[str, torch.Tensor] = {}
        with torch.no_grad():
            for name, layer in self.layers:
                s = self._sign(layer)
                self.state[name] = {"s0": s.clone(), "prev": s.clone(), "ep_start": s.clone(),
                                    "ever": torch.zeros_like(s, dtype=torch.bool),
                                    "ep_flip": torch.zeros_like(s, dtype=torch.bool)}
                if keep_init:
                    self.init_weights[name] = layer.weight.detach().to("cpu", torch.float32, copy=True)

    @staticmethod
    def _sign(layer: BinaryConv2d) -> torch.Tensor:
        return layer.effective_sign().detach().to(torch.int8)

    @torch.no_grad()
    def step(self) -> None:
        """Record the flips of the last optimizer step (call after every step)."""
        for name, layer in self.layers:
            st = self.state[name]
            s = self._sign(layer)
            d = s != st["prev"]
            st["ever"].logical_or_(d)
            st["ep_flip"].logical_or_(d)
            st["prev"].copy_(s)

    @torch.no_grad()
    def start_epoch(self) -> None:
        for st in self.state.values():
            st["ep_flip"].zero_()
            st["ep_start"].copy_(st["prev"])

    @torch.no_grad()
    def epoch_stats(self) -> dict:
        """Per-layer and weighted figures (fractions in [0, 1]); synchronises once."""
        rows = []
        for st in self.state.values():
            rows.append(torch.stack([(~st["ever"]).sum(), st["ep_flip"].sum(),
                                     (st["prev"] != st["ep_start"]).sum(), (st["prev"] != st["s0"]).sum()]))
        if not rows:
            return {"silent": None, "flip_any": None, "flip_net": None, "net_change": None, "layers": {}}
        counts = torch.stack([r.to("cpu") for r in rows]).tolist()
        sizes = [st["s0"].numel() for st in self.state.values()]
        keys = ("silent", "flip_any", "flip_net", "net_change")
        layers = {name: {k: c[i] / n for i, k in enumerate(keys)} for name, c, n in zip(self.state, counts, sizes)}
        total = sum(sizes)
        out = {k: sum(c[i] for c in counts) / total for i, k in enumerate(keys)}
        out["layers"] = layers
        return out

    def never_flipped(self) -> dict[str, torch.Tensor]:
        """Boolean masks (CPU) of the weights that never flipped, per layer."""
        return {name: (~st["ever"]).cpu() for name, st in self.state.items()}

    def state_dict(self) -> dict:
        return {name: {k: v.clone() for k, v in st.items()} for name, st in self.state.items()}

    def load_state_dict(self, sd: dict) -> None:
        for name, st in self.state.items():
            for k in st:
                st[k].copy_(sd[name][k])
