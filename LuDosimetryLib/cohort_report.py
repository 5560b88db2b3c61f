"""The cohort's population plots and report page, built from a batch's output folder alone.

``ludosimetry batch`` writes, beside ``cohort.csv`` and ``cohort_summary.json`` (:mod:`LuDosimetryLib.cohort`):

- :data:`GY_PER_GBQ_PLOT`, :data:`T_EFF_PLOT`: per organ type (the grouping of ``ludosimetry population``,
  :func:`LuDosimetryLib.population.group_of`: ``--organ-type`` VOI=TYPE, else the default organ names, every
  lesion together as "tumour", else the VOI's own name) the distribution over the cohort of Gy/GBq and of
  the effective half-life: a box plot (median, quartiles, whiskers at 1.5 IQR) with every VOI of every
  patient-cycle a point;
- :data:`DOSE_PER_CYCLE_PLOT` (a cohort of more than one cycle): the mean absorbed dose per organ type and
  cycle, ± 1 SD over the patients;
- :data:`COHORT_REPORT_HTML` (self-contained: CSS inline, figures as base64 PNG, opens offline) and
  :data:`COHORT_REPORT_PDF`: the cohort's identity (studies, patients, cycles, options, software), the summary
  per organ type (n, median and range, mean ± SD of Gy/GBq, T_eff, mean dose, its uncertainty and BED), the
  plots, the per-patient-cycle table linking to each run's ``report.html`` (relative links: the folder can be
  moved or shared as a whole), the failures with their one-line errors and the named assumptions of the runs
  (how many runs took each).

One content model and both renderings are those of the per-patient report
(:mod:`LuDosimetryLib.patient_report`: :class:`~LuDosimetryLib.patient_report.Heading`, ``Table``,
``FigureBlock``..., :func:`~LuDosimetryLib.patient_report.render_html`, ``render_pdf``); ``ludosimetry
cohort-report OUT`` rebuilds every file from the folder. No Qt, no pyplot state (Agg/PDF canvases only).
"""
from __future__ import annotations

import csv
import io
import json
import os
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from .cohort import CSV_FILE, FAILURES_FILE, SUMMARY_FILE, CohortError, output_folder
from .errors import StudyError
from .io.results_json import read_results_json
from .output_layout import REPORT_HTML_FILE, RESULTS_FILE
from .patient_report import finite_number

GY_PER_GBQ_PLOT = "population_gy_per_gbq.png"
T_EFF_PLOT = "population_t_eff.png"
DOSE_PER_CYCLE_PLOT = "population_dose_per_cycle.png"
COHORT_REPORT_HTML = "cohort_report.html"
COHORT_REPORT_PDF = "cohort_report.pdf"
#: Organ types shown first, in this order; the others follow by name, lesions ("tumour") last.
ORGAN_ORDER = ("kidney", "liver", "spleen")
#: Size of a standalone plot (inches) and its resolution.
PLOT_SIZE_IN = (9.0, 4.6)
PLOT_DPI = 110


# ----------------------------------------------------------------------------------- the folder's files

@dataclass
class CohortFolder:
    """What the cohort report reads from a batch's output folder.

    Attributes
    ----------
    path : Path
    rows : list of dict
        ``cohort.csv``: one row per patient × cycle × VOI (text, as written).
    summary : dict
        ``cohort_summary.json``.
    results : dict (patient_id, cycle) → dict
        Each run's ``results.json`` that is still in the folder.
    """

    path: Path
    rows: List[dict]
    summary: dict
    results: Dict[Tuple[str, str], dict] = field(default_factory=dict)


