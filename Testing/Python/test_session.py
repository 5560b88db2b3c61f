"""DosimetrySession (LuDosimetryLib.mrml.session) on real MRML scenes of the PyPI ``slicer-core`` package.

What the Slicer module's logic does, through the session it delegates to: a run on the synthetic patient fills
the scene (volumes, results table equal to run_study's, charts, each time point's SPECT/CT/VOIs) and writes the
outputs with ``voi_results.csv``; unusable folders and options are refused before computing; a cancel from the
progress callback propagates; a recompute with edited segmentations writes into a new folder; exports never
replace a file unasked; the DICOM database's studies become folders of links; a reconstruction becomes a study
folder with the new series; a registered run adds the check view. Also the table helpers of
``LuDosimetryLib.result_tables`` the panel fills its tables with.
"""
from __future__ import annotations

import csv
import json
import math
import re
import shutil
import sys
from datetime import datetime, timedelta
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

slicer = pytest.importorskip("slicer")
if not hasattr(slicer, "vtkMRMLScene"):  # pragma: no cover - a different 'slicer' package
    pytest.skip("the installed 'slicer' package has no MRML (install slicer-core)", allow_module_level=True)

import SimpleITK as sitk  # noqa: E402

from LuDosimetryLib import mrml, result_tables  # noqa: E402
from LuDosimetryLib.cycles import CycleError  # noqa: E402
from LuDosimetryLib.errors import CancelledError, OptionError, OutputError, StudyError  # noqa: E402
from LuDosimetryLib.io.export import write_file_atomically  # noqa: E402
from LuDosimetryLib.io.study_view import make_study_view  # noqa: E402
from LuDosimetryLib.mrml.session import (  # noqa: E402
    DVH_FILE, REPORT_EXPORT_FILES, REPORT_HTML_FILE, REPORT_PDF_FILE, RESULTS_FILE, RTDOSE_FILE, RUN_STUDY_SHARE,
    VOI_RESULTS_FILE, DosimetrySession, default_output_dir, edited_output_dir, reconstruction_dir, safe_folder_name)
from LuDosimetryLib.options import ReconOptions, RunOptions  # noqa: E402

#: The run of these tests: local deposition, a few seconds on the fast synthetic patient.
OPTIONS = RunOptions(dose_method="ldm")


@pytest.fixture
def scene():
    s = mrml.create_scene()
    yield s
    mrml.release_scene(s)


@pytest.fixture(scope="module")
def loaded(synthetic_study, tmp_path_factory):
    """A session on a scene after a run of the synthetic patient that loaded the time points."""
    scene = mrml.create_scene()
    session = DosimetrySession(scene)
    out = tmp_path_factory.mktemp("session") / "out"
    reports = []
    results = session.run(synthetic_study, out, OPTIONS, load_time_points=True,
                          progress=lambda fraction, message: reports.append((fraction, message)))
    yield SimpleNamespace(scene=scene, session=session, results=results, out=out, reports=reports,
                          study=synthetic_study)
    mrml.release_scene(scene)


def _same(cell, value, what):
    """A table cell equals a library value (text as is; a number to rounding; None as NaN or "")."""
    if value is None:
        assert cell == "" or (isinstance(cell, float) and math.isnan(cell)), what
    elif isinstance(value, str):
        assert cell == value, what
    else:
        assert math.isclose(float(cell), float(value), rel_tol=1e-9, abs_tol=1e-12), (what, cell, value)


def _file_state(root: Path) -> dict:
    return {p: p.stat().st_mtime_ns for p in Path(root).rglob("*")}


# ----------------------------------------------------------------------------------------------- a run

def test_run_fills_the_scene_with_the_results(loaded):
    from LuDosimetryLib.pipeline import run_study

    session, results = loaded.session, loaded.results
    found = session.last_nodes
    for key in ("spect", "dose", "tia", "table", "dvh_chart", "tac_chart"):
        assert found.get(key) is not None, key
    assert session.last_results is results and Path(session.last_output_dir) == loaded.out

    # The volumes hold the results' images on their grid.
    for key, image in (("dose", results.dose_gy), ("tia", results.tia_bq_s_per_ml), ("spect", results.reference_spect)):
        shown = mrml.image_from_volume_node(found[key])
        assert shown.GetSize() == image.GetSize(), key
        np.testing.assert_allclose(shown.GetOrigin(), image.GetOrigin(), atol=1e-9)
        np.testing.assert_allclose(sitk.GetArrayFromImage(shown), sitk.GetArrayFromImage(image), rtol=1e-6, atol=0)

    # The table holds what run_study gives when called directly, in the panel's columns.
    expected_vois = run_study(loaded.study, OPTIONS).vois
    columns = result_tables.result_columns_for(expected_vois)
    expected = result_tables.result_rows(expected_vois, columns)
    rows = mrml.table_rows(found["table"])
    assert list(rows) == [name for name, _ in expected] == list(results.vois)
    for name, values in expected:
        assert list(rows[name]) == [title for _, title in columns]
        for (attribute, title), value in zip(columns, values):
            _same(rows[name][title], value, f"{name}.{attribute}")

    # The charts: one DVH curve per VOI, a TAC chart with the VOIs' series.
    assert found["dvh_chart"].IsA("vtkMRMLPlotChartNode") and found["tac_chart"].IsA("vtkMRMLPlotChartNode")
    assert found["dvh_chart"].GetNumberOfPlotSeriesNodes() == len(results.dvhs) == len(results.vois)
    assert found["tac_chart"].GetNumberOfPlotSeriesNodes() >= len(results.vois)
    assert session.chart_nodes() == (found["tac_chart"], found["dvh_chart"])


