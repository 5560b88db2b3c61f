"""Accumulation over the therapy cycles of one patient, and how many further cycles stay under the limits.

Input: the ``results.json`` of one run per cycle (as dictionaries). Per VOI the absorbed doses are summed
over the cycles, and so are the BEDs — each cycle's BED is computed from that cycle's own dose-rate curve
(:mod:`LuDosimetryLib.radiobiology`) and BEDs of separate cycles add (the repair between cycles, weeks
apart, is complete; Dale 1985, Bodei et al. 2008). Recomputing a BED from the summed dose would count the
quadratic term across cycles and overstate it.

Projection of further cycles (:func:`project_further_cycles`): a next cycle of activity A gives the dose
d = (Gy/GBq) · A, Gy/GBq being the mean over the cycles given, and the BED d + k d², where k = (BED − D) / D²
is the quadratic coefficient of the cycles given (mean; it depends on the kinetics, not on the dose). The
number of further cycles is the largest n with cumulative + n · BED_next ≤ limit. Limits (:data:`LIMITS`):
kidney BED 40 Gy without and 28 Gy with risk factors (Bodei et al., Eur J Nucl Med Mol Imaging
2008;35:1847-1856); red marrow absorbed dose 2 Gy (the conventional limit from radioiodine therapy,
Benua et al., Am J Roentgenol 1962;87:171; used for PRRT, e.g. Sandström et al., J Nucl Med 2013;54:33).

This module does no I/O.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from datetime import datetime
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

from .assumptions import Assumption, assume, recording
from .errors import LuDosimetryError

#: ``C<cycle>S<scan>D<day>`` in series descriptions (the collection's naming).
_CYCLE_CODE = re.compile(r"C(\d+)\s*S(\d+)\s*D(\d+)", re.IGNORECASE)


class CycleError(LuDosimetryError):
    """The results files do not make one patient's sequence of cycles."""


@dataclass(frozen=True)
class Limit:
    """A tolerance limit of one tissue: on ``quantity`` ("bed_gy" or "mean_dose_gy")."""

    tissue: str
    quantity: str
    limit_gy: float
    source: str


#: Limits by (tissue, risk factors present).
LIMITS: Dict[Tuple[str, bool], Limit] = {
    ("kidney", False): Limit("kidney", "bed_gy", 40.0, "Bodei et al., EJNMMI 2008;35:1847 (no risk factors)"),
    ("kidney", True): Limit("kidney", "bed_gy", 28.0, "Bodei et al., EJNMMI 2008;35:1847 (with risk factors: "
                                                      "hypertension, diabetes)"),
    ("red_marrow", False): Limit("red_marrow", "mean_dose_gy", 2.0, "Benua et al., AJR 1962;87:171; "
                                                                    "Sandström et al., JNM 2013;54:33"),
}
LIMITS[("red_marrow", True)] = LIMITS[("red_marrow", False)]


@dataclass
class Cycle:
    """One cycle's results, as read from its ``results.json``."""

    number: int
    patient_id: str
    injection_time: datetime
    injected_activity_bq: float
    vois: Dict[str, dict]
    path: str

    @property
    def injected_gbq(self) -> float:
        return self.injected_activity_bq / 1e9


def cycle_number(results: Mapping, path: str) -> Optional[int]:
    """The cycle number from the ``C<n>`` code of the run's time-point descriptions; None when absent or
    inconsistent."""
    numbers = set()
    for tp in results.get("time_points", []):
        m = _CYCLE_CODE.search(str(tp.get("description", "")))
        if m:
            numbers.add(int(m.group(1)))
    if len(numbers) > 1:
        raise CycleError(f"the time points name several cycles ({sorted(numbers)}); one run is one cycle", path)
    return numbers.pop() if numbers else None


def _cycle_from(results: Mapping, path: str, number: Optional[int]) -> Cycle:
    try:
        injection = datetime.fromisoformat(str(results["injection_time"]))
        activity = float(results["injected_activity_bq"])
        vois = dict(results["vois"])
    except (KeyError, TypeError, ValueError) as exc:
        raise CycleError(f"not a LuDosimetry results.json (missing or bad {exc})", path) from None
    if not (activity > 0 and math.isfinite(activity)):
        raise CycleError(f"injected activity {activity!r} Bq is not usable", path)
    return Cycle(number=number or 0, patient_id=str(results.get("patient_id", "")), injection_time=injection,
                 injected_activity_bq=activity, vois=vois, path=path)


