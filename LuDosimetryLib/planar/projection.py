"""3-D volumes projected onto the planar view, and the planar image placed on them.

The planar view looks along the patient's y axis (anterior → posterior, LPS). A :class:`PlanarGrid` gives the
patient x of every column and z of every row (rows head → feet, columns towards the patient's left: the
anterior orientation of :mod:`LuDosimetryLib.io.planar`). A volume (CT μ, a VOI mask, a SPECT) is resampled
onto the grid's columns and rows with its own y extent and summed along y: a mask gives the thickness (mm)
of the VOI behind each pixel, μ its line integral, a concentration the column's activity.

The planar image is placed on the CT by the translation that best correlates it with the projection of the
session's SPECT (:func:`align_offset_px`), searched around the header's position when the header gives one:
planar and tomographic acquisitions rarely share a frame of reference.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Optional, Tuple

import numpy as np
import SimpleITK as sitk
from scipy.signal import fftconvolve


@dataclass(frozen=True)
class PlanarGrid:
    """Pixel centres of a planar image in patient coordinates.

    Attributes
    ----------
    x0_mm, z0_mm : float
        x of column 0, z of row 0 (mm).
    spacing_mm : (float, float)
        Between rows (along −z) and between columns (along +x).
    shape : (int, int)
        (rows, columns).
    """

    x0_mm: float
    z0_mm: float
    spacing_mm: Tuple[float, float]
    shape: Tuple[int, int]

    @property
    def pixel_mm2(self) -> float:
        return float(self.spacing_mm[0] * self.spacing_mm[1])

    def shifted(self, rows: float, columns: float) -> "PlanarGrid":
        """The grid of the same image moved so that its pixel (rows, columns) lands where (0, 0) was."""
        return replace(self, x0_mm=self.x0_mm - columns * self.spacing_mm[1],
                       z0_mm=self.z0_mm + rows * self.spacing_mm[0])


def _bounds(image: sitk.Image) -> Tuple[np.ndarray, np.ndarray]:
    """The volume's physical extent: its voxels' outer faces (half a voxel beyond the outer centres)."""
    size = image.GetSize()
    corners = [image.TransformContinuousIndexToPhysicalPoint([c * s - 0.5 for c, s in zip(bits, size)])
               for bits in np.ndindex(2, 2, 2)]
    arr = np.asarray(corners)
    return arr.min(axis=0), arr.max(axis=0)


def sample_on_grid(image: sitk.Image, grid: PlanarGrid, dy_mm: Optional[float] = None, linear: bool = True,
                   default: float = 0.0, y_range_mm: Optional[Tuple[float, float]] = None
                   ) -> Tuple[np.ndarray, np.ndarray, float]:
    """The volume resampled on the planar grid's rows and columns, all along its own y extent (or
    ``y_range_mm``, to sample several volumes on the same points).

    Returns
    -------
    values : ndarray (rows, y, columns) float32
        ``default`` outside the volume.
    covered : ndarray (rows, columns) bool
        Pixels whose ray crosses the volume.
    dy_mm : float
        Sampling step along y (default: the volume's own y spacing).
    """
    lo, hi = _bounds(image)
    if y_range_mm is not None:
        lo[1], hi[1] = y_range_mm
    dy = float(dy_mm or abs(image.GetSpacing()[1]))
    ny = max(int(np.floor((hi[1] - lo[1]) / dy)) + 1, 1)
    rows, cols = grid.shape
    sz, sx = grid.spacing_mm
    x = grid.x0_mm + sx * np.arange(cols)
    z = grid.z0_mm - sz * np.arange(rows)
    col_in = np.nonzero((x >= lo[0] - 1e-6) & (x <= hi[0] + 1e-6))[0]
    row_in = np.nonzero((z >= lo[2] - 1e-6) & (z <= hi[2] + 1e-6))[0]
    values = np.full((rows, ny, cols), default, dtype=np.float32)
    covered = np.zeros((rows, cols), dtype=bool)
    if not len(col_in) or not len(row_in):
        return values, covered, dy
    c0, c1, r0, r1 = col_in[0], col_in[-1], row_in[0], row_in[-1]
    ref = sitk.Image(int(c1 - c0 + 1), ny, int(r1 - r0 + 1), sitk.sitkFloat32)
    ref.SetSpacing((sx, dy, sz))
    ref.SetOrigin((float(x[c0]), float(lo[1]), float(z[r1])))  # lowest z first
    out = sitk.Resample(image, ref, sitk.Transform(), sitk.sitkLinear if linear else sitk.sitkNearestNeighbor,
                        float(default), sitk.sitkFloat32)
    arr = sitk.GetArrayFromImage(out)[::-1]  # (z high → low, y, x) = rows head → feet
    values[r0:r1 + 1, :, c0:c1 + 1] = arr
    covered[r0:r1 + 1, c0:c1 + 1] = True
    return values, covered, dy


def y_range(image: sitk.Image) -> Tuple[float, float]:
    """The volume's extent along the patient's y (mm)."""
    lo, hi = _bounds(image)
    return float(lo[1]), float(hi[1])


def project(image: sitk.Image, grid: PlanarGrid, dy_mm: Optional[float] = None) -> np.ndarray:
    """Σ_y value · dy over the volume behind each pixel (rows, columns): a 0/1 mask gives mm of it."""
    values, _covered, dy = sample_on_grid(image, grid, dy_mm)
    return values.astype(np.float64).sum(axis=1) * dy


def volume_grid(image: sitk.Image, spacing_mm: Tuple[float, float]) -> PlanarGrid:
    """A planar grid of ``spacing_mm`` covering the volume's x and z extent."""
    lo, hi = _bounds(image)
    rows = int(np.floor((hi[2] - lo[2]) / spacing_mm[0])) + 1
    cols = int(np.floor((hi[0] - lo[0]) / spacing_mm[1])) + 1
    return PlanarGrid(float(lo[0]), float(hi[2]), tuple(float(s) for s in spacing_mm), (rows, cols))


#: Direction of a planar view's image (:func:`grid_image`): columns along +x, one slice along −y (seen from the
#: front), rows along −z (head → feet); a right-handed frame.
VIEW_DIRECTION = (1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, -1.0)


def grid_image(grid: PlanarGrid, y_mm: float, values: Optional[np.ndarray] = None,
               pixel_type: int = sitk.sitkFloat32) -> sitk.Image:
    """A planar grid as a one-slice coronal volume at patient ``y_mm`` (LPS): shown in Slicer's coronal view
    over the CT, its pixels where the projected VOIs are. ``values`` (rows, columns), default zeros.

    The volume's array is (rows, 1, columns); its slice is ``spacing_mm[1]`` thick.
    """
    rows, cols = grid.shape
    arr = np.zeros((rows, 1, cols)) if values is None else np.asarray(values).reshape(rows, 1, cols)
    image = sitk.Cast(sitk.GetImageFromArray(arr.astype(np.float32)), pixel_type)
    image.SetSpacing((float(grid.spacing_mm[1]), float(grid.spacing_mm[1]), float(grid.spacing_mm[0])))
    image.SetOrigin((float(grid.x0_mm), float(y_mm), float(grid.z0_mm)))
    image.SetDirection(VIEW_DIRECTION)
    return image


def same_grid(image: sitk.Image, grid: PlanarGrid, tolerance_px: float = 0.5) -> bool:
    """Whether ``image`` (e.g. a planar region file) lies on ``grid``: a one-slice volume of :func:`grid_image`'s
    direction, the grid's matrix and pixel size (within 0.1 %), its first pixel within ``tolerance_px``."""
    rows, cols = grid.shape
    sz, sx = grid.spacing_mm
    spacing = image.GetSpacing()
    origin = image.GetOrigin()
    return (tuple(image.GetSize()) == (cols, 1, rows)
            and np.allclose(image.GetDirection(), VIEW_DIRECTION, atol=1e-3)
            and abs(spacing[0] - sx) <= 1e-3 * sx and abs(spacing[2] - sz) <= 1e-3 * sz
            and abs(origin[0] - grid.x0_mm) <= tolerance_px * sx and abs(origin[2] - grid.z0_mm) <= tolerance_px * sz)


def align_offset_px(planar: np.ndarray, template: np.ndarray, guess_px: Optional[Tuple[int, int]] = None,
                    search_px: int = 10) -> Tuple[float, float, float]:
    """Where the template best sits in the planar image: (row, column) of its pixel (0, 0), by correlation.

    Parameters
    ----------
    planar : ndarray (rows, columns)
        Counts (e.g. the geometric mean of the views).
    template : ndarray
        A projection on the same pixel size (e.g. the SPECT's).
    guess_px : (int, int), optional
        Expected position (from the headers); the search stays within ``search_px`` of it. None: anywhere.

    Returns
    -------
    (row, column, correlation)
        The offset (pixels, refined below a pixel by a parabola through the correlation peak) and the
        normalised correlation coefficient of the overlap at the whole-pixel peak.
    """
    a = np.asarray(planar, dtype=np.float64)
    t = np.asarray(template, dtype=np.float64)
    a0 = a - a.mean()
    t0 = t - t.mean()
    corr = fftconvolve(a0, t0[::-1, ::-1], mode="full")  # corr[i, j]: template (0, 0) at (i − T_r + 1, j − T_c + 1)
    off_r = np.arange(corr.shape[0]) - (t.shape[0] - 1)
    off_c = np.arange(corr.shape[1]) - (t.shape[1] - 1)
    allowed = np.ones(corr.shape, dtype=bool)
    if guess_px is not None:
        allowed &= (np.abs(off_r - guess_px[0]) <= search_px)[:, None]
        allowed &= (np.abs(off_c - guess_px[1]) <= search_px)[None, :]
    if not allowed.any():
        raise ValueError("the planar image and the projection do not overlap near the header's position")
    i, j = np.unravel_index(np.argmax(np.where(allowed, corr, -np.inf)), corr.shape)
    r, c = int(off_r[i]), int(off_c[j])
    dr = _parabola_peak(corr[i - 1:i + 2, j]) if 0 < i < corr.shape[0] - 1 else 0.0
    dc = _parabola_peak(corr[i, j - 1:j + 2]) if 0 < j < corr.shape[1] - 1 else 0.0
    # normalised correlation of the overlap
    ra0, ra1 = max(r, 0), min(r + t.shape[0], a.shape[0])
    ca0, ca1 = max(c, 0), min(c + t.shape[1], a.shape[1])
    pa = a[ra0:ra1, ca0:ca1]
    pt = t[ra0 - r:ra1 - r, ca0 - c:ca1 - c]
    cc = float(np.corrcoef(pa.ravel(), pt.ravel())[0, 1]) if pa.size > 1 else float("nan")
    return r + dr, c + dc, cc


def _parabola_peak(three: np.ndarray) -> float:
    """Sub-pixel position (−0.5…0.5) of the vertex of the parabola through three values around a maximum."""
    a, b, c = (float(v) for v in three)
    den = a - 2.0 * b + c
    return float(np.clip(0.5 * (a - c) / den, -0.5, 0.5)) if den < 0 else 0.0
