"""Red marrow (#14): reference masses and fractions, blood-based and image-based TIA, S-values, the L2–L4
segmentation, the RTSTRUCT override, blood-sample files and the run's ``red_marrow`` result."""
from __future__ import annotations

import json
import math
from datetime import datetime
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from LuDosimetryLib.cli import main
from LuDosimetryLib.errors import OptionError
from LuDosimetryLib.io.blood_samples import format_blood_samples, read_blood_samples
from LuDosimetryLib.io.images import read_ct
from LuDosimetryLib.options import RunOptions
from LuDosimetryLib.pipeline import run_study
from LuDosimetryLib.radionuclides import radionuclide
from LuDosimetryLib.red_marrow import (L2_L4_MARROW_FRACTION, blood_based_tia_bq_s, fit_blood_clearance,
                                       image_based_tia_bq_s, marrow_dose, photon_body_absorbed_fraction,
                                       red_marrow_mass_g, rmblr_from_haematocrit)
from LuDosimetryLib.vertebrae import is_marrow_roi_name, segment_l2_l4

LU = radionuclide("Lu-177")
MEV_J = 1.602176634e-13


def _ct_files(study: Path, scan: int):
    return sorted((study / "SPECT_Cts" / f"scan{scan}" / "ct").glob("*.dcm"))


# ------------------------------------------------------------------------------------------- physics

def test_reference_masses_and_l2_l4_fraction():
    assert red_marrow_mass_g("M") == 1170.0 and red_marrow_mass_g("f") == 900.0  # ICRP 89 Table 2.8
    assert L2_L4_MARROW_FRACTION == pytest.approx(0.0738)  # 3/5 of Cristy's 12.3 % lumbar share
    assert image_based_tia_bq_s(7.38e9) == pytest.approx(1e11)
    with pytest.raises(OptionError):
        red_marrow_mass_g("O")
    assert rmblr_from_haematocrit(0.4) == pytest.approx(0.19 / 0.6)


def test_blood_based_exact_for_analytic_curves():
    lam = LU.decay_constant_per_h
    t = np.array([0.5, 1.0, 2.0, 4.0, 24.0, 48.0, 96.0, 168.0])
    c0, k = 40e3, lam + math.log(2) / 30.0  # Bq/mL, 1/h
    fit = fit_blood_clearance(t, c0 * np.exp(-k * t), lam)
    assert fit.n_terms == 1
    assert fit.tia_bq_s_per_ml == pytest.approx(c0 / k * 3600.0, rel=1e-6)
    # fast + slow clearance (what blood does): the two-term model is chosen and exact
    k2 = lam + math.log(2) / 2.0
    fit2 = fit_blood_clearance(t, c0 * np.exp(-k * t) + 5 * c0 * np.exp(-k2 * t), lam)
    assert fit2.n_terms == 2
    assert fit2.tia_bq_s_per_ml == pytest.approx((c0 / k + 5 * c0 / k2) * 3600.0, rel=1e-5)
    # Hindorf 2010 eq. 4: per-gram blood TIA x RMBLR x marrow mass
    assert blood_based_tia_bq_s(1.06e9, 1170.0, rmblr=1.0) == pytest.approx(1.17e12)
    assert blood_based_tia_bq_s(1.06e9, 900.0, rmblr=0.5) == pytest.approx(0.45e12)


