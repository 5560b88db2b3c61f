"""The synthetic patient: files, truth consistency, determinism, and the simulated SPECT against the truth."""
from __future__ import annotations

import json
import math
import subprocess
import time

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from scipy.integrate import quad
from scipy.ndimage import binary_dilation

from conftest import require_tool
from LuDosimetryLib.errors import LuDosimetryError, OutputError
from LuDosimetryLib.io.rtstruct import read_rtstruct
from LuDosimetryLib.phantom import write_synthetic_patient
from LuDosimetryLib.phantom.anatomy import Grid, default_anatomy, rasterise
from LuDosimetryLib.phantom.kinetics_truth import TISSUE_KINETICS
from LuDosimetryLib.radionuclides import radionuclide

LU = radionuclide("Lu-177")


@pytest.fixture(scope="module")
def noise_free(tmp_path_factory):
    out = tmp_path_factory.mktemp("phantom_nf")
    t0 = time.perf_counter()
    calls = []
    write_synthetic_patient(out, fast=True, noise=False, progress=lambda f, m: calls.append(f))
    elapsed = time.perf_counter() - t0
    return out, elapsed, calls


@pytest.fixture(scope="module")
def noisy(tmp_path_factory):
    out = tmp_path_factory.mktemp("phantom_noisy")
    write_synthetic_patient(out, fast=True, seed=3)
    return out


def _truth(out):
    return json.loads((out / "truth.json").read_text())


def _spect_bqml(out, k):
    """SPECT of scan k read with SimpleITK, ADMIN decay correction undone (Bq/mL at the acquisition start)."""
    files = sorted((out / "SPECT_Cts" / f"scan{k}" / "spect").glob("*.dcm"))
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames([str(f) for f in files])
    img = reader.Execute()
    ds = pydicom.dcmread(files[0])
    assert ds.DecayCorrection == "ADMIN"
    lam_d = LU.decay_constant_per_s * float(ds.ActualFrameDuration) / 1000.0
    frame_mean = (1 - math.exp(-lam_d)) / lam_d  # DecayFactor = exp(λΔ) / frame_mean
    return img, sitk.GetArrayFromImage(img).astype(np.float64) / (float(ds.DecayFactor) * frame_mean)


def test_files_present_progress_and_timing(noise_free):
    out, elapsed, calls = noise_free
    assert elapsed < 20.0, f"fast phantom took {elapsed:.1f} s"
    assert calls[0] == 0.0 and calls[-1] == 1.0 and calls == sorted(calls)
    for k in range(1, 5):
        assert len(list((out / "SPECT_Cts" / f"scan{k}" / "ct").glob("*.dcm"))) >= 20
        assert len(list((out / "SPECT_Cts" / f"scan{k}" / "spect").glob("*.dcm"))) >= 20
        assert len(list((out / "VOIs" / f"scan{k}" / "organs").glob("RTSTRUCT*.dcm"))) == 1
        assert len(list((out / "VOIs" / f"scan{k}" / "lesions").glob("RTSTRUCT*.dcm"))) == 1
    assert (out / "truth_tia.nrrd").exists()


def test_scan_identity_and_rtstruct(noise_free):
    out = noise_free[0]
    truth = _truth(out)
    studies = set()
    for tp in truth["time_points"]:
        k = tp["index"]
        ct = pydicom.dcmread(sorted((out / "SPECT_Cts" / f"scan{k}" / "ct").glob("*.dcm"))[0])
        pt = pydicom.dcmread(sorted((out / "SPECT_Cts" / f"scan{k}" / "spect").glob("*.dcm"))[0])
        # Like an Intevo: one study per scan; SPECT and CT share the frame of reference.
        assert ct.StudyInstanceUID == pt.StudyInstanceUID == tp["study_instance_uid"]
        assert ct.FrameOfReferenceUID == pt.FrameOfReferenceUID == tp["frame_of_reference_uid"]
        assert tp["code"] in pt.SeriesDescription and tp["code"] in ct.SeriesDescription
        assert pt.PatientID == "ANON54121" and pt.PatientSex == "M"
        studies.add(ct.StudyInstanceUID)
        organs = read_rtstruct(out / "VOIs" / f"scan{k}" / "organs" / "RTSTRUCT_organs.dcm")
        lesions = read_rtstruct(out / "VOIs" / f"scan{k}" / "lesions" / "RTSTRUCT_lesions.dcm")
        assert organs.names == ["Liver", "Kidney_L", "Kidney_R", "Spleen"]
        assert lesions.names == ["Lesion_1", "Lesion_2"]
        assert organs.frame_of_reference_uid == ct.FrameOfReferenceUID
        assert organs.referenced_series_uid == ct.SeriesInstanceUID
        kidney_z = {round(float(c[0, 2]), 2) for c in organs.roi("Kidney_L").contours}
        assert len(kidney_z) >= 4
    assert len(studies) == 4
    hours = [tp["hours_post_injection"] for tp in truth["time_points"]]
    assert hours == [3.74, 27.73, 103.09, 123.98]


