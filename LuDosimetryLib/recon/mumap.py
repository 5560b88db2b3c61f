"""Attenuation maps (μ-maps) for Lu-177 SPECT: HU → μ at 208 keV, writing and reading μ-map series.

Storage convention of :func:`write_mumap_series`
------------------------------------------------
One NM Image Storage multi-frame file (ImageType DERIVED\\PRIMARY\\RECON TOMO\\TRANSMISSION), like
the attenuation maps a Siemens Symbia/Intevo exports beside its reconstructions: 256×256 in-plane for
xSPECT, 128×128 for Flash3D, over a 614.4 mm field of view. Stored values are μ in units of
10⁻⁴ cm⁻¹ (uint16); RescaleSlope 0.0001 and a Real World Value Mapping in UCUM ``/cm`` turn them into
cm⁻¹. :func:`read_mumap` returns μ in mm⁻¹ and also accepts CT-modality or NM μ-maps whose units are
not stated (then the scale is inferred from the soft-tissue value, ≈ 0.135 cm⁻¹ at 208 keV).
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import List, Optional, Sequence

import numpy as np
import SimpleITK as sitk
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import NuclearMedicineImageStorage

from ..errors import DicomFileError, OutputError
from ..io.dicom_common import (LUDOSIMETRY, Equipment, PatientInfo, SeriesInfo, StudyInfo, code_item, derived_uid,
                               equipment_module, format_ds, new_dataset, write_dataset)
from ..io.images import mean_over_grid, read_image_series
from ..io.nm_writer import SliceGeometry, patient_orientation, pixel_module, recon_tomo_modules

#: Mass attenuation coefficients μ/ρ (cm²/g) of water and ICRU cortical bone (ρ = 1.92 g/cm³) from
#: NIST XCOM (Hubbell & Seltzer, NISTIR 5632, "Tables of X-Ray Mass Attenuation Coefficients"),
#: total with coherent scattering, at 60, 80, 100, 150, 200 and 300 keV.
_XCOM_KEV = np.array([60.0, 80.0, 100.0, 150.0, 200.0, 300.0])
_XCOM_WATER = np.array([0.2059, 0.1837, 0.1707, 0.1505, 0.1370, 0.1186])
_XCOM_BONE = np.array([0.3148, 0.2229, 0.1855, 0.1480, 0.1309, 0.1113])
_BONE_DENSITY = 1.92
#: Effective energy of a 120-130 kVp CT beam, 70 keV (Kinahan et al., Med Phys 1998;25:2046-2053).
CT_EFFECTIVE_KEV = 70.0
#: μ-map FOV of the Symbia/Intevo (mm): 128 × 4.8 mm (Flash3D) or 256 × 2.4 mm (xSPECT).
MUMAP_FOV_MM = 614.4

_UCUM_PER_CM = ("/cm", "UCUM", "per centimeter")


def _mu_linear(energy_kev: float, table: np.ndarray, density: float) -> float:
    e = float(energy_kev)
    if not (_XCOM_KEV[0] <= e <= _XCOM_KEV[-1]):
        raise ValueError(f"energy {e} keV is outside the tabulated 60-300 keV")
    return float(np.exp(np.interp(np.log(e), np.log(_XCOM_KEV), np.log(table)))) * density


def mu_water_per_cm(energy_kev: float = 208.366) -> float:
    """Linear attenuation coefficient of water (1/cm), log-log interpolated in NIST XCOM."""
    return _mu_linear(energy_kev, _XCOM_WATER, 1.0)


def mu_from_hu(hu, energy_kev: float = 208.366, ct_effective_kev: float = CT_EFFECTIVE_KEV) -> np.ndarray:
    """Bilinear HU → μ (1/mm) at the SPECT photon energy.

    Air-water segment (HU ≤ 0): μ = μ_w(E)·(1 + HU/1000). Water-bone segment (HU > 0): the line from
    water to ICRU cortical bone, whose HU is computed at the CT effective energy (Blankespoor et al.,
    IEEE Trans Nucl Sci 1996;43:2263-2274; Brown et al., Appl Radiat Isot 2008;66:1206-1212):
    μ = μ_w(E) + HU·(μ_b(E) − μ_w(E)) / HU_b with HU_b = 1000·(μ_b(E_CT) − μ_w(E_CT))/μ_w(E_CT).
    At 208 keV: μ_w = 0.1350 cm⁻¹, μ_b = 0.2472 cm⁻¹, HU_b = 1593.

    Parameters
    ----------
    hu : array-like
        Hounsfield units.
    energy_kev : float
        SPECT photon energy (keV), 60-300.
    ct_effective_kev : float
        Effective CT beam energy (keV).

    Returns
    -------
    numpy.ndarray
        μ in 1/mm, ≥ 0.
    """
    hu = np.asarray(hu, dtype=np.float64)
    mw = mu_water_per_cm(energy_kev)
    mb = _mu_linear(energy_kev, _XCOM_BONE, _BONE_DENSITY)
    mw_ct = mu_water_per_cm(ct_effective_kev)
    hu_bone = 1000.0 * (_mu_linear(ct_effective_kev, _XCOM_BONE, _BONE_DENSITY) - mw_ct) / mw_ct
    mu = np.where(hu <= 0.0, mw * (1.0 + hu / 1000.0), mw + hu * (mb - mw) / hu_bone)
    return np.clip(mu, 0.0, None) / 10.0


def mu_image_from_ct(ct_hu: sitk.Image, energy_kev: float = 208.366) -> sitk.Image:
    """CT (HU) image → μ image (1/mm) on the same grid."""
    arr = mu_from_hu(sitk.GetArrayFromImage(ct_hu), energy_kev).astype(np.float32)
    out = sitk.GetImageFromArray(arr)
    out.CopyInformation(ct_hu)
    return out


def mumap_grid(reference: sitk.Image, matrix: int) -> sitk.Image:
    """The μ-map grid: ``matrix``² over 614.4 mm centred on ``reference``, slices of the pixel size
    covering its z extent (identity direction, LPS)."""
    if int(matrix) not in (128, 256) and int(matrix) < 8:
        raise ValueError(f"matrix {matrix} is too small")
    pixel = MUMAP_FOV_MM / int(matrix)
    size = np.array(reference.GetSize(), dtype=float)
    centre = np.array(reference.TransformContinuousIndexToPhysicalPoint(tuple((size - 1) / 2.0)))
    corners = [reference.TransformIndexToPhysicalPoint((int(i), int(j), int(k)))
               for i in (0, size[0] - 1) for j in (0, size[1] - 1) for k in (0, size[2] - 1)]
    zs = [c[2] for c in corners]
    nz = max(1, int(math.ceil((max(zs) - min(zs)) / pixel)) + 1)
    grid = sitk.Image(int(matrix), int(matrix), nz, sitk.sitkFloat32)
    grid.SetSpacing((pixel, pixel, pixel))
    grid.SetOrigin((centre[0] - (matrix - 1) / 2.0 * pixel, centre[1] - (matrix - 1) / 2.0 * pixel,
                    centre[2] - (nz - 1) / 2.0 * pixel))
    return grid


def write_mumap_series(folder: os.PathLike, mu_per_mm: sitk.Image, matrix: int, patient: PatientInfo,
                       study: StudyInfo, series_description: str = "CTAC µ-map 208 keV",
                       frame_of_reference_uid: Optional[str] = None, *, series_number: int = 90,
                       acquisition_datetime=None, equipment: Equipment = LUDOSIMETRY) -> List[Path]:
    """Write a CT-based μ-map (one NM multi-frame file) at 128² (Flash3D) or 256² (xSPECT).

    Parameters
    ----------
    folder : path-like
        Output folder (created); the file is ``MUMAP_<matrix>.dcm``, written atomically.
    mu_per_mm : SimpleITK.Image
        μ at 208 keV (1/mm), LPS; averaged onto the μ-map grid (:func:`mumap_grid`).
    matrix : int
        128 or 256 (any size ≥ 8 is accepted for tests).
    patient, study : PatientInfo, StudyInfo
    series_description : str
        Should contain "µ-map"/"mu-map" (the study inventory classifies by it).
    frame_of_reference_uid : str, optional
        That of the CT/SPECT it belongs to (new when omitted).
    equipment : Equipment
        General Equipment written into the file (LuDosimetry by default; the digital twin passes its
        camera's).

    Returns
    -------
    list of Path
        The one file written.
    """
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise OutputError("exists and is not a folder", folder)
    if not isinstance(mu_per_mm, sitk.Image) or mu_per_mm.GetDimension() != 3:
        raise OutputError("mu_per_mm must be a 3D SimpleITK.Image", folder)
    arr_in = sitk.GetArrayViewFromImage(mu_per_mm)
    if not np.all(np.isfinite(arr_in)) or float(np.min(arr_in)) < 0 or float(np.max(arr_in)) > 1.0:
        raise OutputError("mu_per_mm must hold finite values in [0, 1] per mm (water is 0.0135/mm)", folder)
    grid = mumap_grid(mu_per_mm, int(matrix))
    mu = mean_over_grid(sitk.Cast(mu_per_mm, sitk.sitkFloat32), grid, default=0.0)
    path = folder / f"MUMAP_{int(matrix)}.dcm"
    geo = SliceGeometry(mu, path)
    values_per_cm = np.clip(sitk.GetArrayFromImage(mu).astype(np.float64) * 10.0, 0.0, None)
    stored = np.clip(np.rint(values_per_cm * 1e4), 0, 65535)
    series = SeriesInfo(modality="NM", series_instance_uid=derived_uid(
        f"{study.study_instance_uid}/mumap/{series_description}/{matrix}"), series_number=series_number,
        description=series_description, frame_of_reference_uid=frame_of_reference_uid
        or derived_uid(f"{study.study_instance_uid}/for"))
    when = acquisition_datetime or study.study_datetime
    series.series_datetime = when
    uid = derived_uid(f"{series.series_instance_uid}/0")
    ds = new_dataset(NuclearMedicineImageStorage, patient, study, series, sop_instance_uid=uid,
                     content_datetime=when)
    ds.BodyPartExamined = "ABDOMEN"
    equipment_module(ds, equipment)
    patient_orientation(ds)
    ds.AcquisitionDate = when.strftime("%Y%m%d")
    ds.AcquisitionTime = when.strftime("%H%M%S")
    ds.ImageType = ["DERIVED", "PRIMARY", "RECON TOMO", "TRANSMISSION"]
    ds.ImageID = "MUMAP"
    ds.CountsAccumulated = 0
    ds.DerivationDescription = "CT HU to linear attenuation coefficient at 208 keV, bilinear (Brown 2008)"
    n = geo.size[2]
    ds.NumberOfFrames = n
    ds.FrameIncrementPointer = 0x00540080
    ds.SliceVector = list(range(1, n + 1))
    ds.NumberOfSlices = n
    ds.NumberOfEnergyWindows = 1
    ds.NumberOfDetectors = 1
    ds.NumberOfRotations = 1
    window = Dataset()
    rng = Dataset()
    rng.EnergyWindowLowerLimit = "187.2"
    rng.EnergyWindowUpperLimit = "228.8"
    window.EnergyWindowRangeSequence = DicomSequence([rng])
    window.EnergyWindowName = "Lu177_208keV"
    ds.EnergyWindowInformationSequence = DicomSequence([window])
    ds.RadiopharmaceuticalInformationSequence = DicomSequence([])
    recon_tomo_modules(ds, geo, 0.0)
    ds.SpacingBetweenSlices = format_ds(geo.spacing[2])
    ds.SliceThickness = format_ds(geo.spacing[2])
    ds.PixelSpacing = geo.pixel_spacing()
    rwvm = Dataset()
    rwvm.RealWorldValueFirstValueMapped = 0
    rwvm.RealWorldValueLastValueMapped = 65535
    rwvm.RealWorldValueIntercept = 0.0
    rwvm.RealWorldValueSlope = 1e-4
    rwvm.LUTExplanation = "linear attenuation coefficient 1/cm"
    rwvm.LUTLabel = "MU"
    rwvm.MeasurementUnitsCodeSequence = DicomSequence([code_item(_UCUM_PER_CM)])
    ds.RealWorldValueMappingSequence = DicomSequence([rwvm])
    ds.RescaleIntercept = "0"
    ds.RescaleSlope = "0.0001"
    pixel_module(ds, stored, signed=False)
    write_dataset(ds, path)
    return [path]


def read_mumap(files: Sequence[str], what: str = "attenuation map") -> sitk.Image:
    """Read a μ-map series (NM or CT modality) → μ in 1/mm (float32, LPS).

    Units: UCUM ``/cm`` (or Units ``1/CM``/``CM-1``) are honoured; otherwise the scale is inferred from
    the median of the tissue voxels (μ of soft tissue at 208 keV ≈ 0.135 cm⁻¹): values ≈ 0.0135 are
    taken as 1/mm, ≈ 0.135 as 1/cm, ≈ 1350 as 10⁻⁴/cm.
    """
    series = read_image_series(list(files), what=what)
    img = sitk.Cast(series.image, sitk.sitkFloat32)
    units = series.units.upper()
    if units in ("/CM", "1/CM", "CM-1"):
        scale = 0.1
    elif units in ("/MM", "1/MM", "MM-1"):
        scale = 1.0
    else:
        arr = sitk.GetArrayViewFromImage(img)
        tissue = arr[arr > 0.3 * float(arr.max())] if float(arr.max()) > 0 else arr.ravel()
        med = float(np.median(tissue)) if tissue.size else 0.0
        if med <= 0:
            raise DicomFileError(f"{what}: all values are zero", series.files[0])
        ratio = med / 0.0135
        candidates = {1.0: 1.0, 10.0: 0.1, 1e5: 1e-5}  # 1/mm, 1/cm, 1e-4/cm
        best = min(candidates, key=lambda c: abs(math.log(ratio / c)))
        if abs(math.log(ratio / best)) > math.log(5.0):
            raise DicomFileError(f"{what}: cannot tell the units of the values (median tissue value {med:.4g}); "
                                 "expected 1/cm or 1/mm", series.files[0])
        scale = candidates[best]
    return img * float(scale)
