"""CT / PT / NM series writers (phantom, product): DICOM validity (dciodvfy, dcmdump), geometry and values read back."""
from __future__ import annotations

import math
import subprocess
from datetime import datetime

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

import LuDosimetryLib
from conftest import require_tool
from LuDosimetryLib.errors import OutputError
from LuDosimetryLib.io.dicom_common import PatientInfo, SeriesInfo, StudyInfo
from LuDosimetryLib.io.nm_writer import write_nm_multiframe
from LuDosimetryLib.phantom.dicom.slice_writer import write_ct_series, write_pt_slices
from LuDosimetryLib.phantom.dicom.vendor import SIEMENS_NM
from LuDosimetryLib.radionuclides import radionuclide

INJ = datetime(2018, 11, 15, 9, 22, 0)
ACQ = datetime(2018, 11, 15, 13, 6, 24)
DURATION_S = 1200.0
A0 = 7.21e9
LU = radionuclide("Lu-177")


def _image(values: np.ndarray, spacing=(4.7952, 4.7952, 4.7952), origin=(-120.5, -95.25, -60.0),
           direction=None) -> sitk.Image:
    img = sitk.GetImageFromArray(values.astype(np.float32))
    img.SetSpacing(spacing)
    img.SetOrigin(origin)
    if direction is not None:
        img.SetDirection(direction)
    return img


@pytest.fixture
def activity():
    rng = np.random.default_rng(1)
    a = rng.gamma(2.0, 5e4, size=(6, 12, 14))  # Bq/mL
    a[2] *= 40.0  # one hot slice: slopes differ per slice
    a[4] = 0.0  # one empty slice
    return a


def _ids():
    patient = PatientInfo("ANON54121", "ANON54121", "", "M", "064Y")
    study = StudyInfo(study_datetime=ACQ)
    return patient, study


def _kw(**extra):
    kw = dict(acquisition_datetime=ACQ, duration_s=DURATION_S, injected_activity_bq=A0, injection_datetime=INJ)
    kw.update(extra)
    return kw


def _dciodvfy_errors(path) -> list:
    exe = require_tool("dciodvfy")
    out = subprocess.run([exe, str(path)], capture_output=True, text=True)
    return [line for line in (out.stdout + out.stderr).splitlines() if line.startswith("Error")]


def _read_series(folder) -> sitk.Image:
    reader = sitk.ImageSeriesReader()
    files = reader.GetGDCMSeriesFileNames(str(folder))
    reader.SetFileNames(files)
    return reader.Execute()


def _assert_same_geometry(a: sitk.Image, b: sitk.Image):
    assert a.GetSize() == b.GetSize()
    np.testing.assert_allclose(a.GetSpacing(), b.GetSpacing(), atol=1e-4)
    np.testing.assert_allclose(a.GetOrigin(), b.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(a.GetDirection(), b.GetDirection(), atol=1e-6)


# --------------------------------------------------------------------------------------------- CT

def test_ct_series_valid_and_read_back(tmp_path):
    rng = np.random.default_rng(0)
    hu = np.round(rng.uniform(-1000, 1500, size=(5, 16, 20)))
    img = _image(hu, spacing=(2.3976, 2.3976, 4.7952))
    patient, study = _ids()
    ref = write_ct_series(img, tmp_path / "ct", patient, study, SeriesInfo("CT", description="CT C2S1D0"))
    files = sorted((tmp_path / "ct").glob("*.dcm"))
    assert len(files) == 5 and len(ref.sop_instance_uids) == 5
    assert ref.sop_class_uid == pydicom.uid.CTImageStorage
    assert _dciodvfy_errors(files[0]) == []
    # SOP instance UIDs follow the z order of the image.
    for k, f in enumerate(files):
        ds = pydicom.dcmread(f)
        assert ds.SOPInstanceUID == ref.sop_instance_uids[k]
        assert ds.FrameOfReferenceUID == ref.frame_of_reference_uid
        assert float(ds.RescaleSlope) == 1.0 and float(ds.RescaleIntercept) == -1024.0
        assert ds.PixelRepresentation == 1
    back = _read_series(tmp_path / "ct")
    _assert_same_geometry(back, img)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(back), hu)