def test_phantom_files_pass_dciodvfy(noise_free):
    exe = require_tool("dciodvfy")
    out = noise_free[0]
    for folder in ("ct", "spect"):
        f = sorted((out / "SPECT_Cts" / "scan2" / folder).glob("*.dcm"))[5]
        res = subprocess.run([exe, str(f)], capture_output=True, text=True)
        errors = [line for line in (res.stdout + res.stderr).splitlines() if line.startswith("Error")]
        assert errors == [], (f, errors)


def test_truth_consistent(noise_free):
    truth = _truth(noise_free[0])
    vois = truth["vois"]
    assert truth["injected_activity_bq"] == 7.21e9 and truth["injection_time"] == "2018-11-15T09:22:00"
    # Calibration targets of the collection's patient 4 (MBq).
    np.testing.assert_allclose(np.array(vois["Kidney_L"]["activity_bq"]) / 1e6, [99, 74, 25, 19], rtol=0.03)
    np.testing.assert_allclose(np.array(vois["Liver"]["activity_bq"]) / 1e6, [378, 347, 193, 173], rtol=0.03)
    assert 1350 < vois["Liver"]["volume_ml"] < 1650
    for name in ("Kidney_L", "Kidney_R"):
        assert 140 < vois[name]["volume_ml"] < 180
    assert 170 < vois["Spleen"]["volume_ml"] < 230
    assert 17 < vois["Lesion_1"]["volume_ml"] < 23 and 4 < vois["Lesion_2"]["volume_ml"] < 6
    # Everything in the field of view adds up and never exceeds the decayed injected activity.
    parts = ["Liver", "Kidney_L", "Kidney_R", "Spleen"]  # the liver VOI contains the lesions
    for k in range(4):
        total = sum(vois[p]["activity_bq"][k] for p in parts) + truth["remainder"]["activity_bq"][k]
        assert total == pytest.approx(truth["fov_total_activity_bq"][k], rel=1e-9)
        assert total <= truth["injected_activity_decayed_bq"][k]
    e_j = LU.electron_energy_j
    for name, v in vois.items():
        model = v["tac_model"]
        f = lambda t: sum(c * math.exp(-r * t) for c, r in zip(model["coefficients_bq"], model["rates_per_h"]))
        numeric = quad(f, 0, 200 * 24, limit=400)[0] * 3600.0
        assert v["tia_bq_s"] == pytest.approx(numeric, rel=1e-6)
        for k, tp in enumerate(truth["time_points"]):
            assert f(tp["hours_post_injection"]) == pytest.approx(v["activity_bq"][k], rel=1e-9)
        assert v["mean_dose_gy_electrons"] == pytest.approx(v["tia_bq_s"] * e_j / (v["mass_g"] / 1000.0))
        assert v["mass_g"] > v["volume_ml"]  # densities > 1 g/mL
    assert 1.0 < vois["Kidney_L"]["mean_dose_gy_electrons"] < 10.0


def test_truth_tia_map(noise_free):
    out = noise_free[0]
    truth = _truth(out)
    tia = sitk.ReadImage(str(out / "truth_tia.nrrd"))
    voxel_ml = float(np.prod(tia.GetSpacing())) / 1000.0
    total = float(sitk.GetArrayFromImage(tia).sum(dtype=np.float64)) * voxel_ml
    expected = sum(truth["vois"][p]["tia_bq_s"] for p in ("Liver", "Kidney_L", "Kidney_R", "Spleen")) + \
        truth["remainder"]["tia_bq_s"]
    assert total == pytest.approx(expected, rel=1e-4)
    np.testing.assert_allclose(tia.GetSpacing(), truth["simulation"]["spect_spacing_mm"])


