"""RT Dose writing and reading: round trips (flipped and oblique grids), validators, other readers, bad input."""
from __future__ import annotations

import subprocess

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from pydicom.uid import RTDoseStorage

from conftest import require_tool
from LuDosimetryLib.errors import DicomFileError, OutputError
from LuDosimetryLib.io.dicom_common import PatientInfo, StudyInfo, new_uid
from LuDosimetryLib.io.rtdose import DEFAULT_DOSE_SUMMATION_TYPE, read_rtdose, write_rtdose

FOR_UID = "1.2.826.0.1.3680043.8.498.12345"


def make_dose(direction=(1, 0, 0, 0, 1, 0, 0, 0, 1), shape=(6, 7, 8), seed=0) -> sitk.Image:
    """A random dose (z, y, x) with a recognisable gradient, spacing (2, 3, 4) mm."""
    rng = np.random.default_rng(seed)
    z, y, x = np.indices(shape)
    array = (rng.random(shape) * 2 + z * 3.0 + y * 0.5 + x * 0.1).astype(np.float32)
    image = sitk.GetImageFromArray(array)
    image.SetSpacing((2.0, 3.0, 4.0))
    image.SetOrigin((-120.5, 35.25, -300.0))
    image.SetDirection(tuple(float(v) for v in direction))
    return image


def rotation(axis, degrees) -> np.ndarray:
    axis = np.asarray(axis, float) / np.linalg.norm(axis)
    a = np.radians(degrees)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + np.sin(a) * k + (1 - np.cos(a)) * k @ k


def write(tmp_path, image, name="dose.dcm", **kwargs):
    return write_rtdose(tmp_path / name, image, PatientInfo(patient_id="P1", patient_name="Test^Patient"),
                        StudyInfo(), frame_of_reference_uid=FOR_UID, **kwargs)


def same_on_original_grid(read: sitk.Image, original: sitk.Image) -> np.ndarray:
    """The read image sampled (nearest neighbour) at the original voxel centres."""
    resampled = sitk.Resample(read, original, sitk.Transform(), sitk.sitkNearestNeighbor, -1.0, sitk.sitkFloat32)
    return sitk.GetArrayFromImage(resampled)


GEOMETRIES = {
    "identity": np.eye(3),
    "flipped_z": np.diag([1.0, 1.0, -1.0]),
    "flipped_xy": np.diag([-1.0, -1.0, 1.0]),
    "oblique": rotation((0.3, -0.2, 1.0), 25.0),
    "oblique_flipped": rotation((1.0, 0.5, 0.2), 40.0) @ np.diag([1.0, 1.0, -1.0]),
    "coronal": np.array([[1.0, 0, 0], [0, 0, 1.0], [0, -1.0, 0]]),
}


@pytest.mark.parametrize("name", list(GEOMETRIES))
def test_round_trip_geometry_and_values(tmp_path, name):
    original = make_dose(GEOMETRIES[name].ravel())
    before = sitk.GetArrayFromImage(original).copy()
    path = write(tmp_path, original)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(original), before)  # input untouched
    rd = read_rtdose(path)
    assert rd.frame_of_reference_uid == FOR_UID
    assert rd.dose_units == "GY" and rd.dose_type == "PHYSICAL"
    assert rd.dose_summation_type == DEFAULT_DOSE_SUMMATION_TYPE
    image = rd.image
    assert image.GetPixelID() == sitk.sitkFloat32
    assert image.GetSize() == original.GetSize()
    np.testing.assert_allclose(image.GetSpacing(), original.GetSpacing(), atol=1e-9)
    direction = np.asarray(image.GetDirection()).reshape(3, 3)
    assert np.linalg.det(direction) == pytest.approx(1.0)  # read grids are right-handed
    resolution = rd.dose_grid_scaling
    assert resolution <= before.max() / 1.9e9
    values = same_on_original_grid(image, original)
    assert values.min() >= 0  # every original voxel centre is inside the read grid
    np.testing.assert_allclose(values, before, atol=max(resolution, 1e-6 * before.max()), rtol=0)
    if name == "identity":
        np.testing.assert_allclose(image.GetOrigin(), original.GetOrigin(), atol=1e-6)
    if name == "flipped_z":
        # frames are stored in increasing offset order: the first frame is the original's last slice
        np.testing.assert_allclose(image.GetOrigin(), (-120.5, 35.25, -300.0 - 5 * 4.0), atol=1e-6)
        np.testing.assert_allclose(sitk.GetArrayFromImage(image)[0], before[-1], atol=1e-6)


