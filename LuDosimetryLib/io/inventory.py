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
from datetime import datetime
from pathlib import Path
from typing import Dict, List, Optional

from pydicom.errors import InvalidDicomError

from ..errors import DicomFileError, StudyError
from ..progress import as_progress
from .dicom_common import read_dicom
from .dicom_time import acquisition_datetime, injection_from_header

ROLES = ("ct", "spect_recon", "spect_projections", "attenuation_map", "planar_whole_body", "planar_static",
         "rtstruct", "mask", "tia_map", "pet", "mr", "rtdose", "other")

CODE_PATTERN = re.compile(r"C(\d+)\s*S(\d+)\s*D(\d+)", re.IGNORECASE)

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
    paths = sorted(str(p) for r in (root, *map(Path, extra_roots)) for p in r.rglob("*") if p.is_file())
    if not paths:
        raise StudyError("study folder is empty", root)
    skipped = []
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
            skipped.append({"file": path, "reason": "DICOM file without SeriesInstanceUID"})
            continue
        by_uid.setdefault(uid, []).append((path, ds))
    if not by_uid:
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
        times = [acquisition_datetime(ds) for _, ds in items]
        known = [(t, src) for t, src in times if t is not None]
        acq, src = (min(known, key=lambda x: x[0]) if known else (None, ""))
        desc = str(first.get("SeriesDescription", "") or "")
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
        if role in ("spect_recon", "spect_projections", "planar_whole_body") and src and "Acquisition" not in src:
            inv_warnings.append(f"series {uid} ({desc}): no acquisition date/time in the header; "
                                f"using {src}")
        series.append(entry)
    series.sort(key=lambda s: (s.acquisition_time or datetime.max, s.role, s.description))
    progress.report(1.0, "classified")
    inv = Inventory(root=str(root), series=series, skipped=skipped, time_points=[], warnings=inv_warnings)
    _assign_injection(inv, injected_activity_bq, injection_time)
    _assign_time_points(inv, cluster_hours)
    for w in inv_warnings:
        warnings.warn(w)
    return inv


def _assign_injection(inv: Inventory, activity_bq: Optional[float], when: Optional[datetime]) -> None:
    """Injection from overrides, else from the earliest Lu-177 series that has it."""
    candidates = [s for s in inv.series if s.role in ("spect_recon", "spect_projections", "planar_whole_body",
                                                      "tia_map")]
    header_activity = next((s.injected_activity_bq for s in candidates if s.injected_activity_bq), None)
    header_time = next((s.injection_time for s in candidates if s.injection_time), None)
    values = {round(s.injected_activity_bq, -3) for s in candidates if s.injected_activity_bq}
    if len(values) > 1:
        inv.warnings.append(f"series disagree on the injected activity ({sorted(values)} Bq); using the earliest")
    if header_activity is not None and header_activity < 1e5:
        # Some writers put MBq in a Bq attribute; 0.1 MBq is far below any therapy activity.
        inv.warnings.append(f"RadionuclideTotalDose {header_activity} looks like MBq, not Bq; scaled by 1e6")
        header_activity *= 1e6
    inv.injected_activity_bq = activity_bq if activity_bq is not None else header_activity
    inv.injection_time = when if when is not None else header_time
    inv.injection_source = ("command line" if activity_bq is not None or when is not None else
                            "RadiopharmaceuticalInformationSequence" if header_activity else "")


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
