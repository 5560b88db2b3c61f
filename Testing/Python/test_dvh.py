"""DVH statistics and cumulative DVHs against analytic dose distributions."""
from __future__ import annotations

import csv
import warnings

import numpy as np
import pytest

from LuDosimetryLib.dvh import (
    DVHWarning,
    cumulative_dvh,
    dose_at_volume_percent,
    dose_statistics,
    dvh_table,
    plot_dvh,
    write_dvh_csv,
)
from LuDosimetryLib.errors import LuDosimetryError, OutputError, StructureError


def ramp(n: int = 10000, max_gy: float = 10.0) -> np.ndarray:
    """Dose uniformly distributed over [0, max]: voxel i gets (i + 0.5) / n * max, shaped (z, y, x)."""
    return ((np.arange(n) + 0.5) / n * max_gy).reshape(10, 10, n // 100)


def test_uniform_dose_gives_a_step():
    dose = np.full((4, 5, 6), 3.0)
    mask = np.ones(dose.shape, bool)
    stats = dose_statistics(dose, mask, 0.1)
    assert stats["volume_ml"] == pytest.approx(12.0)
    for key in ("mean_dose_gy", "min_dose_gy", "max_dose_gy", "d2_gy", "d50_gy", "d95_gy", "d98_gy"):
        assert stats[key] == pytest.approx(3.0), key
    edges, volume = cumulative_dvh(dose, mask, 0.1, bin_width_gy=0.5)
    np.testing.assert_allclose(edges, np.arange(8) * 0.5)
    # 12 mL at least up to 3 Gy, nothing beyond
    np.testing.assert_allclose(volume, [12, 12, 12, 12, 12, 12, 12, 0][: len(edges)])
    assert volume[edges <= 3.0].min() == pytest.approx(12.0)
    assert volume[edges > 3.0].max() == 0.0


def test_linear_ramp_dx_is_analytic():
    dose = ramp(10000, 10.0)
    mask = np.ones(dose.shape, bool)
    stats = dose_statistics(dose, mask, 0.001)
    # For a dose uniform on [0, 10] Gy, V(D) = 1 - D/10, so Dx = 10 * (1 - x/100).
    assert stats["d50_gy"] == pytest.approx(5.0, abs=1e-9)
    assert stats["d2_gy"] == pytest.approx(9.8, abs=1e-9)
    assert stats["d98_gy"] == pytest.approx(0.2, abs=1e-9)
    assert stats["d95_gy"] == pytest.approx(0.5, abs=1e-9)
    assert stats["mean_dose_gy"] == pytest.approx(5.0, abs=1e-9)
    assert stats["min_dose_gy"] == pytest.approx(0.0005)
    assert stats["max_dose_gy"] == pytest.approx(9.9995)
    assert stats["volume_ml"] == pytest.approx(10.0)
    assert stats["v_gy"][2.0] == pytest.approx(8.0, abs=1e-3)
    assert stats["v_gy"][23.0] == 0.0


def test_dx_ordering_and_order_independence():
    rng = np.random.default_rng(1)
    dose = rng.gamma(2.0, 2.0, size=(8, 9, 10))
    mask = rng.random(dose.shape) > 0.3
    stats = dose_statistics(dose, mask, 0.05)
    assert stats["min_dose_gy"] <= stats["d98_gy"] <= stats["d95_gy"] <= stats["d50_gy"] <= stats["d2_gy"] \
        <= stats["max_dose_gy"]
    # The answer depends on the voxel values, not their positions.
    perm = rng.permutation(dose.size)
    shuffled = dose_statistics(dose.ravel()[perm].reshape(dose.shape), mask.ravel()[perm].reshape(dose.shape), 0.05)
    for key in ("mean_dose_gy", "d2_gy", "d50_gy", "d98_gy"):
        assert shuffled[key] == pytest.approx(stats[key])


def test_fractional_weights_equal_replicated_voxels():
    # A voxel with weight 0.5 counts like half a voxel: compare with integer replication.
    dose = np.array([[[1.0, 2.0, 3.0, 4.0]]])
    weights = np.array([[[1.0, 0.5, 0.25, 0.0]]])
    stats = dose_statistics(dose, weights, 2.0)
    assert stats["volume_ml"] == pytest.approx(2.0 * 1.75)
    assert stats["mean_dose_gy"] == pytest.approx((1 * 1 + 2 * 0.5 + 3 * 0.25) / 1.75)
    assert stats["max_dose_gy"] == 3.0  # the weight-0 voxel is outside
    replicated = np.array([1.0] * 4 + [2.0] * 2 + [3.0]).reshape(1, 1, 7)
    ref = dose_statistics(replicated, np.ones(replicated.shape, bool), 0.5)
    for key in ("volume_ml", "mean_dose_gy", "d2_gy", "d50_gy", "d98_gy"):
        assert stats[key] == pytest.approx(ref[key]), key
    edges, volume = cumulative_dvh(dose, weights, 2.0, bin_width_gy=1.0)
    np.testing.assert_allclose(edges, [0, 1, 2, 3, 4])
    np.testing.assert_allclose(volume, [3.5, 3.5, 1.5, 0.5, 0.0])  # mL with dose >= 0, 1, 2, 3, 4 Gy


def test_fractional_ramp_half_weight_keeps_dx():
    dose = ramp(10000, 10.0)
    stats = dose_statistics(dose, np.full(dose.shape, 0.5), 0.001)
    assert stats["volume_ml"] == pytest.approx(5.0)
    assert stats["d50_gy"] == pytest.approx(5.0, abs=1e-9)
    assert stats["d2_gy"] == pytest.approx(9.8, abs=1e-9)


def test_mass_weighted_mean():
    dose = np.array([[[1.0, 3.0]]])
    mask = np.ones(dose.shape, bool)
    density = np.array([[[1.0, 3.0]]])  # g/mL
    stats = dose_statistics(dose, mask, 1.0, mass_weights=density)
    assert stats["mean_dose_gy"] == pytest.approx((1 * 1 + 3 * 3) / 4)
    assert stats["mass_g"] == pytest.approx(4.0)
    assert dose_statistics(dose, mask, 1.0)["mean_dose_gy"] == pytest.approx(2.0)
    with pytest.raises(StructureError, match="mass density"):
        dose_statistics(dose, mask, 1.0, mass_weights=np.zeros(dose.shape))


def test_dose_at_volume_percent_edges():
    dose, vol = np.array([1.0, 2.0]), np.array([1.0, 1.0])
    assert dose_at_volume_percent(dose, vol, 100) == 1.0
    assert dose_at_volume_percent(dose, vol, 0) == 2.0
    assert dose_at_volume_percent(dose, vol, 50) == pytest.approx(1.5)
    with pytest.raises(ValueError):
        dose_at_volume_percent(dose, vol, 101)


def test_cumulative_dvh_of_ramp_and_default_bins():
    dose = ramp(10000, 10.0)
    mask = np.ones(dose.shape, bool)
    edges, volume = cumulative_dvh(dose, mask, 0.001)
    width = edges[1] - edges[0]
    assert width == pytest.approx(0.005)  # 1-2-5 step at most max/1000
    assert volume[0] == pytest.approx(10.0)
    assert volume[-1] == 0.0
    assert np.all(np.diff(volume) <= 0)
    # V(D) = 10 mL * (1 - D / 10 Gy) at the edges, within one voxel
    np.testing.assert_allclose(volume, np.clip(10.0 * (1 - edges / 10.0), 0, None), atol=0.0011)
    # A shared axis: max_dose_gy fixes the last edge.
    edges2, volume2 = cumulative_dvh(dose, mask, 0.001, bin_width_gy=0.5, max_dose_gy=20.0)
    assert edges2[-1] == pytest.approx(20.0) and volume2[-1] == 0.0 and len(edges2) == 41


def test_dvh_table_csv_and_plot(tmp_path):
    dose = ramp(1000, 4.0)
    dvhs = {"liver": cumulative_dvh(dose, np.ones(dose.shape, bool), 0.1, bin_width_gy=1.0),
            "kidney L": cumulative_dvh(np.full((2, 2, 2), 2.5), np.ones((2, 2, 2), bool), 0.1, bin_width_gy=1.0)}
    rows = dvh_table(dvhs)
    assert rows[0] == {"voi": "liver", "dose_gy": 0.0, "volume_ml": pytest.approx(100.0), "volume_percent": 100.0}
    kidney = [r for r in rows if r["voi"] == "kidney L"]
    assert [r["volume_percent"] for r in kidney] == pytest.approx([100.0, 100.0, 100.0, 0.0])
    path = write_dvh_csv(tmp_path / "out" / "dvh.csv", dvhs)
    with open(path, newline="") as handle:
        read = list(csv.DictReader(handle))
    assert list(read[0]) == ["voi", "dose_gy", "volume_ml", "volume_percent"]
    assert len(read) == len(rows)
    assert float(read[2]["volume_percent"]) == pytest.approx(rows[2]["volume_percent"], rel=1e-5)
    png = plot_dvh(tmp_path / "dvh.png", dvhs, title="Test")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".tmp_")] == []
    svg = plot_dvh(tmp_path / "dvh.svg", dvhs).read_text()
    assert "Absorbed dose (Gy)" in svg and "Volume (%)" in svg and "kidney L" in svg


