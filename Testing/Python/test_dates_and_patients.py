"""Dates, injection times and patients (issue #12 items 3, 4, 6, 7 and parts of 17 and 18).

The injection time a run resolves (command line first, then headers) is the one used everywhere, including
to undo ``DecayCorrection ADMIN``; a date inferred from a time alone is a named assumption; the time points
used belong to one patient; scan times outside a plausible window, absurd time gaps, unreadable folders,
invalid acquisition dates and image files without a series are named, never silent, never a traceback.
"""
from __future__ import annotations

import json
import os
import shutil
from datetime import timedelta
from pathlib import Path

import pydicom
import pytest

from LuDosimetryLib import cli
from LuDosimetryLib.assumptions import AssumptionWarning, StrictRefusal, recording
from LuDosimetryLib.errors import DicomFileError, LuDosimetryError, StudyError
from LuDosimetryLib.io.images import read_spect
from LuDosimetryLib.io.inventory import scan_study
from LuDosimetryLib.pipeline import RunOptions, run_study

from study_builder import INJECTION, build_study


@pytest.fixture(scope="module")
def analytic(tmp_path_factory):
    """The analytic study (PT slices, DecayCorrection ADMIN), read-only: tests change copies."""
    return build_study(tmp_path_factory.mktemp("dates") / "study")


@pytest.fixture(scope="module")
def clean_tia(analytic):
    res = run_study(analytic.root, RunOptions(dose_method="ldm"))
    return {name: v.tia_bq_s for name, v in res.vois.items()}


def _copy(built, tmp_path) -> Path:
    return Path(shutil.copytree(str(built.root), str(tmp_path / "study")))


def _spect_files(root: Path, scan: int):
    return sorted((root / f"scan{scan}" / "spect").glob("*.dcm"))


def _all_spect_files(root: Path):
    return sorted(root.glob("scan*/spect/*.dcm"))


def _edit(paths, change):
    for path in paths:
        ds = pydicom.dcmread(str(path))
        change(ds)
        ds.save_as(str(path), enforce_file_format=False)


def _start_time_only(ds):
    item = ds.RadiopharmaceuticalInformationSequence[0]
    del item.RadiopharmaceuticalStartDateTime
    item.RadiopharmaceuticalStartTime = "092200"


def _shift_dates(years: int):
    def change(ds):
        for key in ("AcquisitionDate", "SeriesDate", "ContentDate", "StudyDate"):
            if key in ds:
                setattr(ds, key, str(int(getattr(ds, key)) + 10000 * years))
        ds.AcquisitionDateTime = str(int(ds.AcquisitionDateTime[:8]) + 10000 * years) + ds.AcquisitionDateTime[8:]
    return change


def _cli(args, capsys):
    rc = cli.main(args)
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


