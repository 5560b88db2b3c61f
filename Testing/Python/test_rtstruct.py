"""RTSTRUCT reading and writing: DICOM conformance, metadata round trip, damaged and wrong input."""
from __future__ import annotations

import hashlib
import subprocess
import warnings

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from pydicom.uid import CTImageStorage

from conftest import require_tool, voxel_centres_mm
from LuDosimetryLib import vois
from LuDosimetryLib.errors import DicomFileError
from LuDosimetryLib.io.dicom_common import PatientInfo, SeriesInfo, StudyInfo, new_dataset, new_uid, write_dataset
from LuDosimetryLib.io.rtstruct import RT_STRUCTURE_SET_STORAGE, ReferencedSeries, read_rtstruct, write_rtstruct
from LuDosimetryLib.vois import Roi, StructureSet


def _reference(size=(40, 36, 20), spacing=(4.8, 4.8, 4.8), origin=(-96.0, -80.0, -40.0), direction=None):
    image = sitk.Image(*size, sitk.sitkFloat32)
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    if direction is not None:
        image.SetDirection(direction)
    return image


def _referenced(reference, study):
    return ReferencedSeries(study.study_instance_uid, new_uid(), new_uid(), CTImageStorage,
                            [new_uid() for _ in range(reference.GetSize()[2])])


def _two_rois(reference):
    centres = voxel_centres_mm(reference)
    ball = np.linalg.norm(centres - np.array([0.0, 0.0, 0.0]), axis=-1) < 30.0
    box = (np.abs(centres[..., 0] + 60) < 15) & (np.abs(centres[..., 1] - 20) < 20) & (np.abs(centres[..., 2]) < 20)
    return {"liver": ball, "tumour 1": box}


@pytest.fixture
def written(tmp_path):
    reference = _reference()
    patient = PatientInfo(patient_id="P123", patient_name="Test^Patient")
    study = StudyInfo()
    referenced = _referenced(reference, study)
    masks = _two_rois(reference)
    path = write_rtstruct(tmp_path / "rs.dcm", masks, reference, referenced, patient, study,
                          colors={"liver": (200, 100, 50)}, roi_types={"liver": "ORGAN", "tumour 1": "GTV"},
                          label="Test VOIs", series_description="VOIs for test")
    return path, reference, referenced, masks, patient, study


def test_write_read_metadata(written):
    path, reference, referenced, masks, patient, study = written
    ss = read_rtstruct(path)
    assert isinstance(ss, StructureSet)
    assert ss.path == str(path)
    assert [r.name for r in ss.rois] == ["liver", "tumour 1"]
    assert [r.number for r in ss.rois] == [1, 2]
    assert ss.roi("liver").color == (200, 100, 50)
    assert ss.roi("tumour 1").color is not None
    assert ss.roi("liver").roi_type == "ORGAN" and ss.roi("tumour 1").roi_type == "GTV"
    assert ss.label == "Test VOIs"
    assert ss.patient_id == "P123"
    assert ss.study_instance_uid == study.study_instance_uid
    assert ss.frame_of_reference_uid == referenced.frame_of_reference_uid
    assert ss.referenced_series_uid == referenced.series_instance_uid
    planes_mm = voxel_centres_mm(reference)[:, 0, 0, 2]
    for roi in ss.rois:
        assert roi.contours
        for contour in roi.contours:
            assert contour.dtype == np.float64 and contour.ndim == 2 and contour.shape[1] == 3
            assert len(contour) >= 3
            assert np.ptp(contour[:, 2]) == 0.0  # planar, on an image slice
            assert np.min(np.abs(planes_mm - contour[0, 2])) < 1e-4
            assert not np.array_equal(contour[0], contour[-1])  # closed implicitly


