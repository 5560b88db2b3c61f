"""Volumes of interest: ROIs as planar contours (:class:`Roi`, :class:`StructureSet`), contours to voxel
masks and back.

The DICOM side (reading and writing RTSTRUCT files into and from these classes) is
:mod:`LuDosimetryLib.io.rtstruct`, which builds on this module; this module imports no DICOM code.

Geometry
--------
Contour points (LPS, mm) are mapped to continuous voxel index space of the reference image with its
origin, spacing and direction cosines, ``index = D^-1 (p - origin) / spacing``, so any axial orientation
works, including a reversed slice direction. Voxel ``(i, j, k)`` covers ``[i-0.5, i+0.5]`` etc.; the image
extends half a voxel beyond its outermost voxel centres.

In-plane, a voxel belongs to an ROI when its centre is inside the slice's contours (``supersample=1``) or,
with ``supersample=n``, by the fraction of its ``n x n`` in-plane sub-samples inside. Several contours on one
plane combine by the even-odd (XOR) rule, so a contour inside another is a hole (DICOM PS3.3 C.8.8.6 lets
nested contours describe holes without saying how; XOR is plastimatch's ``--xor-contours`` rule, its default
being OR, and what platipy and dcmrtstruct2nii adopted for holes).

Through-plane, contours are not interpolated: each image slice takes the contour plane nearest to its
centre, if that plane lies within half a slice (or within half the ROI's own contour-plane spacing when
that is coarser) of it; a slice exactly half-way belongs to the plane below it in index order, so a stack of
N planes half a slice off the image grid still fills N slices. Supersampling is in-plane only.
"""
from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import numpy as np

from .assumptions import assume
from .errors import StructureError

if TYPE_CHECKING:  # pragma: no cover
    import SimpleITK as sitk

#: Points may stray this far (in voxels) beyond the image's edge for rounding in the file.
_EDGE_TOLERANCE_VOXELS = 1e-3
#: Contours whose planes are closer than this (mm) are on the same plane.
_SAME_PLANE_MM = 0.01


# --------------------------------------------------------------------------------------------- ROIs

@dataclass
class Roi:
    """One region of interest of a structure set.

    Attributes
    ----------
    number : int
        ROI Number (3006,0022).
    name : str
        ROI Name (3006,0026).
    color : tuple of int or None
        ROI Display Color (r, g, b), 0-255.
    roi_type : str
        RT ROI Interpreted Type (3006,00A4), e.g. ``'ORGAN'``, ``'GTV'``; ``''`` when absent.
    contours : list of numpy.ndarray
        Closed planar polygons, each (N, 3) float64 in LPS mm, without the closing repeat of the first point.
    frame_of_reference_uid : str
        Referenced Frame of Reference UID (3006,0024) of the ROI, the frame its contours are in; ``''`` when
        absent.
    """

    number: int
    name: str
    color: Optional[Tuple[int, int, int]]
    roi_type: str
    contours: List[np.ndarray] = field(default_factory=list)
    frame_of_reference_uid: str = ""


@dataclass
class StructureSet:
    """The content of one RTSTRUCT file.

    Attributes
    ----------
    path : str
        The file it was read from.
    frame_of_reference_uid : str
        Frame of reference the contours are expressed in (``''`` when the file names none).
    referenced_series_uid : str or None
        Series Instance UID of the image series the contours were drawn on, when the file says.
    rois : list of Roi
        In file order.
    label : str
        Structure Set Label.
    patient_id : str
    study_instance_uid : str
    """

    path: str
    frame_of_reference_uid: str
    referenced_series_uid: Optional[str]
    rois: List[Roi]
    label: str
    patient_id: str
    study_instance_uid: str

    def roi(self, name: str) -> Roi:
        """The first ROI called ``name``; KeyError listing the available names otherwise."""
        for roi in self.rois:
            if roi.name == name:
                return roi
        raise KeyError(f"{self.path}: no ROI named {name!r}; available: "
                       + ", ".join(repr(r.name) for r in self.rois))

    @property
    def names(self) -> List[str]:
        """ROI names in file order."""
        return [r.name for r in self.rois]


