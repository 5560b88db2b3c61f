"""Image series written one file per slice, as the published collection holds them: CT slices and PT
slices (a MIM-style export of a reconstructed SPECT).

They turn a ``SimpleITK.Image`` in DICOM patient coordinates (LPS, mm) into files that other programs
(dicom3tools ``dciodvfy``, dcmtk, GDCM/SimpleITK, pydicom, MIM, Slicer) read back with the same geometry
and values. Each file carries the identity modules of :func:`~LuDosimetryLib.io.dicom_common.new_dataset`
plus the modules its IOD needs (DICOM PS3.3 A.3 CT Image, A.21 PET Image) and the equipment of the
collection's camera (:mod:`.vendor`). The stored SPECT values follow the conventions of
:mod:`LuDosimetryLib.io.nm_writer` (``decay_correction``).
"""
from __future__ import annotations

import os
from datetime import datetime
from typing import Optional

import numpy as np
import SimpleITK as sitk
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import CTImageStorage, NuclearMedicineImageStorage, PositronEmissionTomographyImageStorage

from ...errors import OutputError
from ...io.dicom_common import (PatientInfo, SeriesInfo, StudyInfo, acquisition_times, derived_uid,
                                equipment_module, format_ds, new_dataset, write_dataset)
from ...io.nm_writer import (SliceGeometry, check_timezone, check_timing, decay_terms, image_array, output_folder,
                             patient_orientation, pixel_module, radiopharmaceutical_item, scale_to_uint16,
                             series_datetime, slice_uid)
from ...io.rtstruct import ReferencedSeries
from ...radionuclides import Radionuclide, radionuclide
from .vendor import SIEMENS_CT, SIEMENS_NM


def _image_plane(ds: Dataset, geo: SliceGeometry, k: int) -> None:
    ds.ImageOrientationPatient = geo.orientation()
    ds.ImagePositionPatient = geo.position(k)
    ds.PixelSpacing = geo.pixel_spacing()
    ds.SliceThickness = format_ds(geo.spacing[2])
    ds.SpacingBetweenSlices = format_ds(geo.spacing[2])
    ds.SliceLocation = geo.slice_location(k)


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
    folder = output_folder(folder)
    geo = SliceGeometry(image_hu, folder)
    hu = image_array(image_hu, folder)
    stored = np.clip(np.rint(hu) + 1024.0, -32768, 32767)
    acq = acquisition_datetime or series_datetime(series, study.study_datetime)
    series.series_datetime = series_datetime(series, acq)
    if not series.frame_of_reference_uid:
        series.frame_of_reference_uid = derived_uid(f"{series.series_instance_uid}/for")
    uids = []
    for k in range(geo.size[2]):
        uid = slice_uid(series, k)
        ds = new_dataset(CTImageStorage, patient, study, series, sop_instance_uid=uid, instance_number=k + 1,
                         content_datetime=acq)
        ds.BodyPartExamined = "ABDOMEN"  # General Series: with it given, Laterality (2C) is absent
        equipment_module(ds, SIEMENS_CT)
        ds.PatientPosition = "FFS"
        acquisition_times(ds, acq)
        ds.AcquisitionNumber = 1
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        _image_plane(ds, geo, k)
        ds.KVP = format_ds(kvp)
        ds.RescaleIntercept = "-1024"
        ds.RescaleSlope = "1"
        ds.RescaleType = "HU"
        ds.WindowCenter = "40"
        ds.WindowWidth = "400"
        ds.ConvolutionKernel = "B08s"
        pixel_module(ds, stored[k], signed=True)
        write_dataset(ds, folder / f"CT_{k + 1:04d}.dcm")
        uids.append(uid)
    return ReferencedSeries(study.study_instance_uid, series.series_instance_uid, series.frame_of_reference_uid,
                            CTImageStorage, uids)


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
    folder = output_folder(folder)
    geo = SliceGeometry(image_bqml, folder)
    check_timing(acquisition_datetime, injection_datetime, duration_s, injected_activity_bq, folder)
    check_timezone(timezone_offset, folder)
    nuclide = nuclide or radionuclide("Lu-177")
    factor, decay_factor, frame_ref_ms = decay_terms(decay_correction, nuclide, acquisition_datetime,
                                                     injection_datetime, duration_s, folder)
    n = geo.size[2]
    if stray_nm_slice_index is not None and not (0 <= int(stray_nm_slice_index) < n):
        raise OutputError(f"stray_nm_slice_index {stray_nm_slice_index} is outside 0..{n - 1}", folder)
    values = image_array(image_bqml, folder) * factor
    series.modality = "PT"
    # PET Series module: Series Date/Time are type 1 (the acquisition start here).
    series.series_datetime = series_datetime(series, acquisition_datetime)
    if not series.frame_of_reference_uid:
        series.frame_of_reference_uid = derived_uid(f"{series.series_instance_uid}/for")
    pharma = radiopharmaceutical_item(nuclide, radiopharmaceutical, float(injected_activity_bq),
                                      injection_datetime, dose_unit_mbq=False)
    uids = []
    for k in range(n):
        uid = slice_uid(series, k)
        stray = stray_nm_slice_index is not None and k == int(stray_nm_slice_index)
        sop_class = NuclearMedicineImageStorage if stray else PositronEmissionTomographyImageStorage
        ds = new_dataset(sop_class, patient, study, series, sop_instance_uid=uid, instance_number=k + 1,
                         content_datetime=acquisition_datetime)
        if stray:
            ds.Modality = "NM"
        ds.BodyPartExamined = "ABDOMEN"
        equipment_module(ds, SIEMENS_NM)
        if timezone_offset is not None:
            ds.TimezoneOffsetFromUTC = str(timezone_offset)
        acquisition_times(ds, acquisition_datetime)
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
        patient_orientation(ds)
        # PET Image module (PS3.3 C.8.9.4)
        ds.ImageType = ["ORIGINAL", "PRIMARY"]
        ds.FrameReferenceTime = format_ds(frame_ref_ms)
        ds.ImageIndex = k + 1
        ds.ActualFrameDuration = int(round(float(duration_s) * 1000.0))
        if decay_factor is not None:
            ds.DecayFactor = format_ds(decay_factor)
        _image_plane(ds, geo, k)
        stored, slope, signed = scale_to_uint16(values[k])
        ds.RescaleIntercept = "0"
        ds.RescaleSlope = format_ds(slope)
        pixel_module(ds, stored, signed)
        write_dataset(ds, folder / f"PT_{k + 1:04d}.dcm")
        uids.append(uid)
    return ReferencedSeries(study.study_instance_uid, series.series_instance_uid, series.frame_of_reference_uid,
                            PositronEmissionTomographyImageStorage, uids)
