"""Absorbed dose by dose-voxel-kernel (DVK) convolution.

``D = Ã ⊛ K``: time-integrated activity per voxel (Bq·s = decays) convolved with the dose voxel kernel
(Gy per decay), by FFT (scipy.fft rfftn/irfftn on ``next_fast_len`` padded grids, float32, all cores).

Density correction (optional), electrons and photons apart. The kernel is for a homogeneous medium of
density ρ_k; the patient's density ρ varies. The kernel is split into its electron part ``K_e`` and its
photon part ``K_γ`` (:func:`~LuDosimetryLib.dose.kernels.dose_voxel_kernel_parts`, or
:func:`~LuDosimetryLib.dose.kernels.split_kernel` for a kernel made elsewhere), and

    ``D = (ρ_k/ρ)·(Ã ⊛ K_e) + Ã ⊛ K_γ``.

- Electrons are absorbed within millimetres of the decay (locally): under charged-particle equilibrium the
  energy they deposit per voxel does not depend on the density, the mass does, so their dose scales as
  ρ_k/ρ. A uniform region of density ρ, large compared with the electron range, gets ``E_e·Ã/(ρ·V)``
  (tested). Dieudonné et al., "Study of the impact of tissue density heterogeneities on 3-dimensional
  abdominal dosimetry: comparison between dose kernel convolution and direct Monte Carlo methods",
  J. Nucl. Med. 54 (2013) 236–243, found the voxel dose difference between water-kernel convolution and
  Monte Carlo linear in ρ with a slope that follows the locally absorbed share of the emitted energy
  (−0.91 for Lu-177, −0.56 for I-131 with its penetrating photons); scaling the locally absorbed part by
  ρ_k/ρ is the correction that corresponds to it. In gas (below
  :data:`~LuDosimetryLib.dose.media.GAS_MAX_G_ML`) no electron energy is absorbed locally: a gas pocket
  is a Bragg–Gray cavity and keeps the medium's electron dose (:mod:`.media`).
- Photons deposit their energy centimetres away; the absorbed dose from a photon fluence is
  ``Ψ·μ_en/ρ`` (Attix 1986, ch. 2), whose mass energy-absorption coefficient does not depend on the
  density: the photon part is not scaled (the attenuation between source and target is the water
  kernel's, an approximation in lung and bone).

Outside the body outline (``body_mask``, :func:`~LuDosimetryLib.dose.media.body_outline`) the dose is 0.
The kernel's range is not scaled with the density (the electron range in lung is ~4× that in water):
exact in a uniform region, approximate within an electron range of an interface.
"""
from __future__ import annotations

from typing import Optional

import numpy as np
from scipy import fft as sfft

