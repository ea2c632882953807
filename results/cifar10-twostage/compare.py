"""Single-stage vs two-stage vs two-stage + KD at the same total of 8 epochs (the table in README.md here).

Reads the finished runs of results/cifar10-cpu (single stage, 8 epochs) and results/cifar10-twostage
(stage 2 rows after 4 + 4 epochs; KD variants told apart by their teacher run's epochs), final-epoch top-1
on the 10,000 test images, seeds 0 and 1, and prints a Markdown table: mean with 95% interval per variant,
and each variant's paired difference to single-stage with Holm-corrected p-values (bnnbench/report/stats.py).
Run from the repository root:
    .venv/bin/python results/cifar10-twostage/compare.py
"""
from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from bnnbench.report.stats import compare, holm, mean_interval  # noqa: E402
from bnnbench.store import RunDir  # noqa: E402

SEEDS = (0, 1)
TEACHERS = (4, 16)            # the KD variants: epochs of the teacher run


def done_runs(folder: str):
    """(run directory, result) of every finished run under ``folder/runs``, seeds 0 and 1."""
    for d in sorted((ROOT / folder / "runs").iterdir()):
        res = RunDir(d).read_result()
        if res and res["status"] == "done" and res["seed"] in SEEDS:
            yield RunDir(d), res


def teacher_epochs(run: RunDir) -> int | None:
    """Epochs of the teacher run this run distilled from (None: no teacher)."""
    ref = run.read_spec().teacher
    return RunDir(run.path.parent / ref["name"]).read_result()["epochs"] if ref.get("name") else None


def finals(folder: str, method: str, stage: str, teacher: int | None) -> dict[int, float]:
    """Final top-1 by seed of ``method``'s ``stage`` runs that distilled from a ``teacher``-epoch teacher
    (None: no distillation), without method hyperparameter changes."""
    return {res["seed"]: res["final_top1"] for d, res in done_runs(folder)
            if res["method"] == method and res.get("stage", "") == stage and teacher_epochs(d) == teacher
            and not any(k.startswith(f"{method}.") for k in res["changes"])}


def teachers(epochs: int) -> dict[int, float]:
    """Final top-1 of the finished teacher runs of ``epochs`` epochs, by seed."""
    return {res["seed"]: res["final_top1"] for _, res in done_runs("results/cifar10-twostage")
            if res.get("stage") == "teacher" and res["epochs"] == epochs}


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
