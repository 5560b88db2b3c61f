"""Time-activity curves: models, weighted least-squares fits (stated error model), AICc model selection
and time-integrated activity (TIA).

- :data:`MODELS` — name → model object (``mono_exponential``, ``bi_exponential``,
  ``tri_exponential``, ``trapezoid``).
- :func:`fit_time_activity_curve` — fit, select, integrate; returns a :class:`TacFit`.
- :func:`tiac_h` — TIA / injected activity (h).
- :func:`voxel_tia_map` / :func:`fit_voxels` — vectorised voxel-level fits (:mod:`.voxel`).
- :func:`fit_reduced` — single/two time points and the user's population priors (:mod:`.reduced`).
"""
from __future__ import annotations

from .fit import ERROR_MODELS, CandidateFit, TacFit, fit_time_activity_curve, tiac_h
from .models import EXPONENTIAL_MODELS, MODELS, TrapezoidKnots
from .reduced import DEFAULT_ORGAN_TYPES, compare_with_full, fit_reduced, organ_type
from .voxel import MODEL_CODES, fit_voxels, voxel_tia_map

__all__ = ["fit_time_activity_curve", "TacFit", "CandidateFit", "tiac_h", "MODELS",
           "EXPONENTIAL_MODELS", "TrapezoidKnots", "fit_reduced", "compare_with_full", "organ_type",
           "DEFAULT_ORGAN_TYPES", "ERROR_MODELS", "voxel_tia_map", "fit_voxels", "MODEL_CODES"]