def test_ct_oblique_direction_geometry(tmp_path):
    c, s = math.cos(0.3), math.sin(0.3)
    direction = (c, -s, 0.0, s, c, 0.0, 0.0, 0.0, 1.0)
    img = _image(np.zeros((3, 8, 9)), spacing=(2.0, 2.5, 3.0), direction=direction)
    patient, study = _ids()
    write_ct_series(img, tmp_path / "ct", patient, study, SeriesInfo("CT"))
    _assert_same_geometry(_read_series(tmp_path / "ct"), img)


def test_dcmdump_reads_every_writer(tmp_path, activity):
    exe = require_tool("dcmdump")
    patient, study = _ids()
    write_ct_series(_image(np.zeros((2, 4, 4))), tmp_path / "ct", patient, study, SeriesInfo("CT"))
    write_pt_slices(_image(activity), tmp_path / "pt", patient, study, SeriesInfo("PT"), **_kw())
    write_nm_multiframe(_image(activity), tmp_path / "nm" / "nm.dcm", patient, study, SeriesInfo("NM"), **_kw())
    for f in [tmp_path / "ct" / "CT_0001.dcm", tmp_path / "pt" / "PT_0003.dcm", tmp_path / "nm" / "nm.dcm"]:
        out = subprocess.run([exe, str(f)], capture_output=True, text=True)
        assert out.returncode == 0, out.stderr
        assert "(0020,000d)" in out.stdout.lower()


# --------------------------------------------------------------------------------------------- PT

def test_pt_slices_valid_and_admin_decay_undone(tmp_path, activity):
    img = _image(activity)
    patient, study = _ids()
    series = SeriesInfo("PT", description="SPECT C2S1D0")
    ref = write_pt_slices(img, tmp_path / "pt", patient, study, series, **_kw())
    files = sorted((tmp_path / "pt").glob("*.dcm"))
    assert len(files) == activity.shape[0]
    assert _dciodvfy_errors(files[0]) == []
    ds = pydicom.dcmread(files[0])
    assert ds.Modality == "PT" and ds.Units == "BQML" and ds.DecayCorrection == "ADMIN"
    assert "DECY" in ds.CorrectedImage and "ATTN" in ds.CorrectedImage
    assert list(ds.SeriesType) == ["STATIC", "IMAGE"]
    assert ds.Manufacturer == "SIEMENS NM" and ds.ManufacturerModelName == "Symbia Intevo Bold"
    assert "C2S1D0" in ds.SeriesDescription
    assert "TimezoneOffsetFromUTC" not in ds
    assert int(ds.ActualFrameDuration) == 1200000
    rp = ds.RadiopharmaceuticalInformationSequence[0]
    assert rp.Radiopharmaceutical == "Lu-177 DOTATATE"
    assert float(rp.RadionuclideTotalDose) == pytest.approx(A0)
    assert float(rp.RadionuclideHalfLife) == pytest.approx(LU.half_life_s)
    assert rp.RadiopharmaceuticalStartDateTime.startswith("20181115092200")
    assert rp.RadiopharmaceuticalStartTime.startswith("092200")
    assert rp.RadionuclideCodeSequence[0].CodeMeaning == "^177^Lutetium"
    elapsed = (ACQ - INJ).total_seconds()
    lam = LU.decay_constant_per_s
    # DecayFactor / FrameReferenceTime are consistent: stored / DecayFactor = mean over the frame,
    # which the activity reaches at FrameReferenceTime after the administration.
    frame_mean = (1 - math.exp(-lam * DURATION_S)) / (lam * DURATION_S)
    assert float(ds.DecayFactor) == pytest.approx(math.exp(lam * elapsed) / frame_mean, rel=1e-9)
    assert float(ds.FrameReferenceTime) / 1000.0 == pytest.approx(elapsed - math.log(frame_mean) / lam, rel=1e-9)
    slopes = {float(pydicom.dcmread(f).RescaleSlope) for f in files}
    assert len(slopes) >= activity.shape[0] - 1  # one slope per slice (the empty slice has slope 1)
    # SimpleITK applies each slice's own slope; undo the ADMIN correction.
    back = _read_series(tmp_path / "pt")
    _assert_same_geometry(back, img)
    values = sitk.GetArrayFromImage(back) * math.exp(-lam * elapsed)
    for k in range(activity.shape[0]):
        tol = activity[k].max() / 65535.0 * 0.5 * 1.0001 + 1e-9
        assert np.abs(values[k] - activity[k]).max() <= tol
    assert [pydicom.dcmread(f).SOPInstanceUID for f in files] == ref.sop_instance_uids