def test_s_values_against_published_values():
    # ICRP 107 Lu-177: mean electron energy 0.1479 MeV per decay (beta, internal-conversion and Auger electrons);
    # the self-dose S-value's electron part is that energy over the ICRP 89 male marrow mass (non-penetrating)
    published_electron_mev = 0.1479
    d = marrow_dose(1.0, 1170.0, LU, body_mass_g=73000.0, tia_remainder_bq_s=0.0)
    electron_part = d["s_rm_rm_gy_per_bq_s"] - d["s_rm_rb_gy_per_bq_s"]
    assert electron_part == pytest.approx(published_electron_mev * MEV_J / 1.170, rel=0.005)
    # Photon absorbed fraction of a uniform source in an adult body: MIRD Pamphlet No. 5 (revised) total-body
    # self-absorbed fractions are ~0.3-0.4 for 0.1-0.2 MeV photons and higher for the Hf X-rays; the Lu-177
    # photon spectrum (0.208, 0.113 MeV and X-rays) gives ~0.4-0.5 in 60-73 kg bodies.
    phi = photon_body_absorbed_fraction("Lu-177", 73000.0)
    assert 0.35 < phi < 0.6
    assert photon_body_absorbed_fraction("Lu-177", 17000.0) < phi  # smaller body, more escapes
    # the remainder's cross-dose: photons only, two to three orders of magnitude below the self-dose per decay
    assert 100 < d["s_rm_rm_gy_per_bq_s"] / d["s_rm_rb_gy_per_bq_s"] < 5000


def test_cross_dose_missing_is_not_zero():
    d = marrow_dose(1e12, 1170.0, LU, body_mass_g=73000.0, tia_remainder_bq_s=None)
    assert d["cross_dose_remainder_gy"] is None and d["mean_dose_gy"] is None
    assert d["self_dose_gy"] > 0


# ------------------------------------------------------------------------------------------- segmentation

def test_vertebra_segmentation_finds_the_spine(synthetic_study):
    ct = read_ct(_ct_files(synthetic_study, 1))
    seg = segment_l2_l4(ct)
    assert seg is not None and seg.canal_found
    # the phantom's vertebral bodies: ellipse 22 x 18 mm at x = 0, y = 62 mm (anatomy.body_and_spine)
    zz, yy, xx = np.nonzero(seg.mask >= 0.5)
    pts = np.array([ct.TransformIndexToPhysicalPoint((int(x), int(y), int(z))) for z, y, x in
                    zip(zz[::7], yy[::7], xx[::7])])
    assert abs(pts[:, 0].mean()) < 5.0 and abs(pts[:, 1].mean() - 62.0) < 6.0
    assert np.all(((pts[:, 0] / 24.0) ** 2 + ((pts[:, 1] - 62.0) / 20.0) ** 2) <= 1.0)  # inside the bodies
    assert 60.0 < seg.volume_ml < 140.0  # ~3 lumbar bodies' cancellous interior
    assert seg.z_range_mm[1] - seg.z_range_mm[0] == pytest.approx(3 * 36.0, abs=12.0)
    assert segment_l2_l4(sitk.Image(ct.GetSize(), sitk.sitkFloat32) - 1000.0) is None  # air: no spine


def test_marrow_roi_names():
    for name in ("L2-L4", "l2_l4", "L2 - L4", "RedMarrow", "red_marrow", "Marrow", "L2toL4"):
        assert is_marrow_roi_name(name), name
    for name in ("Liver", "Kidney_L", "L2", "Lesion_1", "Marrowless"):
        assert not is_marrow_roi_name(name), name


def _write_l2_l4_rtstructs(study: Path, shorten_mm: float = 18.0):
    """An RTSTRUCT with ROI 'L2-L4' on every scan's CT: the automatic VOI less ``shorten_mm`` at each end."""
    from LuDosimetryLib.io.dicom_common import PatientInfo, StudyInfo
    from LuDosimetryLib.io.rtstruct import ReferencedSeries, write_rtstruct

    for scan in sorted(int(p.name[4:]) for p in (study / "SPECT_Cts").iterdir()):
        files = _ct_files(study, scan)
        heads = sorted((pydicom.dcmread(str(f), stop_before_pixels=True) for f in files),
                       key=lambda d: float(d.ImagePositionPatient[2]))
        ct = read_ct(files)
        seg = segment_l2_l4(ct)
        z = np.array([ct.TransformIndexToPhysicalPoint((0, 0, k))[2] for k in range(ct.GetSize()[2])])
        mask = (seg.mask >= 0.5) & ((z > seg.z_range_mm[0] + shorten_mm) & (z < seg.z_range_mm[1] - shorten_mm))[:, None, None]
        h = heads[0]
        ref = ReferencedSeries(h.StudyInstanceUID, h.SeriesInstanceUID, h.FrameOfReferenceUID, h.SOPClassUID,
                               [d.SOPInstanceUID for d in heads])
        write_rtstruct(study / "VOIs" / f"scan{scan}" / "marrow" / "RTSTRUCT_marrow.dcm", {"L2-L4": mask}, ct, ref,
                       PatientInfo(str(h.PatientID), str(h.PatientName)),
                       StudyInfo(h.StudyInstanceUID, datetime(2020, 1, 1)), label="Marrow")


