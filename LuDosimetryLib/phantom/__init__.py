"""The synthetic patient: analytic anatomy, true kinetics, simulated SPECT/CT and RTSTRUCTs with truth.

:func:`write_synthetic_patient` writes a 4-time-point Lu-177 DOTATATE study (like patient 4 of the
published collection) whose activities, time-integrated activities and doses are known exactly.
"""
from __future__ import annotations

from .study import write_synthetic_patient

__all__ = ["write_synthetic_patient"]
