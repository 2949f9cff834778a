"""Small-scale reproductions of the ConViT paper's experiments (sample efficiency, ablations).

* :mod:`.grids`   -- the comparisons (variants); the scales they run at (``--preset``) are
  :data:`convit.core.presets.EXPERIMENT_SCALES`;
* :mod:`.runner`  -- a resumable sweep of training runs, one folder per run;
* :mod:`.summary` -- mean +- std over seeds, relative gains over DeiT, locality series and curves;
* :mod:`.figures` -- the sweep's figures;
* :mod:`.results` -- its tables, and the files a sweep writes.

The ``cifar10-gpu`` scale keeps its data on the GPU (:mod:`convit.data.device`) and trains with
the same :func:`convit.training.fit.fit` (``on_device=True``).

Command line: ``convit experiment GRID --preset PRESET`` (see ``convit experiment --help``).
"""

from .grids import GRIDS, Variant, grid_variants
from .runner import RunSpec, execute_run, load_results, plan_runs, run_sweep

__all__ = [
    "GRIDS",
    "Variant",
    "grid_variants",
    "RunSpec",
    "plan_runs",
    "execute_run",
    "run_sweep",
    "load_results",
]
