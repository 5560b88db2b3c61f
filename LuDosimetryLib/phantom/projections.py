"""Simulated Lu-177 SPECT projections written as Siemens-like NM TOMO files (for the digital twin, tests
and benchmarks), with the system model of :mod:`LuDosimetryLib.recon`.

Model (documented so that tests can reason about it):

* Geometry: a dual-head camera, heads 180° apart, each stepping CW over 180° (``n_views/2`` stops of
  ``360/n_views`` degrees), body-contour orbit (body extent towards the head + 20 mm), ``matrix``
  radial bins of ``pixel_mm`` (default 614.4 mm / matrix, i.e. 4.8 mm at 128, as a Symbia/Intevo at
  zoom 1) and as many axial rows as needed to cover the object up to the 387 mm axial FOV.
* Primary photons: PyTomography's rotate-and-sum system matrix with attenuation (μ at 208 keV) and the
  Gaussian distance-dependent response of the Siemens MELP collimator ("SY-ME"), applied to the object
  on a grid ``oversample`` times finer than the projections, then binned (avoids the inverse crime of
  reconstructing with the very operator that made the data). Only the central detector columns that
  can receive photons are projected (support radius of activity and μ around the rotation axis plus
  3 PSF σ; the others are exactly zero), and the PSF is applied by FFT with PyTomography's kernels
  (:class:`LuDosimetryLib.recon.system.GaussianPSFOperator`): together 4.8× faster than the plain projector at the
  twin's full size (2.4 mm object, 120 views: 2.08 → 0.43 s per view on 2 cores), with the same
  expected counts (tests).
* Scatter: the primary projection of each view blurred by a broad Gaussian (σ = 40 mm in r and z),
  scaled so that scatter is ``SCATTER_FRACTION`` of the photopeak counts; the lower/upper 10 % windows
  receive the same scatter distribution with 1.5× / 0.5× the photopeak's scatter per keV, so that the
  triple-energy-window estimate (Ogawa et al., IEEE TMI 1991;10:408-412) is unbiased on average.
* Sensitivity: ``SENSITIVITY_CPS_PER_MBQ`` photopeak counts per second per MBq per head; within-scan
  decay per view; Poisson noise. The [Advanced] form is "raw": a fixed ±3 % detector non-uniformity per
  head that the other forms have corrected.
"""
from __future__ import annotations

import math
import os
from datetime import datetime
from pathlib import Path
from typing import List, Optional, Sequence

import numpy as np
import SimpleITK as sitk
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import NuclearMedicineImageStorage
from scipy.ndimage import gaussian_filter

from ..errors import OutputError
from ..io.dicom_common import (PatientInfo, SeriesInfo, StudyInfo, derived_uid, dicom_date, dicom_time,
                               equipment_module, format_ds, new_dataset, write_dataset)
from ..io.nm_writer import patient_orientation, radiopharmaceutical_item
from ..progress import as_progress
from ..radionuclides import radionuclide
from ..recon.energy import LU177_WINDOWS_KEV
from ..recon.system import ProjectionGeometry, body_contour_radii_mm, build_system_matrix, projector_to_frames
from .dicom.vendor import SIEMENS_NM

#: Photopeak system sensitivity per head, cps/MBq, Lu-177 208 keV 20 % window, medium-energy collimator:
#: ~9-10 cps/MBq is the order reported for Siemens Symbia MELP (e.g. Uribe et al., EJNMMI Phys
#: 2017;4:2; Tran-Gia & Lassmann, J Nucl Med 2018;59:1641 report calibration factors of this order).
SENSITIVITY_CPS_PER_MBQ = 9.4
#: Fraction of photopeak counts that are scattered photons (abdomen, Lu-177 208 keV 20 % window):
#: ~30 % in Monte Carlo studies (e.g. de Nijs et al., Nucl Med Commun 2014;35:522; MIRD Pamphlet 26).
SCATTER_FRACTION = 0.30
SCATTER_SIGMA_MM = 40.0
#: Axial field of view of the Symbia/Intevo detector (mm), 387 mm.
AXIAL_FOV_MM = 387.0
FORMS = ("unaltered", "reformatted", "advanced")
_SUFFIX = {"unaltered": "", "reformatted": " [Reformatted]", "advanced": " [Advanced]"}
_LOWER_SCATTER_PER_KEV = 1.5
_UPPER_SCATTER_PER_KEV = 0.5
#: μ (1/mm) above which a voxel counts as attenuating matter for the support of the simulation (air at
#: 208 keV is ~1.5e-5/mm, lung ~3e-3/mm; NIST XCOM mass attenuation × density).
MU_SUPPORT_PER_MM = 1e-3


