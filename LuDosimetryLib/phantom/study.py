"""Write the synthetic patient: 4 SPECT/CT time points, organ and lesion RTSTRUCTs, and the truth.

The patient mimics patient 4 of the published Lu-177 DOTATATE SPECT/CT collection (ANON54121, male,
64 y, 7.21 GBq on 2018-11-15 09:22, cycle 2, scans at 3.74, 27.73, 103.09 and 123.98 h, days 0, 1, 4, 5).
Like a Siemens Intevo, each scan is its own study whose SPECT and CT share one frame of reference.

Image formation (an approximation, documented in ``truth.json``):

1. The analytic anatomy (:mod:`.anatomy`) is rasterised to fractional occupancy on a fine grid (half the
   SPECT voxel size, 2³ sub-samples per voxel). Each tissue has a uniform concentration A(t)/V.
2. The concentration is blurred with a 3D Gaussian of ``fwhm_mm`` (default 10 mm: the reconstructed
   resolution of 208 keV Lu-177 SPECT with a medium-energy collimator and resolution recovery is of
   the order of 8–15 mm, cf. Ljungberg et al., MIRD Pamphlet No. 26, J Nucl Med 2016;57:151–162) and
   averaged to the SPECT grid (4.7952 mm voxels) — the truth is never evaluated on the fine grid.
3. Noise: each SPECT voxel gets Poisson counts with mean C·V·S·T (concentration × voxel volume ×
   system sensitivity S × duration T), converted back to Bq/mL. S defaults to 10 cps/MBq, the order of
   magnitude of dual-head NaI(Tl) cameras with medium-energy collimators in a 20 % 208 keV window. This
   is NOT a model of reconstructed-image noise (which is spatially correlated and amplified by
   iterative reconstruction); it gives count-level, activity-proportional noise only.
4. The CT (2× finer in-plane than the SPECT, same slices) is the occupancy-weighted HU of the fine grid,
   plus 10 HU Gaussian noise when ``noise`` is on. VOI masks are the fine-grid occupancies averaged to
   the CT grid, kept where ≥ 0.5.

Absorbed doses in the truth are local-deposition electron doses: TIA × mean electron energy per decay
(ICRP 107) / mass; photon energy and cross-dose between organs are neglected.
"""
from __future__ import annotations

import math
import os
from dataclasses import replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Dict, Optional

import numpy as np
import SimpleITK as sitk
from scipy.ndimage import gaussian_filter

from ..errors import LuDosimetryError, OutputError
from ..io.export import write_json
from ..io.dicom_common import PatientInfo, SeriesInfo, StudyInfo
from ..io.dicom_common import derived_uid
from ..io.nm_writer import write_nm_multiframe
from ..io.rtstruct import write_rtstruct
from ..progress import as_progress
from ..radionuclides import radionuclide
from .anatomy import TISSUES, Grid, block_mean, default_anatomy, hu_map, rasterise
from .dicom.slice_writer import write_ct_series, write_pt_slices
from .dicom.vendor import SIEMENS_NM
from .kinetics_truth import TISSUE_KINETICS

PATIENT = PatientInfo(patient_id="ANON54121", patient_name="ANON54121", birth_date="", sex="M", age="064Y")
INJECTED_ACTIVITY_BQ = 7.21e9
INJECTION_TIME = datetime(2018, 11, 15, 9, 22, 0)
CYCLE = 2
SCAN_HOURS = (3.74, 27.73, 103.09, 123.98)
SCAN_DAYS = (0, 1, 4, 5)
ACQUISITION_DURATION_S = 1200.0
SPECT_VOXEL_MM = 4.7952
DEFAULT_FWHM_MM = 10.0
DEFAULT_SENSITIVITY_CPS_PER_MBQ = 10.0
CT_NOISE_HU = 10.0

#: VOI name → (kind, tissues it contains). The liver outline includes its lesions, as drawn clinically.
VOIS: Dict[str, tuple] = {
    "Liver": ("organ", ("liver", "lesion_1", "lesion_2")),
    "Kidney_L": ("organ", ("kidney_left",)),
    "Kidney_R": ("organ", ("kidney_right",)),
    "Spleen": ("organ", ("spleen",)),
    "Lesion_1": ("lesion", ("lesion_1",)),
    "Lesion_2": ("lesion", ("lesion_2",)),
}
_REMAINDER_TISSUES = ("fat", "soft_tissue", "bone")
_COLORS = {"Liver": (221, 130, 101), "Kidney_L": (185, 102, 83), "Kidney_R": (185, 102, 83),
           "Spleen": (157, 108, 162), "Lesion_1": (255, 255, 0), "Lesion_2": (255, 128, 0)}
_SPECT_FORMATS = ("pt_slices", "nm_multiframe")


