"""Conjugate-view activity: geometric mean, attenuation and source self-attenuation, counts → Bq.

For a source of activity A at depth d along a ray through a patient of μ line integral μL (the anterior and
posterior detectors at either end), the photopeak (primary) counts are I_A = k·A·e^(−μd) and
I_P = k·A·e^(−μ(L−d)), so that

    A = √(I_A·I_P) / √T · f / k,        T = e^(−∫μ dl)   (transmission through the whole patient)

independently of the depth (Sorenson 1974; MIRD Pamphlet No. 16, Siegel J.A. et al., J Nucl Med
1999;40:37S–61S, eq. 5). k is counts per Bq: the planar sensitivity S (cps/MBq per head, for a source in
air) times the time each point is imaged. f corrects a source extended along the ray: for activity spread
uniformly over a thickness t, f = (μt/2) / sinh(μt/2) (MIRD 16, eq. 5). Where the depth profile of the
activity along the ray is known (a SPECT of the same session), the exact factor is
:func:`depth_profile_factor`.

The per-pixel geometric mean of Poisson counts is biased at low counts (E[√(XY)] < √(E[X]E[Y])), so
:func:`conjugate_mean` writes it as the arithmetic mean (linear, unbiased) times the ratio GM/AM of the
views smoothed with a Gaussian: the ratio carries only the depth information (GM/AM = 1/cosh(μ(L/2 − d))
for a point source), which is smooth. The sum over a region is then that of the pixel-by-pixel geometric
mean in the noise-free limit.

μ at 208 keV comes from the CT (:func:`LuDosimetryLib.recon.mumap.mu_from_hu`: bilinear HU → μ from NIST
XCOM water and ICRU cortical bone; Brown et al., Appl Radiat Isot 2008;66:1206–1212).
"""
from __future__ import annotations

from typing import Optional, Tuple

import numpy as np
from scipy.ndimage import gaussian_filter


def counts_per_bq(sensitivity_cps_per_mbq: float, imaged_s: float) -> float:
    """Counts per Bq of one view: sensitivity (cps/MBq) × time each point is imaged (s)."""
    return float(sensitivity_cps_per_mbq) * 1e-6 * float(imaged_s)


def line_integrals(mu_per_mm: np.ndarray, dy_mm: float) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """μ line integrals along axis 1 (anterior → posterior) of a (rows, y, columns) volume.

    Returns
    -------
    to_anterior, to_posterior : ndarray (rows, y, columns)
        ∫μ from each voxel centre to the anterior (low y) and the posterior face.
    total : ndarray (rows, columns)
        ∫μ through the whole volume (μL).
    """
    step = np.asarray(mu_per_mm, dtype=np.float64) * float(dy_mm)
    to_ant = np.cumsum(step, axis=1) - 0.5 * step
    to_post = np.cumsum(step[:, ::-1], axis=1)[:, ::-1] - 0.5 * step
    return to_ant, to_post, step.sum(axis=1)


def self_attenuation_factor(mu_t) -> np.ndarray:
    """f = (μt/2) / sinh(μt/2) of a source spread uniformly over μt (dimensionless; 1 for μt = 0)."""
    x = 0.5 * np.asarray(mu_t, dtype=np.float64)
    safe = np.where(x > 1e-8, x, 1.0)
    return np.where(x > 1e-8, safe / np.sinh(safe), 1.0)


def depth_profile_factor(activity: np.ndarray, mu_per_mm: np.ndarray, dy_mm: float,
                         integrals: Optional[Tuple[np.ndarray, np.ndarray, np.ndarray]] = None) -> np.ndarray:
    """The exact self-attenuation factor F of each ray for a known activity profile along it.

    F = Σ a / (√(Σ a·e^(−μd_A) · Σ a·e^(−μd_P)) / √T): what multiplies the attenuation-corrected geometric
    mean to give the ray's activity. Equal to :func:`self_attenuation_factor` for a uniform profile, 1 for a
    point source.

    Parameters
    ----------
    activity : ndarray (rows, y, columns)
        Activity (any unit, ≥ 0) along each ray.
    mu_per_mm : ndarray (rows, y, columns)
    dy_mm : float
    integrals : tuple, optional
        :func:`line_integrals` of ``mu_per_mm`` when the caller has them already.

    Returns
    -------
    ndarray (rows, columns)
        NaN where the ray holds no activity.
    """
    a = np.clip(np.asarray(activity, dtype=np.float64), 0.0, None)
    to_ant, to_post, total = integrals if integrals is not None else line_integrals(mu_per_mm, dy_mm)
    ant = (a * np.exp(-to_ant)).sum(axis=1)
    post = (a * np.exp(-to_post)).sum(axis=1)
    gm = np.sqrt(ant * post) * np.exp(0.5 * total)
    s = a.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(gm > 0, s / np.where(gm > 0, gm, 1.0), np.nan)


def conjugate_mean(anterior: np.ndarray, posterior: np.ndarray, sigma_px: float = 1.5) -> np.ndarray:
    """Geometric mean of the views (counts per pixel) as AM × (GM/AM of the smoothed views).

    Parameters
    ----------
    anterior, posterior : ndarray (rows, columns)
        Primary counts, both in the anterior orientation (the posterior flipped left-right).
    sigma_px : float
        Gaussian smoothing of the ratio (pixels); 0: the plain pixel-by-pixel geometric mean.
    """
    a = np.asarray(anterior, dtype=np.float64)
    p = np.asarray(posterior, dtype=np.float64)
    if a.shape != p.shape:
        raise ValueError(f"anterior {a.shape} and posterior {p.shape} views differ in shape")
    if sigma_px <= 0:
        return np.sqrt(np.clip(a, 0, None) * np.clip(p, 0, None))
    sa = np.clip(gaussian_filter(a, sigma_px, mode="nearest"), 0.0, None)
    sp = np.clip(gaussian_filter(p, sigma_px, mode="nearest"), 0.0, None)
    am = sa + sp
    with np.errstate(invalid="ignore", divide="ignore"):
        ratio = np.where(am > 0, 2.0 * np.sqrt(sa * sp) / np.where(am > 0, am, 1.0), 0.0)
    return 0.5 * (a + p) * ratio


def activity_image_bq(anterior: np.ndarray, posterior: np.ndarray, transmission: np.ndarray,
                      factor: np.ndarray, counts_per_bq_view: float, sigma_px: float = 1.5) -> np.ndarray:
    """Activity (Bq) of the patient column behind each pixel: GM / √T × F / k.

    Parameters
    ----------
    anterior, posterior : ndarray (rows, columns)
        Primary (scatter- and background-corrected) counts.
    transmission : ndarray (rows, columns)
        e^(−μL) through the patient (1 outside it).
    factor : ndarray (rows, columns)
        Self-attenuation factor f or F (1 for a point source).
    counts_per_bq_view : float
        Counts per Bq of one view (:func:`counts_per_bq`).
    """
    t = np.clip(np.asarray(transmission, dtype=np.float64), 1e-12, 1.0)
    return conjugate_mean(anterior, posterior, sigma_px) / np.sqrt(t) * factor / float(counts_per_bq_view)
