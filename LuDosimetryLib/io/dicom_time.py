"""Reading dates and times from real vendor headers, tolerantly.

DICOM DA/TM/DT strings come in many shapes (``HHMM``, ``HHMMSS.ffffff``, with or without a UTC offset,
empty). These functions return naive ``datetime`` objects in the scanner's local time (offsets are
applied only when every time in a study has one), or ``None`` when the header holds nothing usable.
"""
from __future__ import annotations

import re
from datetime import datetime, timedelta
from typing import Optional

from pydicom.dataset import Dataset


def parse_da(value) -> Optional[datetime]:
    """``YYYYMMDD`` (also ``YYYY.MM.DD`` from old ACR-NEMA writers) → datetime at midnight, or None."""
    s = str(value or "").strip().replace(".", "").replace("-", "")
    if len(s) < 8 or not s[:8].isdigit():
        return None
    try:
        return datetime(int(s[:4]), int(s[4:6]), int(s[6:8]))
    except ValueError:
        return None


def parse_tm(value) -> Optional[timedelta]:
    """``HH[MM[SS[.ffffff]]]`` (also ``HH:MM:SS``) → time of day as timedelta, or None."""
    s = str(value or "").strip().replace(":", "")
    m = re.match(r"^(\d{2})(\d{2})?(\d{2})?(\.\d+)?$", s)
    if not m:
        return None
    h, mi, se = int(m.group(1)), int(m.group(2) or 0), int(m.group(3) or 0)
    frac = float(m.group(4)) if m.group(4) else 0.0
    if h > 23 or mi > 59 or se > 60:
        return None
    return timedelta(hours=h, minutes=mi, seconds=se + frac)


def parse_dt(value) -> Optional[datetime]:
    """``YYYYMMDDHHMMSS.ffffff[&ZZXX]`` → naive datetime (offset dropped), or None."""
    s = str(value or "").strip()
    if not s:
        return None
    s = re.split(r"[+-]\d{4}$", s)[0]
    date = parse_da(s[:8])
    if date is None:
        return None
    t = parse_tm(s[8:]) if len(s) > 8 else timedelta(0)
    return None if t is None else date + t


def combine(date_value, time_value) -> Optional[datetime]:
    """DA + TM → datetime, or None when either is missing."""
    d, t = parse_da(date_value), parse_tm(time_value)
    if d is None or t is None:
        return None
    return d + t


def acquisition_datetime(ds: Dataset) -> "tuple[Optional[datetime], str]":
    """The acquisition start of an image, with the header it came from.

    Tries AcquisitionDateTime, AcquisitionDate+AcquisitionTime, then (for exports that blank them,
    which OpenDose3D refuses) SeriesDate+SeriesTime, ContentDate+ContentTime and StudyDate+StudyTime.
    An AcquisitionTime without AcquisitionDate takes the series/content/study date.

    Returns
    -------
    (datetime or None, str)
        The time and the name of the source (e.g. ``"AcquisitionDateTime"``), for warnings.
    """
    dt = parse_dt(ds.get("AcquisitionDateTime", ""))
    if dt is not None:
        return dt, "AcquisitionDateTime"
    dt = combine(ds.get("AcquisitionDate", ""), ds.get("AcquisitionTime", ""))
    if dt is not None:
        return dt, "AcquisitionDate/Time"
    atime = ds.get("AcquisitionTime", "")
    for dkey in ("SeriesDate", "ContentDate", "StudyDate"):
        dt = combine(ds.get(dkey, ""), atime)
        if dt is not None:
            return dt, f"{dkey}+AcquisitionTime"
    for dkey, tkey in (("SeriesDate", "SeriesTime"), ("ContentDate", "ContentTime"), ("StudyDate", "StudyTime")):
        dt = combine(ds.get(dkey, ""), ds.get(tkey, ""))
        if dt is not None:
            return dt, f"{dkey}/{tkey}"
    return None, ""


def injection_from_header(ds: Dataset, reference: Optional[datetime] = None
                          ) -> "tuple[Optional[float], Optional[datetime], str]":
    """Injected activity (Bq) and injection time from RadiopharmaceuticalInformationSequence.

    Parameters
    ----------
    ds : Dataset
    reference : datetime, optional
        The acquisition time, used for the date when only RadiopharmaceuticalStartTime is present
        (the injection is taken as the latest such time not after ``reference``: a guess, see
        :func:`latest_time_of_day`).

    Returns
    -------
    (activity_bq or None, injection datetime or None, radiopharmaceutical name)
    """
    seq = ds.get("RadiopharmaceuticalInformationSequence")
    if not seq:
        return None, None, ""
    item = seq[0]
    activity = item.get("RadionuclideTotalDose")
    activity_bq = float(activity) if activity not in (None, "") else None
    if activity_bq is not None and str(ds.get("Modality", "")).upper() == "NM":
        # NM Isotope module states RadionuclideTotalDose in MBq (PS3.3 C.8.4.10.1); PET's is in Bq (C.8.9.2).
        activity_bq *= 1e6
    if activity_bq is not None and activity_bq <= 0:
        activity_bq = None
    when, time_of_day = radiopharmaceutical_start(ds)
    if when is None and time_of_day is not None and reference is not None:
        when = latest_time_of_day(time_of_day, reference)
    name = str(item.get("Radiopharmaceutical", "") or "")
    code = item.get("RadionuclideCodeSequence")
    if code:
        name = (name + " " + str(code[0].get("CodeMeaning", ""))).strip()
    return activity_bq, when, name


