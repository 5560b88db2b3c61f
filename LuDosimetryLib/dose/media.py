"""What the absorbed dose takes from the CT density: the body outline, gas, and the density that divides
the locally absorbed (electron) energy.

Body outline
------------
:func:`body_outline` is the patient's outline on the dose grid, from the CT density (never from the SPECT):
the voxels of at least :data:`BODY_THRESHOLD_G_ML` (0.5 g/mL, about -500 HU on the Schneider et al. 2000
curve of :mod:`.density`: the air/tissue edge, where a voxel is half tissue), with every enclosed cavity
filled, in each axial slice and in 3-D: the lungs, the airways and bowel gas lie inside it, the air around
the patient outside. The dose outside the outline is 0 (no absorbing matter to speak of: the SPECT counts
there are spill-over of the camera's resolution, and an energy per mass of air would be meaningless).
Without a CT there is no outline: the run says so (a named assumption in the pipeline).

Gas
---
Voxels below :data:`GAS_MAX_G_ML` are gas (air, bowel gas, airways): Schneider et al. 2000 (Phys. Med.
Biol. 45:459, table of tissue bins; GATE's ``Schneider2000MaterialsTable``) put the air/lung boundary at
-950 HU, which is 0.053 g/mL on the density curve. The electrons of Lu-177 have a CSDA range of up to
about 1.5 m in air (0.18 g/cm², NIST ESTAR), so no electron energy is absorbed where it is emitted in a gas
voxel, and a gas pocket inside the body is a Bragg–Gray cavity: its dose is the dose of the surrounding
medium times the mass collision stopping-power ratio gas/medium (Attix, *Introduction to Radiological
Physics and Radiation Dosimetry*, Wiley 1986, ch. 10; the ratio air/water is ≈ 0.88 for 0.01–0.5 MeV
electrons, ICRU Report 37, and is taken as 1 here). In gas voxels the electron dose is therefore the
kernel medium's, not divided by the gas density (:func:`electron_density_g_ml`).
"""
from __future__ import annotations

from typing import Optional

import numpy as np
from scipy import ndimage

from ..errors import LuDosimetryError
from .density import density_from_hu

#: Density (g/mL) from which a voxel belongs to the body before its cavities are filled: about -500 HU on
#: the Schneider et al. (2000) curve, the air/tissue edge (a voxel at least half tissue).
BODY_THRESHOLD_G_ML = 0.5

#: Upper density (g/mL) of gas: -950 HU, the air/lung boundary of the tissue bins of Schneider et al.
#: (2000), on the density curve of :func:`~LuDosimetryLib.dose.density.density_from_hu` (0.053 g/mL).
GAS_MAX_G_ML = float(density_from_hu(np.array(-950.0)))


def body_outline(density_g_ml: np.ndarray, threshold_g_ml: float = BODY_THRESHOLD_G_ML) -> np.ndarray:
    """The patient's outline on the grid of a CT density map (see the module docstring).

    Parameters
    ----------
    density_g_ml : numpy.ndarray
        Mass density (g/mL), (z, y, x) with z the axial slice index. Not modified.
    threshold_g_ml : float
        Density (g/mL) from which a voxel is tissue, before the cavities are filled.

    Returns
    -------
    numpy.ndarray
        bool (z, y, x): True inside the body (tissue and every cavity it encloses, in an axial slice or in
        3-D), False in the air around it.
    """
    rho = np.asarray(density_g_ml)
    tissue = rho >= threshold_g_ml
    inside = ndimage.binary_fill_holes(tissue)
    for z in range(inside.shape[0]):  # cavities open in 3-D (airways to the nose) are closed in their slice
        inside[z] = ndimage.binary_fill_holes(inside[z])
    return inside


def electron_density_g_ml(density_g_ml: np.ndarray, medium_g_ml: float) -> np.ndarray:
    """Density (g/mL) that divides the locally absorbed (electron) energy in each voxel.

    Parameters
    ----------
    density_g_ml : numpy.ndarray or float
        Mass density of each voxel (g/mL), > 0.
    medium_g_ml : float
        Density of the medium the dose is computed for (the kernel's medium; water for local deposition).

    Returns
    -------
    numpy.ndarray
        float32: the voxel's density where it is tissue or lung (≥ :data:`GAS_MAX_G_ML`), the medium's in
        gas (Bragg–Gray cavity, see the module docstring).
    """
    rho = np.asarray(density_g_ml, dtype=np.float32)
    return np.where(rho < GAS_MAX_G_ML, np.float32(medium_g_ml), rho).astype(np.float32)


def outside_to_zero(dose_gy: np.ndarray, body: Optional[np.ndarray]) -> np.ndarray:
    """``dose_gy`` with 0 outside ``body`` (in place; ``body`` None: unchanged).

    Raises
    ------
    LuDosimetryError
        ``body`` is not of the dose's shape.
    """
    if body is None:
        return dose_gy
    b = np.asarray(body, dtype=bool)
    if b.shape != dose_gy.shape:
        raise LuDosimetryError(f"body outline shape {b.shape} does not match the dose shape {dose_gy.shape}")
    dose_gy[~b] = 0.0
    return dose_gy
