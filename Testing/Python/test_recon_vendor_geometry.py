"""Issue #17: projections written as a GE Discovery 670 writes them reconstruct where the activity is.

The two-bed GE-style files are made here with pydicom and PyTomography's own projector, in PyTomography's
reading of NM TOMO files (``pytomography.io.SPECT.dicom.parse_projection_dataset``: projector angle =
gantry + 180°, radial bin = stored column, axial bin = reversed row), not with LuDosimetry's writer, so
the reader is not checked against itself. As on the real GE sample (issue #17): one Detector Information
item per bed whose ImagePositionPatient z is the top row's (upper bed higher), rows running head to feet,
bed 1 counter-clockwise from 180°, bed 2 clockwise from 0°, RadialPosition in the Rotation Information
item, collimator "MEGP", zeros in the rows outside the camera's useful field of view, no acquisition
times, no calibration or injection in the header.
"""
from __future__ import annotations

import warnings

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import ExplicitVRLittleEndian, NuclearMedicineImageStorage

N = 32  # columns = rows
PIXEL_MM = 8.0
VIEWS = 16
OFFSET_ROWS = 20  # the beds overlap by 12 rows
DEAD_ROWS = 4  # zero rows at the top and bottom of every frame (outside the camera's useful FOV)
RADIUS_MM = 220.0
TOP_Z_MM = (200.0, 200.0 - OFFSET_ROWS * PIXEL_MM)
#: Photopeak, upper and lower scatter windows in the order of the GE file (keV).
WINDOWS = (("Lu177_EM", 187.2, 228.8), ("sc4_SC", 229.63, 251.16), ("sc3_SC", 166.89, 186.31))
VIEW_S = 25.0
CPS_PER_MBQ = 10.0
#: A sphere across the middle of the overlap, off the rotation axis (LPS mm) and its value (counts/view/voxel).
SPHERE_MM = np.array([48.0, -32.0, 4.0])
SPHERE_R_MM = 14.0


def _bed_grid(top_z: float):
    """LPS of PyTomography object voxels (i, j, k): x0 + iΔ, y0 + jΔ, (top_z − (N − 1)Δ) + kΔ."""
    c = np.arange(N) * PIXEL_MM
    x0 = -(N - 1) / 2.0 * PIXEL_MM
    return x0 + c, x0 + c, top_z - (N - 1) * PIXEL_MM + c


def _sphere(top_z: float) -> np.ndarray:
    x, y, z = np.meshgrid(*_bed_grid(top_z), indexing="ij")
    sub = np.zeros_like(x)
    for d in np.linspace(-0.375, 0.375, 4):  # 4³ sub-samples per voxel: a smooth partial-volume sphere
        for e in np.linspace(-0.375, 0.375, 4):
            for f in np.linspace(-0.375, 0.375, 4):
                r = np.sqrt((x + d * PIXEL_MM - SPHERE_MM[0]) ** 2 + (y + e * PIXEL_MM - SPHERE_MM[1]) ** 2
                            + (z + f * PIXEL_MM - SPHERE_MM[2]) ** 2)
                sub += (r <= SPHERE_R_MM) / 64.0
    return 100.0 * sub


def _gantry_angles(bed: int) -> np.ndarray:
    step = 360.0 / VIEWS
    return (180.0 + step * np.arange(VIEWS)) % 360 if bed == 0 else (0.0 - step * np.arange(VIEWS)) % 360


def _frames(bed: int) -> np.ndarray:
    """Noise-free photopeak frames [view, row, col] of one bed through PyTomography's projector with the
    GI-MEGP PSF, laid out as PyTomography reads files."""
    import torch
    from pytomography.io.SPECT.dicom import get_psfmeta_from_scanner_params
    from pytomography.metadata.SPECT import SPECTObjectMeta, SPECTProjMeta
    from pytomography.projectors.SPECT import SPECTSystemMatrix
    from pytomography.transforms.SPECT import SPECTPSFTransform

    gantry = _gantry_angles(bed)
    proj_angles = (gantry + 180.0) % 360.0
    order = np.argsort(proj_angles)
    d = PIXEL_MM / 10.0
    system = SPECTSystemMatrix(
        obj2obj_transforms=[SPECTPSFTransform(get_psfmeta_from_scanner_params(
            "GI-MEGP", 208.0, intrinsic_resolution_140keV=0.38))], proj2proj_transforms=[],
        object_meta=SPECTObjectMeta((d, d, d), (N, N, N)),
        proj_meta=SPECTProjMeta((N, N), (d, d), proj_angles[order], np.full(VIEWS, RADIUS_MM / 10.0)))
    q = system.forward(torch.tensor(_sphere(TOP_Z_MM[bed]).astype(np.float32))).cpu().numpy()  # [θ, r, k]
    frames = np.empty((VIEWS, N, N))
    for theta, v in enumerate(order):
        frames[v] = q[theta].T[::-1]  # frame[row, col] = q[θ, col, N − 1 − row]
    frames[:, :DEAD_ROWS] = 0.0
    frames[:, N - DEAD_ROWS:] = 0.0
    return frames


