"""MRML bridge (LuDosimetryLib.mrml) against real MRML classes from the PyPI ``slicer-core`` package.

Geometry round trips exactly (image → volume node → image; IJK→RAS is the LPS matrix with x and y
flipped), segment masks round trip (same grid exactly, other grids by nearest neighbour, cropped
labelmap extents), RTSTRUCT names and colours reach the segments, the results table equals
results.json, DVH/TAC charts hold the library's curves, nodes sit under patient/study in the subject
hierarchy, the .mrb bundle is a zip with a .mrml that reads back, and edited VOIs go out as a new
RTSTRUCT without touching the original.
"""
from __future__ import annotations

import json
import math
import zipfile
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

slicer = pytest.importorskip("slicer")
if not hasattr(slicer, "vtkMRMLScene"):  # pragma: no cover - a different 'slicer' package
    pytest.skip("the installed 'slicer' package has no MRML (install slicer-core)", allow_module_level=True)

from LuDosimetryLib import mrml  # noqa: E402
from LuDosimetryLib.errors import LuDosimetryError, OutputError, StructureError  # noqa: E402


@pytest.fixture(scope="module")
def scene():
    s = mrml.create_scene()
    yield s
    mrml.release_scene(s)


def _oblique_image(shape=(6, 7, 9), seed=1) -> sitk.Image:
    rng = np.random.default_rng(seed)
    img = sitk.GetImageFromArray(rng.random(shape).astype(np.float32) * 1e5)
    img.SetSpacing((1.5, 2.25, 3.75))
    img.SetOrigin((12.5, -40.0, 310.25))
    img.SetDirection(sitk.VersorTransform((0.2, 0.5, 1.0), 0.4).GetMatrix())
    return img


def _vtk_matrix(m) -> np.ndarray:
    return np.array([[m.GetElement(r, c) for c in range(4)] for r in range(4)])


# --------------------------------------------------------------------------------------------- volumes

def test_volume_geometry_round_trips_exactly(scene):
    import vtk

    img = _oblique_image()
    node = mrml.add_volume(scene, img, "oblique SPECT (Bq per mL)")
    assert node.IsA("vtkMRMLScalarVolumeNode")
    back = mrml.image_from_volume_node(node)
    assert back.GetOrigin() == img.GetOrigin()
    assert back.GetSpacing() == img.GetSpacing()
    assert back.GetDirection() == img.GetDirection()
    assert np.array_equal(sitk.GetArrayFromImage(back), sitk.GetArrayFromImage(img))

    m = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(m)
    ijk_to_ras = _vtk_matrix(m)
    np.testing.assert_allclose(ijk_to_ras, mrml.ijk_to_ras_matrix(img), atol=1e-12)
    # Any voxel: RAS from the node = LPS from SimpleITK with x and y negated.
    for index in [(0, 0, 0), (8, 6, 5), (3, 1, 4)]:
        lps = np.array(img.TransformIndexToPhysicalPoint(index))
        ras = ijk_to_ras @ np.array([*index, 1.0])
        np.testing.assert_allclose(ras[:3], lps * np.array([-1, -1, 1]), atol=1e-9)


def test_axial_volume_origin_is_flipped_in_x_and_y(scene):
    img = sitk.Image(4, 3, 2, sitk.sitkFloat32)
    img.SetOrigin((-100.0, -50.0, 20.0))
    img.SetSpacing((4.0, 4.0, 5.0))
    node = mrml.add_volume(scene, img, "axial")
    assert node.GetOrigin() == (100.0, 50.0, 20.0)
    assert node.GetSpacing() == (4.0, 4.0, 5.0)
    dirs = [[0.0] * 3 for _ in range(3)]
    node.GetIJKToRASDirections(dirs)
    assert dirs == [[-1.0, 0.0, 0.0], [0.0, -1.0, 0.0], [0.0, 0.0, 1.0]]


def test_a_vector_image_is_refused(scene):
    with pytest.raises(LuDosimetryError, match="vector: a 3D scalar image"):
        mrml.add_volume(scene, sitk.Image([3, 3, 3], sitk.sitkVectorFloat32, 3), "vector")


# ------------------------------------------------------------------------------------------ segments

def _masks(shape):
    z, y, x = np.indices(shape)
    ball = (z - 3) ** 2 + (y - 3) ** 2 + (x - 4) ** 2 <= 6
    box = np.zeros(shape, dtype=bool)
    box[1:3, 4:6, 0:3] = True
    return {"Liver": ball, "Lesion 1": box, "empty": np.zeros(shape, dtype=bool)}


