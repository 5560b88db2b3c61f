"""Fuzz-style test: faulty studies, by class, through the real command line.

Each case copies the small synthetic patient, breaks it in one way drawn (with a fixed seed) from a class of
faults — missing tags, absurd values, wrong dates, corrupt pixel data, truncated or foreign files, mixed
patients, broken RTSTRUCTs, file-system oddities — and runs ``ludosimetry run`` on it. Every case must end in
one of two ways:

- exit 0 with finite results for every VOI, where a result that differs from the clean study's is
  explained by a named assumption or warning; and when anything was assumed, ``--strict`` refuses it;
- exit 2 with an error line naming a file or folder of the study, never a traceback.

The study folder is never modified by a run.
"""
from __future__ import annotations

import json
import math
import os
import random
import shutil
from pathlib import Path
from typing import Callable, Dict, List

import pydicom
import pytest

from LuDosimetryLib import cli

#: Relative change of a VOI's mean dose or TIA above which a result counts as changed.
CHANGED = 5e-3


# ----------------------------------------------------------------------------------------- helpers

def _files(study: Path, role: str) -> List[Path]:
    """The study's files of one role: 'spect', 'ct' (per time point folders) or 'rtstruct'."""
    if role == "rtstruct":
        return sorted((study / "VOIs").rglob("*.dcm"))
    return sorted((study / "SPECT_Cts").glob(f"scan*/{role}/*.dcm"))


def _series(study: Path, role: str, rng: random.Random) -> List[Path]:
    """All files of one randomly chosen series (time point) of a role."""
    scans = sorted({p.parent for p in _files(study, role)})
    folder = rng.choice(scans)
    return sorted(folder.glob("*.dcm"))


def _targets(study: Path, role: str, rng: random.Random) -> List[Path]:
    """One random file of the role, or a whole series of it (faults hit single slices and whole series)."""
    if role != "rtstruct" and rng.random() < 0.5:
        return _series(study, role, rng)
    return [rng.choice(_files(study, role))]


def _edit(paths: List[Path], change: Callable[[pydicom.Dataset], None]) -> None:
    for path in paths:
        ds = pydicom.dcmread(str(path))
        change(ds)
        ds.save_as(str(path), enforce_file_format=False)


def _tree(root: Path) -> Dict[str, tuple]:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(root.rglob("*")) if p.is_file() and not p.is_symlink()}


# ------------------------------------------------------------------------------------ fault classes

IMAGE_TAGS = ("RescaleSlope", "RescaleIntercept", "PixelSpacing", "SliceThickness", "Rows", "Columns",
              "ImagePositionPatient", "ImageOrientationPatient", "AcquisitionDate", "AcquisitionTime",
              "SeriesInstanceUID", "StudyInstanceUID", "FrameOfReferenceUID", "PatientID", "Modality", "Units",
              "DecayCorrection", "RadiopharmaceuticalInformationSequence", "BitsAllocated", "PixelRepresentation",
              "SOPClassUID", "SeriesDescription", "ActualFrameDuration")


def missing_tag(study: Path, rng: random.Random) -> str:
    role = rng.choice(("spect", "spect", "ct"))
    tag = rng.choice(IMAGE_TAGS)
    paths = _targets(study, role, rng)

    def change(ds):
        if tag in ds:
            delattr(ds, tag)
    _edit(paths, change)
    return f"{tag} removed from {len(paths)} {role} file(s)"


ABSURD = {
    "RescaleSlope": ("0", "-1", "1e30", "1e-30"),
    "RescaleIntercept": ("-1e30", "1e30"),
    "PixelSpacing": (["0", "0"], ["-4.8", "4.8"], ["1e9", "1e9"]),
    "SliceThickness": ("0", "-5"),
    "ImagePositionPatient": (["1e30", "0", "0"],),
    "ImageOrientationPatient": (["0", "0", "0", "0", "0", "0"], ["1", "0", "0", "1", "0", "0"]),
    "Rows": (0, 1, 4096),
    "Columns": (0, 7),
    "ActualFrameDuration": (0, -1000),
}


def absurd_value(study: Path, rng: random.Random) -> str:
    role = rng.choice(("spect", "spect", "ct"))
    tag = rng.choice(sorted(ABSURD))
    value = rng.choice(ABSURD[tag])
    paths = _targets(study, role, rng)

    def change(ds):
        setattr(ds, tag, value)
    _edit(paths, change)
    return f"{tag}={value!r} in {len(paths)} {role} file(s)"


