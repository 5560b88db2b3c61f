"""Reconstruction inputs from real cameras (issue #12, items 14-16).

GE projections carry no Radiopharmaceutical Information Sequence: they are reconstructed, and the output
says where the injection came from (or that it is not known). The collimator of the PSF model comes from
``--collimator``, else the header, else a named assumption, and is recorded in the output; the dead-time
factor is applied and recorded; the syringe residual is subtracted from the injected activity and recorded
in results.json. Without PyTomography, ``phantom --preset`` and ``reconstruct`` end in one line.
"""
from __future__ import annotations

import json
import subprocess
import sys
import warnings
from datetime import datetime
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from LuDosimetryLib import options
from LuDosimetryLib.assumptions import StrictRefusal, recording
from LuDosimetryLib.cli import main
from LuDosimetryLib.recon.collimator import choose_collimator, from_header

ROOT = Path(__file__).resolve().parents[2]
ACQ = datetime(2024, 3, 5, 10, 0, 0)
INJ = datetime(2024, 3, 4, 9, 30, 0)
SP = 8.0  # mm


def _header(maker="", model="", grid=""):
    ds = pydicom.Dataset()
    if maker:
        ds.Manufacturer = maker
    if model:
        ds.ManufacturerModelName = model
    if grid:
        det = pydicom.Dataset()
        det.CollimatorGridName = grid
        ds.DetectorInformationSequence = [det]
    return ds


# ------------------------------------------------------------------------------------ the collimator

@pytest.mark.parametrize("maker, model, grid, code", [
    ("SIEMENS NM", "Symbia Intevo Bold", "MELP", "SY-ME"),
    ("SIEMENS NM", "Encore2 E.CAM", "ME", "SE-ME"),
    ("GE MEDICAL SYSTEMS", "Tandem_Discovery_670", "MEGP", "GI-MEGP"),
    ("GE HEALTHCARE", "NM/CT 870 DR", "MEGP", "G8-MEGP"),
    ("GE MEDICAL SYSTEMS", "Infinia", "LEHR", "GI-LEHR"),
    ("Philips Medical Systems", "BrightView XCT", "MEGP", "PB-MEGP"),
])
def test_collimator_from_header(maker, model, grid, code):
    assert from_header(_header(maker, model, grid))[0] == code
    choice = choose_collimator(_header(maker, model, grid))
    assert (choice.code, choice.source) == (code, "header") and grid in choice.describe()
    assert code in options.COLLIMATORS


def test_collimator_option_first_and_unknown_header_is_an_assumption():
    ge = _header("GE MEDICAL SYSTEMS", "Tandem_Discovery_670", "MEGP")
    choice = choose_collimator(ge, "SY-ME")
    assert (choice.code, choice.source, choice.header_code) == ("SY-ME", "option", "GI-MEGP")
    with recording() as log:
        choice = choose_collimator(_header("GE MEDICAL SYSTEMS", "Tandem_Discovery_670"), path="p.dcm")
    assert (choice.code, choice.source) == ("GI-MEGP", "assumed")  # the maker's medium-energy collimator
    assert [(a.value, a.path) for a in log.items] == [("GI-MEGP", "p.dcm")]
    with recording() as log:
        assert choose_collimator(None).code == "SY-ME"
    assert len(log) == 1
    with pytest.raises(StrictRefusal, match="collimator"), recording(strict=True):
        choose_collimator(_header("ACME", "", "ODD"))


def test_every_collimator_choice_is_exactly_a_pytomography_table_entry():
    """PyTomography finds a code as a substring of the table's lines: each choice must hit its own line,
    and the PSF must follow the collimator (GE MEGP's longer holes: narrower than Siemens ME)."""
    pytest.importorskip("pytomography")
    from LuDosimetryLib.recon import system

    codes = system.collimator_table_codes()
    table = Path(sys.modules["pytomography"].__file__).parent / "data" / "collim.col"
    lines = table.read_text(encoding="latin-1").splitlines()
    for code in options.COLLIMATORS:
        assert code in codes, code
        first = next(line for line in lines if code in line)
        assert first.split()[0] == "*" + code, (code, first)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sigma = {code: float(system.psf_meta(None, collimator=code).sigma_fit(
            np.array([20.0]), *system.psf_meta(None, collimator=code).sigma_fit_params)[0])
            for code in ("SY-ME", "GI-MEGP")}
    assert sigma["GI-MEGP"] < 0.9 * sigma["SY-ME"], sigma
    with pytest.raises(options.OptionError, match="collimator table"):
        system.psf_meta(None, collimator="XX-NONE")


