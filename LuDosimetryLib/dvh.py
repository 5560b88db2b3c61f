"""Dose-volume histograms and per-VOI absorbed dose statistics.

Conventions
-----------
- Dose arrays are (z, y, x) in Gy; weights are a mask on the same grid, bool or fractional coverage in
  [0, 1]; a voxel contributes ``weight * voxel_volume_ml`` mL.
- The cumulative DVH ``V(D)`` is the volume receiving **at least** ``D``.
- ``Dx`` (ICRU Report 83, section 3.7.2) is the minimum dose received by the hottest ``x`` % of the volume,
  i.e. the ``D`` at which ``V(D)`` equals ``x`` % of the volume.

``Dx`` from voxels
------------------
The voxel doses (ties merged) are sorted; a voxel of dose ``d_i`` and volume ``w_i`` is taken to spread its
volume evenly about ``d_i``, so the cumulative volume fraction at ``d_i`` is (volume of voxels hotter than
``d_i`` + half of the volume at ``d_i``) / total. ``Dx`` is the linear interpolation of dose against this
cumulative fraction at ``x`` % (clamped to the minimum / maximum dose outside the first / last voxel).
With this mid-point rule a dose that is uniformly distributed over the voxels (a linear ramp) gives the
analytic ``Dx`` exactly; a uniform dose gives ``Dx = D`` for every ``x``. No binning is involved; the binned
:func:`cumulative_dvh` is for display and export.
"""
from __future__ import annotations

import csv
import dataclasses
import math
import os
import warnings
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from .errors import DicomFileError, OutputError, StructureError
from .io.export import atomic_file

#: Default thresholds (Gy) for the ``v_gy`` entry of :func:`dose_statistics`: 2 Gy (red marrow),
#: 23 Gy (kidney limit commonly used for Lu-177 PRRT, from EBRT tolerance; Bodei et al., EJNMMI 2008),
#: and round values in between.
DEFAULT_VOLUME_THRESHOLDS_GY = (2.0, 5.0, 10.0, 20.0, 23.0)


class DVHWarning(UserWarning):
    """An ROI is skipped or only partly covered by the dose grid."""


# --------------------------------------------------------------------------------------------- inputs

def _validated(dose_gy: np.ndarray, weights: np.ndarray, voxel_volume_ml: float,
               name: Optional[str] = None) -> Tuple[np.ndarray, np.ndarray]:
    """Dose and volume (mL) of the voxels with positive weight, as flat float64 arrays."""
    label = f"ROI {name!r}: " if name else ""
    dose = np.asarray(dose_gy)
    w = np.asarray(weights)
    if dose.shape != w.shape:
        raise StructureError(f"{label}mask shape {w.shape} differs from the dose grid shape {dose.shape}")
    if not (np.isfinite(voxel_volume_ml) and voxel_volume_ml > 0):
        raise StructureError(f"{label}voxel volume must be a positive number of mL, got {voxel_volume_ml}")
    if w.dtype != bool:
        w = w.astype(np.float64)
        if not np.all(np.isfinite(w)) or w.min(initial=0.0) < 0 or w.max(initial=0.0) > 1 + 1e-6:
            raise StructureError(f"{label}mask weights must lie in [0, 1]")
    inside = w > 0
    if not np.any(inside):
        raise StructureError(f"{label}the mask is empty (no voxel in the dose grid)")
    d = dose[inside].astype(np.float64)
    if not np.all(np.isfinite(d)):
        raise StructureError(f"{label}the dose has non-finite values (NaN or inf) inside the mask")
    v = (w[inside].astype(np.float64) if w.dtype != bool else np.ones(d.size)) * float(voxel_volume_ml)
    return d, v


# --------------------------------------------------------------------------------------------- statistics