def _physical_centre(image: sitk.Image) -> np.ndarray:
    size = np.array(image.GetSize(), dtype=float)
    return np.array(image.TransformContinuousIndexToPhysicalPoint(tuple((size - 1) / 2.0)))


def _z_extent(image: sitk.Image) -> float:
    size = image.GetSize()
    zs = [image.TransformIndexToPhysicalPoint((i, j, k))[2] for i in (0, size[0] - 1) for j in (0, size[1] - 1)
          for k in (0, size[2] - 1)]
    return max(zs) - min(zs) + image.GetSpacing()[2]


def simulation_geometry(activity: sitk.Image, n_views: int, matrix: int, pixel_mm: Optional[float] = None,
                        rows: Optional[int] = None) -> ProjectionGeometry:
    """Coarse projection geometry centred on ``activity`` (radii filled later)."""
    pixel = float(pixel_mm) if pixel_mm else 614.4 / int(matrix)
    if rows is None:
        rows = int(min(matrix, math.ceil(min(AXIAL_FOV_MM, _z_extent(activity)) / pixel)))
    c = _physical_centre(activity)
    per_head = n_views // 2
    step = 360.0 / n_views
    angles = np.concatenate([(0.0 - step * np.arange(per_head)) % 360.0, (180.0 - step * np.arange(per_head)) % 360.0])
    return ProjectionGeometry(n_cols=int(matrix), n_rows=int(rows), pixel_mm=pixel, slice_mm=pixel,
                              gantry_angles_deg=angles, radii_mm=np.full(n_views, 250.0),
                              x0_mm=float(c[0] - (matrix - 1) / 2.0 * pixel),
                              y0_mm=float(c[1] - (matrix - 1) / 2.0 * pixel),
                              z_row0_mm=float(c[2] + (rows - 1) / 2.0 * pixel), rows_downward=True)


def _fine(geom: ProjectionGeometry, k: int) -> ProjectionGeometry:
    p = geom.pixel_mm / k
    off = (geom.pixel_mm - p) / 2.0
    return ProjectionGeometry(n_cols=geom.n_cols * k, n_rows=geom.n_rows * k, pixel_mm=p, slice_mm=geom.slice_mm / k,
                              gantry_angles_deg=geom.gantry_angles_deg, radii_mm=geom.radii_mm,
                              x0_mm=geom.x0_mm - off, y0_mm=geom.y0_mm - off, z_row0_mm=geom.z_row0_mm + off,
                              rows_downward=geom.rows_downward)