@pytest.mark.parametrize("mode", ["START", "NONE"])
def test_pt_start_and_none(tmp_path, activity, mode):
    patient, study = _ids()
    write_pt_slices(_image(activity), tmp_path / "pt", patient, study, SeriesInfo("PT"),
                    **_kw(decay_correction=mode, timezone_offset="-0500"))
    f = sorted((tmp_path / "pt").glob("*.dcm"))[2]
    ds = pydicom.dcmread(f)
    assert ds.DecayCorrection == mode and ds.TimezoneOffsetFromUTC == "-0500"
    lam = LU.decay_constant_per_s
    frame_mean = (1 - math.exp(-lam * DURATION_S)) / (lam * DURATION_S)
    stored = ds.pixel_array * float(ds.RescaleSlope)
    if mode == "START":
        assert float(ds.DecayFactor) == pytest.approx(1 / frame_mean)
        expected = activity[2]
    else:
        assert "DecayFactor" not in ds and "DECY" not in ds.CorrectedImage
        expected = activity[2] * frame_mean
    assert np.abs(stored - expected).max() <= activity[2].max() / 65535.0
    assert _dciodvfy_errors(f) == []


def test_pt_stray_nm_slice(tmp_path, activity):
    patient, study = _ids()
    ref = write_pt_slices(_image(activity), tmp_path / "pt", patient, study, SeriesInfo("PT"),
                          **_kw(stray_nm_slice_index=3))
    files = sorted((tmp_path / "pt").glob("*.dcm"))
    mods = [pydicom.dcmread(f).Modality for f in files]
    assert mods == ["PT", "PT", "PT", "NM", "PT", "PT"]
    assert pydicom.dcmread(files[3]).SOPClassUID == pydicom.uid.NuclearMedicineImageStorage
    assert len(set(ref.sop_instance_uids)) == len(files)


def test_pt_negative_values_use_int16(tmp_path):
    a = np.full((2, 4, 5), 100.0)
    a[1, 0, 0] = -50.0
    patient, study = _ids()
    write_pt_slices(_image(a), tmp_path / "pt", patient, study, SeriesInfo("PT"), **_kw(decay_correction="START"))
    ds = pydicom.dcmread(sorted((tmp_path / "pt").glob("*.dcm"))[1])
    assert ds.PixelRepresentation == 1
    assert ds.pixel_array[0, 0] * float(ds.RescaleSlope) == pytest.approx(-50.0, abs=0.01)


def test_pt_bad_inputs(tmp_path, activity):
    patient, study = _ids()
    img = _image(activity)
    with pytest.raises(OutputError, match="precedes the injection"):
        write_pt_slices(img, tmp_path / "a", patient, study, SeriesInfo("PT"),
                        **_kw(injection_datetime=datetime(2018, 11, 16)))
    with pytest.raises(OutputError, match="decay_correction"):
        write_pt_slices(img, tmp_path / "b", patient, study, SeriesInfo("PT"), **_kw(decay_correction="DECAY"))
    with pytest.raises(OutputError, match="duration_s"):
        write_pt_slices(img, tmp_path / "c", patient, study, SeriesInfo("PT"), **_kw(duration_s=0))
    with pytest.raises(OutputError, match="stray_nm_slice_index"):
        write_pt_slices(img, tmp_path / "d", patient, study, SeriesInfo("PT"), **_kw(stray_nm_slice_index=99))
    with pytest.raises(OutputError, match="timezone_offset"):
        write_pt_slices(img, tmp_path / "e", patient, study, SeriesInfo("PT"), **_kw(timezone_offset="EST"))
    bad = activity.copy()
    bad[0, 0, 0] = np.nan
    with pytest.raises(OutputError, match="NaN"):
        write_pt_slices(_image(bad), tmp_path / "f", patient, study, SeriesInfo("PT"), **_kw())
    with pytest.raises(OutputError, match="3D"):
        write_ct_series(sitk.Image(4, 4, sitk.sitkFloat32), tmp_path / "g", patient, study, SeriesInfo("CT"))
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputError, match="not a folder"):
        write_ct_series(img, tmp_path / "file", patient, study, SeriesInfo("CT"))


