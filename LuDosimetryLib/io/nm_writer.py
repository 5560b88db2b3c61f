"""DICOM NM multi-frame writer of our own reconstructions, and the image-series helpers it owns.

:func:`write_nm_multiframe` turns a ``SimpleITK.Image`` in DICOM patient coordinates (LPS, mm) into one NM
Image Storage file (RECON TOMO) that other programs (dicom3tools ``dciodvfy``, dcmtk, GDCM/SimpleITK,
pydicom, MIM, Slicer) read back with the same geometry and values. The file carries the identity modules
of :func:`~LuDosimetryLib.io.dicom_common.new_dataset` plus the modules of the NM Image IOD (DICOM PS3.3
A.5); its General Equipment is LuDosimetry's (:data:`~LuDosimetryLib.io.dicom_common.LUDOSIMETRY`) unless
another ``equipment`` is given. The public helpers below (slice geometry, pixel and isotope modules,
decay-correction terms) are shared with the μ-map writer (:mod:`LuDosimetryLib.recon.mumap`) and with the
vendor-like writers of the synthetic patient and the digital twin (:mod:`LuDosimetryLib.phantom.dicom`).

Conventions of the SPECT writers
--------------------------------
The input image holds the **activity concentration at the acquisition start** (Bq/mL), as the scanner
measured it. What is stored depends on ``decay_correction`` (PS3.3 C.8.9.1.1.3), with λ the decay
constant, Δ = acquisition start − administration and D the frame duration:

``"ADMIN"``
    stored = image · exp(λΔ) (decay-corrected to the administration time);
    DecayFactor = exp(λΔ) · λD / (1 − exp(−λD)) relative to the mean over the frame;
    FrameReferenceTime = Δ + t_eff (ms, from the administration time), t_eff being the time within
    the frame at which the activity equals its mean over the frame.
``"START"``
    stored = image; DecayFactor = λD / (1 − exp(−λD)); FrameReferenceTime = t_eff (ms, from the
    acquisition start).
``"NONE"``
    stored = mean over the frame = image · (1 − exp(−λD)) / (λD); no DecayFactor;
    FrameReferenceTime = t_eff.

For Lu-177 and a 20 min frame the within-frame decay is 0.07 %, but the conventions are kept exact so
that readers can be checked to the last digit of the stored slope.
"""
from __future__ import annotations

import math
import os
from datetime import datetime
from pathlib import Path
from typing import List, Optional, Tuple

import numpy as np
import SimpleITK as sitk
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import NuclearMedicineImageStorage

from ..errors import OutputError
from ..radionuclides import Radionuclide, radionuclide
from .dicom_common import (LUDOSIMETRY, Equipment, PatientInfo, SeriesInfo, StudyInfo, acquisition_times,
                           code_item, derived_uid, dicom_datetime, dicom_time, equipment_module, format_ds,
                           new_dataset, write_dataset)
from .rtstruct import ReferencedSeries

#: SNOMED CT codes (DICOM CID 18 "Isotopes in Radiopharmaceuticals", CID 25 "Radiopharmaceuticals";
#: PS3.16, as transcribed in pydicom.sr._concepts_dict).
_RADIONUCLIDE_CODES = {"Lu-177": ("447553000", "SCT", "^177^Lutetium")}
_RADIOPHARMACEUTICAL_CODES = {"lu-177 dotatate": ("781259000", "SCT", "Lutetium^177^ DOTATATE")}
#: NM/PET patient orientation (CID 19, 20, 21).
_RECUMBENT = ("102538003", "SCT", "recumbent")
_SUPINE = ("40199007", "SCT", "supine")
_FEET_FIRST = ("102541007", "SCT", "feet-first")
#: UCUM unit of activity concentration (CID 84).
_BQML_CODE = ("Bq/ml", "UCUM", "Becquerels/milliliter")
#: Lu-177 main photopeak 208.4 keV with a 20 % window (Ljungberg et al., MIRD Pamphlet No. 26,
#: J Nucl Med 2016;57:151-162, recommended acquisition).
_PHOTOPEAK_WINDOW_KEV = (187.56, 229.24)

_DECAY_CORRECTIONS = ("ADMIN", "START", "NONE")


# --------------------------------------------------------------------------------------------- geometry

