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
        (the injection is taken as the latest such time not after ``reference``).

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
    when = parse_dt(item.get("RadiopharmaceuticalStartDateTime", ""))
    if when is None:
        t = parse_tm(item.get("RadiopharmaceuticalStartTime", ""))
        if t is not None and reference is not None:
            day = datetime(reference.year, reference.month, reference.day)
            when = day + t
            while when > reference:
                when -= timedelta(days=1)
    name = str(item.get("Radiopharmaceutical", "") or "")
    code = item.get("RadionuclideCodeSequence")
    if code:
        name = (name + " " + str(code[0].get("CodeMeaning", ""))).strip()
    return activity_bq, when, name
