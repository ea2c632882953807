"""Single-stage vs two-stage vs two-stage + KD at the same total of 8 epochs (the table in README.md here).

Reads the finished runs of results/cifar10-cpu (single stage, 8 epochs) and results/cifar10-twostage
(stage 2 rows after 4 + 4 epochs; KD variants told apart by their teacher run's epochs), final-epoch top-1
on the 10,000 test images, seeds 0 and 1, and prints a Markdown table: mean with 95% interval per variant,
and each variant's paired difference to single-stage with Holm-corrected p-values (bnnbench/stats.py).
Run from the repository root:
    .venv/bin/python results/cifar10-twostage/compare.py
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from bnnbench.stats import compare, holm, mean_interval  # noqa: E402

SEEDS = (0, 1)
TEACHERS = (4, 16)            # the KD variants: epochs of the teacher run


def teacher_epochs(run: Path) -> int | None:
    """Epochs of the teacher run this run distilled from (None: no teacher)."""
    ref = (yaml.safe_load((run / "config.yaml").read_text()) or {}).get("teacher") or {}
    if not ref.get("name"):
        return None
    return json.loads((run.parent / ref["name"] / "result.json").read_text())["epochs"]


def finals(folder: str, method: str, stage: str, teacher: int | None) -> dict[int, float]:
    out = {}
    for d in sorted((ROOT / folder / "runs").iterdir()):
        res = json.loads((d / "result.json").read_text()) if (d / "result.json").exists() else None
        if not res or res["status"] != "done" or res["method"] != method or res.get("stage", "") != stage:
            continue
        if res["seed"] in SEEDS and teacher_epochs(d) == teacher \
                and not any(k.startswith(f"{method}.") for k in res["changes"]):
            out[res["seed"]] = res["final_top1"]
    return out


def teachers(epochs: int) -> dict[int, float]:
    """Final top-1 of the finished teacher runs of ``epochs`` epochs, by seed."""
    out = {}
    for d in sorted((ROOT / "results/cifar10-twostage/runs").iterdir()):
        res = json.loads((d / "result.json").read_text()) if (d / "result.json").exists() else None
        if res and res.get("stage") == "teacher" and res["epochs"] == epochs and res["status"] == "done" \
                and res["seed"] in SEEDS:
            out[res["seed"]] = res["final_top1"]
    return out


def cell(v: dict) -> str:
    if not v:
        return "-"
    m = mean_interval(list(v.values()))
    return f"{m.mean:.2f} ± {m.half:.2f} (n={len(v)})" if m.half is not None else f"{m.mean:.2f} (n={len(v)})"


def main() -> None:
    names = ["two-stage (4+4)"] + [f"two-stage + KD, {t}-ep teacher" for t in TEACHERS]
    print("| method | single stage (8 ep) | " + " | ".join(names) + " | "
          + " | ".join(f"{n.split(' (')[0]} - single" for n in names) + " |")
    print("|---" * (2 + 2 * len(names)) + "|")
    rows, pvals = [], []
    for method in ("ovsw", "recu"):
        single = finals("results/cifar10-cpu", method, "", None)
        variants = [finals("results/cifar10-twostage", method, "stage2", t) for t in (None, *TEACHERS)]
        diffs = [compare(v, single) for v in variants]
        pvals += [c.p if c else 1.0 for c in diffs]
        rows.append((method, single, variants, diffs))
    adj = holm(pvals)
    k = len(names)
    for i, (method, single, variants, diffs) in enumerate(rows):
        ds = [f"{c.diff:+.2f} [{c.low:+.2f}, {c.high:+.2f}], p_Holm {adj[k * i + j]:.3f}" if c else "-"
              for j, c in enumerate(diffs)]
        print(f"| {method} | {cell(single)} | " + " | ".join(cell(v) for v in variants) + " | "
              + " | ".join(ds) + " |")
    print("\nTeacher strength, two-stage + KD, 16-ep minus 4-ep teacher (paired on seeds, Holm over the methods):")
    pairs = [(m, compare(v[2], v[1])) for m, _, v, _ in rows]
    adj = holm([c.p if c else 1.0 for _, c in pairs])
    for (method, c), p in zip(pairs, adj):
        print(f"- {method}: " + (f"{c.diff:+.2f} [{c.low:+.2f}, {c.high:+.2f}], p_Holm {p:.3f}" if c else "-"))
    print()
    for t in TEACHERS:
        print(f"FP teacher (xnor@teacher, binarize: none, {t} epochs): {cell(teachers(t))}")


if __name__ == "__main__":
    main()
