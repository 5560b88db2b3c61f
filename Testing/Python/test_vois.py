"""Contours <-> masks: analytic volumes, round trips, orientation, holes, errors, speed."""
from __future__ import annotations

import time

import numpy as np
import pytest
import SimpleITK as sitk
from pydicom.uid import CTImageStorage

from conftest import in_plane_coverage, voxel_centres_mm
from LuDosimetryLib.assumptions import AssumptionWarning
from LuDosimetryLib import vois
from LuDosimetryLib.errors import StructureError
from LuDosimetryLib.io.dicom_common import PatientInfo, StudyInfo, new_uid
from LuDosimetryLib.io.rtstruct import ReferencedSeries, read_rtstruct, write_rtstruct
from LuDosimetryLib.vois import Roi, StructureSet

FLIP_Z = (1, 0, 0, 0, 1, 0, 0, 0, -1)
FLIP_XZ = (-1, 0, 0, 0, 1, 0, 0, 0, -1)


def _reference(size, spacing, centre=(0.0, 0.0, 0.0), direction=None):
    """An image of ``size`` (x, y, z) voxels whose centre is at ``centre`` (LPS mm)."""
    image = sitk.Image(*size, sitk.sitkFloat32)
    image.SetSpacing(spacing)
    if direction is not None:
        image.SetDirection(direction)
    half = (np.asarray(size, dtype=np.float64) - 1) / 2.0
    centre_now = vois.index_to_physical(half[None, :], image)[0] - np.asarray(image.GetOrigin())
    image.SetOrigin(tuple(np.asarray(centre, dtype=np.float64) - centre_now))
    return image


def _write_and_read(tmp_path, masks, reference, name="rs.dcm"):
    study = StudyInfo()
    referenced = ReferencedSeries(study.study_instance_uid, new_uid(), new_uid(), CTImageStorage,
                                  [new_uid() for _ in range(reference.GetSize()[2])])
    path = write_rtstruct(tmp_path / name, masks, reference, referenced, PatientInfo(), study)
    return read_rtstruct(path)


def _dice(a, b):
    a, b = np.asarray(a) > 0.5, np.asarray(b) > 0.5
    return 2.0 * np.sum(a & b) / (np.sum(a) + np.sum(b))


def _blob(points, centre=(5.0, -8.0, 3.0)):
    """An irregular organ of about 150 mL: superellipsoid (exponent 3, semi-axes 40 x 30 x 24 mm) with a
    bump and a notch cut into one end."""
    d = points - np.asarray(centre)
    base = np.abs(d[:, 0] / 40.0) ** 3 + np.abs(d[:, 1] / 30.0) ** 3 + np.abs(d[:, 2] / 24.0) ** 3 <= 1.0
    bump = np.linalg.norm(d - np.array([32.0, 22.0, 0.0]), axis=1) < 12.0
    notch = (d[:, 0] < -15.0) & (np.abs(d[:, 1]) < 8.0)
    return (base | bump) & ~notch


# ------------------------------------------------------------------------------------------ analytic volumes