def test_run_loads_each_time_point_for_editing(loaded):
    session, results = loaded.session, loaded.results
    segmentations = session.segmentation_nodes_by_time_point()
    assert len(segmentations) == len(results.time_points) == 4
    for k, node in enumerate(segmentations):
        assert node is not None and mrml.time_point_of(node) == k
        assert mrml.segment_names(node) == list(results.vois), k
        item = session.time_point_items[k]
        assert item["index"] == k and item["spect"] is not None and item["ct"] is not None
        assert session.source_volume_for_segmentation(node) is item["spect"]


def test_run_writes_the_outputs_with_the_voi_results_csv(loaded):
    out, results = loaded.out, loaded.results
    for name in (RESULTS_FILE, DVH_FILE, VOI_RESULTS_FILE, RTDOSE_FILE):
        assert (out / name).is_file(), name
    text = (out / VOI_RESULTS_FILE).read_text(encoding="utf-8")
    assert text == result_tables.voi_results_csv_text(results.vois)
    saved = json.loads((out / RESULTS_FILE).read_text())
    rows = list(csv.reader(text.splitlines()))
    columns = result_tables.result_columns_for(saved["vois"])
    assert rows[0] == [result_tables.VOI_COLUMN] + [title for _, title in columns]
    assert [row[0] for row in rows[1:]] == list(saved["vois"]) == list(results.vois)
    for row in rows[1:]:
        for (attribute, _), cell in zip(columns, row[1:]):
            stored = saved["vois"][row[0]][attribute]
            if stored is None:
                assert cell == ""
            elif isinstance(stored, str):
                assert cell == stored
            else:
                assert float(cell) == stored, (row[0], attribute)  # full precision


def test_progress_rises_to_one(loaded):
    fractions = [fraction for fraction, _ in loaded.reports]
    assert len(fractions) > 5
    assert fractions == sorted(fractions) and all(0.0 <= f <= 1.0 for f in fractions)
    assert fractions[-1] == 1.0 and loaded.reports[-1][1] == "Done"
    # run_study's own progress takes the first RUN_STUDY_SHARE; writing and the scene the rest.
    assert (RUN_STUDY_SHARE, "Writing the results") in loaded.reports
    assert max(f for f, m in loaded.reports if m != "Done" and f < RUN_STUDY_SHARE) < RUN_STUDY_SHARE


def test_bad_folders_and_options_are_refused_before_computing(synthetic_study, tmp_path, monkeypatch):
    import LuDosimetryLib.pipeline as pipeline

    calls = []
    monkeypatch.setattr(pipeline, "run_study", lambda *args, **kwargs: calls.append(args))
    session = DosimetrySession()
    with pytest.raises(StudyError, match="no study folder"):
        session.run("", tmp_path / "out")
    with pytest.raises(OutputError, match="no output folder"):
        session.run(synthetic_study, "  ")
    full = tmp_path / "full"
    full.mkdir()
    (full / "notes.txt").write_text("mine")
    with pytest.raises(OutputError, match="not empty") as refused:
        session.run(synthetic_study, full)
    assert refused.value.option == "overwrite"
    with pytest.raises(OutputError, match="did not write"):
        session.run(synthetic_study, full, overwrite=True)
    a_file = tmp_path / "file"
    a_file.write_text("x")
    with pytest.raises(OutputError, match="not a folder"):
        session.run(synthetic_study, a_file)
    with pytest.raises(OutputError, match="parent folder of the output does not exist"):
        session.run(synthetic_study, tmp_path / "missing" / "out")
    with pytest.raises(OptionError) as refused:
        session.run(synthetic_study, tmp_path / "out", OPTIONS, pvc="gtm")
    assert refused.value.option == "psf_fwhm_mm"
    assert calls == []  # all refused before run_study
    assert (full / "notes.txt").read_text() == "mine" and not (tmp_path / "out").exists()


@pytest.mark.parametrize("cancel_after", [0.0, 0.3])
def test_cancel_from_the_progress_callback_propagates(synthetic_study, scene, tmp_path, cancel_after):
    session = DosimetrySession(scene)
    before = scene.GetNumberOfNodes()
    seen = []

    def progress(fraction, message):
        seen.append(fraction)
        if fraction >= cancel_after:
            raise CancelledError()

    with pytest.raises(CancelledError):
        session.run(synthetic_study, tmp_path / "out", OPTIONS, progress=progress, load_time_points=True)
    assert seen and seen[-1] >= cancel_after and seen[-1] < RUN_STUDY_SHARE  # stopped inside run_study
    assert not (tmp_path / "out").exists()
    assert session.last_nodes == {} and session.last_results is None
    assert scene.GetNumberOfNodes() == before


# -------------------------------------------------------------------------------------- edited VOIs

def _erode(mask: np.ndarray) -> np.ndarray:
    from scipy.ndimage import binary_erosion

    return binary_erosion(mask, iterations=1)


