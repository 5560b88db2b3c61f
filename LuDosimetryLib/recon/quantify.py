"""Counts → activity concentration (Bq/mL).

The reconstructed object of :mod:`.system` holds, per voxel, the expected counts in one view without
attenuation. With the photopeak sensitivity S (cps/MBq per head), the view duration t and the whole
acquisition lasting T, the activity at the acquisition start is

A₀ = f / (S·10⁻⁶ · t) · λT / (1 − e^{−λT}) · k_dead

(the views of a head follow one another, so the mean decay over the views is (1 − e^{−λT})/(λT));
k_dead ≥ 1 is the dead-time correction factor, 1 when the count rate loss is negligible. Dividing by the
voxel volume (mL) gives Bq/mL at the acquisition start.
"""
from __future__ import annotations

import math

import numpy as np

from ..radionuclides import radionuclide


def decay_during_acquisition(duration_s: float, nuclide: str = "Lu-177") -> float:
    """Mean over the acquisition of A(t)/A(start): (1 − e^{−λT})/(λT)."""
    lam = radionuclide(nuclide).decay_constant_per_s
    x = lam * float(duration_s)
    return (1.0 - math.exp(-x)) / x if x > 0 else 1.0


def counts_to_bq_per_ml(counts_per_view: np.ndarray, *, cps_per_mbq: float, view_duration_s: float,
                        total_duration_s: float, voxel_ml: float, dead_time_factor: float = 1.0,
                        nuclide: str = "Lu-177") -> np.ndarray:
    """Reconstructed counts per view per voxel → Bq/mL at the acquisition start (see module notes)."""
    if not (cps_per_mbq > 0 and view_duration_s > 0 and voxel_ml > 0 and dead_time_factor > 0):
        raise ValueError("calibration, view duration, voxel volume and dead-time factor must be positive")
    bq = np.asarray(counts_per_view, dtype=np.float64) / (cps_per_mbq * 1e-6 * view_duration_s)
    bq /= decay_during_acquisition(total_duration_s, nuclide)
    return (bq * dead_time_factor / voxel_ml).astype(np.float32)
