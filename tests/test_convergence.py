"""The one definition of a converged run (convit.training.convergence), shared by the study and
the sweeps: validation top-1 gained less than max(0.5 points, one standard error) over the last
quarter of the run."""

from __future__ import annotations

import math

import pytest

from convit.training.convergence import MIN_GAIN, can_judge, check_convergence, val_curve


def test_a_flat_end_has_converged_and_a_rising_one_has_not():
    flat = [(5, 30.0), (10, 50.0), (15, 60.0), (20, 60.3)]
    check = check_convergence(flat, 5000)
    assert (
        check.converged
        and check.gain == pytest.approx(0.3)
        and (check.start_epoch, check.end_epoch) == (15, 20)
    )
    rising = [(5, 30.0), (10, 50.0), (15, 55.0), (20, 60.0)]
    assert not check_convergence(rising, 5000).converged


def test_the_threshold_is_one_standard_error_when_that_is_above_half_a_point():
    curve = [(30, 70.0), (40, 72.0)]
    check = check_convergence(curve, 100)
    se = 100 * math.sqrt(0.72 * 0.28 / 100)
    assert check.threshold == pytest.approx(se) and check.converged  # 2 points < 4.5: within noise
    assert check_convergence(curve, 100_000).threshold == MIN_GAIN
    assert not check_convergence(curve, 100_000).converged


def test_the_gain_is_from_the_start_of_the_last_quarter():
    # epoch 6 is the last evaluation at or before 3/4 of 8 epochs; the dip before does not count
    check = check_convergence([(2, 40.0), (4, 80.0), (6, 50.0), (7, 60.0), (8, 51.0)], 10_000)
    assert check.start_epoch == 6 and check.gain == pytest.approx(1.0) and not check.converged


def test_a_curve_without_a_point_before_the_last_quarter_cannot_be_judged():
    assert not can_judge([(8, 50.0)]) and not can_judge([(7, 40.0), (8, 50.0)])
    assert can_judge([(6, 40.0), (8, 50.0)])
    with pytest.raises(ValueError, match="cannot judge"):
        check_convergence([(7, 40.0), (8, 50.0)], 100)
    with pytest.raises(ValueError, match="validation images"):
        check_convergence([(6, 40.0), (8, 50.0)], 0)


def test_the_curve_comes_from_the_log_entries_with_validation():
    log = [{"epoch": 1, "train_loss": 2.0}, {"epoch": 2, "val_top1": 40.0}, {"epoch": 3, "test_top1": 9.0}]
    assert val_curve(log) == [(2, 40.0)]