def test_recompute_with_edited_vois_writes_into_a_new_folder(loaded, tmp_path):
    session, scene, first, out = loaded.session, loaded.scene, loaded.results, loaded.out
    study = loaded.study
    segmentations = session.segmentation_nodes_by_time_point()
    outputs_before, study_before = _file_state(out), _file_state(study)

    # Unedited: the segmentations hold the pipeline's own masks, so the results are the same to rounding.
    same = session.recompute_with_edited_vois(study, segmentations, tmp_path / "same", OPTIONS, load_into_scene=False)
    for voi, result in first.vois.items():
        assert same.vois[voi].volume_ml == pytest.approx(result.volume_ml, rel=1e-12), voi
        assert same.vois[voi].tia_bq_s == pytest.approx(result.tia_bq_s, rel=1e-9), voi
        assert same.vois[voi].mean_dose_gy == pytest.approx(result.mean_dose_gy, rel=1e-9), voi
    # Nothing but the outputs is written (no working copy of the study, no RTSTRUCT).
    assert sorted(p.name for p in (tmp_path / "same").rglob("*.dcm")) == [RTDOSE_FILE]
    assert not (tmp_path / "same-work").exists()

    # Edited: the liver is eroded by one voxel at every time point.
    edited_nodes = []
    for k, node in enumerate(segmentations):
        spect = session.time_point_items[k]["spect_image"]
        masks = mrml.masks_from_segmentation(node, spect)
        masks["Liver"] = _erode(masks["Liver"])
        edited_nodes.append(mrml.add_segmentation(scene, masks, spect, f"TP{k + 1} eroded",
                                                  colors=mrml.segment_colors(node)))
    target = edited_output_dir(tmp_path / "out")
    assert target == tmp_path / "out-edited"
    reports = []
    edited = session.recompute_with_edited_vois(study, edited_nodes, target, OPTIONS, load_into_scene=False,
                                                progress=lambda fraction, message: reports.append(fraction))
    assert reports == sorted(reports) and reports[-1] == 1.0
    assert edited.vois["Liver"].volume_ml < 0.95 * first.vois["Liver"].volume_ml
    assert edited.vois["Liver"].tia_bq_s < first.vois["Liver"].tia_bq_s
    assert edited.vois["Liver"].mean_dose_gy != pytest.approx(first.vois["Liver"].mean_dose_gy, rel=1e-6)
    assert edited.vois["Spleen"].volume_ml == pytest.approx(first.vois["Spleen"].volume_ml, rel=1e-12)
    saved = json.loads((target / RESULTS_FILE).read_text())
    assert saved["vois"]["Liver"]["volume_ml"] == pytest.approx(edited.vois["Liver"].volume_ml)
    assert _file_state(out) == outputs_before and _file_state(study) == study_before  # earlier run, inputs untouched

    with pytest.raises(StudyError, match="4 time points need one segmentation each"):
        session.recompute_with_edited_vois(study, edited_nodes[:2], tmp_path / "x", OPTIONS)
    with pytest.raises(OutputError, match="not empty"):
        session.recompute_with_edited_vois(study, edited_nodes, target, OPTIONS)
    assert not (tmp_path / "x").exists()
    # A mask on the wrong grid is refused by the pipeline with the VOI named.
    bad = [{"Liver": np.zeros((2, 2, 2), bool)}] * 4
    with pytest.raises(Exception, match="'Liver'.*shape"):
        session.run(study, tmp_path / "bad", OPTIONS, masks_per_time_point=bad, load_into_scene=False)


def test_segmentations_per_time_point_come_back_from_the_scene(loaded):
    session, scene = loaded.session, loaded.scene
    loaded_nodes = session.segmentation_nodes_by_time_point()
    # A session without loaded time points (e.g. after a .mrb was opened) finds them in the scene.
    other = DosimetrySession(scene)
    assert other.segmentation_nodes_by_time_point() == loaded_nodes
    spect = session.time_point_items[1]["spect_image"]
    replacement = mrml.add_segmentation(scene, mrml.masks_from_segmentation(loaded_nodes[1], spect), spect,
                                        "TP2 replacement")
    try:
        other.set_segmentation_for_time_point(1, replacement)
        assert other.segmentation_nodes_by_time_point()[1] is replacement
        assert DosimetrySession(scene).segmentation_nodes_by_time_point()[1] is replacement
        with pytest.raises(StudyError, match="time point 5 does not exist"):
            other.set_segmentation_for_time_point(4, replacement)
    finally:
        other.set_segmentation_for_time_point(1, loaded_nodes[1])  # as it was, for the other tests
    assert DosimetrySession(scene).segmentation_nodes_by_time_point() == loaded_nodes
    # The charts of the run are found in the scene by their names.
    tac, dvh = other.chart_nodes()
    assert tac is scene.GetFirstNodeByName("LuDosimetry TAC") and tac.IsA("vtkMRMLPlotChartNode")
    assert dvh is scene.GetFirstNodeByName("LuDosimetry DVH") and dvh.IsA("vtkMRMLPlotChartNode")
    assert DosimetrySession().segmentation_nodes_by_time_point() == []  # no scene


# ------------------------------------------------------------------------------------------- exports

def test_exports_refuse_to_overwrite_unless_asked(loaded, tmp_path):
    session, out = loaded.session, loaded.out
    target = tmp_path / "copy.dcm"
    assert session.export_file(out, RTDOSE_FILE, target) == target
    assert target.read_bytes() == (out / RTDOSE_FILE).read_bytes()
    target.write_bytes(b"mine")
    with pytest.raises(OutputError, match="exists; not overwritten"):
        session.export_file(out, RTDOSE_FILE, target)
    assert target.read_bytes() == b"mine"
    session.export_file(out, RTDOSE_FILE, target, overwrite=True)
    assert target.read_bytes() == (out / RTDOSE_FILE).read_bytes()
    report = session.export_file(out, RESULTS_FILE, tmp_path / "report.json")
    assert json.loads(report.read_text()) == json.loads((out / RESULTS_FILE).read_text())

    folder = tmp_path / "csv"
    folder.mkdir()
    dvh, table = session.export_csv(out, folder)
    assert (dvh, table) == (folder / DVH_FILE, folder / VOI_RESULTS_FILE)
    assert dvh.read_bytes() == (out / DVH_FILE).read_bytes()
    assert table.read_bytes() == (out / VOI_RESULTS_FILE).read_bytes()
    # One of the two exists: nothing is written.
    other = tmp_path / "csv2"
    other.mkdir()
    (other / VOI_RESULTS_FILE).write_text("mine")
    with pytest.raises(OutputError, match=VOI_RESULTS_FILE):
        session.export_csv(out, other)
    assert sorted(p.name for p in other.iterdir()) == [VOI_RESULTS_FILE]
    assert (other / VOI_RESULTS_FILE).read_text() == "mine"
    session.export_csv(out, other, overwrite=True)
    assert (other / VOI_RESULTS_FILE).read_bytes() == (out / VOI_RESULTS_FILE).read_bytes()
    assert not list(tmp_path.rglob(".*.tmp"))  # no temporary left

    with pytest.raises(OutputError, match="run the dosimetry first"):
        session.export_file(tmp_path / "no-run", RTDOSE_FILE, tmp_path / "x.dcm")
    with pytest.raises(OutputError, match="run the dosimetry first"):
        session.export_file("", RESULTS_FILE, tmp_path / "x.json")
    assert not (tmp_path / "x.dcm").exists() and not (tmp_path / "x.json").exists()


