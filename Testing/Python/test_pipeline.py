"""End-to-end runs on the analytic study (study_builder) and every bad input of the Backbone issue."""
from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest

from LuDosimetryLib.cli import main
from LuDosimetryLib.errors import DicomFileError, OptionError, StructureError, StudyError
from LuDosimetryLib.pipeline import RunOptions, run_study

from study_builder import HOURS, LU, build_study


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    root = tmp_path_factory.mktemp("analytic") / "study"
    return build_study(root)


def _tree_digest(root: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file():
            h.update(str(p.relative_to(root)).encode())
            h.update(p.read_bytes())
    return h.hexdigest()


def _copy(study, tmp_path) -> Path:
    dst = tmp_path / "copy"
    shutil.copytree(study.root, dst)
    return dst


def _edit(files, fn):
    for f in files:
        ds = pydicom.dcmread(f)
        fn(ds)
        ds.save_as(f)


def test_run_matches_analytic_truth_and_leaves_inputs_alone(study, tmp_path):
    before = _tree_digest(study.root)
    out = tmp_path / "out"
    assert main(["run", str(study.root), "--out", str(out), "--quiet", "--dose-method", "ldm"]) == 0
    assert _tree_digest(study.root) == before
    res = json.loads((out / "results.json").read_text())
    for key in ("patient_id", "injected_activity_bq", "injection_time", "time_points", "dose_method", "vois"):
        assert key in res
    assert [round(t["hours_post_injection"], 2) for t in res["time_points"]] == list(HOURS)
    for s in study.spheres:
        v = res["vois"][s.name]
        for key in ("volume_ml", "mass_g", "tia_bq_s", "tiac_h", "fit_model", "effective_half_life_h",
                    "mean_dose_gy", "d2_gy", "d50_gy", "d98_gy", "max_dose_gy", "gy_per_gbq"):
            assert key in v, key
        assert v["tia_bq_s"] == pytest.approx(s.tia_bq_s(), rel=0.05), s.name
        assert v["volume_ml"] == pytest.approx(s.volume_ml, rel=0.05)
        assert v["effective_half_life_h"] == pytest.approx(s.t_eff_h, rel=0.05)
        # local deposition of electrons: D = TIA · E_e / m, with m from CT (40 HU soft tissue)
        expected = v["tia_bq_s"] * LU.electron_energy_j / (v["mass_g"] / 1000.0)
        assert v["mean_dose_gy"] == pytest.approx(expected, rel=0.02)
        assert v["gy_per_gbq"] == pytest.approx(v["mean_dose_gy"] / 7.21, rel=1e-6)
        assert v["d98_gy"] <= v["d50_gy"] <= v["d2_gy"] <= v["max_dose_gy"]
    for name in ("dvh.csv", "dvh.png", "tac.png", "dose_gy.nrrd", "tia_bq_s_per_ml.nrrd", "rtdose.dcm"):
        assert (out / name).stat().st_size > 0, name
    rd = pydicom.dcmread(out / "rtdose.dcm")
    assert rd.Modality == "RTDOSE" and rd.DoseUnits == "GY"
    spect = pydicom.dcmread(next((study.root / "scan1" / "spect").iterdir()))
    assert rd.FrameOfReferenceUID == spect.FrameOfReferenceUID


def test_nm_multiframe_and_decay_none(tmp_path):
    built = build_study(tmp_path / "nm", spect_format="nm_multiframe", decay_correction="NONE", with_ct=True)
    res = run_study(built.root, RunOptions(dose_method="ldm"))
    for s in built.spheres:
        assert res.vois[s.name].tia_bq_s == pytest.approx(s.tia_bq_s(), rel=0.05)


def test_a_second_image_in_a_multiframe_series_is_refused_a_copy_is_not(tmp_path, capsys):
    """A copy of the multi-frame file is the same image (used, with a warning); a second multi-frame file with
    other pixels in the series was passed over with a warning, the first one taken by file order."""
    built = build_study(tmp_path / "nm", spect_format="nm_multiframe", decay_correction="NONE", with_ct=True)
    clean = run_study(built.root, RunOptions(dose_method="ldm"))
    folder = built.root / "scan2" / "spect"
    original = folder / "spect.dcm"
    shutil.copy2(str(original), str(folder / "spect_copy.dcm"))
    with pytest.warns(UserWarning, match="2 copies of the multi-frame image"):
        copied = run_study(built.root, RunOptions(dose_method="ldm"))
    assert {n: v.tia_bq_s for n, v in copied.vois.items()} == {n: v.tia_bq_s for n, v in clean.vois.items()}
    other = pydicom.dcmread(str(original))
    pixels = other.pixel_array.copy()
    pixels[0, 0, 0] += 1
    other.PixelData = pixels.tobytes()
    other.SOPInstanceUID = other.SOPInstanceUID + ".1"
    other.save_as(str(folder / "spect_copy.dcm"), enforce_file_format=False)
    _fails(["run", str(built.root), "--out", str(tmp_path / "o")], capsys, "spect_copy.dcm", "other pixels")
    assert not (tmp_path / "o").exists()


def _fails(args, capsys, *needles):
    rc = main(args)
    err = capsys.readouterr().err
    assert rc == 2, err
    # one error line; warnings that explain it (e.g. a header disagreeing with --injection-time) may precede it
    lines = [line for line in err.splitlines() if not line.startswith("ludosimetry: warning: ")]
    assert len(lines) == 1 and lines[0].startswith("ludosimetry: error: "), err
    for n in needles:
        assert n in err, (n, err)
    return err


def test_missing_and_empty_folder(tmp_path, capsys):
    _fails(["run", str(tmp_path / "nope"), "--out", str(tmp_path / "o")], capsys, "does not exist")
    (tmp_path / "empty").mkdir()
    _fails(["run", str(tmp_path / "empty"), "--out", str(tmp_path / "o")], capsys, "empty")
    assert not (tmp_path / "o").exists()


def test_only_non_dicom(tmp_path, capsys):
    d = tmp_path / "junk"
    d.mkdir()
    (d / "notes.txt").write_text("hello")
    (d / "image.png").write_bytes(b"\x89PNG\r\n")
    _fails(["run", str(d), "--out", str(tmp_path / "o")], capsys, "no DICOM file", str(d))
    # inspect lists them as skipped rather than failing when there is DICOM beside them
    assert main(["inspect", str(d)]) == 2


def test_inspect_lists_non_dicom_as_skipped(study, tmp_path, capsys):
    d = _copy(study, tmp_path)
    (d / "readme.txt").write_text("not dicom")
    assert main(["inspect", str(d), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert any(s["file"].endswith("readme.txt") for s in doc["skipped"])
    roles = {s["role"] for s in doc["series"]}
    assert {"ct", "spect_recon", "rtstruct"} <= roles
    for s in doc["series"]:
        assert set(s) >= {"series_instance_uid", "modality", "role", "description", "code", "time_point", "files"}


def test_spect_without_bqml_needs_calibration(study, tmp_path, capsys):
    d = _copy(study, tmp_path)
    def counts(ds):
        ds.Units = "CNTS"
    _edit(sorted((d / "scan1" / "spect").iterdir()), counts)
    _fails(["run", str(d), "--out", str(tmp_path / "o")], capsys, "not Bq/mL", "--spect-calibration")
    # given, it scales the series in counts; the series already in Bq/mL keep their values, which is named
    # (the option was ignored for them without a word), and --strict refuses it
    res = run_study(d, RunOptions(dose_method="ldm", spect_calibration_bq_per_ml_per_unit=1.0))
    kept = [a for a in res.assumptions if "calibration given (1 Bq/mL per unit) not applied" in a.what]
    assert len(kept) == len(res.time_points) - 1 and all(a.value == "Units BQML" for a in kept), kept
    _fails(["run", str(d), "--out", str(tmp_path / "o"), "--spect-calibration", "1", "--strict"], capsys,
           "strict", "not applied")


def test_no_injection_information(study, tmp_path, capsys):
    d = _copy(study, tmp_path)
    def strip(ds):
        if "RadiopharmaceuticalInformationSequence" in ds:
            del ds.RadiopharmaceuticalInformationSequence
        ds.DecayCorrection = "START"
    _edit([p for p in d.rglob("*.dcm") if "spect" in p.parts], strip)
    _fails(["run", str(d), "--out", str(tmp_path / "o")], capsys, "--injected-activity-mbq")
    # given on the command line, it runs
    assert main(["run", str(d), "--out", str(tmp_path / "o2"), "--quiet", "--injected-activity-mbq", "7210",
                 "--injection-time", "2018-11-15T09:22", "--dose-method", "ldm"]) == 0


def test_rtstruct_frame_of_reference_mismatch(study, tmp_path, capsys):
    d = _copy(study, tmp_path)
    rs = d / "scan2" / "vois" / "rtstruct.dcm"
    def other_for(ds):
        ds.ReferencedFrameOfReferenceSequence[0].FrameOfReferenceUID = "1.2.3.4.5"
        for roi in ds.StructureSetROISequence:
            roi.ReferencedFrameOfReferenceUID = "1.2.3.4.5"
        # also unlink the referenced series so the RTSTRUCT cannot be matched by it
        ds.ReferencedFrameOfReferenceSequence[0].RTReferencedStudySequence[0].RTReferencedSeriesSequence[0] \
            .SeriesInstanceUID = "1.2.3.4.6"
    _edit([rs], other_for)
    _fails(["run", str(d), "--out", str(tmp_path / "o")], capsys)


def test_contour_outside_image(study, tmp_path, capsys):
    d = _copy(study, tmp_path)
    rs = d / "scan1" / "vois" / "rtstruct.dcm"
    def shift(ds):
        c = ds.ROIContourSequence[0].ContourSequence[0]
        pts = np.array(c.ContourData, dtype=float).reshape(-1, 3)
        pts[:, 0] += 500.0
        c.ContourData = [f"{v:.3f}" for v in pts.ravel()]
    _edit([rs], shift)
    _fails(["run", str(d), "--out", str(tmp_path / "o")], capsys, "rtstruct.dcm", "outside")


def test_two_spect_series_need_a_choice(study, tmp_path, capsys):
    d = _copy(study, tmp_path)
    src = d / "scan1" / "spect"
    dst = d / "scan1" / "spect_other"
    shutil.copytree(src, dst)
    new_series = pydicom.uid.generate_uid()
    def renew(ds):
        ds.SeriesInstanceUID = new_series
        ds.SOPInstanceUID = pydicom.uid.generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.SeriesDescription = "C2S1D0 second recon"
    _edit(sorted(dst.iterdir()), renew)
    _fails(["run", str(d), "--out", str(tmp_path / "o")], capsys, "--spect-series", new_series)
    assert main(["run", str(d), "--out", str(tmp_path / "o2"), "--quiet", "--dose-method", "ldm",
                 "--spect-series", study.spect_uids[0]]) == 0


def test_time_points_before_injection(study, tmp_path, capsys):
    _fails(["run", str(study.root), "--out", str(tmp_path / "o"), "--injection-time", "2018-11-20T00:00"],
           capsys, "before the injection")
    assert not (tmp_path / "o").exists()


def test_truncated_dicom_file(study, tmp_path, capsys):
    d = _copy(study, tmp_path)
    victim = sorted((d / "scan3" / "spect").iterdir())[5]
    data = victim.read_bytes()
    victim.write_bytes(data[: len(data) // 2])
    _fails(["run", str(d), "--out", str(tmp_path / "o")], capsys, victim.name)
    assert not (tmp_path / "o").exists()


def test_out_exists_without_overwrite(study, tmp_path, capsys):
    out = tmp_path / "o"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    _fails(["run", str(study.root), "--out", str(out)], capsys, "--overwrite")
    assert (out / "keep.txt").read_text() == "mine"


def test_rtdose_output_validates_and_reads_everywhere(study, tmp_path):
    import subprocess

    import SimpleITK as sitk

    from conftest import require_tool
    from LuDosimetryLib.io.rtdose import read_rtdose

    out = tmp_path / "out"
    res = run_study(study.root, RunOptions(dose_method="dvk"))
    from LuDosimetryLib.pipeline import write_outputs
    write_outputs(res, out)
    path = out / "rtdose.dcm"
    dciodvfy = require_tool("dciodvfy")
    report = subprocess.run([dciodvfy, str(path)], capture_output=True, text=True)
    errors = [l for l in (report.stdout + report.stderr).splitlines() if l.startswith("Error")]
    assert report.returncode == 0 and not errors, report.stdout + report.stderr
    assert subprocess.run([require_tool("dcmdump"), str(path)], capture_output=True).returncode == 0
    back = read_rtdose(path).image
    ours = res.dose_gy
    assert back.GetSize() == ours.GetSize()
    np.testing.assert_allclose(back.GetOrigin(), ours.GetOrigin(), atol=1e-3)
    np.testing.assert_allclose(back.GetSpacing(), ours.GetSpacing(), atol=1e-4)
    a, b = sitk.GetArrayFromImage(back), sitk.GetArrayFromImage(ours)
    assert np.max(np.abs(a - b)) <= b.max() / 65535 + 1e-9
    img = sitk.ReadImage(str(path))  # SimpleITK/GDCM: same grid (stored values, scaling not applied)
    assert img.GetSize() == ours.GetSize()
    np.testing.assert_allclose(img.GetOrigin(), ours.GetOrigin(), atol=1e-3)
    assert pydicom.dcmread(path).DoseUnits == "GY"


def test_masks_given_directly_replace_the_rtstructs(study):
    import SimpleITK as sitk

    from LuDosimetryLib.io.images import read_spect
    from LuDosimetryLib.io.inventory import scan_study
    from LuDosimetryLib.pipeline import _masks_for_time_point, choose_spect_series

    inv = scan_study(study.root)
    entries = choose_spect_series(inv, RunOptions())
    masks = []
    for i, e in enumerate(entries):
        sp = read_spect(e.files, injection_time=inv.injection_time)
        m, _ = _masks_for_time_point(inv, i, sp, 3)
        masks.append({"Liver only": m["Liver"]})
    res = run_study(study.root, RunOptions(dose_method="ldm", masks_per_time_point=masks))
    assert list(res.vois) == ["Liver only"]
    ref = run_study(study.root, RunOptions(dose_method="ldm"))
    assert res.vois["Liver only"].tia_bq_s == pytest.approx(ref.vois["Liver"].tia_bq_s, rel=1e-6)
    with pytest.raises(StudyError, match="2 sets of VOI masks given for 4"):
        run_study(study.root, RunOptions(masks_per_time_point=masks[:2]))
    bad = [{"x": np.zeros((2, 2, 2))} for _ in masks]
    with pytest.raises(StructureError, match="shape"):
        run_study(study.root, RunOptions(masks_per_time_point=bad))


@pytest.fixture(scope="module")
def moving_study(tmp_path_factory):
    """Patient shifted by up to 10 mm between time points; contours only at time point 1."""
    root = tmp_path_factory.mktemp("moving") / "study"
    return build_study(root, shifts_mm=[(0, 0, 0), (8, -5, 4.8), (-6, 4, -4.8), (5, 6, 0)],
                       rtstruct_time_points=[0])


def test_reference_only_vois_need_a_registration(moving_study, tmp_path, capsys):
    _fails(["run", str(moving_study.root), "--out", str(tmp_path / "o")], capsys, "--registration")
    _fails(["run", str(moving_study.root), "--out", str(tmp_path / "o"), "--vois", "reference-only"], capsys,
           "needs a registration")


def test_registration_propagates_vois_and_is_saved(moving_study, tmp_path):
    out = tmp_path / "out"
    assert main(["run", str(moving_study.root), "--out", str(out), "--quiet", "--dose-method", "ldm",
                 "--registration", "rigid", "--vois", "reference-only"]) == 0
    res = json.loads((out / "results.json").read_text())
    assert res["registered"] == [2, 3, 4]
    for s in moving_study.spheres:
        assert res["vois"][s.name]["tia_bq_s"] == pytest.approx(s.tia_bq_s(), rel=0.06), s.name
    for k in (2, 3, 4):
        folder = out / "registration" / f"tp{k}_to_tp1"
        assert any(p.suffix == ".tfm" for p in folder.iterdir()), folder


def test_voxel_tia_map_and_reduced_time_points(moving_study):
    voxel = run_study(moving_study.root, RunOptions(dose_method="ldm", registration="rigid",
                                                    vois="reference-only", tia_map="voxel"))
    reduced = run_study(moving_study.root, RunOptions(dose_method="ldm", registration="rigid",
                                                      vois="reference-only", time_points=(1, 3)))
    for s in moving_study.spheres:
        assert voxel.vois[s.name].tia_map_bq_s == pytest.approx(s.tia_bq_s(), rel=0.08), s.name
        r = reduced.vois[s.name]
        assert r.tia_full_bq_s is not None and r.reduced_relative_difference == pytest.approx(
            r.tia_bq_s / r.tia_full_bq_s - 1.0)
        assert r.tia_bq_s == pytest.approx(s.tia_bq_s(), rel=0.10), s.name
    assert reduced.time_points_used == [1, 3]
    with pytest.raises(OptionError, match="reference time point 1 must be one of"):  # refused before reading
        run_study(moving_study.root, RunOptions(registration="rigid", vois="reference-only", time_points=(2, 3)))


def test_models_per_voi(study):
    res = run_study(study.root, RunOptions(dose_method="ldm", models_per_voi={"Liver": ("trapezoid",)}))
    assert res.vois["Liver"].fit_model == "trapezoid"
    assert res.vois["Kidney_L"].fit_model != "trapezoid"
    with pytest.raises(StudyError, match="Lever"):
        run_study(study.root, RunOptions(models_per_voi={"Lever": ("mono_exponential",)}))
