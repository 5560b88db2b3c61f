"""PET Image writer for the pre-therapy Ga-68 DOTATATE PET: SUV-ready PT slices.

Built on :func:`~.slice_writer.write_pt_slices` (PET Image Storage, Units BQML,
per-slice slopes, RadiopharmaceuticalInformationSequence with dose in Bq, start time and half-life,
PatientWeight from ``PatientInfo.weight_kg``), with the equipment and reconstruction of a PET/CT
scanner and DecayCorrection START: the values are Bq/mL at the acquisition start, so that
SUV = value / (dose decayed to the scan start / weight), the standard body-weight SUV.
"""
from __future__ import annotations

import os
from datetime import datetime
from pathlib import Path

import pydicom
import SimpleITK as sitk

from ...errors import OutputError
from ...io.dicom_common import PatientInfo, SeriesInfo, StudyInfo, write_dataset
from ...io.rtstruct import ReferencedSeries
from ...radionuclides import radionuclide
from .slice_writer import write_pt_slices

PET_MANUFACTURER = "SIEMENS"
PET_MODEL = "Biograph mCT"
#: SNOMED CT codes: ^68^Gallium (CID 4020) and Dotatate Ga^68^ (CID 4021).
GA68_CODE = ("35337001", "SCT", "^68^Gallium")
GA68_DOTATATE_CODE = ("724025002", "SCT", "Dotatate Ga^68^")


def write_pet_series(image_bqml: sitk.Image, folder: os.PathLike, patient: PatientInfo, study: StudyInfo,
                     series: SeriesInfo, *, acquisition_datetime: datetime, duration_s: float,
                     injected_activity_bq: float, injection_datetime: datetime,
                     radiopharmaceutical: str = "Ga-68 DOTATATE") -> ReferencedSeries:
    """Write a Ga-68 PET (Bq/mL at the acquisition start) as PT slices (DecayCorrection START).

    ``patient.weight_kg`` must be set (SUV needs PatientWeight). ``radiopharmaceutical`` is free text
    (the coded Radiopharmaceutical Code Sequence says Dotatate Ga^68^).
    """
    folder = Path(folder)
    if patient.weight_kg is None:
        raise OutputError("a PET for SUV needs the patient weight (PatientInfo.weight_kg)", folder)
    ref = write_pt_slices(image_bqml, folder, patient, study, series, acquisition_datetime=acquisition_datetime,
                          duration_s=duration_s, injected_activity_bq=injected_activity_bq,
                          injection_datetime=injection_datetime, decay_correction="START",
                          nuclide=radionuclide("Ga-68"), radiopharmaceutical=radiopharmaceutical)
    for path in sorted(folder.glob("PT_*.dcm")):
        ds = pydicom.dcmread(str(path))
        ds.Manufacturer = PET_MANUFACTURER
        ds.ManufacturerModelName = PET_MODEL
        ds.ReconstructionMethod = "OSEM 3i21s TOF PSF"
        ds.ScatterCorrectionMethod = "Model-based"
        ds.AttenuationCorrectionMethod = "CT-based"
        ds.CollimatorType = "NONE"
        ds.CorrectedImage = ["DECY", "ATTN", "SCAT", "NORM", "DTIM", "RAN"]
        item = ds.RadiopharmaceuticalInformationSequence[0]
        c = item.RadionuclideCodeSequence[0] if item.get("RadionuclideCodeSequence") else None
        if c is None:
            c = pydicom.Dataset()
            item.RadionuclideCodeSequence = pydicom.Sequence([c])
        c.CodeValue, c.CodingSchemeDesignator, c.CodeMeaning = GA68_CODE
        p = pydicom.Dataset()
        p.CodeValue, p.CodingSchemeDesignator, p.CodeMeaning = GA68_DOTATATE_CODE
        item.RadiopharmaceuticalCodeSequence = pydicom.Sequence([p])
        write_dataset(ds, path)
    return ref
