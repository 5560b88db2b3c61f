"""A tiny analytic study for pipeline tests, independent of the synthetic patient.

Spheres of uniform activity concentration (no blur, no noise) on a 4.8 mm SPECT grid; the image is the
exact sphere-coverage fraction per voxel (sub-sampled 5³), so the truth is analytic: each VOI holds
A(t) = c(t)·V and its TIA is the closed-form integral of its time-activity function.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import List, Optional

import numpy as np
import SimpleITK as sitk

from LuDosimetryLib.io.dicom_common import PatientInfo, SeriesInfo, StudyInfo, new_uid
from LuDosimetryLib.io.nm_writer import write_nm_multiframe
from LuDosimetryLib.io.rtstruct import write_rtstruct
from LuDosimetryLib.phantom.dicom.slice_writer import write_ct_series, write_pt_slices
from LuDosimetryLib.phantom.dicom.vendor import SIEMENS_NM
from LuDosimetryLib.radionuclides import radionuclide

LU = radionuclide("Lu-177")
INJECTION = datetime(2018, 11, 15, 9, 22)
HOURS = (3.74, 27.73, 103.09, 123.98)


@dataclass
class Sphere:
    name: str
    centre_mm: tuple
    radius_mm: float
    a0_bq: float  # mono-exponential amplitude of the whole VOI (Bq)
    t_eff_h: float
    uptake_h: Optional[float] = None  # bi-exponential uptake half-life (h), None for mono

    def activity_bq(self, t_h):
        lw = math.log(2) / self.t_eff_h
        if self.uptake_h is None:
            return self.a0_bq * np.exp(-lw * np.asarray(t_h))
        lu = math.log(2) / self.uptake_h
        return self.a0_bq * (np.exp(-lw * np.asarray(t_h)) - np.exp(-lu * np.asarray(t_h)))

    def tia_bq_s(self) -> float:
        lw = math.log(2) / self.t_eff_h
        if self.uptake_h is None:
            return self.a0_bq / lw * 3600.0
        lu = math.log(2) / self.uptake_h
        return self.a0_bq * (1 / lw - 1 / lu) * 3600.0

    @property
    def volume_ml(self) -> float:
        return 4.0 / 3.0 * math.pi * self.radius_mm ** 3 / 1000.0


DEFAULT_SPHERES = (
    Sphere("Liver", (10.0, 0.0, 0.0), 45.0, 400e6, 80.0),
    Sphere("Kidney_L", (-55.0, 20.0, 0.0), 30.0, 110e6, 50.0, uptake_h=1.5),
)


def _grid(size, spacing, origin) -> sitk.Image:
    img = sitk.Image([int(s) for s in size], sitk.sitkFloat32)
    img.SetSpacing(spacing)
    img.SetOrigin(origin)
    return img


def coverage(reference: sitk.Image, sphere: Sphere, n: int = 5) -> np.ndarray:
    """Fraction (z,y,x) of each voxel inside the sphere (n³ sub-samples)."""
    size = reference.GetSize()
    sp = np.array(reference.GetSpacing())
    org = np.array(reference.GetOrigin())
    offs = (np.arange(n) + 0.5) / n - 0.5
    zz, yy, xx = np.meshgrid(np.arange(size[2]), np.arange(size[1]), np.arange(size[0]), indexing="ij")
    frac = np.zeros(zz.shape, np.float32)
    c = np.array(sphere.centre_mm)
    for dz in offs:
        for dy in offs:
            for dx in offs:
                x = org[0] + (xx + dx) * sp[0] - c[0]
                y = org[1] + (yy + dy) * sp[1] - c[1]
                z = org[2] + (zz + dz) * sp[2] - c[2]
                frac += (x * x + y * y + z * z <= sphere.radius_mm ** 2)
    return frac / n ** 3


@dataclass
class BuiltStudy:
    root: Path
    spheres: tuple
    hours: tuple
    spect_uids: List[str] = field(default_factory=list)


def _shifted(spheres, shift_mm):
    return tuple(Sphere(s.name, tuple(c + d for c, d in zip(s.centre_mm, shift_mm)), s.radius_mm, s.a0_bq,
                        s.t_eff_h, s.uptake_h) for s in spheres)


def body_coverage(reference: sitk.Image, shift_mm=(0.0, 0.0, 0.0), n: int = 5) -> np.ndarray:
    """Fraction (z,y,x) of each voxel inside the elliptic body (semi-axes 90 × 70 mm in x, y; infinite in z)
    moved by ``shift_mm`` (n² in-plane sub-samples)."""
    size = reference.GetSize()
    sp = np.array(reference.GetSpacing())
    org = np.array(reference.GetOrigin())
    offs = (np.arange(n) + 0.5) / n - 0.5
    zz, yy, xx = np.meshgrid(np.arange(size[2]), np.arange(size[1]), np.arange(size[0]), indexing="ij")
    frac = np.zeros(zz.shape, np.float32)
    for dy in offs:
        for dx in offs:
            x = org[0] + (xx + dx) * sp[0] - shift_mm[0]
            y = org[1] + (yy + dy) * sp[1] - shift_mm[1]
            frac += (x / 90.0) ** 2 + (y / 70.0) ** 2 <= 1.0
    return frac / n ** 2


def _ct_hu(ct_ref: sitk.Image, spheres, shift_mm) -> np.ndarray:
    """A CT with structure to register: air, an elliptic body (20 HU), the spheres (60 HU) and a 'spine'
    (700 HU), all moved by ``shift_mm``."""
    size = ct_ref.GetSize()
    sp = np.array(ct_ref.GetSpacing())
    org = np.array(ct_ref.GetOrigin())
    zz, yy, xx = np.meshgrid(np.arange(size[2]), np.arange(size[1]), np.arange(size[0]), indexing="ij")
    x = org[0] + xx * sp[0] - shift_mm[0]
    y = org[1] + yy * sp[1] - shift_mm[1]
    hu = np.full(zz.shape, -1000.0, np.float32)
    hu[body_coverage(ct_ref, shift_mm, n=1) >= 0.5] = 20.0
    for s in spheres:
        hu[coverage(ct_ref, s, n=1) >= 0.5] = 60.0
    hu[((x - 0.0) / 12.0) ** 2 + ((y - 45.0) / 12.0) ** 2 <= 1.0] = 700.0
    return hu


def build_study(root: Path, *, spheres=DEFAULT_SPHERES, hours=HOURS, spect_format: str = "pt_slices",
                decay_correction: str = "ADMIN", with_ct: bool = True, with_rtstruct: bool = True,
                injected_activity_bq: float = 7.21e9, background_bq_per_ml: float = 0.0,
                shifts_mm=None, rtstruct_time_points=None, body_bq_per_ml: float = 0.0, body_t_eff_h: float = 60.0,
                psf_fwhm_mm: float = 0.0) -> BuiltStudy:
    """Write the analytic study under ``root``; returns what was written.

    ``shifts_mm``: one (x, y, z) patient shift per time point (mm; the anatomy, SPECT, CT and contours
    move together, the scanner frame stays). ``rtstruct_time_points``: 0-based time points that get an
    RTSTRUCT (default all). ``body_bq_per_ml`` > 0: the elliptic body (:func:`body_coverage`) holds this
    concentration at injection, falling with ``body_t_eff_h``, beneath the spheres' (added), and the CT
    shows the body in air. ``psf_fwhm_mm`` > 0: the SPECT is blurred by a Gaussian of this FWHM (zero
    outside the field of view).
    """
    root = Path(root)
    patient = PatientInfo(patient_id="TEST001", patient_name="Test^Analytic", sex="M", birth_date="19540101")
    spect_ref = _grid((40, 32, 24), (4.8, 4.8, 4.8), (-96.0, -76.8, -57.6))
    ct_ref = _grid((80, 64, 24), (2.4, 2.4, 4.8), (-97.2, -78.0, -57.6))
    built = BuiltStudy(root, tuple(spheres), tuple(hours))
    for k, h in enumerate(hours):
        shift = (0.0, 0.0, 0.0) if shifts_mm is None else tuple(shifts_mm[k])
        moved = _shifted(spheres, shift)
        spect_cov = {s.name: coverage(spect_ref, s) for s in moved}
        ct_cov = {s.name: coverage(ct_ref, s, n=3) for s in moved}
        acq = INJECTION + timedelta(hours=h)
        study = StudyInfo(study_instance_uid=new_uid(), study_datetime=acq, study_id=str(k + 1))
        for_uid = new_uid()
        arr = np.full(spect_cov[spheres[0].name].shape, background_bq_per_ml, np.float32)
        for s in moved:
            conc = float(s.activity_bq(h)) / s.volume_ml
            arr = arr + spect_cov[s.name] * conc
        if body_bq_per_ml > 0:
            arr = arr + body_coverage(spect_ref, shift) * np.float32(
                body_bq_per_ml * math.exp(-math.log(2) / body_t_eff_h * h))
        if psf_fwhm_mm > 0:
            from scipy.ndimage import gaussian_filter
            sigma = psf_fwhm_mm / (2.0 * math.sqrt(2.0 * math.log(2.0))) / np.array(spect_ref.GetSpacing()[::-1])
            arr = gaussian_filter(arr, sigma, mode="constant").astype(np.float32)
        img = sitk.GetImageFromArray(arr)
        img.CopyInformation(spect_ref)
        code = f"C2S{k + 1}D{int(h // 24)}"
        sseries = SeriesInfo(modality="PT" if spect_format == "pt_slices" else "NM", series_number=3,
                             description=f"{code} SPECT Bq/mL", frame_of_reference_uid=for_uid)
        common = dict(acquisition_datetime=acq, duration_s=1200.0, injected_activity_bq=injected_activity_bq,
                      injection_datetime=INJECTION, decay_correction=decay_correction)
        if spect_format == "pt_slices":
            ref = write_pt_slices(img, root / f"scan{k + 1}" / "spect", patient, study, sseries, **common)
        else:
            ref = write_nm_multiframe(img, root / f"scan{k + 1}" / "spect" / "spect.dcm", patient, study,
                                      sseries, equipment=SIEMENS_NM, **common)
        built.spect_uids.append(ref.series_instance_uid)
        if with_ct:
            if shifts_mm is None and not body_bq_per_ml > 0:
                hu = np.full(ct_cov[spheres[0].name].shape, 40.0, np.float32)  # soft tissue
            else:
                hu = _ct_hu(ct_ref, moved, shift)
            cti = sitk.GetImageFromArray(hu)
            cti.CopyInformation(ct_ref)
            cseries = SeriesInfo(modality="CT", series_number=2, description=f"{code} CT",
                                 frame_of_reference_uid=for_uid)
            ct_refd = write_ct_series(cti, root / f"scan{k + 1}" / "ct", patient, study, cseries,
                                      acquisition_datetime=acq)
            if with_rtstruct and (rtstruct_time_points is None or k in rtstruct_time_points):
                masks = {s.name: ct_cov[s.name] >= 0.5 for s in spheres}
                write_rtstruct(root / f"scan{k + 1}" / "vois" / "rtstruct.dcm", masks, ct_ref, ct_refd, patient,
                               study, series_description=f"{code} VOIs")
    return built
