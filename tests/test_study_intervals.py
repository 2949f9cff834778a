"""The verdict's statistics (convit.analysis.intervals) on synthetic studies whose truth is known.

Each synthetic study has 4 sizes, a few seeds, and a test split of n images shared by every
run.  Whether a run gets image i right is a threshold on a latent normal built from an image's
difficulty (common to all runs), an arm's liking for the image (common to that arm's runs:
the part of the test split's noise that no number of seeds removes) and the run's own noise;
a run's threshold sets its expected accuracy exactly, so the true difference is known.  The
95% intervals must cover it in 93-97% of 1,000 studies in every setting.  The random numbers
are drawn once for the largest setting and read in part by the smaller ones (:class:`Draws`), and
the verdict's functions take all studies at once, so the 36 settings take seconds.

Run by hand (``python tests/test_study_intervals.py``) to print the coverage table of
docs/study.md.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np
import pytest
from scipy import stats

from convit.analysis.intervals import (
    _test_df,
    analyse,
    binomial_covariance,
    image_covariance,
    image_products,
    seed_variance,
    t_intervals,
)

SIZES = np.array([10, 30, 100, 300])
BASE = np.array([0.40, 0.50, 0.60, 0.70])  # the other arm's expected accuracy per size
DIFFICULTY, LIKING = 0.5, 0.1  # shares of the latent's variance: common to all runs, to an arm's runs
ARM_SD = 0.02  # seed noise common to both arms of a seed (the pairing removes it)
STUDIES = 1000
SEEDS, IMAGES, EFFECTS, SEED_SDS = (2, 3, 5), (150, 1000), (0.0, 2.0, 5.0), (1.0, 3.0)


@dataclass(frozen=True)
class Draws:
    """The random numbers of STUDIES synthetic studies at the largest setting (most seeds, most
    images).  A setting with fewer seeds or images reads the first ones: seeds and images are
    drawn independently, so any leading block of them is a sample of that smaller design, and
    every setting sees the same draws (common random numbers across settings)."""

    latents: np.ndarray  # (studies, sizes, seeds, 2 arms, images) standard normal, correlated as above
    arm: np.ndarray  # (studies, sizes, seeds) standard normal: the seed noise both arms share
    own: np.ndarray  # (studies, sizes, seeds) standard normal: ConViT's own seed noise


def draw(seed: int = 0, studies: int = STUDIES) -> Draws:
    """All random numbers of the simulation, drawn once."""
    rng = np.random.default_rng(seed)
    seeds = max(SEEDS)
    images = max(IMAGES)
    shape = (studies, len(SIZES), seeds, 2, images)
    own = math.sqrt(1 - DIFFICULTY - LIKING)
    z = rng.standard_normal((studies, 1, 1, 1, images), dtype=np.float32) * math.sqrt(DIFFICULTY)
    w = rng.standard_normal((studies, 1, 1, 2, images), dtype=np.float32) * math.sqrt(LIKING)
    latents = own * rng.standard_normal(shape, dtype=np.float32)
    latents += z
    latents += w
    runs = (studies, len(SIZES), seeds)
    return Draws(latents, rng.standard_normal(runs), rng.standard_normal(runs))


def _study(draws: Draws, seeds: int, images: int, effect: float, seed_sd: float):
    """Per-image differences (B, K, S, n), paired differences (B, K, S) and the accuracies of a
    batch of studies with a true difference of ``effect`` points at every size."""
    latents = draws.latents[:, :, :seeds, :, :images]
    other = BASE[None, :, None] + ARM_SD * draws.arm[..., :seeds]
    ours = other + effect / 100 + seed_sd / 100 * draws.own[..., :seeds]
    thresholds = stats.norm.ppf(np.clip(np.stack([ours, other], axis=-1), 1e-6, 1 - 1e-6))
    right = latents < thresholds[..., None].astype(np.float32)
    per_image = right[..., 0, :].astype(np.float32) - right[..., 1, :]
    top1 = 100 * (np.count_nonzero(right, axis=-1) / images)  # right.mean(-1), without a float copy
    return per_image, top1[..., 0] - top1[..., 1], top1


def simulate(draws: Draws, seeds: int, images: int, effect: float, seed_sd: float) -> dict[str, float]:
    """Coverage (%) of the per-size, fitted, average and trend intervals, and how often each
    resolves the difference (leaves out 0), over the studies of ``draws``."""
    per_image, d, _ = _study(draws, seeds, images, effect, seed_sd)
    products = image_products(per_image, np.ones(d.shape, dtype=bool))
    a = analyse(d.astype(float), image_covariance(products), SIZES, products)
    return {
        "direct": 100 * a.direct.covers(effect).mean(),
        "fitted": 100 * a.fitted.covers(effect).mean(),
        "average": 100 * a.average.covers(effect).mean(),
        "trend": 100 * a.trend.covers(0.0).mean(),
        "resolved_direct": 100 * a.direct.clear().mean(),
        "resolved_average": 100 * a.average.clear().mean(),
        "called_average": 100 * a.average.clear().mean(),  # the sentence's claim of a difference
    }


SETTINGS = list(itertools.product(SEEDS, IMAGES, EFFECTS, SEED_SDS))


def simulate_all(seed: int = 0) -> dict[tuple, dict[str, float]]:
    """Every setting's row, from one set of draws."""
    draws = draw(seed)
    return {s: simulate(draws, *s) for s in SETTINGS}


