"""Multi-bed SPECT: which projection series are bed positions of one acquisition, their projections
completed from the neighbouring beds, and one stitched volume.

The methods are PyTomography 3.4's (``pytomography.io.SPECT.dicom``), which its GE and Siemens
pipelines use for multi-bed acquisitions:

* :func:`fill_from_neighbours` = ``load_multibed_projections``: the beds are sorted by axial position;
  in each bed the rows beyond the middle of its overlap with a neighbour are replaced by that neighbour's
  rows at the same z (all energy windows, views matched by angle). A GE camera stores zeros outside
  its ~40 cm useful field of view (rows 0-17 and 110-127 of a 128-row frame); filled, every bed's
  reconstruction sees the activity that its neighbour measured there.
* :func:`stitch_beds` = ``stitch_multibed``: each bed's first and last slice are dropped where a
  neighbour covers them, and the overlap is cut at its middle (no blending).

They are re-implemented on the arrays already read rather than called, because PyTomography's functions
re-read each file, take its position from the first Detector Information item's ImagePositionPatient
only and assume that rows run head to feet and that every bed has the same views in the same order;
here the geometry comes from :func:`.projections.read_projections` (ImageOrientationPatient, the
angles of each view, each bed's view duration), and beds that do not match are refused, not mixed.
On files that satisfy PyTomography's assumptions the results are identical
(``Testing/Python/test_recon_vendor_geometry.py`` compares them with PyTomography's own functions).
This module imports neither torch nor PyTomography.
"""
from __future__ import annotations

import dataclasses
from datetime import datetime
from typing import List, Sequence

import numpy as np
import SimpleITK as sitk

from ..assumptions import assume
from .projections import ProjectionSeries
from .system import ProjectionGeometry

#: Two bed positions of one acquisition were started at most this long apart (s).
MAX_BED_GAP_S = 7200.0
#: Views of two beds are the same view when their projector angles agree within this (degrees).
ANGLE_TOLERANCE_DEG = 0.5


def group_beds(series: Sequence[ProjectionSeries]) -> List[List[ProjectionSeries]]:
    """Projection series that are bed positions of one acquisition, grouped (each group sorted by z).

    Beds of one acquisition: same form (unaltered/reformatted/advanced), same frame of reference, same
    matrix, pixel size and energy windows, different axial positions, and started within
    :data:`MAX_BED_GAP_S` of each other. When a header has no acquisition time (anonymised GE exports
    have none) a common, non-empty frame of reference alone joins the beds, recorded as a named assumption.
    """
    groups: List[List[ProjectionSeries]] = []
    for s in sorted(series, key=lambda s: (s.form, s.acquisition_time or datetime.min)):
        for g in groups:
            if all(_same_acquisition(o, s) for o in g):
                if s.acquisition_time is None or g[0].acquisition_time is None:
                    assume("projection series without acquisition time taken as bed positions of one acquisition "
                           "(same frame of reference, camera geometry and energy windows, different z)",
                           f"{len(g) + 1} beds", "FrameOfReferenceUID", path=s.path)
                g.append(s)
                break
        else:
            groups.append([s])
    return [sorted(g, key=lambda s: s.geometry.z_bottom_mm) for g in groups]


def _same_acquisition(a: ProjectionSeries, b: ProjectionSeries) -> bool:
    if a.form != b.form or a.frame_of_reference_uid != b.frame_of_reference_uid:
        return False
    if a.acquisition_time is not None and b.acquisition_time is not None:
        if abs((a.acquisition_time - b.acquisition_time).total_seconds()) > MAX_BED_GAP_S:
            return False
    elif not a.frame_of_reference_uid:  # neither a time nor a frame of reference says they belong together
        return False
    ga, gb = a.geometry, b.geometry
    same_grid = (ga.n_cols == gb.n_cols and ga.n_rows == gb.n_rows and abs(ga.pixel_mm - gb.pixel_mm) < 1e-3
                 and abs(ga.slice_mm - gb.slice_mm) < 1e-3)
    windows = [(round(w.lower_kev, 2), round(w.upper_kev, 2)) for w in a.windows]
    return (same_grid and windows == [(round(w.lower_kev, 2), round(w.upper_kev, 2)) for w in b.windows]
            and abs(ga.z_bottom_mm - gb.z_bottom_mm) > 0.5 * ga.slice_mm)


def _slice_offsets(geoms: Sequence[ProjectionGeometry]) -> np.ndarray:
    """Axial offset (slices) of each bed's lowest slice from the lowest bed's."""
    z = np.array([g.z_bottom_mm for g in geoms])
    return np.round((z - z.min()) / geoms[0].slice_mm).astype(int)


