"""DICOM image series → SimpleITK images in patient coordinates (LPS, mm) with physical units.

Reads single-slice series (CT, PT, NM; one rescale slope per slice, as MIM exports write them) and
multi-frame NM / enhanced objects alike, with pydicom, so that every slice's own RescaleSlope and
Real World Value Mapping are honoured. Reconstructed SPECT is returned as activity concentration in
Bq/mL **at the acquisition start**, with any decay correction in the file undone (DecayCorrection
ADMIN / START / NONE, PS3.3 C.8.9.1.1.3).
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from datetime import datetime
from typing import List, Optional, Sequence, Tuple

import numpy as np
import pydicom
import SimpleITK as sitk

from ..assumptions import assume
from ..errors import DicomFileError, StudyError
from ..radionuclides import Radionuclide, radionuclide
from .dicom_common import read_dicom
from .dicom_time import (acquisition_datetime, disagreement_with_header, format_time, latest_time_of_day,
                         radiopharmaceutical_start)

_BQML_UNITS = ("BQML", "BQ/ML", "BQ/CC")

# Plausibility bounds of the headers that turn stored values into physical ones. They are this project's,
# chosen far outside any real scanner's values, so that only damaged headers are refused:
#: RescaleSlope / RealWorldValueSlope: the physical step of one stored unit (HU, Bq/mL, counts). Below
#: 1e-10 a 16-bit image spans less than 1e-5 units; above 1e10 one stored unit exceeds any activity
#: concentration in a patient.
_SLOPE_RANGE = (1e-10, 1e10)
#: |RescaleIntercept| at most this (CT writes -1024 or -8192; Bq/mL images 0).
_INTERCEPT_LIMIT = 1e10
#: Slices of one series may each carry their own slope (scaled to the slice's maximum, as MIM and
#: Siemens write PET/SPECT slices): they differ by the ratio of the slices' maxima. A slope this many times
#: above or below the series' median (over the slices whose stored values are not all 0) is no scaling
#: but a damaged value.
_SLOPE_SPREAD = 1e6
#: Activity concentration (Bq/mL) above this is more than any therapy administers, in one millilitre
#: (1 TBq/mL; Lu-177 therapies give up to about 30 GBq): a damaged scale.
_MAX_BQ_ML = 1e12
#: PixelSpacing / slice spacing (mm) above this is larger than a patient: a damaged header.
_MAX_SPACING_MM = 1000.0
#: Modalities whose image module requires RescaleSlope and RescaleIntercept (type 1: CT Image C.8.2.1,
#: PET Image C.8.9.4); elsewhere (NM) stored values are the values when they are absent.
_RESCALE_REQUIRED = ("CT", "PT")


def _read_full(path: str):
    try:
        ds = read_dicom(path)
    except Exception as exc:
        raise DicomFileError(f"unreadable DICOM file ({type(exc).__name__}: {exc})", path) from exc
    return ds


def _pixels(ds, path: str) -> np.ndarray:
    """The stored values of a file (frames, rows, columns), after :func:`_check_pixel_length`."""
    _check_pixel_length(ds, path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # padding: the length is checked above
            arr = ds.pixel_array
    except Exception as exc:
        raise DicomFileError(f"pixel data cannot be decoded (truncated or corrupt file?): {exc}", path) from exc
    return np.asarray(arr)


def _integer(ds, keyword: str, path: str, default: Optional[int] = None) -> int:
    """A positive integer attribute (Rows, Columns, BitsAllocated...) or DicomFileError naming the file."""
    value = ds.get(keyword)
    if value in (None, ""):
        if default is not None:
            return default
        raise DicomFileError(f"{keyword} is missing", path)
    try:
        number = int(value)
    except (TypeError, ValueError) as exc:
        raise DicomFileError(f"{keyword} {value!r} is not an integer", path) from exc
    if number <= 0:
        raise DicomFileError(f"{keyword} is {number}", path)
    return number


def _matrix(ds, path: str) -> Tuple[int, int]:
    """(Rows, Columns) of a file, both present and positive."""
    return _integer(ds, "Rows", path), _integer(ds, "Columns", path)


def _check_pixel_length(ds, path: str) -> None:
    """Refuse native (uncompressed) pixel data whose length is not Rows x Columns x frames x samples x
    BitsAllocated / 8 bytes (plus the one pad byte of an odd length, PS3.5 8.1.1).

    pydicom reads longer data by cutting the excess with a warning, which shears the image when Rows or
    Columns is wrong; shorter data would be an error of its own. Encapsulated (compressed) data are left to
    the decoder.
    """
    meta = getattr(ds, "file_meta", None)
    syntax = None if meta is None else meta.get("TransferSyntaxUID")
    if syntax is not None and getattr(syntax, "is_compressed", False):
        return
    rows, columns = _matrix(ds, path)
    frames = _integer(ds, "NumberOfFrames", path, default=1)
    samples = _integer(ds, "SamplesPerPixel", path, default=1)
    bits = _integer(ds, "BitsAllocated", path)
    expected = (rows * columns * frames * samples * bits + 7) // 8
    actual = len(ds.PixelData or b"")
    if actual not in (expected, expected + expected % 2):
        shape = f"{frames} x " if frames > 1 else ""
        raise DicomFileError(f"pixel data hold {actual} bytes, but {shape}Rows {rows} x Columns {columns} x "
                             f"{bits} bits need {expected}: the matrix size, BitsAllocated or the pixel data "
                             "are wrong", path)


def _float_list(value, n: int, what: str, path: str) -> np.ndarray:
    try:
        out = np.array([float(v) for v in value], dtype=float)
    except Exception as exc:
        raise DicomFileError(f"{what} is missing or not numeric", path) from exc
    if out.size != n:
        raise DicomFileError(f"{what} has {out.size} values, expected {n}", path)
    if not np.all(np.isfinite(out)):
        raise DicomFileError(f"{what} is not finite ({_listing(out)})", path)
    return out


def _listing(values) -> str:
    return "\\".join(f"{v:g}" for v in values)


def _check_spacing(spacing_mm: np.ndarray, what: str, path: str) -> None:
    """Refuse a pixel or slice spacing that is not positive or larger than a patient (``_MAX_SPACING_MM``)."""
    if np.any(spacing_mm <= 0) or np.any(spacing_mm > _MAX_SPACING_MM):
        raise DicomFileError(f"{what} {_listing(spacing_mm)} mm is not a voxel size (each value must be above 0 "
                             f"and at most {_MAX_SPACING_MM:g} mm)", path)


def _check_orientation(iop: np.ndarray, path: str) -> None:
    """Refuse an ImageOrientationPatient whose row and column cosines are not orthogonal unit vectors."""
    row, col = iop[:3], iop[3:]
    if (abs(np.linalg.norm(row) - 1.0) > 1e-3 or abs(np.linalg.norm(col) - 1.0) > 1e-3
            or abs(float(row @ col)) > 1e-3):
        raise DicomFileError(f"ImageOrientationPatient {_listing(iop)} is not two orthogonal unit vectors "
                             "(cannot place the image in space)", path)


@dataclass(frozen=True)
class _Rescale:
    """How one file's (or frame's) stored values become physical ones: ``value = stored * slope + intercept``.

    ``missing`` names the Modality LUT attributes the file lacks (their identity value is taken here; the
    series decides whether that is allowed, :func:`_series_rescale`).
    """

    slope: float
    intercept: float
    units: str
    missing: Tuple[str, ...] = ()


def _rescale(ds, path: str, prefer_rwvm: bool = True) -> _Rescale:
    """Stored values → physical values of a file, checked (:func:`_check_rescale`).

    A Real World Value Mapping (used by Siemens/GE quantitative SPECT) wins over Modality LUT rescale
    when it carries measurement units.
    """
    rwvm = ds.get("RealWorldValueMappingSequence")
    if prefer_rwvm and rwvm:
        item = rwvm[0]
        code = item.get("MeasurementUnitsCodeSequence")
        units = str(code[0].get("CodeValue", "")).upper() if code else ""
        if item.get("RealWorldValueSlope") not in (None, ""):
            slope = _decimal(item, "RealWorldValueSlope", path)
            intercept = _decimal(item, "RealWorldValueIntercept", path)
            _check_rescale(slope, 0.0 if intercept is None else intercept, "RealWorldValue", path)
            return _Rescale(slope, 0.0 if intercept is None else intercept, units)
    slope = _decimal(ds, "RescaleSlope", path)
    intercept = _decimal(ds, "RescaleIntercept", path)
    missing = tuple(k for k, v in (("RescaleSlope", slope), ("RescaleIntercept", intercept)) if v is None)
    slope = 1.0 if slope is None else slope
    intercept = 0.0 if intercept is None else intercept
    _check_rescale(slope, intercept, "Rescale", path)
    return _Rescale(slope, intercept, str(ds.get("Units", "") or "").upper(), missing)


def _decimal(ds, keyword: str, path: str) -> Optional[float]:
    """A DS attribute as float; None when absent or empty; DicomFileError when it is not one number."""
    try:
        value = ds.get(keyword)
    except Exception as exc:  # noqa: BLE001 - pydicom converts the raw value here and raises many types
        raise DicomFileError(f"{keyword} cannot be read ({exc})", path) from exc
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    try:
        return float(value)
    except (TypeError, ValueError) as exc:
        raise DicomFileError(f"{keyword} {value!r} is not a number", path) from exc


def _check_rescale(slope: float, intercept: float, prefix: str, path: str) -> None:
    """Refuse a slope that is not finite and positive or outside ``_SLOPE_RANGE``, and an intercept that
    is not finite or beyond ``_INTERCEPT_LIMIT``: the physical values would be negated, collapsed to one
    value, not finite or absurd."""
    low, high = _SLOPE_RANGE
    if not math.isfinite(slope) or slope <= 0:
        raise DicomFileError(f"{prefix}Slope {slope:g}: stored values must map to physical ones by a finite "
                             "positive slope", path)
    if not low <= slope <= high:
        raise DicomFileError(f"{prefix}Slope {slope:g} is not a plausible scale (outside {low:g} to {high:g} "
                             "per stored unit)", path)
    if not math.isfinite(intercept) or abs(intercept) > _INTERCEPT_LIMIT:
        raise DicomFileError(f"{prefix}Intercept {intercept:g} is not a plausible offset (at most "
                             f"{_INTERCEPT_LIMIT:g} in magnitude)", path)


def _series_rescale(rescales: Sequence[_Rescale], stored: Sequence[np.ndarray], paths: Sequence[str],
                    what: str, modality: str) -> None:
    """Check the rescales of a series' slices (or a file's frames) together.

    - A Modality LUT attribute that some slices have and others lack is refused, naming a slice that
      lacks it (its values would be read on another scale than its neighbours').
    - Lacking in every slice of a CT or PET series, where it is required, the identity (slope 1,
      intercept 0) is a named assumption (refused in a strict run).
    - A slope ``_SLOPE_SPREAD`` times above or below the median of the slices whose stored values are not
      all 0 (where the slope matters) is refused, naming the slice.
    """
    for keyword in ("RescaleSlope", "RescaleIntercept"):
        lacking = [p for r, p in zip(rescales, paths) if keyword in r.missing]
        if lacking and len(lacking) < len(paths):
            having = next(p for r, p in zip(rescales, paths) if keyword not in r.missing)
            raise DicomFileError(f"{what}: {keyword} is missing, while other files of the series have one "
                                 f"(e.g. {having})", lacking[0])
        if lacking and modality in _RESCALE_REQUIRED:
            assume(f"{what}: {keyword} missing (required in {modality} images); stored values read with",
                   f"{keyword} {1 if keyword == 'RescaleSlope' else 0}",
                   "default (identity Modality LUT)", paths[0])
    slopes = np.array([r.slope for r, v in zip(rescales, stored) if np.any(v)], dtype=np.float64)
    if slopes.size < 2:
        return
    median = float(np.median(slopes))
    for r, v, path in zip(rescales, stored, paths):
        ratio = r.slope / median
        if np.any(v) and not 1.0 / _SLOPE_SPREAD <= ratio <= _SLOPE_SPREAD:
            raise DicomFileError(f"{what}: RescaleSlope {r.slope:g} is {ratio:.3g} times the series' median "
                                 f"{median:g}: a damaged per-slice scale, not a plausible one", path)


@dataclass
class ImageSeries:
    """A read image series: the image and the header of its first file."""

    image: sitk.Image
    first_header: pydicom.Dataset
    files: List[str]
    units: str
    frame_of_reference_uid: str = ""  # the one its files name ('' when none does)


def _geometry_from(ds, path: str):
    """(row cosine, column cosine, first position, pixel spacing (row, col)) of an image or frame."""
    iop = ds.get("ImageOrientationPatient")
    ipp = ds.get("ImagePositionPatient")
    det = ds.get("DetectorInformationSequence")
    if (iop is None or ipp is None) and det:
        iop = det[0].get("ImageOrientationPatient", iop)
        ipp = det[0].get("ImagePositionPatient", ipp)
    shared = ds.get("SharedFunctionalGroupsSequence")
    if (iop is None) and shared:
        po = shared[0].get("PlaneOrientationSequence")
        if po:
            iop = po[0].ImageOrientationPatient
    if iop is None:
        raise DicomFileError("ImageOrientationPatient is missing (cannot place the image in space)", path)
    iop = _float_list(iop, 6, "ImageOrientationPatient", path)
    _check_orientation(iop, path)
    ps = ds.get("PixelSpacing")
    if ps is None and shared:
        pm = shared[0].get("PixelMeasuresSequence")
        if pm:
            ps = pm[0].get("PixelSpacing")
    if ps is None:
        raise DicomFileError("PixelSpacing is missing", path)
    ps = _float_list(ps, 2, "PixelSpacing", path)
    _check_spacing(ps, "PixelSpacing", path)
    pos = None if ipp is None else _float_list(ipp, 3, "ImagePositionPatient", path)
    return iop[:3], iop[3:], pos, ps


def _make_image(volume: np.ndarray, row: np.ndarray, col: np.ndarray, normal: np.ndarray,
                origin: np.ndarray, spacing_xyz: Sequence[float]) -> sitk.Image:
    img = sitk.GetImageFromArray(volume.astype(np.float32, copy=False))
    img.SetOrigin(tuple(float(v) for v in origin))
    img.SetSpacing(tuple(float(v) for v in spacing_xyz))
    direction = np.stack([row, col, normal], axis=1)  # columns: i, j, k axes in LPS
    img.SetDirection(tuple(float(v) for v in direction.ravel()))
    return img


def read_image_series(files: Sequence[str], *, what: str = "image series") -> ImageSeries:
    """Read one DICOM image series (single-slice files or one multi-frame file) into float32 LPS.

    Parameters
    ----------
    files : list of str
        All files of the series (any order).
    what : str
        Used in error messages (e.g. ``"SPECT series C2S1D0"``).

    Returns
    -------
    ImageSeries
        ``image`` holds physical values: each slice's own slope/intercept applied.

    Raises
    ------
    DicomFileError
        Unreadable/truncated file, missing geometry, inconsistent slices, duplicate or missing slices.
    """
    if not files:
        raise StudyError(f"{what}: no files")
    datasets = [(_read_full(f), f) for f in files]
    datasets = [(ds, f) for ds, f in datasets if "PixelData" in ds]
    if not datasets:
        raise DicomFileError(f"{what}: no file holds pixel data", files[0])
    multi = [(ds, f) for ds, f in datasets if int(ds.get("NumberOfFrames", 1) or 1) > 1]
    if multi:
        if len(datasets) > 1:
            chosen = multi[0][0].PixelData
            other = next((f for ds, f in datasets if ds.PixelData != chosen), None)
            if other is not None:  # another image in the series: which one is the volume cannot be told
                raise DicomFileError(f"{what}: {len(datasets)} files with pixel data in a series of the multi-frame "
                                     f"{multi[0][1]}, and this one holds other pixels; keep one image per series",
                                     other)
            warnings.warn(f"{what}: {len(datasets)} copies of the multi-frame image; using {multi[0][1]}")
        return _read_multiframe(*multi[0], what=what)
    return _read_slices(datasets, what=what)


def _read_multiframe(ds, path: str, *, what: str) -> ImageSeries:
    stored = _pixels(ds, path)
    if stored.ndim == 2:
        stored = stored[None]
    n = stored.shape[0]
    pffg = ds.get("PerFrameFunctionalGroupsSequence")
    row, col, pos0, ps = _geometry_from(ds, path)
    normal = np.cross(row, col)
    modality = str(ds.get("Modality", "") or "").upper()
    if pffg and len(pffg) == n and pffg[0].get("PlanePositionSequence"):
        positions = np.array([_float_list(fg.PlanePositionSequence[0].ImagePositionPatient, 3,
                                          "ImagePositionPatient", path) for fg in pffg])
        shared = None
        rescales = []
        for fg in pffg:
            pvt = fg.get("PixelValueTransformationSequence")
            if pvt:
                rescales.append(_rescale(pvt[0], path, prefer_rwvm=False))
            else:
                shared = shared or _rescale(ds, path)
                rescales.append(shared)
        units = (shared or _rescale(ds, path)).units
        _series_rescale(rescales, list(stored), [path] * n, what, modality)
        frames = np.stack([f.astype(np.float64) * r.slope + r.intercept for f, r in zip(stored, rescales)])
        order = np.argsort(positions @ normal)
        frames, positions = frames[order], positions[order]
        dz = np.diff(positions @ normal)
        spacing_z = float(np.median(dz)) if n > 1 else _single_slice_step_mm(ds, path, what)
        origin = positions[0]
    else:
        if pos0 is None:
            raise DicomFileError("ImagePositionPatient is missing (also in DetectorInformationSequence)", path)
        spacing_z = _slice_step_mm(ds, path)
        rescale = _rescale(ds, path)
        units = rescale.units
        _series_rescale([rescale], [stored], [path], what, modality)
        frames = stored.astype(np.float64)
        vec = ds.get("SliceVector")
        if vec is not None and len(vec) == n:
            order = np.argsort(np.asarray(vec, dtype=int), kind="stable")
            frames = frames[order]
        frames = frames * rescale.slope + rescale.intercept
        origin = pos0
        if spacing_z < 0:  # frames stored towards -normal
            normal, spacing_z = -normal, -spacing_z
    _check_spacing(np.array([spacing_z]), "slice spacing", path)
    _check_concentration(frames, units, what, path)
    img = _make_image(frames, row, col, normal, origin, (ps[1], ps[0], abs(spacing_z)))
    return ImageSeries(img, ds, [path], units, _frame_of_reference([(ds, path)], what))


def _check_concentration(values: np.ndarray, units: str, what: str, path: str) -> None:
    """Refuse Bq/mL values above ``_MAX_BQ_ML`` (every slope and intercept plausible, their product not)."""
    if units in _BQML_UNITS and values.size and float(np.max(values)) > _MAX_BQ_ML:
        raise DicomFileError(f"{what}: activity concentrations up to {float(np.max(values)):.3g} Bq/mL, more than "
                             f"{_MAX_BQ_ML:g}: RescaleSlope/RescaleIntercept or the units are wrong", path)


def _slice_step_mm(ds, path: str) -> float:
    """Slice spacing from the header (mm): SpacingBetweenSlices (negative: frames stored towards -normal),
    else SliceThickness (positive)."""
    step = _decimal(ds, "SpacingBetweenSlices", path)
    if step is None or step == 0:
        step = _decimal(ds, "SliceThickness", path)
        if step is not None and step < 0:
            raise DicomFileError(f"SliceThickness {step:g} mm is negative", path)
    if step is None or step == 0:
        raise DicomFileError("neither SpacingBetweenSlices nor SliceThickness gives the slice spacing", path)
    if not math.isfinite(step):
        raise DicomFileError(f"slice spacing {step} is not finite", path)
    return step


def _frame_of_reference(datasets, what: str) -> str:
    """The FrameOfReferenceUID the files of a series name ('' when none does); files that name none take
    the others' (it is an attribute of the series), files that name another are refused."""
    named = [(str(ds.get("FrameOfReferenceUID", "") or ""), f) for ds, f in datasets]
    uids = [u for u, _ in named if u]
    if not uids:
        return ""
    common = max(set(uids), key=uids.count)
    for uid, f in named:
        if uid and uid != common:
            raise DicomFileError(f"{what}: FrameOfReferenceUID {uid} differs from the series' {common}", f)
    return common


def _read_slices(datasets, *, what: str) -> ImageSeries:
    ds0, f0 = datasets[0]
    row, col, _, ps = _geometry_from(ds0, f0)
    shape = _matrix(ds0, f0)
    normal = np.cross(row, col)
    items = []
    for ds, f in datasets:
        r, c, pos, p = _geometry_from(ds, f)
        if pos is None:
            raise DicomFileError("ImagePositionPatient is missing", f)
        if not (np.allclose(r, row, atol=1e-4) and np.allclose(c, col, atol=1e-4)):
            raise DicomFileError(f"{what}: slice orientation differs from {f0}", f)
        if _matrix(ds, f) != shape:
            raise DicomFileError(f"{what}: matrix {ds.Rows}x{ds.Columns} differs from {ds0.Rows}x{ds0.Columns}", f)
        if not np.allclose(p, ps, rtol=1e-4):
            raise DicomFileError(f"{what}: pixel spacing differs from {f0}", f)
        items.append((float(pos @ normal), pos, ds, f))
    items.sort(key=lambda t: t[0])
    z = np.array([t[0] for t in items])
    if len(items) > 1:
        dz = np.diff(z)
        if np.any(dz < 1e-3):
            i = int(np.argmin(dz))
            raise DicomFileError(f"{what}: two slices at the same position (also {items[i][3]})", items[i + 1][3])
        step = float(np.median(dz))
        if np.any(np.abs(dz - step) > 0.1 * step):
            i = int(np.argmax(np.abs(dz - step)))
            raise DicomFileError(f"{what}: uneven slice spacing ({dz[i]:.3f} mm vs {step:.3f} mm): "
                                 "a slice is missing after this file", items[i][3])
    else:
        step = _single_slice_step_mm(ds0, f0, what)
    _check_spacing(np.array([step]), "slice spacing", items[0][3])
    stored, rescales = [], []
    for _, _, ds, f in items:
        px = _pixels(ds, f)
        if px.shape != shape:
            raise DicomFileError(f"{what}: pixel data of shape {px.shape} in a series of "
                                 f"{shape[0]}x{shape[1]}", f)
        stored.append(px)
        rescales.append(_rescale(ds, f))
    _series_rescale(rescales, stored, [t[3] for t in items], what, str(ds0.get("Modality", "") or "").upper())
    planes = [v.astype(np.float64) * r.slope + r.intercept for v, r in zip(stored, rescales)]
    units = next((r.units for r in rescales if r.units), "")
    for plane, (_, _, _, f) in zip(planes, items):
        _check_concentration(plane, units, what, f)
    img = _make_image(np.stack(planes), row, col, normal, items[0][1], (ps[1], ps[0], step))
    return ImageSeries(img, items[0][2], [t[3] for t in items], units,
                       _frame_of_reference([(t[2], t[3]) for t in items], what))


def _single_slice_step_mm(ds, path: str, what: str) -> float:
    """Thickness (mm) of a series of one slice: from the header, else 1 mm (a named assumption)."""
    try:
        return abs(_slice_step_mm(ds, path))
    except DicomFileError:
        if any(_decimal(ds, k, path) not in (None, 0.0) for k in ("SpacingBetweenSlices", "SliceThickness")):
            raise
    assume(f"{what}: one slice without SpacingBetweenSlices or SliceThickness: slice thickness", "1 mm",
           "default", path)
    return 1.0


@dataclass
class SpectVolume:
    """A quantitative SPECT at one time point.

    Attributes
    ----------
    image : SimpleITK.Image
        Activity concentration (Bq/mL) at ``acquisition_time`` (decay correction in the file undone).
    acquisition_time : datetime
        Acquisition start.
    duration_s : float or None
        Acquisition duration (s).
    series_instance_uid, description : str
    frame_of_reference_uid : str
    decay_correction : str
        What the file said (ADMIN, START, NONE or '').
    factor_applied : float
        Multiplicative factor applied to the stored values to get activity at acquisition start.
    injection_disagreement : str
        With DecayCorrection ADMIN: how this file's RadiopharmaceuticalStart(Date)Time disagrees with the
        injection time given and used (more than a minute), naming both; '' when they agree. A run's
        inventory warns it for every series (``scan_study``); a caller reading a file alone shows it.
    """

    image: sitk.Image
    acquisition_time: datetime
    duration_s: Optional[float]
    series_instance_uid: str
    description: str
    frame_of_reference_uid: str
    decay_correction: str
    factor_applied: float
    injection_disagreement: str = ""


def _duration_s(ds) -> Optional[float]:
    if ds.get("ActualFrameDuration") not in (None, ""):
        return float(ds.ActualFrameDuration) / 1000.0
    rot = ds.get("RotationInformationSequence")
    if rot:
        item = rot[0]
        try:
            return float(item.ActualFrameDuration) / 1000.0 * float(item.NumberOfFramesInRotation)
        except (AttributeError, TypeError, ValueError):  # a tag absent, empty or not a number
            return None
    return None


def _administration_time(ds, acquisition: datetime, injection_time: Optional[datetime], what: str,
                         path: str) -> "Tuple[datetime, str]":
    """The administration that ``DecayCorrection ADMIN`` values are corrected to, and how the header
    disagrees with it.

    The study's injection time (``injection_time``: the command line first, then the headers) when given,
    with the header's disagreement of more than a minute named (both times); else the header's
    RadiopharmaceuticalStartDateTime; else its RadiopharmaceuticalStartTime on the latest day not after the
    acquisition, a named assumption (the date is a guess).

    Raises
    ------
    DicomFileError
        No administration time at all.
    """
    if injection_time is not None:
        return injection_time, disagreement_with_header(ds, injection_time) or ""
    when, time_of_day = radiopharmaceutical_start(ds)
    if when is not None:
        return when, ""
    if time_of_day is None:
        raise DicomFileError(f"{what}: values are decay-corrected to the administration time (DecayCorrection "
                             "ADMIN) but no injection time is known; give --injection-time", path)
    when = latest_time_of_day(time_of_day, acquisition)
    assume("administration date inferred from RadiopharmaceuticalStartTime alone (the latest such time not "
           "after the acquisition)", format_time(when), "RadiopharmaceuticalStartTime", path)
    return when, ""


def _undo_admin_factor(acquisition: datetime, admin: datetime, decay_constant_per_s: float, what: str,
                       path: str) -> float:
    """exp(−λ·(acquisition − administration)): stored values corrected to the administration × this = the
    activity at the acquisition start (PS3.3 C.8.9.1.1.3).

    Raises
    ------
    DicomFileError
        Acquired before the administration, or so long after it that the factor is not a usable number
        (times decades apart: exp underflows).
    """
    elapsed_s = (acquisition - admin).total_seconds()
    if elapsed_s < 0:
        raise DicomFileError(f"{what}: decay-corrected to an administration ({format_time(admin)}) after its "
                             f"acquisition ({format_time(acquisition)}); check the dates or give --injection-time",
                             path)
    exponent = decay_constant_per_s * elapsed_s
    if exponent > 200.0:  # exp(−200) ≈ 1e−87: hundreds of half-lives, no activity left to image
        raise DicomFileError(f"{what}: acquired {format_time(acquisition)}, {elapsed_s / 86400.0:.0f} days after "
                             f"the administration ({format_time(admin)}) it is decay-corrected to: not a usable "
                             "decay factor; check the dates or give --injection-time", path)
    return math.exp(-exponent)


def _positive_float(value) -> Optional[float]:
    """``float(value)`` when it is a positive finite number, else None (absent, empty or garbled tag)."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) and number > 0 else None


def read_spect(files: Sequence[str], *, injection_time: Optional[datetime] = None,
               nuclide: Optional[Radionuclide] = None, calibration_bq_per_ml_per_unit: Optional[float] = None,
               what: str = "SPECT") -> SpectVolume:
    """Read a reconstructed SPECT series as Bq/mL at the acquisition start.

    Parameters
    ----------
    files : list of str
    injection_time : datetime, optional
        The study's injection time (the command line first, then the headers): used to undo DecayCorrection
        ADMIN, over this file's own RadiopharmaceuticalStartDateTime (a disagreement of more than a minute
        is warned, naming both times). Without it the header's time is used.
    nuclide : Radionuclide, optional
        Defaults to Lu-177.
    calibration_bq_per_ml_per_unit : float, optional
        For images not in Bq/mL (counts): factor from stored units to Bq/mL at acquisition. Given for an image
        in Bq/mL it is not applied, a named assumption.
    what : str
        Name used in messages.

    Raises
    ------
    DicomFileError
        Units not Bq/mL and no calibration given; ADMIN correction without an injection time, or to an
        administration after the acquisition or decades before it; no acquisition time at all.
    """
    nuclide = nuclide or radionuclide("Lu-177")
    series = read_image_series(files, what=what)
    ds = series.first_header
    units = series.units
    acq, _src = acquisition_datetime(ds)
    if acq is None:
        raise DicomFileError(f"{what}: no acquisition, series, content or study date/time in the header; "
                             "give the time points on the command line", series.files[0])
    duration = _duration_s(ds)
    image = series.image
    if units not in _BQML_UNITS:
        if calibration_bq_per_ml_per_unit is None:
            raise DicomFileError(f"{what}: values are in {units or 'unknown units'}, not Bq/mL, and no calibration "
                                 "was given (--spect-calibration BQML_PER_UNIT)", series.files[0])
        image = image * float(calibration_bq_per_ml_per_unit)
    elif calibration_bq_per_ml_per_unit is not None:  # the header and the command line disagree: say which wins
        assume(f"{what}: the SPECT calibration given ({float(calibration_bq_per_ml_per_unit):g} Bq/mL per unit) "
               f"not applied, its values being in Bq/mL already", f"Units {units}", "the header",
               series.files[0])
    correction = str(ds.get("DecayCorrection", "") or "").upper()
    lam = nuclide.decay_constant_per_s
    disagreement = ""
    if correction == "ADMIN":
        admin, disagreement = _administration_time(ds, acq, injection_time, what, series.files[0])
        factor = _undo_admin_factor(acq, admin, lam, what, series.files[0])
        header_factor = _positive_float(ds.get("DecayFactor"))
        if header_factor is not None:
            expected = 1.0 / factor
            if abs(header_factor / expected - 1.0) > 0.02:
                warnings.warn(f"{what}: DecayFactor {header_factor:.4f} in the header differs from "
                              f"exp(λ·Δt) = {expected:.4f} computed from the times; using the times")
    elif correction == "START" or correction == "":
        factor = 1.0
    elif correction == "NONE":
        # Stored values are the mean over the frame; convert to the activity at its start.
        if duration and duration > 0:
            x = lam * duration
            factor = x / (1.0 - math.exp(-x))
        else:
            factor = 1.0
    else:
        raise DicomFileError(f"{what}: unknown DecayCorrection {correction!r}", series.files[0])
    if factor != 1.0:
        image = image * factor
    image = sitk.Cast(image, sitk.sitkFloat32)
    return SpectVolume(image=image, acquisition_time=acq, duration_s=duration,
                       series_instance_uid=str(ds.SeriesInstanceUID), description=str(ds.get("SeriesDescription", "")),
                       frame_of_reference_uid=series.frame_of_reference_uid,
                       decay_correction=correction, factor_applied=factor, injection_disagreement=disagreement)


def read_ct(files: Sequence[str], what: str = "CT") -> sitk.Image:
    """CT series → HU image (float32)."""
    return read_image_series(files, what=what).image


def resample_to(image: sitk.Image, reference: sitk.Image, *, default: float = 0.0,
                interpolator=sitk.sitkLinear) -> sitk.Image:
    """Resample ``image`` onto ``reference``'s grid (same patient coordinates, no registration)."""
    return sitk.Resample(image, reference, sitk.Transform(), interpolator, float(default), sitk.sitkFloat32)


def mean_over_grid(image: sitk.Image, reference: sitk.Image, *, default: float = 0.0) -> sitk.Image:
    """Resample a finer image (e.g. CT density) onto a coarser grid by averaging, not point sampling.

    Smooths with a box of the target voxel size first (a Gaussian of matching variance), then samples
    linearly: a good approximation of the voxel mean for density and HU.
    """
    ratio = [r / max(s, 1e-9) for r, s in zip(reference.GetSpacing(), image.GetSpacing())]
    if max(ratio) > 1.2:
        # box of width w has variance w²/12; in mm for SimpleITK's physical-unit sigma
        sig = [math.sqrt(max(r ** 2 - s ** 2, 0.0) / 12.0) for r, s in zip(reference.GetSpacing(), image.GetSpacing())]
        image = sitk.SmoothingRecursiveGaussian(image, sig) if min(sig) > 0 else sitk.DiscreteGaussian(
            image, [v ** 2 for v in sig], useImageSpacing=True)
    return resample_to(image, reference, default=default)
