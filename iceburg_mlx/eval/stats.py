"""Statistics for paired model comparisons and calibration, in NumPy and the standard library.

- `mcnemar_exact(b, c)`: McNemar's exact test. Under H0 each discordant pair (one model right,
  the other wrong) is a fair coin, so the p-value is the two-sided binomial test of
  min(b, c) successes in n = b + c trials at p = 1/2: min(1, 2 P[X <= min(b, c)]). Computed
  with exact integers, so it is right for small n where the chi-square version is not.
- `wilson_interval(k, n)`: Wilson's score interval for a proportion (Wilson 1927; Newcombe 1998,
  method 3); unlike the normal interval it stays inside [0, 1] and behaves at k = 0 or k = n.
- `cohens_h(p1, p2)`: effect size of two proportions, 2 asin sqrt(p1) - 2 asin sqrt(p2)
  (Cohen 1988: 0.2 small, 0.5 medium, 0.8 large).
- `bh_adjust(pvalues)`: Benjamini-Hochberg adjusted p-values (step-up, FDR), as
  `scipy.stats.false_discovery_control(ps, method="bh")`.
- `expected_calibration_error(conf, correct, bins)`: ECE with equal-width bins,
  sum_b |B_b| / N * |accuracy(B_b) - mean confidence(B_b)|; bin b holds conf in (b/M, (b+1)/M],
  with 0 in the first bin.
- `brier_score(conf, correct)`: mean squared error of the stated probability of being right.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np

Z95 = NormalDist().inv_cdf(0.975)  # 1.959963984540054, as statsmodels' norm.ppf(1 - 0.05 / 2)


def binom_cdf_half(k: int, n: int) -> float:
    """P[X <= k] for X ~ Binomial(n, 1/2), from exact integer sums."""
    if k < 0:
        return 0.0
    if k >= n:
        return 1.0
    return sum(math.comb(n, i) for i in range(k + 1)) / (1 << n)


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value from the discordant counts b (A right, B wrong) and c."""
    if b < 0 or c < 0:
        raise ValueError(f"discordant counts must be >= 0, got {b}, {c}")
    n = b + c
    if n == 0:
        return 1.0
    return min(1.0, 2.0 * binom_cdf_half(min(b, c), n))


@dataclass(frozen=True)
class PairedCounts:
    both: int        # both right
    only_a: int      # A right, B wrong (b)
    only_b: int      # A wrong, B right (c)
    neither: int

    @property
    def n(self) -> int:
        return self.both + self.only_a + self.only_b + self.neither


def paired_counts(a: Sequence[bool], b: Sequence[bool]) -> PairedCounts:
    """The 2x2 table of two models' outcomes on the same items (same order)."""
    if len(a) != len(b):
        raise ValueError(f"paired outcomes differ in length: {len(a)} vs {len(b)}")
    x, y = np.asarray(a, dtype=bool), np.asarray(b, dtype=bool)
    return PairedCounts(int(np.sum(x & y)), int(np.sum(x & ~y)), int(np.sum(~x & y)), int(np.sum(~x & ~y)))


def wilson_interval(k: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval for k successes in n trials; (0, 1) when n == 0."""
    if n <= 0:
        return 0.0, 1.0
    if not 0 <= k <= n:
        raise ValueError(f"successes must be in [0, {n}], got {k}")
    p = k / n
    z2 = z * z
    denom = 1.0 + z2 / n
    center = (p + z2 / (2 * n)) / denom
    half = z / denom * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n))
    lo = 0.0 if k == 0 else max(0.0, center - half)   # exact at the edges (no rounding residue)
    hi = 1.0 if k == n else min(1.0, center + half)
    return lo, hi


def cohens_h(p1: float, p2: float) -> float:
    """Cohen's h = 2 asin(sqrt p1) - 2 asin(sqrt p2); positive when p1 > p2."""
    for p in (p1, p2):
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"proportions must be in [0, 1], got {p}")
    return 2.0 * math.asin(math.sqrt(p1)) - 2.0 * math.asin(math.sqrt(p2))


def bh_adjust(pvalues: Sequence[float]) -> list[float]:
    """Benjamini-Hochberg adjusted p-values, in the input order."""
    p = np.asarray(pvalues, dtype=np.float64)
    if p.ndim != 1:
        raise ValueError("p-values must be a flat sequence")
    if p.size == 0:
        return []
    if np.any((p < 0) | (p > 1)) or np.any(np.isnan(p)):
        raise ValueError("p-values must be in [0, 1]")
    m = p.size
    order = np.argsort(p, kind="stable")
    scaled = p[order] * m / np.arange(1, m + 1)
    adjusted = np.minimum.accumulate(scaled[::-1])[::-1]
    out = np.empty(m)
    out[order] = np.clip(adjusted, 0.0, 1.0)
    return out.tolist()


def _calibration_arrays(confidence: Sequence[float], correct: Sequence[bool]) -> tuple[np.ndarray, np.ndarray]:
    c = np.asarray(confidence, dtype=np.float64)
    y = np.asarray(correct, dtype=np.float64)
    if c.shape != y.shape or c.ndim != 1:
        raise ValueError(f"confidence and correct must be flat and equal in length: {c.shape} vs {y.shape}")
    if np.any((c < 0) | (c > 1)) or np.any(np.isnan(c)):
        raise ValueError("confidences must be in [0, 1]")
    return c, y


def expected_calibration_error(confidence: Sequence[float], correct: Sequence[bool], bins: int = 10) -> float:
    """ECE over `bins` equal-width bins of (0, 1]; 0 for no items."""
    if bins < 1:
        raise ValueError(f"bins must be >= 1, got {bins}")
    c, y = _calibration_arrays(confidence, correct)
    if c.size == 0:
        return 0.0
    idx = np.clip(np.ceil(c * bins).astype(np.int64) - 1, 0, bins - 1)
    total = 0.0
    for b in np.unique(idx):
        sel = idx == b
        total += sel.sum() / c.size * abs(y[sel].mean() - c[sel].mean())
    return float(total)


def brier_score(confidence: Sequence[float], correct: Sequence[bool]) -> float:
    """Mean of (confidence - outcome)^2; 0 for no items."""
    c, y = _calibration_arrays(confidence, correct)
    return float(np.mean((c - y) ** 2)) if c.size else 0.0