@pytest.fixture(scope="module")
def table() -> dict[tuple, dict[str, float]]:
    return simulate_all()


def test_intervals_cover_the_true_difference_in_every_setting(table):
    for setting, row in table.items():
        for key in ("direct", "fitted", "average"):
            assert 93.0 <= row[key] <= 97.0, (setting, key, row)


def test_the_pooled_statement_resolves_more_and_calls_a_null_effect_rarely(table):
    null_calls = []
    for (seeds, images, effect, sd), row in table.items():
        if effect == 5.0:
            assert row["resolved_average"] > row["resolved_direct"], (seeds, images, sd, row)
        if effect == 0.0:
            # each setting: 5% plus two Monte-Carlo standard errors of 1,000 studies (0.7 points)
            assert row["called_average"] <= 6.4, (seeds, images, sd, row)
            null_calls.append(row["called_average"])
    # all null settings together (12,000 studies, standard error 0.2 points): at most 5%
    assert np.mean(null_calls) <= 5.0, null_calls


def test_seed_variance_pools_sizes_and_skips_missing_seeds():
    d = np.array([[[1.0, 3.0, np.nan], [5.0, 6.0, 7.0]]])
    var, df = seed_variance(d)
    assert df[0] == 1 + 2 and var[0] == pytest.approx((2.0 + 2.0) / 3)
    var, df = seed_variance(np.array([[[1.0], [2.0]]]))
    assert df[0] == 0 and np.isnan(var[0])


def test_image_covariance_leaves_out_what_varies_with_the_seed():
    rng = np.random.default_rng(0)
    n = 20000
    common = rng.choice([-1.0, 0.0, 1.0], size=n, p=[0.1, 0.8, 0.1])  # the same for both seeds
    own = rng.choice([-1.0, 0.0, 1.0], size=(2, n), p=[0.15, 0.7, 0.15])
    outcomes = np.clip(common + own, -1, 1)[None, None]  # (1, 1, 2, n)
    cov = image_covariance(image_products(outcomes, np.ones((1, 1, 2), dtype=bool)))[0, 0, 0]
    x = outcomes[0, 0]
    shared = np.cov(x[0], x[1])[0, 1] * 1e4 / n
    assert cov == pytest.approx(shared, rel=1e-6)
    assert cov < 0.5 * np.var(x[0], ddof=1) * 1e4 / n  # far below one pair's McNemar variance
    one = image_covariance(image_products(outcomes[:, :, :1], np.ones((1, 1, 1), dtype=bool)))[0, 0, 0]
    assert one == pytest.approx(np.var(x[0], ddof=1) * 1e4 / n)