# --------------------------------------------------------------------------------------------- geometry

def _geometry(reference) -> Tuple[np.ndarray, np.ndarray, np.ndarray, Tuple[int, int, int]]:
    """(direction 3x3, origin mm, spacing mm (x, y, z), shape (z, y, x)) of a SimpleITK image."""
    direction = np.asarray(reference.GetDirection(), dtype=np.float64).reshape(3, 3)
    origin = np.asarray(reference.GetOrigin(), dtype=np.float64)
    spacing = np.asarray(reference.GetSpacing(), dtype=np.float64)
    size = reference.GetSize()
    return direction, origin, spacing, (int(size[2]), int(size[1]), int(size[0]))


def physical_to_index(points_mm: np.ndarray, reference) -> np.ndarray:
    """LPS points (N, 3) mm to continuous (i, j, k) = (x, y, z) voxel indices (N, 3)."""
    direction, origin, spacing, _ = _geometry(reference)
    inverse = np.linalg.inv(direction * spacing)  # rows: index per mm
    shifted = np.asarray(points_mm, dtype=np.float64) - origin
    return shifted[:, 0:1] * inverse[:, 0] + shifted[:, 1:2] * inverse[:, 1] + shifted[:, 2:3] * inverse[:, 2]


def index_to_physical(index: np.ndarray, reference) -> np.ndarray:
    """Continuous (i, j, k) voxel indices (N, 3) to LPS points (N, 3) mm."""
    direction, origin, spacing, _ = _geometry(reference)
    index = np.asarray(index, dtype=np.float64)
    columns = direction * spacing  # column c: the step in mm of index axis c
    return origin + index[:, 0:1] * columns[:, 0] + index[:, 1:2] * columns[:, 1] + index[:, 2:3] * columns[:, 2]


# --------------------------------------------------------------------------------------------- contours -> mask

def rasterize_roi(roi: "Roi", reference: "sitk.Image", supersample: int = 1, *,
                  source: Optional[Union[str, "os.PathLike[str]"]] = None) -> np.ndarray:
    """Voxel mask of one ROI on the grid of ``reference``.

    Parameters
    ----------
    roi : Roi
        Closed planar contours in LPS mm.
    reference : SimpleITK.Image
        The grid (any axial orientation).
    supersample : int
        1: voxel centre inside -> 1, else 0. n > 1: fraction of the n x n in-plane sub-samples inside.
    source : path-like, optional
        The RTSTRUCT file, named in errors.

    Returns
    -------
    numpy.ndarray
        float32 (z, y, x), values in [0, 1].

    Raises
    ------
    StructureError
        A contour lies (even partly) outside the image, beyond its edge (half a voxel past the outermost
        voxel centres), or is not parallel to the image slices.
    """
    supersample = int(supersample)
    if supersample < 1:
        raise ValueError(f"supersample must be >= 1, got {supersample}")
    _, _, spacing, shape = _geometry(reference)
    nz, ny, nx = shape
    out = np.zeros(shape, dtype=np.float32)
    if not roi.contours:
        return out

    planes = _planes(roi, reference, source)
    positions = np.array([k for k, _ in planes])
    gaps = np.diff(positions)
    reach = max(0.5, 0.5 * float(np.median(gaps))) if gaps.size else 0.5
    cache: Dict[int, Tuple[slice, slice, np.ndarray]] = {}
    for z in range(nz):
        nearest = int(np.argmin(np.abs(positions - z)))  # ties go to the lower plane
        offset = z - positions[nearest]
        if not -reach + 1e-6 < offset <= reach + 1e-6:  # each plane owns the half-open slab (k - r, k + r]
            continue
        if nearest not in cache:
            cache[nearest] = _fill_plane(planes[nearest][1], (ny, nx), supersample)
        rows, cols, values = cache[nearest]
        out[z, rows, cols] = values
    return out