def _ge_file(path, bed: int, frames: np.ndarray, acquired: str = ""):
    """One GE-style NM TOMO file: windows × views frames, single detector item, no injection; no times
    unless ``acquired`` ("YYYYMMDDHHMMSS") is given."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = NuclearMedicineImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = f"1.2.826.0.1.3680043.8.498.17.{bed + 1}"
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = NuclearMedicineImageStorage
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.Modality = "NM"
    ds.Manufacturer = "GE MEDICAL SYSTEMS"
    ds.ManufacturerModelName = "Tandem_Discovery_670_Pro"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "TOMO", "EMISSION"]
    ds.StudyInstanceUID = "1.2.826.0.1.3680043.8.498.17.100"
    ds.SeriesInstanceUID = f"1.2.826.0.1.3680043.8.498.17.10{bed + 1}"
    ds.FrameOfReferenceUID = "1.2.826.0.1.3680043.8.498.17.200"
    ds.PatientID, ds.PatientName, ds.SeriesNumber = "GE17", "GE^Style", 1
    for tag in ("StudyDate", "SeriesDate", "AcquisitionDate", "StudyTime", "SeriesTime", "AcquisitionTime",
                "SeriesDescription"):
        setattr(ds, tag, "")
    if acquired:
        ds.StudyDate = ds.SeriesDate = ds.AcquisitionDate = acquired[:8]
        ds.StudyTime, ds.SeriesTime, ds.AcquisitionTime = "090000", acquired[8:], acquired[8:]
    counts = np.zeros((len(WINDOWS), VIEWS, N, N))
    counts[0] = frames
    ds.NumberOfFrames = len(WINDOWS) * VIEWS
    ds.EnergyWindowVector = [w + 1 for w in range(len(WINDOWS)) for _ in range(VIEWS)]
    ds.NumberOfEnergyWindows = len(WINDOWS)
    items = []
    for name, lo, hi in WINDOWS:
        rng, item = Dataset(), Dataset()
        rng.EnergyWindowLowerLimit, rng.EnergyWindowUpperLimit = str(lo), str(hi)
        item.EnergyWindowRangeSequence = DicomSequence([rng])
        item.EnergyWindowName = name
        items.append(item)
    ds.EnergyWindowInformationSequence = DicomSequence(items)
    ds.DetectorVector = [1] * (len(WINDOWS) * VIEWS)
    ds.NumberOfDetectors = 1
    det = Dataset()
    det.CollimatorGridName = "MEGP"
    det.CollimatorType = "PARA"
    det.ImagePositionPatient = [str(-(N - 1) / 2.0 * PIXEL_MM), str(-(N - 1) / 2.0 * PIXEL_MM), str(TOP_Z_MM[bed])]
    det.ImageOrientationPatient = ["1", "0", "0", "0", "0", "-1"] if bed == 0 else ["-1", "0", "0", "0", "0", "-1"]
    ds.DetectorInformationSequence = DicomSequence([det])
    ds.RotationVector = [1] * (len(WINDOWS) * VIEWS)
    ds.NumberOfRotations = 1
    rot = Dataset()
    rot.TableHeight = "143.4"
    rot.RotationDirection = "CC" if bed == 0 else "CW"
    rot.RadialPosition = str(RADIUS_MM)
    rot.ScanArc = "360"
    rot.AngularStep = str(360.0 / VIEWS)
    rot.ActualFrameDuration = int(VIEW_S * 1000)
    rot.NumberOfFramesInRotation = VIEWS
    rot.StartAngle = "180" if bed == 0 else "0"
    ds.RotationInformationSequence = DicomSequence([rot])
    ds.AngularViewVector = list(range(1, VIEWS + 1)) * len(WINDOWS)
    ds.PixelSpacing = [str(PIXEL_MM), str(PIXEL_MM)]
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.Rows = ds.Columns = N
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit, ds.PixelRepresentation = 15, 0
    ds.PixelData = np.round(counts).astype("<u2").reshape(-1, N, N).tobytes()
    ds.save_as(str(path), enforce_file_format=True)
    return path


@pytest.fixture(scope="module")
def ge_frames():
    pytest.importorskip("pytomography")
    return [_frames(b) for b in range(2)]


@pytest.fixture(scope="module")
def ge_study(tmp_path_factory, ge_frames):
    """A study folder with the two GE-style beds."""
    root = tmp_path_factory.mktemp("ge17")
    (root / "NM").mkdir()
    files = [_ge_file(root / "NM" / f"bed{b + 1}_projections.dcm", b, ge_frames[b]) for b in range(2)]
    return root, files


def _true_total_bq() -> float:
    """The sphere's activity (Bq): its counts/view/voxel through the same calibration."""
    from LuDosimetryLib.recon.quantify import counts_to_bq_per_ml

    voxel_ml = PIXEL_MM ** 3 / 1000.0
    full = _sphere(TOP_Z_MM[0]).sum()  # counts per view from the whole sphere (inside bed 1's grid)
    return float(counts_to_bq_per_ml(np.array([full]), cps_per_mbq=CPS_PER_MBQ, view_duration_s=VIEW_S,
                                     total_duration_s=VIEW_S * VIEWS, voxel_ml=voxel_ml)[0] * voxel_ml)