def dose_statistics(dose_gy: np.ndarray, weights: np.ndarray, voxel_volume_ml: float, *,
                    mass_weights: Optional[np.ndarray] = None,
                    volume_thresholds_gy: Sequence[float] = DEFAULT_VOLUME_THRESHOLDS_GY,
                    name: Optional[str] = None) -> Dict[str, object]:
    """Absorbed dose statistics of one VOI.

    Parameters
    ----------
    dose_gy : numpy.ndarray
        Absorbed dose (z, y, x) in Gy.
    weights : numpy.ndarray
        VOI mask on the same grid: bool, or fractional coverage in [0, 1].
    voxel_volume_ml : float
        Volume of one voxel in mL.
    mass_weights : numpy.ndarray, optional
        Mass density (z, y, x) in g/mL (any per-voxel mass scale works: only ratios matter). When given,
        ``mean_dose_gy`` is the **mass-weighted** mean ``Σ D_i m_i / Σ m_i``, i.e. energy imparted / mass,
        which is the mean absorbed dose of the VOI in the MIRD sense (Bolch et al., MIRD Pamphlet No. 21,
        J Nucl Med 50 (2009) 477: D = ε/m), and ``mass_g`` is added. Without it the mean is
        **volume-weighted** (the same for a uniform density). ``mean_dose_volume_weighted_gy``
        (``Σ D_i v_i / Σ v_i``) is given either way. Dx, V and the DVH stay volume-based (ICRU 83).
    volume_thresholds_gy : sequence of float
        Doses for ``v_gy``.
    name : str, optional
        VOI name, used in error messages.

    Returns
    -------
    dict
        ``volume_ml`` (sum of weights x voxel volume), ``mean_dose_gy`` (mass-weighted with
        ``mass_weights``), ``mean_dose_volume_weighted_gy``, ``min_dose_gy`` and
        ``max_dose_gy`` (over voxels with weight > 0), ``d2_gy``, ``d50_gy``, ``d95_gy``, ``d98_gy`` (see the
        module docstring), ``v_gy`` (dict threshold Gy -> volume in mL receiving at least that dose),
        and ``mass_g`` when ``mass_weights`` is given.

    Raises
    ------
    StructureError
        Empty mask, mismatched shapes, weights outside [0, 1], non-finite dose inside the mask, or
        non-positive / non-finite mass density inside the mask.
    """
    dose, volume = _validated(dose_gy, weights, voxel_volume_ml, name)
    total = float(volume.sum())
    stats: Dict[str, object] = {"volume_ml": total}
    if mass_weights is not None:
        rho_all = np.asarray(mass_weights)
        if rho_all.shape != np.shape(dose_gy):
            raise StructureError(f"{'ROI %r: ' % name if name else ''}mass density shape {rho_all.shape} "
                                 f"differs from the dose grid shape {np.shape(dose_gy)}")
        rho = rho_all[np.asarray(weights) > 0].astype(np.float64)
        if not np.all(np.isfinite(rho)) or np.any(rho <= 0):
            raise StructureError(f"{'ROI %r: ' % name if name else ''}mass density must be positive "
                                 "and finite inside the mask")
        mass = volume * rho
        stats["mean_dose_gy"] = float(np.sum(mass * dose) / mass.sum())
        stats["mass_g"] = float(mass.sum())
    else:
        stats["mean_dose_gy"] = float(np.sum(volume * dose) / total)
    stats["mean_dose_volume_weighted_gy"] = float(np.sum(volume * dose) / total)
    stats["min_dose_gy"] = float(dose.min())
    stats["max_dose_gy"] = float(dose.max())
    for x in (2, 50, 95, 98):
        stats[f"d{x}_gy"] = dose_at_volume_percent(dose, volume, x)
    stats["v_gy"] = {float(t): float(volume[dose >= t].sum()) for t in volume_thresholds_gy}
    return stats


def dose_at_volume_percent(dose_gy: np.ndarray, volume_ml: np.ndarray, percent: float) -> float:
    """``Dx``: the minimum dose (Gy) received by the hottest ``percent`` % of the volume.

    Parameters
    ----------
    dose_gy, volume_ml : numpy.ndarray
        Flat arrays of voxel doses (Gy) and voxel volumes (mL, > 0).
    percent : float
        0..100.

    See the module docstring for the interpolation rule.
    """
    if not 0 <= percent <= 100:
        raise ValueError(f"percent must be in [0, 100], got {percent}")
    doses, inverse = np.unique(np.asarray(dose_gy, dtype=np.float64), return_inverse=True)
    vols = np.bincount(inverse.ravel(), weights=np.asarray(volume_ml, dtype=np.float64).ravel(),
                       minlength=doses.size)
    total = vols.sum()
    hotter = total - np.cumsum(vols)  # volume strictly above each unique dose
    fraction = (hotter + 0.5 * vols) / total  # decreasing with dose
    # np.interp needs increasing x: interpolate on the reversed arrays.
    return float(np.interp(percent / 100.0, fraction[::-1], doses[::-1]))


# --------------------------------------------------------------------------------------------- DVH

