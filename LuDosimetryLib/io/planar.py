"""Read planar (whole-body or static) NM images: every frame as (view, energy window) counts, oriented alike.

A planar acquisition may come as one multi-frame file (frames indexed by EnergyWindowVector and
DetectorVector, PS3.3 C.8.4.8) or as one file per view and window (the collection's layout and the twin's).
Each frame is identified from its header:

- the view from the detector's View Code Sequence (DICOM CID 26: SNOMED 399321004 anterior projection,
  399001007 posterior projection), else from the code meaning or ImageID ("ANT"/"POST", a named assumption);
- the energy window from the Energy Window Information Sequence (range in keV, name);
- the orientation from the detector's ImageOrientationPatient (row direction +x: seen from the front), else
  PatientOrientation, else the posterior view is taken as seen from behind (a named assumption).

Every frame is returned in the *anterior orientation*: column index increasing towards the patient's left
(+x, LPS) and row index from head to feet, so that the posterior view is flipped left-right as it is stored.

The time each point of the patient spends in the field of view (the "dwell" that turns counts into Bq with a
sensitivity in cps/MBq): for a whole-body sweep the axial field of view (FieldOfViewDimensions, row dimension
then column dimension, the column dimension along the sweep) over the ScanVelocity; for a static image the
ActualFrameDuration.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from ..assumptions import assume
from ..errors import DicomFileError
from .dicom_common import read_dicom
from .dicom_time import acquisition_datetime

#: View codes of DICOM CID 26 (SNOMED CT).
VIEW_CODES = {"399321004": "ANTERIOR", "399001007": "POSTERIOR"}


@dataclass
class PlanarFrame:
    """One view in one energy window.

    Attributes
    ----------
    view : {"ANTERIOR", "POSTERIOR"}
    window_name : str
    window_kev : (float, float)
        Lower and upper limits (keV).
    counts : ndarray (rows, columns) float64
        In the anterior orientation (see the module docstring).
    file : str
    """

    view: str
    window_name: str
    window_kev: Tuple[float, float]
    counts: np.ndarray
    file: str


@dataclass
class PlanarAcquisition:
    """The frames of one planar session and their geometry.

    Attributes
    ----------
    acquisition_time : datetime
        Start of the acquisition (earliest frame).
    frames : list of PlanarFrame
    pixel_spacing_mm : (float, float)
        Between rows (along the patient's z) and between columns (along x).
    dwell_s : float
        Time each point of the patient is in the field of view (s).
    dwell_source : str
        How it was obtained.
    x0_mm, z0_mm : float or None
        Patient x of column 0 and z of row 0 (LPS, mm) in the anterior orientation; None when the header
        does not place the image (DetectorInformationSequence ImagePositionPatient).
    whole_body : bool
    files : list of str
    """

    acquisition_time: datetime
    frames: List[PlanarFrame]
    pixel_spacing_mm: Tuple[float, float]
    dwell_s: float
    dwell_source: str
    x0_mm: Optional[float] = None
    z0_mm: Optional[float] = None
    whole_body: bool = True
    files: List[str] = field(default_factory=list)

    @property
    def shape(self) -> Tuple[int, int]:
        return tuple(self.frames[0].counts.shape)

    def views(self) -> Dict[str, List[PlanarFrame]]:
        """Frames by view."""
        out: Dict[str, List[PlanarFrame]] = {}
        for f in self.frames:
            out.setdefault(f.view, []).append(f)
        return out


def _float(value) -> Optional[float]:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return v if np.isfinite(v) else None


def _view_of(det, ds, path: str) -> str:
    for item in (det.get("ViewCodeSequence") or []) if det is not None else []:
        code = str(item.get("CodeValue", ""))
        if code in VIEW_CODES:
            return VIEW_CODES[code]
        meaning = str(item.get("CodeMeaning", "")).lower()
        for word, view in (("anterior", "ANTERIOR"), ("posterior", "POSTERIOR")):
            if meaning.startswith(word):
                return view
    text = " ".join(str(ds.get(k, "") or "") for k in ("ImageID", "SeriesDescription", "ImageComments")).upper()
    found = [v for word, v in (("ANT", "ANTERIOR"), ("POS", "POSTERIOR")) if word in text]
    if len(found) == 1:
        assume("planar view without a View Code Sequence, read from the image's name", found[0], "ImageID/"
               "SeriesDescription", path)
        return found[0]
    raise DicomFileError("planar image whose view (anterior or posterior) is not stated: no ViewCodeSequence in "
                         "its DetectorInformationSequence, nor ANT/POST in its ImageID or description", path)


def _window_of(ds, index: int, path: str) -> Tuple[str, Tuple[float, float]]:
    seq = ds.get("EnergyWindowInformationSequence") or []
    if not 0 <= index < len(seq):
        raise DicomFileError(f"energy window {index + 1} of a frame is not in EnergyWindowInformationSequence "
                             f"({len(seq)} windows): its energy range is unknown", path)
    win = seq[index]
    ranges = win.get("EnergyWindowRangeSequence") or []
    lo = _float(ranges[0].get("EnergyWindowLowerLimit")) if ranges else None
    hi = _float(ranges[0].get("EnergyWindowUpperLimit")) if ranges else None
    if lo is None or hi is None or not hi > lo:
        raise DicomFileError(f"energy window {index + 1} ({win.get('EnergyWindowName', '')!r}) has no valid "
                             "EnergyWindowRangeSequence limits", path)
    return str(win.get("EnergyWindowName", "") or f"{lo:g}-{hi:g} keV"), (lo, hi)


def _orientation(det, ds, view: str, path: str) -> Tuple[float, float]:
    """(x component of the row direction, z component of the column direction), each ±1."""
    iop = det.get("ImageOrientationPatient") if det is not None else None
    if iop is not None and len(iop) == 6:
        v = [float(x) for x in iop]
        if abs(v[0]) > 0.5 and abs(v[5]) > 0.5:
            return float(np.sign(v[0])), float(np.sign(v[5]))
    po = [str(x).upper() for x in (ds.get("PatientOrientation") or [])]
    if len(po) == 2 and po[0][:1] in ("L", "R") and po[1][:1] in ("H", "F"):
        return (1.0 if po[0][0] == "L" else -1.0), (1.0 if po[1][0] == "H" else -1.0)
    assume("planar orientation not in the header (no detector ImageOrientationPatient or PatientOrientation)",
           "head at the top; posterior view stored as seen from behind (mirrored)", "default", path)
    return (1.0 if view == "ANTERIOR" else -1.0), -1.0


def _dwell(ds, det, path: str, whole_body: bool) -> Tuple[float, str]:
    if whole_body:
        speed = _float(ds.get("ScanVelocity"))  # cm/min
        fov = det.get("FieldOfViewDimensions") if det is not None else None
        axial = _float(fov[1]) if fov is not None and len(fov) >= 2 else None
        if speed and speed > 0 and axial and axial > 0:
            return axial / (speed * 10.0 / 60.0), (f"axial field of view {axial:g} mm / ScanVelocity {speed:g} "
                                                   "cm/min")
        raise DicomFileError("whole-body planar image without ScanVelocity and the detector's "
                             "FieldOfViewDimensions: the time each point is imaged (counts to Bq) is unknown", path)
    ms = _float(ds.get("ActualFrameDuration"))
    if ms and ms > 0:
        return ms / 1000.0, "ActualFrameDuration"
    raise DicomFileError("static planar image without ActualFrameDuration: its duration is unknown", path)


def _values(value, n: int) -> list:
    """A multi-valued attribute as a list (pydicom gives one value bare); absent: 1 for each of n frames."""
    if value is None or value == "":
        return [1] * n
    return list(value) if isinstance(value, (list, tuple)) or hasattr(value, "__iter__") and not isinstance(
        value, (str, bytes)) else [value]


def _frame_labels(ds, path: str) -> List[Tuple[object, str, str, Tuple[float, float]]]:
    """``(detector item, view, window name, window keV)`` of each frame of a planar file's header."""
    n = int(ds.get("NumberOfFrames", 1) or 1)
    dets = ds.get("DetectorInformationSequence") or []
    ewv = [int(v) for v in _values(ds.get("EnergyWindowVector"), n)]
    dv = [int(v) for v in _values(ds.get("DetectorVector"), n)]
    if len(ewv) != n or len(dv) != n:
        raise DicomFileError(f"EnergyWindowVector/DetectorVector do not have one entry per frame ({n})", path)
    out = []
    for k in range(n):
        det = dets[dv[k] - 1] if 0 < dv[k] <= len(dets) else None
        out.append((det, _view_of(det, ds, path)) + _window_of(ds, ewv[k] - 1, path))
    return out


@dataclass
class PlanarSessionHeader:
    """What the headers of one planar session's files say, before any pixel is read.

    Attributes
    ----------
    acquisition_time : datetime
    windows : dict view → list of (window name, (lower keV, upper keV))
    shape : (int, int)
        (rows, columns) of the frames.
    pixel_spacing_mm : (float, float) or None
    files : list of str
    """

    acquisition_time: datetime
    windows: Dict[str, List[Tuple[str, Tuple[float, float]]]]
    shape: Tuple[int, int]
    pixel_spacing_mm: Optional[Tuple[float, float]]
    files: List[str]


def read_session_header(files: Sequence[str]) -> PlanarSessionHeader:
    """The views, energy windows and matrix of one planar session from its headers (no pixel data): what the
    run checks before its long stages.

    Raises
    ------
    DicomFileError
        A header that cannot be read, or whose view, energy window or acquisition time is not stated.
    """
    windows: Dict[str, List[Tuple[str, Tuple[float, float]]]] = {}
    times, shape, spacing = [], None, None
    for path in files:
        try:
            ds = read_dicom(path, stop_before_pixels=True)
        except Exception as exc:  # truncated or not DICOM
            raise DicomFileError(f"unreadable planar image ({type(exc).__name__}: {exc})", path) from None
        when, _src = acquisition_datetime(ds)
        if when is None:
            raise DicomFileError("planar image without an acquisition date/time", path)
        times.append(when)
        shape = shape or (int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0))
        ps = ds.get("PixelSpacing")
        if spacing is None and ps is not None and len(ps) == 2:
            spacing = (float(ps[0]), float(ps[1]))
        for _det, view, name, kev in _frame_labels(ds, path):
            windows.setdefault(view, []).append((name, kev))
    if not times:
        raise DicomFileError("no planar frame", files[0] if files else None)
    return PlanarSessionHeader(min(times), windows, shape, spacing, [str(f) for f in files])


