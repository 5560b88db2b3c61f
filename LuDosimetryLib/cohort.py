"""Cohort runs on Dask: one ``ludosimetry run`` per patient-cycle, on a cluster of worker processes.

A cohort is a folder of study folders, or a CSV manifest (:func:`read_cohort`) naming each study with
optional per-study overrides (injected activity, injection time, cycle). :func:`run_cohort` runs it on a
``dask.distributed`` client (a ``LocalCluster`` of worker processes, or an existing scheduler):

1. one planning task per study (:func:`plan_study`) reads the study's headers for its patient and cycle
   (``C<n>`` code of the series descriptions, as :func:`LuDosimetryLib.cycles.cycle_number`; else the
   manifest's cycle; else "cycle1", a named assumption), and its fingerprint (:func:`fingerprint`: SHA-256
   of every file of the study, the run's options, the software versions);
2. one run task per patient-cycle (:func:`run_planned`): ``run_study`` + ``write_outputs``, exactly what
   ``ludosimetry run`` writes, into ``OUT/<patient>/<cycle>/`` (written atomically by
   :mod:`LuDosimetryLib.io.export`), plus :data:`TASK_FILE` with the fingerprint. A task whose output is
   complete and whose fingerprint is unchanged is skipped (resumable); a changed input reruns.

Failures are isolated: a study's error is one line in the summary (:data:`SUMMARY_FILE`,
:data:`FAILURES_FILE`) and the other studies go on. A task lost with its worker is rerun by Dask; the
atomic output folder means it leaves no half-written output. The per-VOI table of the cohort
(:func:`cohort_rows`: one row per patient × cycle × VOI) is written as :data:`CSV_FILE` and
:data:`PARQUET_FILE`, with each VOI's time-activity curve (:data:`TAC_COLUMNS`) for the population kinetics of
:mod:`LuDosimetryLib.population`. ``ludosimetry batch`` then draws the population plots and writes the cohort
report page from these files (:mod:`LuDosimetryLib.cohort_report`).

Dask, pandas and pyarrow (the ``cohort`` extra) are imported only here, when a batch runs.
"""
from __future__ import annotations

import csv
import hashlib
import json
import os
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

from . import __version__
from .errors import LuDosimetryError
from .options import parse_local_datetime

TASK_FILE = "cohort_task.json"
CSV_FILE = "cohort.csv"
PARQUET_FILE = "cohort.parquet"
SUMMARY_FILE = "cohort_summary.json"
FAILURES_FILE = "failures.txt"
#: Columns of a manifest; ``study`` is required, the others may be empty.
MANIFEST_COLUMNS = ("study", "injected_activity_mbq", "injection_time", "cycle")
INSTALL_HINT = 'python3 -m pip install "dask[distributed]" pandas pyarrow (or pip install -e ".[cohort]")'


class CohortError(LuDosimetryError):
    """The cohort (folder or manifest) or the cluster cannot be used."""


def require_dask():
    """The ``dask.distributed`` module; :class:`CohortError` naming what to install when it is missing."""
    from importlib import import_module
    try:
        distributed = import_module("dask.distributed")
        for name in ("pandas", "pyarrow"):  # the cohort table (csv, parquet)
            import_module(name)
    except ImportError as exc:
        raise CohortError(f"batch runs need dask.distributed, pandas and pyarrow ({exc.name} is missing): "
                          f"{INSTALL_HINT}") from None
    return distributed


# ------------------------------------------------------------------------------------- cohort input

@dataclass(frozen=True)
class CohortEntry:
    """One study of the cohort, with its overrides (None: from the headers / the batch's options)."""

    study: str
    injected_activity_mbq: Optional[float] = None
    injection_time: Optional[str] = None
    cycle: Optional[str] = None


def cycle_label(value, where: str = "") -> str:
    """"cycle<n>" from "2", "C2" or "cycle2" (manifest text or a cycle number)."""
    m = re.fullmatch(r"\s*(?:c|cycle)?\s*(\d+)\s*", str(value), re.IGNORECASE)
    if m is None or int(m.group(1)) < 1:
        raise CohortError(f"cycle {value!r} is not a cycle number (1, 2, ... or C2, cycle2)", where or None)
    return f"cycle{int(m.group(1))}"