def test_segment_masks_round_trip_on_the_same_grid(scene):
    img = _oblique_image()
    masks = _masks(sitk.GetArrayViewFromImage(img).shape)
    node = mrml.add_segmentation(scene, masks, img, "TP1 VOIs", colors={"Liver": (220, 40, 10)})
    assert node.IsA("vtkMRMLSegmentationNode")
    assert mrml.segment_names(node) == ["Liver", "Lesion 1", "empty"]
    assert mrml.segment_colors(node)["Liver"] == (220, 40, 10)
    back = mrml.masks_from_segmentation(node, img)
    assert list(back) == list(masks)
    for name in masks:
        assert back[name].dtype == bool
        assert np.array_equal(back[name], masks[name]), name
    only = mrml.masks_from_segmentation(node, img, names=["Lesion 1"])
    assert list(only) == ["Lesion 1"]


def test_fractional_masks_keep_voxels_at_least_half_covered(scene):
    img = _oblique_image()
    fraction = np.zeros(sitk.GetArrayViewFromImage(img).shape, dtype=np.float32)
    fraction[2, 2, 2], fraction[2, 2, 3], fraction[2, 2, 4] = 0.49, 0.5, 1.0
    node = mrml.add_segmentation(scene, {"f": fraction}, img, "fractional")
    assert np.argwhere(mrml.masks_from_segmentation(node, img)["f"]).tolist() == [[2, 2, 3], [2, 2, 4]]


def test_segment_masks_resample_onto_another_grid(scene):
    coarse = sitk.Image(8, 8, 6, sitk.sitkFloat32)
    coarse.SetSpacing((4.0, 4.0, 4.0))
    coarse.SetOrigin((-16.0, -16.0, -12.0))
    mask = np.zeros((6, 8, 8), dtype=bool)
    mask[2:4, 3:6, 2:5] = True
    node = mrml.add_segmentation(scene, {"box": mask}, coarse, "coarse")
    fine = sitk.Image(16, 16, 12, sitk.sitkFloat32)
    fine.SetSpacing((2.0, 2.0, 2.0))
    fine.SetOrigin((-17.0, -17.0, -13.0))  # voxel centres halfway inside the coarse voxels
    on_fine = mrml.masks_from_segmentation(node, fine)["box"]
    expected = np.repeat(np.repeat(np.repeat(mask, 2, 0), 2, 1), 2, 2)
    assert np.array_equal(on_fine, expected)


def test_segment_with_a_cropped_labelmap_extent_lands_in_place(scene):
    """Slicer stores edited segments with a cropped extent that starts inside the grid."""
    import vtk
    from vtk.util import numpy_support

    img = _oblique_image()
    node = mrml.add_segmentation(scene, {}, img, "cropped")
    labelmap = slicer.vtkOrientedImageData()
    labelmap.SetExtent(2, 4, 1, 3, 3, 4)  # x 2..4, y 1..3, z 3..4
    labelmap.AllocateScalars(vtk.VTK_UNSIGNED_CHAR, 1)
    numpy_support.vtk_to_numpy(labelmap.GetPointData().GetScalars())[:] = 1
    mrml.nodes._set_geometry(labelmap, img)  # private: from the module, not the package
    segment = slicer.vtkSegment()
    segment.SetName("edited")
    segment.AddRepresentation(mrml.BINARY_LABELMAP, labelmap)
    node.GetSegmentation().AddSegment(segment, "edited")
    mask = mrml.masks_from_segmentation(node, img)["edited"]
    expected = np.zeros(mask.shape, dtype=bool)
    expected[3:5, 1:4, 2:5] = True
    assert np.array_equal(mask, expected)


def test_segmentation_errors_name_the_problem(scene):
    img = _oblique_image()
    with pytest.raises(StructureError, match="'bad'.*shape"):
        mrml.add_segmentation(scene, {"bad": np.zeros((2, 2, 2), bool)}, img, "wrong shape")
    node = mrml.add_segmentation(scene, _masks(sitk.GetArrayViewFromImage(img).shape), img, "named")
    with pytest.raises(StructureError, match="no segment 'Spleen'.*available: 'Liver'"):
        mrml.masks_from_segmentation(node, img, names=["Spleen"])
    node.GetSegmentation().GetNthSegment(1).SetName("Liver")
    with pytest.raises(StructureError, match="used more than once"):
        mrml.masks_from_segmentation(node, img)


# ------------------------------------------------------------------------ a run of the synthetic patient

@pytest.fixture(scope="module")
def run(synthetic_study, tmp_path_factory):
    """The fast synthetic patient (shared, read-only), run with local deposition (a few seconds) and written out."""
    from LuDosimetryLib.pipeline import RunOptions, run_study, write_outputs

    results = run_study(synthetic_study, RunOptions(dose_method="ldm"))
    out = write_outputs(results, tmp_path_factory.mktemp("mrml_run") / "out")
    return synthetic_study, results, out


