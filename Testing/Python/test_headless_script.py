"""The headless script LuDosimetry/Scripts/run_study.py under plain Python with slicer-core, and the
module logic's "recompute with edited VOIs" over real MRML segmentations."""
from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

slicer = pytest.importorskip("slicer")
if not hasattr(slicer, "vtkMRMLScene"):  # pragma: no cover
    pytest.skip("the installed 'slicer' package has no MRML (install slicer-core)", allow_module_level=True)

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "LuDosimetry" / "Scripts" / "run_study.py"


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    from LuDosimetryLib.phantom import write_synthetic_patient

    return write_synthetic_patient(tmp_path_factory.mktemp("headless") / "study", seed=0, fast=True)


def _run(*args, timeout=300):
    return subprocess.run([sys.executable, str(SCRIPT), *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, cwd=str(ROOT))


def test_headless_script_writes_outputs_and_a_scene_bundle(study, tmp_path):
    out = tmp_path / "out"
    run = _run("--study", study, "--out", out, "--dose-method", "ldm")
    assert run.returncode == 0, run.stdout + run.stderr
    saved = json.loads((out / "results.json").read_text())
    assert set(saved["vois"]) == {"Liver", "Kidney_L", "Kidney_R", "Spleen", "Lesion_1", "Lesion_2"}
    assert saved["dose_method"] == "ldm"
    for name in ("dvh.csv", "rtdose.dcm", "dose_gy.nrrd", "tia_bq_s_per_ml.nrrd"):
        assert (out / name).is_file(), name
    bundle = out / "scene.mrb"
    with zipfile.ZipFile(bundle) as z:
        names = z.namelist()
        mrml_files = [n for n in names if n.endswith(".mrml")]
        assert len(mrml_files) == 1
        scene_text = z.read(mrml_files[0]).decode("utf-8")
    tags = re.findall(r"<(\w+)\s", scene_text)
    assert tags.count("Segmentation") == 4  # one per time point
    assert tags.count("PlotChart") == 2 and "Table" in tags and tags.count("Volume") >= 3

    # It opens: the scene reads back with the table holding results.json's mean doses.
    from LuDosimetryLib import mrml
    scene = mrml.load_mrb(bundle)
    try:
        rows = mrml.table_rows(scene.GetFirstNodeByName("LuDosimetry results"))
        assert list(rows) == list(saved["vois"])
        for voi, row in rows.items():
            # the table's .tsv in the bundle keeps 6 significant digits (vtkMRMLTableStorageNode)
            assert row["Mean dose (Gy)"] == pytest.approx(saved["vois"][voi]["mean_dose_gy"], rel=1e-5)
    finally:
        mrml.release_scene(scene)

    # A second run into the same folder is refused without --overwrite, with the CLI's one-line error.
    again = _run("--study", study, "--out", out)
    assert again.returncode == 1
    assert again.stderr.strip().splitlines()[-1].startswith(f"error: {out}: output folder exists")


def test_headless_script_bad_study(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    run = _run("--study", empty, "--out", tmp_path / "out")
    assert run.returncode == 1
    assert run.stderr.strip().splitlines()[-1].startswith("error: ")
    assert not (tmp_path / "out").exists()
    assert _run("--out", tmp_path / "o").returncode == 2  # --study missing


def _module():
    spec = importlib.util.spec_from_file_location("ludosimetry_run_study_script", SCRIPT)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    return script.import_module_file()


def _erode(mask: np.ndarray) -> np.ndarray:
    from scipy.ndimage import binary_erosion

    return binary_erosion(mask, iterations=1)


@pytest.fixture(scope="module")
def loaded(study, tmp_path_factory):
    """The module logic over a slicer-core scene after a run that loaded the time points."""
    from LuDosimetryLib import mrml

    module = _module()
    scene = mrml.create_scene()
    logic = module.LuDosimetryLogic(scene=scene)
    out = tmp_path_factory.mktemp("loaded") / "first"
    first = logic.run(study, out, dose_method="ldm", load_time_points=True)
    yield module, logic, scene, first, out
    mrml.release_scene(scene)


def test_recompute_passes_the_edited_masks_directly(study, loaded, tmp_path):
    from LuDosimetryLib import mrml
    from LuDosimetryLib.errors import OutputError, StudyError

    module, logic, scene, first, _ = loaded
    segmentations = logic.segmentationNodesByTimePoint()
    assert len(segmentations) == 4 and all(s is not None for s in segmentations)
    before = {p: p.stat().st_mtime_ns for p in Path(study).rglob("*")}

    # Unedited: the segmentations hold the pipeline's own masks (voxels at least half covered), so the
    # results are the same to rounding.
    same = logic.recomputeWithEditedVois(study, segmentations, tmp_path / "same", dose_method="ldm",
                                         load_into_scene=False)
    for voi, result in first.vois.items():
        assert same.vois[voi].volume_ml == pytest.approx(result.volume_ml, rel=1e-12), voi
        assert same.vois[voi].tia_bq_s == pytest.approx(result.tia_bq_s, rel=1e-9), voi
        assert same.vois[voi].mean_dose_gy == pytest.approx(result.mean_dose_gy, rel=1e-9), voi
    # Nothing but the outputs is written: no working copy, no RTSTRUCT.
    assert not (tmp_path / "same-work").exists()
    assert not list((tmp_path / "same").rglob("*.dcm")) or \
        sorted(p.name for p in (tmp_path / "same").rglob("*.dcm")) == ["rtdose.dcm"]

    # Edited: the liver is eroded by one voxel at every time point.
    edited_nodes = []
    for k, node in enumerate(segmentations):
        spect = logic.timePointItems[k]["spect_image"]
        masks = mrml.masks_from_segmentation(node, spect)
        masks["Liver"] = _erode(masks["Liver"])
        edited_nodes.append(mrml.add_segmentation(scene, masks, spect, f"TP{k + 1} eroded",
                                                  colors=mrml.segment_colors(node)))
    reports = []
    edited = logic.recomputeWithEditedVois(study, edited_nodes, tmp_path / "edited", dose_method="ldm",
                                           load_into_scene=False, progress=lambda f, m: reports.append(f))
    assert reports == sorted(reports) and reports[-1] == 1.0
    assert edited.vois["Liver"].volume_ml < 0.95 * first.vois["Liver"].volume_ml
    assert edited.vois["Liver"].tia_bq_s < first.vois["Liver"].tia_bq_s
    assert edited.vois["Liver"].mean_dose_gy != pytest.approx(first.vois["Liver"].mean_dose_gy, rel=1e-6)
    assert edited.vois["Spleen"].volume_ml == pytest.approx(first.vois["Spleen"].volume_ml, rel=1e-12)
    saved = json.loads((tmp_path / "edited" / "results.json").read_text())
    assert saved["vois"]["Liver"]["volume_ml"] == pytest.approx(edited.vois["Liver"].volume_ml)
    assert {p: p.stat().st_mtime_ns for p in Path(study).rglob("*")} == before  # inputs untouched

    with pytest.raises(StudyError, match="4 time points need one segmentation each"):
        logic.recomputeWithEditedVois(study, edited_nodes[:2], tmp_path / "x")
    with pytest.raises(OutputError, match="not empty"):
        logic.recomputeWithEditedVois(study, edited_nodes, tmp_path / "edited")
    # A mask on the wrong grid is refused by the pipeline with the VOI named.
    bad = [{"Liver": np.zeros((2, 2, 2), bool)}] * 4
    with pytest.raises(Exception, match="'Liver'.*shape"):
        logic.run(study, tmp_path / "bad", dose_method="ldm", masks_per_time_point=bad, load_into_scene=False)


def test_segmentations_per_time_point_come_back_from_the_scene(loaded):
    from LuDosimetryLib import mrml
    from LuDosimetryLib.errors import StudyError

    module, logic, scene, _, _ = loaded
    loaded_nodes = logic.segmentationNodesByTimePoint()
    # A logic without loaded time points (e.g. after a .mrb was opened) finds them in the scene.
    other = module.LuDosimetryLogic(scene=scene)
    assert other.segmentationNodesByTimePoint() == loaded_nodes
    spect = logic.timePointItems[1]["spect_image"]
    replacement = mrml.add_segmentation(scene, mrml.masks_from_segmentation(loaded_nodes[1], spect), spect,
                                        "TP2 replacement")
    other.setSegmentationForTimePoint(1, replacement)
    assert other.segmentationNodesByTimePoint()[1] is replacement
    assert module.LuDosimetryLogic(scene=scene).segmentationNodesByTimePoint()[1] is replacement
    assert other.sourceVolumeForSegmentation(loaded_nodes[0]) is logic.timePointItems[0]["spect"]
    with pytest.raises(StudyError, match="time point 5 does not exist"):
        other.setSegmentationForTimePoint(4, replacement)
    other.setSegmentationForTimePoint(1, loaded_nodes[1])  # as it was, for the other tests
    tac, dvh = other.chartNodes()
    # The charts of the run are found in the scene by their names.
    assert tac is scene.GetFirstNodeByName("LuDosimetry TAC") and tac.IsA("vtkMRMLPlotChartNode")
    assert dvh is scene.GetFirstNodeByName("LuDosimetry DVH") and dvh.IsA("vtkMRMLPlotChartNode")


def test_inventory_table_rows_follow_the_inventory(study, loaded):
    module = loaded[0]
    inventory = module.LuDosimetryLogic().inventory(study)
    document = inventory.to_json()
    rows = module.inventoryRows(document)
    assert len(rows) == len(inventory.series) > 0
    assert [key for key, _ in module.INVENTORY_COLUMNS] == list(rows[0])
    for row, series in zip(rows, inventory.series):
        assert row["modality"] == series.modality and row["description"] == series.description
        assert row["files"] == len(series.files)
        assert row["role"].split(" ")[0] == series.role
        if series.time_point is None:
            assert row["time_point"] == "" and row["hours_post_injection"] is None
        else:
            assert row["time_point"] == f"TP{series.time_point + 1}"
            tp = inventory.time_points[series.time_point]
            assert row["hours_post_injection"] == pytest.approx(inventory.hours_post_injection(tp.acquisition_time))
    spect_rows = [r for r in rows if r["role"] == "spect_recon"]
    assert sorted({r["time_point"] for r in spect_rows}) == ["TP1", "TP2", "TP3", "TP4"]
    assert not module.hasProjections(document)


class _FakeDicomDatabase:
    """The part of ctkDICOMDatabase (slicer.dicomDatabase) the logic uses, over a study folder."""

    def __init__(self, inventory, patient_name="Doe^Jane"):
        self.inventory = inventory
        self.patient_name = patient_name

    def patients(self):
        return ["1"]

    def nameForPatient(self, patient):
        return self.patient_name

    def fieldForPatient(self, field, patient):
        return {"PatientID": self.inventory.series[0].patient_id}.get(field, "")

    def studiesForPatient(self, patient):
        return sorted({s.study_instance_uid for s in self.inventory.series})

    def fieldForStudy(self, field, study):
        return {"StudyDate": "20240102", "StudyDescription": "Lu-177 DOTATATE"}.get(field, "")

    def seriesForStudy(self, study):
        return [s.series_instance_uid for s in self.inventory.series if s.study_instance_uid == study]

    def filesForSeries(self, series):
        return list(self.inventory.get(series).files) if any(
            s.series_instance_uid == series for s in self.inventory.series) else []


def test_study_from_the_dicom_database_is_a_view_of_links(study, loaded, tmp_path):
    from LuDosimetryLib.errors import OutputError, StudyError
    from LuDosimetryLib.io.inventory import scan_study

    module = loaded[0]
    logic = module.LuDosimetryLogic()
    original = scan_study(study)
    database = _FakeDicomDatabase(original)
    studies = logic.dicomStudies(database)
    assert len(studies) == len({s.study_instance_uid for s in original.series}) >= 1
    assert studies[0]["label"].startswith("Doe Jane / 20240102 / Lu-177 DOTATATE")
    before = {p: p.stat().st_mtime_ns for p in Path(study).rglob("*")}

    # All studies of the patient in one view (the phantom writes one study per time point).
    views = [logic.studyViewFromDatabase(s["study_instance_uid"], database, view_dir=tmp_path / f"view{k}")
             for k, s in enumerate(studies)]
    files = [f for view in views for f in view.iterdir()]
    assert files and all(f.is_symlink() for f in files)
    assert len(files) == sum(len(s.files) for s in original.series)
    one = scan_study(views[0])
    assert {s.series_instance_uid for s in one.series} == set(database.seriesForStudy(studies[0]["study_instance_uid"]))
    assert {p: p.stat().st_mtime_ns for p in Path(study).rglob("*")} == before

    default = logic.studyViewFromDatabase(studies[0]["study_instance_uid"], database)
    try:
        assert default.name.startswith("ludosimetry-study-") and any(default.iterdir())
    finally:
        import shutil
        shutil.rmtree(default)
    with pytest.raises(StudyError, match="no files in the DICOM database"):
        logic.studyViewFromDatabase("1.2.3.4", database, view_dir=tmp_path / "none")
    with pytest.raises(OutputError, match="not an empty folder"):
        logic.studyViewFromDatabase(studies[0]["study_instance_uid"], database, view_dir=views[0])


def test_exports_are_atomic_and_refuse_to_overwrite(loaded, tmp_path):
    import csv

    from LuDosimetryLib.errors import OutputError

    module, logic, _, first, out = loaded
    target = tmp_path / "copy.dcm"
    assert logic.exportRtDose(out, target) == target
    assert target.read_bytes() == (out / "rtdose.dcm").read_bytes()
    target.write_bytes(b"mine")
    with pytest.raises(OutputError, match="exists; not overwritten"):
        logic.exportRtDose(out, target)
    assert target.read_bytes() == b"mine"
    logic.exportRtDose(out, target, overwrite=True)
    assert target.read_bytes() == (out / "rtdose.dcm").read_bytes()

    report = logic.exportReport(out, tmp_path / "report.json")
    assert json.loads(report.read_text()) == json.loads((out / "results.json").read_text())
    with pytest.raises(OutputError, match="exists"):
        logic.exportReport(out, report)

    folder = tmp_path / "csv"
    folder.mkdir()
    dvh, table = logic.exportCsv(out, folder)
    assert dvh.read_bytes() == (out / "dvh.csv").read_bytes()
    rows = list(csv.reader(table.read_text().splitlines()))
    assert rows[0] == [module.VOI_COLUMN] + [title for _, title in module.RESULT_COLUMNS]
    saved = json.loads((out / "results.json").read_text())
    assert [r[0] for r in rows[1:]] == list(saved["vois"]) == list(first.vois)
    for row in rows[1:]:
        for (attribute, _), cell in zip(module.RESULT_COLUMNS, row[1:]):
            stored = saved["vois"][row[0]][attribute]
            if stored is None:
                assert cell == ""
            elif isinstance(stored, str):
                assert cell == stored
            else:
                assert float(cell) == stored, (row[0], attribute)  # full precision
    # One file exists: nothing is written.
    other = tmp_path / "csv2"
    other.mkdir()
    (other / "voi_results.csv").write_text("mine")
    with pytest.raises(OutputError, match="voi_results.csv"):
        logic.exportCsv(out, other)
    assert sorted(p.name for p in other.iterdir()) == ["voi_results.csv"]
    assert (other / "voi_results.csv").read_text() == "mine"
    assert not [p for p in tmp_path.rglob(".*.tmp")]  # no temporary left
    with pytest.raises(OutputError, match="run the dosimetry first"):
        logic.exportRtDose(tmp_path / "no-run", tmp_path / "x.dcm")
    with pytest.raises(OutputError, match="run the dosimetry first"):
        logic.exportReport("", tmp_path / "x.json")


def test_reconstruction_makes_a_study_view_with_the_new_series(study, loaded, tmp_path, monkeypatch):
    """The Reconstruction section's logic over a stand-in reconstruct_study (the real one is tested in
    test_recon): options passed through, new series linked, the study's own reconstructions left out."""
    import pydicom

    from LuDosimetryLib.errors import OutputError, StudyError
    from LuDosimetryLib.io.inventory import scan_study

    module, logic = loaded[0], loaded[1]
    calls = []
    original = scan_study(study)
    tp1 = original.get(original.time_points[0].spect_series_uids[0])

    def reconstruct_study(study_dir, out_dir, options, progress=None, overwrite=False):
        calls.append((Path(study_dir), Path(out_dir), options, overwrite))
        progress(0.5, "iterating")
        written = []
        folder = Path(out_dir) / "RECON_01_test"
        folder.mkdir(parents=True)
        for k, f in enumerate(tp1.files):
            ds = pydicom.dcmread(f)
            ds.SeriesInstanceUID = "1.2.826.0.1.3680043.8.498.1"
            ds.SOPInstanceUID = f"1.2.826.0.1.3680043.8.498.1.{k + 1}"
            ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
            ds.save_as(str(folder / f"NM_{k}.dcm"))
            written.append(folder / f"NM_{k}.dcm")
        return written

    _, ReconOptions = module.importReconstruction()
    fake = type(sys)("LuDosimetryLib.recon")
    fake.reconstruct_study, fake.ReconOptions = reconstruct_study, ReconOptions
    monkeypatch.setitem(sys.modules, "LuDosimetryLib.recon", fake)
    assert module.reconstructionUnavailableReason() == ""
    reports = []
    view = logic.reconstruct(study, tmp_path / "recon", algorithm="bsrem", iterations=3, subsets=6,
                             scatter="dew", psf=False, progress=lambda f, m: reports.append(f))
    assert view == tmp_path / "recon" / "study"
    (study_dir, out_dir, options, overwrite), = calls
    assert (study_dir, out_dir, overwrite) == (Path(study), tmp_path / "recon", False)
    assert (options.algorithm, options.iterations, options.subsets, options.scatter, options.psf) == \
        ("bsrem", 3, 6, "dew", False)
    assert reports == sorted(reports) and reports[-1] == 1.0
    inventory = scan_study(view)
    uids = {s.series_instance_uid for s in inventory.series}
    assert "1.2.826.0.1.3680043.8.498.1" in uids
    assert not uids & {s.series_instance_uid for s in original.by_role("spect_recon")}
    assert uids == {s.series_instance_uid for s in original.series if s.role != "spect_recon"} | \
        {"1.2.826.0.1.3680043.8.498.1"}
    with pytest.raises(OutputError, match="earlier reconstruction"):
        logic.reconstruct(study, tmp_path / "recon")

    def missing():
        raise ImportError("no recon")

    monkeypatch.setattr(module, "importReconstruction", missing)
    with pytest.raises(StudyError, match="not available in this version"):
        logic.reconstruct(study, tmp_path / "recon2")


# ------------------------------------------------------------------------ registration (issue #5)

@pytest.fixture(scope="module")
def moving_study(tmp_path_factory):
    """The analytic study with the patient shifted by up to 10 mm between time points and contours only at
    time point 1 (as in test_pipeline)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from study_builder import build_study

    root = tmp_path_factory.mktemp("moving_logic") / "study"
    return build_study(root, shifts_mm=[(0, 0, 0), (8, -5, 4.8), (-6, 4, -4.8), (5, 6, 0)],
                       rtstruct_time_points=[0])


def _correlation(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a.ravel(), b.ravel())[0, 1])


def test_rigid_run_adds_the_registration_check_view(moving_study, tmp_path):
    import SimpleITK as sitk

    from LuDosimetryLib import mrml
    from LuDosimetryLib.errors import StudyError
    from LuDosimetryLib.io.images import read_spect, resample_to
    from LuDosimetryLib.io.inventory import scan_study

    module = _module()
    scene = mrml.create_scene()
    try:
        logic = module.LuDosimetryLogic(scene=scene)
        inventory = scan_study(moving_study.root)
        assert logic.voiNames(inventory, 0) == [s.name for s in moving_study.spheres]  # the model table's rows
        assert logic.voiNames(inventory, 2) == [s.name for s in moving_study.spheres]  # none at TP3: all TPs
        results = logic.run(moving_study.root, tmp_path / "out", dose_method="ldm", registration="rigid",
                            vois="reference-only", time_points=(1, 3), tia_map="voxel")
        saved = json.loads((tmp_path / "out" / "results.json").read_text())
        assert saved["registered"] == [2, 3, 4] and saved["time_points_used"] == [1, 3]
        assert sorted(results.registrations) == [1, 2, 3]

        # The results table shows the full fit beside the reduced one.
        titles = [results_title for _, results_title in module.resultColumnsFor(results)]
        rows = mrml.table_rows(logic.lastNodes["table"])
        for name, voi in results.vois.items():
            assert voi.tia_full_bq_s is not None
            assert rows[name]["TIA all time points (Bq·s)"] == pytest.approx(voi.tia_full_bq_s, rel=1e-12)
            assert rows[name]["Reduced vs all time points (relative)"] == pytest.approx(
                voi.reduced_relative_difference, rel=1e-12)
            assert list(rows[name]) == titles

        # The check view: each registered time point's SPECT on the reference grid, next to the reference.
        nodes = logic.registrationNodes
        assert sorted(nodes) == [1, 2, 3]
        reference = results.reference_spect
        for i, node in nodes.items():
            image = mrml.image_from_volume_node(node)
            assert image.GetSize() == reference.GetSize()
            np.testing.assert_allclose(image.GetOrigin(), reference.GetOrigin(), atol=1e-9)
            np.testing.assert_allclose(image.GetSpacing(), reference.GetSpacing(), atol=1e-12)
            np.testing.assert_allclose(image.GetDirection(), reference.GetDirection(), atol=1e-12)
            entry = inventory.get(results.time_points[i].spect_series_uid)
            spect = read_spect(entry.files, injection_time=inventory.injection_time).image
            expected = results.registrations[i].apply_to_image(spect, reference)
            np.testing.assert_allclose(sitk.GetArrayFromImage(image), sitk.GetArrayFromImage(expected), rtol=1e-6)
            # Registered, the time point lines up with the reference better than as scanned.
            ref_array = sitk.GetArrayFromImage(reference)
            as_scanned = sitk.GetArrayFromImage(resample_to(spect, reference, default=0.0))
            registered, scanned = _correlation(sitk.GetArrayFromImage(image), ref_array), \
                _correlation(as_scanned, ref_array)
            assert registered > scanned + 0.02 and registered > 0.97, i
            assert node.GetAttribute(mrml.REGISTERED_TIME_POINT_ATTRIBUTE) == str(i)

        background, foreground = logic.registrationCheckLayers(2)
        assert foreground is nodes[2] and background is logic.lastNodes["spect"]
        # Found again from the scene alone (e.g. after a .mrb was loaded).
        other = module.LuDosimetryLogic(scene=scene)
        assert other.registeredSpectNodes() == nodes
        assert other.registrationCheckLayers(1) == (logic.lastNodes["spect"], nodes[1])
        with pytest.raises(StudyError, match="time point 1 has no registered SPECT.*the reference is 1"):
            other.registrationCheckLayers(0)
        empty = mrml.create_scene()
        try:
            with pytest.raises(StudyError, match="no registered time point"):
                module.LuDosimetryLogic(scene=empty).registrationCheckLayers(1)
        finally:
            mrml.release_scene(empty)

        # Not loaded into the scene: no check view; the per-VOI model choice reaches the fits.
        plain = module.LuDosimetryLogic(scene=scene)
        plain.run(moving_study.root, tmp_path / "plain", dose_method="ldm", registration="rigid",
                  vois="reference-only", models_per_voi={"Liver": ("trapezoid",)}, load_into_scene=False)
        assert plain.registrationNodes == {} and plain.lastResults.vois["Liver"].fit_model == "trapezoid"
        assert plain.lastResults.vois["Kidney_L"].fit_model != "trapezoid"
    finally:
        mrml.release_scene(scene)