def _manifest_entry(row: Dict[str, str], base: Path, where: str) -> CohortEntry:
    study = (row.get("study") or "").strip()
    if not study:
        raise CohortError("no study path", where)
    path = Path(study) if Path(study).is_absolute() else (base / study).absolute()
    mbq = (row.get("injected_activity_mbq") or "").strip()
    if mbq:
        try:
            value = float(mbq)
        except ValueError:
            value = float("nan")
        if not (value > 0 and value < float("inf")):
            raise CohortError(f"injected_activity_mbq {mbq!r} is not a positive number of MBq", where)
    when = (row.get("injection_time") or "").strip()
    if when:
        try:
            parse_local_datetime(when)
        except ValueError as exc:
            detail = f" ({exc})" if str(exc) else ""
            raise CohortError(f"injection_time {when!r} is not an ISO 8601 date and time{detail}", where) from None
    cycle = (row.get("cycle") or "").strip()
    return CohortEntry(study=str(path), injected_activity_mbq=float(mbq) if mbq else None,
                       injection_time=when or None, cycle=cycle_label(cycle, where) if cycle else None)


def _manifest_entries(path: Path) -> List[CohortEntry]:
    """The rows of a CSV manifest (:func:`read_cohort`), as a spreadsheet saves it
    (:mod:`~LuDosimetryLib.io.spreadsheet_csv`: its encoding, separator and decimal comma)."""
    from .io.spreadsheet_csv import csv_rows
    try:
        table = csv_rows(path.read_bytes(), comment="#")
    except (OSError, csv.Error) as exc:
        raise CohortError(f"cannot read the manifest ({exc.__class__.__name__})", path) from None
    if table is None:
        raise CohortError("cannot read the manifest: its text is neither UTF-8, UTF-16 nor Windows-1252", path)
    header = [c.strip() for c in table.rows[0]] if table.rows else []
    unknown = [c for c in header if c not in MANIFEST_COLUMNS]
    if "study" not in header or unknown:
        raise CohortError(f"a manifest's header names the columns {', '.join(MANIFEST_COLUMNS)} (study "
                          f"required); found {', '.join(header) or 'none'}", path)
    entries = []
    for i, row in enumerate(table.rows[1:], start=1):
        where = f"{path}: row {i}"
        if table.overlong(row):
            raise CohortError(f"{len(row)} values, the header has {len(header)} columns (a value holding the "
                              f"separator {table.separator!r}? quote it)", where)
        values = dict(zip(header, row))
        if values.get("injected_activity_mbq"):
            values["injected_activity_mbq"] = table.number_text(values["injected_activity_mbq"])
        entries.append(_manifest_entry(values, path.parent, where))
    return entries


def read_cohort(path) -> List[CohortEntry]:
    """The studies of a cohort: the sub-folders of a folder (hidden ones skipped, sorted by name), or the rows
    of a CSV manifest with a header of :data:`MANIFEST_COLUMNS` (``study`` required; relative paths are
    relative to the manifest's folder; lines starting with ``#`` are comments).

    Raises
    ------
    CohortError
        Nothing to run, an unknown column, a bad value (naming the manifest's line), a study given twice.
    """
    path = Path(path)
    if path.is_dir():
        entries = [CohortEntry(study=str(p.absolute())) for p in sorted(path.iterdir())
                   if p.is_dir() and not p.name.startswith(".")]
    elif path.is_file():
        entries = _manifest_entries(path)
    else:
        raise CohortError("is neither a folder of studies nor a CSV manifest", path)
    if not entries:
        raise CohortError("holds no studies", path)
    seen: Dict[str, int] = {}
    for e in entries:
        key = os.path.realpath(e.study)
        if key in seen:
            raise CohortError(f"study {e.study} is given twice", path)
        seen[key] = 1
    return entries


def study_options(options, entry: CohortEntry):
    """The run options of one study: the batch's, with the manifest's injected activity and time."""
    from .options import replace_options
    changes = {}
    if entry.injected_activity_mbq is not None:
        changes["injected_activity_bq"] = entry.injected_activity_mbq * 1e6
    if entry.injection_time is not None:
        changes["injection_time"] = parse_local_datetime(entry.injection_time)
    return replace_options(options, **changes) if changes else options


# ------------------------------------------------------------------------------------------ tasks