def test_dataset_attributes(tmp_path):
    path = write(tmp_path, make_dose(np.diag([1.0, 1.0, -1.0]).ravel()), comment="local deposition",
                 series_number=201, series_description="Dose test")
    ds = pydicom.dcmread(str(path))
    assert ds.SOPClassUID == RTDoseStorage and ds.Modality == "RTDOSE"
    assert ds.file_meta.MediaStorageSOPClassUID == RTDoseStorage
    assert (ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation) == (32, 32, 31, 0)
    assert ds.DoseUnits == "GY" and ds.DoseType == "PHYSICAL" and ds.DoseSummationType == "ADMINISTRATION"
    assert ds.NumberOfFrames == 6 and ds.FrameIncrementPointer == pydicom.tag.Tag("GridFrameOffsetVector")
    gfov = [float(v) for v in ds.GridFrameOffsetVector]
    assert gfov == [0.0, 4.0, 8.0, 12.0, 16.0, 20.0]
    assert ds.FrameOfReferenceUID == FOR_UID and ds.SeriesNumber == 201 and ds.SeriesDescription == "Dose test"
    assert ds.DoseComment == "local deposition"
    assert len(str(ds.DoseGridScaling)) <= 16 and "ReferencedRTPlanSequence" not in ds
    assert ds.pixel_array.dtype == np.uint32 and int(ds.pixel_array.max()) <= 2_000_000_000
    assert [float(v) for v in ds.ImageOrientationPatient] == [1, 0, 0, 0, 1, 0]


def test_dciodvfy_reports_no_error(tmp_path):
    dciodvfy = require_tool("dciodvfy")
    path = write(tmp_path, make_dose(GEOMETRIES["oblique_flipped"].ravel()), comment="test")
    run = subprocess.run([dciodvfy, str(path)], capture_output=True, text=True, timeout=60)
    output = run.stdout + run.stderr
    if "Assertion" in output and "bitsallocated" in output:
        # dicom3tools 2022 aborts on any 32-bit pixel data (third-party RT Doses too): check the same object
        # with 16-bit pixels, which differs only in the Image Pixel bit depth.
        ds = pydicom.dcmread(str(path))
        stored = ds.pixel_array.astype(np.float64)
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 16, 15
        ds.PixelData = np.rint(stored / stored.max() * 65535).astype("<u2").tobytes()
        ds.DoseGridScaling = f"{float(ds.DoseGridScaling) * stored.max() / 65535:.8e}"
        twin = tmp_path / "dose16.dcm"
        ds.save_as(str(twin), enforce_file_format=True) if pydicom.__version__[0] >= "3" else ds.save_as(
            str(twin), write_like_original=False)
        run = subprocess.run([dciodvfy, str(twin)], capture_output=True, text=True, timeout=60)
        output = run.stdout + run.stderr
        assert "RTDose" in output, output
    errors = [line for line in output.splitlines() if "Error" in line]
    assert errors == [], output
    # the local Dose Summation Type is reported as a warning only
    assert "ADMINISTRATION" in output


def test_dcmtk_reads_it(tmp_path):
    dcmdump = require_tool("dcmdump")
    dcmftest = require_tool("dcmftest")
    path = write(tmp_path, make_dose())
    dump = subprocess.run([dcmdump, str(path)], capture_output=True, text=True, timeout=60)
    assert dump.returncode == 0, dump.stderr
    assert "RTDoseStorage" in dump.stdout and "(3004,000c)" in dump.stdout.lower()
    test = subprocess.run([dcmftest, str(path)], capture_output=True, text=True, timeout=60)
    assert test.returncode == 0 and test.stdout.startswith("yes:"), test.stdout + test.stderr