def read_cohort_folder(folder) -> CohortFolder:
    """Read what the report needs from the output folder of ``ludosimetry batch``.

    Raises
    ------
    CohortError
        The folder is not a batch's output (no ``cohort_summary.json`` / ``cohort.csv``), or one of them
        cannot be read.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise CohortError("is not a folder", folder)
    try:
        summary = json.loads((folder / SUMMARY_FILE).read_text(encoding="utf-8"))
        with open(folder / CSV_FILE, newline="", encoding="utf-8") as fh:
            rows = list(csv.DictReader(fh))
    except FileNotFoundError as exc:
        raise CohortError(f"is not the output folder of 'ludosimetry batch' (no {Path(exc.filename).name})",
                          folder) from None
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise CohortError(f"cannot be read ({type(exc).__name__}: {exc})", folder) from None
    if not isinstance(summary, dict) or not isinstance(summary.get("tasks"), list):
        raise CohortError("is not the summary of a batch (no tasks)", folder / SUMMARY_FILE)
    for i, task in enumerate(summary["tasks"], start=1):
        if not (isinstance(task, dict) and all(isinstance(task.get(k), str) for k in ("study", "status"))):
            raise CohortError(f"task {i} is not a batch task (an object with its study and status)",
                              folder / SUMMARY_FILE)
        if task["status"] in ("ran", "skipped") and not all(isinstance(task.get(k), str)
                                                            for k in ("patient_id", "cycle")):
            raise CohortError(f"task {i} ({task['study']}) {task['status']} without its patient and cycle",
                              folder / SUMMARY_FILE)
    cohort = CohortFolder(folder, rows, summary)
    for task in summary["tasks"]:
        if task.get("status") in ("ran", "skipped"):
            path = output_folder(folder, task["patient_id"], task["cycle"]) / RESULTS_FILE
            try:
                cohort.results[(task["patient_id"], task["cycle"])] = read_results_json(path)
            except StudyError:
                pass  # a run's folder removed, moved or edited: its assumptions are not counted (the page says so)
    return cohort


# ------------------------------------------------------------------------------------------- numbers

def organ_groups(rows: Sequence[dict], organ_types: Optional[Dict[str, str]] = None) -> Dict[str, List[dict]]:
    """The rows of ``cohort.csv`` by organ type (:func:`LuDosimetryLib.population.group_of`), in display order:
    :data:`ORGAN_ORDER`, then the others by name, "tumour" last."""
    from .population import group_of
    groups: Dict[str, List[dict]] = {}
    for row in rows:
        groups.setdefault(group_of(row["voi"], row.get("tissue"), organ_types), []).append(row)

    def rank(name: str):
        return (0, ORGAN_ORDER.index(name), "") if name in ORGAN_ORDER else ((2, 0, "") if name == "tumour"
                                                                             else (1, 0, name.lower()))
    return {name: groups[name] for name in sorted(groups, key=rank)}


def _organ_types_of(summary: dict) -> Optional[Dict[str, str]]:
    """The batch's ``--organ-type`` mapping, from the options in its summary."""
    from .kinetics.reduced import parse_organ_types
    given = (summary.get("options") or {}).get("organ_types")
    if isinstance(given, dict):
        return {str(k): str(v) for k, v in given.items()}
    try:
        return parse_organ_types(given) if given else None
    except ValueError:
        return None


def values(rows: Sequence[dict], column: str) -> np.ndarray:
    """The finite numbers of ``column`` in ``rows`` (empty cells and non-numbers left out)."""
    numbers = [finite_number(r.get(column)) for r in rows]
    return np.array([x for x in numbers if x is not None], dtype=float)


def describe(x: np.ndarray, spec: str) -> Tuple[str, str]:
    """("median [min–max]", "mean ± SD") of ``x`` formatted with ``spec``; "—" when empty (SD of one: "—")."""
    from .patient_report import MISSING
    if x.size == 0:
        return MISSING, MISSING
    median = f"{format(float(np.median(x)), spec)} [{format(float(x.min()), spec)}–{format(float(x.max()), spec)}]"
    sd = format(float(np.std(x, ddof=1)), spec) if x.size > 1 else MISSING
    return median, f"{format(float(np.mean(x)), spec)} ± {sd}"


# --------------------------------------------------------------------------------------------- plots