# --------------------------------------------------------------------------------------------- NM

def test_nm_multiframe_valid_and_read_back(tmp_path, activity):
    img = _image(activity)
    patient, study = _ids()
    path = tmp_path / "nm" / "SPECT.dcm"
    ref = write_nm_multiframe(img, path, patient, study, SeriesInfo("NM", description="SPECT C2S1D0"), **_kw())
    assert _dciodvfy_errors(path) == []
    ds = pydicom.dcmread(path)
    n = activity.shape[0]
    assert ds.Modality == "NM" and int(ds.NumberOfFrames) == n
    assert list(ds.ImageType)[2:] == ["RECON TOMO", "EMISSION"]
    assert ds.FrameIncrementPointer == 0x00540080 and list(ds.SliceVector) == list(range(1, n + 1))
    assert float(ds.SpacingBetweenSlices) == pytest.approx(4.7952)
    det = ds.DetectorInformationSequence[0]
    np.testing.assert_allclose([float(v) for v in det.ImagePositionPatient], img.GetOrigin(), atol=1e-4)
    rwvm = ds.RealWorldValueMappingSequence[0]
    assert rwvm.MeasurementUnitsCodeSequence[0].CodeValue == "Bq/ml"
    # NM Isotope module states the dose in MBq.
    assert float(ds.RadiopharmaceuticalInformationSequence[0].RadionuclideTotalDose) == pytest.approx(A0 / 1e6)
    rot = ds.RotationInformationSequence[0]
    assert float(rot.ActualFrameDuration) * float(rot.NumberOfFramesInRotation) == pytest.approx(DURATION_S * 1000)
    lam = LU.decay_constant_per_s
    frame_mean = (1 - math.exp(-lam * DURATION_S)) / (lam * DURATION_S)
    values = ds.pixel_array * float(rwvm.RealWorldValueSlope) / frame_mean  # NONE: frame mean → start
    assert np.abs(values - activity).max() <= activity.max() / 65535.0 * 0.5 / frame_mean * 1.0001
    assert ref.sop_instance_uids == [ds.SOPInstanceUID] * n


def test_nm_multiframe_equipment_is_ludosimetry_unless_given(tmp_path, activity):
    """Our own NM files say LuDosimetry made them; the phantom's vendor-like files pass the camera's."""
    img = _image(activity)
    patient, study = _ids()
    write_nm_multiframe(img, tmp_path / "own.dcm", patient, study, SeriesInfo("NM"), **_kw())
    own = pydicom.dcmread(tmp_path / "own.dcm", stop_before_pixels=True)
    assert own.Manufacturer == "LuDosimetry" and own.ManufacturerModelName == "LuDosimetryLib"
    assert own.SoftwareVersions == f"LuDosimetry {LuDosimetryLib.__version__}"
    write_nm_multiframe(img, tmp_path / "camera.dcm", patient, study, SeriesInfo("NM"), equipment=SIEMENS_NM, **_kw())
    camera = pydicom.dcmread(tmp_path / "camera.dcm", stop_before_pixels=True)
    assert camera.Manufacturer == "SIEMENS NM" and camera.ManufacturerModelName == "Symbia Intevo Bold"


def test_nm_multiframe_simpleitk_geometry(tmp_path, activity):
    img = _image(activity)
    patient, study = _ids()
    path = tmp_path / "nm.dcm"
    write_nm_multiframe(img, path, patient, study, SeriesInfo("NM"), **_kw())
    back = sitk.ReadImage(str(path))
    assert back.GetSize() == img.GetSize()
    np.testing.assert_allclose(back.GetSpacing(), img.GetSpacing(), atol=1e-4)
    np.testing.assert_allclose(back.GetOrigin(), img.GetOrigin(), atol=1e-4)


def test_nm_rejects_left_handed_volume(tmp_path, activity):
    patient, study = _ids()
    img = _image(activity, direction=(1, 0, 0, 0, 1, 0, 0, 0, -1))
    with pytest.raises(OutputError, match="slice axis"):
        write_nm_multiframe(img, tmp_path / "nm.dcm", patient, study, SeriesInfo("NM"), **_kw())
