"""convit study's verdict: Student's t, paired intervals on results whose answer is known, the
sentence (never more than the seeds support), results.csv, and the report page."""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import statistics
from pathlib import Path

import pytest

from convit.study.plan_schema import Plan
from convit.study.records import StudyRecord
from convit.study.report import write_report
from convit.study.verdict import T975, compare, sentence, t975, write_csv


def _records(diffs_by_size, base=70.0):
    """ConViT and DeiT records with the given paired differences (one per seed) per size."""
    out = []
    for n, diffs in diffs_by_size.items():
        for s, d in enumerate(diffs):
            deit = base + s  # seeds differ a lot; the pairing must remove that
            for v, top1 in (("convit", deit + d), ("deit", deit)):
                out.append(
                    StudyRecord(
                        name=f"{v}-f{n}-s{s}",
                        status="trained",
                        variant=v,
                        fraction=n / 100,
                        images_per_class=n,
                        seed=s,
                        top1=top1,
                        epochs=10,
                        seconds=1.0,
                        attempts=1,
                        locality={"gates": [[0.9, 0.8]], "nonlocality": [[1.0, 2.0], [3.0, None]]},
                    )
                )
    return out


def test_t_quantiles_are_exact_for_small_n_and_close_beyond_the_table():
    assert t975(1) == pytest.approx(12.7062, abs=1e-4) and t975(2) == pytest.approx(4.3027, abs=1e-4)
    assert t975(9) == pytest.approx(2.2622, abs=1e-4) and len(T975) == 30
    for df, exact in ((40, 2.021075), (60, 2.000298), (120, 1.979930)):
        assert t975(df) == pytest.approx(exact, abs=2e-4)
    with pytest.raises(ValueError):
        t975(0)


def test_interval_of_known_paired_differences():
    # differences 5, 7, 6: mean 6, sd 1, n 3 -> half width t(0.975, 2) / sqrt(3)
    (c,) = compare(_records({50: [5.0, 7.0, 6.0]}))
    assert c.n == 3 and c.mean == pytest.approx(6.0)
    assert c.half_width == pytest.approx(4.302653 / math.sqrt(3))
    assert c.clear
    assert c.differences == pytest.approx([5.0, 7.0, 6.0])  # paired: the seed offsets cancel


def test_sentence_says_ahead_behind_or_no_clear_difference():
    recs = _records({50: [6.0, 7.0, 5.0, 6.5], 500: [1.0, -1.0, 0.5, -0.2], 5000: [-3.0, -3.2, -2.8, -3.1]})
    text = sentence(compare(recs))
    assert text.startswith("ConViT is ahead by 6.1 ± ") and " points at 50 images per class" in text
    assert "no clear difference at 500 (+0.1 ± " in text
    assert "ConViT is behind by 3.0 ± " in text and "at 5000" in text
    assert text.endswith("(4 seeds; paired differences, 95% interval).")


def test_two_seeds_that_disagree_give_no_clear_difference():
    # +4 and +1: mean 2.5, sd 2.12, t(1) = 12.7 -> +-19.1: the seeds do not support a claim
    (c,) = compare(_records({20: [4.0, 1.0]}))
    assert not c.clear and c.half_width == pytest.approx(12.706205 * statistics.stdev([4, 1]) / math.sqrt(2))
    assert sentence([c]).startswith("No clear difference at 20 images per class (+2.5 ± 19.1)")


def test_one_seed_claims_nothing_and_unpaired_runs_are_left_out():
    recs = _records({30: [3.0]})
    recs.append(StudyRecord("convit-f300-s0", "trained", "convit", 3.0, 300, 0, top1=90.0))  # no DeiT partner
    comps = compare(recs)
    assert [c.images_per_class for c in comps] == [30]
    assert "no interval" in sentence(comps) and "too few seeds" in sentence(comps)
    assert sentence([]).startswith("No verdict yet")


def test_results_csv_has_one_row_per_run(tmp_path: Path):
    recs = _records({10: [1.0, 2.0], 40: [0.5, 0.0]})
    path = write_csv(recs, tmp_path / "results.csv")
    rows = list(csv.DictReader(path.open()))
    assert len(rows) == 8
    assert list(rows[0])[:7] == [
        "variant",
        "fraction",
        "images_per_class",
        "seed",
        "top1",
        "epochs",
        "seconds",
    ]
    assert {(r["variant"], r["images_per_class"], r["seed"]) for r in rows} == {
        (v, str(n), str(s)) for v in ("convit", "deit") for n in (10, 40) for s in (0, 1)
    }


def test_report_shows_the_sentence_every_seed_and_the_gates(tmp_path: Path):
    recs = _records({10: [4.0, 5.0], 40: [1.0, -1.0]})
    comps = compare(recs)
    plan = Plan.from_json(
        json.loads((Path(__file__).parent / "fixtures" / "study_plan_v1" / "folder_plan.json").read_text())
    )
    plan.data = dataclasses.replace(plan.data, name="pets & co")
    page = write_report(tmp_path / "report.html", recs, comps, sentence(comps), plan).read_text()
    assert sentence(comps) in page and "pets &amp; co" in page
    assert page.count("data:image/png;base64,") == 1
    assert "0.85" in page  # the mean gate of the GPSA layer
    assert "convit-f10-s1" in page and "deit-f40-s0" in page