def _planes(roi: "Roi", reference, source) -> List[Tuple[float, List[np.ndarray]]]:
    """Contours grouped by plane: [(continuous slice index k, [(N, 2) (i, j) polygons])], sorted by k."""
    _, _, spacing, shape = _geometry(reference)
    upper = np.array([shape[2], shape[1], shape[0]], dtype=np.float64) - 0.5
    tolerance = _EDGE_TOLERANCE_VOXELS
    entries = []
    for number, contour in enumerate(roi.contours, start=1):
        index = physical_to_index(contour, reference)
        below = np.maximum(-0.5 - index, 0.0)
        above = np.maximum(index - upper, 0.0)
        excess = np.max(np.maximum(below, above), axis=0)
        if np.any(excess > tolerance):
            z_mm = float(np.mean(contour[:, 2]))
            beyond_mm = float(np.max(excess * spacing))
            raise StructureError(f"ROI {roi.name!r}: contour {number} (z = {z_mm:.2f} mm) lies outside the "
                                 f"reference image by up to {beyond_mm:.2f} mm", source)
        spread = float(np.ptp(index[:, 2]))
        if spread > 0.5:
            raise StructureError(f"ROI {roi.name!r}: contour {number} is not parallel to the image slices "
                                 f"(spans {spread:.1f} slices)", source)
        entries.append((float(np.mean(index[:, 2])), index[:, :2]))
    entries.sort(key=lambda e: e[0])
    same = _SAME_PLANE_MM / float(spacing[2])
    planes: List[Tuple[float, List[np.ndarray]]] = []
    for k, polygon in entries:
        if planes and k - planes[-1][0] <= same:
            planes[-1][1].append(polygon)
        else:
            planes.append((k, [polygon]))
    return planes


def _fill_plane(polygons: Sequence[np.ndarray], plane_shape: Tuple[int, int],
                supersample: int) -> Tuple[slice, slice, np.ndarray]:
    """Even-odd scanline fill of polygons given in (i, j) index coordinates.

    For every sample row, the crossings of all polygon edges with that row are found at once
    (half-open rule ``min(y0, y1) <= y < max(y0, y1)``, so vertices on a row count once and horizontal
    edges never), and a sample is inside when an odd number of crossings lies to its left. With several
    polygons this is their XOR: nested contours make holes.

    Returns the (rows, cols) slices of the bounding box and the covered fraction there (float32).
    """
    ny, nx = plane_shape
    everything = np.concatenate(polygons)
    i0 = max(int(np.floor(everything[:, 0].min())), 0)
    i1 = min(int(np.ceil(everything[:, 0].max())), nx - 1)
    j0 = max(int(np.floor(everything[:, 1].min())), 0)
    j1 = min(int(np.ceil(everything[:, 1].max())), ny - 1)
    n = supersample
    offsets = (np.arange(n) + 0.5) / n - 0.5
    xs = (np.arange(i0, i1 + 1)[:, None] + offsets).ravel()
    ys = (np.arange(j0, j1 + 1)[:, None] + offsets).ravel()

    starts, ends = [], []
    for polygon in polygons:
        starts.append(polygon)
        ends.append(np.roll(polygon, -1, axis=0))
    start = np.concatenate(starts)
    end = np.concatenate(ends)
    low = np.minimum(start[:, 1], end[:, 1])
    high = np.maximum(start[:, 1], end[:, 1])
    keep = high > low
    start, end, low, high = start[keep], end[keep], low[keep], high[keep]

    toggles = np.zeros((ys.size, xs.size + 1), dtype=np.int32)
    # Rows each edge crosses: ys in [low, high).
    first = np.searchsorted(ys, low, side="left")
    last = np.searchsorted(ys, high, side="left")
    counts = last - first
    if counts.sum():
        edge = np.repeat(np.arange(start.shape[0]), counts)
        row = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts) + np.repeat(first, counts)
        x0, y0 = start[edge, 0], start[edge, 1]
        x1, y1 = end[edge, 0], end[edge, 1]
        x_cross = x0 + (ys[row] - y0) * (x1 - x0) / (y1 - y0)
        column = np.searchsorted(xs, x_cross, side="right")  # first sample strictly right of the crossing
        np.add.at(toggles, (row, column), 1)
    inside = (np.cumsum(toggles[:, :-1], axis=1) & 1).astype(np.float32)
    h, w = j1 - j0 + 1, i1 - i0 + 1
    fraction = inside.reshape(h, n, w, n).mean(axis=(1, 3), dtype=np.float64).astype(np.float32)
    return slice(j0, j1 + 1), slice(i0, i1 + 1), fraction