class SliceGeometry:
    """Slice geometry of a 3D image: orientation, per-slice positions, spacings (LPS, mm)."""

    def __init__(self, image: sitk.Image, where: os.PathLike):
        if not isinstance(image, sitk.Image):
            raise OutputError(f"expected a SimpleITK.Image, got {type(image).__name__}", where)
        if image.GetDimension() != 3:
            raise OutputError(f"the image is {image.GetDimension()}D; a 3D volume is needed", where)
        if image.GetNumberOfComponentsPerPixel() != 1:
            raise OutputError("the image has vector pixels; a scalar volume is needed", where)
        self.size = image.GetSize()  # (x, y, z)
        self.spacing = image.GetSpacing()
        d = np.array(image.GetDirection(), dtype=float).reshape(3, 3)
        self.row = d[:, 0]
        self.col = d[:, 1]
        self.normal = d[:, 2]
        if abs(np.dot(np.cross(self.row, self.col), self.normal)) < 0.999:
            raise OutputError("the slice axis is not orthogonal to the slices; DICOM slices need that", where)
        self.positions = [np.array(image.TransformIndexToPhysicalPoint((0, 0, k)), dtype=float)
                          for k in range(self.size[2])]

    def orientation(self) -> List[str]:
        return [format_ds(v) for v in list(self.row) + list(self.col)]

    def position(self, k: int) -> List[str]:
        return [format_ds(v) for v in self.positions[k]]

    def slice_location(self, k: int) -> str:
        return format_ds(float(np.dot(self.positions[k], self.normal)))

    def pixel_spacing(self) -> List[str]:
        # DICOM Pixel Spacing is (row spacing = between rows, column spacing) = (y, x).
        return [format_ds(self.spacing[1]), format_ds(self.spacing[0])]


def image_array(image: sitk.Image, where: os.PathLike) -> np.ndarray:
    """The image's voxels as float64 (z, y, x); OutputError naming ``where`` for NaN or infinite values."""
    arr = sitk.GetArrayFromImage(image).astype(np.float64)
    if not np.all(np.isfinite(arr)):
        raise OutputError("the image holds NaN or infinite values", where)
    return arr


# --------------------------------------------------------------------------------------------- common modules

def pixel_module(ds: Dataset, stored: np.ndarray, signed: bool) -> None:
    """Image Pixel module of 16-bit MONOCHROME2 frames ``stored`` (..., rows, columns)."""
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = int(stored.shape[-2]), int(stored.shape[-1])
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1 if signed else 0
    dtype = np.dtype("<i2") if signed else np.dtype("<u2")
    ds.PixelData = np.ascontiguousarray(stored.astype(dtype)).tobytes()


def series_datetime(series: SeriesInfo, fallback: datetime) -> datetime:
    """``series.series_datetime``, or ``fallback`` when it is not set."""
    return series.series_datetime if series.series_datetime is not None else fallback


