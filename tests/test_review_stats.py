"""review.stats against SciPy and hand-derived values (Cohen 1960's layout, Krippendorff 2011's example)."""

from __future__ import annotations

import itertools
import random

import numpy as np
import pytest
from scipy import stats as sps

from iceburg_mlx.review.stats import (
    cohens_kappa,
    krippendorff_alpha,
    mean_interval,
    sign_test,
    t_abs_cdf,
    t_quantile,
    wilson_interval,
)


@pytest.mark.parametrize("a,b", [(0, 1), (3, 10), (10, 3), (7, 7), (0, 12), (21, 13), (130, 170), (1, 0)])
def test_sign_test_equals_scipy_binomtest(a, b):
    assert sign_test(a, b) == pytest.approx(sps.binomtest(b, a + b, 0.5).pvalue, rel=1e-12)


def test_sign_test_by_hand():
    assert sign_test(0, 0) == 1.0
    assert sign_test(1, 5) == pytest.approx(2 * 7 / 64)   # 2 P[X <= 1], X ~ Bin(6, 1/2) = 2 (1 + 6) / 64


def test_wilson_is_the_score_interval_by_hand():
    # 21 of 34: p = .6176; z = 1.96: centre (p + z^2/2n) / (1 + z^2/n), half-width z / (1 + z^2/n) sqrt(p q / n + z^2 / 4n^2)
    z, n, p = 1.959963984540054, 34, 21 / 34
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    assert wilson_interval(21, 34) == pytest.approx((centre - half, centre + half), rel=1e-12)


@pytest.mark.parametrize("df", [1, 2, 3, 4, 5, 6, 9, 10, 29, 30, 99, 400, 2001])
def test_t_quantile_equals_scipy(df):
    for q in (0.5, 0.8, 0.975, 0.995):
        assert t_quantile(q, df) == pytest.approx(sps.t.ppf(q, df), rel=1e-9, abs=1e-12)
    for t in (0.0, 0.3, 1.7, 4.0):
        assert t_abs_cdf(t, df) == pytest.approx(2 * sps.t.cdf(t, df) - 1, abs=1e-12)


def test_t_quantile_rejects_bad_input():
    for q, df in ((0.4, 3), (1.0, 3), (0.9, 0), (0.9, 2.5)):
        with pytest.raises(ValueError):
            t_quantile(q, df)


def test_mean_interval_equals_scipy():
    rng = np.random.default_rng(0)
    for n in (2, 3, 7, 40):
        x = rng.integers(1, 6, size=n).astype(float)
        m = mean_interval(x)
        lo, hi = sps.t.interval(0.95, n - 1, loc=x.mean(), scale=sps.sem(x))
        assert (m.n, m.mean) == (n, pytest.approx(x.mean()))
        assert (m.lo, m.hi) == (pytest.approx(lo, rel=1e-9), pytest.approx(hi, rel=1e-9))
    assert mean_interval([]).mean is None
    one = mean_interval([4])
    assert (one.mean, one.lo, one.hi) == (4.0, None, None)
    same = mean_interval([3, 3, 3])
    assert (same.lo, same.hi) == (3.0, 3.0)


def test_cohens_kappa_by_hand():
    # 50 items: both yes 20, A yes / B no 5, A no / B yes 10, both no 15:
    # p_o = 35/50 = .7; p_e = .5 * .6 + .5 * .4 = .5; kappa = (.7 - .5) / (1 - .5) = .4
    a = ["y"] * 25 + ["n"] * 25
    b = ["y"] * 20 + ["n"] * 5 + ["y"] * 10 + ["n"] * 15
    assert cohens_kappa(a, b) == pytest.approx(0.4)
    # three categories: agreements 4 of 6; p_a = (2, 2, 2)/6, p_b = (3, 2, 1)/6:
    # p_e = (6 + 4 + 2) / 36 = 1/3, kappa = (2/3 - 1/3) / (2/3) = 0.5
    assert cohens_kappa(["A", "A", "B", "B", "tie", "tie"], ["A", "A", "B", "A", "tie", "B"]) == pytest.approx(0.5)
    assert cohens_kappa(list("ABAB"), list("ABAB")) == pytest.approx(1.0)
    assert cohens_kappa(["A", "A"], ["A", "A"]) is None and cohens_kappa([], []) is None
    with pytest.raises(ValueError):
        cohens_kappa(["A"], ["A", "B"])


# Krippendorff (2011), "Computing Krippendorff's alpha-reliability", section C: four observers,
# twelve units, missing values; alpha = 0.743 (nominal) and 0.849 (interval).
KRIPP = [[1, 2, 3, 3, 2, 1, 4, 1, 2, None, None, None],
         [1, 2, 3, 3, 2, 2, 4, 1, 2, 5, None, 3],
         [None, 3, 3, 3, 2, 3, 4, 2, 2, 5, 1, None],
         [1, 2, 3, 3, 2, 4, 4, 1, 2, 5, 1, None]]


def _units(rows):
    return [[v for v in col if v is not None] for col in zip(*rows)]


def test_krippendorff_alpha_reproduces_the_published_example():
    assert krippendorff_alpha(_units(KRIPP), "nominal") == pytest.approx(0.743, abs=5e-4)
    assert krippendorff_alpha(_units(KRIPP), "interval") == pytest.approx(0.849, abs=5e-4)


def _alpha_pairwise(units, delta):
    """Alpha from its definition over pairable values (not the coincidence matrix): 1 - D_o / D_e with
    D_o the mean of delta over ordered pairs within units (weights 1 / (m_u - 1)) and D_e over all
    ordered pairs of pairable values."""
    units = [u for u in units if len(u) >= 2]
    n = sum(len(u) for u in units)
    d_o = sum(delta(u[i], u[j]) / (len(u) - 1) for u in units for i, j in itertools.permutations(range(len(u)), 2)) / n
    allv = [v for u in units for v in u]
    d_e = sum(delta(allv[i], allv[j]) for i, j in itertools.permutations(range(n), 2)) / (n * (n - 1))
    return 1 - d_o / d_e


def test_krippendorff_alpha_equals_its_pairwise_definition_on_random_data():
    rng = random.Random(3)
    for trial in range(20):
        raters, items = rng.randint(2, 5), rng.randint(3, 15)
        units = [[rng.choice(["A", "tie", "B"]) for _ in range(rng.randint(0, raters))] for _ in range(items)]
        units.append(["A", "B"])      # some variation, so alpha is defined
        assert krippendorff_alpha(units) == pytest.approx(_alpha_pairwise(units, lambda a, b: float(a != b)))
        scores = [[rng.randint(1, 5) for _ in range(rng.randint(0, raters))] for _ in range(items)] + [[1, 5]]
        assert krippendorff_alpha(scores, "interval") == pytest.approx(
            _alpha_pairwise(scores, lambda a, b: float((a - b) ** 2)))


def test_krippendorff_alpha_edges():
    assert krippendorff_alpha([["A", "A"], ["B", "B"], ["tie", "tie"]]) == pytest.approx(1.0)
    assert krippendorff_alpha([["A", "A"], ["A"]]) is None       # no variation
    assert krippendorff_alpha([["A"], []]) is None                # nothing pairable
    with pytest.raises(ValueError):
        krippendorff_alpha([[1, 2]], "ratio")