def order_cycles(results: Sequence[Tuple[str, Mapping]]) -> List[Cycle]:
    """The cycles of one patient in order, checked.

    Parameters
    ----------
    results : sequence of (path, results.json dict)

    Raises
    ------
    CycleError
        Several patients; a cycle given twice; cycle numbers that disagree with the injection dates.
    """
    if not results:
        raise CycleError("no results given")
    numbers = [cycle_number(r, p) for p, r in results]
    cycles = [_cycle_from(r, p, n) for (p, r), n in zip(results, numbers)]
    patients = {c.patient_id for c in cycles}
    if len(patients) > 1:
        first = cycles[0]
        other = next(c for c in cycles if c.patient_id != first.patient_id)
        raise CycleError(f"results of different patients: {first.patient_id!r} ({first.path}) and "
                         f"{other.patient_id!r}", other.path)
    by_date = sorted(cycles, key=lambda c: c.injection_time)
    for a, b in zip(by_date, by_date[1:]):
        if a.injection_time == b.injection_time:
            raise CycleError(f"the same injection ({a.injection_time.isoformat()}) as {a.path}: one cycle given "
                             f"twice", b.path)
    if all(n is None for n in numbers):
        for i, c in enumerate(by_date):
            c.number = i + 1
            assume("cycle number taken from the order of the injection dates (no C<n> code in the series "
                   "descriptions)", str(c.number), "injection date order", c.path)
    elif any(n is None for n in numbers):
        unnamed = next(c for c, n in zip(cycles, numbers) if n is None)
        raise CycleError("no C<n> cycle code in the series descriptions while the other results have one; "
                         "give results that all name their cycle, or none", unnamed.path)
    for a, b in zip(by_date, by_date[1:]):
        if not a.number < b.number:
            raise CycleError(f"cycle {b.number} was injected on {b.injection_time.date()}, after cycle {a.number} "
                             f"({a.path}, {a.injection_time.date()}): the cycle numbers are not in date order",
                             b.path)
    return by_date


@dataclass
class VoiAccumulation:
    """One VOI over the cycles."""

    name: str
    tissue: Optional[str]
    dose_gy: List[Optional[float]]
    bed_gy: List[Optional[float]]
    gy_per_gbq: List[Optional[float]]
    cumulative_dose_gy: Optional[float]
    cumulative_bed_gy: Optional[float]
    projection: Optional[dict] = None

    def to_json(self) -> dict:
        return dict(self.__dict__)


def _sum(values: Sequence[Optional[float]]) -> Optional[float]:
    return None if any(v is None for v in values) else float(sum(values))


def accumulate(cycles: Sequence[Cycle]) -> List[VoiAccumulation]:
    """Per VOI (those present in every cycle): doses and BEDs per cycle and summed."""
    names = [n for n in cycles[0].vois if all(n in c.vois for c in cycles)]
    out = []
    for name in names:
        per = [c.vois[name] for c in cycles]
        tissues = {v.get("tissue") for v in per}
        out.append(VoiAccumulation(
            name=name, tissue=tissues.pop() if len(tissues) == 1 else None,
            dose_gy=[v.get("mean_dose_gy") for v in per], bed_gy=[v.get("bed_gy") for v in per],
            gy_per_gbq=[v.get("gy_per_gbq") for v in per],
            cumulative_dose_gy=_sum([v.get("mean_dose_gy") for v in per]),
            cumulative_bed_gy=_sum([v.get("bed_gy") for v in per])))
    return out


def project_further_cycles(voi: VoiAccumulation, next_activity_gbq: float, limit: Limit) -> dict:
    """How many further cycles of ``next_activity_gbq`` keep ``voi`` under ``limit``, with the arithmetic.

    Returns a dict: ``limit_gy``, ``quantity``, ``source``, ``cumulative_gy``, ``per_cycle_gy``,
    ``further_cycles`` (int ≥ 0), ``arithmetic`` (lines a person can check).
    """
    ratios = [r for r in voi.gy_per_gbq if r is not None]
    if not ratios:
        raise CycleError(f"VOI {voi.name!r} has no Gy/GBq in the results")
    gy_per_gbq = sum(ratios) / len(ratios)
    dose_next = gy_per_gbq * next_activity_gbq
    lines = [f"{voi.name}: mean {gy_per_gbq:.4g} Gy/GBq over {len(ratios)} cycle(s) x {next_activity_gbq:.4g} GBq "
             f"= {dose_next:.4g} Gy per further cycle"]
    if limit.quantity == "bed_gy":
        ks = [(b - d) / d ** 2 for d, b in zip(voi.dose_gy, voi.bed_gy) if d and b is not None and d > 0]
        if not ks or voi.cumulative_bed_gy is None:
            raise CycleError(f"VOI {voi.name!r} has no BED in the results")
        k = sum(ks) / len(ks)
        per_cycle = dose_next + k * dose_next ** 2
        cumulative = voi.cumulative_bed_gy
        lines.append(f"BED per further cycle = D + k D^2 = {dose_next:.4g} + {k:.4g} x {dose_next:.4g}^2 "
                     f"= {per_cycle:.4g} Gy (k = (BED - D)/D^2, mean of the cycles given)")
    else:
        per_cycle = dose_next
        cumulative = voi.cumulative_dose_gy
        if cumulative is None:
            raise CycleError(f"VOI {voi.name!r} has no mean dose in the results")
    remaining = limit.limit_gy - cumulative
    n = 0 if remaining <= 0 or per_cycle <= 0 else int(math.floor(remaining / per_cycle + 1e-9))
    if per_cycle <= 0:
        lines.append("no dose per cycle: the limit does not bound the number of cycles")
    lines.append(f"limit {limit.limit_gy:g} Gy ({limit.source}) - cumulative {cumulative:.4g} Gy = "
                 f"{remaining:.4g} Gy left; floor({remaining:.4g} / {per_cycle:.4g}) = {n} further cycle(s)")
    return {"quantity": limit.quantity, "limit_gy": limit.limit_gy, "source": limit.source,
            "cumulative_gy": cumulative, "per_cycle_gy": per_cycle, "gy_per_gbq": gy_per_gbq,
            "further_cycles": n, "arithmetic": lines}


