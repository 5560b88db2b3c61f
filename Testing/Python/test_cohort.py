"""Cohort runs on Dask (issue #15): ``ludosimetry batch`` on a LocalCluster and through a real scheduler.

Three synthetic patients (copies of the fast synthetic study with PatientIDs PAT1..PAT3): the batch's
results.json VOI numbers equal those of three single runs; a rerun skips them; a changed input reruns; a
broken study fails alone with its one line in the summary; a worker killed mid-batch loses nothing.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("dask.distributed")
pytest.importorskip("pandas")
pytest.importorskip("pyarrow")

from LuDosimetryLib import cli  # noqa: E402
from LuDosimetryLib.io.export import OWNER_FILE  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
PATIENTS = ("PAT1", "PAT2", "PAT3")


def _with_patient_id(src: Path, dst: Path, patient_id: str) -> Path:
    import pydicom
    shutil.copytree(str(src), str(dst))
    for f in dst.rglob("*.dcm"):
        ds = pydicom.dcmread(str(f))
        ds.PatientID = patient_id
        ds.save_as(str(f))
    return dst


@pytest.fixture(scope="module")
def cohort(synthetic_study, tmp_path_factory) -> Path:
    """A cohort folder of three patients (read-only: tests that change a study copy it)."""
    root = tmp_path_factory.mktemp("cohort") / "studies"
    for pid in PATIENTS:
        _with_patient_id(synthetic_study, root / pid.lower(), pid)
    return root


@pytest.fixture(scope="module")
def single_runs(cohort, tmp_path_factory) -> dict:
    """``ludosimetry run`` of each patient alone: PatientID → results.json, and the mean seconds of one run."""
    out = tmp_path_factory.mktemp("single")
    results, seconds = {}, []
    for pid in PATIENTS:
        t0 = time.monotonic()
        assert cli.main(["run", str(cohort / pid.lower()), "--out", str(out / pid), "--quiet"]) == 0
        seconds.append(time.monotonic() - t0)
        results[pid] = json.loads((out / pid / "results.json").read_text())
    return {"results": results, "seconds": sum(seconds) / len(seconds)}


def _batch_results(out: Path, pid: str) -> dict:
    return json.loads((out / pid / "cycle2" / "results.json").read_text())


def _summary(out: Path) -> dict:
    return json.loads((out / "cohort_summary.json").read_text())


def _status(out: Path) -> dict:
    return {Path(t["study"]).name: t["status"] for t in _summary(out)["tasks"]}


def _no_leftovers(out: Path) -> None:
    hidden = [str(p) for p in out.rglob(".*.ludosimetry-*.*")]
    assert hidden == [], hidden


def test_local_cluster_batch_equals_single_runs_and_resumes(cohort, single_runs, tmp_path, capsys):
    out = tmp_path / "out"
    t0 = time.monotonic()
    assert cli.main(["batch", str(cohort), "--out", str(out), "--workers", "2"]) == 0
    batch_s = time.monotonic() - t0
    printed = capsys.readouterr().out
    assert "dashboard: http" in printed
    for pid in PATIENTS:
        assert _batch_results(out, pid)["vois"] == single_runs["results"][pid]["vois"]
    # the table: one row per patient x cycle x VOI, csv and parquet alike
    import pandas as pd
    table = pd.read_csv(out / "cohort.csv")
    n_vois = len(single_runs["results"]["PAT1"]["vois"])
    assert len(table) == 3 * n_vois and set(table["patient_id"]) == set(PATIENTS)
    assert pd.read_parquet(out / "cohort.parquet")[["patient_id", "voi", "mean_dose_gy"]].equals(
        table[["patient_id", "voi", "mean_dose_gy"]])
    row = table[(table.patient_id == "PAT2") & (table.voi == "Kidney_L")].iloc[0]
    assert row.mean_dose_gy == single_runs["results"]["PAT2"]["vois"]["Kidney_L"]["mean_dose_gy"]
    assert row.cycle == "cycle2" and row.t_eff_h > 0 and row.gy_per_gbq > 0
    # the VOI's time-activity curve, for 'ludosimetry population'
    pat2 = single_runs["results"]["PAT2"]
    assert [float(x) for x in row.tac_hours_pi.split()] == pytest.approx(
        [tp["hours_post_injection"] for tp in pat2["time_points"]])
    assert [float(x) for x in row.tac_activity_bq.split()] == pytest.approx(pat2["vois"]["Kidney_L"]["activity_bq"])
    assert row.nuclide == "Lu-177"
    # the population plots and the cohort report page, linking each run's report (test_cohort_report.py: content)
    html = (out / "cohort_report.html").read_text(encoding="utf-8")
    for pid in PATIENTS:
        assert f'href="{pid}/cycle2/report.html"' in html
    for name in ("population_gy_per_gbq.png", "population_t_eff.png", "cohort_report.pdf"):
        assert (out / name).stat().st_size > 5_000, name
    assert set(_summary(out)["timing_s"]) == {"planning", "runs", "after"}
    print(f"\nbatch of 3 on 2 workers: {batch_s:.1f} s; single run {single_runs['seconds']:.1f} s; "
          f"N/W x single = {1.5 * single_runs['seconds']:.1f} s", file=sys.stderr)
    _no_leftovers(out)

    # (c) a rerun skips every complete, unchanged study and reruns the one whose input changed (the cohort
    # copied elsewhere: same contents but one file of pat3; a changed option is tested on the fingerprint)
    import pydicom
    mtime = (out / "PAT1" / "cycle2" / "results.json").stat().st_mtime_ns
    mtime3 = (out / "PAT3" / "cycle2" / "results.json").stat().st_mtime_ns
    changed = tmp_path / "changed"
    shutil.copytree(str(cohort), str(changed))
    ct = sorted((changed / "pat3").rglob("*.dcm"))[0]
    ds = pydicom.dcmread(str(ct))
    ds.InstitutionName = "Changed after the first batch"
    ds.save_as(str(ct))
    assert cli.main(["batch", str(changed), "--out", str(out), "--workers", "2", "--quiet"]) == 0
    assert _status(out) == {"pat1": "skipped", "pat2": "skipped", "pat3": "ran"}
    assert (out / "PAT1" / "cycle2" / "results.json").stat().st_mtime_ns == mtime
    assert (out / "PAT3" / "cycle2" / "results.json").stat().st_mtime_ns != mtime3
    assert len(pd.read_csv(out / "cohort.csv")) == 3 * n_vois
    _no_leftovers(out)


def test_fingerprint_follows_options_and_contents(cohort, tmp_path):
    from LuDosimetryLib.cohort import fingerprint
    from LuDosimetryLib.options import RunOptions, replace_options
    base = RunOptions()
    first = fingerprint(cohort / "pat1", base)
    assert fingerprint(cohort / "pat1", base) == first
    assert fingerprint(cohort / "pat1", replace_options(base, dose_method="ldm")) != first
    assert fingerprint(cohort / "pat2", base) != first  # another PatientID in the headers


def test_fingerprint_follows_the_code_not_only_its_version_number(cohort, monkeypatch):
    # a batch rerun after the code changed (same version string) runs again: an output is not kept as unchanged
    import LuDosimetryLib.provenance as provenance
    from LuDosimetryLib.cohort import fingerprint
    from LuDosimetryLib.options import RunOptions
    base = RunOptions()
    first = fingerprint(cohort / "pat1", base)
    assert len(provenance.software_versions()["LuDosimetry source sha256"]) == 64
    monkeypatch.setattr(provenance, "source_sha256", lambda: "0" * 64)
    assert fingerprint(cohort / "pat1", base) != first


def test_manifest_is_checked_before_any_work(tmp_path, capsys):
    manifest = tmp_path / "cohort.csv"
    manifest.write_text("study,injected_activity_mbq\nsomewhere,lots\n")
    assert cli.main(["batch", str(manifest), "--out", str(tmp_path / "out"), "--workers", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "row 1" in err[0] and "injected_activity_mbq 'lots'" in err[0]
    assert not (tmp_path / "out").exists()


@pytest.fixture
def dask_cluster(tmp_path):
    """A real ``dask scheduler`` and two ``dask worker`` processes (no nanny: killing one kills the worker) on
    127.0.0.1; yields (address, [worker processes]); everything is killed afterwards."""
    dask = shutil.which("dask") or pytest.skip("the dask command is not installed")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    scheduler_file = tmp_path / "scheduler.json"
    procs = []
    try:
        procs.append(subprocess.Popen([dask, "scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard",
                                       "--scheduler-file", str(scheduler_file)], env=env,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        deadline = time.monotonic() + 60
        while not scheduler_file.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        address = json.loads(scheduler_file.read_text())["address"]
        workers = []
        for _ in range(2):
            w = subprocess.Popen([dask, "worker", "--scheduler-file", str(scheduler_file), "--nthreads", "1",
                                  "--no-nanny", "--no-dashboard", "--host", "127.0.0.1"], env=env,
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=str(tmp_path))
            procs.append(w)
            workers.append(w)
        from dask.distributed import Client
        with Client(address, timeout="30s") as client:
            client.wait_for_workers(2, timeout=60)
        yield address, workers
    finally:
        for p in reversed(procs):
            if p.poll() is None:
                p.kill()
            p.wait(timeout=30)


def test_batch_through_scheduler_isolates_a_broken_study(cohort, single_runs, dask_cluster, tmp_path, capsys):
    address, _ = dask_cluster
    broken = shutil.copytree(str(cohort / "pat2"), str(tmp_path / "broken"))
    os.unlink(Path(broken) / "SPECT_Cts" / "scan2" / "spect" / "PT_0003.dcm")  # a missing slice
    manifest = tmp_path / "manifest.csv"
    manifest.write_text(f"study,cycle\n{cohort / 'pat1'},\n{broken},\n")
    out = tmp_path / "out"
    assert cli.main(["batch", str(manifest), "--out", str(out), "--scheduler", address, "--quiet"]) == 2
    assert _batch_results(out, "PAT1")["vois"] == single_runs["results"]["PAT1"]["vois"]
    failures = (out / "failures.txt").read_text().splitlines()
    assert len(failures) == 1 and "PT_0002.dcm" in failures[0] and "a slice is missing" in failures[0]
    assert failures[0] in capsys.readouterr().err
    assert _summary(out)["failed"] == 1 and _status(out) == {"pat1": "ran", "broken": "failed"}
    assert not (out / "PAT2").exists()
    _no_leftovers(out)


def _writer_of_a_temporary_output(out: Path, deadline: float):
    """The process id in the owner file of the first temporary output folder that appears under ``out`` (a run
    in :func:`write_outputs`), or None by ``deadline``."""
    while time.monotonic() < deadline:
        for owner in out.glob(f"*/.*.ludosimetry-tmp.*/{OWNER_FILE}"):
            try:
                return int(json.loads(owner.read_text())["pid"])
            except (OSError, ValueError, KeyError):
                pass  # being written
        time.sleep(0.01)
    return None


@pytest.mark.parametrize("moment", ["computing", "writing"])
def test_killing_a_worker_mid_batch_loses_nothing(cohort, single_runs, dask_cluster, tmp_path, moment):
    """A worker killed (SIGKILL) while its study computes, or while it writes the study's output folder: the
    study reruns on the other worker, and the killed run's temporary folder is gone at the end (it was kept
    when the killed worker was not yet collected by its parent: a zombie counted as alive)."""
    from dask.distributed import Client
    address, workers = dask_cluster
    out = tmp_path / "out"
    manifest = tmp_path / "manifest.csv"  # two studies, one per worker: the killed worker's study reruns
    manifest.write_text(f"study\n{cohort / 'pat1'}\n{cohort / 'pat2'}\n")
    batch = subprocess.Popen([sys.executable, "-m", "LuDosimetryLib.cli", "batch", str(manifest), "--out", str(out),
                              "--scheduler", address, "--quiet"], cwd=str(REPO),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        with Client(address, timeout="30s") as client:
            deadline = time.monotonic() + 120
            running = {}
            while time.monotonic() < deadline and len(running) < 2:
                running = {w: keys for w, keys in client.processing().items()
                           if any("ludosimetry-run" in str(k) for k in keys)}
                time.sleep(0.2)
            assert len(running) == 2, "both workers should be running a study"
            if moment == "computing":
                time.sleep(2.0)  # well into the run, before any output
                victim = workers[0]
            else:
                writer = _writer_of_a_temporary_output(out, time.monotonic() + 120)
                assert writer is not None, "no study started writing its output"
                victim = next(w for w in workers if w.pid == writer)
            victim.send_signal(signal.SIGKILL)
        stdout, stderr = batch.communicate(timeout=300)
    finally:
        if batch.poll() is None:
            batch.kill()
            batch.wait()
    assert batch.returncode == 0, stderr
    assert _summary(out)["ran"] == 2 and _summary(out)["failed"] == 0
    for pid in PATIENTS[:2]:
        assert _batch_results(out, pid)["vois"] == single_runs["results"][pid]["vois"]
        assert sorted(p.name for p in (out / pid).iterdir()) == ["cycle2"]
    _no_leftovers(out)


def test_missing_dask_is_one_line_naming_what_to_install(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "dask.distributed", None)  # as if not installed
    assert cli.main(["batch", str(tmp_path), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "dask.distributed" in err[0] and 'pip install "dask[distributed]"' in err[0]
    # the library itself imports without dask
    code = ("import sys; sys.modules['dask'] = None; sys.modules['distributed'] = None; "
            "import LuDosimetryLib.cli, LuDosimetryLib.cohort, LuDosimetryLib.pipeline")
    subprocess.run([sys.executable, "-c", code], cwd=str(REPO), check=True)