def test_write_into_unwritable_place_is_a_clear_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(OutputError, match="DVH table"):
        write_dvh_csv(blocker / "dvh.csv", {"a": (np.array([0.0]), np.array([1.0]))})


@pytest.mark.parametrize("weights, message", [
    (np.zeros((2, 2, 2), bool), "empty"),
    (np.zeros((2, 2, 2)), "empty"),
    (np.ones((2, 2, 3), bool), "shape"),
    (np.full((2, 2, 2), 1.5), r"\[0, 1\]"),
    (np.full((2, 2, 2), np.nan), r"\[0, 1\]"),
])
def test_bad_masks(weights, message):
    with pytest.raises(StructureError, match=message):
        dose_statistics(np.ones((2, 2, 2)), weights, 1.0, name="liver")
    with pytest.raises(LuDosimetryError, match="ROI 'liver'"):
        cumulative_dvh(np.ones((2, 2, 2)), weights, 1.0, name="liver")


def test_bad_dose_and_voxel_volume():
    mask = np.ones((2, 2, 2), bool)
    with pytest.raises(StructureError, match="non-finite"):
        dose_statistics(np.full((2, 2, 2), np.nan), mask, 1.0)
    with pytest.raises(StructureError, match="voxel volume"):
        dose_statistics(np.ones((2, 2, 2)), mask, 0.0)
    with pytest.raises(ValueError, match="bin_width_gy"):
        cumulative_dvh(np.ones((2, 2, 2)), mask, 1.0, bin_width_gy=0)


