"""Digital twin of the collection: layout, headers, truth, inventory roles, pipeline accuracy, determinism."""
from __future__ import annotations

import json
import math
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from LuDosimetryLib.errors import LuDosimetryError, OutputError
from LuDosimetryLib.phantom import write_twin
from LuDosimetryLib.phantom.motion import Motion, rasterise_posed
from LuDosimetryLib.phantom.presets import get_preset
from LuDosimetryLib.phantom.anatomy import Grid, rasterise
from LuDosimetryLib.phantom.voxel_tia import voxel_tia
from LuDosimetryLib.radionuclides import radionuclide

LU = radionuclide("Lu-177")
REPO = Path(__file__).resolve().parents[2]


_CACHE = {}


def cached_twin(tmp_path_factory, preset: str, seed: int) -> Path:
    """The fast twin of ``preset`` (no projections), written once per test session."""
    key = (preset, seed)
    if key not in _CACHE:
        out = tmp_path_factory.mktemp(f"twin_{preset}")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            _CACHE[key] = write_twin(out, preset=preset, seed=seed, fast=True, projections=False)
    return _CACHE[key]


@pytest.fixture(scope="module")
def twin4(tmp_path_factory):
    return cached_twin(tmp_path_factory, "patient4", 1)


@pytest.fixture(scope="module")
def twin6(tmp_path_factory):
    return cached_twin(tmp_path_factory, "patient6", 2)


@pytest.fixture(scope="module")
def inspect4(twin4):
    proc = subprocess.run([sys.executable, "-m", "LuDosimetryLib.cli", "inspect", "--json", str(twin4)],
                          capture_output=True, text=True, cwd=str(REPO), timeout=120)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_layout_and_codes(twin4):
    assert twin4.name == "patient_4"
    for k, day in zip(range(1, 5), (0, 1, 4, 5)):
        code = f"C2S{k}D{day}"
        for sub in ("SPECT_Cts/scan{k}/spect", "SPECT_Cts/scan{k}/ct", "VOIs/scan{k}/organs", "VOIs/scan{k}/lesions",
                    "VOIs/scan{k}/organ_masks", "VOIs/scan{k}/lesion_masks", "Planar/scan{k}"):
            files = sorted((twin4 / sub.format(k=k)).glob("*.dcm"))
            assert files, sub
            ds = pydicom.dcmread(str(files[0]), stop_before_pixels=True)
            assert code in ds.SeriesDescription, (sub, ds.SeriesDescription)
        assert len(list((twin4 / f"Planar/scan{k}").glob("*.dcm"))) == 6
    assert len(list(twin4.glob("Planar/scan*/*.dcm"))) == 24
    assert list((twin4 / "TIA").glob("*.dcm"))
    for sub in ("Pretherapy/pet", "Pretherapy/pet_ct", "Pretherapy/diagnostic_ct"):
        assert list((twin4 / sub).glob("*.dcm")), sub
    assert (twin4 / "truth.json").is_file() and (twin4 / "truth_tia.nrrd").is_file()


