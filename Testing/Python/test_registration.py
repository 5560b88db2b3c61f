"""Registration of time points (registration.py) on a synthetic case with a known motion.

The case comes from ``benchmarks/registration.py`` (phantom anatomy seen through a rigid motion of 10 mm
and a 3 mm smooth deformation), on a coarse 7.2 mm grid with two time points to stay fast.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from LuDosimetryLib.errors import OutputError, StructureError, StudyError
from LuDosimetryLib.registration import (Registration, dice, propagate_masks, register_time_points,
                                         total_activity_bq)

_BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "registration.py"
ORGANS = ("Liver", "Kidney_L", "Kidney_R", "Spleen")


def _bench():
    spec = importlib.util.spec_from_file_location("bench_registration", _BENCH)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def case():
    bench = _bench()
    points, motions = bench.make_motion_case(fast=True, hours=(3.74, 103.09), seed=3)
    fixed, moving = points
    masks = {v: fixed["masks"][v] for v in ORGANS}
    reg = register_time_points(fixed["ct"], moving["ct"], spect_fixed=fixed["spect"], spect_moving=moving["spect"],
                               masks_fixed=masks)
    return bench, fixed, moving, motions[1], masks, reg


def test_target_registration_error_and_dice(case):
    bench, fixed, moving, motion, masks, reg = case
    prop = propagate_masks(masks, fixed["spect"], reg, moving["spect"])
    for v in ORGANS:
        c = bench.centroid_mm(masks[v], fixed["spect"])
        truth = motion.fixed_to_moving(c)
        unregistered = np.linalg.norm(truth - c)
        tre = np.linalg.norm(np.array(reg.map_point(c, voi=v)) - truth)
        assert unregistered > 4.0, v  # the motion is really there
        assert tre < 4.8, (v, tre)
        assert dice(prop[v], moving["masks"][v]) >= 0.85, v
        # without registration the overlap is clearly worse
        assert dice(masks[v], moving["masks"][v]) < dice(prop[v], moving["masks"][v])
    assert reg.metrics["displacement_max_mm"] > 0
    assert set(reg.per_voi_transforms) <= set(ORGANS)


def test_apply_to_image_and_activity(case):
    _bench_mod, fixed, moving, _motion, masks, reg = case
    moved = reg.apply_to_image(moving["spect"], fixed["spect"])
    assert moved.GetSize() == fixed["spect"].GetSize() and moved.GetOrigin() == fixed["spect"].GetOrigin()
    jac = reg.apply_to_image(moving["spect"], fixed["spect"], jacobian=True)
    region = np.any([masks[v] for v in ORGANS], axis=0)
    from scipy.ndimage import binary_dilation
    region = binary_dilation(region, iterations=3)
    native = total_activity_bq(moving["spect"], propagate_masks({"r": region}, fixed["spect"], reg,
                                                                moving["spect"], per_voi=False)["r"])
    assert total_activity_bq(jac, region) == pytest.approx(native, rel=0.03)
    assert total_activity_bq(moved, region) == pytest.approx(native, rel=0.08)


def test_save_load_round_trip(case, tmp_path):
    _b, fixed, _m, _mo, masks, reg = case
    out = reg.save(tmp_path / "reg")
    assert (out / "rigid.tfm").is_file() and (out / "displacement.nrrd").is_file()
    back = Registration.load(out)
    for v in list(reg.voi_corrections) + [None]:
        p = (-60.0, 20.0, 40.0)
        np.testing.assert_allclose(back.map_point(p, voi=v), reg.map_point(p, voi=v), atol=1e-3)
    with pytest.raises(OutputError, match="already holds a registration"):
        reg.save(out)
    reg.save(out, overwrite=True)
    with pytest.raises(StudyError, match="not a saved registration"):
        Registration.load(tmp_path)


def test_rigid_only_recovers_a_translation():
    img = sitk.GetImageFromArray(np.zeros((30, 40, 40), dtype=np.float32))
    img.SetSpacing((4.0, 4.0, 4.0))
    arr = np.full((30, 40, 40), -1000.0, dtype=np.float32)
    zz, yy, xx = np.mgrid[:30, :40, :40]
    body = ((xx - 20) / 15.0) ** 2 + ((yy - 20) / 12.0) ** 2 <= 1
    arr[body] = 40.0
    organ = ((xx - 14) / 5.0) ** 2 + ((yy - 18) / 4.0) ** 2 + ((zz - 15) / 6.0) ** 2 <= 1
    arr[organ] = 300.0
    bone = ((xx - 24) / 3.0) ** 2 + ((yy - 24) / 3.0) ** 2 + ((zz - 10) / 4.0) ** 2 <= 1
    arr[bone] = 500.0
    fixed = sitk.GetImageFromArray(arr)
    fixed.SetSpacing((4.0, 4.0, 4.0))
    shift = sitk.TranslationTransform(3, (6.0, -4.0, 5.0))  # fixed point → moving point
    # moving(y) = fixed(y − shift): resample the fixed image with the inverse map
    moving = sitk.Resample(fixed, fixed, shift.GetInverse(), sitk.sitkLinear, -1000.0)
    reg = register_time_points(fixed, moving, deformable=False, metric="mean_squares", working_spacing_mm=4.0)
    np.testing.assert_allclose(reg.map_point((60.0, 70.0, 60.0)), (66.0, 66.0, 65.0), atol=1.5)
    assert reg.displacement is None and not reg.voi_corrections
    assert reg.metrics["rigid_shrink_levels"] == [4, 2, 1]  # a small grid ends at full resolution


def _ellipsoid_ct(shape_zyx, spacing_mm: float) -> sitk.Image:
    """Body ellipse (40 HU) with an organ (300 HU) and a bone (500 HU) in air, scaled to ``shape_zyx``."""
    nz, ny, nx = shape_zyx
    zz, yy, xx = np.mgrid[:nz, :ny, :nx] / np.array([nz, ny, nx], dtype=float).reshape(3, 1, 1, 1)
    arr = np.full(shape_zyx, -1000.0, dtype=np.float32)
    arr[((xx - 0.5) / 0.38) ** 2 + ((yy - 0.5) / 0.3) ** 2 <= 1] = 40.0
    arr[((xx - 0.35) / 0.12) ** 2 + ((yy - 0.45) / 0.1) ** 2 + ((zz - 0.5) / 0.2) ** 2 <= 1] = 300.0
    arr[((xx - 0.6) / 0.08) ** 2 + ((yy - 0.6) / 0.08) ** 2 + ((zz - 0.33) / 0.13) ** 2 <= 1] = 500.0
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing((spacing_mm,) * 3)
    return img


def test_rigid_on_a_large_working_grid_recovers_a_translation():
    """A working grid above 2·10⁵ voxels ends at twice its spacing (no full-resolution level, which
    small grids get): the shift is still found to well under a voxel, with mutual information."""
    fixed = _ellipsoid_ct((56, 64, 64), 4.0)
    shift = sitk.TranslationTransform(3, (5.0, -3.0, 6.0))
    moving = sitk.Resample(fixed, fixed, shift.GetInverse(), sitk.sitkLinear, -1000.0)
    reg = register_time_points(fixed, moving, deformable=False, working_spacing_mm=4.0)
    np.testing.assert_allclose(reg.map_point((128.0, 128.0, 112.0)), (133.0, 125.0, 118.0), atol=1.5)
    assert reg.metrics["rigid_shrink_levels"] == [4, 2]


def test_inverse_field_follows_a_replaced_displacement():
    """The inverted displacement field is computed once and shared by every VOI's inverse map, and
    recomputed when the displacement is replaced."""
    def field(shift_mm):
        arr = np.zeros((12, 12, 12, 3))
        arr[..., 0] = shift_mm
        img = sitk.GetImageFromArray(arr, isVector=True)
        img.SetSpacing((4.0, 4.0, 4.0))
        return img

    corr = sitk.Euler3DTransform()
    corr.SetTranslation((0.0, 1.0, 0.0))
    reg = Registration(rigid=sitk.Euler3DTransform(), displacement=field(2.0), voi_corrections={"a": corr})
    p = (20.0, 20.0, 20.0)
    np.testing.assert_allclose(reg.inverse_for(None).TransformPoint(p), (18.0, 20.0, 20.0), atol=0.05)
    np.testing.assert_allclose(reg.inverse_for("a").TransformPoint(p), (18.0, 19.0, 20.0), atol=0.05)
    reg.displacement = field(-3.0)
    np.testing.assert_allclose(reg.inverse_for(None).TransformPoint(p), (23.0, 20.0, 20.0), atol=0.05)
    np.testing.assert_allclose(reg.inverse_for("a").TransformPoint(reg.map_point(p, voi="a")), p, atol=0.05)


def test_bad_input(case):
    _b, fixed, moving, _m, masks, reg = case
    flat = sitk.Image(10, 10, sitk.sitkFloat32)
    with pytest.raises(StudyError, match="reference CT must be a 3D"):
        register_time_points(flat, moving["ct"])
    with pytest.raises(StudyError, match="needs both spect_fixed and spect_moving"):
        register_time_points(fixed["ct"], moving["ct"], masks_fixed=masks)
    with pytest.raises(StructureError, match="ROI 'Liver': mask shape"):
        register_time_points(fixed["ct"], moving["ct"], spect_fixed=fixed["spect"], spect_moving=moving["spect"],
                             masks_fixed={"Liver": np.ones((2, 2, 2))})
    with pytest.raises(StudyError, match="unknown registration metric"):
        register_time_points(fixed["ct"], moving["ct"], metric="joint_entropy", deformable=False)
    with pytest.raises(StructureError, match="mode must be"):
        propagate_masks(masks, fixed["spect"], reg, moving["spect"], mode="cubic")
    with pytest.raises(StructureError, match="ROI 'x': mask shape"):
        propagate_masks({"x": np.ones((2, 2, 2))}, fixed["spect"], reg, moving["spect"])