def test_csv_export_of_an_output_folder_without_voi_results(loaded, tmp_path):
    """An output folder of an earlier version has no voi_results.csv: it is made from results.json."""
    old = tmp_path / "old"
    shutil.copytree(str(loaded.out), str(old))
    (old / VOI_RESULTS_FILE).unlink()
    folder = tmp_path / "csv"
    folder.mkdir()
    _, table = loaded.session.export_csv(old, folder)
    saved = json.loads((old / RESULTS_FILE).read_text())
    assert table.read_text(encoding="utf-8") == result_tables.voi_results_csv_text(saved["vois"])
    fresh = list(csv.reader((loaded.out / VOI_RESULTS_FILE).read_text(encoding="utf-8").splitlines()))
    made = list(csv.reader(table.read_text(encoding="utf-8").splitlines()))
    assert made[0] == fresh[0] and [r[0] for r in made] == [r[0] for r in fresh]


def test_report_export_and_the_report_to_open(loaded, tmp_path):
    """The panel's "Export report" writes report.html, report.pdf and results.json into a folder (never over a
    file unasked); "Open report" opens the run's report.html, whose path the session gives."""
    session, out = loaded.session, loaded.out
    assert session.report_path() == Path(session.last_output_dir) / REPORT_HTML_FILE  # the last run's
    assert session.report_path(out) == out / REPORT_HTML_FILE
    folder = tmp_path / "report"
    folder.mkdir()
    written = session.export_report(out, folder)
    assert list(REPORT_EXPORT_FILES) == [REPORT_HTML_FILE, REPORT_PDF_FILE, RESULTS_FILE]
    assert written == [folder / name for name in REPORT_EXPORT_FILES]
    for path in written:
        assert path.read_bytes() == (out / path.name).read_bytes(), path.name
    # One of them exists: nothing is written unless asked.
    other = tmp_path / "other"
    other.mkdir()
    (other / REPORT_PDF_FILE).write_bytes(b"mine")
    with pytest.raises(OutputError, match=REPORT_PDF_FILE):
        session.export_report(out, other)
    assert sorted(p.name for p in other.iterdir()) == [REPORT_PDF_FILE] and (other / REPORT_PDF_FILE).read_bytes() == b"mine"
    session.export_report(out, other, overwrite=True)
    assert (other / REPORT_PDF_FILE).read_bytes() == (out / REPORT_PDF_FILE).read_bytes()

    # An output folder of an earlier version, without the report: built from its files, the folder unchanged.
    old = tmp_path / "old"
    shutil.copytree(str(out), str(old))
    for name in (REPORT_HTML_FILE, REPORT_PDF_FILE):
        (old / name).unlink()
    before = _file_state(old)
    built = tmp_path / "built"
    built.mkdir()
    html, pdf, results = session.export_report(old, built)
    assert html.read_text(encoding="utf-8").lstrip().lower().startswith("<!doctype html")
    assert pdf.read_bytes().startswith(b"%PDF") and results.read_bytes() == (old / RESULTS_FILE).read_bytes()
    assert _file_state(old) == before
    with pytest.raises(OutputError, match="run the dosimetry first"):
        session.report_path(old)  # nothing to open there
    with pytest.raises(OutputError, match="run the dosimetry first"):
        DosimetrySession().report_path()
    with pytest.raises(OutputError, match="run the dosimetry first"):
        session.export_report(tmp_path / "no-run", tmp_path)
    assert not list(tmp_path.rglob(".*.tmp"))


def _later_cycle(results_json: Path, folder: Path, weeks: int = 8) -> Path:
    """A copy of a run's results.json as the patient's next cycle: injected ``weeks`` later, the C<n> code of its
    series one higher."""
    data = json.loads(results_json.read_text(encoding="utf-8"))
    data["injection_time"] = (datetime.fromisoformat(data["injection_time"]) + timedelta(weeks=weeks)).isoformat()
    for tp in data["time_points"]:
        tp["description"] = re.sub(r"C(\d+)S", lambda m: f"C{int(m.group(1)) + 1}S", tp["description"])
    folder.mkdir()
    (folder / RESULTS_FILE).write_text(json.dumps(data), encoding="utf-8")
    return folder / RESULTS_FILE


