"""Classify every file of a study folder by its DICOM header and group it into series and time points.

File names and folder depth are arbitrary; only headers decide. Non-DICOM files are listed as skipped,
never fatal. Slices are grouped by SeriesInstanceUID (not by modality: a MIM export may tag one slice of
a PT series as NM). Time points are the acquisitions of reconstructed SPECT, ordered in time.
"""
from __future__ import annotations

import os
import re
import warnings
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from pydicom.errors import InvalidDicomError

from ..assumptions import assume
from ..errors import DicomFileError, StudyError
from ..progress import as_progress
from .dicom_common import read_dicom
from .dicom_time import (acquisition_datetime, acquisition_time_problem, format_time, implausible_delay,
                         injection_from_header, injection_times_differ, radiopharmaceutical_start)

#: File name suffixes of DICOM files: such a file that is not DICOM is a damaged file of the study, not a stray one.
DICOM_SUFFIXES = (".dcm", ".dicom", ".ima")
ROLES = ("ct", "spect_recon", "spect_projections", "attenuation_map", "planar_whole_body", "planar_static",
         "rtstruct", "mask", "tia_map", "pet", "mr", "rtdose", "other")

CODE_PATTERN = re.compile(r"C(\d+)\s*S(\d+)\s*D(\d+)", re.IGNORECASE)

#: Skip reason of a DICOM object (an image slice, a structure set) that names no series: dropping it could
#: silently cut a slice off the edge of a volume, so a run refuses it (see :meth:`Inventory.unusable`).
ORPHAN_OBJECT = "DICOM object without SeriesInstanceUID: its series cannot be known"

#: Files of one series acquired further apart than this are not one acquisition (a SPECT bed takes
#: 10–30 min): the series' time is uncertain, warned, and a run refuses such a SPECT (h).
SERIES_TIME_SPREAD_H = 1.0

#: A header's injection time further than this from the one used is warned (s).
INJECTION_TOLERANCE_S = 60.0

_DICOMDIR_SOP_CLASS = "1.2.840.10008.1.3.10"

# Header keywords read for classification (pixel data is never read here).
_TIA_WORDS = re.compile(r"\bTIA\b|time[ _-]?integrated|cumulated|Bq\s*\*?\s*s\b|BQML\*S|bq\.s", re.IGNORECASE)
_MUMAP_WORDS = re.compile(r"mu[ _-]?map|µ[ _-]?map|\u03bc[ _-]?map|attenuation (coefficient )?map|AC[ _-]?map|attmap",
                          re.IGNORECASE)
_MASK_WORDS = re.compile(r"\bmask\b|boolean|\blabel ?map\b", re.IGNORECASE)
_LU177_WORDS = re.compile(r"177|lutetium|\bLu\b|dotatate|lutathera|PSMA-617|vipivotide", re.IGNORECASE)


@dataclass
class SeriesEntry:
    """One DICOM series of a study.

    Attributes
    ----------
    series_instance_uid : str
    modality : str
        The most common Modality among its files.
    role : str
        One of :data:`ROLES`.
    description : str
    code : str or None
        ``C<cycle>S<scan>D<day>`` from the description or the folder names.
    files : list of str
        Paths, in discovery order.
    acquisition_time : datetime or None
        Earliest acquisition start among the files.
    acquisition_time_source : str
        Which header gave it (warned when not an acquisition tag).
    frame_of_reference_uid, study_instance_uid, patient_id : str
    form : str
        For projections: ``unaltered``, ``reformatted`` or ``advanced``; else ``""``.
    time_point : int or None
        Index (0-based) of the time point this series belongs to.
    referenced_series_uids : list of str
        For RTSTRUCT: image series the contours reference.
    """

    series_instance_uid: str
    modality: str
    role: str
    description: str
    code: Optional[str]
    files: List[str]
    acquisition_time: Optional[datetime]
    acquisition_time_source: str
    frame_of_reference_uid: str
    study_instance_uid: str
    patient_id: str
    form: str = ""
    time_point: Optional[int] = None
    referenced_series_uids: List[str] = field(default_factory=list)
    rows: int = 0
    columns: int = 0
    units: str = ""
    injected_activity_bq: Optional[float] = None
    injection_time: Optional[datetime] = None
    radiopharmaceutical: str = ""
    reconstructed_here: bool = False
    injection_date_inferred: bool = False  # RadiopharmaceuticalStartTime without a date: the date is a guess
    time_conflict: str = ""  # files acquired more than SERIES_TIME_SPREAD_H apart: what, naming the file
    time_conflict_file: str = ""
    other_patient_file: str = ""  # a file of the series whose PatientID differs from the first file's
    other_patient_id: str = ""
    acquisition_time_fallback: str = ""  # which other header gave a file's acquisition time, naming it; else ''