def read_planar(files: Sequence[str]) -> PlanarAcquisition:
    """Read the files of one planar session (one or more series, any split of views and windows).

    Raises
    ------
    DicomFileError
        A file that cannot be read, or whose view, energy window, geometry or duration is missing; frames
        of different matrix or pixel size.
    """
    frames: List[PlanarFrame] = []
    times, spacing, dwell, place, whole = [], None, None, None, True
    for path in files:
        try:
            ds = read_dicom(path)
            pixels = np.asarray(ds.pixel_array, dtype=np.float64)
        except Exception as exc:  # truncated file, no pixel data
            raise DicomFileError(f"unreadable planar image ({type(exc).__name__}: {exc})", path) from None
        n = int(ds.get("NumberOfFrames", 1) or 1)
        pixels = pixels.reshape((n,) + pixels.shape[-2:])
        slope = _float(ds.get("RescaleSlope")) or 1.0
        itype = [str(v).upper() for v in (ds.get("ImageType") or [])]
        whole = "WHOLE BODY" in itype
        when, _src = acquisition_datetime(ds)
        if when is None:
            raise DicomFileError("planar image without an acquisition date/time", path)
        times.append(when)
        ps = ds.get("PixelSpacing")
        if ps is None or len(ps) != 2 or not all((_float(v) or 0) > 0 for v in ps):
            raise DicomFileError("planar image without a valid PixelSpacing", path)
        ps = (float(ps[0]), float(ps[1]))
        if spacing is not None and (abs(ps[0] - spacing[0]) > 1e-3 or abs(ps[1] - spacing[1]) > 1e-3):
            raise DicomFileError(f"pixel spacing {ps} mm differs from the session's other planar images {spacing}",
                                 path)
        spacing = ps
        for k, (det, view, name, kev) in enumerate(_frame_labels(ds, path)):
            rx, cz = _orientation(det, ds, view, path)
            img = pixels[k] * slope
            ipp = det.get("ImagePositionPatient") if det is not None else None
            if rx < 0:
                img = img[:, ::-1]
            if cz > 0:
                img = img[::-1]
            if ipp is not None and len(ipp) == 3:
                rows, cols = img.shape
                x_first, z_first = float(ipp[0]), float(ipp[2])
                x0 = x_first if rx > 0 else x_first - (cols - 1) * ps[1]
                z0 = z_first if cz < 0 else z_first + (rows - 1) * ps[0]
                place = place or (x0, z0)
            if frames and img.shape != frames[0].counts.shape:
                raise DicomFileError(f"planar matrix {img.shape} differs from the session's other frames "
                                     f"{frames[0].counts.shape}", path)
            frames.append(PlanarFrame(view, name, kev, np.ascontiguousarray(img), str(path)))
            if dwell is None:
                dwell = _dwell(ds, det, path, whole)
    if not frames:
        raise DicomFileError("no planar frame", files[0] if files else None)
    return PlanarAcquisition(acquisition_time=min(times), frames=frames, pixel_spacing_mm=spacing,
                             dwell_s=dwell[0], dwell_source=dwell[1], x0_mm=None if place is None else place[0],
                             z0_mm=None if place is None else place[1], whole_body=whole, files=[str(f) for f in files])


