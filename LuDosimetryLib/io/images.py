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

from ..errors import DicomFileError, StudyError
from ..radionuclides import Radionuclide, radionuclide
from .dicom_common import read_dicom
from .dicom_time import acquisition_datetime, combine, parse_dt

_BQML_UNITS = ("BQML", "BQ/ML", "BQ/CC")


def _read_full(path: str):
    try:
        ds = read_dicom(path)
    except Exception as exc:
        raise DicomFileError(f"unreadable DICOM file ({type(exc).__name__}: {exc})", path) from exc
    return ds


def _pixels(ds, path: str) -> np.ndarray:
    try:
        arr = ds.pixel_array
    except Exception as exc:
        raise DicomFileError(f"pixel data cannot be decoded (truncated or corrupt file?): {exc}", path) from exc
    return np.asarray(arr)


def _float_list(value, n: int, what: str, path: str) -> np.ndarray:
    try:
        out = np.array([float(v) for v in value], dtype=float)
    except Exception as exc:
        raise DicomFileError(f"{what} is missing or not numeric", path) from exc
    if out.size != n:
        raise DicomFileError(f"{what} has {out.size} values, expected {n}", path)
    return out


def _rescale(ds, prefer_rwvm: bool = True) -> Tuple[float, float, str]:
    """(slope, intercept, units) for stored values → physical values.

    A Real World Value Mapping (used by Siemens/GE quantitative SPECT) wins over Modality LUT rescale
    when it carries measurement units.
    """
    rwvm = ds.get("RealWorldValueMappingSequence")
    if prefer_rwvm and rwvm:
        item = rwvm[0]
        code = item.get("MeasurementUnitsCodeSequence")
        units = str(code[0].get("CodeValue", "")).upper() if code else ""
        if item.get("RealWorldValueSlope") is not None:
            return float(item.RealWorldValueSlope), float(item.get("RealWorldValueIntercept", 0.0) or 0.0), units
    slope = float(ds.get("RescaleSlope", 1.0) or 1.0)
    intercept = float(ds.get("RescaleIntercept", 0.0) or 0.0)
    return slope, intercept, str(ds.get("Units", "") or "").upper()


@dataclass
class ImageSeries:
    """A read image series: the image and the header of its first file."""

    image: sitk.Image
    first_header: pydicom.Dataset
    files: List[str]
    units: str


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
    ps = ds.get("PixelSpacing")
    if ps is None and shared:
        pm = shared[0].get("PixelMeasuresSequence")
        if pm:
            ps = pm[0].get("PixelSpacing")
    if ps is None:
        raise DicomFileError("PixelSpacing is missing", path)
    ps = _float_list(ps, 2, "PixelSpacing", path)
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
            warnings.warn(f"{what}: {len(datasets)} files with pixel data; using the multi-frame {multi[0][1]}")
        return _read_multiframe(*multi[0], what=what)
    return _read_slices(datasets, what=what)


def _read_multiframe(ds, path: str, *, what: str) -> ImageSeries:
    frames = _pixels(ds, path).astype(np.float64)
    if frames.ndim == 2:
        frames = frames[None]
    n = frames.shape[0]
    pffg = ds.get("PerFrameFunctionalGroupsSequence")
    row, col, pos0, ps = _geometry_from(ds, path)
    normal = np.cross(row, col)
    slope, intercept, units = _rescale(ds)
    if pffg and len(pffg) == n and pffg[0].get("PlanePositionSequence"):
        positions = np.array([_float_list(fg.PlanePositionSequence[0].ImagePositionPatient, 3,
                                          "ImagePositionPatient", path) for fg in pffg])
        slopes = []
        for fg in pffg:
            pvt = fg.get("PixelValueTransformationSequence")
            slopes.append((float(pvt[0].RescaleSlope), float(pvt[0].RescaleIntercept)) if pvt else (slope, intercept))
        frames = np.stack([f * s + b for f, (s, b) in zip(frames, slopes)])
        order = np.argsort(positions @ normal)
        frames, positions = frames[order], positions[order]
        dz = np.diff(positions @ normal)
        spacing_z = float(np.median(dz)) if n > 1 else float(ds.get("SliceThickness", 1.0) or 1.0)
        origin = positions[0]
    else:
        if pos0 is None:
            raise DicomFileError("ImagePositionPatient is missing (also in DetectorInformationSequence)", path)
        spacing_z = ds.get("SpacingBetweenSlices") or ds.get("SliceThickness")
        if spacing_z in (None, ""):
            raise DicomFileError("neither SpacingBetweenSlices nor SliceThickness is given", path)
        spacing_z = float(spacing_z)
        vec = ds.get("SliceVector")
        if vec is not None and len(vec) == n:
            order = np.argsort(np.asarray(vec, dtype=int), kind="stable")
            frames = frames[order]
        frames = frames * slope + intercept
        origin = pos0
        if spacing_z < 0:  # frames stored towards -normal
            normal, spacing_z = -normal, -spacing_z
    img = _make_image(frames, row, col, normal, origin, (ps[1], ps[0], abs(spacing_z)))
    return ImageSeries(img, ds, [path], units)


