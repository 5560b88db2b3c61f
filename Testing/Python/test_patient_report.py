"""The per-patient report (issue #13, "Report"): every run writes ``report.html`` (self-contained) and
``report.pdf``; ``ludosimetry report OUT`` rebuilds both from the output folder alone.

Tested as a person sees it: the HTML is opened in headless Chromium and the screenshot checked not to be
blank; the PDF pages are rendered with ``pdftoppm`` and checked the same way (Debian ``chromium`` and
``poppler-utils``, installed by ``.ci/run``; the tests that need them are skipped where they are absent).
"""
from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from LuDosimetryLib.cli import main
from LuDosimetryLib.io.export import MARKER, foreign_files

from conftest import require_tool

REPORT_FILES = ("report.html", "report.pdf")


def _chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        if shutil.which(name):
            return shutil.which(name)
    pytest.skip("chromium is not installed (Debian package 'chromium'; .ci/run installs it)")


@pytest.fixture(scope="module")
def run_out(synthetic_study, tmp_path_factory) -> Path:
    """One run on the fast synthetic patient (shared by the tests of this module; read-only)."""
    out = tmp_path_factory.mktemp("report") / "out"
    assert main(["run", str(synthetic_study), "--out", str(out), "--quiet"]) == 0
    return out


def _copy(run_out: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(str(run_out), str(tmp_path / "out")))


def _marker_files(out: Path):
    return json.loads((out / MARKER).read_text())["files"]


def _not_blank(png: Path, what: str) -> None:
    from PIL import Image
    pixels = np.asarray(Image.open(png).convert("L"), dtype=float)
    assert pixels.var() > 100.0, f"{what} is blank (pixel variance {pixels.var():.1f})"
    assert np.mean(pixels < 200) > 0.005, f"{what} is nearly all white"


# ------------------------------------------------------------------------------- what a run writes

def test_run_writes_a_self_contained_report(run_out, synthetic_study):
    for name in REPORT_FILES:
        assert (run_out / name).stat().st_size > 10_000, name
        assert name in _marker_files(run_out)
    assert foreign_files(run_out) == []
    html = (run_out / "report.html").read_text(encoding="utf-8")
    res = json.loads((run_out / "results.json").read_text())
    # opens offline: no external resource, every image embedded
    assert not re.search(r"""(src|href)\s*=\s*["'](https?:|file:|//)""", html)
    assert "<link" not in html and "<script" not in html
    assert len(re.findall(r'<img [^>]*src="data:image/png;base64,', html)) >= 4
    # identity, administration, the per-VOI table with every VOI, series and provenance
    assert res["patient_id"] in html
    assert f"{res['injected_activity_bq'] / 1e6:.1f} MBq" in html
    table = html[html.index('id="voi-table"'):]
    table = table[:table.index("</table>")]
    for name in res["vois"]:
        assert f">{name}<" in table, name
    for column in ("Volume", "Mass", "TIA", "TIAC", "Model", "T_eff", "Mean dose", "D2", "D50", "D98",
                   "Gy/GBq", "u(TIA)", "u(D)", "BED", "EQD2"):
        assert column in table, column
    for tp in res["time_points"]:
        assert tp["spect_series_uid"] in html
    assert "LuDosimetry 0.1.0" in html or "0.1.0" in html
    assert "dose_method" in html and "reference_time_point" in html
    some_file = sorted(p for p in synthetic_study.rglob("*.dcm"))[0]
    assert hashlib.sha256(some_file.read_bytes()).hexdigest() in html


def test_results_json_records_options_inputs_and_software(run_out, synthetic_study):
    res = json.loads((run_out / "results.json").read_text())
    assert res["options"]["dose_method"] == "dvk" and "pvc" in res["options"] and "strict" in res["options"]
    assert res["software"]["LuDosimetry"] == "0.1.0"
    roles = {s["role"] for s in res["inputs"]["series"]}
    assert {"spect_recon", "rtstruct"} <= roles
    spect_uids = {s["series_uid"] for s in res["inputs"]["series"] if s["role"] == "spect_recon"}
    assert spect_uids == {tp["spect_series_uid"] for tp in res["time_points"]}
    root = Path(res["inputs"]["root"])
    n = 0
    for s in res["inputs"]["series"]:
        for f in s["files"]:
            assert hashlib.sha256((root / f["path"]).read_bytes()).hexdigest() == f["sha256"]
            n += 1
    assert n > 10


def test_report_html_renders_in_chromium(run_out, tmp_path):
    chromium = _chromium()
    shot = tmp_path / "shot.png"
    proc = subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                           f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={shot}",
                           "--window-size=1200,3000", (run_out / "report.html").resolve().as_uri()],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=120)
    assert shot.is_file(), proc.stderr.decode(errors="replace")[-2000:]
    _not_blank(shot, "the screenshot of report.html")