# -------------------------------------------------------------------------------- GE projections

@pytest.fixture(scope="module")
def studies(tmp_path_factory):
    """A tiny Siemens-like projection study (32² x 16 views) and its GE copy without injection."""
    pytest.importorskip("pytomography")
    from LuDosimetryLib.io.dicom_common import PatientInfo, StudyInfo
    from LuDosimetryLib.phantom.projections import write_projection_series
    from LuDosimetryLib.recon.mumap import write_mumap_series

    root = tmp_path_factory.mktemp("recon_inputs")
    n = 24
    z, y, x = (np.mgrid[:n, :n, :n].astype(float) - (n - 1) / 2.0) * SP
    body = (x / 80) ** 2 + (y / 60) ** 2 <= 1
    act = np.where(body, 1000.0, 0.0)
    act[((x + 30) / 35) ** 2 + (y / 30) ** 2 + (z / 40) ** 2 <= 1] = 20000.0

    def img(a):
        i = sitk.GetImageFromArray(a.astype(np.float32))
        i.SetSpacing((SP,) * 3)
        i.SetOrigin((-(n - 1) / 2.0 * SP,) * 3)
        return i

    st = StudyInfo(study_instance_uid="1.2.826.0.1.3680043.2.1125.77.12", study_datetime=ACQ)
    pat = PatientInfo(patient_id="GE01", patient_name="Ge^Test")
    siemens = root / "siemens"
    proj = write_projection_series(siemens / "proj", img(act), img(np.where(body, 0.0135, 0.0)),
                                   acquisition_datetime=ACQ, duration_s=1200, injected_activity_bq=7.4e9,
                                   injection_datetime=INJ, patient=pat, study=st, series_description="Lu177 SPECT",
                                   forms=("unaltered",), n_views=16, matrix=32, pixel_mm=8.0, seed=3)
    write_mumap_series(siemens / "mumap", img(np.where(body, 0.0135, 0.0)), 128, pat, st, "CTAC mu-map 208 keV",
                       None)
    ge = root / "ge"
    (ge / "proj").mkdir(parents=True)
    for f in (siemens / "mumap").rglob("*.dcm"):
        target = ge / "mumap" / f.relative_to(siemens / "mumap")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(f.read_bytes())
    ds = pydicom.dcmread(str(proj[0]))
    ds.Manufacturer = "GE MEDICAL SYSTEMS"
    ds.ManufacturerModelName = "Tandem_Discovery_670"
    for det in ds.DetectorInformationSequence:
        det.CollimatorGridName = "MEGP"
    del ds.RadiopharmaceuticalInformationSequence  # as raw GE projections come
    ds.save_as(str(ge / "proj" / "ge_projections.dcm"))
    return {"siemens": siemens, "ge": ge}


RECON = ["--iterations", "1", "--subsets", "4", "--quiet"]


def _recon_header(out: Path) -> pydicom.Dataset:
    files = sorted(out.rglob("NM_RECON.dcm"))
    assert len(files) == 1, files
    return pydicom.dcmread(str(files[0]))


def test_ge_projections_without_injection_are_reconstructed(studies, tmp_path, capsys, monkeypatch):
    from LuDosimetryLib.recon import reconstruct

    used = []
    real = reconstruct.build_system_matrix
    monkeypatch.setattr(reconstruct, "build_system_matrix",
                        lambda *a, **k: used.append(k["collimator"]) or real(*a, **k))
    out = tmp_path / "recon"
    assert main(["reconstruct", str(studies["ge"]), "--out", str(out)] + RECON) == 0
    err = capsys.readouterr().err
    assert "warning:" in err and "injected activity" in err and "ge_projections.dcm" in err
    ds = _recon_header(out)
    item = ds.RadiopharmaceuticalInformationSequence[0]
    assert "RadionuclideTotalDose" not in item and "RadiopharmaceuticalStartDateTime" not in item
    assert "collimator GI-MEGP (header" in ds.DerivationDescription and "injection: not known" in ds.DerivationDescription
    assert used == ["GI-MEGP"]  # the PSF model is the header's collimator
    assert np.isfinite(ds.pixel_array).all() and float(ds.pixel_array.max()) > 0