def test_inspect_roles_time_points(inspect4):
    tps = inspect4["time_points"]
    assert [round(t["hours_post_injection"], 2) for t in tps] == [3.74, 27.73, 103.09, 123.98]
    assert [t["code"] for t in tps] == ["C2S1D0", "C2S2D1", "C2S3D4", "C2S4D5"]
    assert inspect4["injected_activity_bq"] == pytest.approx(7.21e9)
    roles = {}
    for s in inspect4["series"]:
        roles.setdefault(s["role"], []).append(s)
    assert {"ct", "spect_recon", "rtstruct", "mask", "tia_map", "pet", "planar_whole_body"} <= set(roles)
    for role, n in (("spect_recon", 4), ("rtstruct", 8), ("mask", 8), ("planar_whole_body", 4), ("tia_map", 1),
                    ("pet", 1)):
        assert len(roles[role]) == n, role
    for role in ("spect_recon", "rtstruct", "mask", "planar_whole_body"):
        assert sorted(s["time_point"] for s in roles[role]) == sorted(list(range(4)) * (len(roles[role]) // 4))
    # Per-time-point CT plus the two pre-therapy CTs that join no time point.
    cts = roles["ct"]
    assert sorted((s["time_point"] is None) for s in cts) == [False] * 4 + [True] * 2
    assert roles["planar_whole_body"][0]["files"] == 6


def test_pet_headers_suv_ready(twin4):
    ds = pydicom.dcmread(str(sorted((twin4 / "Pretherapy/pet").glob("*.dcm"))[0]))
    assert ds.Modality == "PT" and ds.Units == "BQML" and ds.DecayCorrection == "START"
    assert float(ds.PatientWeight) > 0
    item = ds.RadiopharmaceuticalInformationSequence[0]
    assert float(item.RadionuclideHalfLife) == pytest.approx(radionuclide("Ga-68").half_life_s, rel=1e-3)
    assert item.RadionuclideCodeSequence[0].CodeMeaning == "^68^Gallium"
    therapy = pydicom.dcmread(str(sorted((twin4 / "SPECT_Cts/scan1/spect").glob("*.dcm"))[0]),
                              stop_before_pixels=True)
    # months before the therapy
    assert int(ds.AcquisitionDate) < int(therapy.AcquisitionDate) - 100
    # SUV of the liver region is in the range used for the simulation (tissue SUV 7).
    img = sitk.ReadImage([str(p) for p in sorted((twin4 / "Pretherapy/pet").glob("*.dcm"))])
    arr = sitk.GetArrayFromImage(img)
    inj = float(item.RadionuclideTotalDose)
    start = ds.AcquisitionTime
    dt_s = (int(start[:2]) * 3600 + int(start[2:4]) * 60) - (int(item.RadiopharmaceuticalStartTime[:2]) * 3600 +
                                                             int(item.RadiopharmaceuticalStartTime[2:4]) * 60)
    suv = arr / (inj * math.exp(-math.log(2) * dt_s / float(item.RadionuclideHalfLife)) / (float(ds.PatientWeight) * 1000))
    assert 20.0 < float(suv.max()) < 60.0


def test_planar_headers_and_conjugate_counts(twin4):
    files = sorted((twin4 / "Planar/scan1").glob("*.dcm"))
    seen = set()
    totals = {}
    for f in files:
        ds = pydicom.dcmread(str(f))
        assert list(ds.ImageType) == ["ORIGINAL", "PRIMARY", "WHOLE BODY", "EMISSION"]
        view = ds.DetectorInformationSequence[0].ViewCodeSequence[0].CodeMeaning
        win = ds.EnergyWindowInformationSequence[0]
        lo = float(win.EnergyWindowRangeSequence[0].EnergyWindowLowerLimit)
        hi = float(win.EnergyWindowRangeSequence[0].EnergyWindowUpperLimit)
        seen.add((view, win.EnergyWindowName))
        totals[(view, win.EnergyWindowName)] = float(ds.pixel_array.sum())
        assert ds.ActualFrameDuration > 0 and ds.AcquisitionDate and ds.AcquisitionTime
        if win.EnergyWindowName == "Lu177_208keV":
            assert lo == pytest.approx(208 * 0.9, abs=0.5) and hi == pytest.approx(208 * 1.1, abs=0.5)
    assert len(seen) == 6
    # Geometric mean of conjugate photopeak counts / (S T) approximates the attenuated field activity:
    a = totals[("Anterior projection", "Lu177_208keV")]
    p = totals[("Posterior projection", "Lu177_208keV")]
    assert a > 0 and p > 0 and totals[("Anterior projection", "Lu177_SC_lower")] < a


def test_seg_masks_match_rtstruct(twin4):
    from LuDosimetryLib.io.rtstruct import read_rtstruct
    seg = pydicom.dcmread(str(next((twin4 / "VOIs/scan2/organ_masks").glob("*.dcm"))))
    ss = read_rtstruct(next((twin4 / "VOIs/scan2/organs").glob("*.dcm")))
    assert seg.Modality == "SEG" and seg.SegmentationType == "BINARY"
    assert [s.SegmentLabel for s in seg.SegmentSequence] == [r.name for r in ss.rois]
    assert seg.FrameOfReferenceUID == ss.frame_of_reference_uid
    frames = seg.pixel_array
    if frames.ndim == 2:
        frames = frames[None]
    # voxel count of Kidney_L ≈ its true volume on the CT grid
    truth = json.loads((twin4 / "truth.json").read_text())
    px = [float(v) for v in seg.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0].PixelSpacing]
    dz = float(seg.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0].SliceThickness)
    seg_no = [s.SegmentLabel for s in seg.SegmentSequence].index("Kidney_L") + 1
    pick = [i for i, fg in enumerate(seg.PerFrameFunctionalGroupsSequence)
            if fg.SegmentIdentificationSequence[0].ReferencedSegmentNumber == seg_no]
    vol = float(frames[pick].sum()) * px[0] * px[1] * dz / 1000.0
    assert vol == pytest.approx(truth["vois"]["Kidney_L"]["volume_ml_per_time_point"][1], rel=0.1)


