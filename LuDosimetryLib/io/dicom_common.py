"""Shared pieces of every DICOM object LuDosimetry writes: identity modules, UIDs, atomic file writes.

The writers (CT / PT / NM series, RTSTRUCT, RT Dose) build on :func:`new_dataset` so that each object
carries complete Patient, General Study, General Series, Frame of Reference, General Equipment and SOP
Common modules (DICOM PS3.3 C.7.1.1, C.7.2.1, C.7.3.1, C.7.4.1, C.7.5.1, C.12.1) and stands alone.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Optional, Tuple

import pydicom
from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, PYDICOM_IMPLEMENTATION_UID, generate_uid

from .. import __version__

MANUFACTURER = "LuDosimetry"
SOFTWARE_VERSIONS = f"LuDosimetry {__version__}"


def new_uid(entropy: Optional[str] = None) -> str:
    """A new DICOM UID in the 2.25 (UUID) form (PS3.5 B.2).

    With ``entropy`` the UID is deterministic for that string (a name-based UUID, RFC 4122 version 5),
    so that a phantom written twice with one seed has the same UIDs.
    """
    if entropy is None:
        return generate_uid(prefix=None)
    import uuid
    return "2.25." + str(uuid.uuid5(uuid.NAMESPACE_OID, str(entropy)).int)


def derived_uid(text: str) -> str:
    """A deterministic UID for ``text`` (same as ``new_uid(text)``)."""
    return new_uid(text)


def format_ds(value: float) -> str:
    """A number as a DICOM Decimal String (VR DS, at most 16 characters), as exact as that allows."""
    value = float(value)
    if value == 0:
        return "0"
    for digits in range(12, 0, -1):
        text = f"{value:.{digits}g}"
        if len(text) <= 16:
            return text
    return f"{value:.6e}"


def code_item(code: Tuple[str, str, str]) -> Dataset:
    """A Code Sequence item (PS3.3 8.8) from ``(CodeValue, CodingSchemeDesignator, CodeMeaning)``."""
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = code
    return item


def dicom_date(dt: datetime) -> str:
    """``YYYYMMDD``."""
    return dt.strftime("%Y%m%d")


def dicom_time(dt: datetime) -> str:
    """``HHMMSS.ffffff`` (microseconds kept)."""
    return dt.strftime("%H%M%S.%f")


def dicom_datetime(dt: datetime) -> str:
    """``YYYYMMDDHHMMSS.ffffff``."""
    return dt.strftime("%Y%m%d%H%M%S.%f")


def acquisition_times(ds: Dataset, acquisition_datetime: datetime) -> None:
    """AcquisitionDate, AcquisitionTime and AcquisitionDateTime of ``acquisition_datetime``."""
    ds.AcquisitionDate = dicom_date(acquisition_datetime)
    ds.AcquisitionTime = dicom_time(acquisition_datetime)
    ds.AcquisitionDateTime = dicom_datetime(acquisition_datetime)


@dataclass(frozen=True)
class Equipment:
    """General Equipment module (PS3.3 C.7.5.1): the device a file says it comes from."""

    manufacturer: str
    model_name: str
    station_name: str = "LUDOSIM"
    institution_name: str = ""


#: LuDosimetry itself: the equipment of our own reconstructions and derived images (:func:`new_dataset`
#: writes SoftwareVersions with the library version).
LUDOSIMETRY = Equipment(manufacturer=MANUFACTURER, model_name="LuDosimetryLib")


def equipment_module(ds: Dataset, equipment: Equipment) -> None:
    """Manufacturer, ManufacturerModelName, InstitutionName and StationName of ``equipment``."""
    ds.Manufacturer = equipment.manufacturer
    ds.ManufacturerModelName = equipment.model_name
    ds.InstitutionName = equipment.institution_name
    ds.StationName = equipment.station_name


@dataclass
class PatientInfo:
    """Patient module (PS3.3 C.7.1.1)."""

    patient_id: str = "ANON"
    patient_name: str = "Anonymous"
    birth_date: str = ""
    sex: str = ""  # 'M', 'F', 'O' or ''
    age: str = ""  # DICOM AS, e.g. '064Y'
    weight_kg: Optional[float] = None


@dataclass
class StudyInfo:
    """General Study module (PS3.3 C.7.2.1)."""

    study_instance_uid: str = field(default_factory=new_uid)
    study_datetime: datetime = field(default_factory=datetime.now)
    study_id: str = "1"
    description: str = ""
    accession_number: str = ""


@dataclass
class SeriesInfo:
    """General Series + Frame of Reference modules (PS3.3 C.7.3.1, C.7.4.1)."""

    modality: str
    series_instance_uid: str = field(default_factory=new_uid)
    series_number: int = 1
    description: str = ""
    frame_of_reference_uid: Optional[str] = None
    series_datetime: Optional[datetime] = None


def new_dataset(sop_class_uid: str, patient: PatientInfo, study: StudyInfo, series: SeriesInfo,
                sop_instance_uid: Optional[str] = None, instance_number: int = 1,
                content_datetime: Optional[datetime] = None) -> FileDataset:
    """A dataset with file meta and the identity modules filled in.

    Parameters
    ----------
    sop_class_uid : str
        e.g. ``pydicom.uid.CTImageStorage``.
    patient, study, series : PatientInfo, StudyInfo, SeriesInfo
    sop_instance_uid : str, optional
        New UID when omitted.
    instance_number : int
    content_datetime : datetime, optional
        Content Date/Time; defaults to now.
    """
    sop_instance_uid = sop_instance_uid or new_uid()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class_uid
    meta.MediaStorageSOPInstanceUID = sop_instance_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    meta.ImplementationVersionName = "LUDOSIM_" + __version__.replace(".", "")[:6]
    ds = FileDataset("", Dataset(), file_meta=meta, preamble=b"\0" * 128)
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = sop_class_uid
    ds.SOPInstanceUID = sop_instance_uid
    now = content_datetime or datetime.now()
    ds.InstanceCreationDate = dicom_date(datetime.now())
    ds.InstanceCreationTime = dicom_time(datetime.now())
    # Patient
    ds.PatientName = patient.patient_name
    ds.PatientID = patient.patient_id
    ds.PatientBirthDate = patient.birth_date
    ds.PatientSex = patient.sex
    if patient.age:
        ds.PatientAge = patient.age
    if patient.weight_kg is not None:
        ds.PatientWeight = f"{patient.weight_kg:.1f}"
    # General Study
    ds.StudyInstanceUID = study.study_instance_uid
    ds.StudyDate = dicom_date(study.study_datetime)
    ds.StudyTime = dicom_time(study.study_datetime)
    ds.ReferringPhysicianName = ""
    ds.StudyID = study.study_id
    ds.AccessionNumber = study.accession_number
    if study.description:
        ds.StudyDescription = study.description
    # General Series
    ds.Modality = series.modality
    ds.SeriesInstanceUID = series.series_instance_uid
    ds.SeriesNumber = int(series.series_number)
    if series.description:
        ds.SeriesDescription = series.description
    if series.series_datetime is not None:
        ds.SeriesDate = dicom_date(series.series_datetime)
        ds.SeriesTime = dicom_time(series.series_datetime)
    # Frame of Reference
    if series.frame_of_reference_uid:
        ds.FrameOfReferenceUID = series.frame_of_reference_uid
        ds.PositionReferenceIndicator = ""
    # General Equipment
    ds.Manufacturer = MANUFACTURER
    ds.SoftwareVersions = SOFTWARE_VERSIONS
    # Instance
    ds.InstanceNumber = int(instance_number)
    ds.ContentDate = dicom_date(now)
    ds.ContentTime = dicom_time(now)
    return ds


def write_dataset(ds: Dataset, path: os.PathLike) -> Path:
    """Write ``ds`` to ``path`` atomically (temporary file in the same folder, then rename).

    Returns the path written. A failure leaves no partial file behind.
    """
    from .export import atomic_file

    path = Path(path)
    with atomic_file(path, ".dcm") as tmp:
        if _has_enforce():
            pydicom.dcmwrite(tmp, ds, enforce_file_format=True)
        else:
            ds.save_as(tmp, write_like_original=False)
    return path


def _has_enforce() -> bool:
    """pydicom >= 3 spells 'write a conformant file' ``enforce_file_format``; 2.x uses write_like_original."""
    return int(pydicom.__version__.split(".")[0]) >= 3


def _looks_like_preambleless_dicom(fileobj) -> bool:
    """True when a file without the 'DICM' preamble starts with a plausible group 0002/0008 element.

    Old ACR-NEMA-style exports (and some PACS) omit the 128-byte preamble and file meta; pydicom reads
    them with ``force=True``. The peek keeps random files (text, images) from being forced open.
    """
    pos = fileobj.tell()
    head = fileobj.read(8)
    fileobj.seek(pos)
    if len(head) < 8:
        return False
    group_le = int.from_bytes(head[0:2], "little")
    group_be = int.from_bytes(head[0:2], "big")
    return group_le in (0x0002, 0x0008) or group_be in (0x0002, 0x0008)


def read_dicom(path_or_file, *, stop_before_pixels: bool = False):
    """Read a DICOM file, tolerating a missing preamble/file meta (validated: it must have a SOP Class
    UID or a Modality). Raises :class:`pydicom.errors.InvalidDicomError` for non-DICOM files."""
    from pydicom.errors import InvalidDicomError

    own = not hasattr(path_or_file, "read")
    fh = open(path_or_file, "rb") if own else path_or_file
    try:
        start = fh.tell()
        try:
            return pydicom.dcmread(fh, stop_before_pixels=stop_before_pixels)
        except InvalidDicomError:
            fh.seek(start)
            if not _looks_like_preambleless_dicom(fh):
                raise
            ds = pydicom.dcmread(fh, stop_before_pixels=stop_before_pixels, force=True)
            if "SOPClassUID" not in ds and "Modality" not in ds:
                raise InvalidDicomError("no DICOM preamble and no SOP Class UID or Modality")
            return ds
    finally:
        if own:
            fh.close()