def _patient_cycles(rows: Sequence[dict]) -> int:
    return len({(r["patient_id"], r["cycle"]) for r in rows})


def draw_distribution(fig, groups: Dict[str, List[dict]], column: str, label: str, rect) -> None:
    """Box plot per organ type of ``column`` with every VOI of every patient-cycle a point (spread sideways by
    a fixed pattern, so that the plot is the same at each build)."""
    ax = fig.add_axes((rect[0], rect[1], rect[2] - rect[0], rect[3] - rect[1]))
    names = [n for n in groups if values(groups[n], column).size]
    if not names:
        ax.text(0.5, 0.5, "no values in the cohort table", ha="center", va="center", transform=ax.transAxes)
        ax.set_axis_off()
        return
    data = [values(groups[n], column) for n in names]
    ax.boxplot(data, positions=range(1, len(names) + 1), widths=0.5, showfliers=False,
               medianprops={"color": "C3", "lw": 1.5}, boxprops={"color": "0.35"}, whiskerprops={"color": "0.35"},
               capprops={"color": "0.35"})
    for k, x in enumerate(data, start=1):
        offsets = ((np.arange(x.size) * 0.618034) % 1.0 - 0.5) * 0.36  # golden-ratio spread, deterministic
        ax.plot(k + offsets, x, "o", ms=4, alpha=0.75, color=f"C{(k - 1) % 10}", mec="k", mew=0.3)
    ax.set_xticks(range(1, len(names) + 1))
    ax.set_xticklabels([f"{n}\n(n={v.size}, {_patient_cycles(groups[n])} pc)" for n, v in zip(names, data)],
                       fontsize=7)
    ax.set_ylabel(label, fontsize=8)
    ax.set_ylim(bottom=0)
    ax.grid(True, axis="y", alpha=0.3)
    ax.tick_params(labelsize=7)


def cycles_of(rows: Sequence[dict]) -> List[str]:
    """The cycles of the cohort table, by number ("cycle1", "cycle2"...)."""
    def number(label: str) -> int:
        digits = "".join(c for c in label if c.isdigit())
        return int(digits) if digits else 0
    return sorted({r["cycle"] for r in rows}, key=number)


def draw_dose_per_cycle(fig, groups: Dict[str, List[dict]], rect) -> None:
    """Mean absorbed dose (Gy) per organ type and cycle, error bars ± 1 SD over the VOIs of the patients."""
    ax = fig.add_axes((rect[0], rect[1], rect[2] - rect[0], rect[3] - rect[1]))
    cycles = cycles_of([r for rows in groups.values() for r in rows])
    for k, (name, rows) in enumerate(groups.items()):
        means, sds = [], []
        for cycle in cycles:
            x = values([r for r in rows if r["cycle"] == cycle], "mean_dose_gy")
            means.append(float(np.mean(x)) if x.size else np.nan)
            sds.append(float(np.std(x, ddof=1)) if x.size > 1 else 0.0)
        ax.errorbar(np.arange(len(cycles)) + 0.04 * (k - len(groups) / 2), means, yerr=sds, marker="o", ms=4,
                    capsize=3, lw=1.2, color=f"C{k % 10}", label=name)
    ax.set_xticks(range(len(cycles)))
    ax.set_xticklabels(cycles, fontsize=7)
    ax.set_ylabel("mean absorbed dose (Gy)", fontsize=8)
    ax.set_ylim(bottom=0)
    ax.grid(True, alpha=0.3)
    ax.tick_params(labelsize=7)
    ax.legend(fontsize=7)


