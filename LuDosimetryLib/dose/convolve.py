"""Absorbed dose by dose-voxel-kernel (DVK) convolution.

``D = Ã ⊛ K``: time-integrated activity per voxel (Bq·s = decays) convolved with the dose voxel kernel
(Gy per decay), by FFT (scipy.fft rfftn/irfftn on ``next_fast_len`` padded grids, float32, all cores).

Density correction (optional): the kernel is for a homogeneous medium of density ρ_k; where the
patient density ρ differs, the dose is divided by the relative density ρ/ρ_k voxel by voxel — the
energy deposited per voxel is kept, the mass changes. This is the density-correction of kernel
convolution evaluated by Dieudonné et al., "Study of the impact of tissue density heterogeneities on
3-dimensional abdominal dosimetry: comparison between dose kernel convolution and direct Monte Carlo
methods", J. Nucl. Med. 54 (2013) 236–243; it is exact for a homogeneous medium of any density as long
as the kernel's range scaling is neglected (electron ranges ≪ voxel), and approximate at interfaces.
"""
from __future__ import annotations

from typing import Optional

import numpy as np
from scipy import fft as sfft

from ..errors import LuDosimetryError
from ..progress import as_progress
from .kernels import NuclideLike, dose_voxel_kernel, validate_spacing


def check_tia(tia_bq_s) -> np.ndarray:
    """``tia_bq_s`` as a finite, non-empty 3-D array (z, y, x); LuDosimetryError otherwise."""
    a = np.asarray(tia_bq_s)
    if a.ndim != 3:
        raise LuDosimetryError(f"time-integrated activity must be a 3-D array (z, y, x), got shape {a.shape}")
    if a.size == 0 or not np.all(np.isfinite(a)):
        raise LuDosimetryError("time-integrated activity (Bq·s) contains NaN/inf or is empty")
    return a


def check_density(density_g_ml, shape) -> np.ndarray:
    """``density_g_ml`` (a scalar or an array of ``shape``) as float32, finite and > 0; LuDosimetryError
    otherwise."""
    rho = np.asarray(density_g_ml, dtype=np.float32)
    if rho.ndim != 0 and rho.shape != tuple(shape):
        raise LuDosimetryError(f"density map shape {rho.shape} does not match the activity shape {tuple(shape)}")
    if not np.all(np.isfinite(rho)) or np.any(rho <= 0):
        raise LuDosimetryError("density (g/mL) must be finite and > 0 everywhere")
    return rho


def dose_dvk(tia_bq_s: np.ndarray, spacing_mm, *, kernel: Optional[np.ndarray] = None,
             density_g_ml=None, nuclide: NuclideLike = None, kernel_density_g_ml: float = 1.0,
             progress=None) -> np.ndarray:
    """Absorbed dose (Gy) by FFT convolution of the TIA with a dose voxel kernel.

    Parameters
    ----------
    tia_bq_s : numpy.ndarray
        Time-integrated activity per voxel (Bq·s = number of decays), (z, y, x). Not modified.
    spacing_mm : sequence of 3 floats
        Voxel spacing (x, y, z) in mm.
    kernel : numpy.ndarray, optional
        Dose voxel kernel (z, y, x), odd sizes, Gy per decay. Default
        ``dose_voxel_kernel(spacing_mm, nuclide, density_g_ml=kernel_density_g_ml)``.
    density_g_ml : float or numpy.ndarray, optional
        Mass density (g/mL) per voxel (or one value); the dose is divided by ρ/ρ_k (see module doc).
        ``None``: no correction.
    nuclide : str or Radionuclide, optional
        Radionuclide of the default kernel (Lu-177).
    kernel_density_g_ml : float
        Density the kernel was made for (g/mL), default 1.0 (water).
    progress : callable or Progress, optional
        ``progress(fraction, message)``; cancelling raises CancelledError.

    Returns
    -------
    numpy.ndarray
        float32 absorbed dose (Gy), same shape as ``tia_bq_s``.
    """
    prog = as_progress(progress)
    a = check_tia(tia_bq_s)
    h = validate_spacing(spacing_mm)
    rho = None if density_g_ml is None else check_density(density_g_ml, a.shape)
    prog.report(0.0, "dose kernel")
    if kernel is None:
        kernel = dose_voxel_kernel(h, nuclide, density_g_ml=kernel_density_g_ml)
    k = np.asarray(kernel, dtype=np.float32)
    if k.ndim != 3 or any(n % 2 == 0 for n in k.shape) or not np.all(np.isfinite(k)):
        raise LuDosimetryError(f"dose kernel must be a finite 3-D array with odd sizes, got shape {k.shape}")
    shape = [sfft.next_fast_len(n + m - 1, real=True) for n, m in zip(a.shape, k.shape)]
    prog.report(0.1, "FFT of the activity")
    fa = sfft.rfftn(a.astype(np.float32, copy=False), shape, workers=-1)
    prog.report(0.45, "FFT of the kernel")
    fa *= sfft.rfftn(k, shape, workers=-1)
    prog.report(0.6, "inverse FFT")
    full = sfft.irfftn(fa, shape, workers=-1, overwrite_x=True)
    del fa
    lo = [m // 2 for m in k.shape]
    dose = np.array(full[lo[0]:lo[0] + a.shape[0], lo[1]:lo[1] + a.shape[1], lo[2]:lo[2] + a.shape[2]],
                    dtype=np.float32)
    del full
    np.maximum(dose, 0.0, out=dose)  # FFT round-off below zero where there is no activity nearby
    if rho is not None:
        dose *= np.float32(kernel_density_g_ml) / rho
    prog.report(1.0, "dose done")
    return dose
