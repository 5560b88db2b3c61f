"""Lumbar vertebral bodies L2–L4 from a CT, for the image-based red-marrow method (issue #14).

:func:`segment_l2_l4` finds the marrow-bearing interior of three consecutive lumbar vertebral bodies on the CT
grid, automatically, as follows (each step's assumption is stated; the chosen levels are returned so that the
run names them):

1. bone: voxels above :data:`BONE_HU` (cortical and most cancellous bone; marrow-rich cancellous bone of the
   lumbar bodies is ~150–300 HU, ICRU 46 / typical clinical values);
2. the body: voxels above -300 HU; its midline is the x of its centroid;
3. the spine: the connected bone component with the longest axial extent among those whose centroid lies
   within :data:`SPINE_MIDLINE_MM` of the midline and posterior to the body's centre (+y in LPS), restricted
   to :data:`SPINE_HALF_WIDTH_MM` either side of its own midline (ribs and iliac bones left out);
4. vertebral bodies: the spine anterior to the spinal canal (the hole enclosed by the axial projection of the
   spine); without a closed canal, the anterior :data:`VERTEBRAL_BODY_DEPTH_MM` of the spine;
5. outline: the bodies' voxels above half-way between soft tissue (:data:`SOFT_TISSUE_HU`) and the bodies'
   90th-percentile HU (the cortex), so that partial volume at coarse voxels does not grow them;
   cancellous interior: each axial slice of the vertebral bodies with its holes filled (low-HU marrow inside the
   cortex), eroded in-plane by :data:`CORTEX_MM` (rounded to whole pixels: none with pixels over 3 mm);
6. levels: L2–L4 are not identified anatomically (no rib or iliac-crest landmark is used): they are taken as
   the :data:`N_VERTEBRAE` × :data:`VERTEBRA_PITCH_MM` of spine centred on the middle of the vertebral bodies'
   axial extent in the CT — the position of L2–L4 in an abdominal SPECT/CT field of view centred on the
   kidneys. Intervertebral discs inside that span fall below the bone threshold and are not in the VOI.
   The VOI is the whole CT slices whose centres lie in that span; the marrow fraction it holds scales with the
   slices' total length (n = length / pitch vertebrae of 12.3 %/5 each), also where the CT shows less spine.

The user's correction is an RTSTRUCT ROI named like ``L2-L4``, ``RedMarrow`` or ``Marrow``
(:func:`is_marrow_roi_name`): it replaces this segmentation.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Optional

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

#: Bone threshold (HU).
BONE_HU = 150.0
#: Soft tissue around the spine (HU), for the half-way outline of the vertebral bodies.
SOFT_TISSUE_HU = 40.0
#: Body threshold (HU).
BODY_HU = -300.0
#: A spine candidate's centroid lies within this distance of the body midline (mm).
SPINE_MIDLINE_MM = 40.0
#: Half-width kept either side of the spine's midline (mm): a lumbar vertebral body is ~45–50 mm wide.
SPINE_HALF_WIDTH_MM = 30.0
#: Depth of the vertebral body (antero-posterior, mm) where no spinal canal is found: lumbar bodies ~30–35 mm.
VERTEBRAL_BODY_DEPTH_MM = 35.0
#: In-plane pixel (mm) at or below which the cancellous outline is traced (coarser CT slices are resampled).
FINE_PIXEL_MM = 1.0
#: Cortical shell removed in-plane (mm).
CORTEX_MM = 1.5
#: Three vertebrae (L2, L3, L4).
N_VERTEBRAE = 3
#: Lumbar vertebra pitch (vertebral body ~27 mm + intervertebral disc ~9 mm: typical adult lumbar anthropometry,
#: a LuDosimetry value named in the run's assumption).
VERTEBRA_PITCH_MM = 36.0

_MARROW_ROI = re.compile(r"^(l2[\s_-]*(-|to|_)?[\s_-]*l4|red[\s_-]*marrow|marrow|bone[\s_-]*marrow|rm)$", re.I)


def is_marrow_roi_name(name: str) -> bool:
    """Whether an ROI name designates the red-marrow VOI (``L2-L4``, ``L2_L4``, ``RedMarrow``, ``Marrow``...)."""
    return bool(_MARROW_ROI.match(name.strip()))


@dataclass
class VertebraeSegmentation:
    """The L2–L4 cancellous VOI on the CT grid.

    Attributes
    ----------
    mask : ndarray (z, y, x) float32
        Fraction of each CT voxel in the VOI (sub-pixel outline in-plane), on the CT grid.
    z_range_mm : (float, float)
        Axial extent of the span taken as L2–L4 (patient z, mm).
    n_vertebrae : float
        The span's length in vertebrae (3 when the CT shows enough spine).
    volume_ml : float
    canal_found : bool
        Whether the spinal canal separated the bodies from the arches (else a fixed depth was used).
    """

    mask: np.ndarray
    z_range_mm: tuple
    n_vertebrae: float
    volume_ml: float
    canal_found: bool


def segment_l2_l4(ct_hu: sitk.Image) -> Optional[VertebraeSegmentation]:
    """Segment the L2–L4 vertebral bodies' cancellous interior (see the module docstring).

    Returns
    -------
    VertebraeSegmentation or None
        None when no spine is found (no bone component near the midline, posterior), or the CT is not axial
        (identity direction).
    """
    hu = sitk.GetArrayFromImage(ct_hu).astype(np.float32)
    sx, sy, sz = (float(v) for v in ct_hu.GetSpacing())
    if not np.allclose(np.asarray(ct_hu.GetDirection()).reshape(3, 3), np.eye(3), atol=1e-3):
        return None  # an axial CT (identity direction) is assumed: the caller names the failure
    origin = np.asarray(ct_hu.GetOrigin(), dtype=float)
    body = hu > BODY_HU
    if not body.any():
        return None
    zz, yy, xx = np.nonzero(body)
    mid_x, mid_y = xx.mean(), yy.mean()
    labels, n = ndimage.label(hu > BONE_HU)
    if n == 0:
        return None
    objects = ndimage.find_objects(labels)
    best, best_extent = None, 0
    for k, sl in enumerate(objects, start=1):
        comp = labels[sl] == k
        cz, cy, cx = (np.nonzero(comp)[i].mean() + sl[i].start for i in range(3))
        extent = (sl[0].stop - sl[0].start) * sz
        if abs(cx - mid_x) * sx <= SPINE_MIDLINE_MM and cy > mid_y and extent > best_extent:
            best, best_extent = k, extent
    if best is None:
        return None
    spine = labels == best
    spine_x = np.nonzero(spine)[2].mean()
    half = int(round(SPINE_HALF_WIDTH_MM / sx))
    keep = np.zeros(spine.shape[2], dtype=bool)
    keep[max(int(spine_x) - half, 0):int(spine_x) + half + 1] = True
    spine &= keep[None, None, :]
    # vertebral bodies: anterior to the canal
    projection = spine.any(axis=0)
    canal = ndimage.binary_fill_holes(projection) & ~projection
    canal_labels, n_canal = ndimage.label(canal)
    canal_found = n_canal > 0
    if canal_found:
        sizes = ndimage.sum(canal, canal_labels, range(1, n_canal + 1))
        big = canal_labels == (int(np.argmax(sizes)) + 1)
        y_front = np.nonzero(big)[0].min()  # the canal's anterior edge (y index; +y posterior)
        limit = y_front
    else:
        y_front = np.nonzero(projection)[0].min()
        limit = y_front + int(round(VERTEBRAL_BODY_DEPTH_MM / sy))
    bodies = spine.copy()
    bodies[:, limit:, :] = False
    if not bodies.any():
        return None
    # the bodies' outline at half-way between soft tissue and their bone (the 90th percentile: the cortex), so
    # that the outline does not grow with the partial volume of coarse voxels
    edge_hu = max(BONE_HU, 0.5 * (SOFT_TISSUE_HU + float(np.percentile(hu[bodies], 90))))
    interior = np.zeros(bodies.shape, dtype=np.float32)
    for z in np.nonzero(bodies.any(axis=(1, 2)))[0]:
        interior[z] = _cancellous_occupancy(hu[z], bodies[z], edge_hu, sx, sy)
    slices = np.nonzero((interior > 0).any(axis=(1, 2)))[0]
    if slices.size == 0:
        return None
    z_lo, z_hi = slices[0], slices[-1]
    z_mid_mm = origin[2] + 0.5 * (z_lo + z_hi) * sz
    span_mm = N_VERTEBRAE * VERTEBRA_PITCH_MM
    z_axis = origin[2] + np.arange(hu.shape[0]) * sz
    inside = np.abs(z_axis - z_mid_mm) <= span_mm / 2.0
    inside[:z_lo] = False
    inside[z_hi + 1:] = False  # the span within the spine's extent (discs inside it are part of it)
    interior[~inside] = 0.0
    if not interior.any():
        return None
    taken = np.nonzero(inside)[0]
    lo_mm = float(z_axis[taken[0]] - sz / 2.0)
    hi_mm = float(z_axis[taken[-1]] + sz / 2.0)
    n_vert = taken.size * sz / VERTEBRA_PITCH_MM  # the fraction of the marrow follows the slices taken
    volume_ml = float(interior.sum(dtype=np.float64)) * sx * sy * sz / 1000.0
    return VertebraeSegmentation(interior, (lo_mm, hi_mm), n_vert, volume_ml, bool(canal_found))


def _cancellous_occupancy(hu2d: np.ndarray, body2d: np.ndarray, edge_hu: float, sx: float, sy: float) -> np.ndarray:
    """Fraction of each pixel of one axial slice inside the vertebral bodies' cancellous interior.

    The slice is resampled (linear) to pixels of at most :data:`FINE_PIXEL_MM` around the bodies, outlined at
    ``edge_hu``, its holes filled, the cortex (:data:`CORTEX_MM`) eroded, and averaged back onto the CT's pixels:
    coarse CT pixels keep a sub-pixel outline.
    """
    f = max(1, int(np.ceil(min(sx, sy) / FINE_PIXEL_MM)))
    ys, xs = np.nonzero(body2d)
    pad = 2
    y0, y1 = max(ys.min() - pad, 0), min(ys.max() + pad + 1, body2d.shape[0])
    x0, x1 = max(xs.min() - pad, 0), min(xs.max() + pad + 1, body2d.shape[1])
    region = ndimage.binary_dilation(body2d, iterations=1)[y0:y1, x0:x1]
    crop = hu2d[y0:y1, x0:x1]
    if f > 1:
        fine_hu = ndimage.zoom(crop, f, order=1, grid_mode=True, mode="nearest")
        region = np.repeat(np.repeat(region, f, axis=0), f, axis=1)
    else:
        fine_hu = crop
    inside = ndimage.binary_fill_holes((fine_hu >= edge_hu) & region)
    erode = int(round(CORTEX_MM / (min(sx, sy) / f)))
    if erode:
        inside = ndimage.binary_erosion(inside, ndimage.generate_binary_structure(2, 1), iterations=erode)
    coarse = inside.reshape(inside.shape[0] // f, f, inside.shape[1] // f, f).mean(axis=(1, 3))
    out = np.zeros(body2d.shape, dtype=np.float32)
    out[y0:y1, x0:x1] = coarse
    return out