def test_results_table_equals_results_json(scene, run):
    _, results, out = run
    saved = json.loads((out / "results.json").read_text())
    table = mrml.add_results_table(scene, results, "results")
    rows = mrml.table_rows(table)
    assert list(rows) == list(saved["vois"])
    columns = [title for _, title in mrml.result_columns(results)]
    assert {"volume_ml", "mass_g", "tia_bq_s", "tiac_h", "fit_model", "mean_dose_gy", "d2_gy", "d98_gy",
            "max_dose_gy", "gy_per_gbq"} <= set(columns)
    for voi, row in rows.items():
        assert list(row) == columns
        for key, value in row.items():
            stored = saved["vois"][voi][key]
            if isinstance(stored, str):
                assert value == stored, (voi, key)
            elif stored is None:
                assert value == "" or math.isnan(value), (voi, key)
            else:
                assert math.isclose(value, stored, rel_tol=1e-12), (voi, key, value, stored)


def test_dvh_and_tac_charts_hold_the_library_curves(scene, run):
    from vtk.util import numpy_support

    _, results, _ = run
    dvh = mrml.add_dvh_chart(scene, results)
    assert dvh.IsA("vtkMRMLPlotChartNode") and dvh.GetNumberOfPlotSeriesNodes() == len(results.dvhs)
    for k, (voi, (edges, volume)) in enumerate(results.dvhs.items()):
        series = dvh.GetNthPlotSeriesNode(k)
        assert series.IsA("vtkMRMLPlotSeriesNode") and voi in series.GetName()
        table = series.GetTableNode().GetTable()
        x = numpy_support.vtk_to_numpy(table.GetColumnByName(series.GetXColumnName()))
        vol = numpy_support.vtk_to_numpy(table.GetColumnByName("Volume (mL)"))
        np.testing.assert_allclose(x, edges, rtol=1e-12)
        np.testing.assert_allclose(vol, volume, rtol=1e-12)

    tac = mrml.add_tac_chart(scene, results)
    assert tac.GetNumberOfPlotSeriesNodes() == 2 * len(results.vois)  # measured + fit per VOI
    hours = [tp.hours_post_injection for tp in results.time_points]
    for k, (voi, result) in enumerate(results.vois.items()):
        measured = tac.GetNthPlotSeriesNode(2 * k).GetTableNode().GetTable()
        np.testing.assert_allclose(numpy_support.vtk_to_numpy(measured.GetColumnByName("Time (h)")), hours)
        np.testing.assert_allclose(numpy_support.vtk_to_numpy(measured.GetColumnByName("Activity (MBq)")),
                                   np.asarray(result.activity_bq) / 1e6, rtol=1e-12)
        fitted = tac.GetNthPlotSeriesNode(2 * k + 1).GetTableNode().GetTable()
        t = numpy_support.vtk_to_numpy(fitted.GetColumnByName("Time (h)"))
        a = numpy_support.vtk_to_numpy(fitted.GetColumnByName("Activity (MBq)"))
        np.testing.assert_allclose(a, results.fits[voi].evaluate(t) / 1e6, rtol=1e-9)