def test_rtstruct_roi_overrides_the_segmentation(synthetic_study_copy):
    _write_l2_l4_rtstructs(synthetic_study_copy)
    res = run_study(synthetic_study_copy, RunOptions(dose_method="ldm", marrow_method="auto"))
    rm = res.red_marrow
    assert "L2-L4" in res.vois
    assert rm["method"] == "image-based L2-L4 (RTSTRUCT ROI 'L2-L4')"
    assert rm["image_based"]["voi"] == "L2-L4"
    assert rm["tia_bq_s"] == pytest.approx(res.vois["L2-L4"].tia_bq_s / L2_L4_MARROW_FRACTION)
    assert any("'L2-L4' is the L2-L4 vertebral marrow" in a.what for a in res.assumptions)


# ------------------------------------------------------------------------------------------- blood files

def test_blood_sample_files(tmp_path):
    inj = datetime(2020, 1, 1, 8, 0)
    good = tmp_path / "b.csv"
    good.write_text("time,Activity (kBq/mL),note\n2020-01-01T09:00,50,a\n2020-01-02T08:00,10,b\n")
    s = read_blood_samples(good, inj)
    assert list(s.t_h) == [1.0, 24.0] and list(s.concentration_bq_per_ml) == [50e3, 10e3]
    hours = tmp_path / "h.csv"
    hours.write_text(format_blood_samples([1.0, 4.0], [2e4, 1e4]))
    assert list(read_blood_samples(hours).concentration_bq_per_ml) == pytest.approx([2e4, 1e4])
    bad = {"no_unit.csv": "time,activity\n1,2\n4,1\n", "text.csv": "time_h,c_Bq_per_mL\n1,2\n4,x\n",
           "before.csv": "time_h,c_Bq_per_mL\n-1,2\n4,1\n", "one.csv": "time_h,c_Bq_per_mL\n1,2\n",
           "iso_no_injection.csv": "time,c_Bq_per_mL\n2020-01-01T09:00,2\n2020-01-01T10:00,1\n"}
    for name, text in bad.items():
        (tmp_path / name).write_text(text)
        with pytest.raises(OptionError) as err:
            read_blood_samples(tmp_path / name)
        assert name in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(OptionError, match="row 3"):
        read_blood_samples(tmp_path / "text.csv")


def test_bad_blood_csv_exits_2_with_one_line(synthetic_study, tmp_path, capsys):
    bad = tmp_path / "blood.csv"
    bad.write_text("time_h,concentration_kBq_per_mL\n1,12\n24,lots\n")
    code = main(["run", str(synthetic_study), "--out", str(tmp_path / "out"), "--quiet", "--dose-method", "ldm", "--marrow-method", "auto",
                 "--blood-samples", str(bad)])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1 and "blood.csv" in err and "row 3" in err and "Traceback" not in err


# ------------------------------------------------------------------------------------------- run