def test_analytic_disk_sphere_ring(tmp_path):
    reference = _reference((64, 64, 40), (2.5, 2.5, 2.5), centre=(3.0, -2.0, 10.0))
    c = np.array([3.0, -2.0, 10.0])

    def sphere(p):
        return np.linalg.norm(p - c, axis=1) <= 40.0

    def disk(p):  # cylinder r = 30 mm, 20 mm long (8 slices of 2.5 mm): slices with |z - c| < 10
        return (np.hypot(p[:, 0] - c[0], p[:, 1] - c[1]) <= 30.0) & (np.abs(p[:, 2] - c[2]) < 10.0)

    def ring(p):  # annulus 15..35 mm, same extent
        r = np.hypot(p[:, 0] - c[0], p[:, 1] - c[1])
        return (r <= 35.0) & (r >= 15.0) & (np.abs(p[:, 2] - c[2]) < 10.0)

    masks = {name: in_plane_coverage(f, reference) for name, f in (("sphere", sphere), ("disk", disk), ("ring", ring))}
    ss = _write_and_read(tmp_path, masks, reference)
    assert len(ss.roi("ring").contours) == 2 * len(ss.roi("disk").contours)  # outer + hole per slice
    expected = {"sphere": 4.0 / 3.0 * np.pi * 40.0 ** 3 / 1000.0,
                "disk": np.pi * 30.0 ** 2 * 20.0 / 1000.0,
                "ring": np.pi * (35.0 ** 2 - 15.0 ** 2) * 20.0 / 1000.0}
    spacing = reference.GetSpacing()
    for supersample, tolerance in ((1, 0.03), (4, 0.02)):
        got = vois.structure_set_masks(ss, reference, supersample=supersample)
        assert list(got) == ["sphere", "disk", "ring"]
        for name, volume in expected.items():
            assert got[name].dtype == np.float32 and got[name].shape == (40, 64, 64)
            assert vois.mask_volume_ml(got[name], spacing) == pytest.approx(volume, rel=tolerance), (name, supersample)
        if supersample > 1:
            assert 0 < np.count_nonzero((got["sphere"] > 0) & (got["sphere"] < 1))
    # The hole is a hole: nothing within 13 mm of the axis.
    centres = voxel_centres_mm(reference)
    axis = np.hypot(centres[..., 0] - c[0], centres[..., 1] - c[1]) < 13.0
    ring_mask = vois.structure_set_masks(ss, reference, supersample=4)["ring"]
    assert np.all(ring_mask[axis] == 0)
    assert np.all(vois.structure_set_masks(ss, reference)["disk"][axis & (np.abs(centres[..., 2] - c[2]) < 10)] == 1)


def test_xor_nested_contours_make_holes():
    reference = _reference((40, 40, 3), (1.0, 1.0, 1.0))

    def square(half, z=0.0):
        return np.array([[-half, -half, z], [half, -half, z], [half, half, z], [-half, half, z]], dtype=np.float64)

    roi = Roi(1, "nested", None, "", [square(15.0), square(8.0), square(3.0)])  # solid, hole, island
    mask = vois.rasterize_roi(roi, reference)
    centres = voxel_centres_mm(reference)[1]
    r = np.max(np.abs(centres[..., :2]), axis=-1)
    assert np.all(mask[1][r < 3] == 1)
    assert np.all(mask[1][(r > 3) & (r < 8)] == 0)
    assert np.all(mask[1][(r > 8) & (r < 15)] == 1)
    assert np.all(mask[1][r > 15] == 0)
    assert mask[0].sum() == 0 and mask[2].sum() == 0


def test_supersampled_fraction_of_half_covered_voxels():
    reference = _reference((10, 10, 1), (2.0, 2.0, 2.0), centre=(0.0, 0.0, 0.0))
    # Voxel edges are at even mm; x in [-1, 2] covers 1.5 voxels, y in [-3, 1] 2 voxels (half, full, half).
    square = np.array([[-1.0, -3.0, 0.0], [2.0, -3.0, 0.0], [2.0, 1.0, 0.0], [-1.0, 1.0, 0.0]])
    mask = vois.rasterize_roi(Roi(1, "sq", None, "", [square]), reference, supersample=4)
    assert mask.sum() * 4.0 == pytest.approx(3.0 * 4.0)  # area 12 mm^2 in 4 mm^2 voxels
    assert set(np.round(np.unique(mask), 6)) == {0.0, 0.25, 0.5, 1.0}


# ------------------------------------------------------------------------------------------ round trips

