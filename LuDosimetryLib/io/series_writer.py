"""Writers for DICOM image series: CT slices, PT slices (MIM-style SPECT export) and NM multi-frame.

They turn a ``SimpleITK.Image`` in DICOM patient coordinates (LPS, mm) into files that other programs
(dicom3tools ``dciodvfy``, dcmtk, GDCM/SimpleITK, pydicom, MIM, Slicer) read back with the same geometry
and values. Each file carries the identity modules of :func:`~LuDosimetryLib.io.dicom_common.new_dataset`
plus the modules its IOD needs (DICOM PS3.3 A.3 CT Image, A.21 PET Image, A.5 NM Image).

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
from pydicom.uid import CTImageStorage, NuclearMedicineImageStorage, PositronEmissionTomographyImageStorage

from ..errors import OutputError
from ..radionuclides import Radionuclide, radionuclide
from .dicom_common import (PatientInfo, SeriesInfo, StudyInfo, dicom_date, dicom_datetime, dicom_time, format_ds,
                           new_dataset, new_uid, write_dataset)
from .rtstruct import ReferencedSeries

#: Equipment written into the SPECT files (the collection was acquired on a Siemens Intevo).
NM_MANUFACTURER = "SIEMENS NM"
CT_MANUFACTURER = "SIEMENS"
MODEL_NAME = "Symbia Intevo Bold"

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

class _Geometry:
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
        return [_ds(v) for v in list(self.row) + list(self.col)]

    def position(self, k: int) -> List[str]:
        return [_ds(v) for v in self.positions[k]]

    def slice_location(self, k: int) -> str:
        return _ds(float(np.dot(self.positions[k], self.normal)))

    def pixel_spacing(self) -> List[str]:
        # DICOM Pixel Spacing is (row spacing = between rows, column spacing) = (y, x).
        return [_ds(self.spacing[1]), _ds(self.spacing[0])]


_ds = format_ds  # kept under its old name for the writers that import it


def _code(code: Tuple[str, str, str]) -> Dataset:
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = code
    return item


def _array(image: sitk.Image, where: os.PathLike) -> np.ndarray:
    arr = sitk.GetArrayFromImage(image).astype(np.float64)
    if not np.all(np.isfinite(arr)):
        raise OutputError("the image holds NaN or infinite values", where)
    return arr


# --------------------------------------------------------------------------------------------- common modules

def _image_plane(ds: Dataset, geo: _Geometry, k: int) -> None:
    ds.ImageOrientationPatient = geo.orientation()
    ds.ImagePositionPatient = geo.position(k)
    ds.PixelSpacing = geo.pixel_spacing()
    ds.SliceThickness = _ds(geo.spacing[2])
    ds.SpacingBetweenSlices = _ds(geo.spacing[2])
    ds.SliceLocation = geo.slice_location(k)


def _pixel_module(ds: Dataset, stored: np.ndarray, signed: bool) -> None:
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = int(stored.shape[-2]), int(stored.shape[-1])
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1 if signed else 0
    dtype = np.dtype("<i2") if signed else np.dtype("<u2")
    ds.PixelData = np.ascontiguousarray(stored.astype(dtype)).tobytes()


def _equipment(ds: Dataset, manufacturer: str) -> None:
    # General Series: with the body part given, Laterality (2C) is absent for the unpaired abdomen.
    ds.BodyPartExamined = "ABDOMEN"
    ds.Manufacturer = manufacturer
    ds.ManufacturerModelName = MODEL_NAME
    ds.InstitutionName = ""
    ds.StationName = "LUDOSIM"


def _acquisition_times(ds: Dataset, acquisition_datetime: datetime) -> None:
    ds.AcquisitionDate = dicom_date(acquisition_datetime)
    ds.AcquisitionTime = dicom_time(acquisition_datetime)
    ds.AcquisitionDateTime = dicom_datetime(acquisition_datetime)


def _series_datetime(series: SeriesInfo, fallback: datetime) -> datetime:
    return series.series_datetime if series.series_datetime is not None else fallback


def _check_folder(folder: os.PathLike) -> Path:
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise OutputError("exists and is not a folder", folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create the folder ({exc.strerror})", folder) from exc
    return folder


def derived_uid(text: str) -> str:
    """A deterministic UID for ``text`` (same as ``dicom_common.new_uid(text)``)."""
    return new_uid(text)


def _sop_uid(series: SeriesInfo, k: int) -> str:
    """Deterministic SOP Instance UID of slice ``k`` of ``series``."""
    return derived_uid(f"{series.series_instance_uid}/{k}")


# --------------------------------------------------------------------------------------------- CT

def write_ct_series(image_hu: sitk.Image, folder: os.PathLike, patient: PatientInfo, study: StudyInfo,
                    series: SeriesInfo, *, acquisition_datetime: Optional[datetime] = None,
                    kvp: float = 130.0) -> ReferencedSeries:
    """Write a CT volume as one CT Image Storage file per slice.

    Parameters
    ----------
    image_hu : SimpleITK.Image
        3D volume in Hounsfield units, LPS (mm).
    folder : path-like
        Output folder (created); files are ``CT_0001.dcm`` ... in slice order, each written atomically.
    patient, study, series : PatientInfo, StudyInfo, SeriesInfo
        ``series.modality`` should be ``"CT"``; ``series.frame_of_reference_uid`` is created when empty.
    acquisition_datetime : datetime, optional
        Defaults to the series (or study) date/time.
    kvp : float
        Peak tube voltage written in KVP (kV).

    Returns
    -------
    ReferencedSeries
        One SOP Instance UID per z slice, in the image's z order.

    Notes
    -----
    Pixel data are int16 with RescaleSlope 1 and RescaleIntercept −1024 (stored = HU + 1024, clipped to
    the int16 range).
    """
    folder = _check_folder(folder)
    geo = _Geometry(image_hu, folder)
    hu = _array(image_hu, folder)
    stored = np.clip(np.rint(hu) + 1024.0, -32768, 32767)
    acq = acquisition_datetime or _series_datetime(series, study.study_datetime)
    series.series_datetime = _series_datetime(series, acq)
    if not series.frame_of_reference_uid:
        series.frame_of_reference_uid = derived_uid(f"{series.series_instance_uid}/for")
    uids = []
    for k in range(geo.size[2]):
        uid = _sop_uid(series, k)
        ds = new_dataset(CTImageStorage, patient, study, series, sop_instance_uid=uid, instance_number=k + 1,
                         content_datetime=acq)
        _equipment(ds, CT_MANUFACTURER)
        ds.PatientPosition = "FFS"
        _acquisition_times(ds, acq)
        ds.AcquisitionNumber = 1
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        _image_plane(ds, geo, k)
        ds.KVP = _ds(kvp)
        ds.RescaleIntercept = "-1024"
        ds.RescaleSlope = "1"
        ds.RescaleType = "HU"
        ds.WindowCenter = "40"
        ds.WindowWidth = "400"
        ds.ConvolutionKernel = "B08s"
        _pixel_module(ds, stored[k], signed=True)
        write_dataset(ds, folder / f"CT_{k + 1:04d}.dcm")
        uids.append(uid)
    return ReferencedSeries(study.study_instance_uid, series.series_instance_uid, series.frame_of_reference_uid,
                            CTImageStorage, uids)


# --------------------------------------------------------------------------------------------- SPECT timing

def _decay_terms(decay_correction: str, nuclide: Radionuclide, acquisition_datetime: datetime,
                 injection_datetime: datetime, duration_s: float, where) -> Tuple[float, Optional[float], float]:
    """(stored/physical-at-start factor, DecayFactor or None, FrameReferenceTime in ms)."""
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


def _check_timing(acquisition_datetime, injection_datetime, duration_s, injected_activity_bq, where) -> None:
    if not isinstance(acquisition_datetime, datetime) or not isinstance(injection_datetime, datetime):
        raise OutputError("acquisition_datetime and injection_datetime must be datetime objects", where)
    if acquisition_datetime < injection_datetime:
        raise OutputError(f"the acquisition ({acquisition_datetime.isoformat()}) precedes the injection "
                          f"({injection_datetime.isoformat()})", where)
    if not (float(duration_s) > 0 and math.isfinite(float(duration_s))):
        raise OutputError(f"duration_s must be positive, got {duration_s!r}", where)
    if not (float(injected_activity_bq) > 0 and math.isfinite(float(injected_activity_bq))):
        raise OutputError(f"injected_activity_bq must be positive, got {injected_activity_bq!r}", where)


def _check_timezone(timezone_offset: Optional[str], where) -> None:
    if timezone_offset is None:
        return
    s = str(timezone_offset)
    if len(s) != 5 or s[0] not in "+-" or not s[1:].isdigit():
        raise OutputError(f"timezone_offset must look like '+0100', got {timezone_offset!r}", where)


def _radiopharmaceutical_item(nuclide: Radionuclide, radiopharmaceutical: str, injected_activity_bq: float,
                              injection_datetime: datetime, dose_unit_mbq: bool) -> Dataset:
    item = Dataset()
    item.Radiopharmaceutical = radiopharmaceutical
    item.RadiopharmaceuticalRoute = "Intravenous"
    item.RadiopharmaceuticalStartTime = dicom_time(injection_datetime)
    item.RadiopharmaceuticalStartDateTime = dicom_datetime(injection_datetime)
    # PET Isotope module: Bq (PS3.3 C.8.9.2); NM Isotope module: MBq (PS3.3 C.8.4.10).
    dose = injected_activity_bq / 1e6 if dose_unit_mbq else injected_activity_bq
    item.RadionuclideTotalDose = _ds(dose)
    item.RadionuclideHalfLife = _ds(nuclide.half_life_s)
    code = _RADIONUCLIDE_CODES.get(nuclide.name)
    item.RadionuclideCodeSequence = DicomSequence([_code(code)] if code else [])
    pharma = _RADIOPHARMACEUTICAL_CODES.get(radiopharmaceutical.strip().lower())
    if pharma:
        item.RadiopharmaceuticalCodeSequence = DicomSequence([_code(pharma)])
    return item


def _patient_orientation(ds: Dataset) -> None:
    recumbent = _code(_RECUMBENT)
    recumbent.PatientOrientationModifierCodeSequence = DicomSequence([_code(_SUPINE)])
    ds.PatientOrientationCodeSequence = DicomSequence([recumbent])
    ds.PatientGantryRelationshipCodeSequence = DicomSequence([_code(_FEET_FIRST)])


def _energy_window(ds: Dataset) -> None:
    window = Dataset()
    rng = Dataset()
    rng.EnergyWindowLowerLimit = _ds(_PHOTOPEAK_WINDOW_KEV[0])
    rng.EnergyWindowUpperLimit = _ds(_PHOTOPEAK_WINDOW_KEV[1])
    window.EnergyWindowRangeSequence = DicomSequence([rng])
    window.EnergyWindowName = "Lu177_208keV"
    ds.EnergyWindowInformationSequence = DicomSequence([window])


def _scale_to_uint16(values: np.ndarray) -> Tuple[np.ndarray, float, bool]:
    """(stored, slope, signed): uint16 over [0, max] or, with negative values, int16 over [-m, m]."""
    vmin, vmax = float(values.min()) if values.size else 0.0, float(values.max()) if values.size else 0.0
    if vmin >= 0.0:
        slope = vmax / 65535.0 if vmax > 0 else 1.0
        return np.clip(np.rint(values / slope), 0, 65535), slope, False
    m = max(abs(vmin), abs(vmax))
    slope = m / 32767.0
    return np.clip(np.rint(values / slope), -32767, 32767), slope, True


# --------------------------------------------------------------------------------------------- PT slices

def write_pt_slices(image_bqml: sitk.Image, folder: os.PathLike, patient: PatientInfo, study: StudyInfo,
                    series: SeriesInfo, *, acquisition_datetime: datetime, duration_s: float,
                    injected_activity_bq: float, injection_datetime: datetime, decay_correction: str = "ADMIN",
                    nuclide: Optional[Radionuclide] = None, timezone_offset: Optional[str] = None,
                    stray_nm_slice_index: Optional[int] = None,
                    radiopharmaceutical: str = "Lu-177 DOTATATE") -> ReferencedSeries:
    """Write a reconstructed SPECT as one PET Image Storage file per slice, like a MIM export.

    Parameters
    ----------
    image_bqml : SimpleITK.Image
        Activity concentration at the acquisition start (Bq/mL), LPS (mm).
    folder : path-like
        Output folder (created); files ``PT_0001.dcm`` ... in slice order.
    patient, study, series : PatientInfo, StudyInfo, SeriesInfo
        ``series.modality`` is written as ``"PT"``; the series description should carry the
        ``C<cycle>S<scan>D<day>`` code. ``series.frame_of_reference_uid`` is created when empty.
    acquisition_datetime : datetime
        Acquisition start (scanner local time).
    duration_s : float
        Acquisition duration (s), written as ActualFrameDuration (ms).
    injected_activity_bq : float
        Administered activity (Bq), written as RadionuclideTotalDose.
    injection_datetime : datetime
        Administration time (RadiopharmaceuticalStartDateTime).
    decay_correction : {"ADMIN", "START", "NONE"}
        What the stored values are decay-corrected to (see the module notes).
    nuclide : Radionuclide, optional
        Defaults to Lu-177.
    timezone_offset : str, optional
        e.g. ``"-0500"``; TimezoneOffsetFromUTC is written only when given.
    stray_nm_slice_index : int, optional
        Write this one slice with the NM Image Storage SOP class and modality NM (same content), as in
        the published collection where one slice of a PT export was labelled NM.
    radiopharmaceutical : str

    Returns
    -------
    ReferencedSeries
        One SOP Instance UID per z slice; ``sop_class_uid`` is PET Image Storage.

    Notes
    -----
    Each slice has its own RescaleSlope (RescaleIntercept 0): uint16 scaled to the slice maximum, or
    int16 symmetric when the slice has negative values. Units are BQML.
    """
    folder = _check_folder(folder)
    geo = _Geometry(image_bqml, folder)
    _check_timing(acquisition_datetime, injection_datetime, duration_s, injected_activity_bq, folder)
    _check_timezone(timezone_offset, folder)
    nuclide = nuclide or radionuclide("Lu-177")
    factor, decay_factor, frame_ref_ms = _decay_terms(decay_correction, nuclide, acquisition_datetime,
                                                      injection_datetime, duration_s, folder)
    n = geo.size[2]
    if stray_nm_slice_index is not None and not (0 <= int(stray_nm_slice_index) < n):
        raise OutputError(f"stray_nm_slice_index {stray_nm_slice_index} is outside 0..{n - 1}", folder)
    values = _array(image_bqml, folder) * factor
    series.modality = "PT"
    # PET Series module: Series Date/Time are type 1 (the acquisition start here).
    series.series_datetime = _series_datetime(series, acquisition_datetime)
    if not series.frame_of_reference_uid:
        series.frame_of_reference_uid = derived_uid(f"{series.series_instance_uid}/for")
    pharma = _radiopharmaceutical_item(nuclide, radiopharmaceutical, float(injected_activity_bq),
                                       injection_datetime, dose_unit_mbq=False)
    uids = []
    for k in range(n):
        uid = _sop_uid(series, k)
        stray = stray_nm_slice_index is not None and k == int(stray_nm_slice_index)
        sop_class = NuclearMedicineImageStorage if stray else PositronEmissionTomographyImageStorage
        ds = new_dataset(sop_class, patient, study, series, sop_instance_uid=uid, instance_number=k + 1,
                         content_datetime=acquisition_datetime)
        if stray:
            ds.Modality = "NM"
        _equipment(ds, NM_MANUFACTURER)
        if timezone_offset is not None:
            ds.TimezoneOffsetFromUTC = str(timezone_offset)
        _acquisition_times(ds, acquisition_datetime)
        # PET Series module (PS3.3 C.8.9.1)
        ds.Units = "BQML"
        ds.CountsSource = "EMISSION"
        ds.SeriesType = ["STATIC", "IMAGE"]
        ds.NumberOfSlices = n
        ds.CorrectedImage = ["DECY", "ATTN", "SCAT", "NORM"] if str(decay_correction).upper() != "NONE" \
            else ["ATTN", "SCAT", "NORM"]
        ds.DecayCorrection = str(decay_correction).upper()
        ds.AttenuationCorrectionMethod = "CT-based mu-map"
        ds.ScatterCorrectionMethod = "Monte Carlo"
        ds.ReconstructionMethod = "xSPECT Quant OSCGM"
        ds.CollimatorType = ""  # type 2; the PET defined terms (NONE, RING) do not describe a gamma camera
        # PET Isotope module (PS3.3 C.8.9.2)
        ds.RadiopharmaceuticalInformationSequence = DicomSequence([pharma])
        _patient_orientation(ds)
        # PET Image module (PS3.3 C.8.9.4)
        ds.ImageType = ["ORIGINAL", "PRIMARY"]
        ds.FrameReferenceTime = _ds(frame_ref_ms)
        ds.ImageIndex = k + 1
        ds.ActualFrameDuration = int(round(float(duration_s) * 1000.0))
        if decay_factor is not None:
            ds.DecayFactor = _ds(decay_factor)
        _image_plane(ds, geo, k)
        stored, slope, signed = _scale_to_uint16(values[k])
        ds.RescaleIntercept = "0"
        ds.RescaleSlope = _ds(slope)
        _pixel_module(ds, stored, signed)
        write_dataset(ds, folder / f"PT_{k + 1:04d}.dcm")
        uids.append(uid)
    return ReferencedSeries(study.study_instance_uid, series.series_instance_uid, series.frame_of_reference_uid,
                            PositronEmissionTomographyImageStorage, uids)


# --------------------------------------------------------------------------------------------- NM multi-frame

def recon_tomo_modules(ds: Dataset, geo: "_Geometry", duration_s: float) -> None:
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
                        radiopharmaceutical: str = "Lu-177 DOTATATE") -> ReferencedSeries:
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
        As for :func:`write_pt_slices`. Note that the NM Isotope module states RadionuclideTotalDose in MBq.
    decay_correction : {"NONE", "START", "ADMIN"}
        NONE (default) stores the mean over the frame, as Siemens and GE quantitative SPECT do. START and
        ADMIN are written with DecayCorrection / DecayFactor / FrameReferenceTime as for PT (attributes
        of the PET modules that NM readers such as MIM honour).

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
    _check_folder(path.parent)
    geo = _Geometry(image_bqml, path)
    if float(np.dot(np.cross(geo.row, geo.col), geo.normal)) < 0:
        raise OutputError("the slice axis points against row x column; an NM reconstruction cannot store that "
                          "(flip the image along z first)", path)
    _check_timing(acquisition_datetime, injection_datetime, duration_s, injected_activity_bq, path)
    _check_timezone(timezone_offset, path)
    nuclide = nuclide or radionuclide("Lu-177")
    factor, decay_factor, frame_ref_ms = _decay_terms(decay_correction, nuclide, acquisition_datetime,
                                                      injection_datetime, duration_s, path)
    values = np.clip(_array(image_bqml, path) * factor, 0.0, None)
    n = geo.size[2]
    series.modality = "NM"
    series.series_datetime = _series_datetime(series, acquisition_datetime)
    if not series.frame_of_reference_uid:
        series.frame_of_reference_uid = derived_uid(f"{series.series_instance_uid}/for")
    uid = _sop_uid(series, 0)
    ds = new_dataset(NuclearMedicineImageStorage, patient, study, series, sop_instance_uid=uid, instance_number=1,
                     content_datetime=acquisition_datetime)
    _equipment(ds, NM_MANUFACTURER)
    if timezone_offset is not None:
        ds.TimezoneOffsetFromUTC = str(timezone_offset)
    _acquisition_times(ds, acquisition_datetime)
    _patient_orientation(ds)
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
        _radiopharmaceutical_item(nuclide, radiopharmaceutical, float(injected_activity_bq), injection_datetime,
                                  dose_unit_mbq=True)])
    recon_tomo_modules(ds, geo, duration_s)
    # NM Reconstruction module (C.8.4.13)
    ds.SpacingBetweenSlices = _ds(geo.spacing[2])
    ds.SliceThickness = _ds(geo.spacing[2])
    ds.ConvolutionKernel = "xSPECT Quant"
    ds.PixelSpacing = geo.pixel_spacing()
    # Real-world values (General Image module RWVM, C.7.6.1) and the PET-style attributes readers use.
    stored, slope, _signed = _scale_to_uint16(values)
    rwvm = Dataset()
    rwvm.RealWorldValueFirstValueMapped = 0
    rwvm.RealWorldValueLastValueMapped = 65535
    rwvm.RealWorldValueIntercept = 0.0
    rwvm.RealWorldValueSlope = float(slope)
    rwvm.LUTExplanation = "Bq/ml"
    rwvm.LUTLabel = "BQML"
    rwvm.MeasurementUnitsCodeSequence = DicomSequence([_code(_BQML_CODE)])
    ds.RealWorldValueMappingSequence = DicomSequence([rwvm])
    ds.RescaleIntercept = "0"
    ds.RescaleSlope = _ds(slope)
    ds.Units = "BQML"
    ds.DecayCorrection = str(decay_correction).upper()
    ds.FrameReferenceTime = _ds(frame_ref_ms)
    if decay_factor is not None:
        ds.DecayFactor = _ds(decay_factor)
    _pixel_module(ds, stored, signed=False)
    write_dataset(ds, path)
    return ReferencedSeries(study.study_instance_uid, series.series_instance_uid, series.frame_of_reference_uid,
                            NuclearMedicineImageStorage, [uid] * n)
