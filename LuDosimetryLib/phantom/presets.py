"""The two patients of the published University of Michigan Lu-177 DOTATATE collection, as twin presets.

Each preset fixes the identity and schedule of the real patient (from the collection's description:
patient ID, sex, age, administered activity and time, cycle, scan days, number of lesions, spleen or
not), an anatomy built from :mod:`.anatomy` shapes, true kinetics (:mod:`.kinetics_truth` models) and
the pose of the patient at each session (:mod:`.motion`).

Calibration of patient 4 (the collection's published anchors): scans at 3.74, 27.73, 103.09, 123.98 h;
left kidney ≈ 99, 74, 25, 19 MBq and liver VOI ≈ 378, 347, 193, 173 MBq (kinetics of
:data:`.kinetics_truth.TISSUE_KINETICS`, unchanged); mean absorbed doses kidneys 2.3–2.7 Gy, liver 2.4 Gy,
spleen 3.0 Gy. With the activities fixed, the kidney time-integrated activity (≈ 7.5 GBq·h) gives
2.3–2.7 Gy only for a kidney mass of ≈ 240–280 g: the kidneys are therefore enlarged to ≈ 235 mL each
(upper end of adult kidney volumes measured on CT; a clinical kidney VOI also includes the renal
pelvis and some spill-in margin), the liver to ≈ 1.9 L (2.0 kg: 2.4 Gy) and the spleen to ≈ 250 mL with
an activity 0.85× that of the synthetic patient (3.0 Gy). Patient 6 has no published anchors; its
values are of the same order (kidney and tumour kinetics in the ranges of Sandström et al., J Nucl Med
2013;54:33–41, and Garske-Román et al., Eur J Nucl Med Mol Imaging 2018;45:970–988).
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Dict, List, Tuple

from ..io.dicom_common import PatientInfo
from .anatomy import TISSUES, Structure, Superellipsoid, Tissue, body_and_spine
from .kinetics_truth import TISSUE_KINETICS, UptakeWashout
from .motion import Motion


@dataclass(frozen=True)
class TwinPreset:
    """Everything that distinguishes one twin patient.

    Attributes
    ----------
    name : str
        ``patient4`` or ``patient6``; the output folder is ``patient_4`` / ``patient_6``.
    patient : PatientInfo
    injected_activity_bq : float
    injection_time : datetime
    cycle : int
    scan_hours : tuple of float
        Acquisition starts (h after the administration).
    scan_days : tuple of int
    structures : tuple of Structure
        Anatomy in painting order.
    kinetics : dict of str to UptakeWashout
        True total activity per tissue (and ``"remainder"``).
    vois : dict of str to (kind, tissues)
        VOI name → ("organ" | "lesion", tissue names it contains).
    motions : tuple of Motion
        Pose of each session (the first is the reference, identity).
    pretherapy_motion : Motion
        Pose at the diagnostic scans (months earlier).
    pretherapy_days_before : int
        Days between the diagnostic PET/CT and the therapy.
    diagnostic_kind : str
        "CT" (the standalone diagnostic study).
    """

    name: str
    patient: PatientInfo
    injected_activity_bq: float
    injection_time: datetime
    cycle: int
    scan_hours: Tuple[float, ...]
    scan_days: Tuple[int, ...]
    structures: Tuple[Structure, ...]
    kinetics: Dict[str, UptakeWashout]
    vois: Dict[str, Tuple[str, Tuple[str, ...]]]
    motions: Tuple[Motion, ...]
    pretherapy_motion: Motion
    pretherapy_days_before: int
    diagnostic_kind: str = "CT"

    @property
    def folder(self) -> str:
        return "patient_" + self.name.replace("patient", "")

    def code(self, scan: int) -> str:
        """``C<cycle>S<scan>D<day>`` of scan ``scan`` (1-based)."""
        return f"C{self.cycle}S{scan}D{self.scan_days[scan - 1]}"


def tissue(name: str) -> Tissue:
    """The tissue table entry (lesions beyond the base table are soft-tissue tumours)."""
    if name in TISSUES:
        return TISSUES[name]
    if name.startswith("lesion_"):
        return Tissue(name, 40.0, 1.05)
    raise KeyError(name)


def _kidneys(scale: float) -> List[Structure]:
    a, b, c = 30.0 * scale, 24.0 * scale, 56.0 * scale
    return [
        Structure("kidney_left", (Superellipsoid((72.0, 68.0, -12.0), (a, b, c), rotation_deg=(0.0, -12.0, 0.0)),),
                  cuts=(Superellipsoid((72.0 - a + 2.0, 62.0, -12.0), (12.0, 10.0, 16.0)),)),
        Structure("kidney_right", (Superellipsoid((-74.0, 70.0, -30.0), (a, b, c), rotation_deg=(0.0, 12.0, 0.0)),),
                  cuts=(Superellipsoid((-74.0 + a - 2.0, 64.0, -30.0), (12.0, 10.0, 16.0)),)),
    ]


def _liver(scale: float) -> Structure:
    return Structure("liver", (
        Superellipsoid((-72.0, -8.0, 52.0), (76.0 * scale, 66.0 * scale, 57.0 * scale), exponent=2.2),
        Superellipsoid((5.0, -40.0, 70.0), (62.0 * scale, 30.0 * scale, 36.0 * scale),
                       rotation_deg=(0.0, 0.0, -12.0))))


def _sphere(name: str, center, volume_ml: float) -> Structure:
    r = (3.0 * volume_ml * 1000.0 / (4.0 * 3.141592653589793)) ** (1.0 / 3.0)
    return Structure(name, (Superellipsoid(center, (r, r, r)),))


def _patient4() -> TwinPreset:
    structures = tuple(body_and_spine(discs=True) + [
        _liver(1.07),
        Structure("spleen", (Superellipsoid((102.0, 40.0, 68.0), (31.0, 40.0, 47.0), rotation_deg=(0.0, 0.0, -30.0)),)),
    ] + _kidneys(1.123) + [
        _sphere("lesion_1", (-95.0, -12.0, 62.0), 20.0),
        _sphere("lesion_2", (-38.0, 18.0, 28.0), 5.0),
    ])
    kin = dict(TISSUE_KINETICS)
    kin["spleen"] = UptakeWashout((88.5e6,), (150.0,), 3.0)
    vois = {"Liver": ("organ", ("liver", "lesion_1", "lesion_2")), "Kidney_L": ("organ", ("kidney_left",)),
            "Kidney_R": ("organ", ("kidney_right",)), "Spleen": ("organ", ("spleen",)),
            "Lesion_1": ("lesion", ("lesion_1",)), "Lesion_2": ("lesion", ("lesion_2",))}
    motions = (Motion(),
               Motion((3.5, -2.0, 6.0), (0.0, 0.0, 1.5), breathing_mm=4.0),
               Motion((-4.0, 2.5, -5.0), (1.0, 0.0, -2.0), breathing_mm=6.0),
               Motion((2.0, 3.0, 8.0), (-1.0, 0.5, 1.0), breathing_mm=3.0))
    return TwinPreset(
        name="patient4",
        patient=PatientInfo(patient_id="ANON54121", patient_name="ANON54121", sex="M", age="064Y", weight_kg=82.0),
        injected_activity_bq=7.21e9, injection_time=datetime(2018, 11, 15, 9, 22, 0), cycle=2,
        scan_hours=(3.74, 27.73, 103.09, 123.98), scan_days=(0, 1, 4, 5), structures=structures, kinetics=kin,
        vois=vois, motions=motions, pretherapy_motion=Motion((-6.0, 4.0, 12.0), (2.0, -1.0, 3.0), breathing_mm=5.0),
        pretherapy_days_before=97)


def _patient6() -> TwinPreset:
    # Female: a spine 0.87 times as wide (L2–L4 cancellous volume ~ the ICRP 89 female marrow share).
    structures = tuple(body_and_spine(spine_scale=0.87, discs=True) + [_liver(1.0)] + _kidneys(1.05) + [
        _sphere("lesion_1", (-90.0, -20.0, 70.0), 35.0),
        _sphere("lesion_2", (-40.0, 15.0, 30.0), 8.0),
        _sphere("lesion_3", (10.0, -45.0, 72.0), 4.0),
        _sphere("lesion_4", (30.0, 20.0, -20.0), 12.0),   # pancreatic / nodal lesion outside the liver
    ])
    kin = {
        "kidney_left": UptakeWashout((95e6,), (60.0,), 0.5),
        "kidney_right": UptakeWashout((92e6,), (60.0,), 0.5),
        "liver": UptakeWashout((300e6,), (200.0,), 0.75),
        "lesion_1": UptakeWashout((70e6,), (300.0,), 6.0),
        "lesion_2": UptakeWashout((12e6,), (220.0,), 4.0),
        "lesion_3": UptakeWashout((5e6,), (180.0,), 4.0),
        "lesion_4": UptakeWashout((25e6,), (260.0,), 5.0),
        "remainder": UptakeWashout((1100e6, 180e6), (2.0, 50.0), None),
    }
    vois = {"Liver": ("organ", ("liver", "lesion_1", "lesion_2", "lesion_3")),
            "Kidney_L": ("organ", ("kidney_left",)), "Kidney_R": ("organ", ("kidney_right",)),
            "Lesion_1": ("lesion", ("lesion_1",)), "Lesion_2": ("lesion", ("lesion_2",)),
            "Lesion_3": ("lesion", ("lesion_3",)), "Lesion_4": ("lesion", ("lesion_4",))}
    motions = (Motion(),
               Motion((-3.0, 2.0, -7.0), (0.0, 1.0, -1.0), breathing_mm=5.0),
               Motion((4.5, -1.5, 5.0), (-1.5, 0.0, 2.0), breathing_mm=3.0),
               Motion((-2.5, -3.0, 9.0), (1.0, -0.5, -1.5), breathing_mm=6.0))
    return TwinPreset(
        name="patient6",
        patient=PatientInfo(patient_id="ANON60350", patient_name="ANON60350", sex="F", age="063Y", weight_kg=68.0),
        injected_activity_bq=7.31e9, injection_time=datetime(2019, 5, 15, 9, 55, 0), cycle=1,
        # Days 0, 1, 4, 8 (the hours are plausible values; the collection gives the days).
        scan_hours=(4.05, 24.60, 96.25, 191.80), scan_days=(0, 1, 4, 8), structures=structures, kinetics=kin,
        vois=vois, motions=motions, pretherapy_motion=Motion((5.0, -3.0, -10.0), (-2.0, 1.0, -3.0), breathing_mm=4.0),
        pretherapy_days_before=124)


PRESETS = {"patient4": _patient4, "patient6": _patient6}


def get_preset(name: str) -> TwinPreset:
    """The preset called ``name`` (``patient4`` or ``patient6``)."""
    from ..errors import LuDosimetryError
    key = str(name).lower().replace("_", "").replace(" ", "")
    if key not in PRESETS:
        raise LuDosimetryError(f"unknown twin preset {name!r} (use one of {', '.join(PRESETS)})")
    return PRESETS[key]()