def test_ge_two_beds_give_one_stitched_volume_with_the_activity_in_place(ge_study, tmp_path, monkeypatch):
    """One series for the two beds; the sphere reconstructed at its LPS position (< 2 mm) with its activity
    (± 5 %); the PSF model is GI-MEGP, read from 'MEGP' of a GE header."""
    from LuDosimetryLib.assumptions import AssumptionWarning
    from LuDosimetryLib.io.images import read_spect
    from LuDosimetryLib.options import ReconOptions
    from LuDosimetryLib.recon import reconstruct as rec

    root, _files = ge_study
    used = []
    real = rec.build_system_matrix

    def spy(*args, **kwargs):
        used.append(kwargs.get("collimator"))
        return real(*args, **kwargs)

    monkeypatch.setattr(rec, "build_system_matrix", spy)
    options = ReconOptions(iterations=6, subsets=4, scatter="none", attenuation=False, psf=True,
                           calibration_cps_per_mbq=CPS_PER_MBQ, device="cpu")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        written = rec.reconstruct_study(root, tmp_path / "out", options)
    assert len(written) == 1, [p.parent.name for p in written]
    assert any(isinstance(w.message, AssumptionWarning) and "bed positions of one acquisition" in str(w.message)
               for w in caught)
    assert used == ["GI-MEGP", "GI-MEGP"]
    ds = pydicom.dcmread(str(written[0]))
    assert "GI-MEGP (header" in ds.DerivationDescription and "(2 bed(s))" in ds.DerivationDescription
    image = read_spect([str(written[0])]).image
    assert image.GetSize()[2] == N + OFFSET_ROWS
    assert image.GetOrigin()[2] == pytest.approx(TOP_Z_MM[1] - (N - 1) * PIXEL_MM)
    a = sitk.GetArrayFromImage(image).astype(float)
    z, y, x = np.meshgrid(*[np.arange(n) for n in a.shape], indexing="ij")
    centroid = np.array(image.TransformContinuousIndexToPhysicalPoint(
        [float((a * c).sum() / a.sum()) for c in (x, y, z)]))
    assert np.linalg.norm(centroid - SPHERE_MM) < 2.0, centroid
    total = a.sum() * PIXEL_MM ** 3 / 1000.0
    assert total == pytest.approx(_true_total_bq(), rel=0.05)


def test_projection_reading_matches_pytomography_reader(ge_study):
    """Views, radial and axial bins of a GE file in the order PyTomography's own reader gives them."""
    pytest.importorskip("pytomography")
    from pytomography.io.SPECT import dicom

    from LuDosimetryLib.recon.projections import read_projections
    from LuDosimetryLib.recon.system import frames_to_projector

    for f in ge_study[1]:
        ours = read_projections(f)
        theirs = dicom.get_projections(str(f)).cpu().numpy()
        np.testing.assert_array_equal(frames_to_projector(ours.counts, ours.geometry), theirs)
        _obj, proj_meta = dicom.get_metadata(str(f))
        geom = ours.geometry
        np.testing.assert_allclose(np.sort(geom.projector_angles_deg), np.asarray(proj_meta.angles), atol=1e-4)
        np.testing.assert_allclose(geom.radii_mm[geom.view_order] / 10.0, np.asarray(proj_meta.radii), atol=1e-6)
        affine = dicom._get_affine_spect_projections(str(f))
        assert (geom.x0_mm, geom.y0_mm, geom.z_bottom_mm) == pytest.approx(tuple(affine[:3, 3]))