def test_inputs_are_not_modified():
    dose = ramp(1000, 4.0)
    weights = np.full(dose.shape, 0.5)
    d0, w0 = dose.copy(), weights.copy()
    dose_statistics(dose, weights, 0.1)
    cumulative_dvh(dose, weights, 0.1)
    np.testing.assert_array_equal(dose, d0)
    np.testing.assert_array_equal(weights, w0)


def test_dvh_warning_is_a_user_warning():
    assert issubclass(DVHWarning, UserWarning)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(DVHWarning):
            warnings.warn("x", DVHWarning)


# --------------------------------------------------------------------------------------------- from files

def _files(tmp_path, dose_for_uid=None):
    """An RT Dose (ramp along x) on a sub-grid of a 'CT' grid, and an RTSTRUCT drawn on the CT grid."""
    import SimpleITK as sitk

    from LuDosimetryLib.io.dicom_common import PatientInfo, StudyInfo, new_uid
    from LuDosimetryLib.io.rtdose import write_rtdose
    from LuDosimetryLib.io.rtstruct import ReferencedSeries, write_rtstruct

    for_uid = "1.2.826.0.1.3680043.8.498.777"
    patient, study = PatientInfo(patient_id="P"), StudyInfo()
    ct = sitk.Image([40, 30, 12], sitk.sitkFloat32)
    ct.SetSpacing((2.0, 2.0, 4.0))
    ct.SetOrigin((-40.0, -30.0, -20.0))
    # Dose grid: CT voxels x 5..34, y 3..26, z 2..9 (same spacing, aligned centres); flipped z on purpose.
    nx, ny, nz = 30, 24, 8
    x = np.arange(nx)
    dose_array = np.broadcast_to((x * 0.5 + 0.25)[None, None, :], (nz, ny, nx)).astype(np.float32)
    dose = sitk.GetImageFromArray(np.ascontiguousarray(dose_array))
    dose.SetSpacing((2.0, 2.0, 4.0))
    dose.SetDirection((1, 0, 0, 0, 1, 0, 0, 0, -1))
    dose.SetOrigin(ct.TransformIndexToPhysicalPoint((5, 3, 9)))
    dose_path = write_rtdose(tmp_path / "dose.dcm", dose, patient, study,
                             frame_of_reference_uid=dose_for_uid or for_uid)
    masks = {name: np.zeros((12, 30, 40), bool) for name in ("box", "big", "away")}
    masks["box"][4:8, 10:20, 10:20] = True      # inside the dose grid: x index 10..19 -> dose idx 5..14
    masks["big"][3:10, 5:25, 0:40] = True       # wider than the dose grid in x
    masks["away"][0:2, 2:6, 2:6] = True         # outside the dose grid (z slices 0, 1)
    referenced = ReferencedSeries(study.study_instance_uid, new_uid(), for_uid, "1.2.840.10008.5.1.4.1.1.2",
                                  [new_uid() for _ in range(12)])
    rs_path = write_rtstruct(tmp_path / "rs.dcm", masks, ct, referenced, patient, study)
    return dose_path, rs_path