def _pair_products(x: np.ndarray, present: np.ndarray) -> np.ndarray:
    """image_products of one study by its definition, image by image: (n, K, K)."""
    centred = (x - x.mean(-1, keepdims=True))[:, :, None, :]  # (K, S, 1, n)
    runs = [centred[k][present[k]] for k in range(len(x))]
    out = np.empty((x.shape[-1], len(x), len(x)))
    for one, two in itertools.product(range(len(x)), repeat=2):
        if one != two or len(runs[one]) == 1:
            out[:, one, two] = (runs[one].mean(0) * runs[two].mean(0))[0]
        else:
            pairs = [a * b for i, a in enumerate(runs[one]) for j, b in enumerate(runs[one]) if i != j]
            out[:, one, one] = np.mean(pairs, axis=0)[0]
    return out


def test_the_batched_statistics_equal_the_per_study_definitions():
    rng = np.random.default_rng(1)
    outcomes = rng.integers(-1, 2, (3, 4, 3, 50)).astype(np.float32)
    mask = np.ones((3, 4, 3), dtype=bool)
    mask[0, 1, 2] = mask[1, 3, 1:] = False
    products = image_products(outcomes * mask[..., None], mask)
    for b in range(3):
        assert products[b] == pytest.approx(_pair_products(outcomes[b], mask[b]), abs=1e-6)
    g = rng.standard_normal((3, 10, 4))
    v_test = rng.uniform(0.5, 2.0, (3, 10))
    q = np.einsum("brk,bnkl,brl->brn", g, products.astype(float), g)  # each row's per-image term
    var = np.var(q, axis=-1) * 50 / 49**2 * (1e4 / 50) ** 2
    assert _test_df(g, products, v_test) == pytest.approx(2 * v_test**2 / var, rel=1e-4)


def test_binomial_covariance_is_the_independent_variance_of_two_accuracies():
    cov = binomial_covariance(np.array([[[60.0, 60.0]]]), np.array([[[50.0, np.nan]]]), 10000)
    assert cov.shape == (1, 1, 1) and cov[0, 0, 0] == pytest.approx((0.24 + 0.25) * 1e4 / 10000)


def test_t_intervals_match_scipy_and_satterthwaite():
    iv = t_intervals(np.array([2.0]), np.array([1.0]), np.array([0.0]), np.array([3]), np.inf, 0.95)
    assert iv.high[0] - 2.0 == pytest.approx(stats.t.ppf(0.975, 3))
    iv = t_intervals(np.array([0.0]), np.array([1.0]), np.array([1.0]), np.array([4]), np.inf, 0.95)
    assert iv.df[0] == pytest.approx(4 * 4) and iv.high[0] == pytest.approx(stats.t.ppf(0.975, 16) * 2**0.5)
    assert np.isnan(t_intervals(np.ones(1), np.ones(1), np.zeros(1), np.zeros(1), np.inf, 0.95).low[0])


def test_a_line_through_exact_differences_recovers_level_and_slope():
    sizes = np.array([10, 20, 40, 80])
    level = 1.0 + 0.5 * (np.log2(sizes) - np.log2(sizes).mean())
    d = level[None, :, None] + np.array([[-0.1, 0.1]])[:, None, :]  # the same spread at every size
    a = analyse(d, np.zeros((1, 4, 4)), sizes)
    assert a.average.estimate[0] == pytest.approx(1.0) and a.trend.estimate[0] == pytest.approx(0.5)
    assert a.fitted.estimate[0] == pytest.approx(level)
    assert a.seed_df[0] == 4 and a.trend.item(0).clear and a.average.item(0).clear


def coverage_table() -> str:
    """The markdown table of docs/study.md."""
    lines = [
        "| seeds | test images | effect | seed sd | per size | fitted | average | "
        "resolved: per size | resolved: average |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for s, r in simulate_all().items():
        lines.append(
            f"| {s[0]} | {s[1]} | {s[2]:g} | {s[3]:g} | {r['direct']:.1f} | {r['fitted']:.1f} | "
            f"{r['average']:.1f} | {r['resolved_direct']:.1f} | {r['resolved_average']:.1f} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    print(coverage_table())