@dataclass
class TaskOutcome:
    """What became of one study: ``status`` "ran", "skipped" or "failed" (``error``: one line)."""

    study: str
    status: str = "failed"
    patient_id: str = ""
    cycle: str = ""
    folder: str = ""
    fingerprint: str = ""
    error: str = ""
    assumptions: List[str] = field(default_factory=list)
    seconds: float = 0.0

    def to_json(self) -> dict:
        return asdict(self)

    def failure_line(self) -> str:
        """The one line of a failed study: the study's folder, then the problem."""
        return self.error if self.error.startswith(self.study) else f"{self.study}: {self.error}"


def _error_line(exc: BaseException) -> str:
    from .options import cli_flag
    if isinstance(exc, LuDosimetryError):
        return exc.describe(cli_flag)
    text = " ".join(str(exc).split())
    return f"internal error: {type(exc).__name__}: {text}"


def fingerprint(study, options) -> str:
    """SHA-256 of what a study's run depends on: every file of the study folder (relative path and SHA-256 of
    its contents), the run's options (:func:`LuDosimetryLib.options.options_as_json`), the SHA-256 of the files the
    options name (``--kernel``, ``--population``, ``--kinetics-from``...) and the software versions
    (:func:`LuDosimetryLib.provenance.software_versions`)."""
    from .options import RUN_OPTIONS, options_as_json
    from .provenance import sha256_of_file, software_versions
    root = Path(study)
    files = [[p.relative_to(root).as_posix(), sha256_of_file(p)] for p in sorted(root.rglob("*")) if p.is_file()]
    # the contents of the files the options name (a kernel, a population.json, an earlier cycle...), not their names
    named = []
    for declared in RUN_OPTIONS:
        if declared.kind not in ("path", "repeated_path") or not getattr(options, declared.name, None):
            continue
        value = getattr(options, declared.name)
        for given in ([value] if isinstance(value, (str, os.PathLike)) else list(value)):
            given = Path(given)
            paths = sorted(q for q in given.rglob("*") if q.is_file()) if given.is_dir() else [given]
            named += [[declared.name, str(q), sha256_of_file(q) if q.is_file() else "missing"] for q in paths]
    data = {"files": files, "options": options_as_json(options), "software": software_versions()}
    if named:
        data["option_files"] = named
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode("utf-8")).hexdigest()


def _folder_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._") or "unknown"


def output_folder(out_root, patient_id: str, cycle: str) -> Path:
    """The output folder of one patient-cycle in a cohort's output: ``OUT/<patient>/<cycle>/`` (the PatientID
    with characters other than letters, digits, '.', '_' and '-' replaced by '_')."""
    return Path(out_root) / _folder_name(patient_id) / cycle


def _patient_and_cycle(entry: CohortEntry):
    """(PatientID, cycle label) of a study from its headers and the manifest; the cycle assumed "cycle1" (a
    named assumption) when neither gives one."""
    from .assumptions import assume
    from .cycles import cycle_number
    from .io.inventory import scan_study
    inv = scan_study(entry.study)
    dated = [s for s in inv.series if s.time_point is not None]
    counts: Dict[str, int] = {}
    for s in dated:
        if s.patient_id.strip():
            counts[s.patient_id.strip()] = counts.get(s.patient_id.strip(), 0) + 1
    if not counts:
        raise CohortError("no series carries a PatientID; the batch files outputs by patient", entry.study)
    patient = max(counts, key=counts.get)
    coded = cycle_number({"time_points": [{"description": s.description} for s in dated]}, entry.study)
    if coded is not None:
        if entry.cycle is not None and entry.cycle != f"cycle{coded}":
            raise CohortError(f"the manifest says {entry.cycle} but the series descriptions say C{coded}",
                              entry.study)
        return patient, f"cycle{coded}"
    if entry.cycle is not None:
        return patient, entry.cycle
    assume("cycle of the study (no C<n> code in the series descriptions, none in a manifest)", "cycle1",
           "batch default", entry.study)
    return patient, "cycle1"


def output_complete(folder, expected_fingerprint: str) -> bool:
    """Whether ``folder`` holds a whole output of LuDosimetry (every file its marker lists, nothing else) whose
    :data:`TASK_FILE` records ``expected_fingerprint``."""
    from .io.export import check_files_addable, foreign_files
    folder = Path(folder)
    if foreign_files(folder) != []:
        return False
    try:
        listed = check_files_addable(folder, [])
        recorded = json.loads((folder / TASK_FILE).read_text(encoding="utf-8")).get("fingerprint")
    except (LuDosimetryError, OSError, ValueError, AttributeError):
        return False
    return bool(listed) and all((folder / name).is_file() for name in listed) and recorded == expected_fingerprint


