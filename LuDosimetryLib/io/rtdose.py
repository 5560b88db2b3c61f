"""RT Dose objects: read any grid-based RT Dose into a SimpleITK image in Gy, write our absorbed dose as one.

Reading (:func:`read_rtdose`) follows DICOM PS3.3 C.8.8.3 (RT Dose module): pixel values times
Dose Grid Scaling (3004,000E) in Dose Units (3004,0002) GY or CGY; frames are placed with Grid Frame
Offset Vector (3004,000C), relative (first element 0) or absolute (first element equal to the z of
Image Position (Patient), transverse orientation only) per C.8.8.3.2.

Writing (:func:`write_rtdose`) produces one standalone multi-frame RT Dose (RT Dose Storage) that needs
no CT or RT Plan beside it: 32-bit unsigned pixels with Dose Grid Scaling, Dose Units GY, Dose Type
PHYSICAL, a relative Grid Frame Offset Vector that increases from the first frame, in the frame of
reference of the SPECT/CT the dose was computed on.

Dose Summation Type (3004,000A): radionuclide therapy has no RT Plan, fraction or beam, and every
Defined Term of PS3.3 C.8.8.3 ties the dose to another RT object: PLAN, MULTI_PLAN, FRACTION, BEAM,
BRACHY, the *_SESSION terms and CONTROL_POINT make the Referenced RT Plan Sequence (300C,0002) required,
RECORD makes the Referenced Treatment Record Sequence (3008,0030) required (``dciodvfy`` reports each
missing sequence as an Error). Dose Summation Type has Defined Terms, which the standard allows to be
extended, so we write the local term ``ADMINISTRATION`` (:data:`DEFAULT_DOSE_SUMMATION_TYPE`): the
absorbed dose of one radiopharmaceutical administration integrated over time. ``dciodvfy`` reports only a
Warning ("Unrecognized defined term") for it. :func:`write_rtdose` refuses the terms that need a plan or
record reference, since it writes none.

SimpleITK (GDCM) reads the files written here as 32-bit unsigned stored values with the geometry of
:func:`read_rtdose` but does **not** apply Dose Grid Scaling (checked with SimpleITK 2.5 in
Testing/Python/test_rtdose.py): multiply by Dose Grid Scaling to get Gy, or use :func:`read_rtdose`.
dicom3tools ``dciodvfy`` (2022 build) aborts with an assertion on any 32-bit pixel data (also on
third-party RT Doses), so the tests validate the same object with 16-bit pixels.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Tuple

import numpy as np
import pydicom
import SimpleITK as sitk
from pydicom.uid import RTDoseStorage

from ..errors import DicomFileError, OutputError
from .dicom_common import format_ds, PatientInfo, SeriesInfo, StudyInfo, new_dataset, write_dataset

#: Largest stored pixel value we write. Kept below 2**31 so that readers that (wrongly) treat the
#: 32-bit pixels as signed still read the right dose; the precision is max_dose / 2e9 either way.
MAX_STORED_VALUE = 2_000_000_000

#: Relative tolerance on the spacing of Grid Frame Offset Vector and on direction cosines.
_GEOMETRY_TOL = 1e-3


@dataclass
class RTDose:
    """An RT Dose read from a file.

    Attributes
    ----------
    image : SimpleITK.Image
        Absorbed dose in Gy, float32, in DICOM patient coordinates (LPS, mm). The slice axis follows
        the plane normal (row cosine x column cosine), so the direction matrix is right-handed; frames
        stored in decreasing offset order are reversed on reading.
    frame_of_reference_uid : str
        Frame of Reference UID of the dose grid ('' when the file has none).
    dose_units : str
        Dose Units as stored ('GY' or 'CGY'); ``image`` is always in Gy.
    dose_type : str
        Dose Type ('PHYSICAL', 'EFFECTIVE', ...).
    dose_summation_type : str
        Dose Summation Type as stored (informational only).
    dose_grid_scaling : float
        Dose Grid Scaling as stored (in ``dose_units`` per pixel value).
    sop_instance_uid : str
    path : pathlib.Path
    """

    image: sitk.Image
    frame_of_reference_uid: str
    dose_units: str
    dose_type: str
    dose_summation_type: str
    dose_grid_scaling: float
    sop_instance_uid: str
    path: Path


_UNIT_TO_GY = {"GY": 1.0, "CGY": 0.01}

#: Local Defined Term for Dose Summation Type (see the module docstring).
DEFAULT_DOSE_SUMMATION_TYPE = "ADMINISTRATION"

#: Defined Terms that require a Referenced RT Plan Sequence or Referenced Treatment Record Sequence.
_SUMMATION_TYPES_NEEDING_REFERENCES = ("PLAN", "MULTI_PLAN", "FRACTION", "BEAM", "BRACHY", "FRACTION_SESSION",
                                       "BEAM_SESSION", "BRACHY_SESSION", "CONTROL_POINT", "RECORD")


def read_rtdose(path: os.PathLike) -> RTDose:
    """Read a grid-based RT Dose file as absorbed dose in Gy.

    Parameters
    ----------
    path : path-like
        One RT Dose file (single- or multi-frame).

    Returns
    -------
    RTDose
        ``.image`` is a float32 SimpleITK image in Gy with the geometry of the dose grid.

    Raises
    ------
    DicomFileError
        The file is not readable DICOM, not an RT Dose, has no pixel data, has Dose Units other than
        GY/CGY (e.g. RELATIVE), or has a Grid Frame Offset Vector that is missing, inconsistent or not
        evenly spaced.
    """
    path = Path(path)
    try:
        ds = pydicom.dcmread(str(path))
    except FileNotFoundError:
        raise DicomFileError("file not found", path) from None
    except Exception as exc:  # pydicom raises several types for garbage input
        raise DicomFileError(f"not a readable DICOM file ({exc.__class__.__name__}: {exc})", path) from None
    modality = str(ds.get("Modality", ""))
    if modality != "RTDOSE" and str(ds.get("SOPClassUID", "")) != RTDoseStorage:
        raise DicomFileError(f"not an RT Dose (Modality '{modality}')", path)
    if "PixelData" not in ds:
        raise DicomFileError("RT Dose has no pixel data (a DVH-only RT Dose cannot be used as a dose grid)",
                             path)
    for keyword in ("Rows", "Columns", "PixelSpacing", "ImagePositionPatient", "ImageOrientationPatient"):
        if keyword not in ds or ds[keyword].value in (None, ""):
            raise DicomFileError(f"RT Dose lacks {keyword}", path)
    units = str(ds.get("DoseUnits", "")).upper()
    if units not in _UNIT_TO_GY:
        raise DicomFileError(f"Dose Units '{units}' is not an absolute dose (GY or CGY needed)", path)
    scaling = float(ds.get("DoseGridScaling", 1.0) or 1.0)
    try:
        pixels = np.asarray(ds.pixel_array)
    except Exception as exc:
        raise DicomFileError(f"cannot decode the dose pixels ({exc.__class__.__name__}: {exc})", path) from None
    n_frames = int(ds.get("NumberOfFrames", 1) or 1)
    if pixels.ndim == 2:
        pixels = pixels[np.newaxis]
    if pixels.shape != (n_frames, int(ds.Rows), int(ds.Columns)):
        raise DicomFileError(f"pixel data shape {pixels.shape} does not match Number of Frames {n_frames}, "
                             f"Rows {ds.Rows}, Columns {ds.Columns}", path)

    iop = np.asarray([float(v) for v in ds.ImageOrientationPatient], dtype=float)
    ipp = np.asarray([float(v) for v in ds.ImagePositionPatient], dtype=float)
    if iop.shape != (6,) or ipp.shape != (3,):
        raise DicomFileError("Image Orientation/Position (Patient) has the wrong number of values", path)
    row_cos, col_cos = iop[:3], iop[3:]
    if (abs(np.linalg.norm(row_cos) - 1) > _GEOMETRY_TOL or abs(np.linalg.norm(col_cos) - 1) > _GEOMETRY_TOL
            or abs(np.dot(row_cos, col_cos)) > _GEOMETRY_TOL):
        raise DicomFileError(f"Image Orientation (Patient) {list(iop)} is not two orthonormal vectors", path)
    row_cos = row_cos / np.linalg.norm(row_cos)
    col_cos = col_cos / np.linalg.norm(col_cos)
    normal = np.cross(row_cos, col_cos)
    offsets = _frame_offsets_mm(ds, n_frames, ipp, iop, path)

    order = np.argsort(offsets, kind="stable")
    offsets = offsets[order]
    pixels = pixels[order]
    if n_frames > 1:
        steps = np.diff(offsets)
        step = float(np.mean(steps))
        if step <= 0 or np.max(np.abs(steps - step)) > _GEOMETRY_TOL * max(step, 1.0):
            raise DicomFileError("Grid Frame Offset Vector is not evenly spaced "
                                 f"(steps {np.round(steps, 4).tolist()} mm); a regular grid is needed", path)
    else:
        step = float(ds.get("SliceThickness", 0) or 0) or 1.0

    dose = pixels.astype(np.float64) * scaling * _UNIT_TO_GY[units]
    image = sitk.GetImageFromArray(dose.astype(np.float32))
    pixel_spacing = [float(v) for v in ds.PixelSpacing]  # (row spacing = between rows, column spacing)
    image.SetSpacing((pixel_spacing[1], pixel_spacing[0], step))
    image.SetOrigin(tuple(float(v) for v in ipp + offsets[0] * normal))
    image.SetDirection(tuple(float(v) for v in np.column_stack([row_cos, col_cos, normal]).ravel()))
    return RTDose(image=image,
                  frame_of_reference_uid=str(ds.get("FrameOfReferenceUID", "")),
                  dose_units=units,
                  dose_type=str(ds.get("DoseType", "")),
                  dose_summation_type=str(ds.get("DoseSummationType", "")),
                  dose_grid_scaling=scaling,
                  sop_instance_uid=str(ds.get("SOPInstanceUID", "")),
                  path=path)


def _frame_offsets_mm(ds, n_frames: int, ipp: np.ndarray, iop: np.ndarray, path: Path) -> np.ndarray:
    """Offsets (mm) of each frame along the plane normal from Image Position (Patient), PS3.3 C.8.8.3.2."""
    if n_frames == 1 and "GridFrameOffsetVector" not in ds:
        return np.zeros(1)
    if "GridFrameOffsetVector" not in ds:
        raise DicomFileError("multi-frame RT Dose lacks Grid Frame Offset Vector", path)
    gfov = np.asarray([float(v) for v in np.atleast_1d(ds.GridFrameOffsetVector)], dtype=float)
    if gfov.size != n_frames:
        raise DicomFileError(f"Grid Frame Offset Vector has {gfov.size} values for {n_frames} frames", path)
    if abs(gfov[0]) < 1e-6:
        return gfov  # relative: offsets along the normal from Image Position (Patient)
    # Absolute: the values are z coordinates, defined only for the transverse orientation.
    if not np.allclose(iop, [1, 0, 0, 0, 1, 0], atol=_GEOMETRY_TOL):
        raise DicomFileError("Grid Frame Offset Vector does not start at 0 (absolute form) but the orientation "
                             f"{list(iop)} is not transverse [1,0,0,0,1,0]", path)
    if abs(gfov[0] - ipp[2]) > 1e-2:
        raise DicomFileError(f"Grid Frame Offset Vector starts at {gfov[0]} mm, neither 0 (relative) nor the "
                             f"z of Image Position (Patient) {ipp[2]} mm (absolute)", path)
    return gfov - gfov[0]


def _format_scaling(max_dose_gy: float, max_stored: int = MAX_STORED_VALUE) -> Tuple[str, float]:
    """Dose Grid Scaling as a DS string (<= 16 characters) and its exact float value."""
    if max_dose_gy <= 0:
        text = "1e-06"
    else:
        text = f"{max_dose_gy / max_stored:.8e}"  # e.g. '1.23456789e-09': 14 characters
        # Rounding to 9 digits may round up or down: make sure max/scale stays within the range.
        while max_dose_gy / float(text) > max_stored * 1.0000001:
            text = f"{float(text) * 1.00000002:.8e}"
    return text, float(text)


def write_rtdose(path: os.PathLike, dose_gy: sitk.Image, patient: PatientInfo, study: StudyInfo, *,
                 frame_of_reference_uid: str,
                 series_description: str = "LuDosimetry absorbed dose",
                 series_number: int = 200,
                 dose_summation_type: str = DEFAULT_DOSE_SUMMATION_TYPE,
                 comment: str = "",
                 series_instance_uid: Optional[str] = None,
                 sop_instance_uid: Optional[str] = None,
                 bits_allocated: int = 32) -> Path:
    """Write an absorbed dose image as a standalone multi-frame RT Dose (Gy, unsigned integers + Dose Grid Scaling).

    Parameters
    ----------
    path : path-like
        Output file; written atomically (temporary file + rename), parent folders created.
    dose_gy : SimpleITK.Image
        3D absorbed dose in Gy (any scalar pixel type), in DICOM patient coordinates. Its slice axis must
        be parallel to the normal of its first two direction columns (no shear); it may point either
        way (flipped z): frames are written in increasing offset order.
    patient, study : PatientInfo, StudyInfo
    frame_of_reference_uid : str
        Frame of reference of the images the dose was computed on (required: a dose without one
        cannot be registered to anything).
    series_description : str
    series_number : int
    dose_summation_type : str
        Default 'ADMINISTRATION', a local Defined Term (see the module docstring: the standard terms
        need an RT Plan or treatment record reference, which radionuclide therapy does not have).
        Upper case letters, digits, '_' and space, at most 16 characters.
    comment : str
        Dose Comment (3004,0006), e.g. the method; truncated to 10240 characters (LT).
    series_instance_uid, sop_instance_uid : str, optional
        New UIDs when omitted.
    bits_allocated : {32, 16}
        32 (default): precision max/2e9. 16: precision max/65535 (e.g. 0.4 mGy for a 25 Gy maximum),
        for readers and validators that mishandle 32-bit pixels (the dicom3tools 2022 ``dciodvfy``
        aborts on any 32-bit RT Dose).

    Returns
    -------
    pathlib.Path
        The path written.

    Raises
    ------
    OutputError
        The image is not 3D scalar, has non-finite or negative doses, or a sheared geometry; no
        frame of reference UID was given; or the Dose Summation Type needs a reference we do not write.
    """
    path = Path(path)
    if not frame_of_reference_uid:
        raise OutputError("an RT Dose needs the frame of reference UID of its images", path)
    dose_summation_type = str(dose_summation_type)
    if dose_summation_type in _SUMMATION_TYPES_NEEDING_REFERENCES:
        raise OutputError(f"Dose Summation Type '{dose_summation_type}' requires a referenced RT Plan or "
                          "treatment record, which a radionuclide therapy dose does not have", path)
    if not re.fullmatch(r"[A-Z0-9_ ]{1,16}", dose_summation_type):
        raise OutputError(f"Dose Summation Type '{dose_summation_type}' is not a DICOM code string "
                          "(A-Z, 0-9, '_', space; at most 16 characters)", path)
    if dose_gy.GetDimension() != 3 or dose_gy.GetNumberOfComponentsPerPixel() != 1:
        raise OutputError(f"dose image must be 3D scalar (got {dose_gy.GetDimension()}D with "
                          f"{dose_gy.GetNumberOfComponentsPerPixel()} components)", path)
    dose = sitk.GetArrayFromImage(dose_gy).astype(np.float64)  # (z, y, x); a copy, input untouched
    if not np.all(np.isfinite(dose)):
        raise OutputError("dose image has non-finite values (NaN or inf)", path)
    if dose.size and dose.min() < 0:
        raise OutputError(f"dose image has negative values (min {dose.min():.3g} Gy); an RT Dose stores "
                          "unsigned doses", path)

    direction = np.asarray(dose_gy.GetDirection(), dtype=float).reshape(3, 3)
    row_cos, col_cos, slice_dir = direction[:, 0], direction[:, 1], direction[:, 2]
    normal = np.cross(row_cos, col_cos)
    alignment = float(np.dot(slice_dir, normal))
    if abs(abs(alignment) - 1.0) > _GEOMETRY_TOL:
        raise OutputError("dose image slice axis is not perpendicular to its rows and columns (sheared "
                          "grid); an RT Dose cannot represent it", path)
    spacing = np.asarray(dose_gy.GetSpacing(), dtype=float)
    origin = np.asarray(dose_gy.GetOrigin(), dtype=float)
    nz = dose.shape[0]
    if alignment < 0:  # flipped: the last slice has the smallest offset along the normal
        dose = dose[::-1]
        origin = origin + (nz - 1) * spacing[2] * slice_dir
    offsets = np.arange(nz) * spacing[2]

    if bits_allocated not in (16, 32):
        raise OutputError(f"an RT Dose has 16 or 32 bits per pixel, not {bits_allocated}", path)
    max_stored = MAX_STORED_VALUE if bits_allocated == 32 else np.iinfo(np.uint16).max
    scaling_text, scaling = _format_scaling(float(dose.max()) if dose.size else 0.0, max_stored)
    stored = np.clip(np.rint(dose / scaling), 0, max_stored).astype(np.uint32)

    series = SeriesInfo(modality="RTDOSE", series_number=series_number, description=series_description,
                        frame_of_reference_uid=frame_of_reference_uid,
                        **({"series_instance_uid": series_instance_uid} if series_instance_uid else {}))
    ds = new_dataset(RTDoseStorage, patient, study, series, sop_instance_uid=sop_instance_uid)
    ds.OperatorsName = ""  # RT Series module, type 2
    # General Image / Image Plane
    ds.ImageType = ["DERIVED", "SECONDARY"]  # not required by the RT Dose IOD, harmless and informative
    ds.PatientOrientation = ""
    ds.ImagePositionPatient = [_ds(v) for v in origin]
    ds.ImageOrientationPatient = [_ds(v) for v in np.concatenate([row_cos, col_cos])]
    ds.PixelSpacing = [_ds(spacing[1]), _ds(spacing[0])]  # row spacing (between rows), column spacing
    ds.SliceThickness = _ds(spacing[2])
    ds.FrameOfReferenceUID = frame_of_reference_uid
    ds.PositionReferenceIndicator = ""
    # Image Pixel + Multi-frame
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = int(dose.shape[1]), int(dose.shape[2])
    ds.BitsAllocated = bits_allocated
    ds.BitsStored = bits_allocated
    ds.HighBit = bits_allocated - 1
    ds.PixelRepresentation = 0
    ds.NumberOfFrames = int(nz)
    ds.FrameIncrementPointer = pydicom.tag.Tag("GridFrameOffsetVector")
    # RT Dose module
    ds.DoseUnits = "GY"
    ds.DoseType = "PHYSICAL"
    ds.DoseSummationType = dose_summation_type
    ds.GridFrameOffsetVector = [_ds(v) for v in offsets]
    ds.DoseGridScaling = scaling_text
    if comment:
        ds.DoseComment = comment[:10240]
    ds.PixelData = stored.astype("<u4" if bits_allocated == 32 else "<u2").tobytes()
    try:
        return write_dataset(ds, path)
    except OSError as exc:
        raise OutputError(f"cannot write the RT Dose ({exc.strerror or exc})", path) from None


_ds = format_ds