def test_truth_anchors_patient4(twin4):
    t = json.loads((twin4 / "truth.json").read_text())
    assert [tp["hours_post_injection"] for tp in t["time_points"]] == [3.74, 27.73, 103.09, 123.98]
    np.testing.assert_allclose(np.array(t["vois"]["Kidney_L"]["activity_bq"]) / 1e6, [99, 74, 25, 19], rtol=0.05)
    np.testing.assert_allclose(np.array(t["vois"]["Liver"]["activity_bq"]) / 1e6, [378, 347, 193, 173], rtol=0.05)
    for voi, lo, hi in (("Kidney_L", 2.3, 2.75), ("Kidney_R", 2.3, 2.75), ("Liver", 2.25, 2.6), ("Spleen", 2.8, 3.2)):
        assert lo <= t["vois"][voi]["mean_dose_gy"] <= hi, (voi, t["vois"][voi]["mean_dose_gy"])
    moved = [tp["motion"] for tp in t["time_points"][1:]]
    assert all(max(abs(v) for v in m["translation_mm"]) >= 3.0 and m["deformation"]["amplitude_mm"] > 0 for m in moved)
    # true TIA map integrates to the sum of tissue TIAs (scan-1 pose)
    tia = sitk.ReadImage(str(twin4 / "truth_tia.nrrd"))
    total = float(sitk.GetArrayFromImage(tia).sum(dtype=np.float64)) * np.prod(tia.GetSpacing()) / 1000.0
    # patient 4: both lesions lie in the Liver VOI, so organs + remainder hold every tissue once
    expected = t["remainder"]["tia_bq_s"] + sum(v["tia_bq_s"] for v in t["vois"].values() if v["kind"] == "organ")
    assert total == pytest.approx(expected, rel=0.02)


def test_patient6_preset(twin6, tmp_path):
    t = json.loads((twin6 / "truth.json").read_text())
    assert twin6.name == "patient_6" and t["patient_id"] == "ANON60350" and t["sex"] == "F"
    assert "Spleen" not in t["vois"] and sum(v["kind"] == "lesion" for v in t["vois"].values()) == 4
    assert [tp["code"] for tp in t["time_points"]] == ["C1S1D0", "C1S2D1", "C1S3D4", "C1S4D8"]
    mods = {pydicom.dcmread(str(p), stop_before_pixels=True).Modality
            for p in (twin6 / "SPECT_Cts/scan2/spect").glob("*.dcm")}
    assert mods == {"PT", "NM"}
    mods1 = {pydicom.dcmread(str(p), stop_before_pixels=True).Modality
             for p in (twin6 / "SPECT_Cts/scan1/spect").glob("*.dcm")}
    assert mods1 == {"PT"}


def test_contours_follow_the_pose(twin4):
    """Each time point's contours are drawn on its own CT: Kidney_L centroid moves with the applied motion."""
    from LuDosimetryLib.io.rtstruct import read_rtstruct
    t = json.loads((twin4 / "truth.json").read_text())
    cents = []
    for k in (1, 3):
        ss = read_rtstruct(next((twin4 / f"VOIs/scan{k}/organs").glob("*.dcm")))
        roi = next(r for r in ss.rois if r.name == "Kidney_L")
        cents.append(np.concatenate(roi.contours).mean(axis=0))
    m = Motion(**{k: tuple(v) if isinstance(v, list) else v for k, v in t["time_points"][2]["motion"].items()
                  if k in ("translation_mm", "rotation_deg", "pivot_mm")})
    expected = np.array(m.rigid_from_anatomy(*cents[0]))
    assert np.linalg.norm(cents[1] - expected) < 6.0  # residual: breathing deformation + contour sampling
    assert np.linalg.norm(cents[1] - cents[0]) > 3.0