def output_folder(folder: os.PathLike) -> Path:
    """``folder`` as a Path, created when missing; OutputError when it is a file or cannot be created."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise OutputError("exists and is not a folder", folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create the folder ({exc.strerror})", folder) from exc
    return folder


def slice_uid(series: SeriesInfo, k: int) -> str:
    """Deterministic SOP Instance UID of slice ``k`` of ``series``."""
    return derived_uid(f"{series.series_instance_uid}/{k}")


# --------------------------------------------------------------------------------------------- SPECT timing

def decay_terms(decay_correction: str, nuclide: Radionuclide, acquisition_datetime: datetime,
                injection_datetime: datetime, duration_s: float, where) -> Tuple[float, Optional[float], float]:
    """(stored/physical-at-start factor, DecayFactor or None, FrameReferenceTime in ms) of
    ``decay_correction`` (see the module notes)."""
    mode = str(decay_correction).upper()
    if mode not in _DECAY_CORRECTIONS:
        raise OutputError(f"decay_correction must be one of {', '.join(_DECAY_CORRECTIONS)}, "
                          f"not {decay_correction!r}", where)
    lam = nuclide.decay_constant_per_s
    x = lam * float(duration_s)
    frame_mean = (1.0 - math.exp(-x)) / x if x > 0 else 1.0  # mean over the frame / value at start
    t_eff = -math.log(frame_mean) / lam if x > 0 else 0.0  # s into the frame where A = frame mean
    delta = (acquisition_datetime - injection_datetime).total_seconds()
    if mode == "ADMIN":
        return math.exp(lam * delta), math.exp(lam * delta) / frame_mean, (delta + t_eff) * 1000.0
    if mode == "START":
        return 1.0, 1.0 / frame_mean, t_eff * 1000.0
    return frame_mean, None, t_eff * 1000.0


def check_timing(acquisition_datetime, injection_datetime, duration_s, injected_activity_bq, where) -> None:
    """OutputError naming ``where`` unless the times are datetimes in order and the duration and activity
    positive."""
    if not isinstance(acquisition_datetime, datetime) or not isinstance(injection_datetime, datetime):
        raise OutputError("acquisition_datetime and injection_datetime must be datetime objects", where)
    if acquisition_datetime < injection_datetime:
        raise OutputError(f"the acquisition ({acquisition_datetime.isoformat()}) precedes the injection "
                          f"({injection_datetime.isoformat()})", where)
    if not (float(duration_s) > 0 and math.isfinite(float(duration_s))):
        raise OutputError(f"duration_s must be positive, got {duration_s!r}", where)
    if not (float(injected_activity_bq) > 0 and math.isfinite(float(injected_activity_bq))):
        raise OutputError(f"injected_activity_bq must be positive, got {injected_activity_bq!r}", where)


def check_timezone(timezone_offset: Optional[str], where) -> None:
    """OutputError naming ``where`` unless ``timezone_offset`` is None or looks like ``'+0100'``."""
    if timezone_offset is None:
        return
    s = str(timezone_offset)
    if len(s) != 5 or s[0] not in "+-" or not s[1:].isdigit():
        raise OutputError(f"timezone_offset must look like '+0100', got {timezone_offset!r}", where)


def radiopharmaceutical_item(nuclide: Radionuclide, radiopharmaceutical: str, injected_activity_bq: float,
                             injection_datetime: datetime, dose_unit_mbq: bool) -> Dataset:
    """A Radiopharmaceutical Information Sequence item: administration, nuclide and its SNOMED CT codes."""
    item = Dataset()
    item.Radiopharmaceutical = radiopharmaceutical
    item.RadiopharmaceuticalRoute = "Intravenous"
    item.RadiopharmaceuticalStartTime = dicom_time(injection_datetime)
    item.RadiopharmaceuticalStartDateTime = dicom_datetime(injection_datetime)
    # PET Isotope module: Bq (PS3.3 C.8.9.2); NM Isotope module: MBq (PS3.3 C.8.4.10).
    dose = injected_activity_bq / 1e6 if dose_unit_mbq else injected_activity_bq
    item.RadionuclideTotalDose = format_ds(dose)
    item.RadionuclideHalfLife = format_ds(nuclide.half_life_s)
    code = _RADIONUCLIDE_CODES.get(nuclide.name)
    item.RadionuclideCodeSequence = DicomSequence([code_item(code)] if code else [])
    pharma = _RADIOPHARMACEUTICAL_CODES.get(radiopharmaceutical.strip().lower())
    if pharma:
        item.RadiopharmaceuticalCodeSequence = DicomSequence([code_item(pharma)])
    return item


def patient_orientation(ds: Dataset) -> None:
    """Patient Orientation and Patient Gantry Relationship codes: recumbent, supine, feet-first."""
    recumbent = code_item(_RECUMBENT)
    recumbent.PatientOrientationModifierCodeSequence = DicomSequence([code_item(_SUPINE)])
    ds.PatientOrientationCodeSequence = DicomSequence([recumbent])
    ds.PatientGantryRelationshipCodeSequence = DicomSequence([code_item(_FEET_FIRST)])


def _energy_window(ds: Dataset) -> None:
    window = Dataset()
    rng = Dataset()
    rng.EnergyWindowLowerLimit = format_ds(_PHOTOPEAK_WINDOW_KEV[0])
    rng.EnergyWindowUpperLimit = format_ds(_PHOTOPEAK_WINDOW_KEV[1])
    window.EnergyWindowRangeSequence = DicomSequence([rng])
    window.EnergyWindowName = "Lu177_208keV"
    ds.EnergyWindowInformationSequence = DicomSequence([window])


def scale_to_uint16(values: np.ndarray) -> Tuple[np.ndarray, float, bool]:
    """(stored, slope, signed): uint16 over [0, max] or, with negative values, int16 over [-m, m]."""
    vmin, vmax = float(values.min()) if values.size else 0.0, float(values.max()) if values.size else 0.0
    if vmin >= 0.0:
        slope = vmax / 65535.0 if vmax > 0 else 1.0
        return np.clip(np.rint(values / slope), 0, 65535), slope, False
    m = max(abs(vmin), abs(vmax))
    slope = m / 32767.0
    return np.clip(np.rint(values / slope), -32767, 32767), slope, True


# --------------------------------------------------------------------------------------------- NM multi-frame

def recon_tomo_modules(ds: Dataset, geo: SliceGeometry, duration_s: float) -> None:
    """NM Detector (PS3.3 C.8.4.11) and TOMO Acquisition (C.8.4.12) modules of a reconstructed volume.

    One detector item carries the volume's geometry; the rotation is that of a Symbia Intevo: 2 heads
    x 60 views of 3 degrees (120 over 360 degrees) acquired at the same time, so the duration per view
    times the views per rotation is the acquisition duration ``duration_s`` (s; 0 for a derived map).
    """
    det = Dataset()
    det.CollimatorGridName = "MELP"
    det.CollimatorType = "PARA"
    det.FocalDistance = ""
    det.ImageOrientationPatient = geo.orientation()
    det.ImagePositionPatient = geo.position(0)
    ds.DetectorInformationSequence = DicomSequence([det])
    rot = Dataset()
    rot.StartAngle = "0"
    rot.AngularStep = "3"
    rot.RotationDirection = "CW"
    rot.ScanArc = "180"
    rot.ActualFrameDuration = int(round(float(duration_s) * 1000.0 / 60.0))
    rot.NumberOfFramesInRotation = 60
    ds.RotationInformationSequence = DicomSequence([rot])
    ds.TypeOfDetectorMotion = "STEP AND SHOOT"


def write_nm_multiframe(image_bqml: sitk.Image, path: os.PathLike, patient: PatientInfo, study: StudyInfo,
                        series: SeriesInfo, *, acquisition_datetime: datetime, duration_s: float,
                        injected_activity_bq: float, injection_datetime: datetime, decay_correction: str = "NONE",
                        nuclide: Optional[Radionuclide] = None, timezone_offset: Optional[str] = None,
                        radiopharmaceutical: str = "Lu-177 DOTATATE",
                        equipment: Equipment = LUDOSIMETRY) -> ReferencedSeries:
    """Write a reconstructed SPECT as one NM Image Storage multi-frame file (RECON TOMO).

    Parameters
    ----------
    image_bqml : SimpleITK.Image
        Activity concentration at the acquisition start (Bq/mL), LPS (mm).
    path : path-like
        Output file, written atomically.
    patient, study, series : PatientInfo, StudyInfo, SeriesInfo
    acquisition_datetime, duration_s, injected_activity_bq, injection_datetime, nuclide, timezone_offset,
    radiopharmaceutical
        As for :func:`~LuDosimetryLib.phantom.dicom.slice_writer.write_pt_slices`. Note that the NM Isotope
        module states RadionuclideTotalDose in MBq.
    decay_correction : {"NONE", "START", "ADMIN"}
        NONE (default) stores the mean over the frame, as Siemens and GE quantitative SPECT do. START and
        ADMIN are written with DecayCorrection / DecayFactor / FrameReferenceTime as for PT (attributes
        of the PET modules that NM readers such as MIM honour).
    equipment : Equipment
        General Equipment written into the file: LuDosimetry (our reconstructions) by default; the
        phantom's vendor-like files pass the camera's.

    Returns
    -------
    ReferencedSeries
        ``sop_instance_uids`` repeats the one file's UID for every z slice (frames are referenced by
        number inside it).

    Notes
    -----
    Values are uint16 with one slope for the volume, given both as a Real World Value Mapping in Bq/ml
    (UCUM) and as RescaleSlope/RescaleIntercept with Units BQML; negative values are clipped to 0.
    Frames follow the Slice Vector (FrameIncrementPointer (0054,0080)); the first slice's position and
    the orientation are in the Detector Information Sequence (PS3.3 C.8.4.11).
    """
    path = Path(path)
    output_folder(path.parent)
    geo = SliceGeometry(image_bqml, path)
    if float(np.dot(np.cross(geo.row, geo.col), geo.normal)) < 0:
        raise OutputError("the slice axis points against row x column; an NM reconstruction cannot store that "
                          "(flip the image along z first)", path)
    check_timing(acquisition_datetime, injection_datetime, duration_s, injected_activity_bq, path)
    check_timezone(timezone_offset, path)
    nuclide = nuclide or radionuclide("Lu-177")
    factor, decay_factor, frame_ref_ms = decay_terms(decay_correction, nuclide, acquisition_datetime,
                                                     injection_datetime, duration_s, path)
    values = np.clip(image_array(image_bqml, path) * factor, 0.0, None)
    n = geo.size[2]
    series.modality = "NM"
    series.series_datetime = series_datetime(series, acquisition_datetime)
    if not series.frame_of_reference_uid:
        series.frame_of_reference_uid = derived_uid(f"{series.series_instance_uid}/for")
    uid = slice_uid(series, 0)
    ds = new_dataset(NuclearMedicineImageStorage, patient, study, series, sop_instance_uid=uid, instance_number=1,
                     content_datetime=acquisition_datetime)
    ds.BodyPartExamined = "ABDOMEN"  # General Series: with it given, Laterality (2C) is absent
    equipment_module(ds, equipment)
    if timezone_offset is not None:
        ds.TimezoneOffsetFromUTC = str(timezone_offset)
    acquisition_times(ds, acquisition_datetime)
    patient_orientation(ds)
    # NM Image module (PS3.3 C.8.4.8)
    ds.ImageType = ["ORIGINAL", "PRIMARY", "RECON TOMO", "EMISSION"]
    ds.ImageID = series.description[:16] if series.description else "SPECT"
    ds.CountsAccumulated = 0  # unknown for a reconstruction; type 2
    ds.CorrectedImage = ["DECY", "ATTN", "SCAT", "UNIF", "COR"] if str(decay_correction).upper() != "NONE" \
        else ["ATTN", "SCAT", "UNIF", "COR"]
    # Multi-frame + NM Multi-frame modules (C.7.6.6, C.8.4.9)
    ds.NumberOfFrames = n
    ds.FrameIncrementPointer = 0x00540080  # SliceVector
    ds.SliceVector = list(range(1, n + 1))
    ds.NumberOfSlices = n
    ds.NumberOfEnergyWindows = 1
    ds.NumberOfDetectors = 1
    ds.NumberOfRotations = 1
    # NM Isotope module (C.8.4.10)
    _energy_window(ds)
    ds.RadiopharmaceuticalInformationSequence = DicomSequence([
        radiopharmaceutical_item(nuclide, radiopharmaceutical, float(injected_activity_bq), injection_datetime,
                                 dose_unit_mbq=True)])
    recon_tomo_modules(ds, geo, duration_s)
    # NM Reconstruction module (C.8.4.13)
    ds.SpacingBetweenSlices = format_ds(geo.spacing[2])
    ds.SliceThickness = format_ds(geo.spacing[2])
    ds.ConvolutionKernel = "xSPECT Quant"
    ds.PixelSpacing = geo.pixel_spacing()
    # Real-world values (General Image module RWVM, C.7.6.1) and the PET-style attributes readers use.
    stored, slope, _signed = scale_to_uint16(values)
    rwvm = Dataset()
    rwvm.RealWorldValueFirstValueMapped = 0
    rwvm.RealWorldValueLastValueMapped = 65535
    rwvm.RealWorldValueIntercept = 0.0
    rwvm.RealWorldValueSlope = float(slope)
    rwvm.LUTExplanation = "Bq/ml"
    rwvm.LUTLabel = "BQML"
    rwvm.MeasurementUnitsCodeSequence = DicomSequence([code_item(_BQML_CODE)])
    ds.RealWorldValueMappingSequence = DicomSequence([rwvm])
    ds.RescaleIntercept = "0"
    ds.RescaleSlope = format_ds(slope)
    ds.Units = "BQML"
    ds.DecayCorrection = str(decay_correction).upper()
    ds.FrameReferenceTime = format_ds(frame_ref_ms)
    if decay_factor is not None:
        ds.DecayFactor = format_ds(decay_factor)
    pixel_module(ds, stored, signed=False)
    write_dataset(ds, path)
    return ReferencedSeries(study.study_instance_uid, series.series_instance_uid, series.frame_of_reference_uid,
                            NuclearMedicineImageStorage, [uid] * n)
