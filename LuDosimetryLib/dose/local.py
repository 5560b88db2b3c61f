"""Absorbed dose by local energy deposition (LDM).

``D = Ã · E / m`` in each voxel: all the energy emitted by the decays in a voxel is absorbed in that voxel,
with ``m = ρ·V``. Electrons only by default (their range ≤ 2 mm for Lu-177, shorter than SPECT voxels);
the photon energy, which mostly leaves the voxel, is given separately by :func:`dose_ldm_photons`
(an upper bound: it assumes all photon energy absorbed locally). Energies per decay: ICRP 107
(:mod:`LuDosimetryLib.radionuclides`).

In gas (below :data:`~LuDosimetryLib.dose.media.GAS_MAX_G_ML`) no energy is absorbed where it is emitted:
the mass is water's there (a Bragg–Gray cavity, :mod:`.media`). Outside the body outline (``body_mask``)
the dose is 0.
"""
from __future__ import annotations

import numpy as np

from ..radionuclides import MEV_TO_J
from .convolve import check_density, check_tia
from .kernels import NuclideLike, resolve_nuclide, validate_spacing
from .media import electron_density_g_ml, outside_to_zero

_WATER_G_ML = 1.0  # density of the medium of local deposition where there is no CT, and in gas


def _local(tia_bq_s, spacing_mm, density_g_ml, energy_mev: float, body_mask=None) -> np.ndarray:
    a = check_tia(tia_bq_s)
    h = validate_spacing(spacing_mm)
    rho = (np.float32(_WATER_G_ML) if density_g_ml is None else
           electron_density_g_ml(check_density(density_g_ml, a.shape), _WATER_G_ML))
    volume_ml = h[0] * h[1] * h[2] * 1e-3
    gy_per_decay_unit_rho = energy_mev * MEV_TO_J / (volume_ml * 1e-3)  # J / (kg at 1 g/mL)
    return outside_to_zero((a.astype(np.float64) * gy_per_decay_unit_rho / rho).astype(np.float32), body_mask)


def dose_ldm(tia_bq_s: np.ndarray, spacing_mm, density_g_ml=None, nuclide: NuclideLike = None, *,
             include_photons: bool = False, body_mask=None) -> np.ndarray:
    """Absorbed dose (Gy) by local deposition of the emitted energy.

    Parameters
    ----------
    tia_bq_s : numpy.ndarray
        Time-integrated activity per voxel (Bq·s = decays), (z, y, x). Not modified.
    spacing_mm : sequence of 3 floats
        Voxel spacing (x, y, z) in mm.
    density_g_ml : float or numpy.ndarray, optional
        Mass density (g/mL); default 1.0 (water).
    nuclide : str or Radionuclide, optional
        Default Lu-177.
    include_photons : bool
        Also deposit the photon energy locally (default False: electrons only).
    body_mask : numpy.ndarray, optional
        bool (z, y, x), the body outline: the dose is 0 outside it. ``None``: no outline.

    Returns
    -------
    numpy.ndarray
        float32 dose (Gy), same shape.
    """
    nuc = resolve_nuclide(nuclide)
    energy = nuc.electron_energy_mev + (nuc.photon_energy_mev if include_photons else 0.0)
    return _local(tia_bq_s, spacing_mm, density_g_ml, energy, body_mask)


def dose_ldm_photons(tia_bq_s: np.ndarray, spacing_mm, density_g_ml=None,
                     nuclide: NuclideLike = None) -> np.ndarray:
    """Dose (Gy) if all photon energy were absorbed in the emitting voxel (upper bound of the photon part).

    Same parameters as :func:`dose_ldm`; ``dose_ldm(..., include_photons=True)`` equals
    ``dose_ldm(...) + dose_ldm_photons(...)``.
    """
    nuc = resolve_nuclide(nuclide)
    return _local(tia_bq_s, spacing_mm, density_g_ml, nuc.photon_energy_mev)