def test_simpleitk_reads_geometry_and_stored_values(tmp_path):
    original = make_dose(GEOMETRIES["oblique"].ravel())
    path = write(tmp_path, original)
    ours = read_rtdose(path)
    gdcm = sitk.ReadImage(str(path))
    assert gdcm.GetSize() == original.GetSize()
    np.testing.assert_allclose(gdcm.GetOrigin(), ours.image.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(gdcm.GetSpacing(), ours.image.GetSpacing(), atol=1e-6)
    np.testing.assert_allclose(gdcm.GetDirection(), ours.image.GetDirection(), atol=1e-6)
    values = sitk.GetArrayFromImage(gdcm).astype(np.float64)
    expected = sitk.GetArrayFromImage(ours.image).astype(np.float64)
    if values.max() > 1e6:
        # SimpleITK (GDCM) gives the stored 32-bit values and ignores Dose Grid Scaling (SimpleITK 2.5).
        assert gdcm.GetPixelID() == sitk.sitkUInt32
        values = values * ours.dose_grid_scaling
    np.testing.assert_allclose(values, expected, atol=ours.dose_grid_scaling * 2 + 1e-6 * expected.max())


def _rewrite(path, out, **changes):
    ds = pydicom.dcmread(str(path))
    for key, value in changes.items():
        if value is None:
            delattr(ds, key)
        else:
            setattr(ds, key, value)
    ds.save_as(str(out))
    return out


def test_reader_cgy_absolute_and_decreasing_offsets(tmp_path):
    original = make_dose()
    path = write(tmp_path, original)
    ref = read_rtdose(path)
    ref_values = sitk.GetArrayFromImage(ref.image)
    ds = pydicom.dcmread(str(path))

    cgy = read_rtdose(_rewrite(path, tmp_path / "cgy.dcm", DoseUnits="CGY"))
    np.testing.assert_allclose(sitk.GetArrayFromImage(cgy.image), ref_values * 0.01, rtol=1e-6)
    assert cgy.dose_units == "CGY"

    z0 = float(ds.ImagePositionPatient[2])
    absolute = [str(z0 + float(v)) for v in ds.GridFrameOffsetVector]
    read_abs = read_rtdose(_rewrite(path, tmp_path / "abs.dcm", GridFrameOffsetVector=absolute))
    assert read_abs.image.GetOrigin() == pytest.approx(ref.image.GetOrigin())
    np.testing.assert_array_equal(sitk.GetArrayFromImage(read_abs.image), ref_values)

    # Frames listed with decreasing offsets (negative relative offsets): same voxels, reordered.
    ds2 = pydicom.dcmread(str(path))
    frames = ds2.pixel_array[::-1].copy()
    top = [float(v) for v in ds2.ImagePositionPatient]
    top[2] += 5 * 4.0
    ds2.ImagePositionPatient = [str(v) for v in top]
    ds2.GridFrameOffsetVector = ["0", "-4", "-8", "-12", "-16", "-20"]
    ds2.PixelData = frames.astype("<u4").tobytes()
    ds2.save_as(str(tmp_path / "desc.dcm"))
    desc = read_rtdose(tmp_path / "desc.dcm")
    assert desc.image.GetOrigin() == pytest.approx(ref.image.GetOrigin())
    np.testing.assert_array_equal(sitk.GetArrayFromImage(desc.image), ref_values)


def test_single_frame(tmp_path):
    image = make_dose(shape=(1, 4, 5))
    rd = read_rtdose(write(tmp_path, image))
    assert rd.image.GetSize() == (5, 4, 1)
    assert rd.image.GetSpacing()[2] == pytest.approx(4.0)  # from Slice Thickness


def test_reader_errors(tmp_path):
    path = write(tmp_path, make_dose())
    with pytest.raises(DicomFileError, match="file not found"):
        read_rtdose(tmp_path / "missing.dcm")
    junk = tmp_path / "junk.dcm"
    junk.write_bytes(b"not dicom at all" * 20)
    with pytest.raises(DicomFileError, match="junk.dcm: not a readable DICOM file"):
        read_rtdose(junk)
    with pytest.raises(DicomFileError, match="not an RT Dose"):
        read_rtdose(_rewrite(path, tmp_path / "ct.dcm", Modality="CT", SOPClassUID="1.2.840.10008.5.1.4.1.1.2"))
    with pytest.raises(DicomFileError, match="RELATIVE.*not an absolute dose"):
        read_rtdose(_rewrite(path, tmp_path / "rel.dcm", DoseUnits="RELATIVE"))
    with pytest.raises(DicomFileError, match="no pixel data"):
        read_rtdose(_rewrite(path, tmp_path / "nopix.dcm", PixelData=None))
    with pytest.raises(DicomFileError, match="not evenly spaced"):
        read_rtdose(_rewrite(path, tmp_path / "uneven.dcm", GridFrameOffsetVector=["0", "4", "8", "12", "16", "30"]))
    with pytest.raises(DicomFileError, match="has 3 values for 6 frames"):
        read_rtdose(_rewrite(path, tmp_path / "short.dcm", GridFrameOffsetVector=["0", "4", "8"]))
    with pytest.raises(DicomFileError, match="lacks Grid Frame Offset Vector"):
        read_rtdose(_rewrite(path, tmp_path / "nogfov.dcm", GridFrameOffsetVector=None))
    with pytest.raises(DicomFileError, match="neither 0"):
        read_rtdose(_rewrite(path, tmp_path / "badabs.dcm", GridFrameOffsetVector=[str(v) for v in range(7, 13)]))
    with pytest.raises(DicomFileError, match="lacks PixelSpacing"):
        read_rtdose(_rewrite(path, tmp_path / "nospacing.dcm", PixelSpacing=None))


def test_pydicom_relative_test_file_is_refused():
    from pydicom.data import get_testdata_file

    with pytest.raises(DicomFileError, match="rtdose.dcm: Dose Units 'RELATIVE'"):
        read_rtdose(get_testdata_file("rtdose.dcm"))


def test_writer_errors(tmp_path):
    good = make_dose()
    with pytest.raises(OutputError, match="frame of reference"):
        write_rtdose(tmp_path / "a.dcm", good, PatientInfo(), StudyInfo(), frame_of_reference_uid="")
    negative = sitk.GetImageFromArray(-np.ones((2, 3, 4), np.float32))
    with pytest.raises(OutputError, match="negative"):
        write(tmp_path, negative)
    nan = sitk.GetImageFromArray(np.full((2, 3, 4), np.nan, np.float32))
    with pytest.raises(OutputError, match="non-finite"):
        write(tmp_path, nan)
    with pytest.raises(OutputError, match="3D"):
        write(tmp_path, sitk.GetImageFromArray(np.ones((3, 4), np.float32)))
    sheared = make_dose()
    sheared.SetDirection((1, 0, 0.6, 0, 1, 0, 0, 0, 0.8))
    with pytest.raises(OutputError, match="sheared"):
        write(tmp_path, sheared)
    with pytest.raises(OutputError, match="'PLAN' requires a referenced RT Plan"):
        write(tmp_path, good, dose_summation_type="PLAN")
    with pytest.raises(OutputError, match="not a DICOM code string"):
        write(tmp_path, good, dose_summation_type="lower case")
    assert not list(tmp_path.glob("*.dcm"))  # nothing half-written
    blocker = tmp_path / "blocker"
    blocker.write_text("x")
    with pytest.raises(OutputError, match="cannot write the RT Dose"):
        write_rtdose(blocker / "d.dcm", good, PatientInfo(), StudyInfo(), frame_of_reference_uid=new_uid())


def test_zero_dose_round_trip(tmp_path):
    zero = sitk.GetImageFromArray(np.zeros((2, 3, 4), np.float32))
    rd = read_rtdose(write(tmp_path, zero))
    assert float(sitk.GetArrayFromImage(rd.image).max()) == 0.0