def test_ge_projections_with_injection_from_the_command_line(studies, tmp_path, capsys):
    out = tmp_path / "recon"
    assert main(["reconstruct", str(studies["ge"]), "--out", str(out), "--injected-activity-mbq", "7400",
                 "--injection-time", INJ.isoformat(), "--collimator", "SY-ME"] + RECON) == 0
    err = capsys.readouterr().err
    assert "injected activity" not in err
    assert "SY-ME as given, although the header names GI-MEGP" in err
    ds = _recon_header(out)
    item = ds.RadiopharmaceuticalInformationSequence[0]
    assert float(item.RadionuclideTotalDose) == pytest.approx(7400.0)  # MBq in the NM Isotope module
    assert item.RadiopharmaceuticalStartDateTime.startswith(INJ.strftime("%Y%m%d%H%M%S"))
    assert "collimator SY-ME (option" in ds.DerivationDescription
    assert "injection: command line" in ds.DerivationDescription


def test_dead_time_factor_is_applied_and_recorded(studies, tmp_path):
    values = {}
    for factor in ("1", "1.25"):
        out = tmp_path / f"recon{factor}"
        assert main(["reconstruct", str(studies["siemens"]), "--out", str(out), "--dead-time-factor", factor]
                    + RECON) == 0
        ds = _recon_header(out)
        assert f"dead-time factor {float(factor):g};" in ds.DerivationDescription
        assert "collimator SY-ME (header" in ds.DerivationDescription
        values[factor] = ds.pixel_array.astype(float) * float(ds.RescaleSlope)
    ratio = values["1.25"].sum() / values["1"].sum()
    assert ratio == pytest.approx(1.25, rel=1e-3)


def test_dead_time_factor_below_one_is_refused(studies, tmp_path, capsys):
    assert main(["reconstruct", str(studies["siemens"]), "--out", str(tmp_path / "r"), "--dead-time-factor",
                 "0.9"] + RECON) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--dead-time-factor" in err[0]


# ------------------------------------------------------------------------------- syringe residual

def test_residual_activity_is_subtracted_and_recorded(synthetic_study, tmp_path, capsys):
    runs = {}
    for name, extra in (("plain", []), ("residual", ["--residual-activity-mbq", "210"])):
        out = tmp_path / name
        assert main(["run", str(synthetic_study), "--out", str(out), "--quiet", "--dose-method", "ldm"] + extra) == 0
        runs[name] = json.loads((out / "results.json").read_text())
    plain, res = runs["plain"], runs["residual"]
    assert "residual_activity_bq" not in plain
    assert res["residual_activity_bq"] == pytest.approx(210e6)
    assert res["injected_activity_before_residual_bq"] == pytest.approx(plain["injected_activity_bq"])
    assert res["injected_activity_bq"] == pytest.approx(plain["injected_activity_bq"] - 210e6)
    ratio = plain["injected_activity_bq"] / res["injected_activity_bq"]
    for name, v in res["vois"].items():
        assert v["tiac_h"] == pytest.approx(plain["vois"][name]["tiac_h"] * ratio, rel=1e-9), name
        assert v["tia_bq_s"] == pytest.approx(plain["vois"][name]["tia_bq_s"], rel=1e-9), name
    assert main(["run", str(synthetic_study), "--out", str(tmp_path / "bad"), "--quiet",
                 "--residual-activity-mbq", "1e6"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--residual-activity-mbq" in err[0] and "smaller than the injected" in err[0]


# -------------------------------------------------------------------------------- no PyTomography

_WITHOUT_PYTOMOGRAPHY = ("import sys; sys.modules['pytomography'] = None; "
                         "from LuDosimetryLib.cli import main; sys.exit(main(sys.argv[1:]))")


@pytest.mark.parametrize("command", [["phantom", "{out}", "--preset", "patient4", "--fast", "--quiet"],
                                     ["reconstruct", "{study}", "--out", "{out}", "--quiet"]])
def test_without_pytomography_one_line(tmp_path, command):
    out = tmp_path / "out"
    args = [a.format(out=out, study=tmp_path) for a in command]
    res = subprocess.run([sys.executable, "-c", _WITHOUT_PYTOMOGRAPHY] + args, capture_output=True, text=True,
                         cwd=str(ROOT), timeout=300)
    assert res.returncode == 2, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in res.stderr, res.stderr
    assert lines[0].startswith("ludosimetry: error: ") and "PyTomography" in lines[0]
    assert "pip install pytomography" in lines[0]
    if command[0] == "phantom":
        assert "--no-projections" in lines[0]
    assert not out.exists()


def test_dew_without_its_multiplier_is_refused_before_any_file_is_read(tmp_path, capsys):
    from LuDosimetryLib import cli
    rc = cli.main(["reconstruct", str(tmp_path / "no-such-study"), "--out", str(tmp_path / "out"),
                   "--scatter", "dew"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "--dew-k" in err[0]
