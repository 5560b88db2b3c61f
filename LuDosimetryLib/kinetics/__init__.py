"""Time-activity curves: models, weighted least-squares fits, AICc model selection and
time-integrated activity (TIA).

- :data:`MODELS` — name → model object (``mono_exponential``, ``bi_exponential``,
  ``tri_exponential``, ``trapezoid``).
- :func:`fit_time_activity_curve` — fit, select, integrate; returns a :class:`TacFit`.
- :func:`tiac_h` — TIA / injected activity (h).
"""
from __future__ import annotations

from .fit import CandidateFit, TacFit, fit_time_activity_curve, tiac_h
from .models import EXPONENTIAL_MODELS, MODELS, TrapezoidKnots

__all__ = ["fit_time_activity_curve", "TacFit", "CandidateFit", "tiac_h", "MODELS",
           "EXPONENTIAL_MODELS", "TrapezoidKnots"]
