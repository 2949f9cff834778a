"""What a study can resolve, said before any run: the smallest ConViT-minus-DeiT difference its
verdict would call, from the size of its test split and the number of seeds.

The verdict (:mod:`convit.study.verdict`) is a paired, two-sided 95 % interval over seeds,
``mean(d) +- t(0.975, n-1) sd(d) / sqrt(n)``, with ``d = top1(ConViT) - top1(DeiT)`` per seed.
The difference it finds with about 80 % power is

    resolvable = (t(0.975, n-1) + t(0.80, n-1)) * sd_d / sqrt(n)

(the usual normal-theory approximation with Student's quantiles, ``scipy.stats.t``, in place of
the normal ones),
where ``sd_d``, the spread of one seed's difference, has two parts:

* **the test images**: the paired-binomial variance of a difference of two accuracies on the
  same ``N`` test images, ``q / N`` with ``q`` the share of images on which exactly one model
  is right.  We assume the two models err independently at the expected accuracy ``p``, so
  ``q = 2 p (1 - p)``: models trained on the same data agree more than that, so this errs on
  the side of caution.  ``p`` is taken halfway between chance and perfect,
  ``(1 + 1/K) / 2`` for ``K`` classes (nothing is known of the data before the runs);
* **the seeds**: :data:`SEED_SD`, measured on our own sweep, the sd of the paired ConViT - DeiT
  test top-1 differences between seeds 0 and 1, pooled over the four sizes (4 degrees of
  freedom) of ``docs/results/cifar10-cpu/sample-efficiency/*/*/seed{0,1}/result.json``
  (50-1,000 images per class, 10,000 test images, so it holds almost no test-image noise).
  The digits and Fashion-MNIST sweeps keep no per-seed files; their paired sds, reconstructed
  from the tables of docs/results.md, agree with this model (docs/study.md).
"""

from __future__ import annotations

import math
from typing import Optional

from scipy import stats

from .plan_schema import POWER, Power

__all__ = ["SEED_SD", "POWER", "Power", "estimate_power", "resolvable"]

#: Seed-to-seed sd of a paired ConViT - DeiT difference, points of top-1 (see the docstring).
SEED_SD = 0.87


def resolvable(seeds: int, per_seed_sd: float) -> Optional[float]:
    """The difference (points) a paired 95 % interval over ``seeds`` seeds resolves with
    :data:`POWER` power when one seed's difference varies by ``per_seed_sd``; None below 2 seeds."""
    if seeds < 2:
        return None
    df = seeds - 1
    return float((stats.t.ppf(0.975, df) + stats.t.ppf(POWER, df)) * per_seed_sd / math.sqrt(seeds))


def estimate_power(seeds: int, test_images: int, classes: int) -> Power:
    """The :class:`Power` of a study of ``seeds`` seeds on ``test_images`` test images of
    ``classes`` classes (see the module's docstring for the assumptions)."""
    p = (1.0 + 1.0 / max(1, classes)) / 2.0
    q = 2.0 * p * (1.0 - p)
    sd = math.sqrt(SEED_SD**2 + 1e4 * q / max(1, test_images))
    return Power(seeds, int(test_images), p, q, SEED_SD, sd, resolvable(seeds, sd))