@dataclass
class TimePoint:
    """One imaging session: its reconstructed SPECT and the series that go with it."""

    index: int
    acquisition_time: Optional[datetime]
    spect_series_uids: List[str]
    code: Optional[str] = None


@dataclass
class Inventory:
    """All series of a study folder, their roles and time points."""

    root: str
    series: List[SeriesEntry]
    skipped: List[Dict[str, str]]
    time_points: List[TimePoint]
    injected_activity_bq: Optional[float] = None
    injection_time: Optional[datetime] = None
    injection_source: str = ""
    warnings: List[str] = field(default_factory=list)

    def by_role(self, role: str) -> List[SeriesEntry]:
        """Series with ``role``."""
        return [s for s in self.series if s.role == role]

    def get(self, series_instance_uid: str) -> SeriesEntry:
        """The series with that UID (StudyError listing the UIDs when absent)."""
        for s in self.series:
            if s.series_instance_uid == series_instance_uid:
                return s
        raise StudyError(f"no series with SeriesInstanceUID {series_instance_uid} "
                         f"(present: {', '.join(s.series_instance_uid for s in self.series)})", self.root)

    def unusable(self) -> List[Dict[str, str]]:
        """Skipped entries a run cannot leave out silently: unreadable files and folders (their series may be
        incomplete) and DICOM objects without a series (:data:`ORPHAN_OBJECT`)."""
        return [item for item in self.skipped
                if item["reason"].startswith(("unreadable DICOM", "unreadable folder")) or
                item["reason"] == ORPHAN_OBJECT]

    def hours_post_injection(self, when: Optional[datetime]) -> Optional[float]:
        """Hours from injection to ``when`` (None when either is unknown)."""
        if when is None or self.injection_time is None:
            return None
        return (when - self.injection_time).total_seconds() / 3600.0

    def to_json(self) -> dict:
        """The ``inspect --json`` document."""
        return {
            "root": self.root,
            "injected_activity_bq": self.injected_activity_bq,
            "injection_time": self.injection_time.isoformat() if self.injection_time else None,
            "time_points": [{"index": tp.index,
                             "acquisition_time": tp.acquisition_time.isoformat() if tp.acquisition_time else None,
                             "hours_post_injection": self.hours_post_injection(tp.acquisition_time),
                             "code": tp.code,
                             "spect_series_uids": tp.spect_series_uids} for tp in self.time_points],
            "series": [{"series_instance_uid": s.series_instance_uid, "modality": s.modality, "role": s.role,
                        "description": s.description, "code": s.code, "time_point": s.time_point,
                        "files": len(s.files),
                        "acquisition_time": s.acquisition_time.isoformat() if s.acquisition_time else None,
                        "form": s.form or None,
                        "reconstructed_by_ludosimetry": s.reconstructed_here} for s in self.series],
            "skipped": self.skipped,
            "warnings": self.warnings,
        }


def parse_series_code(*texts: str) -> Optional[str]:
    """First ``C<x>S<y>D<z>`` code in ``texts`` (normalised to upper case, no spaces), else None."""
    for text in texts:
        m = CODE_PATTERN.search(text or "")
        if m:
            return f"C{int(m.group(1))}S{int(m.group(2))}D{int(m.group(3))}"
    return None


def _image_type(ds) -> List[str]:
    value = ds.get("ImageType", [])
    if isinstance(value, str):
        value = value.split("\\")
    return [str(v).upper() for v in value]


def _units(ds) -> str:
    """Units of the stored values, from Units (PT) or a Real World Value Mapping (NM, Siemens/GE)."""
    units = str(ds.get("Units", "") or "")
    if units:
        return units.upper()
    rwvm = ds.get("RealWorldValueMappingSequence")
    if rwvm:
        code = rwvm[0].get("MeasurementUnitsCodeSequence")
        if code:
            return str(code[0].get("CodeValue", "")).upper()
    return ""