def structure_set_masks(ss: "StructureSet", reference: "sitk.Image", supersample: int = 1,
                        names: Optional[Iterable[str]] = None) -> Dict[str, np.ndarray]:
    """Masks of the ROIs of a structure set, in file order.

    Parameters
    ----------
    ss : StructureSet
    reference : SimpleITK.Image
    supersample : int
        See :func:`rasterize_roi`.
    names : iterable of str, optional
        Only these ROIs (keys as returned, i.e. after de-duplication).

    Returns
    -------
    dict of str to numpy.ndarray
        Name -> float32 (z, y, x) mask. A name used twice in the file gets ``' (2)'``, ``' (3)'``... appended
        to its later occurrences, with a warning, rather than one overwriting the other.

    Raises
    ------
    StructureError
        A requested name is not in the file, or a contour lies outside the image.
    """
    keyed: List[Tuple[str, "Roi"]] = []
    seen: Dict[str, int] = {}
    for roi in ss.rois:
        key = roi.name
        if key in seen:
            seen[key] += 1
            key = f"{roi.name} ({seen[roi.name]})"
            while key in seen:
                seen[roi.name] += 1
                key = f"{roi.name} ({seen[roi.name]})"
            warnings.warn(f"{ss.path}: ROI name {roi.name!r} is used more than once; "
                          f"ROI number {roi.number} is called {key!r}", stacklevel=2)
        seen.setdefault(key, 1)
        keyed.append((key, roi))
    if names is not None:
        wanted = list(names)
        available = [k for k, _ in keyed]
        missing = [n for n in wanted if n not in available]
        if missing:
            raise StructureError("no ROI named " + ", ".join(repr(m) for m in missing) + "; available: "
                                 + ", ".join(repr(a) for a in available), ss.path)
        keyed = [(k, r) for k, r in keyed if k in wanted]
    return {key: rasterize_roi(roi, reference, supersample, source=ss.path) for key, roi in keyed}


def check_frame_of_reference(structure_set: "StructureSet", frame_of_reference_uid: Union[str, Iterable[str]]) -> None:
    """Refuse an RTSTRUCT whose frame of reference is not that of the images.

    Parameters
    ----------
    structure_set : StructureSet
    frame_of_reference_uid : str or iterable of str
        The frame(s) of reference of the study's images.

    Raises
    ------
    StructureError
        Naming the file, when the structure set's frame of reference, or that of one of its ROIs (its
        Referenced Frame of Reference UID), matches none of them.

    An RTSTRUCT that names no frame of reference (it cannot be checked) is a named assumption.
    """
    uids = {frame_of_reference_uid} if isinstance(frame_of_reference_uid, str) else set(frame_of_reference_uid)
    uids.discard("")
    for roi in structure_set.rois:
        if roi.frame_of_reference_uid and roi.frame_of_reference_uid not in uids:
            raise StructureError(f"ROI {roi.name!r} is drawn in frame of reference {roi.frame_of_reference_uid} "
                                 "(its Referenced Frame of Reference UID), which matches no image of the study ("
                                 + (", ".join(sorted(uids)) or "none") + ")", structure_set.path)
    if not structure_set.frame_of_reference_uid:
        assume("the RTSTRUCT's frame of reference (it names none): its contours are placed by their patient "
               "coordinates on the images", "that of the images", "no Referenced Frame of Reference UID",
               structure_set.path)
        return
    if structure_set.frame_of_reference_uid not in uids:
        raise StructureError(f"RTSTRUCT frame of reference {structure_set.frame_of_reference_uid} matches no "
                             "image of the study (" + (", ".join(sorted(uids)) or "none") + ")",
                             structure_set.path)