def plan_study(entry: CohortEntry, options, out_root: str) -> TaskOutcome:
    """Task 1 of a study (on a worker): its patient, cycle, output folder and fingerprint; ``status`` "skipped"
    when that output is complete and current, "" when it is to run, "failed" with the error line."""
    from .assumptions import recording
    t0 = time.monotonic()
    outcome = TaskOutcome(study=entry.study)
    try:
        opts = study_options(options, entry)
        with recording(strict=bool(opts.strict)) as log:
            outcome.patient_id, outcome.cycle = _patient_and_cycle(entry)
        outcome.assumptions = [a.message() for a in log.items]
        outcome.folder = str(output_folder(out_root, outcome.patient_id, outcome.cycle))
        outcome.fingerprint = fingerprint(entry.study, opts)
        outcome.status = "skipped" if output_complete(outcome.folder, outcome.fingerprint) else ""
    except Exception as exc:  # isolated: one line in the summary, the cohort goes on
        outcome.status, outcome.error = "failed", _error_line(exc)
    outcome.seconds = time.monotonic() - t0
    return outcome


def run_planned(planned: TaskOutcome, entry: CohortEntry, options) -> TaskOutcome:
    """Task 2 of a study (on a worker): ``ludosimetry run`` of it into its folder (replacing an earlier output
    of ours), then :data:`TASK_FILE`. Never raises: a failure is the outcome's one-line ``error``."""
    from .io.export import add_files_to_output
    from .pipeline import run_study, write_outputs
    t0 = time.monotonic()
    outcome = TaskOutcome(**{**asdict(planned), "status": "failed"})
    try:
        results = run_study(entry.study, study_options(options, entry))
        Path(planned.folder).parent.mkdir(parents=True, exist_ok=True)
        write_outputs(results, planned.folder, overwrite=True)
        task = {"fingerprint": planned.fingerprint, "study": os.path.abspath(entry.study),
                "patient_id": planned.patient_id, "cycle": planned.cycle, "version": __version__,
                "assumptions": planned.assumptions}
        add_files_to_output(planned.folder, {TASK_FILE: (json.dumps(task, indent=1) + "\n").encode("utf-8")})
        outcome.status = "ran"
    except Exception as exc:  # isolated: one line in the summary, the cohort goes on
        outcome.error = _error_line(exc)
    outcome.seconds = time.monotonic() - t0
    return outcome


# ------------------------------------------------------------------------------------ the cohort table

#: (column of cohort.csv, key of results.json "vois", factor).
_VOI_COLUMNS = (
    ("volume_ml", "volume_ml", 1.0), ("mass_g", "mass_g", 1.0), ("tia_mbq_h", "tia_bq_s", 1 / 3.6e9),
    ("tiac_h", "tiac_h", 1.0), ("fit_model", "fit_model", None), ("t_eff_h", "effective_half_life_h", 1.0),
    ("mean_dose_gy", "mean_dose_gy", 1.0), ("gy_per_gbq", "gy_per_gbq", 1.0),
    ("tia_uncertainty_pct", "tia_uncertainty_pct", 1.0),
    ("mean_dose_uncertainty_pct", "mean_dose_uncertainty_pct", 1.0),
    ("tissue", "tissue", None), ("bed_gy", "bed_gy", 1.0), ("eqd2_gy", "eqd2_gy", 1.0),
    ("d2_gy", "d2_gy", 1.0), ("d50_gy", "d50_gy", 1.0), ("d98_gy", "d98_gy", 1.0),
)


#: Columns of cohort.csv with a VOI's time-activity curve (what ``ludosimetry population`` fits): the radionuclide,
#: and every time point's hours p.i. and activity in the VOI (Bq, not decay-corrected), space-separated, in order.
TAC_COLUMNS = ("nuclide", "tac_hours_pi", "tac_activity_bq")