def radiopharmaceutical_start(ds: Dataset) -> "tuple[Optional[datetime], Optional[timedelta]]":
    """The administration as the header states it: the full date and time, and the time of day.

    Returns
    -------
    (datetime or None, timedelta or None)
        ``RadiopharmaceuticalStartDateTime`` when it parses, and the time of day (from it, else from
        ``RadiopharmaceuticalStartTime``); a header with a time alone gives ``(None, time of day)``.
    """
    seq = ds.get("RadiopharmaceuticalInformationSequence")
    if not seq:
        return None, None
    item = seq[0]
    when = parse_dt(item.get("RadiopharmaceuticalStartDateTime", ""))
    if when is not None:
        return when, time_of_day(when)
    return None, parse_tm(item.get("RadiopharmaceuticalStartTime", ""))


def latest_time_of_day(time_of_day: timedelta, reference: datetime) -> datetime:
    """The latest moment at ``time_of_day`` not after ``reference``.

    How a date is guessed for a time of day stated alone: with a first scan on the day after the
    injection it is one day late, so a caller that uses it takes it as a named assumption.
    """
    when = datetime(reference.year, reference.month, reference.day) + time_of_day
    while when > reference:
        when -= timedelta(days=1)
    return when


def time_of_day(when: datetime) -> timedelta:
    """The time of day of ``when``."""
    return when - datetime(when.year, when.month, when.day)


def time_of_day_difference_s(a: timedelta, b: timedelta) -> float:
    """Smallest difference between two times of day, modulo 24 h (s)."""
    d = abs(a - b).total_seconds() % 86400.0
    return min(d, 86400.0 - d)


def injection_times_differ(stated: datetime, used: datetime, *, date_known: bool = True,
                           tolerance_s: float = 60.0) -> bool:
    """Whether a header's injection time ``stated`` differs from the one ``used`` by more than ``tolerance_s``;
    with ``date_known`` False (a time stated alone, its date guessed) only the times of day are compared."""
    if date_known:
        return abs((stated - used).total_seconds()) > tolerance_s
    return time_of_day_difference_s(time_of_day(stated), time_of_day(used)) > tolerance_s


def disagreement_with_header(ds: Dataset, injection: datetime, tolerance_s: float = 60.0) -> Optional[str]:
    """How the header's administration disagrees with ``injection`` by more than ``tolerance_s``, or None.

    A header with a time alone is compared by time of day. Used where the study's resolved injection time
    (command line first) overrides a header, so that the override is never silent.
    """
    when, tod = radiopharmaceutical_start(ds)
    if when is not None:
        if not injection_times_differ(when, injection, tolerance_s=tolerance_s):
            return None
        return (f"the header's RadiopharmaceuticalStartDateTime {format_time(when)} disagrees with the "
                f"injection time used, {format_time(injection)}")
    if tod is None or time_of_day_difference_s(tod, time_of_day(injection)) <= tolerance_s:
        return None
    return (f"the header's RadiopharmaceuticalStartTime {_clock(tod)} disagrees with the injection "
            f"time used, {format_time(injection)}")


def format_time(when: datetime) -> str:
    """``YYYY-MM-DD HH:MM[:SS]`` for messages."""
    return when.isoformat(sep=" ", timespec="seconds" if when.second or when.microsecond else "minutes")


def _clock(time_of_day: timedelta) -> str:
    s = int(round(time_of_day.total_seconds()))
    return f"{s // 3600:02d}:{s // 60 % 60:02d}" + (f":{s % 60:02d}" if s % 60 else "")


#: Latest plausible scan of one administration (days): 60 d is 9 Lu-177 half-lives (6.647 d), when less
#: than 0.2 % of the activity is left; a scan dated later is a wrong date (or another cycle), not a late scan.
MAX_DAYS_POST_INJECTION = 60.0


def implausible_delay(acquisition: datetime, injection: datetime,
                      max_days: float = MAX_DAYS_POST_INJECTION) -> Optional[str]:
    """Why a scan at ``acquisition`` cannot follow an injection at ``injection``, or None when it can.

    Returns
    -------
    str or None
        ``"acquired …, h before the injection (…)"`` or ``"acquired …, d days after the injection (…),
        more than the plausible max_days days"``.
    """
    hours = (acquisition - injection).total_seconds() / 3600.0
    if hours <= 0:
        return (f"acquired {format_time(acquisition)}, {-hours:.2f} h before the injection "
                f"({format_time(injection)})")
    if hours > 24.0 * max_days:
        return (f"acquired {format_time(acquisition)}, {hours / 24.0:.0f} days after the injection "
                f"({format_time(injection)}), more than the plausible {max_days:g} days")
    return None


def acquisition_time_problem(ds: Dataset) -> str:
    """What is wrong with an image's acquisition date/time tags, or '' (absent tags are no problem here).

    Returns
    -------
    str
        e.g. ``"AcquisitionDate '20261345' is not a valid date"``; several joined with ``"; "``.
    """
    problems = []
    for key, parse, kind in (("AcquisitionDateTime", parse_dt, "date and time"), ("AcquisitionDate", parse_da, "date"),
                             ("AcquisitionTime", parse_tm, "time")):
        value = str(ds.get(key, "") or "").strip()
        if value and parse(value) is None:
            problems.append(f"{key} {value!r} is not a valid {kind}")
    return "; ".join(problems)