@dataclass
class CycleSummary:
    """The cycles of one patient, their accumulation and the projection."""

    patient_id: str
    cycles: List[Cycle]
    vois: List[VoiAccumulation]
    next_activity_gbq: float
    kidney_risk_factors: bool
    notes: List[str] = field(default_factory=list)
    #: What was assumed (:func:`summarize_cycle_results`; empty from :func:`summarize_cycles`, whose
    #: assumptions go to the caller's log).
    assumptions: List[Assumption] = field(default_factory=list)

    def to_json(self) -> dict:
        return {
            "patient_id": self.patient_id,
            "cycles": [{"cycle": c.number, "injection_time": c.injection_time.isoformat(),
                        "injected_activity_bq": c.injected_activity_bq, "results": c.path} for c in self.cycles],
            "next_activity_gbq": self.next_activity_gbq,
            "kidney_risk_factors": self.kidney_risk_factors,
            "vois": {v.name: {k: val for k, val in v.to_json().items() if k != "name"} for v in self.vois},
            "notes": self.notes,
            "assumptions": [a.to_json() for a in self.assumptions],
        }


def summarize_cycles(results: Sequence[Tuple[str, Mapping]], next_activity_gbq: Optional[float] = None,
                     kidney_risk_factors: bool = False) -> CycleSummary:
    """Order, check and accumulate the cycles; project further cycles for the VOIs with a limit.

    ``next_activity_gbq`` default: the mean injected activity of the cycles given (named as an assumption).
    """
    cycles = order_cycles(results)
    if next_activity_gbq is None:
        next_activity_gbq = sum(c.injected_gbq for c in cycles) / len(cycles)
        assume("activity of a further cycle", f"{next_activity_gbq:.4g} GBq", "mean of the cycles given")
    if not (next_activity_gbq > 0 and math.isfinite(next_activity_gbq)):
        raise CycleError(f"the activity of a further cycle must be a positive number of GBq, not {next_activity_gbq!r}")
    vois = accumulate(cycles)
    notes = []
    for voi in vois:
        limit = LIMITS.get((voi.tissue, bool(kidney_risk_factors))) if voi.tissue else None
        if limit is None:
            continue
        try:
            voi.projection = project_further_cycles(voi, next_activity_gbq, limit)
        except CycleError as exc:
            notes.append(str(exc))
    missing = sorted(set().union(*(c.vois for c in cycles)) - {v.name for v in vois})
    if missing:
        notes.append(f"VOIs not in every cycle, not accumulated: {', '.join(missing)}")
    return CycleSummary(patient_id=cycles[0].patient_id, cycles=cycles, vois=vois,
                        next_activity_gbq=next_activity_gbq, kidney_risk_factors=bool(kidney_risk_factors),
                        notes=notes)


def summarize_cycle_results(results: Sequence[Tuple[str, Mapping]], next_activity_gbq: Optional[float] = None,
                            kidney_risk_factors: bool = False, strict: bool = False) -> CycleSummary:
    """:func:`summarize_cycles` with its own log of assumptions: the summary's ``assumptions`` lists them (the
    cycle numbers taken from the dates, the activity of a further cycle), or, with ``strict``, the first one
    refuses (:class:`~LuDosimetryLib.assumptions.StrictRefusal`)."""
    with recording(strict=strict) as assumed:
        summary = summarize_cycles(results, next_activity_gbq=next_activity_gbq,
                                   kidney_risk_factors=kidney_risk_factors)
    summary.assumptions = assumed.items
    return summary


def arithmetic_lines(summary: CycleSummary) -> List[str]:
    """The projection's arithmetic of each VOI with a limit, then the notes: lines a person can check."""
    return [line for v in summary.vois if v.projection for line in v.projection["arithmetic"]] + list(summary.notes)


def summary_table_rows(summary: CycleSummary) -> List[List[str]]:
    """Rows of the cumulative table (header first): VOI, tissue, dose and BED per cycle, totals, further cycles."""
    n = len(summary.cycles)
    head = (["VOI", "tissue"] + [f"C{c.number} dose (Gy)" for c in summary.cycles]
            + [f"C{c.number} BED (Gy)" for c in summary.cycles]
            + ["cumulative dose (Gy)", "cumulative BED (Gy)", "further cycles"])

    def fmt(value) -> str:
        return "" if value is None else f"{value:.4g}"

    rows = [head]
    for v in summary.vois:
        rows.append([v.name, v.tissue or ""] + [fmt(x) for x in v.dose_gy[:n]] + [fmt(x) for x in v.bed_gy[:n]]
                    + [fmt(v.cumulative_dose_gy), fmt(v.cumulative_bed_gy),
                       "" if v.projection is None else str(v.projection["further_cycles"])])
    return rows