@pytest.mark.parametrize("direction", [None, FLIP_Z, FLIP_XZ], ids=["identity", "flipped-z", "flipped-xz"])
def test_round_trip_organ_and_lesion(tmp_path, direction):
    reference = _reference((64, 56, 40), (4.8, 4.8, 4.8), centre=(0.0, 0.0, 0.0), direction=direction)
    centres = voxel_centres_mm(reference).reshape(-1, 3)
    shape = (40, 56, 64)
    organ = _blob(centres).reshape(shape)
    # 3 mL sphere: r = 8.95 mm
    lesion_r = (3.0 * 3000.0 / (4.0 * np.pi)) ** (1.0 / 3.0)
    lesion = (np.linalg.norm(centres - np.array([-60.0, 40.0, -20.0]), axis=1) <= lesion_r).reshape(shape)
    lesion_fraction = in_plane_coverage(lambda p: np.linalg.norm(p - np.array([-60.0, 40.0, -20.0]), axis=1) <= lesion_r,
                                reference)
    spacing = reference.GetSpacing()
    assert 140 < vois.mask_volume_ml(organ, spacing) < 170
    ss = _write_and_read(tmp_path, {"organ": organ, "lesion": lesion, "lesion fractional": lesion_fraction}, reference)
    got = vois.structure_set_masks(ss, reference)
    assert _dice(got["organ"], organ) >= 0.97
    assert _dice(got["lesion"], lesion) >= 0.9
    assert _dice(got["lesion fractional"], lesion_fraction) >= 0.9
    # Binary masks come back exactly: the contour runs between voxel centres.
    assert np.array_equal(got["organ"] > 0.5, organ)
    assert np.array_equal(got["lesion"] > 0.5, lesion)


def test_mask_to_contours_geometry():
    reference = _reference((30, 30, 10), (3.0, 3.0, 4.0), direction=FLIP_Z)
    mask = np.zeros((10, 30, 30), bool)
    mask[2:5, 10:20, 5:25] = True
    mask[3, 13:17, 12:18] = False  # a hole on slice 3
    contours = vois.mask_to_contours(mask, reference)
    indexed = vois.mask_slice_contours(mask, reference)
    assert len(contours) == len(indexed) == 4
    assert [k for k, _ in indexed] == [2, 3, 3, 4]
    for k, polygon in indexed:
        index = vois.physical_to_index(polygon, reference)
        assert np.allclose(index[:, 2], k)
        assert not np.allclose(polygon[0], polygon[-1])
    outer = vois.physical_to_index(indexed[0][1], reference)
    assert outer[:, 0].min() == pytest.approx(4.5) and outer[:, 0].max() == pytest.approx(24.5)
    assert outer[:, 1].min() == pytest.approx(9.5) and outer[:, 1].max() == pytest.approx(19.5)
    roi = Roi(1, "box", None, "", contours)
    assert np.array_equal(vois.rasterize_roi(roi, reference) > 0.5, mask)


def test_mask_touching_the_image_edge(tmp_path):
    reference = _reference((20, 20, 6), (4.8, 4.8, 4.8))
    mask = np.zeros((6, 20, 20), bool)
    mask[:, :8, :] = True  # touches x = 0, x = 19, y = 0, z = 0 and z = 5 edges
    ss = _write_and_read(tmp_path, {"edge": mask}, reference)
    assert np.array_equal(vois.structure_set_masks(ss, reference)["edge"] > 0.5, mask)


def test_contour_planes_finer_than_the_image(tmp_path):
    """An RTSTRUCT drawn on a 2.4 mm CT rasterised onto a 4.8 mm SPECT grid: nearest plane per slice."""
    fine = _reference((40, 40, 40), (2.4, 2.4, 2.4))
    coarse = _reference((20, 20, 20), (4.8, 4.8, 4.8))
    centre = np.array([4.0, -6.0, 2.0])
    ss = _write_and_read(tmp_path, {"ball": in_plane_coverage(lambda p: np.linalg.norm(p - centre, axis=1) <= 35.0, fine)},
                         fine)
    analytic = 4.0 / 3.0 * np.pi * 35.0 ** 3 / 1000.0
    mask = vois.structure_set_masks(ss, coarse, supersample=3)["ball"]
    assert vois.mask_volume_ml(mask, coarse.GetSpacing()) == pytest.approx(analytic, rel=0.05)
    truth = in_plane_coverage(lambda p: np.linalg.norm(p - centre, axis=1) <= 35.0, coarse)
    assert _dice(mask, truth) > 0.95


