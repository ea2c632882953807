"""Plots of training dynamics (matplotlib, PNG), built from run directories only.

* ``curves__<recipe>__<track>__<backbone>.png``: test top-1 per epoch, one line per method (variant);
* ``flips__<recipe>__<track>__<backbone>.png``: per-epoch flip ratio (flipped at least once in the epoch),
  one line per method;
* ``robustness__<recipe>__<track>__<backbone>.png``: top-1 per corruption (mean over severities and seeds)
  and per method, a heat map with the figures written in (runs with a ``robustness.json``);
* ``silent__<run>.png``: the OvSW paper's figure for one run: histogram of the initial latent weights
  with the never-flipped ones overlaid, for one layer (default: the last binary layer) and for all binary
  layers together.

With several seeds the curves show the first seed of each method (the table has the aggregate).
"""
from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import torch

from bnnbench.data.corruptions import CORRUPTIONS
from bnnbench.report.stats import mean_interval
from bnnbench.report.tables import row_labels
from bnnbench.store import FLIPS, INIT_WEIGHTS, RESULT, RunDir, load_torch


def _plt():
    import matplotlib  # deferred: start-up: matplotlib loads only when plots are drawn
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # deferred: start-up: pyplot loads only for plots, after the Agg backend is set
    return plt


def _group_runs(runs: list) -> dict[tuple, dict[str, list]]:
    """{(recipe, track, backbone, epochs, full data): {row label: the finished StoredRuns of its seeds}}."""
    labels = row_labels([s.result for s in runs])
    groups: dict[tuple, dict[str, list]] = defaultdict(lambda: defaultdict(list))
    for s in sorted(runs, key=lambda s: (s.result.seed, s.name)):
        r = s.result
        if r.status == "done":
            groups[(r.recipe, r.track, r.backbone, r.epochs, bool(r.full_data))][labels[r.group]].append(s)
    return groups


def seed_band(series: list[dict[int, float]]) -> tuple[list[int], list[float], list[float] | None]:
    """(epochs every seed reached, mean over the seeds, 95% half-width per epoch or None for one seed)."""
    epochs = sorted(set.intersection(*(set(s) for s in series)))
    stats = [mean_interval([s[e] for s in series]) for e in epochs]
    halves = [i.half for i in stats] if len(series) > 1 else None
    return epochs, [i.mean for i in stats], halves


def curve_stem(recipe: str, track: str, backbone: str, epochs: int, full: bool) -> str:
    """The file-name stem of the curves and flips plots of one leaderboard table."""
    return f"{recipe}__{track}__{backbone}__e{epochs}" + ("" if full else "__subset")


class UnreadableFile(Exception):
    """A run's weight file that is truncated or corrupt."""


def _load(path: Path):
    try:
        return load_torch(path)
    except Exception as exc:  # noqa: BLE001 - torch raises several types for a damaged file
        raise UnreadableFile(f"{path} is unreadable ({type(exc).__name__}: {str(exc)[:200]})") from None


def plot_curves(runs: list, out: Path) -> dict[Path, int]:
    """Accuracy and flip-ratio curves per recipe x track x backbone: per row the mean over its seeds with a
    shaded 95% band (Student t, as the leaderboard's intervals); returns {file: number of lines}."""
    plt = _plt()
    out = Path(out) / "plots"
    out.mkdir(parents=True, exist_ok=True)
    written: dict[Path, int] = {}
    for (recipe, track, backbone, epochs, full), by_method in sorted(_group_runs(runs).items()):
        stem = curve_stem(recipe, track, backbone, epochs, full)
        for kind, key, ylabel, scale in (("curves", "test_top1", "test top-1 (%)", 1.0),
                                         ("flips", "flip_any", "weights flipped in the epoch (%)", 100.0)):
            fig, ax = plt.subplots(figsize=(6.4, 4.0))
            n = 0
            for label in sorted(by_method):
                seeds = [s for s in by_method[label] if not (key == "flip_any" and s.result.flip_any is None)]
                if not seeds:   # real-valued weights (a teacher, stage 1): no flips, bnnbench/engine/flips.py
                    continue
                series = [{r["epoch"] + 1: scale * r[key] for r in RunDir(s.path).read_metrics()
                           if r.get(key) is not None} for s in seeds]
                xs, ys, half = seed_band([s for s in series if s])
                if xs:
                    line, = ax.plot(xs, ys, marker="o" if len(xs) < 30 else None,
                                    label=f"{label} (n={len(seeds)})" if len(seeds) > 1 else label)
                    if half is not None:
                        ax.fill_between(xs, [y - h for y, h in zip(ys, half)], [y + h for y, h in zip(ys, half)],
                                        color=line.get_color(), alpha=0.2, linewidth=0)
                    n += 1
            ax.set_xlabel("epoch")
            ax.set_ylabel(ylabel)
            ax.set_title(f"{recipe} [{track}] {backbone}", fontsize=10)
            ax.grid(alpha=0.3)
            if n:
                ax.legend(fontsize=8)
            path = out / f"{kind}__{stem}.png"
            fig.tight_layout()
            fig.savefig(path, dpi=110)
            plt.close(fig)
            written[path] = n
    return written


