"""Digital twin of the University of Michigan Deep Blue Lu-177 DOTATATE collection (issue #4).

:func:`write_twin` writes one patient (preset ``patient4`` or ``patient6``) as the collection's six works:

``patient_N/Pretherapy/{pet,pet_ct,diagnostic_ct}/``
    Ga-68 DOTATATE PET (PT, Bq/mL, DecayCorrection START, SUV-ready) with its CT, and a contrast CT,
    months before the therapy, in another pose and with smaller lesions.
``patient_N/Planar/scan{k}/``
    Whole-body anterior/posterior views in the photopeak and two scatter windows (6 NM files per scan).
``patient_N/SPECT_Cts/scan{k}/{spect,ct}/``
    Reconstructed SPECT (PT slices, MIM style, ADMIN decay correction; patient 6 scan 2 has one slice
    tagged NM) and its CT, in that session's pose.
``patient_N/VOIs/scan{k}/{organs,lesions,organ_masks,lesion_masks}/``
    RTSTRUCTs drawn on that session's CT and DICOM SEG (BINARY) masks of the same structures.
``patient_N/TIA/``
    TIA map (Bq·s/mL) on the scan-1 SPECT grid: time points rigidly registered to scan 1, voxel-level
    fits (:mod:`.voxel_tia`).
``patient_N/Projections/scan{k}/{unaltered,reformatted,advanced,mumap_xspect,mumap_f3d}/``
    Only when :mod:`LuDosimetryLib.recon` (the system model of the simulator, :mod:`.projections`) is
    available (else skipped with a warning).

plus ``patient_N/truth.json`` and ``patient_N/truth_tia.nrrd`` (true TIA per mL in the scan-1 pose on the
SPECT grid). Image formation of SPECT/CT is that of :mod:`.study` (fine-grid occupancy, 10 mm Gaussian
blur, count-level Poisson noise), applied to the anatomy in each session's pose (:mod:`.motion`).
"""
from __future__ import annotations

import json
import math
import os
import warnings
from datetime import datetime, timedelta
from pathlib import Path
from typing import Dict

import numpy as np
import SimpleITK as sitk
from scipy.ndimage import gaussian_filter, map_coordinates

from ..errors import OutputError
from ..io.dicom_common import PatientInfo, SeriesInfo, StudyInfo, derived_uid
from ..io.rtstruct import write_rtstruct
from ..progress import as_progress
from ..radionuclides import radionuclide
from .anatomy import Grid, Structure, Superellipsoid, block_mean
from .dicom.pet_writer import write_pet_series
from .dicom.planar_writer import write_planar_view
from .dicom.seg_writer import write_seg
from .dicom.slice_writer import write_ct_series, write_pt_slices
from .dicom.twin_tia_writer import write_tia_map
from .dicom.vendor import SIEMENS_NM
from .marrow_truth import red_marrow_truth, write_blood_samples
from .motion import Motion, rasterise_posed
from .planar import WINDOWS_KEV, mu_per_mm, simulate_planar
from .presets import TwinPreset, get_preset, tissue
from .voxel_tia import voxel_tia

SPECT_VOXEL_MM = 4.7952
FWHM_MM = 10.0
SENSITIVITY_CPS_PER_MBQ = 10.0
ACQUISITION_DURATION_S = 1200.0
CT_NOISE_HU = 10.0
#: Whole-body sweep: 12 cm/min over the 38.7 cm axial field of view → each point is seen 193.5 s.
WB_SPEED_MM_PER_S = 2.0
WB_DWELL_S = 387.0 / WB_SPEED_MM_PER_S
#: The planar whole body of each session is acquired this long before its SPECT (h).
PLANAR_LEAD_H = 35.0 / 60.0
#: Ga-68 DOTATATE PET: 150 MBq (typical 100-200 MBq), scan 60 min p.i., 3 min per bed; SUVmean per tissue
#: of the order of those reported for Ga-68 DOTA-peptides (spleen > kidneys > liver; tumours high;
#: Kroiss et al., Eur J Nucl Med Mol Imaging 2013;40:514-523).
PET_ACTIVITY_BQ = 150e6
PET_UPTAKE_MIN = 60.0
PET_SUV = {"spleen": 22.0, "kidney_left": 12.0, "kidney_right": 12.0, "liver": 7.0, "remainder": 0.8,
           "lesion": 35.0}