def tac_columns(results: dict, voi: dict) -> dict:
    """The :data:`TAC_COLUMNS` of one VOI from a results.json (``time_points`` hours and the VOI's
    ``activity_bq``); empty text where the results hold no curve."""
    hours = [t.get("hours_post_injection") for t in results.get("time_points", [])]
    acts = voi.get("activity_bq") or []
    ok = len(hours) == len(acts) and all(isinstance(x, (int, float)) for x in hours + list(acts))
    return {"nuclide": (results.get("options") or {}).get("nuclide") or "",
            "tac_hours_pi": " ".join(f"{float(h):.10g}" for h in hours) if ok else "",
            "tac_activity_bq": " ".join(f"{float(a):.10g}" for a in acts) if ok else ""}


def cohort_rows(outcomes: Sequence[TaskOutcome]) -> List[dict]:
    """One row per patient × cycle × VOI of the studies that ran or were skipped, from their results.json."""
    rows = []
    for o in outcomes:
        if o.status not in ("ran", "skipped"):
            continue
        results = json.loads((Path(o.folder) / "results.json").read_text(encoding="utf-8"))
        for voi, v in results.get("vois", {}).items():
            row = {"patient_id": o.patient_id, "cycle": o.cycle, "voi": voi,
                   "injected_activity_mbq": results["injected_activity_bq"] / 1e6}
            for column, key, factor in _VOI_COLUMNS:
                value = v.get(key)
                row[column] = value if (factor is None or value is None) else float(value) * factor
            row.update(tac_columns(results, v))
            row["study"], row["results"] = o.study, str(Path(o.folder) / "results.json")
            rows.append(row)
    return rows


def cohort_summary(outcomes: Sequence[TaskOutcome], options, workers: int, timing_s: Dict[str, float]) -> dict:
    """What :data:`SUMMARY_FILE` holds: the counts, every task's outcome, the failures' lines, the batch's options
    (:func:`LuDosimetryLib.options.options_as_json`), its workers and ``timing_s`` (planning, runs, after:
    seconds; "seconds" is their sum)."""
    from .options import options_as_json
    failures = [o.failure_line() for o in outcomes if o.status == "failed"]
    return {"software": __version__, "studies": len(outcomes),
            "ran": sum(o.status == "ran" for o in outcomes),
            "skipped": sum(o.status == "skipped" for o in outcomes),
            "failed": len(failures), "seconds": round(sum(timing_s.values()), 3), "timing_s": timing_s,
            "workers": workers, "options": options_as_json(options),
            "tasks": [o.to_json() for o in outcomes], "failures": failures}


def write_tables(out, outcomes: Sequence[TaskOutcome]) -> None:
    """:data:`CSV_FILE`, :data:`PARQUET_FILE` (:func:`cohort_rows`) and :data:`FAILURES_FILE` into ``out``, each
    atomically."""
    import pandas as pd

    from .io.export import atomic_file, write_file_atomically
    out = Path(out)
    columns = ["patient_id", "cycle", "voi", "injected_activity_mbq"] + [c for c, _, _ in _VOI_COLUMNS] + \
        list(TAC_COLUMNS) + ["study", "results"]
    table = pd.DataFrame(cohort_rows(outcomes), columns=columns)
    with atomic_file(out / CSV_FILE) as tmp:
        table.to_csv(tmp, index=False)
    with atomic_file(out / PARQUET_FILE) as tmp:
        table.to_parquet(tmp, index=False)
    failures = [o.failure_line() for o in outcomes if o.status == "failed"]
    write_file_atomically(out / FAILURES_FILE, "".join(f"{line}\n" for line in failures).encode("utf-8"),
                          overwrite=True)


# --------------------------------------------------------------------------------------- the batch