def _bin(proj: np.ndarray, k: int) -> np.ndarray:
    v, r, z = proj.shape
    return proj.reshape(v, r // k, k, z // k, k).sum(axis=(2, 4))


def _to_object(image: sitk.Image, geom: ProjectionGeometry, linear: bool = True) -> np.ndarray:
    ref = geom.reference_image()
    out = sitk.Resample(sitk.Cast(image, sitk.sitkFloat32), ref, sitk.Transform(),
                        sitk.sitkLinear if linear else sitk.sitkNearestNeighbor, 0.0, sitk.sitkFloat32)
    return np.ascontiguousarray(np.transpose(sitk.GetArrayFromImage(out), (2, 1, 0)))


def support_radius_mm(images: Sequence[sitk.Image], thresholds: Sequence[float], centre_xy) -> float:
    """Largest in-plane distance (mm) from the rotation axis ``centre_xy`` (LPS x, y) of any voxel of
    ``images[i]`` above ``thresholds[i]``, plus half a voxel diagonal; 0 when all are empty."""
    best = 0.0
    for image, thr in zip(images, thresholds):
        arr = sitk.GetArrayViewFromImage(image)
        cols = np.nonzero((arr > thr).any(axis=0))  # (y index, x index) of occupied columns
        if len(cols[0]) == 0:
            continue
        idx = np.stack([cols[1], cols[0], np.zeros_like(cols[0])]).astype(float)
        d = np.asarray(image.GetDirection(), dtype=float).reshape(3, 3)
        pts = np.asarray(image.GetOrigin(), dtype=float)[:, None] + d @ (idx * np.asarray(image.GetSpacing())[:, None])
        r = np.hypot(pts[0] - centre_xy[0], pts[1] - centre_xy[1]).max()
        best = max(best, float(r) + 0.5 * float(np.hypot(*image.GetSpacing()[:2])))
    return best


def support_geometry(geom: ProjectionGeometry, radius_mm: float) -> tuple:
    """(geometry of the central ``n`` detector columns covering ``radius_mm``, first column offset).

    The cropped detector keeps the rotation axis at its centre, so its projections are the central
    columns of the full detector's; nothing outside ``radius_mm`` of the axis can reach the others.
    """
    n = min(geom.n_cols, 2 * int(math.ceil(radius_mm / geom.pixel_mm)) + 2)
    if (geom.n_cols - n) % 2:
        n += 1
    off = (geom.n_cols - n) // 2
    sub = ProjectionGeometry(n_cols=n, n_rows=geom.n_rows, pixel_mm=geom.pixel_mm, slice_mm=geom.slice_mm,
                             gantry_angles_deg=geom.gantry_angles_deg, radii_mm=geom.radii_mm,
                             x0_mm=geom.x0_mm + off * geom.pixel_mm, y0_mm=geom.y0_mm + off * geom.pixel_mm,
                             z_row0_mm=geom.z_row0_mm, rows_downward=geom.rows_downward)
    return sub, off


def simulate_expected(activity_bq_per_ml: sitk.Image, mu_per_mm: sitk.Image, geom: ProjectionGeometry, *,
                      duration_s: float, sensitivity_cps_per_mbq: float = SENSITIVITY_CPS_PER_MBQ,
                      oversample: int = 2, device: Optional[str] = None, progress=None,
                      crop_to_support: bool = True) -> np.ndarray:
    """Expected counts ``[window (peak, lower, upper), view, row, col]`` (stored frame layout), no noise.

    ``geom.radii_mm`` is replaced by a body-contour orbit. With ``crop_to_support`` the primary is
    projected on the central detector columns that can receive photons: those within the support
    radius (activity > 0 or μ > :data:`MU_SUPPORT_PER_MM`, around the rotation axis) plus three PSF
    σ at the largest source-detector distance; the other columns are zero. Air outside that radius
    (μ ≈ 1.5e-5/mm) is then not traversed: < 0.1 % of the counts.
    """
    from ..recon.backend import pytomography_session
    from ..recon.system import psf_meta

    progress = as_progress(progress)
    nuclide = radionuclide("Lu-177")
    per_head = geom.n_views // 2
    t_view = float(duration_s) / per_head
    with pytomography_session(device) as ns:
        torch = ns.torch
        sub, off = geom, 0
        if crop_to_support:
            support = support_radius_mm([activity_bq_per_ml, mu_per_mm], [0.0, MU_SUPPORT_PER_MM],
                                        (geom.x0_mm + (geom.n_cols - 1) / 2.0 * geom.pixel_mm,
                                         geom.y0_mm + (geom.n_cols - 1) / 2.0 * geom.pixel_mm))
            meta = psf_meta(ns)
            # farthest source-detector distance: across the support plus the orbit clearance (cm)
            d_cm = (2.0 * support + 20.0) / 10.0
            sigma_mm = 10.0 * float(meta.sigma_fit(np.array([d_cm]), *meta.sigma_fit_params)[0])
            sub, off = support_geometry(geom, support + 3.0 * sigma_mm)
        body = _to_object(mu_per_mm, sub) > 0.003  # 1/mm: excludes air/lung-free background
        geom.radii_mm = body_contour_radii_mm(ns, sub, body.astype(np.float32))
        sub.radii_mm = geom.radii_mm
        fine = _fine(sub, oversample)
        voxel_ml = (fine.pixel_mm ** 2 * fine.slice_mm) / 1000.0
        conc = np.clip(_to_object(activity_bq_per_ml, fine), 0.0, None)
        counts_obj = (conc * np.float32(voxel_ml * sensitivity_cps_per_mbq * 1e-6 * t_view)).astype(np.float32)
        mu = (_to_object(mu_per_mm, fine) * np.float32(10.0)).astype(np.float32)
        progress.report(0.05, "system model")
        system = build_system_matrix(ns, fine, mu, psf=True)
        # forward project in subsets for progress (PyTomography loops over views anyway)
        n_sub = max(1, min(8, fine.n_views))
        system.set_n_subsets(n_sub)
        obj = torch.tensor(counts_obj, device=ns.device)
        sorted_proj = np.zeros((fine.n_views, fine.n_cols, fine.n_rows), dtype=np.float32)
        with torch.no_grad():
            for s in range(n_sub):
                idx = system.subset_indices_array[s].cpu().numpy()
                sorted_proj[idx] = system.forward(obj, s).cpu().numpy()
                progress.report(0.05 + 0.9 * (s + 1) / n_sub, f"forward projection {s + 1}/{n_sub}")
    primary = np.zeros((geom.n_views, geom.n_cols, geom.n_rows), dtype=np.float32)
    primary[:, off:off + sub.n_cols, :] = _bin(sorted_proj, oversample)
    frames = projector_to_frames(primary, geom).astype(np.float64)
    # within-scan decay: view i of each head starts at i*t_view
    lam = nuclide.decay_constant_per_s
    starts = np.tile(np.arange(per_head) * t_view, 2)
    decay = np.exp(-lam * starts) * (1.0 - math.exp(-lam * t_view)) / (lam * t_view)
    frames *= decay[:, None, None]
    sigma = (SCATTER_SIGMA_MM / geom.slice_mm, SCATTER_SIGMA_MM / geom.pixel_mm)
    blurred = np.stack([gaussian_filter(f, sigma, mode="constant") for f in frames])
    scale = frames.sum() / max(blurred.sum(), 1e-12)
    scatter_peak = blurred * scale * SCATTER_FRACTION / (1.0 - SCATTER_FRACTION)
    (_, pl, pu), (_, ll, lu), (_, ul, uu) = LU177_WINDOWS_KEV
    wp, wl, wu = pu - pl, lu - ll, uu - ul
    lower = scatter_peak / wp * wl * _LOWER_SCATTER_PER_KEV
    upper = scatter_peak / wp * wu * _UPPER_SCATTER_PER_KEV
    progress.report(1.0, "projections simulated")
    return np.stack([frames + scatter_peak, lower, upper])


def _nonuniformity(shape, seed: int) -> np.ndarray:
    """Per-head smooth detector non-uniformity, mean 1, ±3 % (rows, cols) for 2 heads."""
    rng = np.random.default_rng(10_000 + int(seed))
    maps = []
    for _ in range(2):
        field = gaussian_filter(rng.standard_normal(shape), sigma=max(1.0, shape[1] / 12.0))
        field = field / max(np.abs(field).max(), 1e-12) * 0.03
        maps.append(1.0 + field - field.mean())
    return np.stack(maps)


def write_projection_series(folder: os.PathLike, activity_bq_per_ml: sitk.Image, mu_per_mm: sitk.Image, *,
                            acquisition_datetime: datetime, duration_s: float, injected_activity_bq: float,
                            injection_datetime: datetime, patient: PatientInfo, study: StudyInfo,
                            series_description: str, forms: Sequence[str] = FORMS, n_views: int = 120,
                            matrix: int = 128, seed: int = 0, progress=None, pixel_mm: Optional[float] = None,
                            rows: Optional[int] = None, oversample: int = 2,
                            sensitivity_cps_per_mbq: float = SENSITIVITY_CPS_PER_MBQ,
                            frame_of_reference_uid: Optional[str] = None, series_number: int = 100,
                            device: Optional[str] = None) -> List[Path]:
    """Simulate a Lu-177 SPECT acquisition and write one NM TOMO multi-frame file per form.

    Parameters
    ----------
    folder : path-like
        Output folder; files ``PROJ_UNALTERED.dcm``, ``PROJ_REFORMATTED.dcm``, ``PROJ_ADVANCED.dcm``.
    activity_bq_per_ml : SimpleITK.Image
        Activity concentration at the acquisition start (Bq/mL), LPS; best on a grid at least
        ``oversample`` times finer than the projection pixels.
    mu_per_mm : SimpleITK.Image
        μ at 208 keV (1/mm) in the same patient coordinates (any grid).
    acquisition_datetime, duration_s : datetime, float
        Acquisition start and total duration (s); each head takes ``n_views/2`` views of
        ``duration_s/(n_views/2)`` s.
    injected_activity_bq, injection_datetime : float, datetime
    patient, study : PatientInfo, StudyInfo
    series_description : str
        Base description; "[Reformatted]" / "[Advanced]" are appended as Siemens does.
    forms : sequence of {"unaltered", "reformatted", "advanced"}
    n_views : int
        Total views (even; two heads).
    matrix : int
        Radial bins (Columns).
    seed : int
        Poisson noise seed.
    progress : callable or Progress, optional
    pixel_mm, rows, oversample, sensitivity_cps_per_mbq, frame_of_reference_uid, series_number, device
        Overrides of the defaults described in the module notes.

    Returns
    -------
    list of Path
        One file per form, in ``forms`` order.
    """
    folder = Path(folder)
    progress = as_progress(progress)
    bad = [f for f in forms if f not in FORMS]
    if bad or not forms:
        raise OutputError(f"forms must be among {', '.join(FORMS)}, got {list(forms)!r}", folder)
    if int(n_views) < 2 or int(n_views) % 2:
        raise OutputError(f"n_views must be an even number ≥ 2 (two heads), got {n_views}", folder)
    if int(oversample) < 1:
        raise OutputError(f"oversample must be ≥ 1, got {oversample}", folder)
    for name, img in (("activity_bq_per_ml", activity_bq_per_ml), ("mu_per_mm", mu_per_mm)):
        if not isinstance(img, sitk.Image) or img.GetDimension() != 3:
            raise OutputError(f"{name} must be a 3D SimpleITK.Image", folder)
        arr = sitk.GetArrayViewFromImage(img)
        if not np.all(np.isfinite(arr)) or float(np.min(arr)) < 0:
            raise OutputError(f"{name} holds negative or non-finite values", folder)
    if not (float(duration_s) > 0):
        raise OutputError(f"duration_s must be positive, got {duration_s!r}", folder)
    if acquisition_datetime < injection_datetime:
        raise OutputError("the acquisition precedes the injection", folder)
    if folder.exists() and not folder.is_dir():
        raise OutputError("exists and is not a folder", folder)
    folder.mkdir(parents=True, exist_ok=True)
    geom = simulation_geometry(activity_bq_per_ml, int(n_views), int(matrix), pixel_mm, rows)
    expected = simulate_expected(activity_bq_per_ml, mu_per_mm, geom, duration_s=duration_s,
                                 sensitivity_cps_per_mbq=sensitivity_cps_per_mbq, oversample=int(oversample),
                                 device=device, progress=progress.sub(0.0, 0.9))
    nu = _nonuniformity((geom.n_rows, geom.n_cols), seed)
    head = np.repeat([0, 1], geom.n_views // 2)
    for_uid = frame_of_reference_uid or derived_uid(f"{study.study_instance_uid}/for")
    paths = []
    for i, form in enumerate(forms):
        mean = expected * nu[head][None] if form == "advanced" else expected
        counts = np.random.default_rng(int(seed)).poisson(mean)
        if counts.max() > 65535:
            raise OutputError(f"a projection pixel holds {counts.max()} counts, beyond 16 bits; shorten duration_s",
                              folder)
        path = folder / f"PROJ_{form.upper()}.dcm"
        _write_tomo(path, counts.astype(np.uint16), geom, patient=patient, study=study,
                    description=series_description + _SUFFIX[form], series_number=int(series_number) + i,
                    acquisition_datetime=acquisition_datetime, duration_s=float(duration_s),
                    injected_activity_bq=float(injected_activity_bq), injection_datetime=injection_datetime,
                    frame_of_reference_uid=for_uid, form=form,
                    sensitivity=float(sensitivity_cps_per_mbq))
        paths.append(path)
        progress.report(0.9 + 0.1 * (i + 1) / len(forms), f"wrote {path.name}")
    return paths


def _write_tomo(path: Path, counts: np.ndarray, geom: ProjectionGeometry, *, patient, study, description,
                series_number, acquisition_datetime, duration_s, injected_activity_bq, injection_datetime,
                frame_of_reference_uid, form, sensitivity) -> None:
    """One NM Image Storage TOMO file, frames window-major, then head, then angular view."""
    n_win, n_views, n_rows, n_cols = counts.shape
    per_head = n_views // 2
    series = SeriesInfo(modality="NM", series_instance_uid=derived_uid(
        f"{study.study_instance_uid}/proj/{description}/{acquisition_datetime.isoformat()}"),
        series_number=series_number, description=description, frame_of_reference_uid=frame_of_reference_uid,
        series_datetime=acquisition_datetime)
    uid = derived_uid(f"{series.series_instance_uid}/0")
    ds = new_dataset(NuclearMedicineImageStorage, patient, study, series, sop_instance_uid=uid,
                     content_datetime=acquisition_datetime)
    ds.BodyPartExamined = "ABDOMEN"
    equipment_module(ds, SIEMENS_NM)
    patient_orientation(ds)
    ds.AcquisitionDate = dicom_date(acquisition_datetime)
    ds.AcquisitionTime = dicom_time(acquisition_datetime)
    ds.ImageType = ["ORIGINAL", "PRIMARY", "TOMO", "EMISSION"]
    ds.ImageID = {"unaltered": "TOMO", "reformatted": "TOMO REFORMATTED", "advanced": "TOMO ADVANCED"}[form][:16]
    ds.CountsAccumulated = int(counts[0].sum())
    ds.CorrectedImage = ["UNIF", "COR"] if form != "advanced" else ["COR"]
    ds.ImageComments = f"simulated by LuDosimetry; photopeak sensitivity {sensitivity:g} cps/MBq per head"
    ds.NumberOfFrames = n_win * n_views
    ds.FrameIncrementPointer = [0x00540010, 0x00540020, 0x00540050, 0x00540090]
    ds.EnergyWindowVector = [w + 1 for w in range(n_win) for _ in range(n_views)]
    ds.DetectorVector = [d + 1 for _ in range(n_win) for d in range(2) for _ in range(per_head)]
    ds.RotationVector = [1] * (n_win * n_views)
    ds.AngularViewVector = [i + 1 for _ in range(n_win) for _ in range(2) for i in range(per_head)]
    ds.NumberOfEnergyWindows = n_win
    ds.NumberOfDetectors = 2
    ds.NumberOfRotations = 1
    windows = []
    for name, lo, hi in LU177_WINDOWS_KEV[:n_win]:
        item = Dataset()
        rng = Dataset()
        rng.EnergyWindowLowerLimit = format_ds(lo)
        rng.EnergyWindowUpperLimit = format_ds(hi)
        item.EnergyWindowRangeSequence = DicomSequence([rng])
        item.EnergyWindowName = name
        windows.append(item)
    ds.EnergyWindowInformationSequence = DicomSequence(windows)
    ds.RadiopharmaceuticalInformationSequence = DicomSequence([radiopharmaceutical_item(
        radionuclide("Lu-177"), "Lu-177 DOTATATE", injected_activity_bq, injection_datetime, dose_unit_mbq=True)])
    step = 360.0 / n_views
    dets = []
    for d in range(2):
        det = Dataset()
        det.CollimatorGridName = "MELP"
        det.CollimatorType = "PARA"
        det.FieldOfViewShape = "RECTANGLE"
        det.FieldOfViewDimensions = [533, 387]
        det.FocalDistance = "0"
        det.ZoomFactor = ["1", "1"]
        det.CenterOfRotationOffset = "0"
        det.GantryDetectorTilt = "0"
        det.StartAngle = format_ds(geom.gantry_angles_deg[d * per_head])
        det.RadialPosition = [format_ds(r) for r in geom.radii_mm[d * per_head:(d + 1) * per_head]]
        det.ImageOrientationPatient = ["1", "0", "0", "0", "0", "-1"]
        det.ImagePositionPatient = [format_ds(geom.x0_mm), format_ds(geom.y0_mm), format_ds(geom.z_row0_mm)]
        dets.append(det)
    ds.DetectorInformationSequence = DicomSequence(dets)
    rot = Dataset()
    rot.StartAngle = format_ds(geom.gantry_angles_deg[0])
    rot.AngularStep = format_ds(step)
    rot.RotationDirection = "CW"
    rot.ScanArc = format_ds(step * per_head)
    rot.ActualFrameDuration = int(round(duration_s * 1000.0 / per_head))
    rot.NumberOfFramesInRotation = per_head
    rot.TableTraverse = "0"
    rot.TableHeight = "150"
    ds.RotationInformationSequence = DicomSequence([rot])
    ds.TypeOfDetectorMotion = "STEP AND SHOOT"
    ds.PixelSpacing = [format_ds(geom.slice_mm), format_ds(geom.pixel_mm)]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = n_rows, n_cols
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    ds.PixelData = np.ascontiguousarray(counts.reshape(-1, n_rows, n_cols).astype("<u2")).tobytes()
    write_dataset(ds, path)