def classify(ds, path: str = "") -> "tuple[str, str]":
    """Role (one of :data:`ROLES`) and projection form of one file, from its header.

    Parameters
    ----------
    ds : pydicom Dataset (pixels not needed)
    path : str
        Used only for the folder-name hints of MIM exports (``mumap``, ``mask``, ``TIA``).

    Returns
    -------
    (role, form)
    """
    modality = str(ds.get("Modality", "")).upper()
    desc = " ".join(str(ds.get(k, "") or "") for k in ("SeriesDescription", "ImageComments", "StudyDescription"))
    series_desc = str(ds.get("SeriesDescription", "") or "")
    itype = _image_type(ds)
    units = _units(ds)
    folder = os.path.dirname(path)
    if modality == "RTSTRUCT":
        return "rtstruct", ""
    if modality == "RTDOSE":
        return "rtdose", ""
    if modality == "SEG":
        return "mask", ""
    if modality == "MR":
        return "mr", ""
    if _TIA_WORDS.search(series_desc) or "BQML*S" in units or units in ("BQS/ML", "BQ*S/ML"):
        return "tia_map", ""
    if _MASK_WORDS.search(series_desc) or (modality in ("OT", "SC") and _MASK_WORDS.search(folder)):
        return "mask", ""
    if _MUMAP_WORDS.search(desc) or _MUMAP_WORDS.search(folder) or "CM-1" in units or "1/CM" in units:
        return "attenuation_map", ""
    if modality == "CT":
        return "ct", ""
    if modality == "NM":
        kind = itype[2] if len(itype) > 2 else ""
        if "RECON" in kind or "RECON" in " ".join(itype):
            return "spect_recon", ""
        if kind in ("TOMO", "GATED TOMO") or "TOMO" in itype:
            low = desc.lower()
            form = "advanced" if "[advanced]" in low else "reformatted" if "[reformatted]" in low else "unaltered"
            return "spect_projections", form
        if kind == "WHOLE BODY" or "WHOLE BODY" in itype:
            return "planar_whole_body", ""
        if kind in ("STATIC", "DYNAMIC", "GATED"):
            return "planar_static", ""
        # NM without a usable ImageType: a volume with Bq/mL units is a reconstruction.
        if int(ds.get("NumberOfSlices", 0) or 0) > 1 or units in ("BQML", "BQ/ML"):
            return "spect_recon", ""
        return "other", ""
    if modality == "PT":
        radio = ""
        seq = ds.get("RadiopharmaceuticalInformationSequence")
        if seq:
            item = seq[0]
            radio = " ".join([str(item.get("Radiopharmaceutical", "") or "")] +
                             [str(c.get("CodeMeaning", "")) for c in (item.get("RadionuclideCodeSequence") or [])])
            if item.get("RadionuclideHalfLife") not in (None, ""):
                # Lu-177: 574 300 s; PET nuclides (F-18 6586 s, Ga-68 4062 s, Cu-64 45 720 s) far less:
                # the half-life decides before any name (a Ga-68 DOTATATE PET is not a Lu-177 SPECT).
                half_life_s = float(item.RadionuclideHalfLife)
                if half_life_s > 2.0e5:
                    return "spect_recon", ""
                if half_life_s < 1.0e5:
                    return "pet", ""
        if _LU177_WORDS.search(radio) or re.search(r"SPECT|xSPECT|Lu-?177", desc, re.IGNORECASE):
            return "spect_recon", ""
        return "pet", ""
    return "other", ""


def _read_header(path: str):
    """Header of a DICOM file, or (None, reason) when it is not one."""
    try:
        return read_dicom(path, stop_before_pixels=True), ""
    except InvalidDicomError:
        if Path(path).suffix.lower() in DICOM_SUFFIXES:  # a study's file, damaged: its series may be incomplete
            return None, f"unreadable DICOM (named {Path(path).suffix} but not a DICOM file)"
        return None, "not a DICOM file"
    except Exception as exc:  # truncated or corrupt
        return None, f"unreadable DICOM ({type(exc).__name__}: {exc})"