PET_FWHM_MM = 6.0
#: Contrast enhancement (portal venous phase, HU added) of the diagnostic CT.
CONTRAST_HU = {"liver": 55.0, "spleen": 70.0, "kidney_left": 140.0, "kidney_right": 140.0, "lesion": 90.0}

_COLORS = {"Liver": (221, 130, 101), "Kidney_L": (185, 102, 83), "Kidney_R": (185, 102, 83),
           "Spleen": (157, 108, 162)}
_REMAINDER = ("fat", "soft_tissue", "bone")


def _concentration_map(curves, hours_h: float, volume_ml, fractions, tissues, remainder_fraction) -> np.ndarray:
    """Activity concentration (Bq/mL) on the fine grid at ``hours_h`` after injection: each tissue's curve spread
    uniformly over its volume (its voxel fractions ``fractions``), the remainder's over ``remainder_fraction``."""
    conc = {n: curves[n].activity_bq(hours_h) / volume_ml[n] for n in curves}
    return sum(float(conc[n]) * fractions[n] for n in tissues) + float(conc["remainder"]) * remainder_fraction


def _grids(fast: bool):
    spacing, size = (2 * SPECT_VOXEL_MM, (48, 40, 26)) if fast else (SPECT_VOXEL_MM, (96, 80, 52))
    centre = (0.0, 10.0, 15.0)
    origin = tuple(c - (n - 1) / 2.0 * spacing for c, n in zip(centre, size))
    spect = Grid(origin, (spacing,) * 3, size)
    return spect, spect.refined((2, 2, 2))


def _hu(fractions: Dict[str, np.ndarray], contrast: bool = False) -> np.ndarray:
    out = np.zeros(next(iter(fractions.values())).shape, dtype=np.float32)
    for name, frac in fractions.items():
        hu = tissue(name).hu if name != "air" else -1000.0
        if contrast:
            hu += CONTRAST_HU.get("lesion" if name.startswith("lesion") else name, 0.0)
        out += frac * np.float32(hu)
    return out


def _density(fractions: Dict[str, np.ndarray]) -> np.ndarray:
    out = np.zeros(next(iter(fractions.values())).shape, dtype=np.float32)
    for name, frac in fractions.items():
        out += frac * np.float32(tissue(name).density_g_per_ml if name != "air" else 0.0012)
    return out


def _smaller_lesions(structures, factor: float):
    out = []
    for s in structures:
        if s.tissue.startswith("lesion_"):
            parts = tuple(Superellipsoid(p.center, tuple(r * factor for r in p.radii), p.exponent, p.rotation_deg)
                          for p in s.parts)
            out.append(Structure(s.tissue, parts, s.cuts))
        else:
            out.append(s)
    return out


class _Ids:
    def __init__(self, preset: TwinPreset, seed: int, fast: bool):
        self.base = f"LuDosimetry twin {preset.name} seed={seed} fast={fast}"

    def __call__(self, what: str) -> str:
        return derived_uid(f"{self.base} {what}")


def projection_writers():
    """(write_projection_series, write_mumap_series) (:mod:`.projections`, :mod:`LuDosimetryLib.recon.mumap`),
    or None when the reconstruction package is absent."""
    try:
        from ..recon.mumap import write_mumap_series
        from .projections import write_projection_series
    except Exception:  # the recon package is optional (written by another issue)
        return None
    return write_projection_series, write_mumap_series