def test_pipeline_tia_near_truth(twin4):
    from LuDosimetryLib.pipeline import RunOptions, run_study
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = run_study(twin4, RunOptions(pvc="gtm", psf_fwhm_mm=10.0, dose_method="ldm"))
    t = json.loads((twin4 / "truth.json").read_text())
    # fast grid (9.6 mm voxels): large organs within 15 %, the 5 mL lesion is partial-volume limited
    for voi in ("Liver", "Kidney_L", "Kidney_R", "Spleen"):
        assert res.vois[voi].tia_bq_s == pytest.approx(t["vois"][voi]["tia_bq_s"], rel=0.15), voi


def test_tia_map_dicom(twin4):
    f = next((twin4 / "TIA").glob("*.dcm"))
    ds = pydicom.dcmread(str(f))
    assert "TIA" in ds.SeriesDescription
    assert ds.RealWorldValueMappingSequence[0].MeasurementUnitsCodeSequence[0].CodeValue == "Bq.s/mL"
    img = sitk.ReadImage(str(f))
    truth = sitk.ReadImage(str(twin4 / "truth_tia.nrrd"))
    assert img.GetSize() == truth.GetSize()
    np.testing.assert_allclose(img.GetOrigin(), truth.GetOrigin(), atol=0.01)
    a, b = sitk.GetArrayFromImage(img).sum(dtype=np.float64), sitk.GetArrayFromImage(truth).sum(dtype=np.float64)
    assert a == pytest.approx(b, rel=0.15)


def test_voxel_tia_exact_for_mono_exponential():
    hours = np.array([4.0, 24.0, 96.0, 168.0])
    k = LU.decay_constant_per_s + math.log(2) / (100 * 3600)
    c = 1000.0 * np.exp(-k * hours * 3600)
    stack = np.broadcast_to(c[:, None, None, None], (4, 2, 2, 2)).copy()
    tia = voxel_tia(stack, hours, LU.decay_constant_per_s)
    t = hours * 3600
    exact = 0.5 * c[0] * t[0] + 0.5 * (c[0] + c[1]) * (t[1] - t[0]) + c[1] / k
    np.testing.assert_allclose(tia, exact, rtol=1e-4)
    stack[2, 0, 0, 0] = 0.0  # fallback voxel: trapezoids + physical tail
    assert np.isfinite(voxel_tia(stack, hours, LU.decay_constant_per_s)).all()
    with pytest.raises(ValueError):
        voxel_tia(stack[:3], hours[:3], LU.decay_constant_per_s)


def test_motion_identity_and_inverse():
    p = get_preset("patient4")
    g = Grid((-60.0, -60.0, -40.0), (6.0, 6.0, 6.0), (20, 20, 14))
    a = rasterise(p.structures, g)
    b = rasterise_posed(p.structures, g, Motion())
    for name in a:
        np.testing.assert_array_equal(a[name], b[name])
    m = p.motions[2]
    pts = np.array([[10.0, -20.0, 30.0], [-50.0, 40.0, 0.0]]).T
    back = m.rigid_to_anatomy(*m.rigid_from_anatomy(*pts))
    np.testing.assert_allclose(np.array(back), pts, atol=1e-9)


def test_bad_preset_and_output(tmp_path):
    with pytest.raises(LuDosimetryError, match="patient5"):
        write_twin(tmp_path, preset="patient5")
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(OutputError):
        write_twin(f, preset="patient4", fast=True)


def test_deterministic_per_seed(twin6, tmp_path):
    """Same preset and seed → same UIDs, pixels and truth (the patient-6 twin written a second time)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        again = write_twin(tmp_path, preset="patient6", seed=2, fast=True, projections=False)
    for rel in ("SPECT_Cts/scan3/spect/PT_0010.dcm", "VOIs/scan2/lesion_masks/SEG_lesion_masks.dcm",
                "Planar/scan4/WB_POS_Lu177_208keV.dcm", "TIA/TIA_map.dcm", "Pretherapy/pet/PT_0005.dcm"):
        a, b = (pydicom.dcmread(str(r / rel)) for r in (twin6, again))
        assert a.SOPInstanceUID == b.SOPInstanceUID and a.PixelData == b.PixelData, rel
    assert (twin6 / "truth.json").read_text() == (again / "truth.json").read_text()
