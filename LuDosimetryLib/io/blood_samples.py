"""Blood samples for the blood-based red-marrow method (``--blood-samples CSV``).

The file is a CSV with a header row and one row per sample:

- a time column, named ``time`` (also ``time_h``, ``Time (h)``, ``hours``, ``datetime``, ``hours_post_injection``):
  either an ISO 8601 date/time of the sampling (needs the injection time) or hours after the injection;
- an activity-concentration column whose name carries its unit: ``Bq/mL``, ``kBq/mL`` or ``MBq/mL`` (also
  written ``Bq_per_mL``, ``kBq_mL``...), e.g. ``concentration_kBq_per_mL`` or ``activity (kBq/mL)``.

Concentrations are the activity at the sampling time (not decay-corrected), as counted in a well counter with
its time of measurement already decay-corrected back to the sampling time. Other columns are ignored.

As a spreadsheet saves it (:mod:`~LuDosimetryLib.io.spreadsheet_csv`): UTF-8, UTF-16 or Windows-1252 text,
columns separated by commas, semicolons or tabs, and with semicolons or tabs a decimal comma (``2,5``).
"""
from __future__ import annotations

import csv
import math
import re
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import List, Optional, Tuple

import numpy as np

from ..errors import OptionError
from ..options import parse_local_datetime
from .spreadsheet_csv import csv_rows

_TIME_NAMES = ("time", "time_h", "hours", "datetime", "hours_post_injection", "time_hours", "t_h")
_UNITS = (("mbq", 1e6), ("kbq", 1e3), ("bq", 1.0))  # longest prefix first


@dataclass(frozen=True)
class BloodSamples:
    """Blood activity concentrations (Bq/mL) at times after the injection (h), sorted by time."""

    t_h: np.ndarray
    concentration_bq_per_ml: np.ndarray
    path: str
    unit: str


def _column_key(name: str) -> str:
    """``Time (h)`` → ``time_h``: lower case, brackets dropped, spaces as underscores."""
    return re.sub(r"\s+", "_", re.sub(r"[()\[\]]", " ", name).strip().lower())


def _concentration_scale(name: str) -> Optional[float]:
    """Bq/mL per unit of a column named with its unit, or None when the name carries no concentration unit."""
    key = re.sub(r"[\s()\[\]]", "", name.lower())
    m = re.search(r"(mbq|kbq|bq)(/|_per_|_|per)ml$", key) or re.search(r"(mbq|kbq|bq)(/|_per_|_|per)ml", key)
    if not m:
        return None
    return dict(_UNITS)[m.group(1)]


def _error(path, message: str) -> OptionError:
    return OptionError(message, path, option="blood_samples")


def read_blood_samples(path, injection_time: Optional[datetime] = None) -> BloodSamples:
    """Read a blood-sample CSV (see the module docstring).

    Raises
    ------
    OptionError
        Unreadable file, no time or concentration column, a row whose value is not a number or date, a
        sample before the injection, a negative or non-finite concentration, fewer than two samples, or
        ISO times without an injection time. The message names the file and the row.
    """
    p = Path(path)
    try:
        table = csv_rows(p.read_bytes())
    except (OSError, csv.Error) as exc:
        raise _error(p, f"cannot read the blood-sample file ({exc.__class__.__name__})") from None
    if table is None:
        raise _error(p, "cannot read the blood-sample file: its text is neither UTF-8, UTF-16 nor Windows-1252")
    rows = table.rows
    if not rows:
        raise _error(p, "the blood-sample file is empty")
    header = [h.strip() for h in rows[0]]
    time_col = next((i for i, h in enumerate(header) if _column_key(h) in _TIME_NAMES), None)
    conc = [(i, _concentration_scale(h)) for i, h in enumerate(header) if i != time_col]
    conc = [(i, s) for i, s in conc if s is not None]
    if time_col is None:
        raise _error(p, f"no time column (one of {', '.join(_TIME_NAMES)}) in the header {header}")
    if len(conc) != 1:
        what = "no" if not conc else "more than one"
        raise _error(p, f"{what} activity-concentration column with its unit (Bq/mL, kBq/mL or MBq/mL) in the "
                        f"header {header}")
    col, scale = conc[0]
    times: List[float] = []
    values: List[float] = []
    for n, row in enumerate(rows[1:], start=2):
        if len(row) <= max(time_col, col) or table.overlong(row):
            hint = " (decimal commas in a comma-separated file?)" if table.overlong(row) else ""
            raise _error(p, f"row {n}: {len(row)} columns, the header has {len(header)}{hint}")
        t_text, c_text = table.number_text(row[time_col].strip()), table.number_text(row[col].strip())
        times.append(_hours(p, n, t_text, injection_time))
        try:
            c = float(c_text)
        except ValueError:
            raise _error(p, f"row {n}: concentration {c_text!r} is not a number") from None
        if not math.isfinite(c) or c < 0:
            raise _error(p, f"row {n}: concentration {c_text!r} must be a finite number ≥ 0")
        values.append(c * scale)
    if len(times) < 2:
        raise _error(p, f"{len(times)} blood sample(s): the blood-based method needs at least two")
    order = np.argsort(times)
    t = np.asarray(times, dtype=float)[order]
    if np.any(np.diff(t) <= 0):
        raise _error(p, "two samples at the same time")
    return BloodSamples(t, np.asarray(values, dtype=float)[order], str(p), header[col])


def _hours(path: Path, row: int, text: str, injection_time: Optional[datetime]) -> float:
    try:
        hours = float(text)
    except ValueError:
        try:
            when = parse_local_datetime(text)
        except ValueError as exc:
            detail = f": {exc}" if str(exc) else ""
            raise _error(path, f"row {row}: time {text!r} is neither hours after the injection nor an ISO 8601 "
                               f"date/time{detail}") from None
        if injection_time is None:
            raise _error(path, f"row {row}: an ISO date/time needs the injection time (give --injection-time)")
        hours = (when - injection_time).total_seconds() / 3600.0
    if not math.isfinite(hours) or hours <= 0:
        raise _error(path, f"row {row}: time {text!r} is not after the injection")
    return hours


def format_blood_samples(t_h, concentration_bq_per_ml) -> str:
    """The CSV text of samples at ``t_h`` (h after injection) and concentrations (Bq/mL), in kBq/mL."""
    lines = ["time_h,concentration_kBq_per_mL"]
    lines += [f"{float(t):.4f},{float(c) / 1e3:.6g}" for t, c in zip(t_h, concentration_bq_per_ml)]
    return "\n".join(lines) + "\n"


def samples_as_tuple(samples: BloodSamples) -> Tuple[List[float], List[float]]:
    """(hours, Bq/mL) as lists, for results.json."""
    return [float(x) for x in samples.t_h], [float(x) for x in samples.concentration_bq_per_ml]