def test_study_in_the_subject_hierarchy_and_mrb_bundle(run, tmp_path):
    study_dir, results, _ = run
    scene = mrml.create_scene()
    try:
        nodes = mrml.add_results(scene, results)
        items = mrml.add_time_points(scene, results.inventory,
                                     spect_series_uids=[tp.spect_series_uid for tp in results.time_points],
                                     parent_item=nodes["study_item"])
        sh = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
        study = nodes["study_item"]
        patient = sh.GetItemParent(study)
        assert sh.GetItemLevel(study) == "Study" and sh.GetItemLevel(patient) == "Patient"
        assert sh.GetItemAttribute(patient, slicer.vtkMRMLSubjectHierarchyConstants.GetDICOMPatientIDAttributeName()) \
            == results.patient_id
        assert mrml.study_item(scene, results.patient_id, "", results.study_instance_uid) == study  # found again
        for key in ("spect", "dose", "tia", "table", "dvh_chart", "tac_chart"):
            assert sh.GetItemParent(sh.GetItemByDataNode(nodes[key])) == study, key
        assert len(items) == len(results.time_points) == 4
        for k, item in enumerate(items):
            seg = item["segmentation"]
            assert sh.GetItemParent(sh.GetItemByDataNode(seg)) == study
            assert sh.GetItemAttribute(sh.GetItemByDataNode(seg), mrml.TIME_POINT_ATTRIBUTE) == str(k)
            assert mrml.segment_names(seg) == list(results.vois)
            assert item["ct"] is not None
        # Segment names and colours come from the RTSTRUCTs.
        from LuDosimetryLib.io.rtstruct import read_rtstruct
        organs = read_rtstruct(next(Path(study_dir).glob("VOIs/scan1/organs/*.dcm")))
        colours = mrml.segment_colors(items[0]["segmentation"])
        for roi in organs.rois:
            assert colours[roi.name] == tuple(roi.color)
        # The TP1 segmentation equals the pipeline's own masks (voxels at least half covered).
        from LuDosimetryLib.vois import structure_set_masks
        masks = mrml.masks_from_segmentation(items[0]["segmentation"], items[0]["spect_image"])
        for name, m in structure_set_masks(organs, items[0]["spect_image"], supersample=3).items():
            assert np.array_equal(masks[name], m >= 0.5), name

        bundle = mrml.save_mrb(scene, tmp_path / "study.mrb")
        with zipfile.ZipFile(bundle) as z:
            names = z.namelist()
        assert any(n.endswith(".mrml") for n in names)
        assert sum(n.endswith(".seg.nrrd") for n in names) == 4
        assert not list(tmp_path.glob(".ludosimetry-mrb-*"))  # no temporary left
        with pytest.raises(OutputError, match=r"\.mrb"):
            mrml.save_mrb(scene, tmp_path / "study.zip")
    finally:
        mrml.release_scene(scene)

    reread = mrml.load_mrb(bundle)
    try:
        dose = reread.GetFirstNodeByName(nodes["dose"].GetName())
        img = mrml.image_from_volume_node(dose)
        np.testing.assert_allclose(img.GetOrigin(), results.dose_gy.GetOrigin(), atol=1e-9)
        np.testing.assert_allclose(img.GetDirection(), results.dose_gy.GetDirection(), atol=1e-12)
        np.testing.assert_array_equal(sitk.GetArrayFromImage(img), sitk.GetArrayFromImage(results.dose_gy))
        seg = reread.GetFirstNodeByName(items[0]["segmentation"].GetName())
        again = mrml.masks_from_segmentation(seg, items[0]["spect_image"])
        assert all(np.array_equal(again[n], masks[n]) for n in masks)
        assert reread.GetFirstNodeByName(nodes["table"].GetName()).GetNumberOfRows() == len(results.vois)
    finally:
        mrml.release_scene(reread)
    with pytest.raises(LuDosimetryError, match="cannot be read"):
        mrml.load_mrb(tmp_path / "missing.mrb")


def test_edited_segmentation_exports_as_a_new_rtstruct(scene, run, tmp_path):
    from LuDosimetryLib.io.images import read_spect
    from LuDosimetryLib.io.rtstruct import read_rtstruct
    from LuDosimetryLib.vois import structure_set_masks

    study_dir, results, _ = run
    inv = results.inventory
    entry = inv.get(results.time_points[0].spect_series_uid)
    spect = read_spect(entry.files, injection_time=inv.injection_time).image
    originals = {p: p.read_bytes() for p in Path(study_dir).glob("VOIs/scan1/*/*.dcm")}
    organs = read_rtstruct(next(Path(study_dir).glob("VOIs/scan1/organs/*.dcm")))
    node = mrml.add_structure_set(scene, organs, spect, "TP1 organs")
    # Edit: the liver loses its top half (in z).
    edited = mrml.masks_from_segmentation(node, spect)
    liver = edited["Liver"].copy()
    zs = np.nonzero(liver.any(axis=(1, 2)))[0]
    liver[zs[len(zs) // 2]:] = False
    edited["Liver"] = liver
    node2 = mrml.add_segmentation(scene, edited, spect, "TP1 organs edited", colors=mrml.segment_colors(node))

    path = mrml.export_segmentation_rtstruct(node2, tmp_path / "edited.dcm", spect, entry)
    ss = read_rtstruct(path)
    assert ss.names == mrml.segment_names(node2)
    assert ss.referenced_series_uid == entry.series_instance_uid
    assert tuple(ss.roi("Liver").color) == mrml.segment_colors(node)["Liver"]
    back = structure_set_masks(ss, spect, supersample=3)
    for name, mask in edited.items():
        got = back[name] >= 0.5
        dice = 2 * np.sum(got & mask) / (got.sum() + mask.sum())
        assert dice > 0.9, (name, dice)
    assert (back["Liver"] >= 0.5).sum() < 0.7 * (structure_set_masks(organs, spect, 3)["Liver"] >= 0.5).sum()
    with pytest.raises(OutputError, match="never overwritten"):
        mrml.export_segmentation_rtstruct(node2, path, spect, entry)
    assert {p: p.read_bytes() for p in originals} == originals
