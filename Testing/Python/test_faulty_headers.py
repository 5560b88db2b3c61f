"""Faulty image headers and structure sets (#12 items 5, 8, 9, 17, 18): each is refused with one error naming
its file, or taken with a named assumption or a warning; never a silent change of result, never a traceback.

All on copies of the fast synthetic patient (four time points, reference 1, organs and lesions per time point).
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import List

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from LuDosimetryLib import cli, vois
from LuDosimetryLib.assumptions import StrictRefusal
from LuDosimetryLib.errors import DicomFileError, StructureError, StudyError
from LuDosimetryLib.pipeline import RunOptions, run_study


# ------------------------------------------------------------------------------------------ helpers

def _images(study: Path, role: str, tp: int) -> List[Path]:
    """The files of one series: role 'spect' or 'ct', time point 1..4."""
    return sorted((study / "SPECT_Cts" / f"scan{tp}" / role).glob("*.dcm"))


def _rtstruct(study: Path, tp: int, kind: str = "organs") -> Path:
    return study / "VOIs" / f"scan{tp}" / kind / f"RTSTRUCT_{kind}.dcm"


def _edit(paths, change) -> None:
    for path in paths:
        ds = pydicom.dcmread(str(path))
        change(ds)
        ds.save_as(str(path), enforce_file_format=False)


def _set(keyword, value):
    return lambda ds: setattr(ds, keyword, value)


def _delete(keyword):
    return lambda ds: delattr(ds, keyword) if keyword in ds else None


def _run(study: Path, **options):
    return run_study(study, RunOptions(dose_method="ldm", **options))


def _refusal(study: Path, error=DicomFileError, **options):
    with pytest.raises(error) as caught:
        _run(study, **options)
    return caught.value


def _empty_roi(name: str):
    """Empty the ContourSequence of ROI ``name`` (the ROI stays in the file)."""
    def change(ds):
        number = next(int(r.ROINumber) for r in ds.StructureSetROISequence if r.ROIName == name)
        for item in ds.ROIContourSequence:
            if int(item.ReferencedROINumber) == number:
                item.ContourSequence = pydicom.Sequence([])
    return change


def _finite(results) -> None:
    for name, voi in results.vois.items():
        for key in ("volume_ml", "tia_bq_s", "mean_dose_gy", "d50_gy", "max_dose_gy"):
            assert math.isfinite(getattr(voi, key)), f"{name}.{key} = {getattr(voi, key)}"


@pytest.fixture(scope="module")
def clean(synthetic_study):
    return _run(synthetic_study)


# ------------------------------------------------------------------------ item 5: RescaleSlope / Intercept

@pytest.mark.parametrize("role, tp, value, where", [
    ("spect", 2, "0", "whole series"), ("spect", 2, "0", "one slice"), ("spect", 2, "-1", "whole series"),
    ("spect", 2, "1e30", "whole series"), ("spect", 2, "1e-30", "one slice"), ("spect", 2, "nan", "one slice"),
    ("spect", 2, "1e9", "whole series"),  # each slope plausible, the concentrations (1e13 Bq/mL) not
    ("ct", 1, "1e-30", "whole series"), ("ct", 1, "1e30", "one slice"), ("ct", 1, "-1", "one slice")])
def test_an_implausible_rescale_slope_is_refused_naming_the_file(synthetic_study_copy, role, tp, value, where):
    # Before: 0 was read as 1 (TIA -81 %), -1 gave negative activities with exit 0, 1e30 failed naming no
    # file, 1e-30 on one SPECT slice changed the kidneys by 3-7 % and on the reference CT the doses x880.
    files = _images(synthetic_study_copy, role, tp)
    target = files[12:13] if where == "one slice" else files
    _edit(target, _set("RescaleSlope", value))
    error = _refusal(synthetic_study_copy)
    assert error.path in {str(p) for p in target}
    assert "RescaleSlope" in str(error)


def test_a_slope_far_from_the_series_other_slices_is_refused(synthetic_study_copy):
    # Per-slice slopes (scaled to each slice's maximum) are normal; one 1e7 times the others' is damage,
    # though plausible by itself.
    files = _images(synthetic_study_copy, "spect", 2)
    slope = float(pydicom.dcmread(str(files[12])).RescaleSlope)
    _edit(files[12:13], _set("RescaleSlope", f"{slope * 1e7:.6g}"))
    error = _refusal(synthetic_study_copy)
    assert error.path == str(files[12]) and "median" in str(error)


def test_rescale_slope_missing_from_a_whole_pet_series_is_a_named_assumption(synthetic_study_copy):
    # Before: read as 1 without a word (kidney TIA -81 %).
    files = _images(synthetic_study_copy, "spect", 2)
    _edit(files, _delete("RescaleSlope"))
    results = _run(synthetic_study_copy)
    assumed = [a for a in results.assumptions if "RescaleSlope" in a.what]
    assert len(assumed) == 1 and assumed[0].value == "RescaleSlope 1" and assumed[0].path == str(files[0])
    _finite(results)
    with pytest.raises(StrictRefusal):
        _run(synthetic_study_copy, strict=True)


def test_rescale_intercept_missing_from_the_reference_ct_is_a_named_assumption(synthetic_study_copy):
    # Before: read as 0 without a word (HU +1024: every dose -36 %).
    _edit(_images(synthetic_study_copy, "ct", 1), _delete("RescaleIntercept"))
    results = _run(synthetic_study_copy)
    assert [a.value for a in results.assumptions if "RescaleIntercept" in a.what] == ["RescaleIntercept 0"]


def test_rescale_missing_from_one_slice_only_is_refused_naming_it(synthetic_study_copy):
    files = _images(synthetic_study_copy, "spect", 2)
    _edit(files[7:8], _delete("RescaleSlope"))
    error = _refusal(synthetic_study_copy)
    assert error.path == str(files[7]) and "other files of the series" in str(error)


@pytest.mark.parametrize("value", ["1e30", "-1e30", "nan"])
def test_an_absurd_rescale_intercept_is_refused(synthetic_study_copy, value):
    files = _images(synthetic_study_copy, "ct", 1)
    _edit(files[3:4], _set("RescaleIntercept", value))
    assert _refusal(synthetic_study_copy).path == str(files[3])


# ------------------------------------------------------------------- item 8: pixel data vs Rows x Columns

@pytest.mark.parametrize("change", [
    _set("Columns", 47),                                       # pydicom cuts the excess: a sheared image
    lambda ds: setattr(ds, "PixelData", ds.PixelData + bytes(962)),
    _set("BitsAllocated", 32),
])
def test_pixel_data_that_disagree_with_the_matrix_are_refused_naming_the_file(synthetic_study_copy, change):
    # Before: Columns 47 on a whole series gave a sheared image (kidney TIA -86 %) with pydicom's warning only.
    files = _images(synthetic_study_copy, "spect", 2)
    _edit(files, change)
    error = _refusal(synthetic_study_copy)
    assert error.path in {str(p) for p in files} and "pixel data hold" in str(error)


# -------------------------------------------------------- item 17: Rows missing, PixelSpacing 0 or negative

@pytest.mark.parametrize("role", ["spect", "ct"])
def test_rows_missing_on_one_slice_is_one_error_naming_it(synthetic_study_copy, role):
    # Before: AttributeError (a traceback).
    files = _images(synthetic_study_copy, role, 2)
    _edit(files[5:6], _delete("Rows"))
    error = _refusal(synthetic_study_copy)
    assert error.path == str(files[5]) and "Rows is missing" in str(error)


@pytest.mark.parametrize("role, spacing", [("spect", ["0", "0"]), ("spect", ["-4.8", "4.8"]),
                                           ("ct", ["-2.4", "2.4"]), ("spect", ["1e9", "1e9"])])
def test_a_pixel_spacing_that_is_no_voxel_size_is_refused(synthetic_study_copy, role, spacing):
    # Before: 0 and negative ended in SimpleITK's "Refusing to change spacing" traceback; 1e9 made the VOIs vanish.
    files = _images(synthetic_study_copy, role, 2)
    _edit(files, _set("PixelSpacing", spacing))
    error = _refusal(synthetic_study_copy)
    assert error.path in {str(p) for p in files} and "PixelSpacing" in str(error)


def test_the_command_line_prints_one_line_naming_the_file(synthetic_study_copy, tmp_path, capsys):
    files = _images(synthetic_study_copy, "ct", 2)
    _edit(files[5:6], _delete("Rows"))
    _edit(_images(synthetic_study_copy, "spect", 3), _set("PixelSpacing", ["0", "0"]))
    out = tmp_path / "out"
    assert cli.main(["run", str(synthetic_study_copy), "--out", str(out), "--dose-method", "ldm", "--quiet"]) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("ludosimetry: error: ")]
    assert len(lines) == 1 and "Traceback" not in err and str(synthetic_study_copy) in lines[0]
    assert not out.exists()


@pytest.mark.parametrize("orientation", [["0"] * 6, ["1", "0", "0", "1", "0", "0"]])
def test_an_orientation_that_is_no_pair_of_unit_vectors_is_named(synthetic_study_copy, orientation):
    files = _images(synthetic_study_copy, "spect", 2)
    _edit(files, _set("ImageOrientationPatient", orientation))
    error = _refusal(synthetic_study_copy)
    assert error.path in {str(p) for p in files} and "ImageOrientationPatient" in str(error)


# --------------------------------------------------------------- item 9 and empty VOIs at other time points

def test_a_voi_without_contour_on_the_reference_is_left_out_with_a_warning(synthetic_study_copy, clean):
    # Before: exit 0 with the Liver's doses null.
    path = _rtstruct(synthetic_study_copy, 1)
    _edit([path], _empty_roi("Liver"))
    results = _run(synthetic_study_copy)
    assert "Liver" not in results.vois and set(results.vois) == set(clean.vois) - {"Liver"}
    assert any("'Liver'" in w and str(path) in w and "left out" in w for w in results.warnings)
    _finite(results)
    for name, voi in results.vois.items():
        assert voi.tia_bq_s == pytest.approx(clean.vois[name].tia_bq_s, rel=1e-6)


def test_no_voi_covering_a_voxel_of_the_reference_is_refused(synthetic_study_copy):
    for kind in ("organs", "lesions"):
        path = _rtstruct(synthetic_study_copy, 1, kind)
        names = [r.ROIName for r in pydicom.dcmread(str(path)).StructureSetROISequence]
        for name in names:
            _edit([path], _empty_roi(name))
    assert "no VOI covers a voxel" in str(_refusal(synthetic_study_copy, StudyError))


def test_a_voi_empty_at_another_time_point_is_refused_without_a_registration(synthetic_study_copy):
    # Before: its activity at time point 4 was 0 and the Liver's TIA -36 % without a word.
    path = _rtstruct(synthetic_study_copy, 4)
    _edit([path], _empty_roi("Liver"))
    error = _refusal(synthetic_study_copy, StructureError)
    assert error.path == str(path) and "'Liver'" in str(error) and error.option == "registration"


def test_a_voi_empty_at_another_time_point_takes_the_propagated_reference_voi(synthetic_study_copy, clean,
                                                                                monkeypatch):
    # The time points share the scanner frame: an identity registration stands for a real one (fast).
    from LuDosimetryLib import registration

    def identity(*args, **kwargs):
        return registration.Registration(rigid=sitk.Euler3DTransform())
    monkeypatch.setattr(registration, "register_time_points", identity)
    _edit([_rtstruct(synthetic_study_copy, 4)], _empty_roi("Liver"))
    results = _run(synthetic_study_copy, registration="rigid")
    assert any("'Liver'" in w and "propagated" in w for w in results.warnings)
    assert results.vois["Liver"].tia_bq_s == pytest.approx(clean.vois["Liver"].tia_bq_s, rel=2e-3)


def test_the_rtstruct_readers_warnings_are_the_runs(synthetic_study_copy):
    # A contour of two points is skipped by the reader: the run says so in results.json, not only on stderr.
    path = _rtstruct(synthetic_study_copy, 2)

    def two_points(ds):
        contour = ds.ROIContourSequence[0].ContourSequence[0]
        contour.ContourData = list(contour.ContourData)[:6]
        contour.NumberOfContourPoints = 2
    _edit([path], two_points)
    results = _run(synthetic_study_copy)
    assert any(str(path) in w and "skipped" in w for w in results.warnings)


# ---------------------------------------------------------------------------- item 18: frames of reference

def test_a_spect_without_frame_of_reference_is_named_not_the_rtstruct(synthetic_study_copy):
    # Before: "RTSTRUCT frame of reference ... matches no image of the study (none)", naming the RTSTRUCT.
    files = _images(synthetic_study_copy, "spect", 1)
    _edit(files, _delete("FrameOfReferenceUID"))
    error = _refusal(synthetic_study_copy)
    assert error.path == str(files[0]) and "FrameOfReferenceUID" in str(error)


def test_a_slice_without_frame_of_reference_takes_its_series(synthetic_study_copy, clean):
    _edit(_images(synthetic_study_copy, "spect", 1)[:1], _delete("FrameOfReferenceUID"))
    results = _run(synthetic_study_copy)
    assert results.vois["Liver"].tia_bq_s == pytest.approx(clean.vois["Liver"].tia_bq_s, rel=1e-9)


def test_a_slice_in_another_frame_of_reference_is_refused(synthetic_study_copy):
    files = _images(synthetic_study_copy, "spect", 2)
    _edit(files[9:10], _set("FrameOfReferenceUID", pydicom.uid.generate_uid()))
    error = _refusal(synthetic_study_copy)
    assert error.path == str(files[9]) and "FrameOfReferenceUID" in str(error)


def test_an_roi_in_another_frame_of_reference_is_refused(synthetic_study_copy):
    # Before: each ROI's Referenced Frame of Reference UID was ignored (exit 0).
    path = _rtstruct(synthetic_study_copy, 2)

    def other_frame(ds):
        ds.StructureSetROISequence[1].ReferencedFrameOfReferenceUID = pydicom.uid.generate_uid()
    _edit([path], other_frame)
    error = _refusal(synthetic_study_copy, StructureError)
    name = pydicom.dcmread(str(path)).StructureSetROISequence[1].ROIName
    assert error.path == str(path) and repr(name) in str(error)


def test_check_frame_of_reference_checks_every_roi():
    square = np.array([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [1.0, 1.0, 0.0]])
    ss = vois.StructureSet("rs.dcm", "1.2.3", None, [vois.Roi(1, "a", None, "", [square], "1.2.3"),
                                                    vois.Roi(2, "b", None, "", [square], "9.9")], "", "", "")
    with pytest.raises(StructureError, match="'b'"):
        vois.check_frame_of_reference(ss, "1.2.3")
    vois.check_frame_of_reference(ss, ["1.2.3", "9.9"])
