"""The cohort's population plots and report page (issue #15, "population plots, and a cohort report page").

A batch's output folder is put together from ONE run of the fast synthetic patient (no Dask): its folder copied as
PAT1/cycle1, PAT1/cycle2 and PAT2/cycle1 with the VOI numbers of the copies changed, one failed study and named
assumptions; the cohort table and summary are written by the batch's own functions, then the report. The page must
hold the numbers of those results (checked against values computed here from the results.json files), link each
run's report, list the failure and count the assumptions; it opens in headless Chromium and its PDF pages render,
neither blank. ``ludosimetry cohort-report OUT`` rebuilds it. (test_cohort.py checks that a real batch writes it.)
"""
from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("pandas")
pytest.importorskip("pyarrow")

from LuDosimetryLib.assumptions import Assumption  # noqa: E402
from LuDosimetryLib.cli import main  # noqa: E402
from LuDosimetryLib.cohort import SUMMARY_FILE, TaskOutcome, cohort_summary, write_tables  # noqa: E402
from LuDosimetryLib.cohort_report import (COHORT_REPORT_HTML, COHORT_REPORT_PDF, DOSE_PER_CYCLE_PLOT,  # noqa: E402
                                          GY_PER_GBQ_PLOT, T_EFF_PLOT, write_cohort_report)
from LuDosimetryLib.io.export import write_json  # noqa: E402
from LuDosimetryLib.options import RunOptions  # noqa: E402

from conftest import require_tool  # noqa: E402
from test_patient_report import _chromium, _not_blank  # noqa: E402

PLOTS = (GY_PER_GBQ_PLOT, T_EFF_PLOT, DOSE_PER_CYCLE_PLOT)
#: (patient, cycle, factor on the doses, hours added to T_eff) of each copy of the run.
COPIES = (("PAT1", "cycle1", 1.0, 0.0), ("PAT1", "cycle2", 1.25, 6.0), ("PAT2", "cycle1", 0.8, -4.0))
FAILED = "a slice is missing between PT_0002.dcm and PT_0004.dcm"
RUN_ASSUMPTION = {"what": "injection date inferred from the first scan's date", "value": "2024-01-02",
                  "source": "AcquisitionDate", "path": "SPECT_Cts/scan1"}


@pytest.fixture(scope="module")
def cohort_out(synthetic_study, tmp_path_factory) -> Path:
    """A batch's output folder (read-only) built from one run (module docstring)."""
    base = tmp_path_factory.mktemp("cohort_report")
    assert main(["run", str(synthetic_study), "--out", str(base / "run"), "--quiet"]) == 0
    out = base / "out"
    outcomes = []
    for pid, cycle, factor, hours in COPIES:
        folder = Path(shutil.copytree(str(base / "run"), str(out / pid / cycle)))
        res = json.loads((folder / "results.json").read_text())
        res["patient_id"] = pid
        for v in res["vois"].values():
            for key in ("mean_dose_gy", "gy_per_gbq", "bed_gy"):
                if v.get(key) is not None:
                    v[key] *= factor
            v["effective_half_life_h"] += hours
        study = str(base / "studies" / f"{pid}_{cycle}")
        planned = []
        if pid == "PAT2":
            res["assumptions"] = [RUN_ASSUMPTION]
            planned = [Assumption("cycle of the study (no C<n> code in the series descriptions, none in a manifest)",
                                  "cycle1", "batch default", study).message()]
        (folder / "results.json").write_text(json.dumps(res))
        outcomes.append(TaskOutcome(study=study, status="ran", patient_id=pid, cycle=cycle, folder=str(folder),
                                    fingerprint="0" * 64, assumptions=planned, seconds=12.5))
    broken = str(base / "studies" / "broken")
    outcomes.append(TaskOutcome(study=broken, status="failed", error=f"{broken}/SPECT_Cts/scan2/spect: {FAILED}"))
    write_tables(out, outcomes)
    write_json(out / SUMMARY_FILE, cohort_summary(outcomes, RunOptions(), 2, {"planning": 1.0, "runs": 30.0,
                                                                              "after": 0.5}))
    write_cohort_report(out)
    return out


def _results(out: Path):
    return {(pid, cycle): json.loads((out / pid / cycle / "results.json").read_text()) for pid, cycle, _, _ in COPIES}


def _table(html: str, table_id: str) -> str:
    table = html[html.index(f'id="{table_id}"'):]
    return table[:table.index("</table>")]


def _row(table: str, first_cell: str) -> str:
    row = table[table.index(f"<td>{first_cell}</td>"):]
    return row[:row.index("</tr>")]