def scan_study(root, *, injected_activity_bq: Optional[float] = None, injection_time: Optional[datetime] = None,
               progress=None, cluster_hours: float = 6.0, extra_roots=()) -> Inventory:
    """Walk ``root``, classify every file by its header, group series and time points.

    Parameters
    ----------
    root : path-like
        Study folder (any depth and file names).
    injected_activity_bq, injection_time : optional
        Overrides for the values in the RadiopharmaceuticalInformationSequence.
    progress : callable or Progress, optional
    cluster_hours : float
        Reconstructed SPECT series acquired within this many hours form one time point (h).
    extra_roots : sequence of path-like
        More folders read as part of the same study (e.g. the output of ``ludosimetry reconstruct``).

    Raises
    ------
    StudyError
        Missing/empty folder, no DICOM file at all.
    """
    root = Path(root)
    if not root.exists():
        raise StudyError("study folder does not exist", root)
    if not root.is_dir():
        raise StudyError("study path is not a folder", root)
    progress = as_progress(progress)
    for extra in extra_roots:
        if not Path(extra).is_dir():
            raise StudyError("additional study folder does not exist", extra)
    paths, unreadable = _study_files((root, *map(Path, extra_roots)))
    if not paths and not unreadable:
        raise StudyError("study folder is empty", root)
    # A folder that cannot be listed is reported like a file that cannot be read (a run refuses both).
    skipped = [{"file": folder, "reason": f"unreadable folder ({reason})"} for folder, reason in unreadable]
    by_uid: Dict[str, List] = {}
    for i, path in enumerate(paths):
        if i % 50 == 0:
            progress.report(i / len(paths), f"reading headers {i}/{len(paths)}")
        ds, reason = _read_header(path)
        if ds is None:
            skipped.append({"file": path, "reason": reason})
            continue
        uid = str(ds.get("SeriesInstanceUID", "") or "")
        if not uid:
            skipped.append({"file": path, "reason": (ORPHAN_OBJECT if _is_composite_object(ds) else
                                                     "DICOM file without SeriesInstanceUID")})
            continue
        by_uid.setdefault(uid, []).append((path, ds))
    if not by_uid:
        if unreadable and not paths:
            raise StudyError(f"study folder cannot be read ({unreadable[0][1]})", unreadable[0][0])
        raise StudyError(f"no DICOM file among {len(paths)} files", root)

    inv_warnings: List[str] = []
    series: List[SeriesEntry] = []
    for uid, items in by_uid.items():
        roles = Counter()
        forms = Counter()
        for path, ds in items:
            role, form = classify(ds, path)
            roles[role] += 1
            forms[form] += 1
        role = roles.most_common(1)[0][0]
        modality = Counter(str(ds.get("Modality", "")) for _, ds in items).most_common(1)[0][0]
        if len(roles) > 1:
            inv_warnings.append(f"series {uid}: files of mixed kinds {dict(roles)}; treated as {role}")
        first_path, first = items[0]
        desc = str(first.get("SeriesDescription", "") or "")
        acq, src, conflict = _series_acquisition_time(items)
        if conflict is not None:
            inv_warnings.append(f"series {uid} ({desc}): {conflict[1]}")
        folders = _relative_folders(first_path, (root, *map(Path, extra_roots)))
        code = parse_series_code(desc, *reversed(folders))
        refs = []
        if role == "rtstruct":
            for fr in first.get("ReferencedFrameOfReferenceSequence", []) or []:
                for st in fr.get("RTReferencedStudySequence", []) or []:
                    for se in st.get("RTReferencedSeriesSequence", []) or []:
                        if se.get("SeriesInstanceUID"):
                            refs.append(str(se.SeriesInstanceUID))
        for_uid = str(first.get("FrameOfReferenceUID", "") or "")
        if not for_uid and role == "rtstruct":
            frs = first.get("ReferencedFrameOfReferenceSequence") or []
            if frs:
                for_uid = str(frs[0].get("FrameOfReferenceUID", ""))
        activity, inj_time, radio = injection_from_header(first, acq)
        entry = SeriesEntry(
            series_instance_uid=uid, modality=modality, role=role, description=desc, code=code,
            files=[p for p, _ in items], acquisition_time=acq, acquisition_time_source=src,
            frame_of_reference_uid=for_uid, study_instance_uid=str(first.get("StudyInstanceUID", "")),
            patient_id=str(first.get("PatientID", "")), form=forms.most_common(1)[0][0],
            referenced_series_uids=refs, rows=int(first.get("Rows", 0) or 0),
            columns=int(first.get("Columns", 0) or 0), units=_units(first),
            injected_activity_bq=activity, injection_time=inj_time, radiopharmaceutical=radio,
            reconstructed_here="PyTomography" in str(first.get("DerivationDescription", "") or ""))
        entry.injection_date_inferred = inj_time is not None and radiopharmaceutical_start(first)[0] is None
        if conflict is not None:
            entry.time_conflict_file, entry.time_conflict = conflict
        if role in ("spect_recon", "spect_projections", "planar_whole_body"):
            fallback = _acquisition_time_fallback(items)
            if fallback:
                inv_warnings.append(f"series {uid} ({desc}): {fallback}")
                entry.acquisition_time_fallback = fallback
        other = next(((p, pid) for p, pid in ((p, str(ds.get("PatientID", "") or "").strip()) for p, ds in items)
                      if pid and pid != entry.patient_id.strip()), None)
        if other is not None and entry.patient_id.strip():
            entry.other_patient_file, entry.other_patient_id = other
        series.append(entry)
    series.sort(key=lambda s: (s.acquisition_time or datetime.max, s.role, s.description))
    progress.report(1.0, "classified")
    inv = Inventory(root=str(root), series=series, skipped=skipped, time_points=[], warnings=inv_warnings)
    _assign_injection(inv, injected_activity_bq, injection_time)
    _assign_time_points(inv, cluster_hours)
    for w in inv_warnings:
        warnings.warn(w)
    return inv