def planar_sessions(entries, gap_h: float = 1.0) -> List[List[str]]:
    """Files of planar series grouped into sessions: series acquired within ``gap_h`` hours of each other.

    Parameters
    ----------
    entries : sequence of SeriesEntry
        Planar series (inventory roles ``planar_whole_body`` / ``planar_static``) with acquisition times.
    """
    timed = sorted((e for e in entries if e.acquisition_time is not None), key=lambda e: e.acquisition_time)
    groups: List[List] = []
    for e in timed:
        if groups and (e.acquisition_time - groups[-1][-1].acquisition_time).total_seconds() <= gap_h * 3600.0:
            groups[-1].append(e)
        else:
            groups.append([e])
    return [[f for e in g for f in e.files] for g in groups]


# ------------------------------------------------------------------------------------- planar views

#: Header field of a planar view's files: the acquisition date/time (ISO 8601) of the session they show.
SESSION_FIELD = "LuDosimetry_planar_session"


def write_planar_view(folder, number: int, image, regions: Mapping[str, np.ndarray],
                      acquisition_time: str) -> List[str]:
    """Write planar session ``number``'s (1-based) image and regions into the output folder ``folder``
    (:func:`LuDosimetryLib.output_layout.planar_image_file`, :func:`~LuDosimetryLib.output_layout.planar_regions_file`).

    Parameters
    ----------
    image : SimpleITK.Image
        The one-slice coronal volume of the session's grid (:func:`LuDosimetryLib.planar.projection.grid_image`).
    regions : dict VOI → bool ndarray (rows, columns)
        The regions the run used (overlapping ones kept: a VOI mask file).
    acquisition_time : str
        The session's (ISO 8601), written into both headers (:data:`SESSION_FIELD`).

    Returns
    -------
    list of str
        The two paths relative to ``folder``.
    """
    import SimpleITK as sitk

    from ..output_layout import planar_image_file, planar_regions_file
    from .voi_masks import write_voi_masks

    folder = Path(folder)
    names = [planar_image_file(number), planar_regions_file(number)]
    (folder / names[0]).parent.mkdir(parents=True, exist_ok=True)
    shown = sitk.Image(image)
    shown.SetMetaData(SESSION_FIELD, str(acquisition_time))
    sitk.WriteImage(shown, str(folder / names[0]), True)
    rows, _one, cols = sitk.GetArrayViewFromImage(image).shape
    write_voi_masks(folder / names[1], {n: np.asarray(m).reshape(rows, 1, cols) for n, m in regions.items()},
                    image, {SESSION_FIELD: str(acquisition_time)})
    return names