def injection_fault(study: Path, rng: random.Random) -> str:
    """Radiopharmaceutical data absent, zero, negative, in other units, or times that disagree."""
    paths = _files(study, "spect")
    kind = rng.choice(("dose 0", "dose negative", "dose MBq", "start after scans", "time only", "empty sequence",
                       "half-life 0", "one series differs"))
    if kind == "one series differs":
        paths = _series(study, "spect", rng)

    def change(ds):
        seq = ds.get("RadiopharmaceuticalInformationSequence")
        if seq is None or not len(seq):
            return
        item = seq[0]
        if kind == "dose 0":
            item.RadionuclideTotalDose = "0"
        elif kind == "dose negative":
            item.RadionuclideTotalDose = "-7.4e9"
        elif kind in ("dose MBq", "one series differs"):
            item.RadionuclideTotalDose = "7400"
        elif kind == "start after scans":
            item.RadiopharmaceuticalStartDateTime = "20990101120000"
        elif kind == "time only":
            if "RadiopharmaceuticalStartDateTime" in item:
                del item.RadiopharmaceuticalStartDateTime
            item.RadiopharmaceuticalStartTime = "101500"
        elif kind == "empty sequence":
            ds.RadiopharmaceuticalInformationSequence = pydicom.Sequence([])
        elif kind == "half-life 0":
            item.RadionuclideHalfLife = "0"
    _edit(paths, change)
    return f"injection: {kind} in {len(paths)} SPECT file(s)"


def wrong_date(study: Path, rng: random.Random) -> str:
    role = rng.choice(("spect", "ct"))
    tag = rng.choice(("AcquisitionDate", "SeriesDate", "StudyDate", "AcquisitionTime", "ContentDate"))
    value = rng.choice(("19000101", "20991231", "20261345", "", "notadate", "000000"))
    if tag == "AcquisitionTime":
        value = rng.choice(("256199", "", "xx", "240000"))
    paths = _targets(study, role, rng)

    def change(ds):
        ds.__setattr__(tag, value)
    _edit(paths, change)
    return f"{tag}={value!r} in {len(paths)} {role} file(s)"


