"""Planar regions drawn by projecting the 3-D VOIs, their background, and the activity they hold.

Region of a VOI: the pixels behind which the VOI is at least ``MIN_THICKNESS_MM`` thick, less those behind
any VOI that neither contains it nor is contained in it (organs overlapping in projection, e.g. the right
kidney behind the liver, are left out of each other's region). The activity of the part left out is restored
in proportion to the VOI's thickness: A = A_region · Σ_all t / Σ_region t (the VOI's activity taken as spread
like its thickness), and the fraction used is reported.

Background (overlying and underlying tissue; Buijs W.C. et al., Nucl Med Commun 1998;19:743–751; MIRD
Pamphlet No. 16, Siegel et al. 1999): a ring around the region (``BACKGROUND_GAP_MM`` away, ``BACKGROUND_WIDTH_MM``
wide, inside the body and outside every projected VOI) gives the activity per mm of tissue b; each region pixel
loses the background of the tissue in front of and behind the VOI (L the body thickness, t the VOI's;
see :func:`region_activity`).

Self-attenuation (MIRD 16, f for a thickness;
:func:`~LuDosimetryLib.planar.conjugate.self_attenuation_factor`) is applied pixel by pixel: the VOI's for its
thickness t, the background's for the body's.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Mapping, Optional, Set

import numpy as np
from scipy.ndimage import binary_dilation

#: A pixel is in a VOI's region when the VOI is at least this thick behind it (mm).
MIN_THICKNESS_MM = 5.0
#: Gap between a region and its background ring, and the ring's width (mm).
BACKGROUND_GAP_MM = 10.0
BACKGROUND_WIDTH_MM = 20.0
#: A VOI is nested in another when at least this fraction of its voxels is inside it.
NESTED_FRACTION = 0.9


def nesting(masks: Mapping[str, np.ndarray]) -> Dict[str, Set[str]]:
    """For each VOI, the VOIs it contains or is contained in (3-D masks on one grid, ≥ 0.5 inside)."""
    inside = {n: np.asarray(m) >= 0.5 for n, m in masks.items()}
    count = {n: int(m.sum()) for n, m in inside.items()}
    out: Dict[str, Set[str]] = {n: set() for n in inside}
    names = list(inside)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            both = int(np.count_nonzero(inside[a] & inside[b]))
            if (count[a] and both >= NESTED_FRACTION * count[a]) or (count[b] and both >= NESTED_FRACTION * count[b]):
                out[a].add(b)
                out[b].add(a)
    return out


def region_masks(thickness_mm: Mapping[str, np.ndarray], nested: Mapping[str, Set[str]],
                 min_thickness_mm: float = MIN_THICKNESS_MM) -> Dict[str, np.ndarray]:
    """Each VOI's planar region (bool, rows × columns): its projection less the overlapping, non-nested VOIs'."""
    drawn = {n: np.asarray(t) >= min_thickness_mm for n, t in thickness_mm.items()}
    out = {}
    for n, m in drawn.items():
        others = [drawn[o] for o in drawn if o != n and o not in nested.get(n, set())]
        out[n] = m & ~np.any(others, axis=0) if others else m.copy()
    return out


def _disk(radius_px: float) -> np.ndarray:
    r = max(int(np.ceil(radius_px)), 1)
    y, x = np.mgrid[-r:r + 1, -r:r + 1]
    return (x * x + y * y) <= radius_px * radius_px + 1e-9


def background_ring(region: np.ndarray, excluded: np.ndarray, body: np.ndarray, pixel_mm: float,
                    gap_mm: float = BACKGROUND_GAP_MM, width_mm: float = BACKGROUND_WIDTH_MM) -> np.ndarray:
    """Pixels ``gap_mm`` to ``gap_mm + width_mm`` around ``region``, in ``body`` and outside ``excluded``."""
    near = binary_dilation(region, _disk(gap_mm / pixel_mm)) if gap_mm > 0 else region
    far = binary_dilation(region, _disk((gap_mm + width_mm) / pixel_mm))
    return far & ~near & body & ~excluded


@dataclass
class RegionActivity:
    """One VOI's activity in one planar image (Bq) and how it was obtained."""

    activity_bq: float
    background_bq: float
    region_pixels: int
    background_pixels: int
    used_thickness_fraction: float


def region_activity(gm_over_sqrt_t_bq: np.ndarray, region: np.ndarray, thickness_mm: np.ndarray,
                    body_thickness_mm: np.ndarray, voi_f: np.ndarray, body_f: np.ndarray,
                    ring: Optional[np.ndarray], restore: bool = True) -> RegionActivity:
    """Background-corrected activity of one VOI (Bq).

    With G the attenuation-corrected geometric mean over counts per Bq (Bq), a column of uniform background
    concentration c (Bq per mm of path, per pixel) through a body of thickness L gives G = c·L / f(μL); a VOI
    of thickness t and its own activity A_t inside it, G = A_t / f(μt) + c·(L / f(μL) − t / f(μt)) (the
    background's G less that of the part the VOI replaces; exact for a VOI centred on the ray). The ring gives
    c = Σ_ring G·f(μL) / Σ_ring L, and

        A = Σ_region [G·f(μt) − c·(L·f(μt) / f(μL) − t)]

    which is exactly the VOI's share c·t for a column of uniform activity.

    Parameters
    ----------
    gm_over_sqrt_t_bq : ndarray
        G per pixel (Bq, before self-attenuation).
    region : bool ndarray
        The VOI's region (:func:`region_masks`).
    thickness_mm : ndarray
        The VOI's full projected thickness t (mm).
    body_thickness_mm : ndarray
        The body's thickness L (mm).
    voi_f, body_f : ndarray
        Self-attenuation factors f(μt) and f(μL).
    ring : bool ndarray or None
        Background ring (:func:`background_ring`); None or empty: no background subtraction.
    restore : bool
        Restore the part of the VOI's projection outside the region (A_region · Σ_all t / Σ_region t; the
        projected regions). False for a region drawn by the user: the region is taken to hold the VOI's
        activity, A = A_region (an empty region gives NaN: not measured).
    """
    c = 0.0
    n_ring = 0 if ring is None else int(ring.sum())
    if n_ring:
        tissue = float(body_thickness_mm[ring].sum())
        c = float((gm_over_sqrt_t_bq * body_f)[ring].sum()) / tissue if tissue > 0 else 0.0
    t = np.clip(thickness_mm, 0.0, None)
    shadow = np.clip(body_thickness_mm * voi_f / np.clip(body_f, 1e-12, None) - t, 0.0, None)
    gross = float((gm_over_sqrt_t_bq * voi_f)[region].sum())
    background = c * float(shadow[region].sum())
    full = float(t.sum())
    used = float(t[region].sum())
    frac = used / full if full > 0 else 0.0
    divisor = frac if restore else (1.0 if region.any() else 0.0)
    activity = (gross - background) / divisor if divisor > 0 else float("nan")
    return RegionActivity(activity, background / divisor if divisor > 0 else float("nan"), int(region.sum()), n_ring,
                          frac)
