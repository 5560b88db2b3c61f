"""Output folders are never lost (issue #12, item 19).

A folder made at ``--out`` while a run writes survives; of two concurrent runs writing the same output
exactly one succeeds and the other refuses in one line; a ``kill -9`` while writing leaves the previous or
the new output complete, never a partial folder under the final name; the temporary siblings a killed run
leaves are removed by the next run; ``--overwrite`` replaces only what LuDosimetry wrote.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from LuDosimetryLib.errors import OutputError
from LuDosimetryLib.io import export
from LuDosimetryLib.io.export import MARKER, OWNER_FILE, atomic_output_dir, clean_stale_siblings

ROOT = Path(__file__).resolve().parents[2]


def _env():
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _hidden(parent: Path):
    return sorted(p.name for p in parent.iterdir() if p.name.startswith("."))


def _dead_pid() -> int:
    """The id of a process that has ended."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _complete(out: Path) -> int:
    """Check that ``out`` is one whole output of the writer below; return its generation."""
    marker = json.loads((out / MARKER).read_text())
    files = sorted(marker["files"])
    assert files == [f"f{i:02d}.txt" for i in range(20)], files
    generations = {(out / name).read_text() for name in files}
    assert len(generations) == 1, "files of different runs mixed in one output"
    text = generations.pop()
    assert text.count("\n") == 2000, "a file is incomplete"
    return int(text.split("\n", 1)[0])


# ------------------------------------------------------------------------------ a folder made by hand

@pytest.mark.parametrize("with_file", [True, False])
def test_folder_made_while_writing_survives(tmp_path, with_file):
    out = tmp_path / "results"
    with pytest.raises(OutputError, match="while the run was writing") as info:
        with atomic_output_dir(out) as tmp:
            (tmp / "results.json").write_text("{}")
            out.mkdir()  # the user makes the folder while the run writes
            if with_file:
                (out / "notes.txt").write_text("mine")
    assert str(out) in str(info.value) and "\n" not in str(info.value)
    assert out.is_dir() and not (out / "results.json").exists()
    assert [p.name for p in out.iterdir()] == (["notes.txt"] if with_file else [])
    if with_file:
        assert (out / "notes.txt").read_text() == "mine"
    assert _hidden(tmp_path) == []  # our temporary folder is gone


def test_folder_made_while_writing_survives_overwrite(tmp_path):
    """Even with overwrite, only a LuDosimetry output is replaced, judged at the final rename."""
    out = tmp_path / "results"
    with pytest.raises(OutputError, match="did not write"):
        with atomic_output_dir(out, overwrite=True) as tmp:
            (tmp / "results.json").write_text("{}")
            out.mkdir()
            (out / "notes.txt").write_text("mine")
    assert (out / "notes.txt").read_text() == "mine"
    assert _hidden(tmp_path) == []


def test_empty_folder_given_as_output_is_used(tmp_path):
    out = tmp_path / "results"
    out.mkdir()  # made for the run before it started: it is the output
    with atomic_output_dir(out) as tmp:
        (tmp / "a.txt").write_text("x")
    assert (out / "a.txt").read_text() == "x"
    assert json.loads((out / MARKER).read_text())["files"] == ["a.txt"]
    assert not (out / OWNER_FILE).exists()


def test_overwrite_replaces_only_what_ludosimetry_wrote(tmp_path):
    out = tmp_path / "results"
    with atomic_output_dir(out) as tmp:
        (tmp / "results.json").write_text("1")
    with atomic_output_dir(out, overwrite=True) as tmp:
        (tmp / "results.json").write_text("2")
    assert (out / "results.json").read_text() == "2"
    (out / "my_notes.txt").write_text("the physicist's notes")  # added to a LuDosimetry output by hand
    with pytest.raises(OutputError, match="did not write"):
        with atomic_output_dir(out, overwrite=True) as tmp:
            (tmp / "results.json").write_text("3")
    assert (out / "my_notes.txt").read_text() == "the physicist's notes"
    assert (out / "results.json").read_text() == "2"
    assert _hidden(tmp_path) == []


def test_overwrite_without_atomic_exchange(tmp_path, monkeypatch):
    """Where the system has no atomic rename flags (Windows, some network file systems) the same rules hold."""
    monkeypatch.setattr(export, "_native_rename", lambda *args: False)
    out = tmp_path / "results"
    with atomic_output_dir(out) as tmp:
        (tmp / "results.json").write_text("1")
    with atomic_output_dir(out, overwrite=True) as tmp:
        (tmp / "results.json").write_text("2")
    assert (out / "results.json").read_text() == "2"
    with pytest.raises(OutputError, match="while the run was writing"):
        with atomic_output_dir(tmp_path / "other") as tmp:
            (tmp_path / "other").mkdir()
            (tmp_path / "other" / "notes.txt").write_text("mine")
    assert (tmp_path / "other" / "notes.txt").read_text() == "mine"
    assert _hidden(tmp_path) == []


