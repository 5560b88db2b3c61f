"""Write a time-integrated activity map (Bq·s/mL) as one NM multi-frame file, like a MIM TIA export.

The file is an NM Image (RECON TOMO, DERIVED) written by
:func:`~LuDosimetryLib.io.nm_writer.write_nm_multiframe` (with the camera's equipment) and then
relabelled: its Real World Value Mapping states the UCUM unit ``Bq.s/mL``, the series
description carries "TIA", and ImageType says DERIVED. The Radiopharmaceutical Information
(Lu-177, administered activity and time) is kept: it is the data a reader needs to interpret the map.
"""
from __future__ import annotations

import os
from datetime import datetime
from pathlib import Path

import pydicom
import SimpleITK as sitk

from ...io.dicom_common import PatientInfo, SeriesInfo, StudyInfo, write_dataset
from ...io.nm_writer import write_nm_multiframe
from ...io.rtstruct import ReferencedSeries
from .vendor import SIEMENS_NM

#: UCUM: becquerel second per millilitre.
TIA_UNITS_CODE = ("Bq.s/mL", "UCUM", "Becquerel second per milliliter")


def write_tia_map(image_bq_s_per_ml: sitk.Image, path: os.PathLike, patient: PatientInfo, study: StudyInfo,
                  series: SeriesInfo, *, reference_acquisition_datetime: datetime, injected_activity_bq: float,
                  injection_datetime: datetime) -> ReferencedSeries:
    """Write the TIA map (Bq·s/mL, ≥ 0) as an NM multi-frame file; the description must contain "TIA".

    Parameters
    ----------
    image_bq_s_per_ml : SimpleITK.Image
        TIA per mL on the reference SPECT grid (LPS, mm).
    path : path-like
    patient, study, series : identity; ``series.description`` should carry "TIA" and the C/S/D code of
        the reference scan.
    reference_acquisition_datetime : datetime
        Acquisition start of the reference time point (the map's geometry and registration target).
    injected_activity_bq, injection_datetime
        Administration.
    """
    path = Path(path)
    ref = write_nm_multiframe(image_bq_s_per_ml, path, patient, study, series,
                              acquisition_datetime=reference_acquisition_datetime, duration_s=1.0,
                              injected_activity_bq=injected_activity_bq, injection_datetime=injection_datetime,
                              decay_correction="NONE", equipment=SIEMENS_NM)
    ds = pydicom.dcmread(str(path))
    ds.ImageType = ["DERIVED", "PRIMARY", "RECON TOMO", "EMISSION"]  # NM: value 2 is enumerated PRIMARY
    rwvm = ds.RealWorldValueMappingSequence[0]
    rwvm.LUTExplanation = "Bq*s/ml time-integrated activity"
    rwvm.LUTLabel = "TIA"
    item = rwvm.MeasurementUnitsCodeSequence[0]
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = TIA_UNITS_CODE
    # Units (a PET attribute) has no defined term for Bq·s/mL; the RWVM above carries the unit.
    for kw in ("Units", "DecayCorrection", "FrameReferenceTime", "DecayFactor"):
        if kw in ds:
            delattr(ds, kw)
    ds.CorrectedImage = ["ATTN", "SCAT", "UNIF", "COR"]
    ds.ImageComments = ("Time-integrated activity (Bq*s/ml) from injection to infinity; voxel-level "
                        "exponential fits of the 4 time points registered to scan 1")
    ds.DerivationDescription = "voxel-level mono-exponential fit of time points 2-4, trapezoid before"
    write_dataset(ds, path)
    return ref
