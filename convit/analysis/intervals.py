"""The statistics of a study's verdict: intervals over seeds and test images, per size and pooled.

One comparison (ConViT minus one other arm) gives, per size k and seed s, the paired difference
``d[k, s]`` in points, measured on the one test split every run shares.  Its error has three
parts (a crossed design of seeds and test images; docs/study.md derives it):

* the seed part (training randomness, plus which images a given pair of runs happens to get
  right): it varies from seed to seed, so the spread of ``d`` over seeds measures it.  It is
  pooled over sizes (df = sum of (seeds - 1)) and shrinks like 1 / seeds;
* the test-split part common to every seed (some images favour one arm whatever the seed): it
  is the same for all seeds, so it does not shrink with seeds and the seeds' spread cannot
  see it.  Per-image outcomes measure it (:func:`image_covariance`), also across sizes, whose
  runs share the split too.

Intervals are Student's t with Satterthwaite's degrees of freedom (``scipy.stats.t``), the test
part's at most the seed part's (:func:`_capped_test_df`).  The
pooled statement is a weighted least-squares line in log(images per class), its covariance
from both parts.  Every function takes a leading batch axis (studies), so the simulation in
tests/test_study_intervals.py runs the very code the verdict runs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import numpy as np
from scipy import stats

__all__ = [
    "Interval",
    "Intervals",
    "Analysis",
    "seed_variance",
    "image_products",
    "image_covariance",
    "binomial_covariance",
    "t_intervals",
    "analyse",
]


@dataclass(frozen=True)
class Interval:
    """One estimate (points) and its two-sided interval at ``level``; low/high are NaN when there
    is no interval (no seed variance: one seed per size)."""

    estimate: float
    low: float
    high: float
    df: float
    level: float

    @property
    def known(self) -> bool:
        return not math.isnan(self.low)

    @property
    def half_width(self) -> float:
        return (self.high - self.low) / 2

    @property
    def clear(self) -> bool:
        """Whether the interval leaves out 0."""
        return self.known and (self.low > 0 or self.high < 0)


@dataclass(frozen=True)
class Intervals:
    """Estimates and their intervals, as arrays of one shape (batch first)."""

    estimate: np.ndarray
    low: np.ndarray
    high: np.ndarray
    df: np.ndarray
    level: float

    def item(self, *index: int) -> Interval:
        at = tuple(index)
        return Interval(
            float(self.estimate[at]),
            float(self.low[at]),
            float(self.high[at]),
            float(self.df[at]),
            self.level,
        )

    def covers(self, truth: np.ndarray) -> np.ndarray:
        return (self.low <= truth) & (truth <= self.high)

    def clear(self) -> np.ndarray:
        return (self.low > 0) | (self.high < 0)


@dataclass(frozen=True)
class Analysis:
    """One comparison over sizes, for a batch of studies.  ``direct``: each size from its own
    seeds (B, K); ``fitted``: each size from the line (B, K); ``average``: the line at the mean
    log size, i.e. the difference averaged over the sizes studied (B,); ``trend``: the line's
    slope per doubling of images per class (B,), None with one size."""

    direct: Intervals
    fitted: Intervals
    average: Intervals
    trend: Optional[Intervals]
    seed_var: np.ndarray  # pooled variance of one seed's difference, points^2 (B,)
    seed_df: np.ndarray  # its degrees of freedom (B,)


def seed_variance(d: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pooled within-size variance of the differences ``d`` (B, K, S; NaN: no such seed) and its
    degrees of freedom, sum over sizes of (seeds - 1).  NaN where df is 0."""
    seeds = np.sum(~np.isnan(d), axis=-1)
    centred = d - _nanmean(d)[..., None]
    ss = np.nansum(centred**2, axis=(-2, -1))
    df = np.sum(np.maximum(seeds - 1, 0), axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        var = np.where(df > 0, ss / np.maximum(df, 1), np.nan)
    return var, df


def image_products(outcomes: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Per image, what it adds to the test-split covariance of the sizes' seed means (B, n, K, K),
    points^2 per image: :func:`image_covariance` is their sum over images / (n - 1) * 1e4 / n.

    ``outcomes``: (B, K, S, n) per-image differences in correctness (ConViT right minus the other
    arm right: -1, 0, 1) on the shared n-image split; ``mask``: (B, K, S) the seeds present.
    Across two sizes: the product of their seed means (different runs share only the images).
    Within a size: the mean product of two different seeds, which leaves out what varies with
    the seed (the seed part holds that); with one seed, the pair's square (McNemar's variance,
    an upper bound).
    """
    m = mask.astype(outcomes.dtype)
    seeds = np.maximum(m.sum(-1), 1)  # (B, K)
    x = (outcomes - outcomes.mean(-1, keepdims=True)) * m[..., None]
    mean = np.swapaxes(x.sum(-2) / seeds[..., None], -1, -2)  # (B, n, K)
    prod = mean[..., :, None] * mean[..., None, :]
    squares = np.swapaxes(np.einsum("...sn,...sn->...n", x, x), -1, -2)  # (B, n, K), no x**2 in memory
    k = np.arange(prod.shape[-1])
    s = seeds[:, None, :]
    with np.errstate(invalid="ignore", divide="ignore"):
        shared = (s**2 * prod[..., k, k] - squares) / (s * (s - 1))
    prod[..., k, k] = np.where(s > 1, shared, prod[..., k, k])
    return prod


def image_covariance(products: np.ndarray) -> np.ndarray:
    """The test-split part of the seed-mean differences' covariance across sizes, points^2
    (B, K, K), from :func:`image_products`: variances below 0 are set to 0, and the matrix to
    the nearest positive semi-definite one."""
    n = products.shape[-3]
    cov = products.sum(-3) / (n - 1)
    k = np.arange(cov.shape[-1])
    cov[..., k, k] = np.maximum(cov[..., k, k], 0.0)
    return _psd(cov) * (1e4 / n)


def binomial_covariance(reference: np.ndarray, other: np.ndarray, images: int) -> np.ndarray:
    """Without per-image outcomes: the per-image variance of each size's difference from the
    accuracies alone (points, (B, K, S), NaN: no seed), as if the two models erred independently
    and all of it were common to the seeds (an upper bound on both counts), points^2 (B, K, K)
    with nothing across sizes."""
    p = reference / 100
    q = other / 100
    var = _nanmean(p * (1 - p) + q * (1 - q)) * (1e4 / images)
    return np.einsum("...k,kl->...kl", var, np.eye(var.shape[-1]))


def t_intervals(
    estimate: np.ndarray,
    var_seed: np.ndarray,
    var_test: np.ndarray,
    df_seed: np.ndarray,
    df_test: np.ndarray,
    level: float,
) -> Intervals:
    """``estimate +- t(df) * sqrt(var_seed + var_test)``, df by Satterthwaite from the seed part's
    ``df_seed`` and the test part's ``df_test`` (np.inf where it is taken as known)."""
    var = var_seed + var_test
    with np.errstate(invalid="ignore", divide="ignore"):
        test_spread = np.where(var_test > 0, var_test**2 / df_test, 0.0)
        spread = var_seed**2 / df_seed + test_spread
        df = np.where(spread > 0, var**2 / spread, np.inf)
    df = np.where(df_seed > 0, df, np.nan)
    half = stats.t.ppf(0.5 + level / 2, df) * np.sqrt(var)
    return Intervals(estimate, estimate - half, estimate + half, df, level)


def analyse(
    d: np.ndarray,
    test_cov: np.ndarray,
    sizes: np.ndarray,
    products: Optional[np.ndarray] = None,
    level: float = 0.95,
) -> Analysis:
    """Per-size, fitted, average and trend intervals of the differences ``d`` (B, K, S; NaN: no
    such seed) at ``sizes`` (K images per class), the test part's covariance ``test_cov``.  With
    the per-image ``products`` it came from, the test part's degrees of freedom are estimated
    from their spread over images; without, the test part is taken as known."""
    seed_var, seed_df = seed_variance(d)
    var_seed = seed_var[..., None] / np.sum(~np.isnan(d), axis=-1)  # (B, K)
    mean = _nanmean(d)
    kk = d.shape[-2]
    design = _design(np.log(np.asarray(sizes, dtype=float)))
    rows = np.concatenate([design, np.eye(design.shape[1])], axis=0)  # fitted sizes, level, slope
    if design.shape[1] == 2:
        rows[-1] *= math.log(2)  # per doubling
    k = np.arange(kk)
    # with one seed per size there is no seed variance: the test part alone weighs the sizes
    weights = _wls(design, np.nan_to_num(var_seed) + test_cov[..., k, k])  # (B, p, K)
    g = np.einsum("rp,bpk->brk", rows, weights)  # each row as weights on the sizes' means
    g = np.concatenate([np.broadcast_to(np.eye(kk), (len(d), kk, kk)), g], axis=1)  # sizes first
    v_test = np.einsum("brk,bkl,brl->br", g, test_cov, g)
    out = t_intervals(
        np.einsum("brk,bk->br", g, mean),
        np.einsum("brk,bk->br", g**2, var_seed),
        v_test,
        seed_df[..., None],
        _capped_test_df(g, products, v_test, seed_df),
        level,
    )
    trend = _select(out, 2 * kk + 1) if design.shape[1] == 2 else None
    return Analysis(
        _select(out, slice(0, kk)),
        _select(out, slice(kk, 2 * kk)),
        _select(out, 2 * kk),
        trend,
        seed_var,
        seed_df,
    )


def _capped_test_df(
    g: np.ndarray, products: Optional[np.ndarray], v_test: np.ndarray, seed_df: np.ndarray
) -> np.ndarray:
    """The test part's degrees of freedom: from the spread over images (:func:`_test_df`), at
    most the seed part's.  The test part is estimated from the same few runs, and a run's own
    accuracy shift moves all of its images at once, so the images are not independent evidence
    about it: the per-image spread alone overstates its precision (with 2 seeds the pooled
    statement then called a null effect in 5.5 % of simulated studies, not 5 %; docs/study.md).
    Without per-image outcomes the test part is taken as known (an upper bound, df infinite)."""
    if products is None:
        return np.full(v_test.shape, np.inf)
    return np.minimum(_test_df(g, products, v_test), seed_df[..., None])


def _test_df(g: np.ndarray, products: np.ndarray, v_test: np.ndarray) -> np.ndarray:
    """Satterthwaite's degrees of freedom of each row's test part, 2 v^2 / var(v), its sampling
    variance from the spread of the rows' per-image terms (images independent)."""
    b, n, kk, _ = products.shape
    q = _outer(g).astype(products.dtype) @ np.swapaxes(products.reshape(b, n, kk * kk), -1, -2)  # (B, R, n)
    var = np.var(q, axis=-1) * n / (n - 1) ** 2 * (1e4 / n) ** 2
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(var > 0, 2 * v_test**2 / var, np.inf)


def _outer(g: np.ndarray) -> np.ndarray:
    """Each row's weights times themselves, flattened (B, R, K * K): a row's per-image term
    g' P g is then one matrix product with the flattened per-image products P (a batched matrix
    product rather than a three-operand einsum, for the many studies of the simulation)."""
    b, r, kk = g.shape
    return (g[..., :, None] * g[..., None, :]).reshape(b, r, kk * kk)


def _nanmean(a: np.ndarray) -> np.ndarray:
    """Mean over the last axis, leaving out NaN (NaN where all are)."""
    count = np.sum(~np.isnan(a), axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.nansum(a, axis=-1) / count


def _design(x: np.ndarray) -> np.ndarray:
    """The line's design: intercept at the mean log size and slope, or the intercept alone for
    one size."""
    if len(x) < 2:
        return np.ones((len(x), 1))
    return np.stack([np.ones_like(x), x - x.mean()], axis=1)


def _wls(design: np.ndarray, var: np.ndarray) -> np.ndarray:
    """(X'WX)^-1 X'W for W = 1 / var (B, K): the coefficients as weights on the sizes' means."""
    w = 1.0 / np.maximum(var, 1e-12)
    xtw = np.einsum("kp,bk->bpk", design, w)
    return np.linalg.solve(xtw @ design, xtw)


def _psd(cov: np.ndarray) -> np.ndarray:
    """The nearest positive semi-definite matrices (negative eigenvalues set to 0): an estimated
    covariance must give no negative variance to any combination of sizes."""
    vals, vecs = np.linalg.eigh(cov)
    return (vecs * np.maximum(vals, 0.0)[..., None, :]) @ np.swapaxes(vecs, -1, -2)


def _select(iv: Intervals, at: object) -> Intervals:
    return Intervals(iv.estimate[:, at], iv.low[:, at], iv.high[:, at], iv.df[:, at], iv.level)