# ------------------------------------------------------------------------------------------ errors

def test_contour_outside_the_image(tmp_path):
    big = _reference((60, 60, 30), (4.8, 4.8, 4.8))
    small = _reference((30, 30, 30), (4.8, 4.8, 4.8))
    centres = voxel_centres_mm(big).reshape(-1, 3)
    inside = (np.linalg.norm(centres, axis=1) < 30).reshape(30, 60, 60)
    straddling = (np.linalg.norm(centres - np.array([70.0, 0.0, 0.0]), axis=1) < 25).reshape(30, 60, 60)
    ss = _write_and_read(tmp_path, {"inner": inside, "spleen": straddling}, big, name="big.dcm")
    assert vois.structure_set_masks(ss, small, names=["inner"])["inner"].sum() == inside.sum()
    with pytest.raises(StructureError, match=r"big.dcm.*'spleen'.*outside the reference image"):
        vois.structure_set_masks(ss, small)
    # Along z as well.
    short = _reference((60, 60, 10), (4.8, 4.8, 4.8))
    with pytest.raises(StructureError, match=r"big.dcm.*'inner'.*outside"):
        vois.structure_set_masks(ss, short, names=["inner"])


def test_frame_of_reference_mismatch(tmp_path):
    reference = _reference((20, 20, 10), (4.8, 4.8, 4.8))
    mask = np.zeros((10, 20, 20), bool)
    mask[3:6, 5:10, 5:10] = True
    ss = _write_and_read(tmp_path, {"box": mask}, reference, name="for.dcm")
    vois.check_frame_of_reference(ss, ss.frame_of_reference_uid)
    vois.check_frame_of_reference(ss, ["1.2.3", ss.frame_of_reference_uid])
    with pytest.raises(StructureError, match="for.dcm.*frame of reference.*matches no image"):
        vois.check_frame_of_reference(ss, "1.2.3.4")
    with pytest.raises(StructureError, match="for.dcm"):
        vois.check_frame_of_reference(ss, [])
    unnamed = StructureSet("x.dcm", "", None, [], "", "", "")
    with pytest.warns(AssumptionWarning, match="x.dcm.*names none"):
        vois.check_frame_of_reference(unnamed, "1.2.3")


def test_contour_not_parallel_to_slices():
    reference = _reference((20, 20, 20), (2.0, 2.0, 2.0))
    tilted = np.array([[0.0, -10.0, -10.0], [0.0, 10.0, 10.0], [5.0, 10.0, 10.0], [5.0, -10.0, -10.0]])
    with pytest.raises(StructureError, match="rs.dcm.*'tilted'.*not parallel"):
        vois.rasterize_roi(Roi(1, "tilted", None, "", [tilted]), reference, source="rs.dcm")


def test_duplicate_names_are_suffixed_and_missing_names_refused():
    reference = _reference((20, 20, 5), (2.0, 2.0, 2.0))

    def square(half):
        return np.array([[-half, -half, 0.0], [half, -half, 0.0], [half, half, 0.0], [-half, half, 0.0]])

    ss = StructureSet("dup.dcm", "1.2", None, [Roi(1, "kidney", None, "", [square(5.0)]),
                                                Roi(2, "kidney", None, "", [square(9.0)]),
                                                Roi(3, "empty", None, "", [])], "", "", "")
    with pytest.warns(UserWarning, match="dup.dcm.*'kidney'.*'kidney \\(2\\)'"):
        masks = vois.structure_set_masks(ss, reference)
    assert list(masks) == ["kidney", "kidney (2)", "empty"]
    assert masks["kidney"].sum() < masks["kidney (2)"].sum()
    assert masks["empty"].sum() == 0 and masks["empty"].shape == (5, 20, 20)
    with pytest.raises(StructureError, match="dup.dcm.*'liver'.*available.*'kidney \\(2\\)'"), \
            pytest.warns(UserWarning, match="more than once"):
        vois.structure_set_masks(ss, reference, names=["liver"])
    with pytest.raises(ValueError):
        vois.rasterize_roi(ss.rois[0], reference, supersample=0)