def write_twin(out_dir: os.PathLike, preset: str = "patient4", seed: int = 0, fast: bool = False,
               progress=None, projections: bool = True) -> Path:
    """Write the digital twin of one collection patient.

    Parameters
    ----------
    out_dir : path-like
        Parent folder; the patient goes to ``out_dir/patient_4`` or ``out_dir/patient_6``.
    preset : {"patient4", "patient6"}
    seed : int
        Seed of all noise; output (UIDs included) is deterministic per (preset, seed, fast).
    fast : bool
        9.59 mm SPECT voxels and fewer projection views (tests).
    progress : callable or Progress, optional
    projections : bool
        Write work 6 when the projection simulator is available.

    Returns
    -------
    pathlib.Path
        The patient folder.
    """
    p = get_preset(preset)
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise OutputError("exists and is not a folder", out)
    root = out / p.folder
    root.mkdir(parents=True, exist_ok=True)
    prog = as_progress(progress)
    nuclide = radionuclide("Lu-177")
    rng = np.random.default_rng(seed)
    ids = _Ids(p, seed, fast)
    spect_grid, fine = _grids(fast)
    f = 2
    ct_grid = Grid((fine.origin[0], fine.origin[1], spect_grid.origin[2]),
                   (fine.spacing[0], fine.spacing[1], spect_grid.spacing[2]),
                   (fine.size[0], fine.size[1], spect_grid.size[2]))
    hours = np.asarray(p.scan_hours, dtype=float)
    curves = {name: m.as_sum(nuclide) for name, m in p.kinetics.items()}
    tissues = [n for n in p.kinetics if n != "remainder"]
    n_scans = len(hours)
    stages = 2 + n_scans
    step = [0]

    def tick(msg):
        step[0] += 1
        prog.report(min(step[0] / (stages * 2.0), 0.99), msg)

    sigma_vox = [FWHM_MM / (2.0 * math.sqrt(2.0 * math.log(2.0))) / s for s in fine.spacing[::-1]]
    cpbq = spect_grid.voxel_ml * SENSITIVITY_CPS_PER_MBQ * 1e-6 * ACQUISITION_DURATION_S
    scans, spect_images, volumes_tp, frac_tp1, vois_ml_tp = [], [], [], None, []
    recon = projection_writers() if projections else None
    if projections and recon is None:
        warnings.warn("LuDosimetryLib.recon (projection simulator) is not available: work 6 (SPECT projections "
                      "and mu-maps) was skipped")
    for k in range(1, n_scans + 1):
        motion = p.motions[k - 1]
        code = p.code(k)
        fr = rasterise_posed(p.structures, fine, motion, supersample=2)
        vol = {n: float(v.sum(dtype=np.float64)) * fine.voxel_ml for n, v in fr.items()}
        vol["remainder"] = sum(vol[n] for n in _REMAINDER)
        remainder_frac = sum(fr[n] for n in _REMAINDER)
        act_fine = _concentration_map(curves, hours[k - 1], vol, fr, tissues, remainder_frac)
        img = block_mean(gaussian_filter(act_fine, sigma_vox, mode="nearest", truncate=3.0), (f, f, f))
        img = rng.poisson(np.clip(img, 0, None) * cpbq) / cpbq
        spect = spect_grid.image(img.astype(np.float32))
        spect_images.append(spect)
        volumes_tp.append(vol)
        if k == 1:
            frac_tp1 = fr
        tick(f"scan {k}: images")
        # DICOM
        acq = (p.injection_time + timedelta(hours=float(hours[k - 1]))).replace(microsecond=0)
        ct_time = acq + timedelta(seconds=ACQUISITION_DURATION_S + 60)
        study = StudyInfo(study_instance_uid=ids(f"scan{k} study"), study_datetime=acq, study_id=str(k),
                          description=f"Lu177 DOTATATE SPECT/CT {code}", accession_number=f"TW{k:04d}")
        frame = ids(f"scan{k} frame")
        hu = block_mean(_hu(fr), (f, 1, 1)) + rng.normal(0.0, CT_NOISE_HU, size=ct_grid.shape)
        ct_image = ct_grid.image(hu.astype(np.float32))
        ct_ref = write_ct_series(ct_image, root / "SPECT_Cts" / f"scan{k}" / "ct", p.patient, study,
                                 SeriesInfo("CT", ids(f"scan{k} ct"), 2, f"{code} CT Abdomen", frame, ct_time),
                                 acquisition_datetime=ct_time)
        timing = dict(acquisition_datetime=acq, duration_s=ACQUISITION_DURATION_S,
                      injected_activity_bq=p.injected_activity_bq, injection_datetime=p.injection_time,
                      nuclide=nuclide)
        stray = (spect_grid.size[2] // 2) if (p.name == "patient6" and k == 2) else None
        write_pt_slices(spect, root / "SPECT_Cts" / f"scan{k}" / "spect", p.patient, study,
                        SeriesInfo("PT", ids(f"scan{k} spect"), 1, f"{code} Lu177 SPECT xSPECT Quant", frame, acq),
                        decay_correction="ADMIN", stray_nm_slice_index=stray, **timing)
        masks = {v: block_mean(sum(fr[t] for t in ts), (f, 1, 1)) >= 0.5 for v, (_k, ts) in p.vois.items()}
        vois_ml_tp.append({v: float(m.sum()) * ct_grid.voxel_ml for v, m in masks.items()})
        for kind, folder, label, number in (("organ", "organs", "Organs", 100), ("lesion", "lesions", "Lesions", 101)):
            names = [v for v, (kd, _t) in p.vois.items() if kd == kind]
            if not names:
                continue
            write_rtstruct(root / "VOIs" / f"scan{k}" / folder / f"RTSTRUCT_{folder}.dcm",
                           {v: masks[v] for v in names}, ct_image, ct_ref, p.patient, study,
                           colors={v: _COLORS.get(v, (255, 200, 0)) for v in names},
                           roi_types={v: "ORGAN" if kind == "organ" else "GTV" for v in names},
                           label=label, series_description=f"{code} {label}", series_number=number)
            write_seg(root / "VOIs" / f"scan{k}" / f"{kind}_masks" / f"SEG_{kind}_masks.dcm",
                      {v: masks[v] for v in names}, ct_image, ct_ref, p.patient, study,
                      SeriesInfo("SEG", ids(f"scan{k} seg {kind}"), number + 10, f"{code} {label} Boolean masks",
                                 frame, ct_time), kind=kind, content_label=f"{label} masks", content_datetime=ct_time)
        # Planar whole body (same session, before the SPECT)
        density = _density(fr)
        mu = mu_per_mm(density)
        wb_time = acq - timedelta(hours=PLANAR_LEAD_H)
        # the activity at the planar time: the kinetics (uptake and washout, not only decay) PLANAR_LEAD_H earlier
        act_wb = _concentration_map(curves, hours[k - 1] - PLANAR_LEAD_H, vol, fr, tissues, remainder_frac)
        counts = simulate_planar(act_wb * fine.voxel_ml, mu, fine.spacing, WB_DWELL_S, rng)
        top = (fine.origin[0], fine.origin[1], fine.origin[2] + (fine.size[2] - 1) * fine.spacing[2])
        # the posterior view is seen from behind: its first column is the patient's far left (+x)
        top_post = (fine.origin[0] + (fine.size[0] - 1) * fine.spacing[0],) + top[1:]
        n_img = 0
        for (view, window), cnt in sorted(counts.items()):
            n_img += 1
            write_planar_view(cnt, root / "Planar" / f"scan{k}" / f"WB_{view[:3]}_{window}.dcm", p.patient, study,
                              SeriesInfo("NM", ids(f"scan{k} planar"), 20, f"{code} Lu177 WB Planar"),
                              view=view, window_name=window, window_kev=WINDOWS_KEV[window],
                              pixel_spacing_mm=(fine.spacing[2], fine.spacing[0]), acquisition_datetime=wb_time,
                              duration_s=fine.size[2] * fine.spacing[2] / WB_SPEED_MM_PER_S + WB_DWELL_S,
                              scan_length_mm=fine.size[2] * fine.spacing[2], scan_velocity_mm_per_s=WB_SPEED_MM_PER_S,
                              injected_activity_bq=p.injected_activity_bq, injection_datetime=p.injection_time,
                              image_position_mm=top if view == "ANTERIOR" else top_post, instance_number=n_img)
        # Projections (work 6)
        if recon is not None:
            _write_projections(recon, root, k, code, act_fine, mu, fine, acq, p, study, frame, seed, fast, prog)
        scans.append({"index": k, "code": code, "acquisition_time": acq.isoformat(),
                      "hours_post_injection": float(hours[k - 1]), "day": p.scan_days[k - 1],
                      "duration_s": ACQUISITION_DURATION_S, "planar_time": wb_time.isoformat(),
                      "study_instance_uid": study.study_instance_uid, "frame_of_reference_uid": frame,
                      "motion": motion.to_dict(), "voi_volume_ml_on_ct": vois_ml_tp[-1]})
        tick(f"scan {k}: written")

    # 5. TIA map: rigid registration of every time point to scan 1, voxel-level fits.
    stack = [sitk.GetArrayFromImage(spect_images[0]).astype(np.float64)]
    for k in range(2, n_scans + 1):
        stack.append(_register_to_reference(spect_images[k - 1], spect_grid, p.motions[k - 1], p.motions[0]))
    tia = voxel_tia(np.stack(stack), hours, nuclide.decay_constant_per_s)
    acq1 = (p.injection_time + timedelta(hours=float(hours[0]))).replace(microsecond=0)
    study1 = StudyInfo(study_instance_uid=ids("scan1 study"), study_datetime=acq1, study_id="1",
                       description=f"Lu177 DOTATATE SPECT/CT {p.code(1)}", accession_number="TW0001")
    write_tia_map(spect_grid.image(tia), root / "TIA" / "TIA_map.dcm", p.patient, study1,
                  SeriesInfo("NM", ids("tia"), 50, f"{p.code(1)} TIA map Bq*s/ml (MIM MRT)", ids("scan1 frame"), acq1),
                  reference_acquisition_datetime=acq1, injected_activity_bq=p.injected_activity_bq,
                  injection_datetime=p.injection_time)
    tick("TIA map")
    # 1. Pre-therapy diagnostic imaging
    _write_pretherapy(root, p, fine, spect_grid, ct_grid, ids, rng, fast)
    tick("pre-therapy PET/CT and CT")
    # Truth
    vol1 = volumes_tp[0]
    remainder1 = sum(frac_tp1[n] for n in _REMAINDER)
    true_tia = sum((curves[n].tia_bq_s() / vol1[n]) * block_mean(frac_tp1[n], (f, f, f)) for n in tissues)
    true_tia = true_tia + (curves["remainder"].tia_bq_s() / vol1["remainder"]) * block_mean(remainder1, (f, f, f))
    sitk.WriteImage(spect_grid.image(true_tia.astype(np.float32)), str(root / "truth_tia.nrrd"), True)
    write_blood_samples(root, curves, volumes_tp[0], seed)
    _write_truth(root, p, seed, fast, spect_grid, fine, curves, volumes_tp, scans, nuclide, recon is not None)
    prog.report(1.0, f"twin {p.name} written")
    return root


def _register_to_reference(image: sitk.Image, grid: Grid, motion: Motion, ref_motion: Motion) -> np.ndarray:
    """Resample a time point onto the reference grid with the rigid part of the known motion (the
    deformation is left as a residual, as a rigid SPECT alignment would)."""
    z, y, x = np.meshgrid(grid.axis(2), grid.axis(1), grid.axis(0), indexing="ij")
    rx, ry, rz = ref_motion.rigid_to_anatomy(x, y, z)
    px, py, pz = motion.rigid_from_anatomy(rx, ry, rz)
    idx = [(pz - grid.origin[2]) / grid.spacing[2], (py - grid.origin[1]) / grid.spacing[1],
           (px - grid.origin[0]) / grid.spacing[0]]
    arr = sitk.GetArrayFromImage(image).astype(np.float64)
    return map_coordinates(arr, idx, order=1, mode="nearest")


def _write_projections(recon, root, k, code, act_fine, mu, fine, acq, p, study, frame, seed, fast, prog,
                       n_views=None, matrix=None):
    """Work 6 through :mod:`LuDosimetryLib.recon`: one simulated acquisition written in the three forms,
    each moved into its own folder, plus the xSPECT (256²) and Flash3D (128²) mu-maps."""
    write_projection_series, write_mumap_series = recon
    # The activity and mu on the twin's fine grid (2x finer than its SPECT voxels; 4.8 mm fast, 2.4 mm
    # full): the simulator projects on a grid `oversample` (2) times finer than the projection pixels
    # (9.6 mm fast, 4.8 mm full), i.e. this very grid, so no reconstruction grid is as fine as the object.
    act_img = fine.image(act_fine.astype(np.float32))
    mu_img = fine.image(mu.astype(np.float32))
    base = root / "Projections" / f"scan{k}"
    tmp = base / ".simulated"
    forms = ("unaltered", "reformatted", "advanced")
    paths = write_projection_series(tmp, act_img, mu_img, acquisition_datetime=acq,
                                    duration_s=ACQUISITION_DURATION_S, injected_activity_bq=p.injected_activity_bq,
                                    injection_datetime=p.injection_time, patient=p.patient, study=study,
                                    series_description=f"{code} Lu177 SPECT Tomo", forms=forms,
                                    n_views=n_views or (32 if fast else 120),
                                    matrix=matrix or (64 if fast else 128), seed=seed + 1000 * k,
                                    oversample=2, frame_of_reference_uid=frame, progress=None)
    for form, path in zip(forms, paths):
        (base / form).mkdir(parents=True, exist_ok=True)
        os.replace(str(path), str(base / form / Path(path).name))
    try:
        tmp.rmdir()
    except OSError:
        pass
    write_mumap_series(base / "mumap_xspect", mu_img, 256, p.patient, study, f"{code} mumap xSPECT", frame,
                       equipment=SIEMENS_NM)
    write_mumap_series(base / "mumap_f3d", mu_img, 128, p.patient, study, f"{code} mumap F3D", frame,
                       equipment=SIEMENS_NM)


def _write_pretherapy(root: Path, p: TwinPreset, fine: Grid, spect_grid: Grid, ct_grid: Grid, ids, rng, fast):
    ga = radionuclide("Ga-68")
    structures = _smaller_lesions(p.structures, 0.9)
    fr = rasterise_posed(structures, fine, p.pretherapy_motion, supersample=2)
    when_inj = datetime.combine((p.injection_time - timedelta(days=p.pretherapy_days_before)).date(),
                                datetime.min.time()).replace(hour=8, minute=40)
    pet_start = when_inj + timedelta(minutes=PET_UPTAKE_MIN)
    weight_g = p.patient.weight_kg * 1000.0
    bq_per_ml_suv1 = PET_ACTIVITY_BQ * ga.decay_factor(PET_UPTAKE_MIN * 60.0) / weight_g
    act = np.zeros(fine.shape, dtype=np.float32)
    for name, frac in fr.items():
        if name == "air":
            continue
        key = "lesion" if name.startswith("lesion") else name if name in PET_SUV else "remainder"
        act += frac * np.float32(PET_SUV[key] * bq_per_ml_suv1)
    sig = [PET_FWHM_MM / (2.0 * math.sqrt(2.0 * math.log(2.0))) / s for s in fine.spacing[::-1]]
    pet = block_mean(gaussian_filter(act, sig, mode="nearest"), (2, 2, 2))
    # Count-level noise: 100 counts per voxel at SUV 1 (10 % relative noise in the background).
    counts_per_bq_ml = 100.0 / bq_per_ml_suv1
    pet = rng.poisson(np.clip(pet, 0, None) * counts_per_bq_ml) / counts_per_bq_ml
    study = StudyInfo(ids("pet study"), pet_start, "P1", "Ga68 DOTATATE PET/CT pretherapy", "TWP001")
    frame = ids("pet frame")
    patient = PatientInfo(**vars(p.patient))
    write_pet_series(spect_grid.image(pet.astype(np.float32)), root / "Pretherapy" / "pet", patient, study,
                     SeriesInfo("PT", ids("pet"), 3, "Pretherapy PET Ga68 DOTATATE WB AC", frame, pet_start),
                     acquisition_datetime=pet_start, duration_s=180.0, injected_activity_bq=PET_ACTIVITY_BQ,
                     injection_datetime=when_inj)
    hu = block_mean(_hu(fr), (2, 1, 1)) + rng.normal(0.0, 15.0, size=ct_grid.shape)
    ct_time = pet_start - timedelta(minutes=2)
    write_ct_series(ct_grid.image(hu.astype(np.float32)), root / "Pretherapy" / "pet_ct", patient, study,
                    SeriesInfo("CT", ids("pet ct"), 2, "Pretherapy PET/CT CTAC 3mm", frame, ct_time),
                    acquisition_datetime=ct_time, kvp=120.0)
    # Diagnostic contrast CT, a week later, another pose.
    fr2 = rasterise_posed(structures, fine, Motion(tuple(-v for v in p.pretherapy_motion.translation_mm),
                                                   (0.0, 0.0, -p.pretherapy_motion.rotation_deg[2]),
                                                   breathing_mm=8.0), supersample=2)
    ct_when = when_inj + timedelta(days=7, hours=3)
    study2 = StudyInfo(ids("dx ct study"), ct_when, "D1", "CT Abdomen Pelvis with contrast pretherapy", "TWD001")
    hu2 = block_mean(_hu(fr2, contrast=True), (2, 1, 1)) + rng.normal(0.0, 12.0, size=ct_grid.shape)
    write_ct_series(ct_grid.image(hu2.astype(np.float32)), root / "Pretherapy" / "diagnostic_ct", patient, study2,
                    SeriesInfo("CT", ids("dx ct"), 4, "Pretherapy diagnostic CT portal venous", ids("dx frame"), ct_when),
                    acquisition_datetime=ct_when, kvp=120.0)


def _whole_body_truth(p: TwinPreset, curves, vol1) -> dict:
    """``whole_body`` and ``remainder_of_body`` of truth.json from the analytic kinetics: the whole body is every
    tissue the twin simulates (its body is the field of view: nothing outside it holds activity), the remainder of
    body the tissues in no VOI; masses from the scan-1 volumes and the tissue densities."""
    in_vois = {t for _kind, ts in p.vois.values() for t in ts}
    body = [n for n in vol1 if n not in ("air", "remainder")]
    mass = {n: vol1[n] * tissue(n).density_g_per_ml for n in body}
    whole = rest = None
    for name, curve in curves.items():
        whole = curve if whole is None else whole + curve
        if name not in in_vois:
            rest = curve if rest is None else rest + curve
    out = {}
    for key, curve, grams in (("whole_body", whole, sum(mass.values())),
                              ("remainder_of_body", rest, sum(g for n, g in mass.items() if n not in in_vois))):
        out[key] = {"tia_bq_s": curve.tia_bq_s(), "mass_g": grams,
                    "activity_bq": [float(x) for x in curve.activity_bq(p.scan_hours)],
                    "planar_hours": [h - PLANAR_LEAD_H for h in p.scan_hours],
                    "planar_activity_bq": [float(x) for x in curve.activity_bq(np.asarray(p.scan_hours) - PLANAR_LEAD_H)],
                    "tac_model": curve.to_dict(),
                    "definition": "every simulated tissue (the twin's body)" if key == "whole_body" else
                                  "the simulated tissues in no VOI (whole body less the VOIs' tissues)"}
    return out


def _write_truth(root: Path, p: TwinPreset, seed, fast, spect_grid, fine, curves, volumes_tp, scans, nuclide,
                 projections_written: bool) -> None:
    e_j = nuclide.electron_energy_j
    vol1 = volumes_tp[0]
    vois = {}
    for voi, (kind, ts) in p.vois.items():
        curve = curves[ts[0]]
        for t in ts[1:]:
            curve = curve + curves[t]
        mass_g = sum(vol1[t] * tissue(t).density_g_per_ml for t in ts)
        tia = curve.tia_bq_s()
        vois[voi] = {"kind": kind, "tissues": list(ts), "volume_ml": sum(vol1[t] for t in ts), "mass_g": mass_g,
                     "volume_ml_per_time_point": [sum(v[t] for t in ts) for v in volumes_tp],
                     "activity_bq": [float(x) for x in curve.activity_bq(p.scan_hours)],
                    "planar_hours": [h - PLANAR_LEAD_H for h in p.scan_hours],
                    "planar_activity_bq": [float(x) for x in curve.activity_bq(np.asarray(p.scan_hours) - PLANAR_LEAD_H)],
                     "tac_model": dict(curve.to_dict(), tissues=list(ts)),
                     "tia_bq_s": tia, "mean_dose_gy": tia * e_j / (mass_g / 1000.0),
                     "dose_method": "local deposition of the ICRP 107 mean electron energy per decay over the "
                                    "true VOI mass (scan-1 pose); photons and cross-dose neglected"}
    body_truth = _whole_body_truth(p, curves, vol1)
    truth = {
        **body_truth,
        "red_marrow": red_marrow_truth(p.patient.sex, curves, vol1, nuclide, body_truth["whole_body"],
                                       body_truth["remainder_of_body"]),
        "preset": p.name, "patient_id": p.patient.patient_id, "sex": p.patient.sex, "age": p.patient.age,
        "weight_kg": p.patient.weight_kg, "injected_activity_bq": p.injected_activity_bq,
        "injection_time": p.injection_time.isoformat(), "radionuclide": nuclide.name, "cycle": p.cycle,
        "time_points": scans,
        "simulation": {"seed": int(seed), "fast": bool(fast), "fwhm_mm": FWHM_MM,
                       "spect_spacing_mm": list(spect_grid.spacing), "spect_size": list(spect_grid.size),
                       "fine_spacing_mm": list(fine.spacing), "sensitivity_cps_per_mbq": SENSITIVITY_CPS_PER_MBQ,
                       "spect_values": "Bq/mL at acquisition start (PT, DecayCorrection ADMIN)",
                       "tia_map": "TIA/: time points rigidly registered to scan 1 with the known rigid motion "
                                  "(deformation left as residual); voxel fits per LuDosimetryLib.phantom.voxel_tia",
                       "truth_tia_nrrd": "true TIA per mL (Bq*s/mL) in the scan-1 pose on the SPECT grid",
                       "projections_written": projections_written},
        "vois": vois,
        "remainder": {"volume_ml": vol1["remainder"], "tia_bq_s": curves["remainder"].tia_bq_s(),
                      "activity_bq": [float(x) for x in curves["remainder"].activity_bq(p.scan_hours)]},
        "pretherapy": {"motion": p.pretherapy_motion.to_dict(), "lesion_radius_factor": 0.9,
                       "pet_activity_bq": PET_ACTIVITY_BQ, "pet_uptake_min": PET_UPTAKE_MIN, "suv": PET_SUV},
    }
    tmp = root / ".truth.json.tmp"
    tmp.write_text(json.dumps(truth, indent=2))
    os.replace(tmp, root / "truth.json")