def test_report_pdf_pages_render(run_out, tmp_path):
    pdftoppm = require_tool("pdftoppm")
    subprocess.run([pdftoppm, "-png", "-r", "50", str(run_out / "report.pdf"), str(tmp_path / "page")],
                   check=True, timeout=120)
    pages = sorted(tmp_path.glob("page*.png"))
    assert len(pages) >= 4, pages
    for page in pages:
        _not_blank(page, page.name)


# ------------------------------------------------------------------------------ ludosimetry report OUT

def test_report_command_rebuilds_from_the_folder_alone(run_out, tmp_path, capsys):
    """``report OUT`` rebuilds both files from the folder: an older folder without the time points' images
    (said so), and values that later work adds to results.json (uncertainty, BED, EQD2) shown."""
    out = _copy(run_out, tmp_path)
    for name in REPORT_FILES:
        (out / name).unlink()
    shutil.rmtree(str(out / "time_points"))
    res = json.loads((out / "results.json").read_text())
    first = next(iter(res["vois"]))
    res["vois"][first].update(bed_gy=12.3456, eqd2_gy=9.8765, tia_uncertainty_pct=23.456,
                              mean_dose_uncertainty_pct=27.89)
    (out / "results.json").write_text(json.dumps(res), encoding="utf-8")
    assert main(["report", str(out)]) == 0
    for name in REPORT_FILES:
        assert (out / name).stat().st_size > 5_000
        assert name in _marker_files(out)
    assert foreign_files(out) == []
    assert not [p.name for p in out.iterdir() if p.name.endswith(".tmp")]
    html = (out / "report.html").read_text(encoding="utf-8")
    row = html[html.index(f"<td>{first}</td>"):]
    row = row[:row.index("</tr>")]
    for text in ("12.35", "9.88", "23.5", "27.9"):
        assert f">{text}<" in row, text
    assert "—" in html  # the other VOIs have none of them
    assert "not in this output folder" in html


def test_report_refuses_to_replace_a_users_file(run_out, tmp_path, capsys):
    out = _copy(run_out, tmp_path)
    marker = json.loads((out / MARKER).read_text())
    marker["files"] = [f for f in marker["files"] if f not in REPORT_FILES]  # an output from before reports
    (out / MARKER).write_text(json.dumps(marker), encoding="utf-8")
    (out / "report.pdf").unlink()
    (out / "report.html").write_text("my own notes", encoding="utf-8")
    capsys.readouterr()
    assert main(["report", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "report.html" in err[0] and "Traceback" not in err[0], err
    assert (out / "report.html").read_text(encoding="utf-8") == "my own notes"
    assert not (out / "report.pdf").exists()
    assert json.loads((out / MARKER).read_text()) == marker


@pytest.mark.parametrize("kind", ["empty", "plain", "missing", "dvh-output"])
def test_report_refuses_a_folder_that_is_not_a_run_output(kind, tmp_path, capsys):
    folder = tmp_path / "folder"
    if kind != "missing":
        folder.mkdir()
    if kind == "plain":
        (folder / "results.json").write_text("{}")
    if kind == "dvh-output":  # written by LuDosimetry, but not by a run
        from LuDosimetryLib.io.export import atomic_output_dir
        with atomic_output_dir(folder, overwrite=False) as tmp:
            (tmp / "results.json").write_text(json.dumps({"dose": "x", "vois": {}}))
    before = sorted(p.name for p in folder.iterdir()) if folder.exists() else None
    capsys.readouterr()
    assert main(["report", str(folder)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("ludosimetry: error: ") and str(folder) in err[0], err
    assert (sorted(p.name for p in folder.iterdir()) if folder.exists() else None) == before


#: A run's results.json with one entry of another shape (a hand edit, another tool's file): each ended in a
#: traceback (AttributeError, TypeError) of ``report`` or ``cycles``.
MISSHAPEN = {
    "a VOI not an object": ("vois", lambda res: {**res["vois"], next(iter(res["vois"])): 5}, "is not an object"),
    "time points not objects": ("time_points", lambda res: [1, 2], "'time_points' is not a list of objects"),
    "time points a number": ("time_points", lambda res: 3, "'time_points' is not a list of objects"),
    "options a list": ("options", lambda res: [], "'options' is not an object"),
}


@pytest.mark.parametrize("case", sorted(MISSHAPEN))
def test_a_misshapen_results_json_is_one_line_for_report_and_cycles(case, run_out, tmp_path, capsys):
    key, value, said = MISSHAPEN[case]
    out = _copy(run_out, tmp_path)
    res = json.loads((out / "results.json").read_text())
    res[key] = value(res)
    (out / "results.json").write_text(json.dumps(res), encoding="utf-8")
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    capsys.readouterr()
    for argv in (["report", str(out)],
                 ["cycles", str(run_out / "results.json"), str(out / "results.json"), "--out", str(tmp_path / "c")]):
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and said in err[0] and str(out / "results.json") in err[0], err
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before
    assert not (tmp_path / "c").exists()