def _grids(fast: bool):
    """(SPECT grid, fine grid = CT in-plane grid, fine/SPECT factor)."""
    if fast:
        spacing, size = 2 * SPECT_VOXEL_MM, (48, 40, 26)
    else:
        spacing, size = SPECT_VOXEL_MM, (96, 80, 52)
    # Field of view centred on the body (y = 10 mm) and on the abdomen (z = 15 mm).
    centre = (0.0, 10.0, 15.0)
    origin = tuple(c - (n - 1) / 2.0 * spacing for c, n in zip(centre, size))
    spect = Grid(origin, (spacing,) * 3, size)
    return spect, spect.refined((2, 2, 2)), 2


def _uid(seed: int, fast: bool, what: str) -> str:
    return derived_uid(f"LuDosimetry synthetic patient seed={seed} fast={fast} {what}")


def write_synthetic_patient(out_dir: os.PathLike, *, seed: int = 0, fast: bool = False, noise: bool = True,
                            fwhm_mm: Optional[float] = None, spect_format: str = "pt_slices",
                            sensitivity_cps_per_mbq: float = DEFAULT_SENSITIVITY_CPS_PER_MBQ,
                            progress=None, kinetics=None, patient_id: Optional[str] = None) -> Path:
    """Write the synthetic 4-time-point Lu-177 DOTATATE SPECT/CT study with its truth.

    Parameters
    ----------
    out_dir : path-like
        Created if needed. Receives ``SPECT_Cts/scan{k}/ct/``, ``SPECT_Cts/scan{k}/spect/``,
        ``VOIs/scan{k}/organs/RTSTRUCT_organs.dcm``, ``VOIs/scan{k}/lesions/RTSTRUCT_lesions.dcm``
        (k = 1..4), ``truth.json`` and ``truth_tia.nrrd`` (true TIA in Bq·s/mL on the SPECT grid).
    seed : int
        Seed of the noise; output is deterministic per seed (UIDs included).
    fast : bool
        Coarser grid (9.59 mm SPECT voxels), for tests: a few seconds.
    noise : bool
        Poisson noise on the SPECT, 10 HU on the CT; ``False`` writes the noise-free images.
    fwhm_mm : float, optional
        SPECT resolution (mm); default 10 mm.
    spect_format : {"pt_slices", "nm_multiframe"}
        MIM-style PT slices (as in the collection) or one NM multi-frame file.
    sensitivity_cps_per_mbq : float
        System sensitivity used for the count level of the noise (cps/MBq).
    progress : callable or Progress, optional
    kinetics : dict tissue → UptakeWashout, optional
        True kinetics instead of :data:`.kinetics_truth.TISSUE_KINETICS` (the same tissues), e.g. a patient of
        :mod:`.cohort_variability`.
    patient_id : str, optional
        PatientID (and name) instead of the collection's patient 4's.

    Returns
    -------
    pathlib.Path
        ``out_dir``.
    """
    if spect_format not in _SPECT_FORMATS:
        raise LuDosimetryError(f"spect_format must be one of {', '.join(_SPECT_FORMATS)}, not {spect_format!r}")
    fwhm = DEFAULT_FWHM_MM if fwhm_mm is None else float(fwhm_mm)
    if not (fwhm >= 0 and math.isfinite(fwhm)):
        raise LuDosimetryError(f"fwhm_mm must be a non-negative number, got {fwhm_mm!r}")
    if not (float(sensitivity_cps_per_mbq) > 0):
        raise LuDosimetryError(f"sensitivity_cps_per_mbq must be positive, got {sensitivity_cps_per_mbq!r}")
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise OutputError("exists and is not a folder", out)
    out.mkdir(parents=True, exist_ok=True)
    prog = as_progress(progress)
    nuclide = radionuclide("Lu-177")
    rng = np.random.default_rng(seed)
    kin = dict(TISSUE_KINETICS if kinetics is None else kinetics)
    patient = PATIENT if patient_id is None else replace(PATIENT, patient_id=patient_id, patient_name=patient_id)

    # 1. anatomy on the fine grid
    prog.report(0.0, "rasterising the anatomy")
    spect_grid, fine, f = _grids(fast)
    fractions = rasterise(default_anatomy(), fine, supersample=2)
    volume_ml = {name: float(frac.sum(dtype=np.float64)) * fine.voxel_ml for name, frac in fractions.items()}
    activity_fractions = {name: fractions[name] for name in kin if name != "remainder"}
    activity_fractions["remainder"] = sum(fractions[n] for n in _REMAINDER_TISSUES)
    volume_ml["remainder"] = sum(volume_ml[n] for n in _REMAINDER_TISSUES)

    # 2. truth kinetics
    hours = np.asarray(SCAN_HOURS, dtype=float)
    curves = {name: m.as_sum(nuclide) for name, m in kin.items()}
    tissue_activity = {name: c.activity_bq(hours) for name, c in curves.items()}
    concentration = {name: tissue_activity[name] / volume_ml[name] for name in curves}  # Bq/mL per time point

    # 3. SPECT basis: blurred, averaged occupancy per tissue on the SPECT grid
    prog.report(0.1, "forming SPECT images")
    sigma_vox = [fwhm / (2.0 * math.sqrt(2.0 * math.log(2.0))) / s for s in fine.spacing[::-1]]  # (z, y, x)
    basis = {}
    for i, (name, frac) in enumerate(activity_fractions.items()):
        blurred = gaussian_filter(frac, sigma_vox, mode="nearest", truncate=3.0) if fwhm > 0 else frac
        basis[name] = block_mean(blurred, (f, f, f)).astype(np.float64)
        prog.report(0.1 + 0.2 * (i + 1) / len(activity_fractions), "forming SPECT images")
    spect_images = []
    counts_per_bq_per_ml = spect_grid.voxel_ml * float(sensitivity_cps_per_mbq) * 1e-6 * ACQUISITION_DURATION_S
    for k in range(len(hours)):
        img = sum(concentration[name][k] * basis[name] for name in basis)
        if noise:
            img = rng.poisson(np.clip(img, 0, None) * counts_per_bq_per_ml) / counts_per_bq_per_ml
        spect_images.append(spect_grid.image(img.astype(np.float32)))

    # 4. CT and VOI masks on the CT grid (fine in-plane, SPECT slices)
    ct_grid = Grid((fine.origin[0], fine.origin[1], spect_grid.origin[2]),
                   (fine.spacing[0], fine.spacing[1], spect_grid.spacing[2]),
                   (fine.size[0], fine.size[1], spect_grid.size[2]))
    hu = block_mean(hu_map(fractions), (f, 1, 1))
    masks = {}
    for voi, (_kind, tissues) in VOIS.items():
        masks[voi] = block_mean(sum(fractions[t] for t in tissues), (f, 1, 1)) >= 0.5
    prog.report(0.35, "writing DICOM")

    # 5. DICOM per scan
    scans = []
    for k, (h, day) in enumerate(zip(SCAN_HOURS, SCAN_DAYS), start=1):
        code = f"C{CYCLE}S{k}D{day}"
        acq = INJECTION_TIME + timedelta(hours=h)
        acq = acq.replace(microsecond=0)
        ct_time = acq + timedelta(seconds=ACQUISITION_DURATION_S + 60)
        study = StudyInfo(study_instance_uid=_uid(seed, fast, f"scan{k} study"), study_datetime=acq,
                          study_id=str(k), description=f"Lu177 DOTATATE SPECT/CT {code}",
                          accession_number=f"SYN{k:04d}")
        frame = _uid(seed, fast, f"scan{k} frame")
        ct_hu = hu + (rng.normal(0.0, CT_NOISE_HU, size=hu.shape) if noise else 0.0)
        ct_image = ct_grid.image(ct_hu.astype(np.float32))
        ct_series = SeriesInfo("CT", series_instance_uid=_uid(seed, fast, f"scan{k} ct"), series_number=2,
                               description=f"{code} CT Abdomen", frame_of_reference_uid=frame,
                               series_datetime=ct_time)
        ct_ref = write_ct_series(ct_image, out / "SPECT_Cts" / f"scan{k}" / "ct", patient, study, ct_series,
                                 acquisition_datetime=ct_time)
        spect_series = SeriesInfo("PT" if spect_format == "pt_slices" else "NM",
                                  series_instance_uid=_uid(seed, fast, f"scan{k} spect"), series_number=1,
                                  description=f"{code} Lu177 SPECT xSPECT Quant", frame_of_reference_uid=frame,
                                  series_datetime=acq)
        timing = dict(acquisition_datetime=acq, duration_s=ACQUISITION_DURATION_S,
                      injected_activity_bq=INJECTED_ACTIVITY_BQ, injection_datetime=INJECTION_TIME, nuclide=nuclide)
        spect_dir = out / "SPECT_Cts" / f"scan{k}" / "spect"
        if spect_format == "pt_slices":
            write_pt_slices(spect_images[k - 1], spect_dir, patient, study, spect_series, decay_correction="ADMIN",
                            **timing)
        else:
            write_nm_multiframe(spect_images[k - 1], spect_dir / "SPECT_NM.dcm", patient, study, spect_series,
                                decay_correction="NONE", equipment=SIEMENS_NM, **timing)
        for kind, folder, label, number in (("organ", "organs", "Organs", 100), ("lesion", "lesions", "Lesions", 101)):
            names = [v for v, (kd, _t) in VOIS.items() if kd == kind]
            write_rtstruct(out / "VOIs" / f"scan{k}" / folder / f"RTSTRUCT_{folder}.dcm",
                           {v: masks[v] for v in names}, ct_image, ct_ref, patient, study,
                           colors={v: _COLORS[v] for v in names},
                           roi_types={v: "ORGAN" if kind == "organ" else "GTV" for v in names},
                           label=label, series_description=f"{code} {label}", series_number=number)
        scans.append({"index": k, "code": code, "acquisition_time": acq.isoformat(), "hours_post_injection": h,
                      "day": day, "duration_s": ACQUISITION_DURATION_S,
                      "study_instance_uid": study.study_instance_uid, "frame_of_reference_uid": frame})
        prog.report(0.35 + 0.55 * k / len(SCAN_HOURS), f"wrote scan {k} ({code})")

    # 6. truth
    _write_truth(out, seed, fast, noise, fwhm, sensitivity_cps_per_mbq, spect_format, spect_grid, fine, ct_grid,
                 volume_ml, curves, tissue_activity, scans, nuclide, kinetics=kin, patient=patient)
    tia_map = sum((curves[n].tia_bq_s() / volume_ml[n]) * block_mean(frac, (f, f, f))
                  for n, frac in activity_fractions.items())
    sitk.WriteImage(spect_grid.image(tia_map.astype(np.float32)), str(out / "truth_tia.nrrd"), True)
    prog.report(1.0, "synthetic patient written")
    return out


