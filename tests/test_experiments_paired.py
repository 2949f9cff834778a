"""Paired comparisons of a sweep's arms (convit.experiments.paired): the study's intervals on
sweep records, checked against scipy's paired t-test where the two must agree."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from convit.experiments.paired import describe, paired_comparison
from convit.experiments.run_record import RunRecord


def _run(variant: str, size: float, seed: int, top1: float) -> RunRecord:
    return RunRecord(
        grid="g",
        preset="p",
        variant=variant,
        fraction=size / 4500,
        seed=seed,
        images_per_class=size,
        test_top1=top1,
        val_top1=top1 - 1,
    )


def test_one_size_with_a_huge_test_split_is_scipys_paired_t_interval():
    ours = [41.0, 44.5, 43.2, 42.9]
    ref = [39.0, 40.1, 41.0, 38.2]
    records = [_run("convit", 100, s, v) for s, v in enumerate(ours)]
    records += [_run("deit", 100, s, v) for s, v in enumerate(ref)]
    p = paired_comparison(records, "convit", "deit", test_images=10**12)
    scipy_ci = stats.ttest_rel(ours, ref).confidence_interval(0.95)
    (iv,) = p.per_size
    assert iv.estimate == pytest.approx(np.mean(np.subtract(ours, ref)))
    assert (iv.low, iv.high) == pytest.approx((scipy_ci.low, scipy_ci.high), rel=1e-4)
    assert p.seed_df == 3 and p.seeds == (4,) and p.trend is None


def test_the_test_split_widens_the_interval_and_the_seed_part_is_pooled_over_sizes():
    records = []
    for size, gap in ((50, 3.0), (1000, 1.0)):
        for s, noise in enumerate((0.4, -0.3, 0.1)):
            records.append(_run("convit", size, s, 50 + gap + noise))
            records.append(_run("deit", size, s, 50 - noise / 2))
    wide = paired_comparison(records, "convit", "deit", test_images=500)
    narrow = paired_comparison(records, "convit", "deit", test_images=10**12)
    assert narrow.seed_df == 4  # 2 sizes x (3 - 1)
    for w, n in zip(wide.per_size, narrow.per_size):
        assert w.estimate == pytest.approx(n.estimate) and w.half_width > n.half_width
    assert [round(iv.estimate, 6) for iv in narrow.per_size] == [3.1, 1.1]
    # the slope per doubling of images per class: -2 points over log2(20) doublings
    assert narrow.trend.estimate == pytest.approx(-2.0 / math.log2(20))
    assert narrow.average.estimate == pytest.approx(2.1)


def test_only_seeds_both_arms_ran_are_paired():
    records = [_run("convit", 100, s, 45.0 + s) for s in range(3)]
    records += [_run("deit", 100, s, 40.0 + s) for s in range(2)]
    records.append(_run("resnet", 100, 0, 48.0))
    p = paired_comparison(records, "convit", "deit")
    assert p.seeds == (2,) and p.per_size[0].estimate == pytest.approx(5.0)
    one = paired_comparison(records, "resnet", "convit")
    assert not one.per_size[0].known and describe(one.per_size[0]) == "+3.0 (no interval)"
    with pytest.raises(ValueError, match="share no size and seed"):
        paired_comparison(records, "convit", "frozen-gates")


def test_a_metric_other_than_test_top1_is_read_from_its_field():
    records = [_run("convit", 100, s, 45.0 + s) for s in range(2)]
    records += [_run("deit", 100, s, 40.0) for s in range(2)]
    p = paired_comparison(records, "convit", "deit", metric="val_top1", test_images=5000)
    assert p.metric == "val_top1" and p.per_size[0].estimate == pytest.approx(5.5)
    assert describe(p.per_size[0]).startswith("+5.5 [")