def test_run_has_red_marrow(synthetic_study, tmp_path, capsys):
    truth = json.loads((synthetic_study / "truth.json").read_text())
    lam = LU.decay_constant_per_h
    t = np.array([1.0, 3.0, 24.0, 72.0, 144.0])
    k = lam + math.log(2) / 40.0
    csv = tmp_path / "blood.csv"
    csv.write_text(format_blood_samples(t, 30e3 * np.exp(-k * t)))
    out = tmp_path / "out"
    assert main(["run", str(synthetic_study), "--out", str(out), "--quiet", "--dose-method", "ldm", "--marrow-method", "auto",
                 "--blood-samples", str(csv), "--patient-sex", "F", "--rmblr", "0.8"]) == 0
    rm = json.loads((out / "results.json").read_text())["red_marrow"]
    assert rm["method"] == "blood-based" and rm["sex"] == "F" and rm["mass_g"] == 900.0
    # the header says M: the command line wins, and that is named (it was silent)
    sexes = [a for a in json.loads((out / "results.json").read_text())["assumptions"] if "PatientSex M" in a["what"]]
    assert len(sexes) == 1 and sexes[0]["value"] == "F" and sexes[0]["source"] == "the command line", sexes
    assert rm["tia_bq_s"] == pytest.approx(30e3 / k * 3600.0 / 1.06 * 0.8 * 900.0, rel=1e-4)
    assert rm["image_based"]["method"] == "image-based L2-L4 (automatic CT segmentation)"
    assert rm["image_based"]["tia_bq_s"] > 0 and "image_vs_blood_pct" in rm
    assert rm["mean_dose_gy"] == pytest.approx(rm["self_dose_gy"] + rm["cross_dose_remainder_gy"]
                                               + rm["cross_dose_organs_gy"])
    assert rm["self_dose_gy"] > rm["cross_dose_remainder_gy"] > 0
    assert rm["mean_dose_uncertainty_pct"] >= rm["tia_uncertainty_pct"] > 0
    assert "Red marrow" in (out / "report.html").read_text()
    # the image-based method alone, on the synthetic patient (spine at the remainder's concentration)
    res = run_study(synthetic_study, RunOptions(dose_method="ldm", marrow_method="image"))
    assert res.red_marrow["method"].startswith("image-based") and "blood_based" not in res.red_marrow
    assert truth["remainder"]["tia_bq_s"] > 0 and res.red_marrow["tia_bq_s"] > 0
    with pytest.raises(OptionError, match="blood"):
        run_study(synthetic_study, RunOptions(dose_method="ldm", marrow_method="blood"))
    assert run_study(synthetic_study, RunOptions(dose_method="ldm", marrow_method="none")).red_marrow is None


def test_a_time_point_segmented_short_does_not_move_the_image_based_curve(synthetic_study, monkeypatch):
    # one CT's automatic segmentation loses half the bodies' slices (as CT noise can make it): that time point's
    # concentration is used with the reference volume, and the run says so
    import dataclasses

    import LuDosimetryLib.vertebrae as vertebrae

    base = run_study(synthetic_study, RunOptions(dose_method="ldm", marrow_method="image")).red_marrow
    real, calls = vertebrae.segment_l2_l4, []

    def short_on_the_second(ct_hu):
        seg = real(ct_hu)
        calls.append(1)
        if len(calls) != 2:
            return seg
        mask = seg.mask.copy()
        slices = np.nonzero(mask.any(axis=(1, 2)))[0]
        mask[slices[: len(slices) // 2]] = 0.0
        return dataclasses.replace(seg, mask=mask, volume_ml=seg.volume_ml * float(mask.sum() / seg.mask.sum()))

    monkeypatch.setattr(vertebrae, "segment_l2_l4", short_on_the_second)
    res = run_study(synthetic_study, RunOptions(dose_method="ldm", marrow_method="image"))
    rm = res.red_marrow
    assert rm["image_based"]["volume_ml_per_time_point"][1] < 0.7 * rm["image_based"]["volume_ml_per_time_point"][0]
    assert rm["tia_bq_s"] == pytest.approx(base["tia_bq_s"], rel=0.05)
    assert any("L2-L4 volume of time point(s) 2" in w for w in res.warnings)
