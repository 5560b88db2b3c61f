"""CT number (HU) → mass density (g/mL).

Piecewise-linear calibration of Schneider, Bortfeld & Schlegel, "Correlation between CT numbers and
tissue parameters needed for Monte Carlo simulations of clinical dose distributions",
Phys. Med. Biol. 45 (2000) 459–478, in the node form distributed with the Geant4 DICOM example
(``CT2Density.dat``, the same nodes used by GATE's ``Schneider2000DensitiesTable``):
air → lung → adipose/soft tissue → (discontinuity at 100/101 HU) soft-tissue/bone mixtures.
The calibration is scanner-specific in principle; it is a documented generic curve, adequate for the
density correction of dose-kernel convolution (a 5 % density error gives a ~5 % local dose error only
where the correction is applied, i.e. mainly in lung and bone).
"""
from __future__ import annotations

import numpy as np

# (HU, g/cm^3) nodes — Schneider et al. 2000, as tabulated in Geant4 examples/extended/medical/DICOM
# CT2Density.dat. Linear interpolation between nodes; the last segment is extrapolated above 3000 HU.
_HU_NODES = np.array([-1000.0, -98.0, -97.0, 14.0, 23.0, 100.0, 101.0, 1600.0, 3000.0])
_DENSITY_NODES_G_ML = np.array([0.00121, 0.93, 0.930486, 1.03, 1.031, 1.1199, 1.0762, 1.9642, 2.8])

DENSITY_MIN_G_ML = 0.001
DENSITY_MAX_G_ML = 3.0


def density_from_hu(hu: np.ndarray) -> np.ndarray:
    """Mass density (g/mL) of each voxel from its CT number (HU).

    Parameters
    ----------
    hu : array_like
        CT numbers (HU), any shape. Not modified.

    Returns
    -------
    numpy.ndarray
        float32 density (g/mL), same shape, clipped to [0.001, 3.0]. Non-finite HU give the
        density of air (0.001 g/mL for -inf/NaN) or the maximum (+inf).
    """
    a = np.asarray(hu, dtype=np.float64)
    rho = np.interp(a, _HU_NODES, _DENSITY_NODES_G_ML)
    slope = (_DENSITY_NODES_G_ML[-1] - _DENSITY_NODES_G_ML[-2]) / (_HU_NODES[-1] - _HU_NODES[-2])
    high = a > _HU_NODES[-1]
    if np.any(high):
        rho = np.where(high, _DENSITY_NODES_G_ML[-1] + slope * (a - _HU_NODES[-1]), rho)
    rho = np.where(np.isnan(a), DENSITY_MIN_G_ML, rho)
    return np.clip(rho, DENSITY_MIN_G_ML, DENSITY_MAX_G_ML).astype(np.float32)