def test_page_holds_the_cohorts_numbers_links_failures_and_assumptions(cohort_out):
    html = (cohort_out / COHORT_REPORT_HTML).read_text(encoding="utf-8")
    # opens offline: nothing external, every plot embedded
    assert not re.search(r"""(src|href)\s*=\s*["'](https?:|file:|//)""", html)
    assert "<link" not in html and "<script" not in html
    assert len(re.findall(r'<img [^>]*src="data:image/png;base64,', html)) == 3
    # the summary per organ type, against the results.json files: the kidneys are 2 VOIs x 3 patient-cycles
    results = _results(cohort_out)
    kidney = np.array([r["vois"][k]["gy_per_gbq"] for r in results.values() for k in ("Kidney_L", "Kidney_R")])
    row = _row(_table(html, "organ-summary"), "kidney")
    assert ">6<" in row and ">3<" in row
    assert f">{np.median(kidney):.3f} [{kidney.min():.3f}–{kidney.max():.3f}]<" in row, row
    assert f">{kidney.mean():.3f} ± {kidney.std(ddof=1):.3f}<" in row, row
    liver_t = np.array([r["vois"]["Liver"]["effective_half_life_h"] for r in results.values()])
    assert f">{np.median(liver_t):.1f} [{liver_t.min():.1f}–{liver_t.max():.1f}]<" in _row(
        _table(html, "organ-summary"), "liver")
    lesions = [n for n, v in results[("PAT1", "cycle1")]["vois"].items() if v.get("tissue") == "tumour"]
    assert len(lesions) >= 2 and f">{3 * len(lesions)}<" in _row(_table(html, "organ-summary"), "tumour")
    # the per-patient table links each run's report (relative), which is there
    patients = _table(html, "patients")
    for pid, cycle, _, _ in COPIES:
        assert f'href="{pid}/{cycle}/report.html"' in patients
        assert (cohort_out / pid / cycle / "report.html").is_file()
    assert ">failed<" in patients and ">broken<" in patients
    # the failure's one line, and the assumptions counted over the runs
    assert FAILED in html
    assumptions = _table(html, "assumptions")
    assert re.search(r"injection date inferred from the first scan&#x27;s date</td><td>2024-01-02</td>"
                     r'<td class="num">1</td>', assumptions), assumptions
    assert "cycle of the study" in assumptions and ">cycle1<" in assumptions
    # the cohort's identity
    assert "3 ran, 0 skipped (unchanged), 1 failed" in html and "cycle1, cycle2" in html


def test_population_plots_are_written_and_drawn(cohort_out):
    for name in PLOTS:  # the dose per cycle too: the cohort has two cycles
        assert (cohort_out / name).stat().st_size > 5_000, name
        _not_blank(cohort_out / name, name)
    assert not [p.name for p in cohort_out.iterdir() if p.name.startswith(".")]


def test_cohort_report_renders_in_chromium(cohort_out, tmp_path):
    chromium = _chromium()
    shot = tmp_path / "shot.png"
    proc = subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                           f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={shot}",
                           "--window-size=1200,2400", (cohort_out / COHORT_REPORT_HTML).resolve().as_uri()],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=120)
    assert shot.is_file(), proc.stderr.decode(errors="replace")[-2000:]
    _not_blank(shot, "the screenshot of cohort_report.html")


def test_cohort_report_pdf_pages_render(cohort_out, tmp_path):
    pdftoppm = require_tool("pdftoppm")
    subprocess.run([pdftoppm, "-png", "-r", "50", str(cohort_out / COHORT_REPORT_PDF), str(tmp_path / "page")],
                   check=True, timeout=120)
    pages = sorted(tmp_path.glob("page*.png"))
    assert len(pages) >= 4, pages  # text, and one page per plot
    for page in pages:
        _not_blank(page, page.name)


def test_cohort_report_command_rebuilds_from_the_folder(cohort_out, tmp_path, capsys):
    out = Path(shutil.copytree(str(cohort_out), str(tmp_path / "moved")))  # a moved folder: links still relative
    for name in PLOTS + (COHORT_REPORT_HTML, COHORT_REPORT_PDF):
        (out / name).unlink()
    res = json.loads((out / "PAT1" / "cycle1" / "results.json").read_text())
    assert main(["cohort-report", str(out)]) == 0
    for name in PLOTS + (COHORT_REPORT_HTML, COHORT_REPORT_PDF):
        assert (out / name).stat().st_size > 5_000, name
    html = (out / COHORT_REPORT_HTML).read_text(encoding="utf-8")
    assert 'href="PAT1/cycle1/report.html"' in html and str(out.absolute()) in html
    assert f">{res['injected_activity_bq'] / 1e6:.1f}<" in _table(html, "patients")


def test_cohort_report_refuses_a_folder_that_is_not_a_batch_output(synthetic_study, tmp_path, capsys):
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "cohort.csv").write_text("patient_id,cycle,voi\n")
    capsys.readouterr()
    assert main(["cohort-report", str(folder)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(folder) in err[0] and "cohort_summary.json" in err[0], err
    assert sorted(p.name for p in folder.iterdir()) == ["cohort.csv"]


@pytest.mark.parametrize("tasks, said", [([1, 2], "task 1 is not a batch task"),
                                          ([{"study": "/a", "status": "ran"}], "ran without its patient and cycle")])
def test_cohort_report_refuses_a_summary_whose_tasks_are_misshapen(cohort_out, tmp_path, capsys, tasks, said):
    """Tasks of another shape in cohort_summary.json ended in an AttributeError or KeyError traceback."""
    out = Path(shutil.copytree(str(cohort_out), str(tmp_path / "edited")))
    summary = json.loads((out / "cohort_summary.json").read_text())
    (out / "cohort_summary.json").write_text(json.dumps(dict(summary, tasks=tasks)))
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    capsys.readouterr()
    assert main(["cohort-report", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and said in err[0] and "cohort_summary.json" in err[0], err
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before


def test_a_batch_where_every_study_failed_still_gets_its_page(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    outcomes = [TaskOutcome(study=str(tmp_path / "a"), error=f"{tmp_path / 'a'}: no series carries a PatientID")]
    write_tables(out, outcomes)
    write_json(out / SUMMARY_FILE, cohort_summary(outcomes, RunOptions(), 1, {"planning": 0.1, "runs": 0.0,
                                                                              "after": 0.0}))
    written = {p.name for p in write_cohort_report(out)}
    assert written == {GY_PER_GBQ_PLOT, T_EFF_PLOT, COHORT_REPORT_HTML, COHORT_REPORT_PDF}
    html = (out / COHORT_REPORT_HTML).read_text(encoding="utf-8")
    assert "No VOI results" in html and "no series carries a PatientID" in html
    assert "0 ran, 0 skipped (unchanged), 1 failed" in html