def _one_error_line(err: str) -> str:
    lines = [line for line in err.strip().splitlines() if line.startswith("ludosimetry: error: ")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


# ---------------------------------------------------------------- item 3: DecayCorrection ADMIN, one injection

def test_admin_correction_uses_the_study_injection_not_each_scan_day(analytic, clean_tia, tmp_path):
    """RadiopharmaceuticalStartTime without a date: the administration was placed on each scan's own day
    (TIA 1.4–1.9× too high); the study's injection time must be used for every scan."""
    study = _copy(analytic, tmp_path)
    _edit(_all_spect_files(study), _start_time_only)
    res = run_study(study, RunOptions(dose_method="ldm", injection_time=INJECTION))
    for name, tia in clean_tia.items():
        assert res.vois[name].tia_bq_s == pytest.approx(tia, rel=1e-3), name


def test_command_line_injection_wins_in_admin_correction_and_the_header_is_named(analytic):
    """The injection time given is used to undo ADMIN; the header's other time is named with both times."""
    files = _spect_files(analytic.root, 3)
    given = INJECTION + timedelta(hours=2)
    sp = read_spect(files, injection_time=given)
    assert "2018-11-15 09:22" in sp.injection_disagreement and "2018-11-15 11:22" in sp.injection_disagreement
    header = read_spect(files, injection_time=INJECTION)
    assert header.injection_disagreement == ""
    # an administration 2 h later: 2 h less decay to undo, the values are exp(λ·2 h) higher than with the header's
    lam_per_h = 0.693147 / (574300.8 / 3600.0)
    assert sp.factor_applied / header.factor_applied == pytest.approx(2.718281828 ** (lam_per_h * 2.0), rel=1e-4)


def test_a_header_that_disagrees_with_the_command_line_is_a_named_assumption(analytic, tmp_path, capsys):
    """The brief's trust rule: a header that disagrees with the command line is named in results.json's
    assumptions (it was a warning only), and --strict refuses the run."""
    argv = ["run", str(analytic.root), "--quiet", "--dose-method", "ldm", "--injection-time", "2018-11-15T09:40"]
    out = tmp_path / "o"
    rc, _out, err = _cli(argv + ["--out", str(out)], capsys)
    assert rc == 0, err
    printed = [line for line in err.splitlines() if line.startswith("assumption: ")]
    assert len(printed) == 1 and "09:22" in printed[0], err  # printed once, --quiet or not
    res = json.loads((out / "results.json").read_text())
    named = [a for a in res["assumptions"] if "RadiopharmaceuticalStartDateTime 2018-11-15 09:22" in a["what"]]
    assert len(named) == 1 and named[0]["value"] == "2018-11-15 09:40" and named[0]["source"] == "the command line"
    assert named[0]["path"] and named[0]["path"].endswith(".dcm")
    assert not [w for w in res["warnings"] if "09:22" in w]  # named once, as an assumption
    rc, _out, err = _cli(argv + ["--out", str(tmp_path / "strict"), "--strict"], capsys)
    assert rc == 2 and "strict" in err and "09:22" in err, err
    assert not (tmp_path / "strict").exists()
    # the header's own time given on the command line: nothing to name
    rc, _out, err = _cli(argv[:-1] + ["2018-11-15T09:22", "--out", str(tmp_path / "same"), "--strict"], capsys)
    assert rc == 0, err


def test_inventory_names_a_header_that_disagrees_with_the_command_line(analytic):
    given = INJECTION + timedelta(minutes=30)
    with pytest.warns(AssumptionWarning, match="09:52"):
        inv = scan_study(analytic.root, injection_time=given)
    assert inv.injection_time == given


def _total_dose(value_bq: float):
    def change(ds):
        ds.RadiopharmaceuticalInformationSequence[0].RadionuclideTotalDose = f"{value_bq:g}"
    return change


def test_injected_activities_that_disagree_are_named_assumptions(analytic, tmp_path, capsys):
    """The injected activity scales every Gy/GBq and a header in MBq every result: a header that disagrees with
    the command line, series that disagree with each other, and a header read as MBq are named assumptions
    (they were warnings, or, for the command line, nothing), and --strict refuses each."""
    clean = json.loads(_run_cli_json(analytic.root, tmp_path / "clean", capsys))
    assert not [a for a in clean["assumptions"] if "activity" in a["what"] or "RadionuclideTotalDose" in a["what"]]

    given = _run_cli_json(analytic.root, tmp_path / "given", capsys, "--injected-activity-mbq", "7000")
    named = [a for a in json.loads(given)["assumptions"] if "RadionuclideTotalDose" in a["what"]]
    assert len(named) == 1 and "7.21e+09 Bq" in named[0]["what"] and named[0]["value"] == "7000 MBq", named
    assert named[0]["source"] == "the command line"
    # within 1 % of the header (a rounded value): nothing to name
    assert not [a for a in json.loads(_run_cli_json(analytic.root, tmp_path / "near", capsys,
                                                    "--injected-activity-mbq", "7200"))["assumptions"]
                if "RadionuclideTotalDose" in a["what"]]

    study = _copy(analytic, tmp_path)
    _edit(_spect_files(study, 1), _total_dose(7210.0))  # the first series in MBq
    _edit(_spect_files(study, 3), _total_dose(6.5e9))   # another series disagreeing
    res = json.loads(_run_cli_json(study, tmp_path / "edited", capsys))
    whats = [a["what"] for a in res["assumptions"]]
    assert any("RadionuclideTotalDose 7210 read as MBq" in w for w in whats), whats
    assert any("RadionuclideTotalDose 6.5e+09 Bq (1 series)" in w for w in whats), whats
    assert res["injected_activity_bq"] == pytest.approx(7.21e9)
    rc, _out, err = _cli(["run", str(study), "--out", str(tmp_path / "strict"), "--quiet", "--dose-method", "ldm",
                          "--strict"], capsys)
    assert rc == 2 and "strict" in err and "RadionuclideTotalDose" in err, err


def _run_cli_json(study, out, capsys, *extra) -> str:
    rc, _out, err = _cli(["run", str(study), "--out", str(out), "--quiet", "--dose-method", "ldm", *extra], capsys)
    assert rc == 0, err
    return (out / "results.json").read_text()


# ------------------------------------------------------------- item 4: injection date from a time alone

def test_injection_date_inferred_from_a_time_alone_is_an_assumption(analytic, tmp_path):
    """First scan on day 1: the date of a time-only start is a guess (the time points move 24 h): named, and
    --strict refuses it."""
    study = _copy(analytic, tmp_path)
    shutil.rmtree(str(study / "scan1"))
    _edit(_all_spect_files(study), _start_time_only)
    with recording() as log:
        inv = scan_study(study)
    assert inv.injection_time is not None
    assumed = [a for a in log.items if "RadiopharmaceuticalStartTime" in a.source + a.what]
    assert assumed, log.items
    assert "date" in assumed[0].what and assumed[0].path and assumed[0].path.startswith(str(study))
    with recording(strict=True), pytest.raises(StrictRefusal) as err:
        scan_study(study)
    assert str(study) in str(err.value)
    # with --injection-time nothing is inferred
    with recording(strict=True):
        scan_study(study, injection_time=INJECTION)


def test_strict_run_refuses_an_inferred_injection_date(analytic, tmp_path, capsys):
    study = _copy(analytic, tmp_path)
    _edit(_all_spect_files(study), _start_time_only)
    rc, _out, err = _cli(["run", str(study), "--out", str(tmp_path / "o"), "--quiet", "--strict"], capsys)
    assert rc == 2 and "strict" in _one_error_line(err)


# --------------------------------------------------------------------------- item 6: another patient's series

def _add_foreign_series(study: Path, days: int = 2) -> Path:
    target = study / "other" / "spect"
    target.mkdir(parents=True)
    uid = pydicom.uid.generate_uid()
    for path in _spect_files(study, 2):
        ds = pydicom.dcmread(str(path))
        ds.PatientID, ds.PatientName = "OTHER-PATIENT-42", "Other^Patient"
        ds.SeriesInstanceUID = uid
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
        _shift_days(ds, days)
        ds.save_as(str(target / path.name), enforce_file_format=False)
    return target


def _shift_days(ds, days):
    from datetime import datetime
    for key in ("AcquisitionDate", "SeriesDate", "ContentDate"):
        when = datetime.strptime(str(getattr(ds, key)), "%Y%m%d") + timedelta(days=days)
        setattr(ds, key, when.strftime("%Y%m%d"))
    when = datetime.strptime(ds.AcquisitionDateTime[:8], "%Y%m%d") + timedelta(days=days)
    ds.AcquisitionDateTime = when.strftime("%Y%m%d") + ds.AcquisitionDateTime[8:]


def test_another_patients_series_is_not_a_fifth_time_point(analytic, tmp_path):
    study = _copy(analytic, tmp_path)
    foreign = _add_foreign_series(study)
    with pytest.raises(StudyError) as err:
        run_study(study, RunOptions(dose_method="ldm"))
    text = str(err.value)
    assert "TEST001" in text and "OTHER-PATIENT-42" in text, text
    assert str(foreign) in text, text
    assert "registration" not in text, text  # no advice about propagating contours (item 18)


def test_a_relabelled_time_point_is_refused_naming_both_ids(analytic, tmp_path):
    study = _copy(analytic, tmp_path)
    _edit(_spect_files(study, 3), lambda ds: setattr(ds, "PatientID", "OTHER-PATIENT-42"))
    with pytest.raises(StudyError, match="OTHER-PATIENT-42") as err:
        run_study(study, RunOptions(dose_method="ldm"))
    assert "TEST001" in str(err.value) and "scan3" in str(err.value)


# ----------------------------------------------------------------------------- item 7: implausible dates

def test_a_scan_years_after_the_injection_is_refused_naming_the_series(analytic, tmp_path, capsys):
    study = _copy(analytic, tmp_path)
    _edit(_spect_files(study, 4), _shift_dates(12))
    rc, _out, err = _cli(["run", str(study), "--out", str(tmp_path / "o"), "--quiet", "--dose-method", "ldm"],
                         capsys)
    line = _one_error_line(err)
    assert rc == 2 and "scan4" in line and "C2S4" in line and "days after the injection" in line, line
    assert not (tmp_path / "o").exists()


def test_a_slice_whose_date_disagrees_with_its_series_is_refused_naming_it(analytic, tmp_path):
    study = _copy(analytic, tmp_path)
    victim = _spect_files(study, 2)[0]
    _edit([victim], _shift_dates(12))
    with pytest.warns(UserWarning, match=victim.name), pytest.raises(DicomFileError) as err:
        run_study(study, RunOptions(dose_method="ldm"))
    assert err.value.path is not None and Path(err.value.path) == victim, str(err.value)


# ------------------------------------------------------------ item 17: absurd time gaps, no ZeroDivision

def test_decay_factor_over_twenty_years_is_an_error_naming_the_file(analytic, tmp_path):
    study = _copy(analytic, tmp_path)
    files = _spect_files(study, 1)
    _edit(files, lambda ds: setattr(ds.RadiopharmaceuticalInformationSequence[0],
                                    "RadiopharmaceuticalStartDateTime", "19981115092200"))
    with pytest.raises(DicomFileError) as err:
        read_spect(files)
    assert err.value.path and Path(err.value.path).parent == files[0].parent


def test_injection_twenty_years_before_the_scans_is_one_error_line(analytic, tmp_path, capsys):
    rc, _out, err = _cli(["run", str(analytic.root), "--out", str(tmp_path / "o"), "--quiet", "--dose-method", "ldm",
                          "--injection-time", "1998-11-15T09:22"], capsys)
    line = _one_error_line(err)
    assert rc == 2 and str(analytic.root) in line and "days after the injection" in line, line


# ------------------------------------------------------------------------------ item 18: named, not silent

def test_unreadable_folder_is_an_error_like_an_unreadable_file(analytic, tmp_path, monkeypatch):
    study = _copy(analytic, tmp_path)
    locked = study / "scan2" / "ct"
    real_scandir = os.scandir

    def scandir(path="."):
        if Path(os.fsdecode(path)) == locked:
            raise PermissionError(13, "Permission denied", os.fsdecode(path))
        return real_scandir(path)
    monkeypatch.setattr(os, "scandir", scandir)
    inv = scan_study(study)
    assert any(item["file"] == str(locked) and "unreadable folder" in item["reason"] for item in inv.skipped)
    with pytest.raises(LuDosimetryError) as err:
        run_study(study, RunOptions(dose_method="ldm"))
    assert err.value.path is not None and Path(err.value.path) == locked


def test_invalid_acquisition_date_falls_back_with_a_warning(analytic, tmp_path):
    study = _copy(analytic, tmp_path)

    def change(ds):
        del ds.AcquisitionDateTime
        ds.AcquisitionDate = "20261345"
    _edit(_spect_files(study, 2), change)
    with pytest.warns(UserWarning, match="AcquisitionDate '20261345'"):
        inv = scan_study(study)
    assert any("20261345" in w for w in inv.warnings)


def test_edge_slice_without_series_uid_is_not_dropped_silently(analytic, tmp_path):
    study = _copy(analytic, tmp_path)
    victim = _spect_files(study, 1)[0]  # the lowest slice: no gap shows where it is missing
    _edit([victim], lambda ds: delattr(ds, "SeriesInstanceUID"))
    with pytest.raises(DicomFileError) as err:
        run_study(study, RunOptions(dose_method="ldm"))
    assert Path(err.value.path) == victim and "SeriesInstanceUID" in str(err.value)


def test_a_non_image_file_without_series_uid_stays_skipped(analytic, tmp_path):
    study = _copy(analytic, tmp_path)
    ds = pydicom.Dataset()
    ds.PatientID = "X"
    ds.save_as(str(study / "DICOMDIR"), implicit_vr=True, little_endian=True)
    res = run_study(study, RunOptions(dose_method="ldm"))
    assert res.vois
    assert json.dumps(res.to_json()["assumptions"]) == "[]"