def _nice_bin_width(max_dose_gy: float) -> float:
    """1, 2 or 5 x 10^n Gy, close to (and not above) max / 1000; 0.01 Gy for a zero dose."""
    if not max_dose_gy > 0:
        return 0.01
    raw = max_dose_gy / 1000.0
    exponent = math.floor(math.log10(raw))
    for mantissa in (5.0, 2.0, 1.0):
        width = mantissa * 10.0 ** exponent
        if width <= raw * (1 + 1e-12):
            return width
    return 10.0 ** exponent


def cumulative_dvh(dose_gy: np.ndarray, weights: np.ndarray, voxel_volume_ml: float, *,
                   bin_width_gy: Optional[float] = None, max_dose_gy: Optional[float] = None,
                   name: Optional[str] = None) -> Tuple[np.ndarray, np.ndarray]:
    """Cumulative DVH: volume (mL) receiving at least each dose.

    Parameters
    ----------
    dose_gy, weights, voxel_volume_ml
        As for :func:`dose_statistics`.
    bin_width_gy : float, optional
        Dose step. Default: 1, 2 or 5 x 10^n Gy close to ``max_dose_gy / 1000`` (0.01 Gy for a zero dose).
    max_dose_gy : float, optional
        Last dose of the axis (use one value for several VOIs to share an axis). Default: the VOI's
        maximum dose; the axis is then extended by one step so that the curve ends at 0 mL.
    name : str, optional
        VOI name for error messages.

    Returns
    -------
    dose_edges_gy : numpy.ndarray
        0, w, 2w, ... (Gy).
    volume_ml_at_least : numpy.ndarray
        Same length: volume (mL) with dose >= each edge. Negative doses (numerical noise) count as
        0 Gy. ``volume_ml_at_least[0]`` is the VOI volume.
    """
    dose, volume = _validated(dose_gy, weights, voxel_volume_ml, name)
    top = float(dose.max()) if max_dose_gy is None else float(max_dose_gy)
    if not (np.isfinite(top) and top >= 0):
        raise ValueError(f"max_dose_gy must be a finite dose >= 0, got {max_dose_gy}")
    width = _nice_bin_width(top) if bin_width_gy is None else float(bin_width_gy)
    if not (np.isfinite(width) and width > 0):
        raise ValueError(f"bin_width_gy must be > 0, got {bin_width_gy}")
    n_edges = int(math.floor(top / width + 1e-9)) + 1
    if max_dose_gy is None:
        n_edges += 1  # one step past the maximum: the curve reaches 0 mL
    edges = np.arange(n_edges, dtype=np.float64) * width
    # bin k holds the voxels with edges[k] <= d < edges[k+1]; d >= edges[k] <=> bin >= k.
    index = np.clip(np.searchsorted(edges, dose, side="right") - 1, 0, n_edges - 1)
    per_bin = np.bincount(index, weights=volume, minlength=n_edges)
    at_least = np.cumsum(per_bin[::-1])[::-1]
    return edges, at_least


# --------------------------------------------------------------------------------------------- export

DVH_CSV_COLUMNS = ("voi", "dose_gy", "volume_ml", "volume_percent")


def dvh_table(dvhs: Mapping[str, Tuple[np.ndarray, np.ndarray]]) -> List[Dict[str, object]]:
    """Long-format rows of several cumulative DVHs.

    Parameters
    ----------
    dvhs : mapping
        VOI name -> (dose_edges_gy, volume_ml_at_least) as from :func:`cumulative_dvh`.

    Returns
    -------
    list of dict
        One row per VOI and dose: ``voi``, ``dose_gy``, ``volume_ml``, ``volume_percent`` (of the VOI
        volume, i.e. of the volume at the first dose point).
    """
    rows: List[Dict[str, object]] = []
    for name, (dose, volume) in dvhs.items():
        dose = np.asarray(dose, dtype=np.float64)
        volume = np.asarray(volume, dtype=np.float64)
        if dose.shape != volume.shape or dose.ndim != 1:
            raise ValueError(f"DVH of {name!r}: dose and volume must be 1D arrays of one length")
        total = float(volume[0]) if volume.size else 0.0
        for d, v in zip(dose, volume):
            rows.append({"voi": str(name), "dose_gy": float(d), "volume_ml": float(v),
                         "volume_percent": 100.0 * float(v) / total if total > 0 else 0.0})
    return rows


