"""The training layer: a run's config, its data, model and recipe, the loop and its run folder.

Light on import (no torch): only :class:`FitResult` is named here; ``fit`` itself is
:func:`convit.training.fit.fit`.
"""

from .fit_result import FitResult

__all__ = ["FitResult"]