def test_contour_image_sequence_references_the_slice(written):
    path, reference, referenced, *_ = written
    ds = pydicom.dcmread(path)
    assert ds.SOPClassUID == RT_STRUCTURE_SET_STORAGE
    assert ds.Modality == "RTSTRUCT"
    frame = ds.ReferencedFrameOfReferenceSequence[0]
    listed = [item.ReferencedSOPInstanceUID
              for item in frame.RTReferencedStudySequence[0].RTReferencedSeriesSequence[0].ContourImageSequence]
    assert listed == referenced.sop_instance_uids
    checked = 0
    for roi_contours in ds.ROIContourSequence:
        for contour in roi_contours.ContourSequence:
            z = float(contour.ContourData[2])
            k = int(round(vois.physical_to_index(np.array([[0.0, 0.0, z]]), reference)[0, 2]))
            image = contour.ContourImageSequence[0]
            assert image.ReferencedSOPInstanceUID == referenced.sop_instance_uids[k]
            assert image.ReferencedSOPClassUID == CTImageStorage
            assert int(contour.NumberOfContourPoints) * 3 == len(contour.ContourData)
            checked += 1
    assert checked > 10
    observed = {int(o.ReferencedROINumber): o.RTROIInterpretedType for o in ds.RTROIObservationsSequence}
    assert observed == {1: "ORGAN", 2: "GTV"}


def test_dciodvfy_dcmdump_pydicom(written):
    path = written[0]
    dciodvfy = require_tool("dciodvfy")
    result = subprocess.run([dciodvfy, str(path)], capture_output=True, text=True, timeout=60)
    report = result.stdout + result.stderr
    assert "RTStructureSet" in report  # it recognised the IOD
    errors = [line for line in report.splitlines() if line.startswith("Error")]
    assert errors == [], report
    dcmdump = require_tool("dcmdump")
    dump = subprocess.run([dcmdump, str(path)], capture_output=True, text=True, timeout=60)
    assert dump.returncode == 0, dump.stderr
    assert "ROIContourSequence" in dump.stdout and "RTSTRUCT" in dump.stdout
    assert pydicom.dcmread(path).StructureSetLabel == "Test VOIs"


def test_reading_leaves_the_file_unchanged(written):
    path = written[0]
    before = hashlib.sha256(path.read_bytes()).hexdigest()
    mtime = path.stat().st_mtime_ns
    read_rtstruct(path)
    assert hashlib.sha256(path.read_bytes()).hexdigest() == before
    assert path.stat().st_mtime_ns == mtime


def test_roi_lookup_lists_available_names(written):
    ss = read_rtstruct(written[0])
    with pytest.raises(KeyError, match="'liver'.*'tumour 1'"):
        ss.roi("kidney")


def test_not_dicom(tmp_path):
    path = tmp_path / "notes.dcm"
    path.write_text("this is not a DICOM file\n" * 20)
    with pytest.raises(DicomFileError, match="notes.dcm.*not a DICOM file"):
        read_rtstruct(path)


def test_missing_file(tmp_path):
    with pytest.raises(DicomFileError, match="absent.dcm.*does not exist"):
        read_rtstruct(tmp_path / "absent.dcm")


@pytest.mark.parametrize("keep", [300, 0.5])
def test_truncated(written, tmp_path, keep):
    data = written[0].read_bytes()
    n = keep if isinstance(keep, int) else int(len(data) * keep)
    path = tmp_path / "cut.dcm"
    path.write_bytes(data[:n])
    before = path.read_bytes()
    with pytest.raises(DicomFileError, match="cut.dcm.*truncated"):
        read_rtstruct(path)
    assert path.read_bytes() == before


