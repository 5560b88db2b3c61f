"""The headless script LuDosimetry/Scripts/run_study.py, run as a subprocess under plain Python with the PyPI
``slicer-core`` package (real MRML; no stand-in of any Slicer module exists or is allowed)."""
from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

slicer = pytest.importorskip("slicer")
if not hasattr(slicer, "vtkMRMLScene"):  # pragma: no cover
    pytest.skip("the installed 'slicer' package has no MRML (install slicer-core)", allow_module_level=True)

from LuDosimetryLib import options  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "LuDosimetry" / "Scripts" / "run_study.py"


def _run(*args, timeout=300):
    return subprocess.run([sys.executable, str(SCRIPT), *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, cwd=str(ROOT))


def test_script_installs_no_stand_in_modules():
    source = SCRIPT.read_text(encoding="utf-8")
    assert "sys.modules[" not in source
    for node in ast.walk(ast.parse(source)):
        # sys.modules[...] = ..., sys.modules.update/setdefault(...), types.ModuleType(...)
        if isinstance(node, (ast.Assign, ast.AugAssign, ast.AnnAssign)):
            for target in (node.targets if isinstance(node, ast.Assign) else [node.target]):
                assert not (isinstance(target, ast.Subscript) and ast.unparse(target.value) == "sys.modules"), \
                    f"line {node.lineno}: assigns into sys.modules"
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            owner = ast.unparse(node.func.value)
            assert not (owner == "sys.modules" and node.func.attr in ("update", "setdefault", "__setitem__")), \
                f"line {node.lineno}: fills sys.modules"
            assert ast.unparse(node.func) != "types.ModuleType", f"line {node.lineno}: makes a module"


def test_script_takes_every_option_of_ludosimetry_run():
    run = _run("--help", timeout=60)
    assert run.returncode == 0, run.stderr
    for declared in options.RUN_OPTIONS + options.OUTPUT_OPTIONS:
        if declared.flag:
            assert declared.flag in run.stdout, declared.flag


def test_script_writes_the_outputs_and_a_scene_bundle(synthetic_study, tmp_path):
    out = tmp_path / "out"
    run = _run("--study", synthetic_study, "--out", out, "--dose-method", "ldm", "--injected-activity-mbq", "7000")
    assert run.returncode == 0, run.stdout + run.stderr
    saved = json.loads((out / "results.json").read_text())
    assert set(saved["vois"]) == {"Liver", "Kidney_L", "Kidney_R", "Spleen", "Lesion_1", "Lesion_2"}
    # The options reached the run.
    assert saved["dose_method"] == "ldm" and saved["injected_activity_bq"] == pytest.approx(7.0e9)
    for name in ("dvh.csv", "voi_results.csv", "rtdose.dcm", "dose_gy.nrrd", "tia_bq_s_per_ml.nrrd"):
        assert (out / name).is_file(), name
    bundle = out / "scene.mrb"
    with zipfile.ZipFile(bundle) as z:
        mrml_files = [n for n in z.namelist() if n.endswith(".mrml")]
        assert len(mrml_files) == 1
        scene_text = z.read(mrml_files[0]).decode("utf-8")
    tags = re.findall(r"<(\w+)\s", scene_text)
    assert tags.count("Segmentation") == 4  # one per time point
    assert tags.count("PlotChart") == 2 and "Table" in tags and tags.count("Volume") >= 3
    assert "run_study: 6 VOIs" in run.stdout and "100%" in run.stdout

    # It opens: the scene reads back with the table holding results.json's mean doses.
    from LuDosimetryLib import mrml
    scene = mrml.load_mrb(bundle)
    try:
        rows = mrml.table_rows(scene.GetFirstNodeByName("LuDosimetry results"))
        assert list(rows) == list(saved["vois"])
        for voi, row in rows.items():
            # the table's .tsv in the bundle keeps 6 significant digits (vtkMRMLTableStorageNode)
            assert row["Mean dose, mass-weighted (Gy)"] == pytest.approx(saved["vois"][voi]["mean_dose_gy"],
                                                                         rel=1e-5)
        assert len(mrml.nodes_by_time_point(scene, "vtkMRMLSegmentationNode")) == 4
    finally:
        mrml.release_scene(scene)

    # A second run into the same folder is refused without --overwrite, with the CLI's one-line error.
    before = (out / "results.json").read_bytes()
    again = _run("--study", synthetic_study, "--out", out)
    assert again.returncode == 2
    last = again.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: {out}: output folder exists") and "--overwrite" in last
    assert (out / "results.json").read_bytes() == before


def test_script_without_time_points_loads_only_the_results(synthetic_study, tmp_path):
    out = tmp_path / "out"
    run = _run("--study", synthetic_study, "--out", out, "--dose-method", "ldm", "--no-time-points")
    assert run.returncode == 0, run.stdout + run.stderr
    with zipfile.ZipFile(out / "scene.mrb") as z:
        text = "".join(z.read(n).decode("utf-8") for n in z.namelist() if n.endswith(".mrml"))
    assert re.findall(r"<(\w+)\s", text).count("Segmentation") == 0


@pytest.mark.parametrize("argv, flag", [
    (["--pvc", "gtm"], "--psf-fwhm-mm"),
    (["--injected-activity-mbq", "0"], "--injected-activity-mbq"),
    (["--time-points", "2,x"], "--time-points"),
    (["--reference-time-point", "0"], "--reference-time-point"),
], ids=["gtm without PSF", "zero activity", "bad time points", "reference 0"])
def test_script_refuses_a_bad_option_naming_the_flag(argv, flag, tmp_path):
    study, out = tmp_path / "no-such-study", tmp_path / "out"
    run = _run("--study", study, "--out", out, *argv, timeout=120)
    assert run.returncode == 2
    lines = run.stderr.strip().splitlines()
    assert lines and lines[-1].startswith("error: ") and flag in lines[-1], run.stderr
    assert study.name not in lines[-1]  # the option's error, before the (missing) study is read
    assert not out.exists()


def test_script_argument_errors_exit_2(tmp_path):
    run = _run("--out", tmp_path / "o", timeout=60)  # --study missing
    assert run.returncode == 2 and "--study" in run.stderr
    run = _run("--study", tmp_path, "--out", tmp_path / "o", "--dose-method", "xyz", timeout=60)
    assert run.returncode == 2 and "--dose-method" in run.stderr
    assert not (tmp_path / "o").exists()


def test_script_bad_study_exits_2_with_one_line(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    run = _run("--study", empty, "--out", tmp_path / "out", timeout=120)
    assert run.returncode == 2
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and str(empty) in lines[0], run.stderr
    assert "Traceback" not in run.stderr
    assert not (tmp_path / "out").exists()
