"""Scaling-law fitting (``ak.scaling``), following ../shared/DESIGN.md "Scaling laws".

* ``fit_chinchilla(N, D, loss)``: Hoffmann et al. 2022 Approach 3,
  L = E + A / N^alpha + B / D^beta, with ``compute_optimal(C)``.
* ``fit_overtraining(N, D, loss)``: Gadre et al. 2024, L = E + (a M^eta + b M^-eta) C^-eta.
* ``fit_downstream(loss, err)``: Gadre et al. 2024, Err = epsilon - k exp(-gamma L).
* ``fit_shape_law(compute, loss)``: one shape's E(C) = c + a (C + d)^-b, with ``inverse``
  and ``d_inverse`` for the adaptive schedule.

Every fit returns a ``ScalingLaw``: parameters as attributes, ``predict``, a readable repr,
``to_dict`` / ``to_json`` (``ScalingLaw.from_dict`` reads them back), ``fit_info``, and with
``n_boot > 0`` percentile bootstrap intervals (``law.intervals``, ``law.predict_interval``,
``law.interval(fn)``). Fits that do not converge emit a ``ConvergenceWarning``.
"""

from .chinchilla import ChinchillaLaw, fit_chinchilla
from .downstream import DownstreamLaw, fit_downstream
from .law import ConvergenceWarning, ScalingLaw
from .overtraining import OvertrainingLaw, fit_overtraining
from .plot import plot_fit
from .shape_law import ShapeLaw, fit_shape_law

FITS = {"chinchilla": fit_chinchilla, "overtraining": fit_overtraining, "downstream": fit_downstream,
        "shape": fit_shape_law}

__all__ = [
    "FITS",
    "ChinchillaLaw",
    "ConvergenceWarning",
    "DownstreamLaw",
    "OvertrainingLaw",
    "ScalingLaw",
    "ShapeLaw",
    "fit_chinchilla",
    "fit_downstream",
    "fit_overtraining",
    "fit_shape_law",
    "plot_fit",
]