def test_dvh_from_files_clips_and_skips_with_warnings(tmp_path):
    from LuDosimetryLib.dvh import dvh_from_files

    dose_path, rs_path = _files(tmp_path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        stats, dvhs = dvh_from_files(dose_path, rs_path)
    messages = [str(w.message) for w in caught if issubclass(w.category, DVHWarning)]
    assert any("'big' extends beyond the dose grid" in m for m in messages), messages
    assert any("'away'" in m and "skipped" in m for m in messages), messages
    assert set(stats) == {"box", "big"} and set(dvhs) == {"box", "big"}
    box = stats["box"]
    # dose idx 5..14 along x: 0.5 * i + 0.25 Gy -> mean 5.0 Gy, 10x10x4 voxels of 16 uL
    assert box["volume_ml"] == pytest.approx(400 * 0.016)
    assert box["mean_dose_gy"] == pytest.approx(5.0, abs=1e-6)
    assert box["min_dose_gy"] == pytest.approx(2.75, abs=1e-6)
    assert box["max_dose_gy"] == pytest.approx(7.25, abs=1e-6)
    assert box["d50_gy"] == pytest.approx(5.0, abs=1e-6)
    big = stats["big"]
    # clipped to the dose grid: x 0..29 of the dose, y 5..24 of the CT -> 2..21 of the dose, 7 slices
    assert big["volume_ml"] == pytest.approx(30 * 20 * 7 * 0.016)
    assert big["mean_dose_gy"] == pytest.approx(7.5, abs=1e-6)
    edges_box, vol_box = dvhs["box"]
    edges_big, _ = dvhs["big"]
    np.testing.assert_array_equal(edges_box, edges_big)  # shared dose axis
    assert vol_box[0] == pytest.approx(box["volume_ml"]) and vol_box[-1] == 0.0


def test_dvh_from_files_refuses_another_frame_of_reference(tmp_path):
    from LuDosimetryLib.dvh import dvh_from_files

    dose_path, rs_path = _files(tmp_path, dose_for_uid="1.2.3.4.5")
    with pytest.raises(StructureError, match="frame of reference"):
        dvh_from_files(dose_path, rs_path)


def test_dvh_from_files_names(tmp_path):
    from LuDosimetryLib.dvh import dvh_from_files

    dose_path, rs_path = _files(tmp_path)
    stats, _ = dvh_from_files(dose_path, rs_path, names=["box"])
    assert list(stats) == ["box"]
    with pytest.raises(StructureError, match="no ROI named 'liver'"):
        dvh_from_files(dose_path, rs_path, names=["liver"])


def test_dvh_from_files_supersampled_masks(tmp_path):
    from LuDosimetryLib.dvh import dvh_from_files

    dose_path, rs_path = _files(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DVHWarning)
        stats, _ = dvh_from_files(dose_path, rs_path, supersample=4, names=["box"])
    # traced contours run along voxel edges with cut corners: fractional volume a little under 400 voxels
    assert 0.97 * 6.4 < stats["box"]["volume_ml"] <= 6.4 + 1e-9
    assert stats["box"]["mean_dose_gy"] == pytest.approx(5.0, rel=0.01)