def plot_png(draw) -> bytes:
    """A standalone PNG (:data:`PLOT_SIZE_IN`, :data:`PLOT_DPI`) of ``draw(fig, rect)``."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=PLOT_SIZE_IN, dpi=PLOT_DPI)
    FigureCanvasAgg(fig)
    draw(fig, (0.08, 0.2, 0.98, 0.95))
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()


def population_plots(cohort: CohortFolder) -> Dict[str, Tuple[str, str, object]]:
    """File name → (title, caption, ``draw(fig, rect)``) of each population plot of the cohort (the dose per
    cycle only for a cohort of more than one cycle)."""
    groups = organ_groups(cohort.rows, _organ_types_of(cohort.summary))
    each = ("Each point is one VOI of one patient-cycle (n: VOIs, pc: patient-cycles); boxes: median and "
            "quartiles, whiskers to 1.5 IQR.")
    plots = {
        GY_PER_GBQ_PLOT: ("Absorbed dose per administered activity",
                          f"Absorbed dose per administered activity (Gy/GBq) per organ type. {each}",
                          lambda fig, rect: draw_distribution(fig, groups, "gy_per_gbq", "Gy/GBq", rect)),
        T_EFF_PLOT: ("Effective half-life", f"Effective half-life (h) of the slowest phase per organ type. {each}",
                     lambda fig, rect: draw_distribution(fig, groups, "t_eff_h", "effective half-life (h)",
                                                         rect)),
    }
    if len(cycles_of(cohort.rows)) > 1:
        plots[DOSE_PER_CYCLE_PLOT] = ("Mean absorbed dose per cycle",
                                      "Mean absorbed dose per organ type and cycle (Gy), ± 1 SD over the VOIs of "
                                      "the patients of that cycle.", lambda fig, rect: draw_dose_per_cycle(
                                          fig, groups, rect))
    return plots


# --------------------------------------------------------------------------------------------- blocks

#: (header, column of cohort.csv, format) of the summary per organ type.
SUMMARY_COLUMNS = (("Gy/GBq", "gy_per_gbq", ".3f"), ("T_eff (h)", "t_eff_h", ".1f"),
                   ("Mean dose (Gy)", "mean_dose_gy", ".2f"), ("u(D) (%)", "mean_dose_uncertainty_pct", ".1f"),
                   ("BED (Gy)", "bed_gy", ".2f"))


def organ_summary_table(groups: Dict[str, List[dict]]):
    """Per organ type: VOIs, patient-cycles, and per :data:`SUMMARY_COLUMNS` median [range] and mean ± SD."""
    from .patient_report import Table
    header = ["Organ type", "VOIs", "Patient-cycles"]
    for name, _, _ in SUMMARY_COLUMNS:
        header += [f"{name} median [range]", f"{name} mean ± SD"]
    rows = []
    for name, group in groups.items():
        row = [name, str(len(group)), str(_patient_cycles(group))]
        for _, column, spec in SUMMARY_COLUMNS:
            row += list(describe(values(group, column), spec))
        rows.append(row)
    return Table(header, rows, table_id="organ-summary")


def _task_folder_link(cohort: CohortFolder, task: dict) -> str:
    """The relative link from the cohort folder to a run's report.html ("" when the report is not there)."""
    folder = output_folder(cohort.path, task["patient_id"], task["cycle"])
    if not (folder / REPORT_HTML_FILE).is_file():
        return ""
    return Path(os.path.relpath(folder / REPORT_HTML_FILE, cohort.path)).as_posix()


def patient_table(cohort: CohortFolder):
    """One row per study: patient, cycle, status, VOIs, administered activity, seconds, assumptions, report."""
    from .patient_report import MISSING, Table
    rows, links = [], []
    for task in sorted(cohort.summary["tasks"], key=lambda t: (t.get("patient_id", ""), t.get("cycle", ""))):
        res = cohort.results.get((task.get("patient_id"), task.get("cycle")), {})
        activity = finite_number(res.get("injected_activity_bq"))
        link = _task_folder_link(cohort, task) if task.get("status") in ("ran", "skipped") else ""
        rows.append([task.get("patient_id") or MISSING, task.get("cycle") or MISSING, task.get("status", ""),
                     str(len(res.get("vois", {}))) if res else MISSING,
                     f"{activity / 1e6:.1f}" if activity else MISSING, f"{float(task.get('seconds', 0)):.1f}",
                     str(len(res.get("assumptions") or []) + len(task.get("assumptions") or [])),
                     link or MISSING, Path(task.get("study", "")).name])
        links.append(link)
    return Table(["Patient", "Cycle", "Status", "VOIs", "Administered (MBq)", "Seconds", "Assumptions",
                  "Report", "Study"], rows, table_id="patients", links=links, link_column=7)


