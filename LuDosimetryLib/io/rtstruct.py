"""DICOM RT Structure Set (RTSTRUCT) reading and writing.

Reading returns the plain dataclasses of :mod:`LuDosimetryLib.vois` (:class:`~LuDosimetryLib.vois.StructureSet`,
:class:`~LuDosimetryLib.vois.Roi`) with contour points in DICOM patient coordinates (LPS, mm); turning them
into voxel masks, and masks into contours, is :mod:`LuDosimetryLib.vois` too (this module parses and writes
the DICOM objects; ``vois`` does not import it).

Writing builds a complete RT Structure Set IOD (DICOM PS3.3 A.19: Patient, General Study, RT Series,
General Equipment, Structure Set C.8.8.5, ROI Contour C.8.8.6, RT ROI Observations C.8.8.8, SOP Common)
from voxel masks on the grid of a reference image series, each contour referencing the image slice it
was traced on (Contour Image Sequence), so that other planning and viewing systems can load it.
"""
from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import List, Mapping, Optional, Tuple

import numpy as np
from pydicom.errors import InvalidDicomError
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from ..errors import DicomFileError
from ..vois import Roi, StructureSet, mask_slice_contours
from .dicom_common import read_dicom, PatientInfo, SeriesInfo, StudyInfo, dicom_date, dicom_time, new_dataset, write_dataset

#: RT Structure Set Storage SOP Class (PS3.4 B.5).
RT_STRUCTURE_SET_STORAGE = "1.2.840.10008.5.1.4.1.1.481.3"
#: The SOP class RT Referenced Study Sequence items conventionally name for the study (PS3.3 C.8.8.5).
_STUDY_COMPONENT_MANAGEMENT = "1.2.840.10008.3.1.2.3.1"

#: Display colours of the ROIs :func:`write_rtstruct` is given none for, in turn (r, g, b; 0-255).
DEFAULT_COLORS = [(230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48),
                  (145, 30, 180), (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212)]


@dataclass
class ReferencedSeries:
    """The image series an RTSTRUCT is drawn on.

    Attributes
    ----------
    study_instance_uid, series_instance_uid, frame_of_reference_uid : str
    sop_class_uid : str
        SOP Class UID of the images (e.g. CT Image Storage).
    sop_instance_uids : list of str
        One per z slice of the reference image, in its array (index k) order.
    """

    study_instance_uid: str
    series_instance_uid: str
    frame_of_reference_uid: str
    sop_class_uid: str
    sop_instance_uids: List[str]


# --------------------------------------------------------------------------------------------- reading

