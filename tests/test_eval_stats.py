"""eval.stats against SciPy references and hand-derived values."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as sps

from iceburg_mlx.eval.stats import (
    Z95,
    bh_adjust,
    binom_cdf_half,
    brier_score,
    cohens_h,
    expected_calibration_error,
    mcnemar_exact,
    paired_counts,
    wilson_interval,
)


@pytest.mark.parametrize("b,c", [(0, 1), (1, 0), (3, 10), (10, 3), (5, 5), (0, 7), (12, 4), (40, 61),
                                 (500, 540), (1, 1), (0, 25)])
def test_mcnemar_equals_scipy_binomtest(b, c):
    ref = sps.binomtest(b, b + c, 0.5, alternative="two-sided").pvalue
    assert mcnemar_exact(b, c) == pytest.approx(ref, rel=1e-12, abs=1e-300)


def test_mcnemar_edge_cases():
    assert mcnemar_exact(0, 0) == 1.0
    assert mcnemar_exact(0, 7) == pytest.approx(2 / 2**7)  # hand: 2 * P[X = 0] for n = 7
    with pytest.raises(ValueError):
        mcnemar_exact(-1, 3)
    assert binom_cdf_half(-1, 4) == 0.0 and binom_cdf_half(4, 4) == 1.0
    assert binom_cdf_half(1, 4) == pytest.approx(5 / 16)


def test_paired_counts():
    a = [True, True, False, False, True]
    b = [True, False, True, False, False]
    c = paired_counts(a, b)
    assert (c.both, c.only_a, c.only_b, c.neither, c.n) == (1, 2, 1, 1, 5)
    with pytest.raises(ValueError):
        paired_counts([True], [True, False])


@pytest.mark.parametrize("k,n", [(81, 263), (15, 148), (0, 20), (1, 29), (29, 29), (7, 10), (50, 100)])
def test_wilson_equals_scipy(k, n):
    ref = sps.binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
    lo, hi = wilson_interval(k, n)
    assert lo == pytest.approx(ref.low, abs=1e-12) and hi == pytest.approx(ref.high, abs=1e-12)


# statsmodels' proportion_confint(count, nobs, alpha=0.05, method="wilson") computes
#   c = z^2 / n, center = (p + c/2) / (1 + c), half = z sqrt(p(1-p)/n + z^2/(4 n^2)) / (1 + c)
# with z = norm.ppf(0.975). statsmodels is not installed here, so these are the values that
# formula gives (rounded to 4 decimals), for the worked examples 81/263, 15/148, 0/20 and 1/29 of
# Newcombe (1998), "Two-sided confidence intervals for the single proportion", Stat. Med. 17:857-872,
# method 3 (score interval without continuity correction), whose published values they are.
NEWCOMBE = [((81, 263), (0.2553, 0.3662)), ((15, 148), (0.0624, 0.1605)), ((0, 20), (0.0, 0.1611)),
            ((1, 29), (0.0061, 0.1718))]


@pytest.mark.parametrize("kn,ref", NEWCOMBE)
def test_wilson_pinned_reference_values(kn, ref):
    lo, hi = wilson_interval(*kn)
    assert lo == pytest.approx(ref[0], abs=5e-5) and hi == pytest.approx(ref[1], abs=5e-5)


def test_wilson_edges():
    assert Z95 == pytest.approx(1.959963984540054, abs=1e-14)
    assert wilson_interval(0, 0) == (0.0, 1.0)
    assert wilson_interval(10, 10)[1] == 1.0 and wilson_interval(0, 10)[0] == 0.0
    with pytest.raises(ValueError):
        wilson_interval(11, 10)


def test_cohens_h_hand_values():
    assert cohens_h(0.5, 0.5) == 0.0
    assert cohens_h(1.0, 0.0) == pytest.approx(math.pi)
    assert cohens_h(0.0, 1.0) == pytest.approx(-math.pi)
    # the example verdict: 71% vs 48% -> h = 0.47
    assert round(cohens_h(0.71, 0.48), 2) == 0.47
    with pytest.raises(ValueError):
        cohens_h(1.2, 0.5)


@pytest.mark.parametrize("ps", [
    [0.01, 0.04, 0.03, 0.2, 0.001, 0.04],
    [0.5],
    [1.0, 1.0, 0.0],
    [0.049, 0.049, 0.049, 0.049],
    np.random.default_rng(0).uniform(0, 0.2, 30).tolist(),
])
def test_bh_equals_scipy(ps):
    ref = sps.false_discovery_control(ps, method="bh")
    np.testing.assert_allclose(bh_adjust(ps), ref, rtol=1e-12, atol=1e-15)


def test_bh_edges():
    assert bh_adjust([]) == []
    with pytest.raises(ValueError):
        bh_adjust([0.1, 1.5])


# Hand-derived: bins of width 0.1, bin b holds conf in (b/10, (b+1)/10].
#   bin 9: 0.95 (right), 0.92 (wrong): |0.5 - 0.935| * 2/6 = 0.145
#   bin 7: 0.75 (right):               |1 - 0.75|    * 1/6
#   bin 3: 0.35 (wrong), 0.33 (right): |0.5 - 0.34|  * 2/6
#   bin 0: 0.05 (wrong):               |0 - 0.05|    * 1/6
CONF = [0.95, 0.92, 0.75, 0.35, 0.33, 0.05]
RIGHT = [True, False, True, False, True, False]


def test_ece_hand_value():
    expected = 0.145 + 0.25 / 6 + 0.16 * 2 / 6 + 0.05 / 6
    assert expected_calibration_error(CONF, RIGHT) == pytest.approx(expected, abs=1e-12)
    assert expected_calibration_error(CONF, RIGHT, bins=1) == pytest.approx(abs(0.5 - np.mean(CONF)))
    assert expected_calibration_error([], []) == 0.0
    assert expected_calibration_error([0.0, 1.0], [False, True]) == 0.0  # 0 -> first bin, 1 -> last


def test_brier_hand_value():
    expected = (0.05**2 + 0.92**2 + 0.25**2 + 0.35**2 + 0.67**2 + 0.05**2) / 6
    assert brier_score(CONF, RIGHT) == pytest.approx(expected, abs=1e-12)
    with pytest.raises(ValueError):
        brier_score([0.5, 2.0], [True, False])
    with pytest.raises(ValueError):
        brier_score([0.5], [True, False])
