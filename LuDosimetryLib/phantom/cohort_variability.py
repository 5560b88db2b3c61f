"""A synthetic cohort: the synthetic patient's kinetics with seed-driven inter-patient variability.

Each patient of the cohort takes the uptake–washout curves of :data:`.kinetics_truth.TISSUE_KINETICS` (the
synthetic patient, patient 4 of the Lu-177 DOTATATE collection) and multiplies, per tissue, the amplitude
(uptake), the biological half-life (clearance) and the uptake half-life by log-normal factors
exp(N(0, s²)): between-patient variability that is log-normal, as effective half-lives of Lu-177
radiopharmaceuticals are (Hou X. et al., "Feasibility of single-time-point dosimetry for radiopharmaceutical
therapies", J Nucl Med 62(7):1006–1011, 2021: a log-normal describes their spread better than a normal).

Magnitudes (:data:`LOG_SD`, SD of the natural log; this project's choice, stated, not a fit to a cohort, of
the order of the between-patient spreads of uptake and effective half-life reported for Lu-177 DOTATATE, e.g.
Sandström M. et al., J Nucl Med 54:33–41, 2013): 0.25 on organ amplitudes, 0.30 on organ biological
half-lives, 0.60 on lesion amplitudes and 0.35 on lesion half-lives (tumour uptake varies far more than organ
uptake), 0.30 on uptake half-lives. The two kidneys of a patient share the patient's draw, with a small
left/right difference (:data:`KIDNEY_LR_LOG_SD`). Scan times jitter around days 0, 1, 4, 7
(:data:`SCHEDULE_H`), the administered activity around 7.4 GBq (± 3 %).

:func:`noisy_curves` adds the measurement error of a VOI's SPECT activity: multiplicative log-normal noise of
``cv`` (default 7 %, within the 5–10 % of quantitative Lu-177 SPECT/CT VOI activities).

This module does no I/O.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, List, Tuple

import numpy as np

from .kinetics_truth import TISSUE_KINETICS, ExponentialSum, UptakeWashout
from .study import VOIS  # a cohort patient has the synthetic study's VOIs

#: SD of ln(factor) per tissue kind: (amplitude, biological half-life, uptake half-life).
LOG_SD: Dict[str, Tuple[float, float, float]] = {
    "organ": (0.25, 0.30, 0.30),
    "lesion": (0.60, 0.35, 0.30),
}
#: Left/right kidney difference within a patient (SD of ln), on amplitude and half-life.
KIDNEY_LR_LOG_SD = 0.05
#: Nominal scan schedule (h p.i.) and the SD of each scan's jitter (h).
SCHEDULE_H = (4.0, 24.0, 96.0, 168.0)
SCHEDULE_JITTER_H = (0.5, 2.0, 4.0, 6.0)
INJECTED_ACTIVITY_BQ = 7.4e9


@dataclass(frozen=True)
class CohortPatient:
    """One patient of the synthetic cohort.

    Attributes
    ----------
    patient_id : str
    injected_activity_bq : float
    scan_hours : tuple of float
        Scan times (h p.i.).
    kinetics : dict tissue → UptakeWashout
        True total activity per tissue.
    """

    patient_id: str
    injected_activity_bq: float
    scan_hours: Tuple[float, ...]
    kinetics: Dict[str, UptakeWashout]

    def voi_curve(self, voi: str) -> ExponentialSum:
        """The true curve of a VOI (sum of its tissues)."""
        parts = [self.kinetics[t].as_sum() for t in VOIS[voi][1]]
        total = parts[0]
        for p in parts[1:]:
            total = total + p
        return total

    def voi_kind(self, voi: str) -> str:
        return VOIS[voi][0]


def _varied(model: UptakeWashout, factors) -> UptakeWashout:
    amp, t_bio, t_up = factors
    return UptakeWashout(tuple(a * amp for a in model.amplitudes_bq),
                         tuple(t * t_bio for t in model.biological_half_lives_h),
                         None if model.uptake_half_life_h is None else model.uptake_half_life_h * t_up)


def varied_kinetics(rng: np.random.Generator) -> Dict[str, UptakeWashout]:
    """One patient's tissue kinetics: :data:`TISSUE_KINETICS` with log-normal factors (module docstring)."""
    out: Dict[str, UptakeWashout] = {}
    kidney = np.exp(rng.normal(0.0, LOG_SD["organ"]))
    for name, model in TISSUE_KINETICS.items():
        if name == "remainder":
            out[name] = model
            continue
        if name.startswith("kidney"):
            lr = np.exp(rng.normal(0.0, KIDNEY_LR_LOG_SD, 2))
            factors = (kidney[0] * lr[0], kidney[1] * lr[1], kidney[2])
        else:
            factors = np.exp(rng.normal(0.0, LOG_SD["lesion" if name.startswith("lesion") else "organ"]))
        out[name] = _varied(model, factors)
    return out


def synthetic_cohort(n_patients: int = 12, seed: int = 0) -> List[CohortPatient]:
    """``n_patients`` patients with their own kinetics, schedule and administered activity (deterministic per
    ``seed``)."""
    rng = np.random.default_rng(seed)
    patients = []
    for i in range(n_patients):
        kinetics = varied_kinetics(rng)
        hours = tuple(float(max(h + rng.normal(0.0, s), 0.5)) for h, s in zip(SCHEDULE_H, SCHEDULE_JITTER_H))
        activity = INJECTED_ACTIVITY_BQ * float(math.exp(rng.normal(0.0, 0.03)))
        patients.append(CohortPatient(f"SYN{seed:03d}-{i + 1:03d}", activity, hours, kinetics))
    return patients


def noisy_curves(patient: CohortPatient, cv: float = 0.07, rng=None) -> Dict[str, Tuple[np.ndarray, np.ndarray]]:
    """Each VOI's measured curve: (scan hours, activity Bq) with log-normal noise of SD ``cv`` per point."""
    rng = rng if rng is not None else np.random.default_rng(0)
    t = np.array(patient.scan_hours)
    return {voi: (t.copy(), patient.voi_curve(voi).activity_bq(t) * np.exp(rng.normal(0.0, cv, t.size)))
            for voi in VOIS}