def test_cycle_summary_of_results_files_fills_a_table_node(loaded, tmp_path):
    """The panel's Cycles section: the session reads the cycles' results.json, sums dose and BED per VOI (BED
    added per cycle), projects further cycles and shows the library's summary table as a table node."""
    from LuDosimetryLib.cycles import arithmetic_lines, summary_table_rows

    session, scene = loaded.session, loaded.scene
    first = loaded.out / RESULTS_FILE
    second = _later_cycle(first, tmp_path / "c2")
    summary = session.cycle_summary([second, first], next_activity_mbq=7400.0, kidney_risk_factors=True)
    assert [c.path for c in summary.cycles] == [str(first), str(second)]  # in cycle order
    assert summary.cycles[1].number == summary.cycles[0].number + 1 and summary.assumptions == []
    saved = json.loads(first.read_text(encoding="utf-8"))["vois"]
    kidney = {v.name: v for v in summary.vois}["Kidney_L"]
    assert kidney.cumulative_dose_gy == pytest.approx(2 * saved["Kidney_L"]["mean_dose_gy"])
    assert kidney.cumulative_bed_gy == pytest.approx(2 * saved["Kidney_L"]["bed_gy"])
    assert kidney.projection["limit_gy"] == 28.0 and summary.next_activity_gbq == pytest.approx(7.4)
    assert any(line.startswith("Kidney_L:") for line in arithmetic_lines(summary))

    rows = summary_table_rows(summary)
    table = session.cycles_table_node
    assert table is not None and table.GetScene() is scene
    assert [table.GetColumnName(c) for c in range(table.GetNumberOfColumns())] == rows[0]
    assert [[table.GetCellText(r, c) for c in range(len(rows[0]))] for r in range(table.GetNumberOfRows())] == rows[1:]
    # Computed again: the same node, new rows; no activity given: the mean of the cycles, a named assumption.
    count = scene.GetNumberOfNodesByClass("vtkMRMLTableNode")
    again = session.cycle_summary([first, second])
    assert session.cycles_table_node is table and scene.GetNumberOfNodesByClass("vtkMRMLTableNode") == count
    assert [a.what for a in again.assumptions] == ["activity of a further cycle"]
    assert {v.name: v for v in again.vois}["Kidney_L"].projection["limit_gy"] == 40.0
    from LuDosimetryLib.assumptions import StrictRefusal
    with pytest.raises(StrictRefusal):
        session.cycle_summary([first, second], strict=True)

    # Bad input: one line naming the file; another patient; nothing to sum.
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(StudyError) as refused:
        session.cycle_summary([first, bad])
    assert refused.value.path == str(bad)
    other = json.loads(second.read_text(encoding="utf-8"))
    other["patient_id"] = "SOMEONE-ELSE"
    (tmp_path / "other.json").write_text(json.dumps(other), encoding="utf-8")
    with pytest.raises(CycleError, match="different patients"):
        session.cycle_summary([first, tmp_path / "other.json"])
    with pytest.raises(CycleError, match="no results"):
        session.cycle_summary([])
    # Without a scene: the summary only.
    plain = DosimetrySession()
    assert len(plain.cycle_summary([first, second], 7400.0).cycles) == 2 and plain.cycles_table_node is None


def test_write_file_atomically_refuses_to_overwrite(tmp_path):
    target = tmp_path / "a.txt"
    assert write_file_atomically(target, b"one") == target and target.read_bytes() == b"one"
    with pytest.raises(OutputError, match="exists; not overwritten"):
        write_file_atomically(target, b"two")
    assert target.read_bytes() == b"one"
    write_file_atomically(target, b"three", overwrite=True)
    assert target.read_bytes() == b"three"
    with pytest.raises(OutputError, match="folder"):
        write_file_atomically(tmp_path, b"x", overwrite=True)
    with pytest.raises(OutputError, match="folder does not exist"):
        write_file_atomically(tmp_path / "missing" / "b.txt", b"x")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt"]  # no temporary left


