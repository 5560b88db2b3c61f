"""The command line: dvh on our own RT Dose, phantom and demo."""
from __future__ import annotations

import json

import pytest

from LuDosimetryLib.cli import main

from study_builder import build_study


def test_dvh_of_our_rtdose_matches_the_run(tmp_path, capsys):
    built = build_study(tmp_path / "study")
    out = tmp_path / "run"
    assert main(["run", str(built.root), "--out", str(out), "--quiet", "--dose-method", "dvk"]) == 0
    res = json.loads((out / "results.json").read_text())
    dvh_out = tmp_path / "dvh"
    rs = built.root / "scan1" / "vois" / "rtstruct.dcm"
    assert main(["dvh", "--dose", str(out / "rtdose.dcm"), "--structures", str(rs), "--out", str(dvh_out),
                 "--supersample", "3"]) == 0
    printed = capsys.readouterr().out
    stats = json.loads((dvh_out / "results.json").read_text())["vois"]
    for name, v in res["vois"].items():
        assert name in printed
        assert stats[name]["mean_dose_gy"] == pytest.approx(v["mean_dose_gy"], rel=0.01)
        assert stats[name]["d50_gy"] == pytest.approx(v["d50_gy"], rel=0.02)
    assert (dvh_out / "dvh.csv").read_text().startswith("voi,")
    assert (dvh_out / "dvh.png").stat().st_size > 1000
    # the same OUT again without --overwrite is refused, and nothing is changed
    before = (dvh_out / "results.json").read_text()
    assert main(["dvh", "--dose", str(out / "rtdose.dcm"), "--structures", str(rs), "--out", str(dvh_out)]) == 2
    assert (dvh_out / "results.json").read_text() == before


def test_dvh_bad_input(tmp_path, capsys):
    (tmp_path / "x.dcm").write_text("not dicom")
    assert main(["dvh", "--dose", str(tmp_path / "x.dcm"), "--structures", str(tmp_path / "x.dcm"),
                 "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "x.dcm" in err and err.startswith("ludosimetry: error:")
    assert not (tmp_path / "o").exists()


def test_phantom_and_demo_fast(tmp_path, capsys):
    assert main(["phantom", str(tmp_path / "ph"), "--fast", "--quiet"]) == 0
    truth = json.loads((tmp_path / "ph" / "truth.json").read_text())
    assert {"Liver", "Kidney_L"} <= set(truth["vois"])
    assert main(["phantom", str(tmp_path / "ph"), "--fast", "--quiet"]) == 2  # exists, no --overwrite
    capsys.readouterr()
    assert main(["demo", "--dir", str(tmp_path / "demo"), "--fast", "--dose-method", "ldm"]) == 0
    out = capsys.readouterr().out
    assert "Against the phantom's truth" in out and "Kidney_L" in out
    res = json.loads((tmp_path / "demo" / "results" / "results.json").read_text())
    truth = json.loads((tmp_path / "demo" / "study" / "truth.json").read_text())
    # organs within 10 % of the analytic truth on the coarse fast grid, with the demo's GTM correction
    for name in ("Liver", "Kidney_L", "Kidney_R", "Spleen"):
        assert res["vois"][name]["tia_bq_s"] == pytest.approx(truth["vois"][name]["tia_bq_s"], rel=0.10), name


def test_reconstruct_without_projections_is_a_clear_error(tmp_path, capsys):
    built = build_study(tmp_path / "study")
    assert main(["reconstruct", str(built.root), "--out", str(tmp_path / "r"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("ludosimetry: error:") and "projection" in err
    assert main(["reconstruct", str(built.root), "--out", str(tmp_path / "r"), "--iterations", "0"]) == 2
    assert "iterations" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_spect_source_choice(tmp_path, capsys):
    built = build_study(tmp_path / "study")
    # the analytic study has only vendor-style SPECT: asking for our reconstructions is a clear error
    assert main(["run", str(built.root), "--out", str(tmp_path / "o"), "--spect", "reconstructed"]) == 2
    assert "ludosimetry reconstruct" in capsys.readouterr().err
    assert main(["run", str(built.root), "--out", str(tmp_path / "o"), "--spect", "vendor", "--quiet",
                 "--dose-method", "ldm"]) == 0
    assert main(["run", str(built.root), "--out", str(tmp_path / "o2"), "--recon-dir", str(tmp_path / "nope")]) == 2
    assert "does not exist" in capsys.readouterr().err
