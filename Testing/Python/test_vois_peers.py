"""Rasterisation checked against independent tools: plastimatch and rt-utils.

An RTSTRUCT is written with :func:`write_rtstruct` on a small CT series written here with pydicom (4.8 mm
voxels, as a SPECT-resolution CT would be), then turned into masks by LuDosimetry and by each peer on the CT
grid. The shapes are analytic: an organ (superellipsoid with a bump and a notch, about 150 mL) and two
lesions (3 mL sphere, 8 mL ellipsoid) off the voxel grid, traced from their exact fractional coverage so the
contours do not follow voxel edges. Dice thresholds: >= 0.95 organ, >= 0.85 lesions (for rt-utils, which
marks every voxel a contour touches, against our supersampled 'touched' mask; see test_rt_utils).
"""
from __future__ import annotations

import os
import subprocess

import numpy as np
import pytest
import SimpleITK as sitk
from pydicom.uid import CTImageStorage

from conftest import in_plane_coverage, require_tool
from LuDosimetryLib import vois
from LuDosimetryLib.io.dicom_common import PatientInfo, SeriesInfo, StudyInfo, new_dataset, new_uid, write_dataset
from LuDosimetryLib.io.rtstruct import ReferencedSeries, read_rtstruct, write_rtstruct

SIZE = (60, 60, 36)  # x, y, z voxels; square slices: rt-utils 1.2.7 allocates (Columns, Rows) slice masks
SPACING = (4.8, 4.8, 4.8)  # mm
THRESHOLDS = {"organ": 0.95, "shell": 0.95, "lesion 3 mL": 0.85, "lesion 8 mL": 0.85}
SHELL_CENTRE = np.array([-40.0, -60.0, 1.0])
LESION3_CENTRE = np.array([-52.3, 38.1, -21.7])
LESION3_RADIUS = (3.0 * 3000.0 / (4.0 * np.pi)) ** (1.0 / 3.0)  # 3 mL sphere, mm
LESION8_CENTRE = np.array([47.6, -44.2, 26.9])
LESION8_AXES = np.array([15.0, 10.0, 8000.0 * 3.0 / (4.0 * np.pi * 150.0)])  # 8 mL ellipsoid, mm


def _organ(p):
    d = p - np.array([3.1, -5.2, 2.4])
    base = np.abs(d[:, 0] / 40.0) ** 3 + np.abs(d[:, 1] / 30.0) ** 3 + np.abs(d[:, 2] / 24.0) ** 3 <= 1.0
    bump = np.linalg.norm(d - np.array([32.0, 22.0, 0.0]), axis=1) < 12.0
    notch = (d[:, 0] < -15.0) & (np.abs(d[:, 1]) < 8.0)
    return (base | bump) & ~notch


SHAPES = {
    "organ": _organ,
    # Hollow sphere, radii 18..34 mm (about 140 mL): the slices through it have a hole contour (XOR).
    "shell": lambda p: np.abs(np.linalg.norm(p - SHELL_CENTRE, axis=1) - 26.0) <= 8.0,
    "lesion 3 mL": lambda p: np.linalg.norm(p - LESION3_CENTRE, axis=1) <= LESION3_RADIUS,
    "lesion 8 mL": lambda p: np.sum(((p - LESION8_CENTRE) / LESION8_AXES) ** 2, axis=1) <= 1.0,
}


def _reference(flip_z: bool) -> sitk.Image:
    image = sitk.Image(*SIZE, sitk.sitkFloat32)
    image.SetSpacing(SPACING)
    half = (np.asarray(SIZE) - 1) / 2.0 * np.asarray(SPACING)
    if flip_z:
        image.SetDirection((1, 0, 0, 0, 1, 0, 0, 0, -1))
        image.SetOrigin((-half[0], -half[1], half[2]))
    else:
        image.SetOrigin(tuple(-half))
    return image