def test_make_study_view_links_the_files(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    files = [tmp_path / "a" / "x.dcm", tmp_path / "b" / "x.dcm"]
    for k, f in enumerate(files):
        f.write_bytes(bytes([k]))
    view = make_study_view(files, tmp_path / "view")
    links = sorted(view.iterdir())
    assert [p.name for p in links] == ["000001_x.dcm", "000002_x.dcm"]  # same names do not collide
    assert all(p.is_symlink() for p in links) and [p.read_bytes() for p in links] == [b"\x00", b"\x01"]
    with pytest.raises(OutputError, match="not an empty folder"):
        make_study_view(files, view)
    with pytest.raises(StudyError, match="no files"):
        make_study_view([], tmp_path / "v2")
    with pytest.raises(StudyError, match="does not exist"):
        make_study_view([tmp_path / "nope.dcm"], tmp_path / "v3")
    assert not (tmp_path / "v2").exists() and not (tmp_path / "v3").exists()


def test_folder_conventions(tmp_path):
    assert default_output_dir(tmp_path / "patient01") == tmp_path / "patient01-dosimetry"
    assert edited_output_dir(tmp_path / "out") == tmp_path / "out-edited"
    assert reconstruction_dir(tmp_path / "out") == tmp_path / "out-recon"
    assert safe_folder_name("Doe Jane / 20240102 / Lu-177") == "Doe_Jane___20240102___Lu-177"
    assert safe_folder_name("///") == "study"


# ------------------------------------------------------------------------------------- result tables

INVENTORY_DOCUMENT = {
    "time_points": [{"index": 0, "hours_post_injection": 4.25}, {"index": 1, "hours_post_injection": None}],
    "series": [
        {"role": "spect_recon", "modality": "NM", "description": "SPECT 4h", "code": "C1S1D0", "time_point": 0,
         "files": 1, "form": None},
        {"role": "spect_projections", "modality": "NM", "description": "tomo", "code": None, "time_point": 1,
         "files": 3, "form": "unaltered"},
        {"role": "pet", "modality": "PT", "description": "Ga-68", "code": None, "time_point": None, "files": 90},
    ]}


def test_inventory_rows_and_projections():
    assert result_tables.inventory_rows(INVENTORY_DOCUMENT) == [
        {"time_point": "TP1", "hours_post_injection": 4.25, "role": "spect_recon", "modality": "NM",
         "description": "SPECT 4h", "code": "C1S1D0", "files": 1},
        {"time_point": "TP2", "hours_post_injection": None, "role": "spect_projections (unaltered)", "modality": "NM",
         "description": "tomo", "code": "", "files": 3},
        {"time_point": "", "hours_post_injection": None, "role": "pet", "modality": "PT", "description": "Ga-68",
         "code": "", "files": 90}]
    assert result_tables.has_projections(INVENTORY_DOCUMENT)
    assert not result_tables.has_projections({"series": INVENTORY_DOCUMENT["series"][::2]})
    assert result_tables.inventory_rows(None) == [] and not result_tables.has_projections(None)


def test_inventory_rows_follow_the_study_inventory(synthetic_study):
    inventory = DosimetrySession.inventory(synthetic_study)
    rows = result_tables.inventory_rows(inventory.to_json())
    assert len(rows) == len(inventory.series) > 0
    assert list(rows[0]) == [key for key, _ in result_tables.INVENTORY_COLUMNS]
    for row, series in zip(rows, inventory.series):
        assert row["modality"] == series.modality and row["description"] == series.description
        assert row["files"] == len(series.files) and row["role"].split(" ")[0] == series.role
        if series.time_point is None:
            assert row["time_point"] == "" and row["hours_post_injection"] is None
        else:
            assert row["time_point"] == f"TP{series.time_point + 1}"
            tp = inventory.time_points[series.time_point]
            assert row["hours_post_injection"] == pytest.approx(inventory.hours_post_injection(tp.acquisition_time))
    assert sorted({r["time_point"] for r in rows if r["role"] == "spect_recon"}) == ["TP1", "TP2", "TP3", "TP4"]
    assert not result_tables.has_projections(inventory.to_json())


def test_fit_rows_and_cell_text():
    vois = {"liver": SimpleNamespace(fit_model="bi_exponential", effective_half_life_h=60.5, tia_bq_s=1.0e12,
                                     tia_se_bq_s=None, tiac_h=40.1, fit_warnings=["a", "b"])}
    assert result_tables.fit_rows(vois) == [{"voi": "liver", "fit_model": "bi_exponential",
                                             "effective_half_life_h": 60.5, "tia_bq_s": 1.0e12, "tia_se_bq_s": None,
                                             "tiac_h": 40.1, "fit_warnings": "a; b"}]
    assert [key for key, _ in result_tables.FIT_COLUMNS] == [k for k in result_tables.fit_rows(vois)[0] if k != "voi"]
    assert result_tables.format_value("mean_dose_gy", 1.23456) == "1.235"
    assert result_tables.format_value("tia_bq_s", 1.5e12) == "1.500e+12"
    assert result_tables.format_value("tia_full_bq_s", 2.0e12) == "2.000e+12"
    assert result_tables.format_value("fit_model", "bi_exponential") == "bi_exponential"
    # No value: a dash in the panel's tables, never "None" or "nan" (the CSV keeps an empty cell).
    assert result_tables.format_value("effective_half_life_h", None) == result_tables.MISSING_TEXT == "—"
    assert result_tables.format_value("d2_gy", float("nan")) == "—"
    assert result_tables.format_value("max_dose_gy", float("inf")) == "inf"


def test_bed_eqd2_and_uncertainty_columns_with_a_dash_where_a_voi_has_none():
    """results.json VOIs carry BED/EQD2 (None, with radiobiology["note"], for a tissue without alpha/beta) and
    the relative uncertainties: the results table shows them; a missing one reads "—" in the panel."""
    titles = dict(result_tables.RESULT_COLUMNS)
    assert titles["bed_gy"] == "BED (Gy)" and titles["eqd2_gy"] == "EQD2 (Gy)"
    assert {"tia_uncertainty_pct", "mean_dose_uncertainty_pct"} <= set(titles)
    saved = {"Kidney_L": {"mean_dose_gy": 4.0, "bed_gy": 4.61234, "eqd2_gy": 2.7, "tia_uncertainty_pct": 12.5,
                          "mean_dose_uncertainty_pct": 13.0},
             "Spleen": {"mean_dose_gy": 3.0, "bed_gy": None, "eqd2_gy": None, "tia_uncertainty_pct": None,
                        "radiobiology": {"note": "tissue 'spleen' has no alpha/beta"}}}
    columns = result_tables.result_columns_for(saved)
    attributes = [attribute for attribute, _ in columns]
    rows = dict(result_tables.result_rows(saved, columns))
    shown = {name: [result_tables.format_value(a, v) for a, v in zip(attributes, values)]
             for name, values in rows.items()}
    assert shown["Kidney_L"][attributes.index("bed_gy")] == "4.612"
    assert shown["Kidney_L"][attributes.index("tia_uncertainty_pct")] == "12.5"
    for attribute in ("bed_gy", "eqd2_gy", "tia_uncertainty_pct", "mean_dose_uncertainty_pct", "d2_gy"):
        assert shown["Spleen"][attributes.index(attribute)] == "—", attribute
    assert not any(text in ("None", "nan", "") for cells in shown.values() for text in cells)
    csv_rows = list(csv.reader(result_tables.voi_results_csv_text(saved).splitlines()))
    assert csv_rows[0][1 + attributes.index("bed_gy")] == "BED (Gy)"
    assert csv_rows[2][1 + attributes.index("bed_gy")] == ""  # machine-readable: empty, not a dash


def test_result_columns_are_voi_result_fields():
    import dataclasses

    from LuDosimetryLib.pipeline import VoiResult

    fields = {f.name for f in dataclasses.fields(VoiResult)}
    for attribute, _ in result_tables.RESULT_COLUMNS + result_tables.OPTIONAL_RESULT_COLUMNS:
        assert attribute in fields, attribute
    assert {key for key, _ in result_tables.FIT_COLUMNS} - {"tia_se_bq_s", "fit_warnings"} <= fields


def test_result_rows_and_csv_text():
    full = {c: 1.0 for c, _ in result_tables.RESULT_COLUMNS}
    vois = {"liver": SimpleNamespace(**{**full, "mean_dose_gy": 4.5, "fit_model": "mono_exponential"}),
            "kidney_left": SimpleNamespace(mean_dose_gy=3.0, volume_ml=150.0)}
    rows = result_tables.result_rows(vois)
    columns = [c for c, _ in result_tables.RESULT_COLUMNS]
    assert [name for name, _ in rows] == ["liver", "kidney_left"]
    assert rows[0][1][columns.index("mean_dose_gy")] == 4.5
    assert rows[0][1][columns.index("fit_model")] == "mono_exponential"
    assert rows[1][1][columns.index("volume_ml")] == 150.0
    assert rows[1][1][columns.index("d98_gy")] is None  # an attribute the VOI lacks
    assert all(len(values) == len(columns) for _, values in rows)

    saved = {"liver": {"volume_ml": 1500.123456789, "fit_model": "mono_exponential", "d2_gy": None},
             "lesion, 1": {"volume_ml": 2.0}}
    rows = list(csv.reader(result_tables.voi_results_csv_text(saved).splitlines()))
    assert rows[0] == [result_tables.VOI_COLUMN] + [title for _, title in result_tables.RESULT_COLUMNS]
    assert len(rows) == 3 and rows[2][0] == "lesion, 1"
    assert rows[1][0] == "liver" and float(rows[1][1 + columns.index("volume_ml")]) == 1500.123456789
    assert rows[1][1 + columns.index("fit_model")] == "mono_exponential"
    assert rows[1][1 + columns.index("d2_gy")] == ""


def test_reduced_time_point_columns_only_when_a_run_has_them():
    full = {c: 1.0 for c, _ in result_tables.RESULT_COLUMNS}
    plain = {"Liver": SimpleNamespace(**full, tia_full_bq_s=None, reduced_relative_difference=None)}
    assert result_tables.result_columns_for(plain) == list(result_tables.RESULT_COLUMNS)
    reduced = {"Liver": SimpleNamespace(**full, tia_full_bq_s=2.0e12, reduced_relative_difference=-0.05),
               "Spleen": SimpleNamespace(**full)}
    columns = result_tables.result_columns_for(reduced)
    assert columns == list(result_tables.RESULT_COLUMNS) + list(result_tables.OPTIONAL_RESULT_COLUMNS)
    rows = dict(result_tables.result_rows(reduced, columns))
    assert rows["Liver"][-2:] == [2.0e12, -0.05] and rows["Spleen"][-2:] == [None, None]

    saved = {"Liver": {"volume_ml": 1.0, "tia_full_bq_s": 2.0e12, "reduced_relative_difference": -0.05},
             "Spleen": {"volume_ml": 2.0, "tia_full_bq_s": None}}
    rows = list(csv.reader(result_tables.voi_results_csv_text(saved).splitlines()))
    assert rows[0][-2:] == [title for _, title in result_tables.OPTIONAL_RESULT_COLUMNS]
    assert rows[1][-2:] == [repr(2.0e12), repr(-0.05)] and rows[2][-2:] == ["", ""]
    assert "TIA all time points (Bq·s)" not in result_tables.voi_results_csv_text({"Liver": {"volume_ml": 1.0}})


def test_voi_names_are_those_of_the_run(loaded):
    inventory = DosimetrySession.inventory(loaded.study)
    assert DosimetrySession.voi_names(inventory, 0) == list(loaded.results.vois)
    assert DosimetrySession.voi_names(inventory, 9) == list(loaded.results.vois)  # none there: every time point's


# ------------------------------------------------------------------------------------- DICOM database

class _DicomDatabase:
    """The four-plus-two methods of ctkDICOMDatabase (``slicer.dicomDatabase``) the session calls, over the
    inventory of a study folder (an object with that interface, not a stand-in module)."""

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


def test_dicom_database_studies_become_folders_of_links(synthetic_study, tmp_path):
    from LuDosimetryLib.io.inventory import scan_study

    original = scan_study(synthetic_study)
    database = _DicomDatabase(original)
    studies = DosimetrySession.dicom_studies(database)
    uids = sorted({s.study_instance_uid for s in original.series})
    assert [s["study_instance_uid"] for s in studies] == uids
    assert studies[0]["label"] == "Doe Jane / 20240102 / Lu-177 DOTATATE"
    assert studies[0]["patient_id"] == original.series[0].patient_id and studies[0]["patient_name"] == "Doe Jane"
    before = _file_state(synthetic_study)

    session = DosimetrySession()
    views = [session.study_view_from_database(s["study_instance_uid"], database, view_dir=tmp_path / f"view{k}")
             for k, s in enumerate(studies)]
    files = [f for view in views for f in view.iterdir()]
    assert files and all(f.is_symlink() for f in files)
    assert len(files) == sum(len(s.files) for s in original.series)
    one = scan_study(views[0])
    assert {s.series_instance_uid for s in one.series} == set(database.seriesForStudy(studies[0]["study_instance_uid"]))
    assert _file_state(synthetic_study) == before  # the database's files are not changed

    default = session.study_view_from_database(studies[0]["study_instance_uid"], database)
    try:
        assert default.name.startswith("ludosimetry-study-") and any(default.iterdir())
    finally:
        shutil.rmtree(str(default))
    with pytest.raises(StudyError, match="no files in the DICOM database"):
        session.study_view_from_database("1.2.3.4", database, view_dir=tmp_path / "none")
    with pytest.raises(OutputError, match="not an empty folder"):
        session.study_view_from_database(studies[0]["study_instance_uid"], database, view_dir=views[0])
    # A database without patients has no studies.
    assert DosimetrySession.dicom_studies(SimpleNamespace(patients=lambda: [])) == []


# ------------------------------------------------------------------------------------ reconstruction

def test_reconstruction_makes_a_study_view_with_the_new_series(synthetic_study, tmp_path, monkeypatch):
    """DosimetrySession.reconstruct over a stand-in LuDosimetryLib.recon.reconstruct_study (the real one is
    tested in test_recon): options passed through, the new series linked, the study's own reconstructions left out."""
    import pydicom

    import LuDosimetryLib.recon as recon
    from LuDosimetryLib.io.inventory import scan_study

    calls = []
    original = scan_study(synthetic_study)
    tp1 = original.get(original.time_points[0].spect_series_uids[0])
    new_uid = "1.2.826.0.1.3680043.8.498.1"

    def reconstruct_study(study_dir, out_dir, options, progress=None, overwrite=False):
        calls.append((Path(study_dir), Path(out_dir), options, overwrite))
        progress(0.5, "iterating")
        folder = Path(out_dir) / "RECON_01_test"
        folder.mkdir(parents=True, exist_ok=True)
        written = []
        for k, f in enumerate(tp1.files):
            ds = pydicom.dcmread(f)
            ds.SeriesInstanceUID = new_uid
            ds.SOPInstanceUID = f"{new_uid}.{k + 1}"
            ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
            ds.save_as(str(folder / f"NM_{k}.dcm"))
            written.append(folder / f"NM_{k}.dcm")
        return written

    monkeypatch.setattr(recon, "reconstruct_study", reconstruct_study)
    session = DosimetrySession()
    chosen = ReconOptions(algorithm="bsrem", iterations=3, subsets=6, scatter="dew", dew_k=0.5, psf=False)
    reports = []
    view = session.reconstruct(synthetic_study, tmp_path / "recon", chosen,
                               progress=lambda fraction, message: reports.append(fraction))
    assert view == tmp_path / "recon" / "study"
    (study_dir, out_dir, options, overwrite), = calls
    assert (study_dir, out_dir, options, overwrite) == (Path(synthetic_study), tmp_path / "recon", chosen, False)
    assert reports == sorted(reports) and reports[-1] == 1.0 and 0.95 * 0.5 in reports
    uids = {s.series_instance_uid for s in scan_study(view).series}
    assert uids == {s.series_instance_uid for s in original.series if s.role != "spect_recon"} | {new_uid}

    with pytest.raises(OutputError, match="earlier reconstruction") as refused:
        session.reconstruct(synthetic_study, tmp_path / "recon")
    assert refused.value.option == "overwrite" and len(calls) == 1
    with pytest.raises(OptionError) as refused:
        session.reconstruct(synthetic_study, tmp_path / "recon2", ReconOptions(iterations=0))
    assert refused.value.option == "iterations" and len(calls) == 1 and not (tmp_path / "recon2").exists()
    again = session.reconstruct(synthetic_study, tmp_path / "recon", overwrite=True)
    assert again == view and calls[-1][2] == ReconOptions() and calls[-1][3] is True
    assert {s.series_instance_uid for s in scan_study(view).series} == uids


# --------------------------------------------------------------------------------------- registration

@pytest.fixture(scope="module")
def moving_study(tmp_path_factory):
    """The analytic study with the patient shifted by up to 10 mm between time points and contours only at
    time point 1 (as in test_pipeline)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from study_builder import build_study

    root = tmp_path_factory.mktemp("moving_session") / "study"
    return build_study(root, shifts_mm=[(0, 0, 0), (8, -5, 4.8), (-6, 4, -4.8), (5, 6, 0)],
                       rtstruct_time_points=[0])


def _correlation(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a.ravel(), b.ravel())[0, 1])


def test_rigid_run_adds_the_registration_check_view(moving_study, scene, tmp_path):
    from LuDosimetryLib.io.images import read_spect, resample_to
    from LuDosimetryLib.io.inventory import scan_study

    session = DosimetrySession(scene)
    inventory = scan_study(moving_study.root)
    names = [s.name for s in moving_study.spheres]
    assert DosimetrySession.voi_names(inventory, 0) == names  # the model table's rows
    assert DosimetrySession.voi_names(inventory, 2) == names  # no RTSTRUCT at TP3: every time point's
    results = session.run(moving_study.root, tmp_path / "out", OPTIONS, registration="rigid", vois="reference-only",
                          time_points=(1, 3), tia_map="voxel")
    saved = json.loads((tmp_path / "out" / RESULTS_FILE).read_text())
    assert saved["registered"] == [2, 3, 4] and saved["time_points_used"] == [1, 3]
    assert sorted(results.registrations) == [1, 2, 3]

    # The results table shows the full fit beside the reduced one.
    titles = [title for _, title in result_tables.result_columns_for(results.vois)]
    rows = mrml.table_rows(session.last_nodes["table"])
    for name, voi in results.vois.items():
        assert voi.tia_full_bq_s is not None
        assert rows[name]["TIA all time points (Bq·s)"] == pytest.approx(voi.tia_full_bq_s, rel=1e-12)
        assert rows[name]["Reduced vs all time points (relative)"] == pytest.approx(
            voi.reduced_relative_difference, rel=1e-12)
        assert list(rows[name]) == titles

    # The check view: each registered time point's SPECT on the reference grid, next to the reference.
    check = session.registration_nodes
    assert sorted(check) == [1, 2, 3]
    reference = results.reference_spect
    for i, node in check.items():
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
        registered = _correlation(sitk.GetArrayFromImage(image), ref_array)
        scanned = _correlation(as_scanned, ref_array)
        assert registered > scanned + 0.02 and registered > 0.97, i
        assert node.GetAttribute(mrml.REGISTERED_TIME_POINT_ATTRIBUTE) == str(i)

    background, foreground = session.registration_check_layers(2)
    assert foreground is check[2] and background is session.last_nodes["spect"]
    # Found again from the scene alone (e.g. after a .mrb was loaded).
    other = DosimetrySession(scene)
    assert other.registered_spect_nodes() == check
    assert other.registration_check_layers(1) == (session.last_nodes["spect"], check[1])
    with pytest.raises(StudyError, match="time point 1 has no registered SPECT.*the reference is 1"):
        other.registration_check_layers(0)
    empty = mrml.create_scene()
    try:
        with pytest.raises(StudyError, match="no registered time point"):
            DosimetrySession(empty).registration_check_layers(1)
    finally:
        mrml.release_scene(empty)

    # Not loaded into the scene: no check view; the per-VOI model choice reaches the fits.
    plain = DosimetrySession(scene)
    plain.run(moving_study.root, tmp_path / "plain", OPTIONS, registration="rigid", vois="reference-only",
              models_per_voi={"Liver": ("trapezoid",)}, load_into_scene=False)
    assert plain.registration_nodes == {} and plain.last_nodes == {}
    assert plain.last_results.vois["Liver"].fit_model == "trapezoid"
    assert plain.last_results.vois["Kidney_L"].fit_model != "trapezoid"
