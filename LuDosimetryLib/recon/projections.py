"""Read SPECT projections from standard NM TOMO files (Siemens, GE, Philips).

Frames are assigned to energy window, detector and angular view from the Energy Window, Detector and
Angular View vectors (PS3.3 C.8.4.9), never by position; the energy windows keep their ranges
(:mod:`.energy` finds the photopeak and scatter windows by range). Gantry angles come from each
detector's StartAngle (or the rotation's), the AngularStep and the RotationDirection; the radius of each
view from the detector item's RadialPosition (one per view, or one for the rotation), plus GE Xeleris'
per-view offsets where present.

Vendor layouts (issue #17; the same reading as PyTomography 3.4's ``pytomography.io.SPECT.dicom``, checked
against it in ``Testing/Python/test_recon_vendor_geometry.py``): Siemens writes one Detector Information
item per head with its StartAngle and per-view RadialPosition; GE (Discovery/Infinia, Xeleris exports)
writes one item for the whole rotation, the StartAngle, RadialPosition and RotationDirection in the
Rotation Information item, and a bed position per file whose detector ImagePositionPatient z is that of
the top row, rows running head to feet. On the public GE Discovery 670 two-bed sample the overlapping
rows of the two beds agree (count ratio 0.95-1.00 view by view) only in that order. The mapping of rows,
columns and views to the projector is :mod:`.system`'s; bed positions are joined by :mod:`.multibed`.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import List, Optional

import numpy as np
import pydicom

from ..errors import DicomFileError
from ..io.dicom_time import acquisition_datetime, injection_from_header
from .energy import EnergyWindow
from .system import ProjectionGeometry

_CPS_PER_MBQ = re.compile(r"([0-9]+(?:\.[0-9]*)?)\s*cps\s*/\s*MBq", re.IGNORECASE)


@dataclass
class ProjectionSeries:
    """Projections of one NM TOMO file.

    Attributes
    ----------
    path : Path
    counts : numpy.ndarray
        ``[window, view, row, col]`` counts (float32), views in stored order (detector, then view).
    windows : list of EnergyWindow
        In the order of ``counts``' first axis.
    geometry : ProjectionGeometry
    view_duration_s : float
        Duration of one view (s); the acquisition lasts ``view_duration_s × views per detector``.
    acquisition_time : datetime or None
    description, series_instance_uid, frame_of_reference_uid, form : str
    injected_activity_bq : float or None
    injection_time : datetime or None
    header_cps_per_mbq : float or None
        A sensitivity stated in the header ("… cps/MBq" in ImageComments), if any.
    """

    path: Path
    counts: np.ndarray
    windows: List[EnergyWindow]
    geometry: ProjectionGeometry
    view_duration_s: float
    views_per_detector: int
    acquisition_time: Optional[datetime]
    description: str
    series_instance_uid: str
    frame_of_reference_uid: str
    form: str
    injected_activity_bq: Optional[float] = None
    injection_time: Optional[datetime] = None
    header_cps_per_mbq: Optional[float] = None
    header: Optional[pydicom.Dataset] = field(default=None, repr=False)

    @property
    def duration_s(self) -> float:
        return self.view_duration_s * self.views_per_detector


def _vector(ds, name: str, n: int, path) -> np.ndarray:
    v = ds.get(name)
    if v is None:
        return np.ones(n, dtype=int)
    v = np.atleast_1d(np.asarray(v, dtype=int))
    if v.size != n:
        raise DicomFileError(f"{name} has {v.size} values for {n} frames", path)
    return v


def _float(value, what: str, path) -> float:
    try:
        return float(value)
    except Exception as exc:
        raise DicomFileError(f"{what} is missing or not numeric", path) from exc


def _ge_radius_offsets_mm(ds, n_views: int) -> np.ndarray:
    """Per-view radius corrections of GE Xeleris exports (mm), zeros when absent.

    GE writes a body-contour orbit's per-view radius offsets in a private item: the third value of each
    (x, y, r) triple of (0013,101E) in the first item of (0055,1022). Read as PyTomography 3.4 reads it
    (``pytomography.io.SPECT.dicom.parse_projection_dataset``); used only when it holds one triple per view.
    """
    try:
        values = np.asarray(ds[0x0055, 0x1022][0][0x0013, 0x101E].value, dtype=float).reshape(-1, 3)[:, -1]
    except Exception:  # absent, empty, or not the triples described above
        return np.zeros(n_views)
    return values if values.size == n_views and np.all(np.isfinite(values)) else np.zeros(n_views)


def read_projections(path) -> ProjectionSeries:
    """Read one NM TOMO projection file.

    Raises
    ------
    DicomFileError
        Not a TOMO file, missing rotation/detector/energy-window information, inconsistent vectors.
    """
    path = Path(path)
    try:
        ds = pydicom.dcmread(str(path))
    except Exception as exc:
        raise DicomFileError(f"unreadable DICOM file ({type(exc).__name__}: {exc})", path) from exc
    itype = [str(v).upper() for v in (ds.get("ImageType") or [])]
    if "TOMO" not in itype and "GATED TOMO" not in itype:
        raise DicomFileError(f"not SPECT projections (ImageType {'/'.join(itype) or 'missing'}; TOMO expected)", path)
    try:
        pixels = np.asarray(ds.pixel_array, dtype=np.float32)
    except Exception as exc:
        raise DicomFileError(f"pixel data cannot be decoded (truncated file?): {exc}", path) from exc
    if pixels.ndim == 2:
        pixels = pixels[None]
    slope = float(ds.get("RescaleSlope", 1.0) or 1.0)
    intercept = float(ds.get("RescaleIntercept", 0.0) or 0.0)
    pixels = pixels * slope + intercept
    n = pixels.shape[0]
    ewv = _vector(ds, "EnergyWindowVector", n, path)
    detv = _vector(ds, "DetectorVector", n, path)
    viewv = ds.get("AngularViewVector")
    rots = ds.get("RotationInformationSequence")
    if not rots:
        raise DicomFileError("RotationInformationSequence is missing (angles unknown)", path)
    rot = rots[0]
    per_det = int(rot.get("NumberOfFramesInRotation", 0) or 0)
    step = _float(rot.get("AngularStep"), "AngularStep", path)
    direction = str(rot.get("RotationDirection", "CW") or "CW").upper()
    sign = 1.0 if direction in ("CC", "CCW") else -1.0
    dets = ds.get("DetectorInformationSequence") or []
    window_items = ds.get("EnergyWindowInformationSequence") or []
    if not window_items:
        raise DicomFileError("EnergyWindowInformationSequence is missing (windows unknown)", path)
    windows = []
    for i, item in enumerate(window_items):
        rng = (item.get("EnergyWindowRangeSequence") or [None])[0]
        if rng is None:
            raise DicomFileError(f"energy window {i + 1} has no EnergyWindowRangeSequence", path)
        windows.append(EnergyWindow(str(item.get("EnergyWindowName", f"W{i + 1}") or f"W{i + 1}"),
                                    _float(rng.get("EnergyWindowLowerLimit"), "EnergyWindowLowerLimit", path),
                                    _float(rng.get("EnergyWindowUpperLimit"), "EnergyWindowUpperLimit", path)))
    det_ids = sorted(set(int(d) for d in detv))
    if viewv is None:
        # frames of a window/detector in order
        viewv = np.zeros(n, dtype=int)
        for w in set(ewv.tolist()):
            for d in det_ids:
                sel = np.where((ewv == w) & (detv == d))[0]
                viewv[sel] = np.arange(1, len(sel) + 1)
    viewv = np.atleast_1d(np.asarray(viewv, dtype=int))
    if per_det <= 0:
        per_det = int(viewv.max())
    angles, radii = [], []
    for d in det_ids:
        item = dets[d - 1] if len(dets) >= d else (dets[0] if dets else rot)
        start = item.get("StartAngle", rot.get("StartAngle"))
        start = _float(start, "StartAngle", path)
        radial = item.get("RadialPosition", rot.get("RadialPosition"))
        if radial is None:
            raise DicomFileError("RadialPosition is missing (detector orbit unknown)", path)
        radial = np.atleast_1d(np.asarray(radial, dtype=float))
        if radial.size == 1:
            radial = np.full(per_det, radial[0])
        if radial.size != per_det:
            raise DicomFileError(f"RadialPosition of detector {d} has {radial.size} values for {per_det} views", path)
        angles.append((start + sign * step * np.arange(per_det)) % 360.0)
        radii.append(radial)
    angles = np.concatenate(angles)
    radii = np.concatenate(radii) + _ge_radius_offsets_mm(ds, per_det * len(det_ids))
    n_views = per_det * len(det_ids)
    counts = np.zeros((len(windows), n_views, pixels.shape[1], pixels.shape[2]), dtype=np.float32)
    filled = np.zeros((len(windows), n_views), dtype=bool)
    for f in range(n):
        w = int(ewv[f]) - 1
        if not (0 <= w < len(windows)):
            raise DicomFileError(f"frame {f + 1} refers to energy window {w + 1} of {len(windows)}", path)
        v = det_ids.index(int(detv[f])) * per_det + int(viewv[f]) - 1
        counts[w, v] = pixels[f]
        filled[w, v] = True
    if not filled.all():
        raise DicomFileError(f"{int((~filled).sum())} views are missing from the frames", path)
    ps = ds.get("PixelSpacing")
    if ps is None:
        raise DicomFileError("PixelSpacing is missing", path)
    slice_mm, pixel_mm = float(ps[0]), float(ps[1])
    det0 = dets[0] if dets else Dataset_like()
    ipp = det0.get("ImagePositionPatient")
    iop = det0.get("ImageOrientationPatient")
    rows, cols = pixels.shape[1], pixels.shape[2]
    rows_downward = True
    if iop is not None and len(iop) == 6 and float(iop[5]) > 0:
        rows_downward = False
    if ipp is not None and len(ipp) == 3:
        x0, y0, z0 = (float(v) for v in ipp)
        if y0 == 0.0:  # centred on the rotation axis (as PyTomography reads such files)
            x0 -= (cols - 1) / 2.0 * pixel_mm
            y0 = -(cols - 1) / 2.0 * pixel_mm - float(rot.get("TableHeight", 0.0) or 0.0)
    else:
        x0 = y0 = -(cols - 1) / 2.0 * pixel_mm
        z0 = (rows - 1) / 2.0 * slice_mm
    geom = ProjectionGeometry(n_cols=cols, n_rows=rows, pixel_mm=pixel_mm, slice_mm=slice_mm,
                              gantry_angles_deg=angles, radii_mm=radii, x0_mm=x0, y0_mm=y0, z_row0_mm=z0,
                              rows_downward=rows_downward)
    frame_ms = rot.get("ActualFrameDuration", ds.get("ActualFrameDuration"))
    view_s = _float(frame_ms, "ActualFrameDuration", path) / 1000.0
    if view_s <= 0:
        raise DicomFileError(f"ActualFrameDuration {frame_ms} ms is not positive", path)
    acq, _src = acquisition_datetime(ds)
    activity, inj_time, _radio = injection_from_header(ds, acq)
    desc = str(ds.get("SeriesDescription", "") or "")
    low = desc.lower()
    form = "advanced" if "[advanced]" in low else "reformatted" if "[reformatted]" in low else "unaltered"
    m = _CPS_PER_MBQ.search(str(ds.get("ImageComments", "") or ""))
    return ProjectionSeries(path=path, counts=counts, windows=windows, geometry=geom, view_duration_s=view_s,
                            views_per_detector=per_det, acquisition_time=acq, description=desc,
                            series_instance_uid=str(ds.get("SeriesInstanceUID", "")),
                            frame_of_reference_uid=str(ds.get("FrameOfReferenceUID", "") or ""), form=form,
                            injected_activity_bq=activity, injection_time=inj_time,
                            header_cps_per_mbq=float(m.group(1)) if m else None, header=ds)


class Dataset_like(dict):
    """An empty stand-in for a missing Detector Information item."""

    def get(self, key, default=None):  # noqa: D401 - dict API
        return default