def read_rtstruct(path: os.PathLike) -> StructureSet:
    """Read an RTSTRUCT file.

    Parameters
    ----------
    path : path-like
        The file; it is opened read-only and never modified.

    Returns
    -------
    StructureSet

    Raises
    ------
    DicomFileError
        Not DICOM, truncated, not an RT Structure Set, or lacking Structure Set ROI Sequence / ROI
        Contour Sequence, or with malformed Contour Data.

    Warns
    -----
    UserWarning
        For ROIs without contours (kept with an empty contour list) and for skipped POINT / OPEN
        contours.
    """
    path = Path(path)
    ds = _read_dataset(path)
    modality = str(ds.get("Modality", ""))
    sop_class = str(ds.get("SOPClassUID", ""))
    if modality != "RTSTRUCT" and sop_class != RT_STRUCTURE_SET_STORAGE:
        raise DicomFileError(f"not an RT Structure Set (Modality {modality or 'missing'!r}, "
                             f"SOP Class {sop_class or 'missing'})", path)
    for keyword in ("StructureSetROISequence", "ROIContourSequence"):
        if keyword not in ds:
            raise DicomFileError(f"RTSTRUCT lacks {keyword}", path)

    frame_uid, series_uid = _referenced_frame_and_series(ds)
    types = {}
    for obs in ds.get("RTROIObservationsSequence", []):
        if "ReferencedROINumber" in obs:
            types[int(obs.ReferencedROINumber)] = str(obs.get("RTROIInterpretedType", "") or "")

    rois: List[Roi] = []
    by_number = {}
    for item in ds.StructureSetROISequence:
        if "ROINumber" not in item:
            raise DicomFileError("a Structure Set ROI Sequence item lacks ROI Number", path)
        number = int(item.ROINumber)
        name = str(item.get("ROIName", "") or f"ROI {number}")
        if not frame_uid and item.get("ReferencedFrameOfReferenceUID"):
            frame_uid = str(item.ReferencedFrameOfReferenceUID)
        roi = Roi(number=number, name=name, color=None, roi_type=types.get(number, ""), contours=[],
                  frame_of_reference_uid=str(item.get("ReferencedFrameOfReferenceUID", "") or ""))
        rois.append(roi)
        by_number.setdefault(number, roi)

    for item in ds.ROIContourSequence:
        number = int(item.get("ReferencedROINumber", -1))
        roi = by_number.get(number)
        if roi is None:
            warnings.warn(f"{path}: ROI Contour Sequence item for ROI number {number} has no "
                          "Structure Set ROI entry; its contours are ignored", stacklevel=2)
            continue
        color = item.get("ROIDisplayColor")
        if color is not None and len(color) == 3:
            roi.color = tuple(int(round(float(c))) for c in color)
        skipped = 0
        for index, contour in enumerate(item.get("ContourSequence", [])):
            geometry = str(contour.get("ContourGeometricType", "CLOSED_PLANAR")).upper()
            if geometry != "CLOSED_PLANAR":
                skipped += 1
                continue
            points = _contour_points(contour, path, roi.name, index)
            if len(points) < 3:
                skipped += 1
                continue
            roi.contours.append(points)
        if skipped:
            warnings.warn(f"{path}: ROI {roi.name!r}: {skipped} contour(s) that are not closed planar "
                          "polygons of 3 or more points (POINT / OPEN_*) were skipped", stacklevel=2)

    empty = [r.name for r in rois if not r.contours]
    if empty:
        warnings.warn(f"{path}: ROI(s) without contours: " + ", ".join(repr(n) for n in empty),
                      stacklevel=2)
    label = str(ds.get("StructureSetLabel", "") or "")
    if not frame_uid:
        frame_uid = str(ds.get("FrameOfReferenceUID", "") or "")
    return StructureSet(path=str(path), frame_of_reference_uid=frame_uid, referenced_series_uid=series_uid,
                        rois=rois, label=label, patient_id=str(ds.get("PatientID", "") or ""),
                        study_instance_uid=str(ds.get("StudyInstanceUID", "") or ""))


def _read_dataset(path: Path) -> Dataset:
    """Parse the whole file (read-only) or raise DicomFileError naming it.

    pydicom stops quietly at the end of a truncated file, so truncation is checked here: every top-level
    element must hold as many bytes as its header declares, and an end of file met inside an
    undefined-length sequence (reported by pydicom as a warning) is an error too.
    """
    if not path.is_file():
        raise DicomFileError("file does not exist", path)
    try:
        with open(path, "rb") as handle, warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            ds = read_dicom(handle)
            short = [tag for tag in ds.keys() if _is_short(ds.get_item(tag))]
            if not short:
                ds.walk(lambda _ds, _elem: None)  # decode everything now, so damage shows here
    except InvalidDicomError as exc:
        raise DicomFileError(f"not a DICOM file ({exc})", path) from exc
    except Exception as exc:  # noqa: BLE001 - pydicom raises many types for damaged files
        raise DicomFileError(f"unreadable or truncated DICOM file ({type(exc).__name__}: {exc})", path) from exc
    if short:
        raise DicomFileError(f"truncated DICOM file (element {short[0]} is cut short)", path)
    for warning in caught:
        text = str(warning.message)
        if "EOF" in text or "end of file" in text.lower():
            raise DicomFileError(f"truncated DICOM file ({text})", path)
        warnings.warn(f"{path}: {text}", stacklevel=3)
    if len(ds) == 0:
        raise DicomFileError("truncated or empty DICOM file (no data set after the file meta information)", path)
    return ds