from ..errors import LuDosimetryError
from ..progress import as_progress
from .kernels import NuclideLike, dose_voxel_kernel, dose_voxel_kernel_parts, split_kernel, validate_spacing
from .media import electron_density_g_ml, outside_to_zero


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
             photon_kernel: Optional[np.ndarray] = None, body_mask: Optional[np.ndarray] = None,
             progress=None) -> np.ndarray:
    """Absorbed dose (Gy) by FFT convolution of the TIA with a dose voxel kernel.

    Parameters
    ----------
    tia_bq_s : numpy.ndarray
        Time-integrated activity per voxel (Bq·s = number of decays), (z, y, x). Not modified.
    spacing_mm : sequence of 3 floats
        Voxel spacing (x, y, z) in mm.
    kernel : numpy.ndarray, optional
        Dose voxel kernel (z, y, x), odd sizes, Gy per decay, electrons and photons. Default: the kernel
        LuDosimetry builds, ``dose_voxel_kernel(spacing_mm, nuclide, density_g_ml=kernel_density_g_ml)``.
    density_g_ml : float or numpy.ndarray, optional
        Mass density (g/mL) per voxel (or one value); the electron part of the dose is multiplied by
        ρ_k/ρ, the photon part is not (see the module doc). ``None``: no correction.
    nuclide : str or Radionuclide, optional
        Radionuclide of the default kernel and of the electron/photon split (Lu-177).
    kernel_density_g_ml : float
        Density the kernel was made for (g/mL), default 1.0 (water).
    photon_kernel : numpy.ndarray, optional
        The photon part of ``kernel`` (Gy per decay, its shape), left unscaled by the density correction;
        the rest of ``kernel`` is the electron part. Default: the built kernel's own photon part; for a
        given ``kernel``, :func:`~LuDosimetryLib.dose.kernels.split_kernel`. Used only with
        ``density_g_ml``; zeros for a kernel of electrons only.
    body_mask : numpy.ndarray, optional
        bool (z, y, x), the body outline: the dose is 0 outside it. ``None``: no outline.
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
    parts = _kernel_parts(kernel, photon_kernel, h, nuclide, kernel_density_g_ml, split=rho is not None)
    shape = [sfft.next_fast_len(n + m - 1, real=True) for n, m in zip(a.shape, parts[0].shape)]
    prog.report(0.1, "FFT of the activity")
    fa = sfft.rfftn(a.astype(np.float32, copy=False), shape, workers=-1)
    doses = []
    for i, k in enumerate(parts):
        prog.report(0.45 + 0.5 * i / len(parts), "FFT of the kernel" if len(parts) == 1 else
                    ("FFT of the kernel (electrons)", "FFT of the kernel (photons)")[i])
        doses.append(_convolved(fa, k, shape, a.shape))
    del fa
    if rho is None:
        dose = doses[0]
    else:
        electrons, photons = doses
        electrons *= np.float32(kernel_density_g_ml) / electron_density_g_ml(rho, kernel_density_g_ml)
        dose = electrons + photons
    outside_to_zero(dose, body_mask)
    prog.report(1.0, "dose done")
    return dose


def _kernel_parts(kernel, photon_kernel, h, nuclide, kernel_density_g_ml: float, split: bool):
    """``[K]`` (no split) or ``[K_e, K_γ]`` as float32, validated."""
    if kernel is None and not split:
        return [dose_voxel_kernel(h, nuclide, density_g_ml=kernel_density_g_ml).astype(np.float32)]
    if kernel is None:
        electrons, photons = dose_voxel_kernel_parts(h, nuclide, density_g_ml=kernel_density_g_ml)
    else:
        total = np.asarray(kernel, dtype=np.float64)
        if total.ndim != 3 or any(n % 2 == 0 for n in total.shape) or not np.all(np.isfinite(total)):
            raise LuDosimetryError(f"dose kernel must be a finite 3-D array with odd sizes, got shape {total.shape}")
        if not split:
            return [total.astype(np.float32)]
        if photon_kernel is None:
            electrons, photons = split_kernel(total, h, nuclide, density_g_ml=kernel_density_g_ml)
        else:
            photons = np.asarray(photon_kernel, dtype=np.float64)
            if photons.shape != total.shape or not np.all(np.isfinite(photons)):
                raise LuDosimetryError(f"photon kernel shape {photons.shape} differs from the kernel's {total.shape}"
                                       " or has NaN/inf")
            electrons = total - photons
    return [electrons.astype(np.float32), photons.astype(np.float32)]


def _convolved(fa: np.ndarray, kernel: np.ndarray, shape, out_shape) -> np.ndarray:
    """``irfft(fa · rfft(kernel))`` cropped to ``out_shape`` ('same' convolution), float32, ≥ 0."""
    prod = fa * sfft.rfftn(kernel, shape, workers=-1)
    full = sfft.irfftn(prod, shape, workers=-1, overwrite_x=True)
    del prod
    lo = [m // 2 for m in kernel.shape]
    dose = np.array(full[lo[0]:lo[0] + out_shape[0], lo[1]:lo[1] + out_shape[1], lo[2]:lo[2] + out_shape[2]],
                    dtype=np.float32)
    del full
    np.maximum(dose, 0.0, out=dose)  # FFT round-off below zero where there is no activity nearby
    return dose
