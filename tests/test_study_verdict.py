"""convit study's verdict: pooled paired intervals on results whose answer is known, the test split's
noise from per-image files (or its absence named), every arm against ConViT, the sentence (never
more than the intervals support), results.csv, and the report page."""

from __future__ import annotations

import csv
import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from convit.study.outcomes import TEST_CORRECT_FILE
from convit.study.plan_schema import Plan
from convit.study.records import StudyRecord
from convit.study.report import write_report
from convit.study.verdict import compare, sentence, write_csv


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


def test_interval_of_known_paired_differences_pools_the_seed_variance():
    # 5, 7, 6 at one size and 1, 3 at another: pooled variance (2 + 2) / 3, df 3
    comps = compare(_records({50: [5.0, 7.0, 6.0], 100: [1.0, 3.0]}))
    (c,) = comps
    s50, s100 = c.sizes
    assert s50.n == 3 and s50.mean == pytest.approx(6.0)
    assert s50.differences == pytest.approx([5.0, 7.0, 6.0])  # paired: the seed offsets cancel
    assert c.seed_df == 3 and c.seed_sd == pytest.approx(math.sqrt(4 / 3))
    half = stats.t.ppf(0.975, 3) * math.sqrt(4 / 3 / 3)
    assert s50.direct.high - 6.0 == pytest.approx(half) and s50.direct.clear
    assert c.test_part == "seeds only"


def test_two_seeds_at_four_sizes_resolve_a_consistent_gain():
    # our CIFAR-10 sweep: ConViT ahead at every size and seed by 2.6 to 6.5 points
    recs = _records({50: [3.97, 3.28], 100: [4.06, 5.5], 250: [4.65, 6.53], 1000: [2.68, 2.59]})
    (c,) = compare(recs)
    assert all(s.direct.clear for s in c.sizes) and c.average.clear
    text = sentence([c])
    assert text.startswith("ConViT is ahead of DeiT at every size from 50 to 1000 images per class, +4.")
    assert "(2 seeds, 4 sizes; 95% intervals over seeds" in text


def test_sentence_says_equivalent_when_narrow_and_no_clear_difference_when_wide():
    narrow = sentence(compare(_records({50: [0.2, -0.1, 0.3, 0.0], 500: [-0.2, 0.1, 0.0, 0.2]})))
    assert narrow.startswith("ConViT and DeiT are within ±") and "of each other from 50 to 500" in narrow
    wide = sentence(compare(_records({20: [4.0, -3.0], 40: [-5.0, 6.0]})))
    assert wide.startswith("No clear difference between ConViT and DeiT from 20 to 40 images per class")
    assert ", width " in wide


def test_identical_runs_get_no_zero_width_interval(tmp_path: Path):
    # both arms right on exactly the same images in every run: no noise can be estimated
    recs = _records({10: [0.0, 0.0], 40: [0.0, 0.0]})
    for r in recs:
        (tmp_path / r.name).mkdir(parents=True, exist_ok=True)
        np.save(tmp_path / r.name / TEST_CORRECT_FILE, np.arange(20) < 14)
    (c,) = compare(recs, runs=tmp_path)
    text = sentence([c])
    assert "within ±0.0" not in text and "no spread over seeds or test images" in text
    assert text.startswith("ConViT minus DeiT is +0.0 points from 10 to 40 images per class in every run")


def test_one_seed_claims_nothing_and_unpaired_runs_are_left_out():
    recs = _records({30: [3.0]})
    recs.append(StudyRecord("convit-f300-s0", "trained", "convit", 3.0, 300, 0, top1=90.0))  # no DeiT partner
    (c,) = compare(recs)
    assert [s.images_per_class for s in c.sizes] == [30]
    assert "no interval" in sentence([c]) and not c.average.known
    assert c.average.estimate == pytest.approx(3.0) and "nan" not in sentence([c])
    assert sentence([]).startswith("No verdict yet")


def test_every_arm_is_compared_with_convit_bonferroni_adjusted():
    recs = _records({10: [4.0, 5.0, 4.5], 40: [3.0, 3.5, 2.5]})
    recs += [
        dataclasses.replace(r, variant="resnet", name=r.name.replace("deit", "resnet"), top1=r.top1 - 0.1 * i)
        for i, r in enumerate(recs)
        if r.variant == "deit"
    ]
    comps = compare(recs, ("convit", "deit", "resnet"))
    assert [c.arm for c in comps] == ["deit", "resnet"] and all(c.comparisons == 2 for c in comps)
    assert comps[0].average.level == pytest.approx(0.975)
    one = compare(recs, ("convit", "deit"))[0]
    assert comps[0].average.half_width > one.average.half_width
    text = sentence(comps)
    assert "ahead of DeiT" in text and "ahead of ResNet" in text and "Bonferroni for 2 comparisons" in text


def _outcome_files(runs: Path, recs, images: int = 400, seed: int = 0, skip: str = "") -> None:
    """test_correct.npy for every run, its accuracy its top-1."""
    rng = np.random.default_rng(seed)
    for r in recs:
        if r.name == skip:
            continue
        (runs / r.name).mkdir(parents=True, exist_ok=True)
        np.save(runs / r.name / TEST_CORRECT_FILE, rng.random(images) < r.top1 / 100)


def test_per_image_outcomes_add_the_test_split_noise(tmp_path: Path):
    recs = _records({10: [4.0, 5.0, 4.5], 40: [3.0, 3.5, 2.5]}, base=60.0)
    _outcome_files(tmp_path, recs)
    (with_images,) = compare(recs, runs=tmp_path)
    (seeds_only,) = compare(recs)
    assert with_images.test_part == "per-image" and not with_images.missing
    assert with_images.average.half_width > seeds_only.average.half_width
    assert "over seeds and test images" in sentence([with_images])


def test_a_missing_per_image_file_is_named_and_seed_variance_used(tmp_path: Path):
    recs = _records({10: [4.0, 5.0], 40: [3.0, 3.5]})
    _outcome_files(tmp_path, recs, skip="deit-f40-s1")
    (c,) = compare(recs, runs=tmp_path)
    assert c.test_part == "seeds only" and c.missing == ["deit-f40-s1"]
    assert f"{TEST_CORRECT_FILE} missing for 1 run(s)" in sentence([c])
    (b,) = compare(recs, runs=tmp_path, test_images=10000)
    assert b.test_part == "binomial" and "test images (binomial)" in sentence([b])
    assert b.average.df > c.average.df  # a known test part adds degrees of freedom


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