def _is_short(raw) -> bool:
    """True for a raw element whose value holds fewer bytes than its declared length."""
    length = getattr(raw, "length", None)
    value = getattr(raw, "value", None)
    if length is None or length == 0xFFFFFFFF or not isinstance(value, bytes):
        return False
    return len(value) < length


def _referenced_frame_and_series(ds: Dataset) -> Tuple[str, Optional[str]]:
    frame_uid = ""
    series_uid = None
    for frame in ds.get("ReferencedFrameOfReferenceSequence", []):
        if not frame_uid and frame.get("FrameOfReferenceUID"):
            frame_uid = str(frame.FrameOfReferenceUID)
        for study in frame.get("RTReferencedStudySequence", []):
            for series in study.get("RTReferencedSeriesSequence", []):
                if series_uid is None and series.get("SeriesInstanceUID"):
                    series_uid = str(series.SeriesInstanceUID)
    return frame_uid, series_uid


def _contour_points(contour: Dataset, path: Path, roi_name: str, index: int) -> np.ndarray:
    data = contour.get("ContourData")
    if data is None:
        raise DicomFileError(f"ROI {roi_name!r}: contour {index + 1} lacks Contour Data", path)
    try:
        values = np.asarray([float(v) for v in data], dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise DicomFileError(f"ROI {roi_name!r}: contour {index + 1} has non-numeric Contour Data", path) from exc
    if values.size % 3 or not np.all(np.isfinite(values)):
        raise DicomFileError(f"ROI {roi_name!r}: contour {index + 1} Contour Data is not finite (x, y, z) "
                             f"triplets ({values.size} values)", path)
    points = values.reshape(-1, 3)
    if len(points) > 1 and np.array_equal(points[0], points[-1]):
        points = points[:-1]  # some writers repeat the first point; the polygon is closed implicitly
    return points


# --------------------------------------------------------------------------------------------- writing

def write_rtstruct(path: os.PathLike, masks: Mapping[str, np.ndarray], reference, referenced: ReferencedSeries,
                   patient: PatientInfo, study: StudyInfo, *, colors: Optional[Mapping[str, Tuple[int, int, int]]] = None,
                   roi_types: Optional[Mapping[str, str]] = None, label: str = "VOIs", series_description: str = "",
                   series_number: int = 100) -> Path:
    """Write voxel masks as an RTSTRUCT drawn on ``referenced``.

    Parameters
    ----------
    path : path-like
        Output file, written atomically.
    masks : mapping of str to numpy.ndarray
        ROI name -> (z, y, x) mask on the grid of ``reference``: bool, or fractional coverage in [0, 1]
        (traced at 0.5).
    reference : SimpleITK.Image
        Geometry of the image series (LPS, mm).
    referenced : ReferencedSeries
        Its identity; ``sop_instance_uids[k]`` is the image of slice k.
    patient, study : PatientInfo, StudyInfo
    colors : mapping of str to (r, g, b), optional
        Display colours (0-255); a fixed palette otherwise.
    roi_types : mapping of str to str, optional
        RT ROI Interpreted Type per ROI (``'ORGAN'``, ``'GTV'``, ...); empty when not given.
    label : str
        Structure Set Label (at most 16 characters are kept).
    series_description : str
    series_number : int

    Returns
    -------
    pathlib.Path
        The file written.
    """
    size = reference.GetSize()
    shape = (size[2], size[1], size[0])
    if len(referenced.sop_instance_uids) != shape[0]:
        raise ValueError(f"referenced series has {len(referenced.sop_instance_uids)} SOP instances but the "
                         f"reference image has {shape[0]} slices")
    colors = dict(colors or {})
    roi_types = dict(roi_types or {})
    now = datetime.now()
    series = SeriesInfo(modality="RTSTRUCT", series_number=series_number, description=series_description,
                        frame_of_reference_uid=referenced.frame_of_reference_uid,
                        series_datetime=now)
    ds = new_dataset(RT_STRUCTURE_SET_STORAGE, patient, study, series, content_datetime=now)
    for keyword in ("ContentDate", "ContentTime"):  # General Image items, not in the RT Structure Set IOD
        if keyword in ds:
            delattr(ds, keyword)
    ds.OperatorsName = ""
    # Structure Set module (C.8.8.5)
    ds.StructureSetLabel = (label or "VOIs")[:16]
    ds.StructureSetDate = dicom_date(now)
    ds.StructureSetTime = dicom_time(now)
    ds.ReferencedFrameOfReferenceSequence = Sequence([_referenced_frame(referenced)])

    roi_items, contour_items, observation_items = [], [], []
    for number, (name, mask) in enumerate(masks.items(), start=1):
        mask = np.asarray(mask)
        if mask.shape != shape:
            raise ValueError(f"mask {name!r} has shape {mask.shape}, the reference image {shape} (z, y, x)")
        roi_item = Dataset()
        roi_item.ROINumber = number
        roi_item.ReferencedFrameOfReferenceUID = referenced.frame_of_reference_uid
        roi_item.ROIName = str(name)
        roi_item.ROIGenerationAlgorithm = "SEMIAUTOMATIC"
        roi_items.append(roi_item)

        contour_item = Dataset()
        color = colors.get(name, DEFAULT_COLORS[(number - 1) % len(DEFAULT_COLORS)])
        contour_item.ROIDisplayColor = [int(c) for c in color]
        contours = []
        for k, polygon in mask_slice_contours(mask, reference):
            contours.append(_contour_item(polygon, referenced, k, len(contours) + 1))
        if contours:
            contour_item.ContourSequence = Sequence(contours)
        else:
            warnings.warn(f"{path}: ROI {name!r} is empty; written without contours", stacklevel=2)
        contour_item.ReferencedROINumber = number
        contour_items.append(contour_item)

        observation = Dataset()
        observation.ObservationNumber = number
        observation.ReferencedROINumber = number
        observation.RTROIInterpretedType = roi_types.get(name, "")
        observation.ROIInterpreter = ""
        observation_items.append(observation)

    ds.StructureSetROISequence = Sequence(roi_items)
    ds.ROIContourSequence = Sequence(contour_items)
    ds.RTROIObservationsSequence = Sequence(observation_items)
    return write_dataset(ds, path)


def _referenced_frame(referenced: ReferencedSeries) -> Dataset:
    images = []
    for uid in referenced.sop_instance_uids:
        image = Dataset()
        image.ReferencedSOPClassUID = referenced.sop_class_uid
        image.ReferencedSOPInstanceUID = uid
        images.append(image)
    series = Dataset()
    series.SeriesInstanceUID = referenced.series_instance_uid
    series.ContourImageSequence = Sequence(images)
    study = Dataset()
    study.ReferencedSOPClassUID = _STUDY_COMPONENT_MANAGEMENT
    study.ReferencedSOPInstanceUID = referenced.study_instance_uid
    study.RTReferencedSeriesSequence = Sequence([series])
    frame = Dataset()
    frame.FrameOfReferenceUID = referenced.frame_of_reference_uid
    frame.RTReferencedStudySequence = Sequence([study])
    return frame


def _contour_item(polygon: np.ndarray, referenced: ReferencedSeries, k: int, number: int) -> Dataset:
    image = Dataset()
    image.ReferencedSOPClassUID = referenced.sop_class_uid
    image.ReferencedSOPInstanceUID = referenced.sop_instance_uids[k]
    item = Dataset()
    item.ContourImageSequence = Sequence([image])
    item.ContourGeometricType = "CLOSED_PLANAR"
    item.NumberOfContourPoints = len(polygon)
    item.ContourNumber = number
    # Rounded to 1 nm: Python writes such floats in at most 16 characters, as DS requires (PS3.5 6.2).
    item.ContourData = [float(v) for v in np.round(polygon.reshape(-1), 6)]
    return item
