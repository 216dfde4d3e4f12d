"""Deprecated: the FD, confidence and sample-grid helpers live in `diffsolve.models.quality`; the command line is
`diffsolve evaluate`."""
import warnings

from diffsolve.models.quality import cached_samples, fd_metric, sample_model, save_grid, score, to_unit_range

warnings.warn("diffsolve.models.evaluate is deprecated: use diffsolve.models.quality (and `diffsolve evaluate`)",
              DeprecationWarning, stacklevel=2)

__all__ = ["cached_samples", "fd_metric", "sample_model", "save_grid", "score", "to_unit_range"]
