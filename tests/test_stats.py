"""Leaderboard statistics against hand-computed formulas (bnnbench/report/stats.py) and in the tables."""
import math

import pytest

from bnnbench.report.stats import compare, holm, mean_interval, ranks
from bnnbench.report.tables import add_statistics, columns

T975 = {1: 12.706204736, 2: 4.302652730, 3: 3.182446305, 4: 2.776445105}  # Student t quantiles (tables)


def test_mean_interval_is_student_t_and_undefined_for_one_seed():
    x = [60.0, 61.0, 62.5]
    mean = sum(x) / 3
    sd = math.sqrt(sum((v - mean) ** 2 for v in x) / 2)
    ci = mean_interval(x)
    assert ci.mean == pytest.approx(mean) and ci.n == 3
    assert ci.half == pytest.approx(T975[2] * sd / math.sqrt(3), rel=1e-8)
    one = mean_interval([45.45])
    assert one.half is None and one.mean == 45.45  # not "± 0.00"


def test_paired_comparison_on_common_seeds():
    a = {0: 61.0, 1: 61.4, 2: 60.9, 3: 61.7}
    b = {0: 60.5, 1: 61.1, 2: 60.6, 3: 61.0}
    d = [a[s] - b[s] for s in a]
    mean = sum(d) / 4
    sd = math.sqrt(sum((v - mean) ** 2 for v in d) / 3)
    c = compare(a, b)
    assert c.test == "paired" and c.diff == pytest.approx(mean)
    assert c.high - c.diff == pytest.approx(T975[3] * sd / 2, rel=1e-8)
    t = mean / (sd / 2)
    from scipy import stats
    assert c.p == pytest.approx(2 * stats.t.sf(abs(t), 3), rel=1e-8)


def test_welch_comparison_when_seeds_differ():
    a = {0: 50.0, 1: 52.0, 2: 51.0}
    b = {5: 47.0, 6: 49.5}
    ma, mb = 51.0, 48.25
    va, vb = 1.0 / 3, ((47.0 - mb) ** 2 + (49.5 - mb) ** 2) / 1 / 2
    df = (va + vb) ** 2 / (va ** 2 / 2 + vb ** 2 / 1)
    c = compare(a, b)
    from scipy import stats
    assert c.test == "welch" and c.diff == pytest.approx(ma - mb)
    assert c.high - c.diff == pytest.approx(stats.t.ppf(0.975, df) * math.sqrt(va + vb), rel=1e-8)
    assert compare({0: 1.0}, {0: 2.0}) is None  # one seed: no test


def test_holm_step_down():
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert holm([0.5, 0.001]) == pytest.approx([0.5, 0.002])


def test_ranks_share_first_place_when_not_significant():
    strong = {s: 70.0 + 0.1 * s for s in range(5)}
    close = {s: 69.95 + 0.12 * s for s in range(5)}
    weak = {s: 60.0 + 0.1 * s + 0.05 * (s % 2) for s in range(5)}
    assert ranks([strong, close, weak, {}]) == [1, 1, 3, None]
    assert ranks([{0: 70.0}, {0: 60.0}]) == [1, 1]  # one seed each never separates rows


def test_baseline_columns_and_holm_in_a_table():
    rows = [{"method": m, "final_by_seed": f, "best_by_seed": f} for m, f in (
        ("base", {0: 50.0, 1: 50.5, 2: 50.2}), ("a", {0: 52.0, 1: 52.9, 2: 52.1}), ("b", {0: 50.1, 1: 50.4, 2: 50.4}))]
    add_statistics(rows, "base")
    va, vb = rows[1]["vs_baseline_final"], rows[2]["vs_baseline_final"]
    assert rows[0]["vs_baseline_final"] is None and va["test"] == "paired"
    assert va["p_holm"] == pytest.approx(max(holm([va["p"], vb["p"]])[0], 0), rel=1e-9)
    assert va["low"] > 0 and vb["low"] < 0 < vb["high"]
    assert "Δ final vs baseline" in columns([{"baseline": "base"}]) and "rank" in columns([{}])