def open_client(workers: Optional[int] = None, scheduler: Optional[str] = None, memory_limit="auto"):
    """A Dask client: of the scheduler at ``scheduler`` (``tcp://host:port``), or of a new ``LocalCluster`` of
    ``workers`` single-threaded worker processes, each limited to ``memory_limit`` ("auto": the machine's
    memory shared among them; "4GB"...). Returns (client, cluster or None)."""
    import logging

    distributed = require_dask()
    if workers is not None and workers < 1:
        raise CohortError(f"--workers {workers}: give at least 1 worker")
    if scheduler:
        try:
            return distributed.Client(scheduler, timeout="20s"), None
        except (OSError, TimeoutError) as exc:
            raise CohortError(f"cannot reach the Dask scheduler ({' '.join(str(exc).split())[:200]})",
                              scheduler) from None
    from importlib.util import find_spec
    dashboard = ":0" if find_spec("bokeh") is not None else None  # the dashboard needs bokeh
    workers = workers or os.cpu_count() or 1
    # One task at a time per worker; its native thread pools (ITK, OpenMP, BLAS) share the cores among the
    # workers instead of each taking all of them.
    threads = str(max(1, (os.cpu_count() or 1) // workers))
    env = {name: threads for name in ("ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS", "OMP_NUM_THREADS",
                                      "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")}
    cluster = distributed.LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                                       memory_limit=memory_limit, dashboard_address=dashboard,
                                       silence_logs=logging.ERROR, env=env)
    return distributed.Client(cluster), cluster


def dashboard_link(client, cluster=None) -> str:
    """The Dask dashboard's address, or why there is none (a local cluster without bokeh)."""
    from importlib.util import find_spec
    if cluster is not None and find_spec("bokeh") is None:
        return "not available (python3 -m pip install bokeh)"
    return str(client.dashboard_link)


def _lost(entry: CohortEntry, exc: BaseException) -> TaskOutcome:
    return TaskOutcome(study=entry.study, error=f"task lost: {_error_line(exc)}")


def run_cohort(entries: Sequence[CohortEntry], out, options, client,
               report: Optional[Callable[[TaskOutcome], None]] = None, progress_bar: bool = False) -> dict:
    """Run a cohort on ``client`` into ``out``; returns the summary (also written to :data:`SUMMARY_FILE`).

    Parameters
    ----------
    entries : sequence of CohortEntry
    out : path-like
        The cohort's output folder (created): ``<patient>/<cycle>/`` per study, and the cohort files.
    options : RunOptions
        The options of every run (a manifest's overrides on top).
    client : dask.distributed.Client
    report : callable, optional
        Called with each study's :class:`TaskOutcome` as it finishes.
    progress_bar : bool
        Dask's progress bar on the terminal.
    """
    from .io.export import write_json

    distributed = require_dask()
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise CohortError("output path exists and is not a folder", out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    report = report or (lambda outcome: None)

    plans = client.map(plan_study, list(entries), options=options, out_root=str(out.absolute()), pure=False)
    outcomes: List[TaskOutcome] = []
    for entry, future in zip(entries, plans):
        try:
            outcomes.append(future.result())
        except Exception as exc:
            outcomes.append(_lost(entry, exc))
    by_folder: Dict[str, List[int]] = {}
    for i, o in enumerate(outcomes):
        if o.status != "failed":
            by_folder.setdefault(o.folder, []).append(i)
    for folder, indices in by_folder.items():
        if len(indices) > 1:
            studies = ", ".join(outcomes[i].study for i in indices)
            for i in indices:
                outcomes[i].status = "failed"
                outcomes[i].error = (f"{outcomes[i].study}: patient {outcomes[i].patient_id} {outcomes[i].cycle} is "
                                     f"also the patient and cycle of {studies}; give each study's cycle in a manifest")
    for o in outcomes:
        if o.status in ("skipped", "failed"):
            report(o)

    t_planned = time.monotonic()
    todo = [i for i, o in enumerate(outcomes) if o.status == ""]
    futures = {client.submit(run_planned, outcomes[i], entries[i], options, pure=False,
                             key=f"ludosimetry-run-{_folder_name(outcomes[i].patient_id)}-{outcomes[i].cycle}-"
                                 f"{outcomes[i].fingerprint[:12]}"): i for i in todo}
    if progress_bar and futures:
        distributed.progress(list(futures))
    for future in distributed.as_completed(list(futures)):
        i = futures[future]
        try:
            outcomes[i] = future.result()
        except Exception as exc:
            outcomes[i] = _lost(entries[i], exc)
        report(outcomes[i])

    t_ran = time.monotonic()
    write_tables(out, outcomes)
    t_end = time.monotonic()
    timing = {"planning": round(t_planned - t0, 3), "runs": round(t_ran - t_planned, 3),
              "after": round(t_end - t_ran, 3)}
    summary = cohort_summary(outcomes, options, len(client.scheduler_info().get("workers", {})), timing)
    write_json(out / SUMMARY_FILE, summary)
    return summary
