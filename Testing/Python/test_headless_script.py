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


def test_recompute_with_edited_segmentations(study, tmp_path):
    from LuDosimetryLib import mrml

    module = _module()
    scene = mrml.create_scene()
    try:
        logic = module.LuDosimetryLogic(scene=scene)
        first = logic.run(study, tmp_path / "first", dose_method="ldm", load_time_points=True)
        segmentations = logic.segmentationNodesByTimePoint()
        assert len(segmentations) == 4 and all(s is not None for s in segmentations)
        before = sorted(p.name for p in Path(study).rglob("*"))

        # Unedited: the working copy reproduces the run within the contour round trip.
        same = logic.recomputeWithEditedVois(study, segmentations, tmp_path / "same", dose_method="ldm",
                                             load_into_scene=False)
        work = tmp_path / "same-work"
        assert sorted(p.name for p in (work / "vois").iterdir()) == [f"TP{k}_edited_VOIs.dcm" for k in range(1, 5)]
        assert all(p.is_symlink() for p in (work / "images").iterdir())
        for voi, result in first.vois.items():
            assert same.vois[voi].volume_ml == pytest.approx(result.volume_ml, rel=0.05), voi
            assert same.vois[voi].mean_dose_gy == pytest.approx(result.mean_dose_gy, rel=0.1), voi

        # Edited: the liver loses its upper half at every time point.
        edited_nodes = []
        for k, node in enumerate(segmentations):
            spect = logic.timePointItems[k]["spect_image"]
            masks = mrml.masks_from_segmentation(node, spect)
            liver = masks["Liver"]
            zs = np.nonzero(liver.any(axis=(1, 2)))[0]
            liver[zs[len(zs) // 2]:] = False  # the liver loses its upper half in every time point
            edited_nodes.append(mrml.add_segmentation(scene, masks, spect, f"TP{k + 1} edited",
                                                      colors=mrml.segment_colors(node)))
        edited = logic.recomputeWithEditedVois(study, edited_nodes, tmp_path / "edited", dose_method="ldm",
                                               work_dir=tmp_path / "edited-work")
        assert edited.vois["Liver"].volume_ml < 0.7 * first.vois["Liver"].volume_ml
        assert edited.vois["Spleen"].volume_ml == pytest.approx(first.vois["Spleen"].volume_ml, rel=0.05)
        saved = json.loads((tmp_path / "edited" / "results.json").read_text())
        assert saved["vois"]["Liver"]["volume_ml"] == pytest.approx(edited.vois["Liver"].volume_ml)
        assert sorted(p.name for p in Path(study).rglob("*")) == before  # inputs untouched

        from LuDosimetryLib.errors import OutputError, StudyError
        with pytest.raises(StudyError, match="4 time points need one segmentation each"):
            logic.recomputeWithEditedVois(study, edited_nodes[:2], tmp_path / "x")
        with pytest.raises(OutputError, match="not an empty folder"):
            logic.recomputeWithEditedVois(study, edited_nodes, tmp_path / "y", work_dir=tmp_path / "edited-work")
        assert not (tmp_path / "y").exists()
    finally:
        mrml.release_scene(scene)
