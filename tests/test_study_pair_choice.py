"""The default plan's pair: the largest of the paper's pairings whose study keeps the small
pair's sizes and seeds within the budget (convit.study.pair_choice), and the plan saying why."""

from __future__ import annotations

import pytest
from conftest import write_image_folder

from convit.cli import main
from convit.study.arms import Layout
from convit.study.layout import MODELS, default_arch
from convit.study.pair_choice import choose_pair, larger_pair
from convit.study.plan_schema import Level
from convit.study.sizing import Sizing
from convit.study.timing import Timing

BASE = Sizing([Level(10, 0.1, 40, 2.0), Level(30, 0.3, 13, 1.0)], 3, 100.0)
SHAPE = (3, 10)


def _small(res: int = 32) -> Layout:
    archs = {v: default_arch(name, extra, res // 8, res) for v, (name, extra) in MODELS.items()}
    return Layout(res, res // 8, archs, True, [])


def _timing(per_image: float = 0.001) -> Timing:
    return Timing(
        {"convit": per_image, "deit": per_image}, {"convit": per_image, "deit": per_image}, 0.0, 1.0, {}
    )


def _budget(limit: float):
    """A sizing that keeps BASE while a ConViT image costs at most ``limit`` s, else fits nothing."""

    def size_for(t: Timing) -> Sizing:
        if t.train_s["convit"] > limit:
            raise ValueError("the budget is too small")
        return BASE

    return size_for


def test_the_largest_pair_that_keeps_the_sizes_and_seeds_is_chosen():
    small = _small()
    roomy = larger_pair((224, 224), SHAPE, small, _timing(), BASE, _budget(10.0))
    assert roomy.layout is not None and roomy.layout.archs["convit"]["model"] == "convit_small"
    assert roomy.layout.resolution == 224 and "convit_small / deit_small at 224 px" in roomy.why
    # room for Ti but not S (S costs about 4x Ti per image)
    ti = larger_pair((224, 224), SHAPE, small, _timing(), BASE, _budget(0.001 * 300))
    assert ti.layout is not None and ti.layout.archs["convit"]["model"] == "convit_tiny"
    tight = larger_pair((224, 224), SHAPE, small, _timing(), BASE, _budget(0.002))
    assert tight.layout is None and tight.why.startswith("models: the small pair")
    assert "convit_small at 224 px would cost" in tight.why


def test_fewer_seeds_or_sizes_keep_the_small_pair_and_small_images_are_not_tried():
    fewer = Sizing(BASE.levels, 2, 100.0)
    choice = larger_pair((64, 64), SHAPE, _small(), _timing(), BASE, lambda t: fewer)
    assert choice.layout is None
    assert larger_pair((16, 16), SHAPE, _small(16), _timing(), BASE, _budget(1e9)).why is None


def test_a_chosen_pair_gets_the_cnn_arm_resized_timed_and_sized():
    timed = []

    def time_arms(layout: Layout) -> Timing:
        timed.append(layout.archs["convit"]["model"])
        return _timing(0.01)

    fits_ti = _budget(0.001 * 120)  # Ti at 64 px costs about 50x the small pair, S about 250x
    layout, timing, sizing, note = choose_pair(
        (64, 64),
        SHAPE,
        (_small(), _timing(), BASE, None),
        size_arms=lambda t: (fits_ti(t), t, None),
        time_arms=time_arms,
    )
    assert timed == ["convit_tiny"] and layout.archs["convit"]["model"] == "convit_tiny"
    assert "resnet" in layout.archs and timing.train_s["convit"] == pytest.approx(0.01)
    assert any(n.startswith("models: convit_tiny / deit_tiny at 64 px") for n in layout.notes)


def test_a_default_plan_on_32_px_images_says_which_pair_and_plans_it(tmp_path, capsys):
    """Which pair fits a tiny folder depends on this machine's timing; the plan must say which it
    chose and why, and plan exactly that pair."""
    import json

    data = write_image_folder(tmp_path / "d", classes=("a", "b"), per_class=14, size=32, splits=("train",))
    assert main(["study", str(data), "--output", str(tmp_path / "o"), "--budget", "3m", "--dry-run"]) == 0
    out = capsys.readouterr().out
    plan = json.loads((tmp_path / "o" / "plan.json").read_text())
    model = plan["model"]["convit"]["model"]
    notes = [n for n in plan["notes"] if n.startswith("models: ")]
    assert len(notes) == 1 and notes[0] in out
    if model == "convit_digits":
        assert notes[0].startswith("models: the small pair, since larger ones do not fit")
    else:
        assert notes[0].startswith(f"models: {model} / ") and plan["model"]["resolution"] == 32
