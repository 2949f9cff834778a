"""``convit study DATA``: should I use ConViT or a plain ViT (DeiT) on my images, and how much does
it matter at my data size?  One command from a folder to a verdict.

* :mod:`.inspect`  what the data is (classes, images per class, size, channels, test split)
* :mod:`.timing`   a few timed training steps on this machine, and the cost of a run
* :mod:`.plan`     ``plan.json``: matched models, sizes, seeds, epochs, the whole recipe, sized to a budget
* :mod:`.verdict`  paired differences by seed, 95% intervals, the sentence, results.csv
* :mod:`.report`   report.html
* :mod:`.runs`     the study folder: data view, one run = one ``fit`` (locked, resumable)
* :mod:`.extend`   sizes still improving on validation trained again for longer, with the budget left
* :mod:`.driver`   plan, run (any launcher of :mod:`convit.core.launch`), finish
"""

from __future__ import annotations

from .driver import describe_plan, finish_study, plan_study, run_study, train_to_convergence
from .verdict import compare, sentence

__all__ = [
    "plan_study",
    "run_study",
    "train_to_convergence",
    "finish_study",
    "describe_plan",
    "compare",
    "sentence",
]