def test_truncated_inside_undefined_length_sequence(written, tmp_path):
    ds = pydicom.dcmread(written[0])
    ds["ROIContourSequence"].is_undefined_length = True
    for item in ds.ROIContourSequence:
        item["ContourSequence"].is_undefined_length = True
    full = tmp_path / "undefined.dcm"
    write_dataset(ds, full)
    read_rtstruct(full)  # complete file reads
    data = full.read_bytes()
    cut = tmp_path / "undefined_cut.dcm"
    cut.write_bytes(data[: len(data) - len(data) // 4])
    with pytest.raises(DicomFileError, match="undefined_cut.dcm"):
        read_rtstruct(cut)


def test_ct_file_is_not_an_rtstruct(tmp_path):
    study = StudyInfo()
    ds = new_dataset(CTImageStorage, PatientInfo(), study, SeriesInfo(modality="CT", frame_of_reference_uid=new_uid()))
    ds.Rows, ds.Columns = 4, 4
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    ds.PixelData = np.zeros((4, 4), np.int16).tobytes()
    path = write_dataset(ds, tmp_path / "ct.dcm")
    with pytest.raises(DicomFileError, match=r"ct.dcm.*not an RT Structure Set.*'CT'"):
        read_rtstruct(path)


@pytest.mark.parametrize("keyword", ["StructureSetROISequence", "ROIContourSequence"])
def test_missing_sequence(written, tmp_path, keyword):
    ds = pydicom.dcmread(written[0])
    delattr(ds, keyword)
    path = write_dataset(ds, tmp_path / "incomplete.dcm")
    with pytest.raises(DicomFileError, match=f"incomplete.dcm.*lacks {keyword}"):
        read_rtstruct(path)


def test_malformed_contour_data(written, tmp_path):
    ds = pydicom.dcmread(written[0])
    contour = ds.ROIContourSequence[1].ContourSequence[0]
    contour.ContourData = list(contour.ContourData)[:-1]
    path = write_dataset(ds, tmp_path / "bad_points.dcm")
    with pytest.raises(DicomFileError, match="bad_points.dcm.*'tumour 1'.*triplets"):
        read_rtstruct(path)


def test_empty_roi_kept_with_warning(tmp_path):
    reference = _reference()
    study = StudyInfo()
    masks = _two_rois(reference)
    masks["nothing"] = np.zeros_like(masks["liver"])
    with pytest.warns(UserWarning, match="'nothing' is empty"):
        path = write_rtstruct(tmp_path / "rs.dcm", masks, reference, _referenced(reference, study), PatientInfo(), study)
    with pytest.warns(UserWarning, match="without contours: 'nothing'"):
        ss = read_rtstruct(path)
    assert ss.names == ["liver", "tumour 1", "nothing"]
    assert ss.roi("nothing").contours == []
    assert ss.roi("liver").contours


def test_point_and_open_contours_skipped_with_warning(written, tmp_path):
    ds = pydicom.dcmread(written[0])
    sequence = ds.ROIContourSequence[0].ContourSequence
    total = len(sequence)
    sequence[0].ContourGeometricType = "POINT"
    sequence[1].ContourGeometricType = "OPEN_PLANAR"
    path = write_dataset(ds, tmp_path / "mixed.dcm")
    with pytest.warns(UserWarning, match="mixed.dcm.*'liver'.*2 contour"):
        ss = read_rtstruct(path)
    assert len(ss.roi("liver").contours) == total - 2


def test_repeated_closing_point_is_dropped(written, tmp_path):
    ds = pydicom.dcmread(written[0])
    contour = ds.ROIContourSequence[0].ContourSequence[0]
    points = list(contour.ContourData)
    contour.ContourData = points + points[:3]
    contour.NumberOfContourPoints = len(points) // 3 + 1
    path = write_dataset(ds, tmp_path / "repeat.dcm")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ss = read_rtstruct(path)
    assert len(ss.roi("liver").contours[0]) == len(points) // 3


def test_mask_shape_mismatch_refused(tmp_path):
    reference = _reference()
    study = StudyInfo()
    with pytest.raises(ValueError, match="'bad'.*shape"):
        write_rtstruct(tmp_path / "rs.dcm", {"bad": np.ones((3, 3, 3), bool)}, reference,
                       _referenced(reference, study), PatientInfo(), study)
    assert not (tmp_path / "rs.dcm").exists()
    assert list(tmp_path.iterdir()) == []


def test_roi_dataclass_defaults():
    roi = Roi(number=3, name="x", color=None, roi_type="")
    assert roi.contours == []