# --------------------------------------------------------------------------------------------- mask -> contours

def mask_slice_contours(mask: np.ndarray, reference: "sitk.Image", level: float = 0.5
                        ) -> List[Tuple[int, np.ndarray]]:
    """Like :func:`mask_to_contours`, with the slice index of each contour: ``[(k, (N, 3) LPS mm)]``."""
    import contourpy

    mask = np.asarray(mask)
    _, _, _, shape = _geometry(reference)
    if mask.shape != shape:
        raise ValueError(f"mask shape {mask.shape} differs from the reference image {shape} (z, y, x)")
    nz, ny, nx = shape
    xs = np.arange(-1, nx + 1, dtype=np.float64)
    ys = np.arange(-1, ny + 1, dtype=np.float64)
    result: List[Tuple[int, np.ndarray]] = []
    values = mask.astype(np.float64, copy=False)
    for k in range(nz):
        plane = values[k]
        if not np.any(plane > level):
            continue
        padded = np.zeros((ny + 2, nx + 2), dtype=np.float64)  # zero border: every line closes
        padded[1:-1, 1:-1] = plane
        generator = contourpy.contour_generator(xs, ys, padded, name="serial",
                                                line_type=contourpy.LineType.Separate)
        for line in generator.lines(level):
            polygon = _simplify(np.asarray(line, dtype=np.float64))
            if len(polygon) < 3:
                continue
            index = np.column_stack([polygon, np.full(len(polygon), float(k))])
            result.append((k, index_to_physical(index, reference)))
    return result


def mask_to_contours(mask: np.ndarray, reference: "sitk.Image", level: float = 0.5) -> List[np.ndarray]:
    """Closed planar contours of a mask, slice by slice.

    Parameters
    ----------
    mask : numpy.ndarray
        (z, y, x) bool or fractional, on the grid of ``reference``.
    reference : SimpleITK.Image
    level : float
        Iso-level traced (linear interpolation between voxel centres).

    Returns
    -------
    list of numpy.ndarray
        (N, 3) LPS mm polygons, first point not repeated. Holes are separate contours, so filling them
        by the even-odd rule (:func:`rasterize_roi`) gives the mask back: for a binary mask the contour
        runs through the mid-points between voxel centres and every voxel centre is on its own side.
    """
    return [polygon for _, polygon in mask_slice_contours(mask, reference, level)]


def _simplify(line: np.ndarray) -> np.ndarray:
    """Drop the closing repeat and the points in the middle of straight runs."""
    if len(line) > 1 and np.allclose(line[0], line[-1]):
        line = line[:-1]
    if len(line) < 3:
        return line
    before = line - np.roll(line, 1, axis=0)
    after = np.roll(line, -1, axis=0) - line
    cross = before[:, 0] * after[:, 1] - before[:, 1] * after[:, 0]
    dot = np.sum(before * after, axis=1)
    keep = (np.abs(cross) > 1e-9) | (dot <= 0)
    return line[keep]


def mask_volume_ml(mask: np.ndarray, spacing_mm: Sequence[float]) -> float:
    """Volume of a mask in mL (sum of voxel coverage x voxel volume).

    Parameters
    ----------
    mask : numpy.ndarray
        Bool or fractional coverage.
    spacing_mm : sequence of float
        Voxel spacing in mm (any order; only the product matters).
    """
    voxel_ml = float(np.prod(np.asarray(spacing_mm, dtype=np.float64))) / 1000.0  # mm^3 -> mL
    return float(np.sum(np.asarray(mask), dtype=np.float64)) * voxel_ml