def plot_silent_hist(run_dir: Path, out: Path, layer: str | None = None, bins: int = 80) -> Path | None:
    """Initial-weight histogram with the never-flipped weights overlaid (one layer and all layers)."""
    rd = RunDir(run_dir)
    init_p, flips_p = rd.file(INIT_WEIGHTS), rd.file(FLIPS)
    if not (init_p.exists() and flips_p.exists()):
        return None
    init, never = _load(init_p), _load(flips_p)
    names = [n for n in init if n in never]
    if not names:
        return None
    layer = layer or names[-1]
    if layer not in init:
        raise KeyError(f"layer {layer!r} not in {rd.path}; binary layers: {', '.join(names)}")
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    panels = ((layer, init[layer].flatten(), never[layer].flatten()),
              ("all binary layers", torch.cat([init[n].flatten() for n in names]),
               torch.cat([never[n].flatten() for n in names])))
    for ax, (title, w, mask) in zip(axes, panels):
        lo, hi = torch.quantile(w, torch.tensor([0.001, 0.999])).tolist()
        edges = torch.linspace(lo, hi, bins + 1).numpy()
        ax.hist(w.numpy(), bins=edges, color="tab:blue", alpha=0.8, label="initial weights")
        ax.hist(w[mask].numpy(), bins=edges, color="tab:orange", alpha=0.9, label="never flipped")
        ax.set_title(f"{title}: {100 * mask.float().mean().item():.2f}% silent", fontsize=10)
        ax.set_xlabel("initial latent weight")
        ax.legend(fontsize=8)
    fig.suptitle(rd.name, fontsize=8)
    fig.tight_layout()
    out = Path(out) / "plots"
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"silent__{rd.name}.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def corruption_means(seeds: list) -> dict[str, float]:
    """{corruption: top-1 averaged over its severities, then over the seeds that evaluated it}."""
    per: dict[str, list[float]] = defaultdict(list)
    for s in seeds:
        for name, sev in ((s.robustness or {}).get("corruptions") or {}).items():
            if sev:
                per[name].append(sum(sev.values()) / len(sev))
    return {name: sum(v) / len(v) for name, v in per.items()}


def plot_robustness(runs: list, out: Path) -> list[Path]:
    """One heat map per table: rows the methods, columns the corruptions (top-1, %)."""
    written = []
    for (recipe, track, backbone, epochs, full), by_method in sorted(_group_runs(runs).items()):
        table = {label: corruption_means(seeds) for label, seeds in sorted(by_method.items())}
        table = {label: row for label, row in table.items() if row}
        if not table:
            continue
        names = [n for n in CORRUPTIONS if any(n in row for row in table.values())]
        grid = [[row.get(n, float("nan")) for n in names] for row in table.values()]
        plt = _plt()
        fig, ax = plt.subplots(figsize=(1.0 + 0.62 * len(names), 1.4 + 0.36 * len(table)))
        im = ax.imshow(grid, cmap="viridis", aspect="auto")
        ax.set_xticks(range(len(names)), [n.replace("_", " ") for n in names], rotation=40, ha="right", fontsize=8)
        ax.set_yticks(range(len(table)), list(table), fontsize=8)
        for i, row in enumerate(grid):
            for j, v in enumerate(row):
                if v == v:
                    ax.text(j, i, f"{v:.0f}", ha="center", va="center", fontsize=7,
                            color="white" if v < (min(map(min, grid)) + max(map(max, grid))) / 2 else "black")
        fig.colorbar(im, ax=ax, label="top-1 (%)", fraction=0.03)
        ax.set_title(f"{recipe} [{track}] {backbone}: top-1 under each corruption (mean of severities)", fontsize=9)
        path = Path(out) / "plots" / f"robustness__{curve_stem(recipe, track, backbone, epochs, full)}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written


def plot_all(runs: list, out: Path, warn=print) -> list[Path]:
    """Every plot of the collected runs (``report.StoredRun``); returns the files written. A run whose
    weight files are unreadable gets no histogram and a warning naming the file."""
    written = list(plot_curves(runs, out)) + plot_robustness(runs, out)
    for s in runs:
        if s.result.status == "done" and (s.path / RESULT).exists():
            try:
                p = plot_silent_hist(s.path, out)
            except UnreadableFile as exc:
                warn(f"no silent-weight histogram for {s.name}: {exc}")
                continue
            if p:
                written.append(p)
    return written