def _read_slices(datasets, *, what: str) -> ImageSeries:
    ds0, f0 = datasets[0]
    row, col, _, ps = _geometry_from(ds0, f0)
    normal = np.cross(row, col)
    items = []
    for ds, f in datasets:
        r, c, pos, p = _geometry_from(ds, f)
        if pos is None:
            raise DicomFileError("ImagePositionPatient is missing", f)
        if not (np.allclose(r, row, atol=1e-4) and np.allclose(c, col, atol=1e-4)):
            raise DicomFileError(f"{what}: slice orientation differs from {f0}", f)
        if (int(ds.Rows), int(ds.Columns)) != (int(ds0.Rows), int(ds0.Columns)):
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
        step = float(ds0.get("SpacingBetweenSlices") or ds0.get("SliceThickness") or 1.0)
    planes = []
    units = ""
    for _, _, ds, f in items:
        slope, intercept, u = _rescale(ds)
        units = units or u
        px = _pixels(ds, f).astype(np.float64)
        if px.shape != (int(ds0.Rows), int(ds0.Columns)):
            raise DicomFileError(f"{what}: pixel data of shape {px.shape} in a series of "
                                 f"{ds0.Rows}x{ds0.Columns}", f)
        planes.append(px * slope + intercept)
    img = _make_image(np.stack(planes), row, col, normal, items[0][1], (ps[1], ps[0], step))
    return ImageSeries(img, items[0][2], [t[3] for t in items], units)


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
    """

    image: sitk.Image
    acquisition_time: datetime
    duration_s: Optional[float]
    series_instance_uid: str
    description: str
    frame_of_reference_uid: str
    decay_correction: str
    factor_applied: float


def _duration_s(ds) -> Optional[float]:
    if ds.get("ActualFrameDuration") not in (None, ""):
        return float(ds.ActualFrameDuration) / 1000.0
    rot = ds.get("RotationInformationSequence")
    if rot:
        item = rot[0]
        try:
            return float(item.ActualFrameDuration) / 1000.0 * float(item.NumberOfFramesInRotation)
        except Exception:
            return None
    return None


def read_spect(files: Sequence[str], *, injection_time: Optional[datetime] = None,
               nuclide: Optional[Radionuclide] = None, calibration_bq_per_ml_per_unit: Optional[float] = None,
               what: str = "SPECT") -> SpectVolume:
    """Read a reconstructed SPECT series as Bq/mL at the acquisition start.

    Parameters
    ----------
    files : list of str
    injection_time : datetime, optional
        Needed to undo DecayCorrection ADMIN when the file lacks RadiopharmaceuticalStartDateTime.
    nuclide : Radionuclide, optional
        Defaults to Lu-177.
    calibration_bq_per_ml_per_unit : float, optional
        For images not in Bq/mL (counts): factor from stored units to Bq/mL at acquisition.
    what : str
        Name used in messages.

    Raises
    ------
    DicomFileError
        Units not Bq/mL and no calibration given; ADMIN correction without an injection time;
        no acquisition time at all.
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
    correction = str(ds.get("DecayCorrection", "") or "").upper()
    lam = nuclide.decay_constant_per_s
    if correction == "ADMIN":
        admin = None
        seq = ds.get("RadiopharmaceuticalInformationSequence")
        if seq:
            admin = parse_dt(seq[0].get("RadiopharmaceuticalStartDateTime", "")) or \
                combine(ds.get("SeriesDate", ""), seq[0].get("RadiopharmaceuticalStartTime", ""))
        admin = admin or injection_time
        if admin is None:
            raise DicomFileError(f"{what}: values are decay-corrected to the administration time (DecayCorrection "
                                 "ADMIN) but no injection time is known; give --injection-time", series.files[0])
        elapsed = (acq - admin).total_seconds()
        factor = math.exp(-lam * elapsed)
        header_factor = ds.get("DecayFactor")
        if header_factor not in (None, "") and float(header_factor) > 0:
            expected = 1.0 / factor
            if abs(float(header_factor) / expected - 1.0) > 0.02:
                warnings.warn(f"{what}: DecayFactor {float(header_factor):.4f} in the header differs from "
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
                       frame_of_reference_uid=str(ds.get("FrameOfReferenceUID", "") or ""),
                       decay_correction=correction, factor_applied=factor)


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