def assumption_counts(cohort: CohortFolder) -> List[Tuple[str, List[str], int]]:
    """(what was assumed, the values used, how many runs took it) over the batch, most frequent first: the
    runs' ``results.json`` assumptions and those of the batch's planning (the cycle of a study)."""
    taken: Dict[str, Tuple[set, set]] = {}
    for task in cohort.summary["tasks"]:
        key = (task.get("patient_id"), task.get("cycle"))
        for a in (cohort.results.get(key) or {}).get("assumptions") or []:
            entry = taken.setdefault(str(a.get("what", "")), (set(), set()))
            entry[0].add(str(a.get("value", "")))
            entry[1].add(task.get("study"))
        for message in task.get("assumptions") or []:  # "study: what: value (source)" of the planning task
            text = message[len(task["study"]) + 2:] if message.startswith(f"{task['study']}: ") else message
            what, _, value = text.rpartition(": ")
            value = value.rpartition(" (")[0] if value.endswith(")") and " (" in value else value  # the source
            entry = taken.setdefault(what or text, (set(), set()))
            entry[0].add(value if what else "")
            entry[1].add(task.get("study"))
    counted = [(what, sorted(v for v in vals if v), len(studies)) for what, (vals, studies) in taken.items()]
    return sorted(counted, key=lambda c: (-c[2], c[0]))


def _identity_blocks(cohort: CohortFolder) -> list:
    from .patient_report import KeyValues, Table
    s = cohort.summary
    ok = [t for t in s["tasks"] if t.get("status") in ("ran", "skipped")]
    cycles = cycles_of(cohort.rows) or sorted({t.get("cycle") for t in ok if t.get("cycle")})
    software = next((r.get("software") for r in cohort.results.values() if r.get("software")), None) or {}
    pairs = [("Output folder", str(cohort.path.absolute())),
             ("Studies", f"{s.get('studies', len(s['tasks']))}: {s.get('ran', 0)} ran, {s.get('skipped', 0)} "
                         f"skipped (unchanged), {s.get('failed', 0)} failed"),
             ("Patients", str(len({t.get('patient_id') for t in ok}))),
             ("Patient-cycles", str(len({(t.get('patient_id'), t.get('cycle')) for t in ok}))),
             ("Cycles", ", ".join(cycles) or "—"),
             ("VOI rows (cohort.csv)", str(len(cohort.rows))),
             ("Dask workers", str(s.get("workers", "—"))),
             ("Batch time", f"{float(s.get('seconds', 0)):.1f} s"),
             ("Software of the batch", f"LuDosimetry {s.get('software', '—')}")]
    pairs += [(f"Software of the runs: {k}", str(v)) for k, v in software.items()]
    blocks = [KeyValues(pairs)]
    options = s.get("options")
    if options:
        blocks.append(Table(["Option", "Value"], [[k, json.dumps(v, ensure_ascii=False)] for k, v in options.items()],
                            collapsed=f"Options of the batch ({len(options)}; a manifest's activity and injection "
                                      "time override them per study)"))
    return blocks


