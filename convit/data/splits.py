"""Index selection: the stratified validation hold-out and per-class subsampling.

Both draw each class's images from its own generator, seeded by ``(seed, stream, label)``, so a
class's selection depends neither on the order classes are visited in nor on the sizes of the
other classes, and (for a fixed seed) a smaller ratio keeps a subset of what a larger one keeps.

Not replaced by ``sklearn.model_selection.train_test_split(stratify=...)``: that draws every
class from one shared random stream and rounds the per-class counts its own way (e.g. 15 instead
of 14 of a 145-image class at 0.1), so the held-out images -- and every run's results -- would
change, and its selections are not nested across fractions.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["subsample_per_class", "holdout_per_class", "check_ratio"]


def _class_permutation(indices: np.ndarray, seed: int, label: int, stream: int) -> np.ndarray:
    """Shuffle one class's (sorted) indices with a generator seeded by (seed, stream, label).

    Seeding per class makes the result independent of the order classes are visited in and
    of the other classes' sizes; taking a prefix of the permutation makes smaller ratios
    nested in larger ones for the same seed.
    """
    rng = np.random.default_rng([int(seed) % 2**63, stream, int(label) % 2**63])
    return indices[rng.permutation(len(indices))]


def check_ratio(ratio: float) -> None:
    """Raise ``ValueError`` unless ``ratio`` is in (0, 1] (NaN included in the rejects)."""
    if not (0.0 < float(ratio) <= 1.0):  # also rejects NaN
        raise ValueError(f"sampling_ratio must be in (0, 1], got {ratio!r}")


def subsample_per_class(labels: Sequence[int], ratio: float, seed: int) -> np.ndarray:
    """Sorted indices into ``labels`` keeping ``round(ratio * n_c)`` (at least 1) per class.

    Deterministic for a given ``seed``; different seeds pick different images; for a fixed
    seed the subset for a smaller ratio is contained in the one for a larger ratio.
    ``round`` is Python's (ties to even), so e.g. 0.5 of 145 images keeps 72.
    """
    check_ratio(ratio)
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise ValueError(f"labels must be one-dimensional, got shape {labels.shape}")
    kept = []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        k = max(1, int(round(float(ratio) * len(idx))))
        kept.append(_class_permutation(idx, seed, c, stream=0)[:k])
    return np.sort(np.concatenate(kept)) if kept else np.zeros(0, dtype=np.int64)


def holdout_per_class(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Split indices into (rest, held_out), holding out ``round(fraction * n_c)`` per class.

    Every class keeps at least one image in ``rest`` so that it can still be trained on.
    Uses a different random stream from :func:`subsample_per_class`.
    """
    if fraction == 0:
        return np.arange(len(labels)), np.zeros(0, dtype=np.int64)
    rest = []
    held = []
    for c in np.unique(labels):
        perm = _class_permutation(np.flatnonzero(labels == c), seed, c, stream=1)
        k = min(int(round(fraction * len(perm))), len(perm) - 1)
        held.append(perm[:k])
        rest.append(perm[k:])
    return np.sort(np.concatenate(rest)), np.sort(np.concatenate(held))