def read_planar_regions(path):
    """The regions of a planar region file (:func:`write_planar_view`, or the panel's after an edit).

    Returns
    -------
    regions : dict VOI → bool ndarray (rows, columns)
    grid : SimpleITK.Image
        The file's geometry (one coronal slice; :func:`LuDosimetryLib.planar.projection.same_grid` compares
        it with a session's).
    acquisition_time : str or None
        The session the file is of (:data:`SESSION_FIELD`).

    Raises
    ------
    OptionError
        Not a region file (naming it and the option).
    """
    from ..errors import LuDosimetryError, OptionError
    from .voi_masks import read_voi_masks

    if not Path(path).is_file():
        raise OptionError("no such file", path, option="planar_regions")
    try:
        masks, grid = read_voi_masks(path)
    except LuDosimetryError as exc:
        raise OptionError(exc.problem, path, option="planar_regions") from None
    size = grid.GetSize()
    if len(size) != 3 or size[1] != 1:
        raise OptionError(f"not a planar region file: a volume of {'x'.join(map(str, size))} voxels, not one "
                          "coronal slice", path, option="planar_regions")
    session = grid.GetMetaData(SESSION_FIELD) if grid.HasMetaDataKey(SESSION_FIELD) else None
    return {n: m[:, 0, :] for n, m in masks.items()}, grid, session


def write_planar_views(folder, views) -> List[str]:
    """Every planar session's view (``StudyResults.planar_views``: (acquisition time, image, regions), in time
    order, numbered from 1) into the output folder; the paths written, relative to it."""
    written: List[str] = []
    for number, (acquisition_time, image, regions) in enumerate(views or (), start=1):
        written += write_planar_view(folder, number, image, regions, acquisition_time)
    return written