def _write_truth(out: Path, seed, fast, noise, fwhm, sensitivity, spect_format, spect_grid, fine, ct_grid,
                 volume_ml, curves, tissue_activity, scans, nuclide, kinetics=TISSUE_KINETICS,
                 patient=PATIENT) -> None:
    e_j = nuclide.electron_energy_j
    vois = {}
    for voi, (kind, tissues) in VOIS.items():
        vol = sum(volume_ml[t] for t in tissues)
        mass_g = sum(volume_ml[t] * TISSUES[t].density_g_per_ml for t in tissues)
        curve = curves[tissues[0]]
        for t in tissues[1:]:
            curve = curve + curves[t]
        tia = curve.tia_bq_s()
        model = (kinetics[tissues[0]].to_dict(nuclide) if len(tissues) == 1 else
                 dict(curve.to_dict(), model="sum of the uptake-washout curves of " + ", ".join(tissues)))
        vois[voi] = {"kind": kind, "tissues": list(tissues), "volume_ml": vol, "mass_g": mass_g,
                     "activity_bq": [float(sum(tissue_activity[t][k] for t in tissues)) for k in range(len(scans))],
                     "tac_model": model, "tia_bq_s": tia,
                     "mean_dose_gy_electrons": tia * e_j / (mass_g / 1000.0)}
    fov_total = [float(sum(a[k] for a in tissue_activity.values())) for k in range(len(scans))]
    injected_decayed = [INJECTED_ACTIVITY_BQ * nuclide.decay_factor(h * 3600.0) for h in SCAN_HOURS]
    truth = {
        "patient_id": patient.patient_id,
        "injected_activity_bq": INJECTED_ACTIVITY_BQ,
        "injection_time": INJECTION_TIME.isoformat(),
        "radionuclide": nuclide.name,
        "cycle": CYCLE,
        "time_points": scans,
        "simulation": {
            "fwhm_mm": fwhm, "fine_spacing_mm": list(fine.spacing), "spect_spacing_mm": list(spect_grid.spacing),
            "spect_size": list(spect_grid.size), "ct_spacing_mm": list(ct_grid.spacing), "ct_size": list(ct_grid.size),
            "noise": bool(noise), "seed": int(seed), "fast": bool(fast),
            "sensitivity_cps_per_mbq": float(sensitivity), "acquisition_duration_s": ACQUISITION_DURATION_S,
            "spect_format": spect_format, "spect_values": "Bq/mL at the acquisition start (PT: decay-corrected "
                                                          "to the administration, DecayCorrection ADMIN)",
            "noise_model": "Poisson counts per SPECT voxel with mean C*V*S*T (not reconstructed-image noise); "
                           f"CT: Gaussian {CT_NOISE_HU} HU",
            "dose_model": "local deposition of the ICRP 107 mean electron energy per decay; photons and "
                          "cross-dose neglected",
            "electron_energy_j_per_decay": e_j,
        },
        "vois": vois,
        "remainder": {"tissues": list(_REMAINDER_TISSUES), "volume_ml": volume_ml["remainder"],
                      "activity_bq": [float(v) for v in tissue_activity["remainder"]],
                      "tac_model": kinetics["remainder"].to_dict(nuclide),
                      "tia_bq_s": curves["remainder"].tia_bq_s()},
        "fov_total_activity_bq": fov_total,
        "injected_activity_decayed_bq": injected_decayed,
    }
    write_json(out / "truth.json", truth)
