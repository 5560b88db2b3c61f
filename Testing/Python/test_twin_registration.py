"""Registration on the fast digital twin: known motion recovered, propagated VOIs, reference-only TIA.

The twin (LuDosimetryLib.phantom.write_twin) poses every session with a known rigid motion plus a
breathing-like deformation (truth.json); time point 1 is the identity. A scan-1 point x is seen at
time point k at M_k⁻¹(x): r = x + u(r) (breathing, fixed point), p = c + R (r − c) + t.
"""
from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import SimpleITK as sitk

from LuDosimetryLib.io.images import read_spect
from LuDosimetryLib.phantom.motion import BREATHING_SIGMA_MM, DIAPHRAGM_Z_MM, Motion
from LuDosimetryLib.pipeline import RunOptions, _masks_for_time_point, run_study
from LuDosimetryLib.pvc import image_fwhm_mm
from LuDosimetryLib.registration import dice, propagate_masks

try:  # share the fast twin written by test_twin.py when both run in one session
    from test_twin import cached_twin
except ImportError:  # pragma: no cover - test_twin absent or renamed
    _OWN = {}

    def cached_twin(tmp_path_factory, preset, seed):
        from LuDosimetryLib.phantom import write_twin
        if (preset, seed) not in _OWN:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                _OWN[(preset, seed)] = write_twin(tmp_path_factory.mktemp("twin_reg"), preset=preset, seed=seed,
                                                  fast=True, projections=False)
        return _OWN[(preset, seed)]


def _true_position(motion_doc: dict, x) -> np.ndarray:
    """M⁻¹(x) (mm) for the motion recorded in truth.json."""
    d = motion_doc["deformation"]
    assert d["diaphragm_z_mm"] == DIAPHRAGM_Z_MM and d["sigma_mm"] == BREATHING_SIGMA_MM
    m = Motion(tuple(motion_doc["translation_mm"]), tuple(motion_doc["rotation_deg"]),
               tuple(motion_doc["pivot_mm"]), float(d["amplitude_mm"]))
    x = np.asarray(x, dtype=float)
    r = x.copy()
    for _ in range(60):
        w = m.breathing_mm * np.exp(-((r[2] - DIAPHRAGM_Z_MM) ** 2) / (2.0 * BREATHING_SIGMA_MM ** 2))
        r = x + w * np.array([0.0, 0.3, 1.0])
    return np.array(m.rigid_from_anatomy(*r))


@pytest.fixture(scope="module")
def twin(tmp_path_factory):
    return cached_twin(tmp_path_factory, "patient4", 1)


@pytest.fixture(scope="module")
def truth(twin):
    return json.loads((twin / "truth.json").read_text())


@pytest.fixture(scope="module")
def runs(twin, truth):
    """(per-time-point VOIs, reference-only VOIs with rigid registration), both with GTM PVC."""
    sim = truth["simulation"]
    base = dict(pvc="gtm", psf_fwhm_mm=image_fwhm_mm(sim["fwhm_mm"], sim["spect_spacing_mm"][0]), dose_method="ldm")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        own = run_study(twin, RunOptions(**base))
        ref_only = run_study(twin, RunOptions(registration="rigid", vois="reference-only", **base))
    return own, ref_only


def _masks(res, k):
    inv = res.inventory
    sp = read_spect(inv.get(res.time_points[k].spect_series_uid).files, injection_time=inv.injection_time)
    masks, _ = _masks_for_time_point(inv, k, sp, 3)
    return sp.image, {n: m >= 0.5 for n, m in masks.items()}


def test_rigid_registration_recovers_known_motion(runs, truth):
    """Every organ centroid of scan 1 is mapped to its true position at each later time point within a quarter
    of a SPECT voxel (9.6 mm here) and, on average, within 1.2 mm; the motion applied is several mm."""
    _own, res = runs
    assert sorted(res.registrations) == [1, 2, 3]
    ref_img, masks = _masks(res, 0)
    voxel = truth["simulation"]["spect_spacing_mm"][0]
    organs = [n for n, v in truth["vois"].items() if v["kind"] == "organ"]
    tres, applied = [], []
    for k in (1, 2, 3):
        reg = res.registrations[k]
        for name in organs:
            idx = np.argwhere(masks[name]).mean(axis=0)[::-1]
            c = np.array(ref_img.TransformContinuousIndexToPhysicalPoint([float(v) for v in idx]))
            true_p = _true_position(truth["time_points"][k]["motion"], c)
            applied.append(np.linalg.norm(true_p - c))
            tres.append(np.linalg.norm(np.array(reg.map_point(c, voi=name)) - true_p))
    assert np.mean(applied) > 6.0  # the identity would fail the checks below
    # a quarter of a SPECT voxel: with the 15 mm shell of the per-VOI refinement (before 8 mm) a kidney's
    # correction followed the liver and spleen next to it, up to 4.3 mm off on this twin
    assert max(tres) < voxel / 4, tres
    assert np.mean(tres) < 1.2, tres


def test_propagated_vois_overlap_own_contours(runs, truth):
    """Scan-1 organs carried to time point 2 overlap its own contours (Dice ≥ 0.88 on 9.6 mm voxels) and
    better than without registration."""
    _own, res = runs
    ref_img, ref_masks = _masks(res, 0)
    img2, own2 = _masks(res, 1)
    moved = propagate_masks(ref_masks, ref_img, res.registrations[1], img2)
    for name in (n for n, v in truth["vois"].items() if v["kind"] == "organ"):
        unregistered = sitk.GetArrayFromImage(sitk.Resample(_as_image(ref_masks[name], ref_img), img2,
                                                            sitk.Transform(), sitk.sitkLinear, 0.0)) >= 0.5
        d_reg, d_none = dice(moved[name], own2[name]), dice(unregistered, own2[name])
        assert d_reg >= 0.88, (name, d_reg)
        assert d_reg > d_none, (name, d_reg, d_none)


def _as_image(mask, like):
    img = sitk.GetImageFromArray(np.asarray(mask, dtype=np.float32))
    img.CopyInformation(like)
    return img


def test_reference_only_tia_matches_per_time_point_run(runs, truth):
    """Organ TIA from scan-1 contours propagated by the registration is within 10 % of the run with each
    time point's own contours, and both within 10 % of the truth."""
    own, ref_only = runs
    assert own.registrations == {} and len(ref_only.registrations) == 3
    for name, t in truth["vois"].items():
        if t["kind"] != "organ":
            continue
        a, b = ref_only.vois[name].tia_bq_s, own.vois[name].tia_bq_s
        assert abs(a / b - 1.0) < 0.10, (name, a / b)
        assert abs(a / t["tia_bq_s"] - 1.0) < 0.10, (name, a / t["tia_bq_s"])
        assert abs(b / t["tia_bq_s"] - 1.0) < 0.10, (name, b / t["tia_bq_s"])
    # the propagated masks really differ from the reference ones (the time points moved)
    assert ref_only.vois["Liver"].activity_bq != own.vois["Liver"].activity_bq