def write_ct_series(folder, reference: sitk.Image, patient: PatientInfo, study: StudyInfo) -> ReferencedSeries:
    """A minimal, valid CT Image Storage series with the geometry of ``reference`` (one file per slice)."""
    os.makedirs(folder, exist_ok=True)
    direction = np.asarray(reference.GetDirection(), dtype=np.float64).reshape(3, 3)
    sx, sy, sz = reference.GetSpacing()
    nx, ny, nz = reference.GetSize()
    series = SeriesInfo(modality="CT", series_number=2, description="peer test CT",
                        frame_of_reference_uid=new_uid())
    pixels = np.full((ny, nx), 1024, dtype=np.int16)  # 0 HU with intercept -1024
    uids = []
    for k in range(nz):
        ds = new_dataset(CTImageStorage, patient, study, series, instance_number=k + 1)
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.AcquisitionNumber = 1
        ds.PatientOrientation = ""
        ds.PatientPosition = "HFS"
        ds.Laterality = ""
        position = vois.index_to_physical(np.array([[0.0, 0.0, float(k)]]), reference)[0]
        ds.ImagePositionPatient = [round(float(v), 4) for v in position]
        ds.ImageOrientationPatient = [round(float(v), 6) for v in np.concatenate([direction[:, 0], direction[:, 1]])]
        ds.PixelSpacing = [sy, sx]  # row spacing (y), column spacing (x)
        ds.SliceThickness = sz
        ds.SliceLocation = round(float(position[2]), 4)
        ds.KVP = 120
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows, ds.Columns = ny, nx
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = -1024, 1, "HU"
        ds.PixelData = pixels.tobytes()
        write_dataset(ds, os.path.join(folder, f"CT{k:04d}.dcm"))
        uids.append(ds.SOPInstanceUID)
    return ReferencedSeries(study.study_instance_uid, series.series_instance_uid, series.frame_of_reference_uid,
                            CTImageStorage, uids)


@pytest.fixture(scope="module", params=[False, True], ids=["axial", "flipped-z"])
def case(request, tmp_path_factory):
    flip_z = request.param
    folder = tmp_path_factory.mktemp("flip" if flip_z else "axial")
    reference = _reference(flip_z)
    patient, study = PatientInfo(patient_id="PEER"), StudyInfo()
    referenced = write_ct_series(folder / "ct", reference, patient, study)
    coverage = {name: in_plane_coverage(shape, reference) for name, shape in SHAPES.items()}
    path = write_rtstruct(folder / "rs.dcm", coverage, reference, referenced, patient, study)
    ours = vois.structure_set_masks(read_rtstruct(path), reference)
    spacing = reference.GetSpacing()
    assert 140 < vois.mask_volume_ml(coverage["organ"], spacing) < 170
    assert vois.mask_volume_ml(coverage["lesion 3 mL"], spacing) == pytest.approx(3.0, rel=0.05)
    assert vois.mask_volume_ml(coverage["lesion 8 mL"], spacing) == pytest.approx(8.0, rel=0.05)
    for name, mask in ours.items():  # sanity: ours against the analytic truth
        assert _dice(mask, coverage[name]) > THRESHOLDS[name], name
    return {"folder": folder, "ct": folder / "ct", "rtstruct": path, "reference": reference, "ours": ours,
            "truth": coverage, "flip_z": flip_z}


def _dice(a, b):
    a, b = np.asarray(a) > 0.5, np.asarray(b) > 0.5
    return 2.0 * np.sum(a & b) / (np.sum(a) + np.sum(b))


def _report(peer, case, name, dice, peer_mask):
    spacing = case["reference"].GetSpacing()
    print(f"{peer} [{'flipped-z' if case['flip_z'] else 'axial'}] {name}: Dice {dice:.3f} "
          f"(ours {vois.mask_volume_ml(case['ours'][name] > 0.5, spacing):.2f} mL, "
          f"peer {vois.mask_volume_ml(peer_mask, spacing):.2f} mL, "
          f"truth {vois.mask_volume_ml(case['truth'][name], spacing):.2f} mL)")


