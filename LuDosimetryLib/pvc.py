"""Partial-volume correction of VOI activities by the geometric transfer matrix (GTM), and of the image by
the region-based voxel-wise method (RBV).

GTM: Rousset, Ma & Evans, "Correction for partial volume effects in PET: principle and validation",
J Nucl Med 39(5):904–911, 1998. With non-overlapping regions j (the VOIs, smaller ones carved out of
larger ones, plus the rest of the field of view as background), the observed mean in region i is
t_i = Σ_j G_ij c_j, where G_ij is the mean over region i of region j's indicator blurred by the system
point-spread function (here a 3D Gaussian of the given FWHM). Solving G c = t gives the true mean
concentrations c_j. It assumes uniform activity within each region and a known, shift-invariant PSF;
both are approximations for reconstructed SPECT (resolution recovery, depth dependence).

Background: the rest of the field of view is not one uniform region. Inside the body it holds tissue
activity, outside it (air) next to none; taken as one region its mean mixes the two and the model's
spill-in to the VOIs is wrong (a 20 Bq/mL sphere in a 2 Bq/mL body comes back 20.7). Given the body
outline, the background is two regions, :data:`BODY_BACKGROUND` and :data:`AIR_BACKGROUND`; without one it
is :data:`BACKGROUND` (the caller says so).

RBV: Thomas et al., "The importance of appropriate partial volume correction for PET quantification in
Alzheimer's disease", Eur J Nucl Med Mol Imaging 38(6):1104–1119, 2011 (eq. 3). The image is corrected
voxel by voxel with the GTM concentrations, ``f_corr(x) = f(x) · c_r(x) / Σ_j c_j (1_j ⊗ h)(x)``, r(x) the
region of voxel x: the activity a VOI lost to its surroundings (spill-out) is taken back from them, so a
map built on the corrected image does not hold the same activity twice (recovered in the VOI and still in
its halo). Where the model holds (uniform regions, the right PSF) each region's corrected total is c_r·|r|.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
from scipy.ndimage import gaussian_filter

from .errors import LuDosimetryError

FWHM_TO_SIGMA = 1.0 / (2.0 * math.sqrt(2.0 * math.log(2.0)))  # σ = FWHM / (2√(2 ln 2))

#: The rest of the field of view, when no body outline is given.
BACKGROUND = "__background__"
#: The rest of the body (inside the outline, outside every VOI).
BODY_BACKGROUND = "__background_body__"
#: Outside the body outline and every VOI.
AIR_BACKGROUND = "__background_air__"


@dataclass
class GtmCorrection:
    """What :func:`gtm_correction` gives.

    Attributes
    ----------
    concentrations_bq_ml : dict name → float
        GTM mean concentration (Bq/mL) of every non-empty region, the background region(s) included.
    corrected_bq_ml : ndarray (z, y, x) float32
        The image corrected voxel by voxel (RBV, Bq/mL).
    """

    concentrations_bq_ml: Dict[str, float]
    corrected_bq_ml: np.ndarray


def _with_background(regions: Mapping[str, np.ndarray], shape,
                     body: Optional[np.ndarray]) -> Tuple[List[str], List[np.ndarray]]:
    """Names and bool masks of the non-empty regions, then of the background region(s)."""
    names, masks = [], []
    union = np.zeros(shape, bool)
    for n, m in regions.items():
        m = np.asarray(m, bool)
        if m.shape != tuple(shape):
            raise LuDosimetryError(f"GTM region {n!r} has shape {m.shape}, the image {tuple(shape)}")
        if not m.any():
            continue
        if np.any(union & m):
            raise LuDosimetryError(f"GTM regions overlap (region {n!r})")
        union |= m
        names.append(n)
        masks.append(m)
    if body is None:
        rest = {BACKGROUND: ~union}
    else:
        b = np.asarray(body, bool)
        if b.shape != tuple(shape):
            raise LuDosimetryError(f"body outline shape {b.shape} does not match the image {tuple(shape)}")
        rest = {BODY_BACKGROUND: b & ~union, AIR_BACKGROUND: ~b & ~union}
    for n, m in rest.items():
        if m.any():
            names.append(n)
            masks.append(m)
    return names, masks


def gtm_correction(image_bq_ml: np.ndarray, regions: Mapping[str, np.ndarray], spacing_mm: Sequence[float],
                   fwhm_mm: float, body: Optional[np.ndarray] = None) -> GtmCorrection:
    """GTM concentrations of the regions and the RBV-corrected image.

    Parameters
    ----------
    image_bq_ml : ndarray (z, y, x)
        Observed activity concentration (Bq/mL).
    regions : mapping name → bool ndarray (z, y, x)
        Non-overlapping regions (empty ones are left out of the result). Everything else is background.
    spacing_mm : (x, y, z)
        Voxel spacing (mm), SimpleITK order.
    fwhm_mm : float
        FWHM of the (Gaussian) system PSF in the image (mm).
    body : bool ndarray (z, y, x), optional
        The body outline: the background is split into :data:`BODY_BACKGROUND` and :data:`AIR_BACKGROUND`.
        None: one :data:`BACKGROUND` region.

    Returns
    -------
    GtmCorrection

    Raises
    ------
    LuDosimetryError
        FWHM not positive, regions overlapping or not of the image's shape, a singular transfer matrix.
    """
    if not fwhm_mm > 0:
        raise LuDosimetryError(f"PSF FWHM must be positive, got {fwhm_mm} mm")
    image = np.asarray(image_bq_ml)
    names, masks = _with_background(regions, image.shape, body)
    sigma_vox = [fwhm_mm * FWHM_TO_SIGMA / s for s in spacing_mm[::-1]]  # (z, y, x)
    blurred = [gaussian_filter(m.astype(np.float32), sigma_vox, mode="constant") for m in masks]
    sizes = np.array([m.sum() for m in masks], float)
    g = np.array([[float(bj[mi].sum()) / sizes[i] for bj in blurred] for i, mi in enumerate(masks)])
    observed = np.array([float(image[m].mean()) for m in masks])
    try:
        conc = np.linalg.solve(g, observed)
    except np.linalg.LinAlgError:
        raise LuDosimetryError(f"the GTM transfer matrix of regions {names} is singular") from None
    # RBV (Thomas et al. 2011): f · c_r(x) / Σ_j c_j (1_j ⊗ h)(x); negative GTM concentrations (noise in a
    # region of next to no activity) count as 0, so the corrected image stays ≥ 0 where the image is
    c_pos = np.clip(conc, 0.0, None)
    modelled = np.zeros(image.shape, np.float64)
    own = np.zeros(image.shape, np.float64)
    for c, m, bj in zip(c_pos, masks, blurred):
        modelled += c * bj
        own[m] = c
    ratio = np.divide(own, modelled, out=np.zeros_like(own), where=modelled > 0)
    corrected = (image.astype(np.float64) * ratio).astype(np.float32)
    return GtmCorrection(dict(zip(names, conc.tolist())), corrected)


def gtm_concentrations(image_bq_ml: np.ndarray, regions: Mapping[str, np.ndarray], spacing_mm: Sequence[float],
                       fwhm_mm: float, body: Optional[np.ndarray] = None) -> Dict[str, float]:
    """True mean activity concentration (Bq/mL) of each region by the GTM method (:func:`gtm_correction`).

    Returns
    -------
    dict name → Bq/mL
        Every non-empty region and the background region(s).
    """
    return gtm_correction(image_bq_ml, regions, spacing_mm, fwhm_mm, body).concentrations_bq_ml


def image_fwhm_mm(system_fwhm_mm: float, voxel_mm: float) -> float:
    """Resolution (FWHM, mm) of an image whose voxels average a system blur of ``system_fwhm_mm``.

    Averaging over a voxel of width w adds a box of variance w²/12 to the Gaussian's σ²; in FWHM terms
    FWHM_image² = FWHM_system² + (2√(2 ln 2)·w/√12)². Use it when the PSF is known before pixelisation
    (e.g. a simulation, or a line-source FWHM measured on a fine grid).
    """
    box_fwhm = voxel_mm / math.sqrt(12.0) / FWHM_TO_SIGMA
    return math.sqrt(system_fwhm_mm ** 2 + box_fwhm ** 2)