def corrupt_pixels(study: Path, rng: random.Random) -> str:
    role = rng.choice(("spect", "ct"))
    kind = rng.choice(("truncated", "empty", "extra bytes", "bits 32", "odd length"))
    paths = _targets(study, role, rng)

    def change(ds):
        data = ds.PixelData
        if kind == "truncated":
            ds.PixelData = data[: len(data) // 2]
        elif kind == "empty":
            ds.PixelData = b""
        elif kind == "extra bytes":
            ds.PixelData = data + bytes(len(data) // 3 + 2)
        elif kind == "bits 32":
            ds.BitsAllocated = 32
        elif kind == "odd length":
            ds.PixelData = data[:-3]
    _edit(paths, change)
    return f"pixel data {kind} in {len(paths)} {role} file(s)"


def damaged_file(study: Path, rng: random.Random) -> str:
    role = rng.choice(("spect", "ct", "rtstruct"))
    path = rng.choice(_files(study, role))
    kind = rng.choice(("cut in header", "cut in pixels", "zero length", "garbage", "text"))
    data = path.read_bytes()
    if kind == "cut in header":
        path.write_bytes(data[: rng.randint(132, 400)])
    elif kind == "cut in pixels":
        path.write_bytes(data[: len(data) - rng.randint(10, max(11, len(data) // 4))])
    elif kind == "zero length":
        path.write_bytes(b"")
    elif kind == "garbage":
        path.write_bytes(bytes(rng.getrandbits(8) for _ in range(2048)))
    else:
        path.write_text("this is not DICOM\n")
    return f"{role} file {path.name}: {kind}"


def foreign_files(study: Path, rng: random.Random) -> str:
    kind = rng.choice(("notes", "empty dicom", "dicomdir-like", "hidden"))
    folder = rng.choice(sorted(p for p in study.rglob("*") if p.is_dir()))
    if kind == "notes":
        (folder / "notes.txt").write_text("scanned on the Intevo\n")
    elif kind == "empty dicom":
        (folder / "IM_9999.dcm").write_bytes(b"")
    elif kind == "dicomdir-like":
        ds = pydicom.Dataset()
        ds.PatientID = "X"
        pydicom.dcmwrite(str(folder / "DICOMDIR"), ds, enforce_file_format=False, implicit_vr=True,
                         little_endian=True)
    else:
        (folder / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    return f"{kind} in {folder.relative_to(study)}"


def mixed_patient(study: Path, rng: random.Random) -> str:
    """Another patient's SPECT: a time point's series copied with another PatientID (new UIDs), or one
    time point relabelled."""
    scans = sorted({p.parent for p in _files(study, "spect")})
    source = rng.choice(scans)
    if rng.random() < 0.5:
        target = study / "SPECT_Cts" / "other" / "spect"
        target.mkdir(parents=True)
        series_uid = pydicom.uid.generate_uid()
        for path in sorted(source.glob("*.dcm")):
            ds = pydicom.dcmread(str(path))
            ds.PatientID, ds.PatientName = "OTHER-PATIENT-42", "Other^Patient"
            ds.SeriesInstanceUID, ds.SOPInstanceUID = series_uid, pydicom.uid.generate_uid()
            ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
            ds.AcquisitionDate = ds.SeriesDate = (str(int(ds.AcquisitionDate) + 2))
            ds.save_as(str(target / path.name), enforce_file_format=False)
        return f"another patient's copy of {source.relative_to(study)}"
    _edit(sorted(source.glob("*.dcm")), lambda ds: setattr(ds, "PatientID", "OTHER-PATIENT-42"))
    return f"{source.relative_to(study)} relabelled to another PatientID"


def broken_rtstruct(study: Path, rng: random.Random) -> str:
    path = rng.choice(_files(study, "rtstruct"))
    kind = rng.choice(("no contours", "odd ContourData", "far outside", "other frame", "duplicate name",
                       "empty name", "no ROI sequence", "two points", "NaN point"))

    def change(ds):
        rois = ds.get("ROIContourSequence") or []
        item = rois[0] if len(rois) else None
        if kind == "no contours" and item is not None:
            item.ContourSequence = pydicom.Sequence([])
        elif kind == "odd ContourData" and item is not None and "ContourSequence" in item:
            item.ContourSequence[0].ContourData = list(item.ContourSequence[0].ContourData)[:-1]
        elif kind == "far outside" and item is not None and "ContourSequence" in item:
            for contour in item.ContourSequence:
                contour.ContourData = [float(v) + 5.0e4 for v in contour.ContourData]
        elif kind == "other frame":
            for roi in ds.get("StructureSetROISequence") or []:
                roi.ReferencedFrameOfReferenceUID = pydicom.uid.generate_uid()
        elif kind == "duplicate name" and len(ds.get("StructureSetROISequence") or []) > 1:
            ds.StructureSetROISequence[1].ROIName = ds.StructureSetROISequence[0].ROIName
        elif kind == "empty name" and len(ds.get("StructureSetROISequence") or []):
            ds.StructureSetROISequence[0].ROIName = ""
        elif kind == "no ROI sequence" and "StructureSetROISequence" in ds:
            del ds.StructureSetROISequence
        elif kind == "two points" and item is not None and "ContourSequence" in item:
            contour = item.ContourSequence[0]
            contour.ContourData = list(contour.ContourData)[:6]
            contour.NumberOfContourPoints = 2
        elif kind == "NaN point" and item is not None and "ContourSequence" in item:
            contour = item.ContourSequence[0]
            contour.ContourData = ["nan"] + list(contour.ContourData)[1:]
    _edit([path], change)
    return f"RTSTRUCT {path.relative_to(study)}: {kind}"


def file_system(study: Path, rng: random.Random) -> str:
    kind = rng.choice(("symlink loop", "dangling link", "folder named .dcm", "duplicate copy"))
    folder = rng.choice(sorted(p for p in study.rglob("*") if p.is_dir()))
    if kind == "symlink loop":
        os.symlink(str(study), str(folder / "loop"))
    elif kind == "dangling link":
        os.symlink(str(study / "nowhere.dcm"), str(folder / "IM_link.dcm"))
    elif kind == "folder named .dcm":
        (folder / "IM_0001.dcm.d.dcm").mkdir()
    else:
        source = rng.choice(_files(study, "spect"))
        shutil.copy2(str(source), str(source.parent / ("copy_" + source.name)))
    return f"{kind} in {folder.relative_to(study)}"


FAULT_CLASSES = {f.__name__: f for f in (missing_tag, absurd_value, injection_fault, wrong_date, corrupt_pixels,
                                         damaged_file, foreign_files, mixed_patient, broken_rtstruct, file_system)}
#: Seeded cases per class; LUDOSIMETRY_FUZZ_CASES=40 runs a deeper search (about 40 s a case on 2 cores).
CASES_PER_CLASS = int(os.environ.get("LUDOSIMETRY_FUZZ_CASES", "6"))
CASES = [(name, seed) for name in FAULT_CLASSES for seed in range(CASES_PER_CLASS)]


# ------------------------------------------------------------------------------------------ checks

def _run(study: Path, out: Path, capsys, *extra) -> tuple:
    rc = cli.main(["run", str(study), "--out", str(out), "--dose-method", "ldm", "--quiet", *extra])
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


def _finite_numbers(value, where="results") -> List[str]:
    """Paths of the JSON values under ``value`` that are not finite numbers where numbers are expected."""
    bad = []
    if isinstance(value, dict):
        for key, item in value.items():
            bad += _finite_numbers(item, f"{where}.{key}")
    elif isinstance(value, list):
        for i, item in enumerate(value):
            bad += _finite_numbers(item, f"{where}[{i}]")
    elif isinstance(value, float) and not math.isfinite(value):
        bad.append(where)
    return bad


@pytest.fixture(scope="module")
def clean_results(synthetic_study, tmp_path_factory):
    out = tmp_path_factory.mktemp("fuzz-clean") / "out"
    assert cli.main(["run", str(synthetic_study), "--out", str(out), "--dose-method", "ldm", "--quiet"]) == 0
    return json.loads((out / "results.json").read_text())


@pytest.mark.parametrize("fault, seed", CASES, ids=[f"{n}-{s}" for n, s in CASES])
def test_a_faulty_study_ends_in_a_result_or_a_one_line_refusal(fault, seed, synthetic_study, clean_results,
                                                                tmp_path, capsys):
    study = Path(shutil.copytree(str(synthetic_study), str(tmp_path / "study"), symlinks=True))
    what = FAULT_CLASSES[fault](study, random.Random(f"{fault}-{seed}"))
    before = _tree(study)
    out = tmp_path / "out"
    rc, stdout, stderr = _run(study, out, capsys)

    assert "Traceback" not in stderr + stdout, what
    assert _tree(study) == before, f"{what}: the run changed the study folder"
    if rc == 2:
        lines = [line for line in stderr.strip().splitlines() if line.startswith("ludosimetry: error: ")]
        assert len(lines) == 1, f"{what}: {stderr}"
        assert str(study) in lines[0], f"{what}: the error names no file of the study: {lines[0]}"
        assert not out.exists(), f"{what}: a refused run left {out}"
        return
    assert rc == 0, f"{what}: exit {rc}: {stderr}"
    results = json.loads((out / "results.json").read_text())
    assert not _finite_numbers(results), f"{what}: {_finite_numbers(results)}"
    for name, voi in results["vois"].items():
        for key in ("mean_dose_gy", "tia_bq_s", "volume_ml"):
            assert isinstance(voi.get(key), (int, float)), f"{what}: {name}.{key} = {voi.get(key)!r}"
    explained = results["assumptions"] or results["warnings"]
    clean = clean_results["vois"]
    changed = sorted(set(clean) ^ set(results["vois"])) + [
        name for name in set(clean) & set(results["vois"])
        if any(abs(results["vois"][name][key] / clean[name][key] - 1.0) > CHANGED for key in ("mean_dose_gy",
                                                                                             "tia_bq_s"))]
    assert not changed or explained, f"{what}: results changed for {changed} without an assumption or warning"
    if results["assumptions"]:
        strict_out = tmp_path / "strict"
        rc_strict, _, stderr_strict = _run(study, strict_out, capsys, "--strict")
        assert rc_strict == 2 and "strict" in stderr_strict, f"{what}: --strict did not refuse: {stderr_strict}"
        assert not strict_out.exists()
