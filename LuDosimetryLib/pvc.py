"""Partial-volume correction of VOI activities by the geometric transfer matrix (GTM).

Rousset, Ma & Evans, "Correction for partial volume effects in PET: principle and validation",
J Nucl Med 39(5):904–911, 1998. With non-overlapping regions j (the VOIs, smaller ones carved out of
larger ones, plus the rest of the field of view as background), the observed mean in region i is
t_i = Σ_j G_ij c_j, where G_ij is the mean over region i of region j's indicator blurred by the system
point-spread function (here a 3D Gaussian of the given FWHM). Solving G c = t gives the true mean
concentrations c_j. It assumes uniform activity within each region and a known, shift-invariant PSF;
both are approximations for reconstructed SPECT (resolution recovery, depth dependence).
"""
from __future__ import annotations

import math
from typing import Dict, Mapping, Sequence

import numpy as np
from scipy.ndimage import gaussian_filter

from .errors import LuDosimetryError

FWHM_TO_SIGMA = 1.0 / (2.0 * math.sqrt(2.0 * math.log(2.0)))  # σ = FWHM / (2√(2 ln 2))

BACKGROUND = "__background__"


def gtm_concentrations(image_bq_ml: np.ndarray, regions: Mapping[str, np.ndarray], spacing_mm: Sequence[float],
                       fwhm_mm: float) -> Dict[str, float]:
    """True mean activity concentration (Bq/mL) of each region by the GTM method.

    Parameters
    ----------
    image_bq_ml : ndarray (z, y, x)
        Observed activity concentration (Bq/mL).
    regions : mapping name → bool ndarray (z, y, x)
        Non-overlapping regions. Everything else becomes the background region ``"__background__"``.
    spacing_mm : (x, y, z)
        Voxel spacing (mm), SimpleITK order.
    fwhm_mm : float
        FWHM of the (Gaussian) system PSF in the image (mm).

    Returns
    -------
    dict name → Bq/mL (the background included).
    """
    if fwhm_mm <= 0:
        raise LuDosimetryError(f"PSF FWHM must be positive, got {fwhm_mm} mm")
    names = [n for n in regions if np.any(regions[n])]
    union = np.zeros(image_bq_ml.shape, bool)
    masks = []
    for n in names:
        m = np.asarray(regions[n], bool)
        if np.any(union & m):
            raise LuDosimetryError(f"GTM regions overlap (region {n!r})")
        union |= m
        masks.append(m)
    background = ~union
    if background.any():
        names.append(BACKGROUND)
        masks.append(background)
    sigma_vox = [fwhm_mm * FWHM_TO_SIGMA / s for s in spacing_mm[::-1]]  # (z, y, x)
    n = len(masks)
    g = np.zeros((n, n))
    sizes = np.array([m.sum() for m in masks], float)
    for j, mj in enumerate(masks):
        blurred = gaussian_filter(mj.astype(np.float32), sigma_vox, mode="constant")
        for i, mi in enumerate(masks):
            g[i, j] = float(blurred[mi].sum()) / sizes[i]
    observed = np.array([float(image_bq_ml[m].mean()) for m in masks])
    conc = np.linalg.solve(g, observed)
    return dict(zip(names, conc.tolist()))


def image_fwhm_mm(system_fwhm_mm: float, voxel_mm: float) -> float:
    """Resolution (FWHM, mm) of an image whose voxels average a system blur of ``system_fwhm_mm``.

    Averaging over a voxel of width w adds a box of variance w²/12 to the Gaussian's σ²; in FWHM terms
    FWHM_image² = FWHM_system² + (2√(2 ln 2)·w/√12)². Use it when the PSF is known before pixelisation
    (e.g. a simulation, or a line-source FWHM measured on a fine grid).
    """
    box_fwhm = voxel_mm / math.sqrt(12.0) / FWHM_TO_SIGMA
    return math.sqrt(system_fwhm_mm ** 2 + box_fwhm ** 2)