def cohort_blocks(cohort: CohortFolder) -> list:
    """The cohort report's content, in order (rendered by the per-patient report's HTML and PDF renderers)."""
    from .patient_report import Bullets, FigureBlock, Heading, Paragraph, Table
    from . import __version__
    groups = organ_groups(cohort.rows, _organ_types_of(cohort.summary))
    blocks: list = [Heading(f"Cohort dosimetry report — {cohort.path.absolute().name}", 1),
                    Paragraph(f"Built {datetime.now().isoformat(sep=' ', timespec='seconds')} by LuDosimetry "
                              f"{__version__} from the batch's output folder alone ({CSV_FILE}, {SUMMARY_FILE} and "
                              "each run's results.json); rebuild it with 'ludosimetry cohort-report FOLDER'.",
                              "small"),
                    Heading("Cohort")]
    blocks += _identity_blocks(cohort)
    blocks += [Heading("Summary per organ type"), organ_summary_table(groups) if groups else
               Paragraph("No VOI results: no study of the batch ran.", "note"),
               Paragraph("Organ types as in 'ludosimetry population' (--organ-type VOI=TYPE, else the default organ "
                         "names, every lesion as 'tumour', else the VOI's name). n: VOIs of all patient-cycles "
                         "(a patient's two kidneys are two); ranges over those VOIs; SD with n − 1; u(D): relative "
                         "standard uncertainty of the mean dose (k = 1); — : not computed by the runs.", "small")]
    for name, (title, caption, draw) in population_plots(cohort).items():
        blocks += [Heading(title, 3),
                   FigureBlock(name, f"{caption} ({name})", lambda fig, rect, part, draw=draw: draw(fig, rect),
                               [None], PLOT_SIZE_IN, lambda part: 4.8)]
    blocks += [Heading("Patients and cycles"), patient_table(cohort),
               Paragraph("Report: each run's own report (report.html, relative to this page).", "small"),
               Heading("Failures")]
    failures = cohort.summary.get("failures") or []
    blocks.append(Bullets(list(failures), "warning") if failures else Paragraph(f"None ({FAILURES_FILE} is empty)."))
    blocks.append(Heading("Named assumptions of the runs"))
    counted = assumption_counts(cohort)
    if counted:
        blocks.append(Table(["Assumption", "Values used", "Runs"],
                            [[what, "; ".join(vals) or "—", str(n)] for what, vals, n in counted],
                            table_id="assumptions"))
        blocks.append(Paragraph("Each run's report lists its own, with the file each came from.", "small"))
    else:
        blocks.append(Paragraph("None: every value came from the studies or the options."))
    missing = [t for t in cohort.summary["tasks"] if t.get("status") in ("ran", "skipped")
               and (t.get("patient_id"), t.get("cycle")) not in cohort.results]
    if missing:
        blocks.append(Paragraph(f"{len(missing)} run folder(s) are no longer in this folder; their assumptions are "
                                "not counted.", "note"))
    return blocks


# ------------------------------------------------------------------------------------------ the files

def cohort_report_files(folder) -> Dict[str, bytes]:
    """The population plots (PNG), :data:`COHORT_REPORT_HTML` and :data:`COHORT_REPORT_PDF` of a batch's
    output folder, built from its files alone.

    Raises
    ------
    CohortError
        As :func:`read_cohort_folder`.
    """
    from .patient_report import render_html, render_pdf
    cohort = read_cohort_folder(folder)
    files = {name: plot_png(draw) for name, (_, _, draw) in population_plots(cohort).items()}
    blocks = cohort_blocks(cohort)
    title = f"Cohort dosimetry report — {cohort.path.absolute().name}"
    files[COHORT_REPORT_HTML] = render_html(blocks, title).encode("utf-8")
    files[COHORT_REPORT_PDF] = render_pdf(blocks, title, f"{title}, {len(cohort.summary['tasks'])} studies")
    return files


def write_cohort_report(folder) -> List[Path]:
    """Write (replace) the population plots and the cohort report into a batch's output folder, each file
    atomically; a population plot of an earlier build that no longer applies (the dose per cycle of a cohort now
    of one cycle) is removed. Returns the paths written."""
    from .io.export import write_file_atomically
    folder = Path(folder)
    files = cohort_report_files(folder)
    written = [write_file_atomically(folder / name, data, overwrite=True) for name, data in files.items()]
    stale = folder / DOSE_PER_CYCLE_PLOT
    if DOSE_PER_CYCLE_PLOT not in files and stale.is_file():
        stale.unlink()
    return [Path(p) for p in written]
