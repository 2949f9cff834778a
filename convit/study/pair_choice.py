"""The default arms' size: the largest ConViT/DeiT pair whose study fits the budget on this device.

A plan without ``--models`` first times the small pair (:data:`convit.study.layout.MODELS`).
The paper's pairings -- ConViT-S/DeiT-S, then ConViT-Ti/DeiT-Ti -- at the images' own
resolution (up to :data:`MAX_RES` px, for images of at least :data:`MIN_SIDE` px) are then
costed from that timing scaled by their multiply-accumulates per image: on a GPU, where a small
model is bound by overheads more than by arithmetic, that overestimates the larger pair's cost,
so the choice errs towards the smaller one.  The largest pair whose study keeps the small pair's
sizes and seeds, with at least the epochs floor at the largest size, is chosen (then timed and
sized like any other); the plan says which and why, or why the small pair stayed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Callable, Optional

from .arms import arm_gmacs, check_models, explicit_layout
from .layout import Layout, add_cnn
from .sizing import EPOCHS_FLOOR, Sizing
from .timing import Timing

__all__ = ["LADDER", "MAX_RES", "MIN_SIDE", "Choice", "larger_pair", "choose_pair"]

#: The pairs tried above the small one, largest first (the paper's pairings).
LADDER = (("convit_small", "deit_small"), ("convit_tiny", "deit_tiny"))
#: The largest resolution a default plan trains at, and the smallest images a larger pair is tried on.
MAX_RES = 224
MIN_SIDE = 32


@dataclass(frozen=True)
class Choice:
    """A larger pair's layout (None: the small pair stays) and what the plan says about it."""

    layout: Optional[Layout]
    why: Optional[str]


def _scaled(timing: Timing, ratio: float) -> Timing:
    """``timing`` with every arm's per-image cost multiplied by ``ratio``."""
    return Timing(
        {k: v * ratio for k, v in timing.train_s.items()},
        {k: v * ratio for k, v in timing.eval_s.items()},
        timing.load_s,
        timing.startup_s,
        dict(timing.params),
    )


def _keeps(base: Sizing, sizing: Sizing) -> bool:
    """Whether a study keeps ``base``'s sizes and seeds, with at least the epochs floor."""
    sizes = [lv.images_per_class for lv in sizing.levels]
    top = max(sizing.levels, key=lambda lv: lv.images_per_class)
    same = sizes == [lv.images_per_class for lv in base.levels]
    return same and sizing.seeds >= base.seeds and top.epochs >= EPOCHS_FLOOR


def larger_pair(
    size: Sequence[int],
    shape: tuple[int, int],
    small: Layout,
    timing: Timing,
    base: Sizing,
    size_for: Callable[[Timing], Sizing],
) -> Choice:
    """The largest pair of :data:`LADDER` whose study, costed from the small pair's ``timing``
    (``small``, sized ``base``) by GMACs, keeps ``base``'s sizes and seeds (``size_for`` sizes a
    timing within the budget, a ValueError when nothing fits); ``shape``: channels, classes."""
    side = min(size)
    if side < MIN_SIDE:
        return Choice(None, None)
    res = min(side, MAX_RES)
    small_gmacs = arm_gmacs(small.archs["convit"], small.resolution, *shape)
    tried = []
    for convit, deit in LADDER:
        layout = explicit_layout(check_models([convit, deit]), res)
        ratio = arm_gmacs(layout.archs["convit"], res, *shape) / small_gmacs
        try:
            fits = _keeps(base, size_for(_scaled(timing, ratio)))
        except ValueError:
            fits = False
        if fits:
            layout.cnn = small.cnn
            why = (
                f"models: {convit} / {deit} at {res} px, the largest pair whose study keeps the "
                f"sizes and seeds within the budget (costed at {ratio:.0f}x the small pair's time per image)"
            )
            return Choice(layout, why)
        tried.append(f"{convit} at {res} px would cost {ratio:.0f}x")
    why = "models: the small pair, since larger ones do not fit the budget with these sizes and seeds"
    return Choice(None, f"{why} ({'; '.join(tried)})")


Arms = tuple[Layout, Timing, Sizing, Optional[str]]


def choose_pair(
    size: Sequence[int],
    shape: tuple[int, int],
    small: Arms,
    *,
    size_arms: Callable[[Timing], tuple[Sizing, Timing, Optional[str]]],
    time_arms: Callable[[Layout], Timing],
) -> Arms:
    """The plan's arms: ``small`` (the small pair's layout, timing, sizing and CNN note), or the
    larger pair :func:`larger_pair` chooses, with the CNN arm resized to it, timed (``time_arms``)
    and sized (``size_arms``); the choice's reason is added to the layout's notes."""
    layout, timing, sizing, left_out = small
    grown = larger_pair(size, shape, layout, timing, sizing, lambda t: size_arms(t)[0])
    if grown.layout is not None:
        layout = grown.layout
        add_cnn(layout, shape, optional=True)
        timing = time_arms(layout)
        sizing, timing, left_out = size_arms(timing)
    if grown.why:
        layout.notes.append(grown.why)
    return layout, timing, sizing, left_out