# ----------------------------------------------------------------------------------- concurrent runs

def test_concurrent_writers_exactly_one_wins(tmp_path):
    out = tmp_path / "results"
    n = 4
    barrier = threading.Barrier(n, timeout=30)
    outcome = {}

    def writer(k):
        try:
            with atomic_output_dir(out) as tmp:
                for i in range(20):
                    (tmp / f"f{i:02d}.txt").write_text(f"{k}\n" * 2000)
                barrier.wait()  # everybody has written; all publish at once
            outcome[k] = "ok"
        except OutputError as exc:
            outcome[k] = str(exc)

    threads = [threading.Thread(target=writer, args=(k,)) for k in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    winners = [k for k, v in outcome.items() if v == "ok"]
    assert len(outcome) == n and len(winners) == 1, outcome
    assert all("while the run was writing" in v for k, v in outcome.items() if k not in winners)
    assert _complete(out) == winners[0]
    assert _hidden(tmp_path) == []


_GATED_CLI = textwrap.dedent("""
    import sys, time
    from contextlib import contextmanager
    from pathlib import Path
    import LuDosimetryLib.report as report
    gate, n = Path(sys.argv[1]), 2
    real = report.atomic_output_dir

    @contextmanager
    def gated(*args, **kwargs):
        with real(*args, **kwargs) as tmp:
            yield tmp
            (gate / sys.argv[2]).touch()  # written; wait for the other run before the final rename
            t0 = time.monotonic()
            while len(list(gate.iterdir())) < n and time.monotonic() - t0 < 60:
                time.sleep(0.02)

    report.atomic_output_dir = gated
    from LuDosimetryLib.cli import main
    sys.exit(main(sys.argv[3:]))
""")


def test_two_concurrent_cli_runs_one_refuses_in_one_line(synthetic_study, tmp_path):
    out = tmp_path / "results"
    gate = tmp_path / "gate"
    gate.mkdir()
    args = ["run", str(synthetic_study), "--out", str(out), "--quiet", "--dose-method", "ldm"]
    procs = [subprocess.Popen([sys.executable, "-c", _GATED_CLI, str(gate), f"run{k}"] + args, env=_env(),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for k in range(2)]
    results = [p.communicate(timeout=300) + (p.returncode,) for p in procs]
    codes = sorted(rc for _, _, rc in results)
    assert codes == [0, 2], results
    _, err, _ = next(r for r in results if r[2] == 2)
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("ludosimetry: error: ") and str(out) in lines[0], err
    assert "Traceback" not in err
    res = json.loads((out / "results.json").read_text())  # the winner's output is there, whole
    assert res["vois"]
    marker = json.loads((out / MARKER).read_text())
    assert sorted(marker["files"]) == sorted(p.relative_to(out).as_posix() for p in out.rglob("*")
                                             if p.is_file() and p.name != MARKER)
    assert _hidden(tmp_path) == []


# ------------------------------------------------------------------------------------ killed runs

def test_stale_temporary_folders_of_a_killed_run_are_cleaned(tmp_path):
    host = export._host_tag()
    dead = _dead_pid()
    stale = tmp_path / f".results.ludosimetry-tmp.{host}.{dead}.dead0001"
    stale.mkdir()
    (stale / OWNER_FILE).write_text(json.dumps({"pid": dead}))
    (stale / "dose_gy.nrrd").write_text("half written")
    live = tmp_path / f".results.ludosimetry-tmp.{host}.{os.getppid()}.live0001"  # a run still writing
    live.mkdir()
    (live / OWNER_FILE).write_text("{}")
    lookalike = tmp_path / f".x.ludosimetry-tmp.{host}.{dead}.user0001"  # not ours: no owner file
    lookalike.mkdir()
    (lookalike / "thesis.docx").write_text("precious")
    other_host = tmp_path / f".results.ludosimetry-tmp.{'0' * 8 if host != '0' * 8 else '1' * 8}.{dead}.nfs00001"
    other_host.mkdir()
    (other_host / OWNER_FILE).write_text("{}")
    with atomic_output_dir(tmp_path / "results") as tmp:
        (tmp / "a.txt").write_text("x")
    assert not stale.exists()
    assert live.exists() and other_host.exists()
    assert (lookalike / "thesis.docx").read_text() == "precious"


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="zombies are told from /proc")
def test_a_killed_run_whose_parent_has_not_collected_it_counts_as_dead(tmp_path):
    """A run killed under a parent that has not waited for it yet (a dask worker started by a script) is a
    zombie: ``kill(pid, 0)`` still succeeds. Its temporary folder was kept by the next run (a flaky batch
    test: the rerun of a killed worker's study left the killed run's folder beside the output)."""
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        child.send_signal(signal.SIGKILL)
        deadline = time.monotonic() + 10
        while not export._is_zombie(child.pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert export._is_zombie(child.pid)
        assert not export._pid_alive(child.pid)
        stale = tmp_path / f".results.ludosimetry-tmp.{export._host_tag()}.{child.pid}.zomb0001"
        stale.mkdir()
        (stale / OWNER_FILE).write_text(json.dumps({"pid": child.pid}))
        assert clean_stale_siblings(tmp_path) == [stale] and not stale.exists()
    finally:
        child.wait()
    assert export._pid_alive(os.getppid())  # a running process stays alive


def test_previous_output_set_aside_by_a_killed_replacement_is_put_back(tmp_path):
    """Without an atomic exchange a replacement takes two renames; killed between them, the previous
    output waits in a hidden sibling and the next run puts it back."""
    out = tmp_path / "results"
    with atomic_output_dir(out) as tmp:
        (tmp / "results.json").write_text("previous")
    aside = tmp_path / f".results.ludosimetry-old.{export._host_tag()}.{_dead_pid()}.abcd1234"
    os.rename(out, aside)
    assert clean_stale_siblings(tmp_path) == [aside]
    assert (out / "results.json").read_text() == "previous"
    assert _hidden(tmp_path) == []


_WRITER = textwrap.dedent("""
    import sys
    from pathlib import Path
    from LuDosimetryLib.io.export import atomic_output_dir
    out, ready = Path(sys.argv[1]), Path(sys.argv[2])
    generation = int(sys.argv[3])
    while True:
        generation += 1
        with atomic_output_dir(out, overwrite=True) as tmp:
            for i in range(20):
                (tmp / f"f{i:02d}.txt").write_text(f"{generation}\\n" * 2000)
        ready.touch()
""")


def test_kill_9_while_writing_leaves_old_or_new_output_complete(tmp_path):
    out = tmp_path / "results"
    seen = 0
    for k, delay_s in enumerate((0.0, 0.013, 0.029, 0.047, 0.071, 0.11)):
        ready = tmp_path / f"ready{k}"
        proc = subprocess.Popen([sys.executable, "-c", _WRITER, str(out), str(ready), str(seen * 1000)],
                                env=_env())
        t0 = time.monotonic()
        while not ready.exists() and proc.poll() is None and time.monotonic() - t0 < 60:
            time.sleep(0.002)
        assert proc.poll() is None, "the writer ended by itself"
        time.sleep(delay_s)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        generation = _complete(out)  # never a partial folder under the final name
        assert generation > seen * 1000
        seen = generation
    # the next run removes whatever the killed writers left beside the output
    with atomic_output_dir(out, overwrite=True) as tmp:
        for i in range(20):
            (tmp / f"f{i:02d}.txt").write_text("0\n" * 2000)
    assert _complete(out) == 0
    left = {name: sorted(q.name for q in (tmp_path / name).iterdir()) for name in _hidden(tmp_path)}
    assert left == {}


# ---------------------------------------------------------------------------- outputs inside the inputs

def test_an_output_folder_inside_the_study_is_refused_before_any_work(synthetic_study_copy, tmp_path, capsys):
    """Inputs are never modified: an output inside the study folder wrote into it (and a second RT Dose joined
    the study's series when it was scanned again). Refused by run, batch and reconstruct, and by the writer
    itself (the panel and a batch's tasks write through it), through a symbolic link too."""
    from LuDosimetryLib import cli
    from LuDosimetryLib.pipeline import RunOptions, run_study, write_outputs
    from LuDosimetryLib.recon.reconstruct import ReconOptions, reconstruct_study

    study = synthetic_study_copy
    link = tmp_path / "link_to_study"
    link.symlink_to(study, target_is_directory=True)
    before = sorted(p.relative_to(study).as_posix() for p in study.rglob("*"))
    cohort = tmp_path / "cohort"
    cohort.mkdir()
    (cohort / "pat1").symlink_to(study, target_is_directory=True)
    for argv in (["run", str(study), "--out", str(study / "results")],
                 ["run", str(link), "--out", str(study / "results")],
                 ["batch", str(cohort), "--out", str(cohort / "results"), "--workers", "1"]):
        capsys.readouterr()
        assert cli.main(argv + ["--quiet"]) == 2, argv
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "lies inside the input folder" in err[0] and "Traceback" not in err[0], err
    assert not (cohort / "results").exists()
    with pytest.raises(OutputError, match="lies inside the input folder"):
        reconstruct_study(study, study / "recon", ReconOptions())
    results = run_study(study, RunOptions(dose_method="ldm"))
    with pytest.raises(OutputError, match="lies inside the input folder"):
        write_outputs(results, study / "VOIs" / "out")
    assert sorted(p.relative_to(study).as_posix() for p in study.rglob("*")) == before
