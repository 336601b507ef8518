"""Statistics of a blind review, in NumPy and the standard library (Wilson comes from eval.stats).

- `sign_test(wins_a, wins_b)`: the two-sided exact sign test on preferences. Ties are dropped;
  under H0 (no preference) each decided judgment is a fair coin, so p = min(1, 2 P[X <= min])
  for X ~ Binomial(wins_a + wins_b, 1/2): the same binomial as McNemar's exact test.
- `t_quantile(q, df)`: Student's t quantile, by bisection on the closed-form CDF for integer
  degrees of freedom (Abramowitz & Stegun 26.7.3-4): with theta = atan(t / sqrt(df)),
  P(|T| < t) = sin(theta) (1 + 1/2 cos^2 + 1*3/(2*4) cos^4 + ...) for even df and
  2/pi (theta + sin(theta) (cos + 2/3 cos^3 + ...)) for odd df.
- `mean_interval(xs)`: the mean with its t interval, mean +- t(0.975, n-1) s / sqrt(n).
- `cohens_kappa(a, b)`: agreement of two raters beyond chance, (p_o - p_e) / (1 - p_e), with
  p_e = sum_k p_a(k) p_b(k) from each rater's own category shares (Cohen 1960).
- `krippendorff_alpha(units, metric)`: agreement of any number of raters with missing values,
  1 - D_o / D_e from the coincidence matrix o_ck = sum_u (pairs c-k in unit u) / (m_u - 1)
  over the units with at least two values (Krippendorff 2011, "Computing Krippendorff's
  alpha-reliability"); `metric` is "nominal" (delta = 0 or 1) or "interval" (delta^2 = (c - k)^2).

Undefined statistics (no data, no variation) are None, never NaN.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence
from dataclasses import dataclass

import numpy as np

from iceburg_mlx.eval.stats import mcnemar_exact, wilson_interval

__all__ = ["MeanInterval", "cohens_kappa", "krippendorff_alpha", "mean_interval", "sign_test", "t_quantile",
           "wilson_interval"]


def sign_test(wins_a: int, wins_b: int) -> float:
    """Two-sided exact sign-test p-value for wins_a against wins_b (ties already dropped)."""
    return mcnemar_exact(wins_a, wins_b)


def t_abs_cdf(t: float, df: int) -> float:
    """P(|T| < t) for Student's t with integer `df` >= 1 and t >= 0."""
    theta = math.atan(t / math.sqrt(df))
    s, c2 = math.sin(theta), math.cos(theta) ** 2
    if df % 2 == 0:
        term = total = 1.0
        for k in range(1, (df - 2) // 2 + 1):
            term *= (2 * k - 1) / (2 * k) * c2
            total += term
        return s * total
    if df == 1:
        return 2 * theta / math.pi
    term = total = math.cos(theta)
    for k in range(1, (df - 3) // 2 + 1):
        term *= (2 * k) / (2 * k + 1) * c2
        total += term
    return 2 / math.pi * (theta + s * total)


def t_quantile(q: float, df: int) -> float:
    """The q-quantile (0.5 <= q < 1) of Student's t with integer `df` >= 1."""
    if not 0.5 <= q < 1 or df < 1 or int(df) != df:
        raise ValueError(f"need 0.5 <= q < 1 and an integer df >= 1, got q={q}, df={df}")
    target = 2 * q - 1          # P(|T| < t)
    lo, hi = 0.0, 1.0
    while t_abs_cdf(hi, df) < target:
        lo, hi = hi, 2 * hi
    for _ in range(200):
        mid = (lo + hi) / 2
        if t_abs_cdf(mid, df) < target:
            lo = mid
        else:
            hi = mid
        if hi - lo <= 1e-13 * max(1.0, hi):
            break
    return (lo + hi) / 2


@dataclass(frozen=True)
class MeanInterval:
    n: int
    mean: float | None
    lo: float | None      # None with fewer than 2 values
    hi: float | None

    def to_dict(self) -> dict:
        r = (lambda x: None if x is None else round(x, 4))
        return {"n": self.n, "mean": r(self.mean), "ci95": [r(self.lo), r(self.hi)]}


def mean_interval(values: Sequence[float], confidence: float = 0.95) -> MeanInterval:
    """Mean and two-sided t interval (sample standard deviation, n - 1 degrees of freedom)."""
    x = np.asarray(values, dtype=np.float64)
    n = int(x.size)
    if n == 0:
        return MeanInterval(0, None, None, None)
    mean = float(x.mean())
    if n < 2:
        return MeanInterval(1, mean, None, None)
    half = t_quantile(0.5 + confidence / 2, n - 1) * float(x.std(ddof=1)) / math.sqrt(n)
    return MeanInterval(n, mean, mean - half, mean + half)


def cohens_kappa(a: Sequence[Hashable], b: Sequence[Hashable]) -> float | None:
    """Cohen's kappa of two raters' labels on the same units (same order); None when undefined."""
    if len(a) != len(b):
        raise ValueError(f"two raters' labels differ in length: {len(a)} vs {len(b)}")
    n = len(a)
    if n == 0:
        return None
    p_o = sum(x == y for x, y in zip(a, b)) / n
    cats = set(a) | set(b)
    p_e = sum((list(a).count(k) / n) * (list(b).count(k) / n) for k in cats)
    if p_e >= 1.0:
        return None       # both raters used one and the same category throughout
    return (p_o - p_e) / (1 - p_e)


def krippendorff_alpha(units: Sequence[Sequence[Hashable]], metric: str = "nominal") -> float | None:
    """Krippendorff's alpha; each unit is the list of values its raters gave (missing ones left out)."""
    if metric not in ("nominal", "interval"):
        raise ValueError(f"metric must be nominal or interval, got {metric!r}")
    pairable = [list(u) for u in units if len(u) >= 2]
    if not pairable:
        return None
    values = sorted({v for u in pairable for v in u}, key=lambda v: (str(type(v)), v))
    index = {v: i for i, v in enumerate(values)}
    coincidence = np.zeros((len(values), len(values)))
    for u in pairable:
        counts = np.bincount([index[v] for v in u], minlength=len(values)).astype(np.float64)
        coincidence += (np.outer(counts, counts) - np.diag(counts)) / (len(u) - 1)
    if metric == "nominal":
        delta = 1.0 - np.eye(len(values))
    else:
        v = np.asarray(values, dtype=np.float64)
        delta = (v[:, None] - v[None, :]) ** 2
    n_c = coincidence.sum(axis=1)
    n = float(n_c.sum())
    d_o = float((coincidence * delta).sum()) / n
    d_e = float((np.outer(n_c, n_c) * delta).sum()) / (n * (n - 1))
    if d_e == 0.0:
        return None       # every value the same: no variation to agree on
    return 1.0 - d_o / d_e
