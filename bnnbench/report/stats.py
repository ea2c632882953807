"""Statistics of the leaderboard: confidence intervals, tests against a baseline, Holm correction, ranks.

Every number comes from ``scipy.stats``; nothing is assumed about more seeds than were run.

* Mean and 95% interval over n seeds: x̄ ± t_{0.975, n-1} · s / √n (Student t; no interval for n = 1).
* Difference of row A to row B: when both have the same seeds (n ≥ 2) the runs are paired (the same seed
  gives both the same data order and augmentation), so the paired t-test on the per-seed differences d:
  d̄ ± t_{0.975, n-1} · s_d / √n, p from ``scipy.stats.ttest_rel``; otherwise Welch's t-test
  (``ttest_ind(equal_var=False)``) with the Welch–Satterthwaite degrees of freedom for the interval.
* Holm's step-down correction over the comparisons of one table:
  p_(i) ↦ max_{j ≤ i} min(1, (m - j + 1) · p_(j)) for the sorted p-values.
* Rank: 1 + the number of rows of the table that are significantly better (Holm-adjusted p < 0.05 over
  all pairs of rows with a test), so rows whose difference to the best is not significant share rank 1.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

LEVEL = 0.95
ALPHA = 0.05


@dataclass(frozen=True)
class Interval:
    mean: float
    half: float | None  # None when n = 1: one seed gives no spread
    n: int


@dataclass(frozen=True)
class Comparison:
    diff: float              # mean of A - mean of B
    low: float
    high: float
    p: float
    test: str                # "paired" or "welch"
    n: tuple[int, int]


def mean_interval(values: Sequence[float], level: float = LEVEL) -> Interval:
    """Mean and Student-t half-width over ``values`` (seeds)."""
    from scipy import stats  # deferred: start-up: scipy.stats (~0.5 s) loads only when a table compares seeds
    n = len(values)
    if n == 0:
        raise ValueError("no values")
    mean = math.fsum(values) / n
    if n == 1:
        return Interval(mean, None, 1)
    sem = stats.sem(values)
    return Interval(mean, float(stats.t.ppf(0.5 + level / 2, n - 1) * sem), n)


def compare(a: Mapping[int, float], b: Mapping[int, float], level: float = LEVEL) -> Comparison | None:
    """A - B over seeds (``{seed: value}``): paired when the seeds match, Welch otherwise; None when a test
    is impossible (fewer than two seeds on a side, or no spread at all)."""
    from scipy import stats  # deferred: start-up: scipy.stats (~0.5 s) loads only when a table compares seeds
    q = 0.5 + level / 2
    if set(a) == set(b) and len(a) >= 2:
        seeds = sorted(a)
        d = [a[s] - b[s] for s in seeds]
        mean = math.fsum(d) / len(d)
        sd = stats.tstd(d)
        if sd == 0:
            return None
        half = float(stats.t.ppf(q, len(d) - 1) * sd / math.sqrt(len(d)))
        p = float(stats.ttest_rel([a[s] for s in seeds], [b[s] for s in seeds]).pvalue)
        return Comparison(mean, mean - half, mean + half, p, "paired", (len(a), len(b)))
    if len(a) < 2 or len(b) < 2:
        return None
    xa, xb = list(a.values()), list(b.values())
    va, vb = stats.tvar(xa) / len(xa), stats.tvar(xb) / len(xb)
    if va + vb == 0:
        return None
    df = (va + vb) ** 2 / (va ** 2 / (len(xa) - 1) + vb ** 2 / (len(xb) - 1))
    mean = math.fsum(xa) / len(xa) - math.fsum(xb) / len(xb)
    half = float(stats.t.ppf(q, df) * math.sqrt(va + vb))
    p = float(stats.ttest_ind(xa, xb, equal_var=False).pvalue)
    return Comparison(mean, mean - half, mean + half, p, "welch", (len(a), len(b)))


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm-adjusted p-values, in the input order."""
    m = len(pvalues)
    order = sorted(range(m), key=lambda i: pvalues[i])
    adjusted = [0.0] * m
    running = 0.0
    for k, i in enumerate(order):
        running = max(running, min(1.0, (m - k) * pvalues[i]))
        adjusted[i] = running
    return adjusted


def ranks(per_row: Sequence[Mapping[int, float]], alpha: float = ALPHA) -> list[int | None]:
    """Rank of each row (``{seed: value}``, higher is better): 1 + the rows significantly better than it,
    with Holm's correction over every pair that has a test. Rows without values get None."""
    pairs, comparisons = [], []
    for i in range(len(per_row)):
        for j in range(i + 1, len(per_row)):
            if per_row[i] and per_row[j]:
                c = compare(per_row[i], per_row[j])
                if c is not None:
                    pairs.append((i, j))
                    comparisons.append(c)
    adjusted = holm([c.p for c in comparisons])
    better = [0] * len(per_row)
    for (i, j), c, p in zip(pairs, comparisons, adjusted):
        if p < alpha:
            better[j if c.diff > 0 else i] += 1
    return [1 + better[i] if per_row[i] else None for i in range(len(per_row))]