def _study_files(roots: Sequence[Path]) -> "Tuple[List[str], List[Tuple[str, str]]]":
    """Every file below ``roots`` (symbolic links to files included, links to folders not followed), sorted,
    and the folders that could not be listed, with the reason."""
    files: List[str] = []
    unreadable: List[Tuple[str, str]] = []

    def failed(err: OSError) -> None:
        unreadable.append((str(err.filename), f"{type(err).__name__}: {err.strerror or err}"))
    for root in roots:
        for folder, _subfolders, names in os.walk(str(root), onerror=failed):
            files += [p for p in (os.path.join(folder, n) for n in names) if os.path.isfile(p)]
    return sorted(files), unreadable


def _is_composite_object(ds) -> bool:
    """An image, structure set or other stored object (it has a Modality or SOP class), not a DICOMDIR
    or a bare dataset."""
    sop_class = str(ds.get("SOPClassUID", "") or getattr(getattr(ds, "file_meta", None), "MediaStorageSOPClassUID",
                                                              "") or "")
    if sop_class == _DICOMDIR_SOP_CLASS:
        return False
    return bool(ds.get("Modality") or ds.get("SOPClassUID") or "Rows" in ds)


def _series_acquisition_time(items) -> "Tuple[Optional[datetime], str, Optional[Tuple[str, str]]]":
    """The acquisition start of a series: the earliest of its files' times that agree with the median.

    Returns
    -------
    (datetime or None, str, (file, message) or None)
        The time, the header it came from, and the file furthest from the others when it is more than
        :data:`SERIES_TIME_SPREAD_H` away (with a message naming it and both times).
    """
    known = []
    for path, ds in items:
        when, source = acquisition_datetime(ds)
        if when is not None:
            known.append((when, source, path))
    if not known:
        return None, "", None
    known.sort(key=lambda k: k[0])
    median = known[len(known) // 2][0]
    spread = timedelta(hours=SERIES_TIME_SPREAD_H)
    acq, source, _ = next(k for k in known if abs(k[0] - median) <= spread)
    worst, worst_source, worst_path = max(known, key=lambda k: abs(k[0] - median))
    if abs(worst - median) <= spread:
        return acq, source, None
    hours = abs(worst - median).total_seconds() / 3600.0
    return acq, source, (worst_path, f"{worst_path} was acquired {format_time(worst)} ({worst_source}), "
                                     f"{hours:.1f} h from the series' other files ({format_time(median)}): "
                                     "not one acquisition; check its dates")


def _acquisition_time_fallback(items) -> str:
    """What the README promises to warn: a series whose acquisition time came from another header than
    AcquisitionDateTime / AcquisitionDate+Time (absent or invalid), naming the first such file; else ''."""
    fallen = []
    for path, ds in items:
        when, source = acquisition_datetime(ds)
        if when is not None and source not in ("AcquisitionDateTime", "AcquisitionDate/Time"):
            fallen.append((path, ds, source))
    if not fallen:
        return ""
    path, ds, source = fallen[0]
    problem = acquisition_time_problem(ds) or "no acquisition date/time in the header"
    return f"{problem}; using {source} ({len(fallen)} of {len(items)} files, e.g. {path})"


def _assign_injection(inv: Inventory, activity_bq: Optional[float], when: Optional[datetime]) -> None:
    """Injection from overrides, else from the earliest Lu-177 series that has it.

    A header time stated with its date wins over one stated as a time alone, whose date is guessed (the
    latest such time not after that series' acquisition) and so taken as a named assumption. A header that
    disagrees with the time used by more than :data:`INJECTION_TOLERANCE_S`, or with the activity used by more
    than :data:`INJECTED_ACTIVITY_TOLERANCE`, and a header activity read as MBq are named assumptions.
    """
    candidates = [s for s in inv.series if s.role in ("spect_recon", "spect_projections", "planar_whole_body",
                                                      "tia_map")]
    header_activity = next((s.injected_activity_bq for s in candidates if s.injected_activity_bq), None)
    timed = sorted((s for s in candidates if s.injection_time), key=lambda s: s.injection_date_inferred)
    header_time = timed[0].injection_time if timed else None
    if when is None and timed and timed[0].injection_date_inferred:
        assume("injection date inferred from RadiopharmaceuticalStartTime alone (no "
               "RadiopharmaceuticalStartDateTime): the latest such time before the first scan",
               format_time(header_time), "RadiopharmaceuticalStartTime", timed[0].files[0])
    stated = [s for s in candidates if s.injected_activity_bq]
    if header_activity is not None:
        if header_activity < MBQ_WRITTEN_AS_BQ_BELOW and activity_bq is None:
            assume(f"RadionuclideTotalDose {header_activity:g} read as MBq, not Bq (0.1 MBq is far below a therapy)",
                   f"{_stated_activity_bq(header_activity):.6g} Bq", "RadionuclideTotalDose × 1e6", stated[0].files[0])
        header_activity = _stated_activity_bq(header_activity)
    inv.injected_activity_bq = activity_bq if activity_bq is not None else header_activity
    _name_activity_disagreements(inv.injected_activity_bq, stated, "the command line" if activity_bq is not None
                                 else "the first series stating it")
    inv.injection_time = when if when is not None else header_time
    if inv.injection_time is not None:
        _name_injection_disagreements(inv, timed, "the command line" if when is not None else "the headers")
    inv.injection_source = ("command line" if activity_bq is not None or when is not None else
                            "RadiopharmaceuticalInformationSequence" if header_activity else "")


#: Relative difference of two injected activities (header and the one used) above which they disagree.
INJECTED_ACTIVITY_TOLERANCE = 0.01
#: A RadionuclideTotalDose below this (Bq) is MBq written in the Bq attribute (some writers do): 0.1 MBq is far
#: below any therapy activity.
MBQ_WRITTEN_AS_BQ_BELOW = 1e5


def _stated_activity_bq(value: float) -> float:
    """A header's RadionuclideTotalDose in Bq (a value below :data:`MBQ_WRITTEN_AS_BQ_BELOW` is in MBq)."""
    return value * 1e6 if value < MBQ_WRITTEN_AS_BQ_BELOW else value


def _name_activity_disagreements(used_bq: Optional[float], stated: List[SeriesEntry], origin: str) -> None:
    """One named assumption per injected activity stated in headers that differs from the one used by more than
    :data:`INJECTED_ACTIVITY_TOLERANCE` (a header in MBq counted as its Bq value is not a disagreement)."""
    if not used_bq:
        return
    differing: Dict[float, List[SeriesEntry]] = {}
    for s in stated:
        if abs(_stated_activity_bq(s.injected_activity_bq) / used_bq - 1.0) > INJECTED_ACTIVITY_TOLERANCE:
            differing.setdefault(round(s.injected_activity_bq, 6), []).append(s)
    for value, entries in differing.items():
        assume(f"injected activity used over the header's RadionuclideTotalDose {value:.6g} Bq "
               f"({len(entries)} series), which disagrees with it", f"{used_bq / 1e6:.6g} MBq", origin,
               entries[0].files[0])


def _name_injection_disagreements(inv: Inventory, timed: List[SeriesEntry], origin: str) -> None:
    """One named assumption per injection time stated in headers that is not the one used (a header that
    disagrees with the command line, or with the header used), naming both and the first file that states it
    (a time alone is compared as a time of day); ``--strict`` refuses it."""
    used = inv.injection_time
    stated: Dict[str, List[SeriesEntry]] = {}
    for s in timed:
        if injection_times_differ(s.injection_time, used, date_known=not s.injection_date_inferred,
                                  tolerance_s=INJECTION_TOLERANCE_S):
            text = (f"RadiopharmaceuticalStartTime {s.injection_time.strftime('%H:%M:%S')}"
                    if s.injection_date_inferred else
                    f"RadiopharmaceuticalStartDateTime {format_time(s.injection_time)}")
            stated.setdefault(text, []).append(s)
    for text, entries in stated.items():
        assume(f"injection time used over the header's {text} ({len(entries)} series), which disagrees with it",
               format_time(used), origin, entries[0].files[0])


def _assign_time_points(inv: Inventory, cluster_hours: float) -> None:
    """Time points = clusters of reconstructed-SPECT acquisition times; other series join by
    frame of reference, referenced series, study, code or nearest time."""
    spects = [s for s in inv.by_role("spect_recon") if s.acquisition_time is not None]
    spects.sort(key=lambda s: s.acquisition_time)
    clusters: List[List[SeriesEntry]] = []
    for s in spects:
        if clusters and (s.acquisition_time - clusters[-1][0].acquisition_time).total_seconds() <= cluster_hours * 3600:
            clusters[-1].append(s)
        else:
            clusters.append([s])
    for s in inv.by_role("spect_recon"):
        if s.acquisition_time is None:
            inv.warnings.append(f"reconstructed SPECT series {s.series_instance_uid} has no date/time at all; "
                                "it joins no time point")
    inv.time_points = [TimePoint(index=i, acquisition_time=c[0].acquisition_time,
                                 spect_series_uids=[s.series_instance_uid for s in c],
                                 code=next((s.code for s in c if s.code), None))
                       for i, c in enumerate(clusters)]
    for tp in inv.time_points:
        for uid in tp.spect_series_uids:
            inv.get(uid).time_point = tp.index
    by_for: Dict[str, int] = {}
    by_study: Dict[str, int] = {}
    by_code: Dict[str, int] = {}
    by_uid: Dict[str, int] = {}
    for s in inv.series:
        if s.time_point is not None:
            by_for.setdefault(s.frame_of_reference_uid, s.time_point) if s.frame_of_reference_uid else None
            by_study.setdefault(s.study_instance_uid, s.time_point)
            if s.code:
                by_code.setdefault(s.code, s.time_point)
            by_uid[s.series_instance_uid] = s.time_point
    # Second pass: CT / masks join by frame of reference first (so that RTSTRUCTs can follow their CT).
    for s in inv.series:
        if s.time_point is not None or s.role in ("pet", "mr", "tia_map"):
            continue
        tp = by_for.get(s.frame_of_reference_uid) if s.frame_of_reference_uid else None
        if tp is None and s.code:
            tp = by_code.get(s.code)
        if tp is None:
            tp = by_study.get(s.study_instance_uid)
        if tp is None and s.acquisition_time is not None and inv.time_points and s.role not in ("rtstruct", "mask"):
            near = min(inv.time_points, key=lambda t: abs((t.acquisition_time - s.acquisition_time).total_seconds()))
            if abs((near.acquisition_time - s.acquisition_time).total_seconds()) <= cluster_hours * 3600:
                tp = near.index
        s.time_point = tp
        if tp is not None:
            by_uid[s.series_instance_uid] = tp
    for s in inv.series:
        if s.role == "rtstruct":
            ref_tp = next((by_uid[u] for u in s.referenced_series_uids if u in by_uid), None)
            if ref_tp is not None:
                s.time_point = ref_tp


def _relative_folders(path: str, roots) -> tuple:
    """Folder names of ``path`` below the first of ``roots`` that holds it."""
    for r in roots:
        try:
            return Path(path).relative_to(r).parts[:-1]
        except ValueError:
            continue
    return ()


def require_readable(path: str) -> None:
    """Raise DicomFileError naming ``path`` when it is not a readable DICOM file."""
    ds, reason = _read_header(path)
    if ds is None:
        raise DicomFileError(reason, path)


def require_one_patient(inv: Inventory, spect_entries: Sequence[SeriesEntry],
                        also_used: Sequence[SeriesEntry] = ()) -> List[str]:
    """Refuse time points of more than one patient.

    The PatientID of every chosen SPECT series, of the CT, RTSTRUCT and mask series of their time points and of
    the series in ``also_used`` (e.g. the planar images the run takes) must agree, file by file (another
    patient's series or file in the folder must not become part of this one's run).

    Returns
    -------
    list of str
        Warnings: series without a PatientID (they cannot be checked).

    Raises
    ------
    StudyError
        Two PatientIDs: names both, how many series carry each and a file of each.
    """
    used = {s.time_point for s in spect_entries}
    checked = list(spect_entries) + [s for s in inv.series if s.role in ("ct", "rtstruct", "mask")
                                     and s.time_point is not None and s.time_point in used] + list(also_used)
    mixed = next((s for s in checked if s.other_patient_file), None)
    if mixed is not None:
        raise StudyError(f"series {mixed.series_instance_uid} ({mixed.description}) holds files of more than one "
                         f"patient: PatientID {mixed.patient_id!r} ({mixed.files[0]}) and {mixed.other_patient_id!r}; "
                         "keep one patient's files in the study folder", mixed.other_patient_file)
    by_patient: Dict[str, List[SeriesEntry]] = {}
    unknown = []
    for s in checked:
        if s.patient_id.strip():
            by_patient.setdefault(s.patient_id.strip(), []).append(s)
        else:
            unknown.append(s)
    if len(by_patient) > 1:
        ranked = sorted(by_patient.items(), key=lambda kv: -len(kv[1]))
        listing = " and ".join(f"PatientID {pid!r} ({len(ss)} series, e.g. {ss[0].files[0]})" for pid, ss in ranked)
        raise StudyError(f"the time points used belong to more than one patient: {listing}; keep one patient's "
                         "series in the study folder", inv.root)
    patient = next(iter(by_patient), "")
    return [f"series {s.series_instance_uid} ({s.description}) has no PatientID: it cannot be checked to be "
            f"patient {patient!r}'s ({s.files[0]})" for s in unknown if patient]


def require_one_acquisition(entry: SeriesEntry, kind: str, way_out: str = "", option: Optional[str] = None) -> None:
    """Refuse a ``kind`` series (``"SPECT"``, ``"planar"``) with a file acquired more than
    :data:`SERIES_TIME_SPREAD_H` from the rest (a file of another acquisition mixed in), naming that file;
    ``way_out`` ends the message (e.g. how to leave the series out, ``{option}`` the flag of ``option``)."""
    if entry.time_conflict:
        raise DicomFileError(f"{kind} series {entry.description or entry.series_instance_uid}: "
                             f"{entry.time_conflict}{way_out}", entry.time_conflict_file, option=option)


def require_plausible_times(inv: Inventory, spect_entries: Sequence[SeriesEntry]) -> None:
    """Refuse SPECT series whose files disagree on their acquisition time, or acquired before the injection
    or implausibly long after it (:func:`~LuDosimetryLib.io.dicom_time.implausible_delay`).

    Raises
    ------
    DicomFileError
        A file acquired more than :data:`SERIES_TIME_SPREAD_H` from the rest of its series (names it).
    StudyError
        A series outside the plausible window after the injection (names the series and its first file;
        the option is the injection time).
    """
    for s in spect_entries:
        name = f"SPECT series {s.description or s.series_instance_uid}"
        require_one_acquisition(s, "SPECT")
        if s.acquisition_time is None or inv.injection_time is None:
            continue
        reason = implausible_delay(s.acquisition_time, inv.injection_time)
        if reason:
            raise StudyError(f"{name} was {reason}; check the dates or {{option}}", s.files[0],
                             option="injection_time")