def write_dvh_csv(path: os.PathLike, dvhs: Mapping[str, Tuple[np.ndarray, np.ndarray]]) -> Path:
    """Write DVHs as a long-format CSV (columns :data:`DVH_CSV_COLUMNS`), atomically.

    Returns the path written. Raises :class:`OutputError` when the folder cannot be written.
    """
    path = Path(path)
    rows = dvh_table(dvhs)
    try:
        with atomic_file(path, ".csv") as tmp, open(tmp, "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(DVH_CSV_COLUMNS)
            for row in rows:
                writer.writerow([row["voi"], f"{row['dose_gy']:.6g}", f"{row['volume_ml']:.6g}",
                                 f"{row['volume_percent']:.6g}"])
    except OSError as exc:
        raise OutputError(f"cannot write the DVH table ({exc.strerror or exc})", path) from None
    return path


def plot_dvh(path: os.PathLike, dvhs: Mapping[str, Tuple[np.ndarray, np.ndarray]],
             title: Optional[str] = None) -> Path:
    """Plot cumulative DVHs (volume % against dose) to an image file (format from the suffix), atomically.

    Uses matplotlib's Agg canvas directly (no pyplot state, no display needed).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    path = Path(path)
    figure = Figure(figsize=(7, 4.5), dpi=120)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot(1, 1, 1)
    for name, (dose, volume) in dvhs.items():
        volume = np.asarray(volume, dtype=np.float64)
        total = float(volume[0]) if volume.size and volume[0] > 0 else 1.0
        axes.plot(np.asarray(dose, dtype=np.float64), 100.0 * volume / total, label=str(name))
    axes.set_xlabel("Absorbed dose (Gy)")
    axes.set_ylabel("Volume (%)")
    axes.set_ylim(0, 105)
    axes.set_xlim(left=0)
    axes.grid(True, alpha=0.3)
    if title:
        axes.set_title(title)
    if dvhs:
        axes.legend(loc="upper right", fontsize="small")
    figure.tight_layout()
    try:
        with atomic_file(path, path.suffix or ".png") as tmp:
            figure.savefig(tmp, format=(path.suffix.lstrip(".") or "png"))
    except OSError as exc:
        raise OutputError(f"cannot write the DVH plot ({exc.strerror or exc})", path) from None
    return path


# --------------------------------------------------------------------------------------------- files

def dvh_from_files(dose_path: os.PathLike, rtstruct_path: os.PathLike, *, supersample: int = 1,
                   names: Optional[Sequence[str]] = None
                   ) -> Tuple[Dict[str, Dict[str, object]], Dict[str, Tuple[np.ndarray, np.ndarray]]]:
    """Statistics and cumulative DVHs of every ROI of an RTSTRUCT on an RT Dose grid.

    Structures are rasterised on the dose grid itself (:func:`LuDosimetryLib.vois.structure_set_masks`,
    in-plane ``supersample``; the dose is not interpolated). The DVHs of all ROIs share one dose axis.

    ROIs that extend beyond the dose grid are **clipped**: they are rasterised on the dose grid padded to
    hold them, then cut back to the dose grid, with a :class:`DVHWarning` giving the share of the ROI
    volume left out. ROIs that cannot be rasterised (contours not parallel to the dose planes) or that
    cover no dose voxel (no contours, point ROIs) are skipped with a :class:`DVHWarning` naming them.

    Parameters
    ----------
    dose_path : path-like
        RT Dose file (GY or CGY).
    rtstruct_path : path-like
        RTSTRUCT in the same frame of reference.
    supersample : int
        In-plane sub-samples per voxel side for fractional masks (1: voxel-centre rule).
    names : sequence of str, optional
        Only these ROIs.

    Returns
    -------
    stats : dict
        ROI name -> :func:`dose_statistics` result.
    dvhs : dict
        ROI name -> (dose_edges_gy, volume_ml_at_least).

    Raises
    ------
    DicomFileError
        Unreadable files, or an RT Dose without a frame of reference.
    StructureError
        Frames of reference differ, or a requested name is absent.
    """
    from . import vois
    from .io.rtdose import read_rtdose
    from .io.rtstruct import read_rtstruct

    rd = read_rtdose(dose_path)
    ss = read_rtstruct(rtstruct_path)
    if not rd.frame_of_reference_uid:
        raise DicomFileError("RT Dose has no Frame of Reference UID; it cannot be matched to the RTSTRUCT",
                             dose_path)
    vois.check_frame_of_reference(ss, rd.frame_of_reference_uid)

    import SimpleITK as sitk

    dose = sitk.GetArrayFromImage(rd.image).astype(np.float64)
    voxel_ml = float(np.prod(rd.image.GetSpacing())) / 1000.0
    rois = list(ss.rois)
    if names is not None:
        wanted = list(names)
        missing = [n for n in wanted if n not in [r.name for r in rois]]
        if missing:
            raise StructureError("no ROI named " + ", ".join(repr(m) for m in missing) + "; available: "
                                 + ", ".join(repr(r.name) for r in rois), rtstruct_path)
        rois = [r for r in rois if r.name in wanted]

    masks: Dict[str, np.ndarray] = {}
    used: Dict[str, int] = {}
    for roi in rois:
        key = roi.name
        if key in used:
            used[key] += 1
            key = f"{roi.name} ({used[roi.name]})"
        used.setdefault(key, 1)
        mask = _roi_mask_on_grid(vois, ss, roi, rd.image, supersample, rtstruct_path)
        if mask is not None:
            masks[key] = mask

    stats: Dict[str, Dict[str, object]] = {}
    inside_doses = [float(dose[m > 0].max()) for m in masks.values() if np.any(m > 0)]
    top = max(inside_doses) if inside_doses else 0.0
    width = _nice_bin_width(top)
    top += width  # one step past the largest maximum: every curve ends at 0 mL
    dvhs: Dict[str, Tuple[np.ndarray, np.ndarray]] = {}
    for key, mask in masks.items():
        try:
            stats[key] = dose_statistics(dose, mask, voxel_ml, name=key)
        except StructureError as exc:
            warnings.warn(f"{rtstruct_path}: ROI {key!r} skipped: {exc.problem}", DVHWarning, stacklevel=2)
            continue
        dvhs[key] = cumulative_dvh(dose, mask, voxel_ml, bin_width_gy=width, max_dose_gy=top, name=key)
    return stats, dvhs


def _roi_mask_on_grid(vois, ss, roi, reference, supersample: int, source) -> Optional[np.ndarray]:
    """Mask of one ROI on ``reference``; clipped (with a warning) when it extends beyond it; None if skipped."""
    single = dataclasses.replace(ss, rois=[roi])
    try:
        return next(iter(vois.structure_set_masks(single, reference, supersample).values()))
    except StructureError as exc:
        first_error = exc
    # Retry on the grid padded to hold every contour point, then cut back to the dose grid.
    points = np.concatenate(roi.contours) if roi.contours else np.zeros((0, 3))
    if points.size == 0:
        warnings.warn(f"{source}: ROI {roi.name!r} skipped: {first_error.problem}", DVHWarning, stacklevel=3)
        return None
    index = vois.physical_to_index(points, reference)
    size = np.array(reference.GetSize())  # (x, y, z)
    pad_low = np.maximum(np.ceil(-0.5 - index.min(axis=0)), 0).astype(int) + 1
    pad_high = np.maximum(np.ceil(index.max(axis=0) - (size - 0.5)), 0).astype(int) + 1
    padded = _padded_grid(reference, pad_low, pad_high)
    try:
        big = next(iter(vois.structure_set_masks(single, padded, supersample).values()))
    except StructureError as exc:
        warnings.warn(f"{source}: ROI {roi.name!r} skipped: {exc.problem}", DVHWarning, stacklevel=3)
        return None
    (lx, ly, lz), (nx, ny, nz) = pad_low, size
    mask = big[lz:lz + nz, ly:ly + ny, lx:lx + nx]
    total = float(big.sum())
    kept = float(mask.sum())
    if total > 0:
        warnings.warn(f"{source}: ROI {roi.name!r} extends beyond the dose grid; its DVH covers the "
                      f"{100.0 * kept / total:.1f} % of its volume inside the grid", DVHWarning, stacklevel=3)
    return np.ascontiguousarray(mask)


def _padded_grid(reference, pad_low: np.ndarray, pad_high: np.ndarray):
    """An empty image on ``reference``'s grid extended by whole voxels (x, y, z) on each side."""
    import SimpleITK as sitk

    size = np.array(reference.GetSize()) + pad_low + pad_high
    image = sitk.Image([int(s) for s in size], sitk.sitkUInt8)
    image.SetSpacing(reference.GetSpacing())
    image.SetDirection(reference.GetDirection())
    direction = np.asarray(reference.GetDirection(), dtype=np.float64).reshape(3, 3)
    origin = np.asarray(reference.GetOrigin()) - direction @ (pad_low * np.asarray(reference.GetSpacing()))
    image.SetOrigin([float(v) for v in origin])
    return image
