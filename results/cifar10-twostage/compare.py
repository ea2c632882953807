"""Single-stage vs two-stage vs two-stage + KD at the same total of 8 epochs (the table in README.md here).

Reads the finished runs of results/cifar10-cpu (single stage, 8 epochs) and results/cifar10-twostage
(stage 2 rows after 4 + 4 epochs), final-epoch top-1 on the 10,000 test images, seeds 0 and 1, and prints a
Markdown table: mean with 95% interval per variant, and each variant's paired difference to single-stage
with Holm-corrected p-values (bnnbench/stats.py). Run from the repository root:
    .venv/bin/python results/cifar10-twostage/compare.py
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from bnnbench.stats import compare, holm, mean_interval  # noqa: E402

SEEDS = (0, 1)


def finals(folder: str, method: str, stage: str, distill: bool) -> dict[int, float]:
    out = {}
    for d in sorted((ROOT / folder / "runs").iterdir()):
        res = json.loads((d / "result.json").read_text()) if (d / "result.json").exists() else None
        if not res or res["status"] != "done" or res["method"] != method or res.get("stage", "") != stage:
            continue
        if res["seed"] in SEEDS and (res["changes"].get("distill_weight", 0) > 0) == distill \
                and not any(k.startswith(f"{method}.") for k in res["changes"]):
            out[res["seed"]] = res["final_top1"]
    return out


def main() -> None:
    print("| method | single stage (8 ep) | two-stage (4+4) | two-stage + KD (4+4) | two-stage - single | "
          "two-stage + KD - single |")
    print("|---|---|---|---|---|---|")
    rows, pvals = [], []
    for method in ("ovsw", "recu"):
        single = finals("results/cifar10-cpu", method, "", False)
        two = finals("results/cifar10-twostage", method, "stage2", False)
        kd = finals("results/cifar10-twostage", method, "stage2", True)
        diffs = [compare(two, single), compare(kd, single)]
        pvals += [c.p if c else 1.0 for c in diffs]
        rows.append((method, single, two, kd, diffs))
    adj = holm(pvals)

    def cell(v: dict) -> str:
        if not v:
            return "-"
        m = mean_interval(list(v.values()))
        return f"{m.mean:.2f} ± {m.half:.2f} (n={len(v)})" if m.half is not None else f"{m.mean:.2f} (n={len(v)})"

    for i, (method, single, two, kd, diffs) in enumerate(rows):
        ds = [f"{c.diff:+.2f} [{c.low:+.2f}, {c.high:+.2f}], p_Holm {adj[2 * i + j]:.3f}" if c else "-"
              for j, c in enumerate(diffs)]
        print(f"| {method} | {cell(single)} | {cell(two)} | {cell(kd)} | {ds[0]} | {ds[1]} |")
    teacher = finals("results/cifar10-twostage", "xnor", "teacher", False)
    print(f"\nFP teacher (xnor@teacher, binarize: none, 4 epochs): {cell(teacher)}")


if __name__ == "__main__":
    main()