def _z_up(counts: np.ndarray, geom: ProjectionGeometry) -> np.ndarray:
    """Stored ``[window, view, row, col]`` → ``[window, view (by projector angle), slice (upwards), col]``."""
    arr = counts[:, geom.view_order]
    return arr[:, :, ::-1] if geom.rows_downward else arr


def _stored(z_up: np.ndarray, geom: ProjectionGeometry) -> np.ndarray:
    arr = z_up[:, :, ::-1] if geom.rows_downward else z_up
    out = np.empty_like(arr)
    out[:, geom.view_order] = arr
    return out


def fill_from_neighbours(beds: Sequence[ProjectionSeries]) -> List[ProjectionSeries]:
    """Each bed's projections with the rows beyond the middle of each overlap taken from the neighbour.

    PyTomography's ``load_multibed_projections`` (see the module notes); a neighbour's counts are scaled
    by the ratio of the view durations. Beds in z order (as :func:`group_beds` returns them).

    Raises
    ------
    ValueError
        The beds' views are not at the same angles, or a bed does not overlap its neighbour.
    """
    beds = list(beds)
    if len(beds) < 2:
        return beds
    geoms = [b.geometry for b in beds]
    angles = [np.sort(g.projector_angles_deg) for g in geoms]
    for b, a in zip(beds[1:], angles[1:]):
        d = np.abs((a - angles[0] + 180.0) % 360.0 - 180.0) if a.shape == angles[0].shape else None
        if d is None or d.max() > ANGLE_TOLERANCE_DEG:
            raise ValueError(f"{b.path}: its views are not at the angles of {beds[0].path}: the beds' projections "
                             "cannot be completed from each other")
    zs = _slice_offsets(geoms)
    if np.any(np.diff(zs) <= 0) or np.any(np.diff(zs) >= geoms[0].n_rows):
        raise ValueError("bed positions must be in z order and overlap: offsets " + ", ".join(map(str, zs)))
    up = [_z_up(b.counts, b.geometry) for b in beds]
    out = [u.copy() for u in up]
    nz = geoms[0].n_rows
    for i in range(len(beds)):
        if i > 0:  # lower part from the bed below
            dz = zs[i] - zs[i - 1]
            mid = (nz - dz) // 2
            scale = beds[i].view_duration_s / beds[i - 1].view_duration_s
            out[i][:, :, :mid] = up[i - 1][:, :, dz:dz + mid] * scale
        if i < len(beds) - 1:  # upper part from the bed above
            dz = zs[i + 1] - zs[i]
            mid = (nz - dz) // 2
            scale = beds[i].view_duration_s / beds[i + 1].view_duration_s
            out[i][:, :, dz + mid:] = up[i + 1][:, :, mid:nz - dz] * scale
    return [dataclasses.replace(b, counts=_stored(o, b.geometry).astype(np.float32)) for b, o in zip(beds, out)]


def stitch_beds(images: Sequence[sitk.Image]) -> sitk.Image:
    """One volume from the reconstructions of overlapping bed positions (same x-y grid, z steps of whole slices).

    PyTomography's ``stitch_multibed``: in each overlap the lower bed is kept up to the middle and the
    upper bed from there on, after dropping the slice at each bed's edge that a neighbour covers (the end
    slices of the whole volume are kept). Beds that do not overlap are placed with zeros between them.
    """
    if len(images) == 1:
        return images[0]
    imgs = sorted(images, key=lambda im: im.GetOrigin()[2])
    sp = imgs[0].GetSpacing()
    z0 = imgs[0].GetOrigin()[2]
    ks = [int(round((im.GetOrigin()[2] - z0) / sp[2])) for im in imgs]
    nz = max(k + im.GetSize()[2] for k, im in zip(ks, imgs))
    arrays = [sitk.GetArrayFromImage(im).astype(np.float32) for im in imgs]
    weights = [np.ones(a.shape[0], dtype=np.float32) for a in arrays]
    for i in range(len(imgs) - 1):
        lz = arrays[i].shape[0]
        dz = ks[i + 1] - ks[i]
        lower, upper = dz + 1, lz - 1  # overlap in bed i's slices, each bed's edge slice left out
        delta = upper - lower
        if delta < 0:
            continue
        half = int(round(delta / 2.0))
        weights[i][lower + half:] = 0.0
        weights[i + 1][:1 + half] = 0.0
    total = np.zeros((nz,) + arrays[0].shape[1:], dtype=np.float32)
    for k, a, w in zip(ks, arrays, weights):
        total[k:k + a.shape[0]] += a * w[:, None, None]
    out = sitk.GetImageFromArray(total)
    out.SetSpacing(sp)
    out.SetOrigin(imgs[0].GetOrigin())
    out.SetDirection(imgs[0].GetDirection())
    return out