def test_mask_volume_ml():
    assert vois.mask_volume_ml(np.ones((10, 10, 10), bool), (2.0, 2.0, 2.5)) == pytest.approx(10.0)
    assert vois.mask_volume_ml(np.full((2, 2, 2), 0.5, np.float32), (10.0, 10.0, 10.0)) == pytest.approx(4.0)


# ------------------------------------------------------------------------------------------ speed

def test_liver_rasterisation_is_fast():
    """A liver-like ROI (80 contours of 150 points) onto 256 x 256 x 150 in well under a second."""
    reference = _reference((256, 256, 150), (1.6, 1.6, 2.5), centre=(0.0, 0.0, 0.0))
    angles = np.linspace(0.0, 2.0 * np.pi, 150, endpoint=False)
    contours = []
    for n in range(80):
        z = -100.0 + 2.5 * n
        scale = np.sin(np.pi * (n + 0.5) / 80.0) ** 0.5
        radius = scale * (90.0 + 15.0 * np.sin(3 * angles) + 5.0 * np.cos(7 * angles))
        contours.append(np.column_stack([radius * np.cos(angles) * 1.2 + 20.0, radius * np.sin(angles) * 0.8,
                                         np.full(angles.size, z)]))
    roi = Roi(1, "liver", None, "ORGAN", contours)
    vois.rasterize_roi(roi, reference)  # warm-up (imports)
    start = time.perf_counter()
    mask = vois.rasterize_roi(roi, reference)
    elapsed = time.perf_counter() - start
    volume = vois.mask_volume_ml(mask, reference.GetSpacing())
    assert 1500 < volume < 4000
    assert np.count_nonzero(mask.reshape(150, -1).any(axis=1)) == 80
    print(f"liver: 80 contours onto 256x256x150 in {elapsed * 1000:.0f} ms ({volume:.0f} mL)")
    assert elapsed < 1.0
    start = time.perf_counter()
    fractional = vois.rasterize_roi(roi, reference, supersample=4)
    print(f"liver supersample=4: {(time.perf_counter() - start) * 1000:.0f} ms")
    assert vois.mask_volume_ml(fractional, reference.GetSpacing()) == pytest.approx(volume, rel=0.01)


def test_scanline_fill_agrees_with_matplotlib():
    """Centre-in-polygon of self-overlapping-free random star polygons, two per slice (XOR), vs matplotlib."""
    from matplotlib.path import Path

    rng = np.random.default_rng(7)
    reference = _reference((60, 50, 4), (1.3, 1.7, 3.0))
    centres = voxel_centres_mm(reference)
    for z in range(4):
        contours, truth = [], np.zeros((50, 60), bool)
        for centre, scale in (((-8.0, 5.0), 28.0), ((-4.0, 2.0), 12.0)):
            angles = np.sort(rng.uniform(0, 2 * np.pi, 40))
            radius = scale * rng.uniform(0.5, 1.0, 40)
            polygon = np.column_stack([centre[0] + radius * np.cos(angles), centre[1] + radius * np.sin(angles),
                                       np.full(40, centres[z, 0, 0, 2])])
            contours.append(polygon)
            truth ^= Path(polygon[:, :2]).contains_points(centres[z, ..., :2].reshape(-1, 2)).reshape(50, 60)
        mask = vois.rasterize_roi(Roi(1, "star", None, "", contours), reference)
        assert np.array_equal(mask[z] > 0.5, truth)
        assert truth.sum() > 100 and mask.sum() == truth.sum()