def test_multibed_fill_and_stitch_match_pytomography(ge_study):
    """fill_from_neighbours = load_multibed_projections; stitch_beds = stitch_multibed (but for the two end
    slices of the whole volume, which PyTomography sets to 0 and LuDosimetry keeps)."""
    pytest.importorskip("pytomography")
    import torch
    from pytomography.io.SPECT import dicom

    from LuDosimetryLib.recon.multibed import fill_from_neighbours, group_beds, stitch_beds
    from LuDosimetryLib.recon.projections import read_projections
    from LuDosimetryLib.recon.system import frames_to_projector, object_to_image

    files = [str(f) for f in ge_study[1]]
    with pytest.warns(Warning):
        groups = group_beds([read_projections(f) for f in files])
    assert len(groups) == 1 and [str(s.path) for s in groups[0]] == files[::-1]  # lowest first
    filled = {str(s.path): s for s in fill_from_neighbours(groups[0])}
    theirs = dicom.load_multibed_projections(files).cpu().numpy()
    for i, f in enumerate(files):
        np.testing.assert_array_equal(frames_to_projector(filled[f].counts, filled[f].geometry), theirs[i])
    rng = np.random.default_rng(17)
    objs = rng.random((2, N, N, N)).astype(np.float32)
    ref = dicom.stitch_multibed(torch.tensor(objs), files).cpu().numpy()
    ours = sitk.GetArrayFromImage(stitch_beds([object_to_image(o, filled[f].geometry) for o, f in zip(objs, files)]))
    ours = np.transpose(ours, (2, 1, 0))
    assert ours.shape == ref.shape
    np.testing.assert_allclose(ours[..., 1:-1], ref[..., 1:-1], rtol=1e-6)


def test_beds_with_different_views_are_not_mixed(ge_study):
    import dataclasses

    from LuDosimetryLib.recon.multibed import fill_from_neighbours
    from LuDosimetryLib.recon.projections import read_projections

    low, high = (read_projections(f) for f in ge_study[1][::-1])
    turned = dataclasses.replace(high.geometry, gantry_angles_deg=high.geometry.gantry_angles_deg + 3.0)
    with pytest.raises(ValueError, match="angles"):
        fill_from_neighbours([low, dataclasses.replace(high, geometry=turned)])


def test_ge_per_view_radius_offsets_are_read_as_pytomography_reads_them(ge_study, tmp_path):
    """GE Xeleris body-contour offsets ((0055,1022)[0] (0013,101E), one (x, y, r) triple per view) are added."""
    pytest.importorskip("pytomography")
    from pytomography.io.SPECT import dicom

    from LuDosimetryLib.recon.projections import read_projections

    ds = pydicom.dcmread(str(ge_study[1][0]))
    item = Dataset()
    offsets = np.linspace(-30.0, 25.0, VIEWS)
    item.add_new(0x0013101E, "FD", [v for r in offsets for v in (0.0, 0.0, r)])
    ds.add_new(0x00551022, "SQ", DicomSequence([item]))
    path = tmp_path / "contour.dcm"
    ds.save_as(str(path))
    geom = read_projections(path).geometry
    np.testing.assert_allclose(geom.radii_mm, RADIUS_MM + offsets)
    _obj, proj_meta = dicom.get_metadata(str(path))
    np.testing.assert_allclose(geom.radii_mm[geom.view_order] / 10.0, np.asarray(proj_meta.radii), atol=1e-6)


def test_run_with_spect_reconstructed_takes_the_stitched_volume(ge_frames, tmp_path):
    """Two timed beds 17 min apart → one reconstruction, the one 'run --spect reconstructed' chooses."""
    from datetime import datetime

    from LuDosimetryLib.io.inventory import scan_study
    from LuDosimetryLib.options import ReconOptions, RunOptions
    from LuDosimetryLib.pipeline import choose_spect_series
    from LuDosimetryLib.recon.reconstruct import reconstruct_study

    study = tmp_path / "study"
    (study / "NM").mkdir(parents=True)
    for b, when in enumerate(("20240105100000", "20240105101700")):
        _ge_file(study / "NM" / f"bed{b + 1}.dcm", b, ge_frames[b], acquired=when)
    injection = dict(injected_activity_bq=7.4e9, injection_time=datetime(2024, 1, 5, 8, 0))
    options = ReconOptions(iterations=1, subsets=4, scatter="none", attenuation=False, psf=False,
                           calibration_cps_per_mbq=CPS_PER_MBQ, device="cpu")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        written = reconstruct_study(study, tmp_path / "recon", options, **injection)
        inv = scan_study(study, extra_roots=(tmp_path / "recon",), **injection)
    assert len(written) == 1
    chosen = choose_spect_series(inv, RunOptions(spect_source="reconstructed"))
    assert len(chosen) == 1 and chosen[0].files[0] == str(written[0])
    out = pydicom.dcmread(str(written[0]))
    assert out.NumberOfFrames == N + OFFSET_ROWS
    assert out.AcquisitionTime.startswith("100000")  # the first-acquired bed's start (bed 1, the upper one)
