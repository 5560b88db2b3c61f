"""NM whole-body planar image writer: one view (anterior or posterior) in one energy window per file.

NM Image Storage with ImageType ORIGINAL\\PRIMARY\\WHOLE BODY\\EMISSION (PS3.3 A.5, C.8.4.8), one frame,
FrameIncrementPointer → (EnergyWindowVector, DetectorVector), the energy window with its range
(C.8.4.10), the detector with its View Code (CID 26: anterior / posterior projection) and
collimator, and Whole Body Technique / scan velocity and length (C.8.4.8, 1C for WHOLE BODY).
"""
from __future__ import annotations

import os
from datetime import datetime
from pathlib import Path
from typing import Optional, Tuple

import numpy as np
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import NuclearMedicineImageStorage

from ...errors import OutputError
from ...io.dicom_common import (PatientInfo, SeriesInfo, StudyInfo, acquisition_times, code_item, derived_uid,
                                format_ds, new_dataset, write_dataset)
from ...io.nm_writer import patient_orientation, radiopharmaceutical_item
from ...radionuclides import Radionuclide, radionuclide
from .vendor import MODEL_NAME, NM_MANUFACTURER

#: View codes (DICOM CID 26 "Nuclear Medicine Projections", SNOMED CT).
VIEW_CODES = {"ANTERIOR": ("399321004", "SCT", "Anterior projection"),
              "POSTERIOR": ("399001007", "SCT", "Posterior projection")}


def write_planar_view(counts: np.ndarray, path: os.PathLike, patient: PatientInfo, study: StudyInfo,
                      series: SeriesInfo, *, view: str, window_name: str, window_kev: Tuple[float, float],
                      pixel_spacing_mm: Tuple[float, float], acquisition_datetime: datetime, duration_s: float,
                      scan_length_mm: float, scan_velocity_mm_per_s: float, injected_activity_bq: float,
                      injection_datetime: datetime, nuclide: Optional[Radionuclide] = None,
                      image_position_mm: Tuple[float, float, float] = (0.0, 0.0, 0.0),
                      radiopharmaceutical: str = "Lu-177 DOTATATE", instance_number: int = 1) -> Path:
    """Write one whole-body planar view in one energy window (counts, uint16).

    Parameters
    ----------
    counts : numpy.ndarray
        (rows, columns) counts, rows from head to feet, columns from the image's left to right as the
        camera sees it.
    path : path-like
    patient, study, series : identity (``series.modality`` becomes NM).
    view : {"ANTERIOR", "POSTERIOR"}
    window_name : str
        e.g. ``"Lu177_208keV"``, ``"Lu177_SC_lower"``.
    window_kev : (lower, upper)
        Energy window (keV).
    pixel_spacing_mm : (row, column)
    acquisition_datetime, duration_s
        Scan start and total scan duration (s).
    scan_length_mm, scan_velocity_mm_per_s
        Whole-body sweep.
    injected_activity_bq, injection_datetime, nuclide, radiopharmaceutical
        Administration (NM Isotope module: MBq).
    """
    path = Path(path)
    view = str(view).upper()
    if view not in VIEW_CODES:
        raise OutputError(f"view must be ANTERIOR or POSTERIOR, not {view!r}", path)
    arr = np.asarray(counts)
    if arr.ndim != 2:
        raise OutputError(f"a planar image is 2D, got shape {arr.shape}", path)
    if np.any(arr < 0) or not np.all(np.isfinite(arr)):
        raise OutputError("counts must be finite and non-negative", path)
    stored = np.clip(np.rint(arr), 0, 65535).astype("<u2")
    nuclide = nuclide or radionuclide("Lu-177")
    series.modality = "NM"
    if series.series_datetime is None:
        series.series_datetime = acquisition_datetime
    uid = derived_uid(f"{series.series_instance_uid}/{view}/{window_name}")
    ds = new_dataset(NuclearMedicineImageStorage, patient, study, series, sop_instance_uid=uid,
                     instance_number=instance_number, content_datetime=acquisition_datetime)
    ds.BodyPartExamined = "WHOLEBODY"
    ds.Manufacturer = NM_MANUFACTURER
    ds.ManufacturerModelName = MODEL_NAME
    ds.InstitutionName = ""
    ds.StationName = "LUDOSIM"
    ds.DeviceSerialNumber = "LUDOSIM-TWIN"
    acquisition_times(ds, acquisition_datetime)
    patient_orientation(ds)
    ds.ImageType = ["ORIGINAL", "PRIMARY", "WHOLE BODY", "EMISSION"]
    ds.ImageID = f"{view[:4]} {window_name}"[:16]
    ds.CountsAccumulated = int(stored.astype(np.int64).sum())
    ds.ActualFrameDuration = int(round(float(duration_s) * 1000.0))
    ds.CorrectedImage = ["UNIF"]
    ds.WholeBodyTechnique = ["1PS"]  # one pass, single (per-file) view
    ds.ScanVelocity = format_ds(scan_velocity_mm_per_s / 10.0 * 60.0)  # cm/min
    ds.ScanLength = int(round(scan_length_mm / 10.0))  # cm
    ds.TriggerSourceOrType = ""
    # direction of the rows (column index increasing) and of the columns: towards the patient's left in the
    # anterior view (seen from the front), towards the right in the posterior view (seen from behind)
    ds.PatientOrientation = ["L", "F"] if view == "ANTERIOR" else ["R", "F"]
    # Multi-frame + NM Multi-frame
    ds.NumberOfFrames = 1
    ds.FrameIncrementPointer = [0x00540010, 0x00540020]  # EnergyWindowVector, DetectorVector
    ds.EnergyWindowVector = [1]
    ds.NumberOfEnergyWindows = 1
    ds.DetectorVector = [1]
    ds.NumberOfDetectors = 1
    # NM Isotope
    rng = Dataset()
    rng.EnergyWindowLowerLimit = format_ds(window_kev[0])
    rng.EnergyWindowUpperLimit = format_ds(window_kev[1])
    win = Dataset()
    win.EnergyWindowRangeSequence = DicomSequence([rng])
    win.EnergyWindowName = window_name
    ds.EnergyWindowInformationSequence = DicomSequence([win])
    ds.RadiopharmaceuticalInformationSequence = DicomSequence([
        radiopharmaceutical_item(nuclide, radiopharmaceutical, float(injected_activity_bq), injection_datetime,
                                  dose_unit_mbq=True)])
    # NM Detector
    det = Dataset()
    det.CollimatorGridName = "MELP"
    det.CollimatorType = "PARA"
    det.FieldOfViewShape = "RECTANGLE"
    det.FieldOfViewDimensions = [533, 387]
    det.ZoomFactor = ["1", "1"]
    det.ImagePositionPatient = [format_ds(v) for v in image_position_mm]
    det.ImageOrientationPatient = ["1", "0", "0", "0", "0", "-1"] if view == "ANTERIOR" else \
        ["-1", "0", "0", "0", "0", "-1"]
    det.ViewCodeSequence = DicomSequence([code_item(VIEW_CODES[view])])
    ds.DetectorInformationSequence = DicomSequence([det])
    ds.PixelSpacing = [format_ds(pixel_spacing_mm[0]), format_ds(pixel_spacing_mm[1])]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = int(stored.shape[0]), int(stored.shape[1])
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    ds.PixelData = np.ascontiguousarray(stored).tobytes()
    return write_dataset(ds, path)