def test_noise_free_spect_matches_truth(noise_free):
    out = noise_free[0]
    truth = _truth(out)
    for k in (1, 3):
        img, values = _spect_bqml(out, k)
        voxel_ml = float(np.prod(img.GetSpacing())) / 1000.0
        # Blurring conserves activity: the field of view holds the true total.
        assert values.sum() * voxel_ml == pytest.approx(truth["fov_total_activity_bq"][k - 1], rel=2e-3)
        # A liver VOI on the SPECT grid (from the analytic anatomy, not the simulation grid) recovers
        # most of the liver; dilated by > 1 FWHM and with the remainder's share removed, all of it.
        grid = Grid(img.GetOrigin(), img.GetSpacing(), img.GetSize())
        frac = rasterise(default_anatomy(), grid, supersample=3)
        liver = (frac["liver"] + frac["lesion_1"] + frac["lesion_2"]) >= 0.5
        true_liver = truth["vois"]["Liver"]["activity_bq"][k - 1]
        recovered = values[liver].sum() * voxel_ml / true_liver
        assert 0.8 < recovered < 1.02
        big = binary_dilation(liver, iterations=2) & ~binary_dilation(
            (frac["kidney_left"] + frac["kidney_right"] + frac["spleen"]) >= 0.1, iterations=2)
        remainder_conc = truth["remainder"]["activity_bq"][k - 1] / truth["remainder"]["volume_ml"]
        background = remainder_conc * (big.sum() - liver.sum()) * voxel_ml
        assert (values[big].sum() * voxel_ml - background) / true_liver == pytest.approx(1.0, abs=0.06)


def test_noise_and_determinism(noisy, noise_free, tmp_path):
    a = _spect_bqml(noisy, 2)[1]
    b = _spect_bqml(noise_free[0], 2)[1]
    assert not np.allclose(a, b)
    # Poisson noise is activity-proportional: the noisy mean over the body is still unbiased.
    assert a.sum() == pytest.approx(b.sum(), rel=0.01)
    again = tmp_path / "again"
    write_synthetic_patient(again, fast=True, seed=3)
    np.testing.assert_array_equal(_spect_bqml(again, 2)[1], a)
    assert _truth(again)["vois"] == _truth(noisy)["vois"]
    ct_a = pydicom.dcmread(sorted((again / "SPECT_Cts" / "scan2" / "ct").glob("*.dcm"))[7])
    ct_b = pydicom.dcmread(sorted((noisy / "SPECT_Cts" / "scan2" / "ct").glob("*.dcm"))[7])
    np.testing.assert_array_equal(ct_a.pixel_array, ct_b.pixel_array)
    assert ct_a.SOPInstanceUID == ct_b.SOPInstanceUID
    other = tmp_path / "other"
    write_synthetic_patient(other, fast=True, seed=4)
    assert not np.array_equal(_spect_bqml(other, 2)[1], a)


def test_nm_multiframe_format(tmp_path):
    out = write_synthetic_patient(tmp_path / "nm", fast=True, noise=False, spect_format="nm_multiframe")
    files = list((out / "SPECT_Cts" / "scan1" / "spect").glob("*.dcm"))
    assert len(files) == 1
    ds = pydicom.dcmread(files[0])
    assert ds.Modality == "NM" and int(ds.NumberOfFrames) == _truth(out)["simulation"]["spect_size"][2]


def test_bad_options(tmp_path):
    with pytest.raises(LuDosimetryError, match="spect_format"):
        write_synthetic_patient(tmp_path / "x", fast=True, spect_format="dicom")
    with pytest.raises(LuDosimetryError, match="fwhm_mm"):
        write_synthetic_patient(tmp_path / "x", fast=True, fwhm_mm=-1)
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputError, match="not a folder"):
        write_synthetic_patient(tmp_path / "file", fast=True)


def test_kinetics_cover_every_activity_tissue():
    assert set(TISSUE_KINETICS) == {"kidney_left", "kidney_right", "liver", "spleen", "lesion_1", "lesion_2",
                                    "remainder"}
    for m in TISSUE_KINETICS.values():
        curve = m.as_sum(LU)
        assert curve.activity_bq(0.0) >= 0.0
        if m.uptake_half_life_h is not None:
            assert curve.activity_bq(0.0) == pytest.approx(0.0, abs=1e-3)
