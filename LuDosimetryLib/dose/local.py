"""Absorbed dose by local energy deposition (LDM).

``D = Ã · E / m`` in each voxel: all the energy emitted by the decays in a voxel is absorbed in that voxel,
with ``m = ρ·V``. Electrons only by default (their range ≤ 2 mm for Lu-177, shorter than SPECT voxels);
the photon energy, which mostly leaves the voxel, is given separately by :func:`dose_ldm_photons`
(an upper bound: it assumes all photon energy absorbed locally). Energies per decay: ICRP 107
(:mod:`LuDosimetryLib.radionuclides`).
"""
from __future__ import annotations

import numpy as np

from ..radionuclides import MEV_TO_J
from .convolve import check_density, check_tia
from .kernels import NuclideLike, resolve_nuclide, validate_spacing


def _local(tia_bq_s, spacing_mm, density_g_ml, energy_mev: float) -> np.ndarray:
    a = check_tia(tia_bq_s)
    h = validate_spacing(spacing_mm)
    rho = np.float32(1.0) if density_g_ml is None else check_density(density_g_ml, a.shape)
    volume_ml = h[0] * h[1] * h[2] * 1e-3
    gy_per_decay_unit_rho = energy_mev * MEV_TO_J / (volume_ml * 1e-3)  # J / (kg at 1 g/mL)
    return (a.astype(np.float64) * gy_per_decay_unit_rho / rho).astype(np.float32)


def dose_ldm(tia_bq_s: np.ndarray, spacing_mm, density_g_ml=None, nuclide: NuclideLike = None, *,
             include_photons: bool = False) -> np.ndarray:
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

    Returns
    -------
    numpy.ndarray
        float32 dose (Gy), same shape.
    """
    nuc = resolve_nuclide(nuclide)
    energy = nuc.electron_energy_mev + (nuc.photon_energy_mev if include_photons else 0.0)
    return _local(tia_bq_s, spacing_mm, density_g_ml, energy)


def dose_ldm_photons(tia_bq_s: np.ndarray, spacing_mm, density_g_ml=None,
                     nuclide: NuclideLike = None) -> np.ndarray:
    """Dose (Gy) if all photon energy were absorbed in the emitting voxel (upper bound of the photon part).

    Same parameters as :func:`dose_ldm`; ``dose_ldm(..., include_photons=True)`` equals
    ``dose_ldm(...) + dose_ldm_photons(...)``.
    """
    nuc = resolve_nuclide(nuclide)
    return _local(tia_bq_s, spacing_mm, density_g_ml, nuc.photon_energy_mev)