def test_plastimatch(case, tmp_path):
    """plastimatch convert with --xor-contours (its default ORs contours on a slice, filling the shell's hole)."""
    plastimatch = require_tool("plastimatch")
    out = tmp_path / "plastimatch"
    result = subprocess.run([plastimatch, "convert", "--input", str(case["rtstruct"]), "--referenced-ct",
                             str(case["ct"]), "--output-prefix", str(out), "--xor-contours"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    reference = case["reference"]
    for name, threshold in THRESHOLDS.items():
        files = [f for f in os.listdir(out) if f.startswith(name.replace(" ", "_")) or f.startswith(name)]
        assert len(files) == 1, (name, os.listdir(out))
        image = sitk.ReadImage(str(out / files[0]))
        assert image.GetSize() == reference.GetSize()
        # plastimatch writes increasing z with an identity direction; same voxel centres, so NN is exact.
        resampled = sitk.Resample(image, reference, sitk.Transform(), sitk.sitkNearestNeighbor, 0)
        peer = sitk.GetArrayFromImage(resampled) > 0
        dice = _dice(case["ours"][name], peer)
        _report("plastimatch", case, name, dice, peer)
        assert dice >= threshold, (name, dice)


def test_rt_utils(case):
    """rt-utils (OpenCV fillPoly on vertices rounded to voxel centres) marks every voxel the contour touches.

    So it is compared in two ways: (1) containment: all our centre-inside voxels are in its mask, and all
    its extra voxels lie in the one-voxel in-plane ring around ours; (2) Dice with the brief's thresholds
    against our own 'touched' rule (supersampled coverage > 0). The plain centre-rule Dice is printed: on
    4.8 mm voxels rt-utils' rule adds about 15 % to an organ and 30-50 % to a 3-8 mL lesion.
    """
    rt_utils = pytest.importorskip("rt_utils")
    from scipy import ndimage

    rtstruct = rt_utils.RTStructBuilder.create_from(dicom_series_path=str(case["ct"]),
                                                    rt_struct_path=str(case["rtstruct"]))
    reference = case["reference"]
    direction = np.asarray(reference.GetDirection()).reshape(3, 3)
    # rt-utils: (rows, columns, slices), slices sorted by position along row x column direction.
    ascending = float(np.dot(np.cross(direction[:, 0], direction[:, 1]), direction[:, 2])) > 0
    assert set(rtstruct.get_roi_names()) == set(THRESHOLDS)
    touched = vois.structure_set_masks(read_rtstruct(case["rtstruct"]), reference, supersample=8)
    for name, threshold in THRESHOLDS.items():
        peer = np.transpose(rtstruct.get_roi_mask_by_name(name), (2, 0, 1))
        if not ascending:
            peer = peer[::-1]
        assert peer.shape == case["ours"][name].shape
        ours = case["ours"][name] > 0.5
        ring = ndimage.binary_dilation(ours, structure=np.ones((1, 3, 3), bool))
        assert np.sum(ours & peer) >= 0.99 * np.sum(ours), name
        assert not np.any(peer & ~ring), name
        _report("rt-utils (centre rule)", case, name, _dice(ours, peer), peer)
        dice = _dice(touched[name] > 0, peer)
        _report("rt-utils (touched rule)", case, name, dice, peer)
        assert dice >= threshold, (name, dice)


def test_ct_series_is_valid_dicom(case):
    """The CT written for the peers is itself conformant (dciodvfy: no errors) and reads in SimpleITK."""
    dciodvfy = require_tool("dciodvfy")
    first = sorted(os.listdir(case["ct"]))[0]
    report = subprocess.run([dciodvfy, str(case["ct"] / first)], capture_output=True, text=True, timeout=60)
    text = report.stdout + report.stderr
    assert [line for line in text.splitlines() if line.startswith("Error")] == [], text
    reader = sitk.ImageSeriesReader()
    image = sitk.ReadImage(reader.GetGDCMSeriesFileNames(str(case["ct"])))
    assert image.GetSize() == case["reference"].GetSize()
    assert np.allclose(image.GetSpacing(), SPACING, atol=1e-3)
