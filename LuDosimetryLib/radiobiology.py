"""Biologically effective dose (BED) and EQD2 of a radionuclide therapy, from the fitted time-activity curve.

Linear-quadratic model with incomplete mono-exponential repair (Lea–Catcheside). For an absorbed-dose rate
Ḋ(t) delivered from t = 0 to ∞ (Dale, Br J Radiol 1985;58:515-528; Dale, Int J Radiat Biol
1996;69:473-482)::

    BED = D + (2 / (α/β)) · ∫₀^∞ Ḋ(t) ∫₀^t Ḋ(w) e^(−μ (t − w)) dw dt,      μ = ln 2 / T_rep

The dose rate of a VOI is taken proportional to its fitted activity curve, Ḋ(t) = D · A(t) / ∫A — the
convention of MIRD and of the PRRT kidney BED studies (Wessels et al., J Nucl Med 2008;49:1884-1899;
Bodei et al., Eur J Nucl Med Mol Imaging 2008;35:1847-1856), which keeps the uptake phase of the curve.

Closed form for a sum of exponentials Ḋ(t) = Σᵢ cᵢ e^(−λᵢ t) (cᵢ in Gy/h, of either sign; λᵢ > 0, 1/h) —
the mono-, bi- (uptake–washout) and tri-exponential models of :mod:`LuDosimetryLib.kinetics.models` are
all of this form. The inner integral is Σⱼ cⱼ (e^(−λⱼ t) − e^(−μ t)) / (μ − λⱼ), and integrating it against
cᵢ e^(−λᵢ t) gives, with the (μ − λⱼ) cancelling (so μ = λⱼ needs no special case)::

    G-integral I = Σᵢ Σⱼ cᵢ cⱼ / ((λᵢ + λⱼ) (λᵢ + μ))        (Gy²),   BED = D + 2 I / (α/β)

For a mono-exponential (c = D λ) this is the familiar BED = D (1 + D λ / ((μ + λ) α/β)). Curves that are
not sums of exponentials (the trapezoid model) are integrated numerically (:func:`bed_numerical_gy`,
exact recursion for piecewise-constant dose rate on a fine grid). EQD2 = BED / (1 + 2 Gy / (α/β))
(Bentzen et al., Radiother Oncol 2012;105:266-268).

This module does no I/O.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Dict, Mapping, Optional, Sequence, Tuple

import numpy as np

from .errors import LuDosimetryError
from .options import parse_tissue_items

#: Reference dose per fraction of EQD2 (Gy).
EQD2_REFERENCE_FRACTION_GY = 2.0


@dataclass(frozen=True)
class TissueRadiobiology:
    """Linear-quadratic parameters of one tissue.

    Attributes
    ----------
    alpha_beta_gy : float
        α/β ratio (Gy).
    repair_half_time_h : float
        Half-time of sublethal-damage repair T_rep (h); μ = ln 2 / T_rep.
    source : str
        Where the values come from (a citation, or "user").
    """

    alpha_beta_gy: float
    repair_half_time_h: float
    source: str

    @property
    def repair_rate_per_h(self) -> float:
        return math.log(2.0) / self.repair_half_time_h


#: Default radiobiology per tissue type (editable: pass another mapping to :func:`bed_for_fit`).
#: kidney: α/β 2.6 Gy, T_rep 2.8 h, the values behind the kidney BED limits of 28 Gy (with risk factors) and
#: 40 Gy (without) — Bodei et al., Eur J Nucl Med Mol Imaging 2008;35:1847-1856 (after Barone et al., J Nucl
#: Med 2005;46:99S-106S). tumour: α/β 10 Gy, the conventional value for tumours (Dale 1985); T_rep 1.5 h, an
#: assumed value used in PRRT BED studies (e.g. Cremonesi et al., Eur J Nucl Med Mol Imaging
#: 2018;45:2426-2441 review) — the result names it; give the user's values where known.
DEFAULT_TISSUES: Dict[str, TissueRadiobiology] = {
    "kidney": TissueRadiobiology(2.6, 2.8, "Bodei et al., EJNMMI 2008;35:1847 (kidney alpha/beta 2.6 Gy, "
                                           "T_rep 2.8 h)"),
    "tumour": TissueRadiobiology(10.0, 1.5, "alpha/beta 10 Gy conventional for tumours (Dale, Br J Radiol "
                                            "1985;58:515); T_rep 1.5 h assumed (Cremonesi et al., EJNMMI "
                                            "2018;45:2426)"),
}


#: Organ-type names read as the tumour entry of the table.
TUMOUR_TYPES = ("tumour", "tumor", "lesion")
#: RT ROI Interpreted Types (PS3.3 C.8.8.8) that mark a tumour.
TUMOUR_ROI_TYPES = ("GTV", "CTV", "PTV")


def tissue_of(organ_type: Optional[str], roi_interpreted_type: str = "") -> Optional[str]:
    """The radiobiology table's tissue for a VOI: its organ type (tumour, tumor and lesion read as
    "tumour"), else "tumour" for an ROI interpreted as GTV/CTV/PTV, else None."""
    if organ_type:
        typ = organ_type.strip().lower()
        return "tumour" if typ in TUMOUR_TYPES else typ
    if str(roi_interpreted_type or "").strip().upper() in TUMOUR_ROI_TYPES:
        return "tumour"
    return None


def parse_tissue_table(items: Optional[Sequence[str]]) -> Dict[str, TissueRadiobiology]:
    """:data:`DEFAULT_TISSUES` with the user's entries ``TYPE=ALPHA_BETA_GY:T_REP_H`` (``--radiobiology``) over it.

    Raises
    ------
    ValueError
        An item not of that form or with values that are not positive numbers.
    """
    table = dict(DEFAULT_TISSUES)
    for typ, alpha_beta_gy, repair_half_time_h in parse_tissue_items(items):  # the option's own check of the text
        key = typ.lower()
        table["tumour" if key in TUMOUR_TYPES else key] = TissueRadiobiology(alpha_beta_gy, repair_half_time_h, "user")
    return table


class RadiobiologyError(LuDosimetryError):
    """A BED cannot be computed (a parameter out of range, a dose rate that is not finite)."""


def _check_tissue(tissue: TissueRadiobiology) -> None:
    if not (tissue.alpha_beta_gy > 0 and math.isfinite(tissue.alpha_beta_gy)):
        raise RadiobiologyError(f"alpha/beta must be a positive number of Gy, not {tissue.alpha_beta_gy!r}")
    if not (tissue.repair_half_time_h > 0 and math.isfinite(tissue.repair_half_time_h)):
        raise RadiobiologyError(f"the repair half-time must be a positive number of hours, "
                                f"not {tissue.repair_half_time_h!r}")


def lea_catcheside_integral_gy2(coefficients_gy_per_h: Sequence[float], rates_per_h: Sequence[float],
                                repair_rate_per_h: float) -> float:
    """I = ∫₀^∞ Ḋ(t) ∫₀^t Ḋ(w) e^(−μ(t−w)) dw dt for Ḋ(t) = Σ cᵢ e^(−λᵢ t) (Gy²), closed form.

    Parameters
    ----------
    coefficients_gy_per_h : sequence of float
        cᵢ (Gy/h), any sign.
    rates_per_h : sequence of float
        λᵢ (1/h), > 0.
    repair_rate_per_h : float
        μ (1/h), > 0.
    """
    c = np.asarray(coefficients_gy_per_h, dtype=float)
    lam = np.asarray(rates_per_h, dtype=float)
    if c.shape != lam.shape or c.ndim != 1:
        raise RadiobiologyError("one rate per coefficient is needed")
    if np.any(~np.isfinite(lam)) or np.any(lam <= 0) or np.any(~np.isfinite(c)):
        raise RadiobiologyError("the dose rate must be a finite sum of decaying exponentials")
    mu = float(repair_rate_per_h)
    total = np.outer(c, c) / ((lam[:, None] + lam[None, :]) * (lam[:, None] + mu))
    return float(total.sum())


def bed_from_exponentials_gy(coefficients_gy_per_h: Sequence[float], rates_per_h: Sequence[float],
                             tissue: TissueRadiobiology) -> float:
    """BED (Gy) of the dose rate Ḋ(t) = Σ cᵢ e^(−λᵢ t) delivered from t = 0 to ∞."""
    _check_tissue(tissue)
    c = np.asarray(coefficients_gy_per_h, dtype=float)
    lam = np.asarray(rates_per_h, dtype=float)
    dose_gy = float(np.sum(c / lam))
    g = lea_catcheside_integral_gy2(c, lam, tissue.repair_rate_per_h)
    return dose_gy + 2.0 * g / tissue.alpha_beta_gy


def bed_numerical_gy(dose_rate_gy_per_h: Callable[[np.ndarray], np.ndarray], t_end_h: float,
                     tissue: TissueRadiobiology, step_h: float = 0.05,
                     tail_rate_per_h: Optional[float] = None) -> float:
    """BED (Gy) of any dose-rate curve, numerically.

    The dose rate is taken constant over steps of ``step_h`` (its value at each step's midpoint) up to
    ``t_end_h``; with it the repair integral has an exact recursion (the repairable damage carried from
    one step to the next decays by e^(−μ h)). After ``t_end_h`` the curve continues as Ḋ(t_end) e^(−λ (t −
    t_end)) with ``tail_rate_per_h`` = λ, added in closed form (the cross term with the damage still
    unrepaired at t_end included).
    """
    _check_tissue(tissue)
    mu = tissue.repair_rate_per_h
    n = max(1, int(math.ceil(t_end_h / step_h)))
    h = t_end_h / n
    mid = (np.arange(n) + 0.5) * h
    r = np.asarray(dose_rate_gy_per_h(mid), dtype=float)
    if r.shape != mid.shape or not np.all(np.isfinite(r)):
        raise RadiobiologyError("the dose rate is not finite")
    decay = math.exp(-mu * h)
    # within a step of constant rate r: ∫∫ r² e^(−μ(t−w)) = r² (h/μ − (1 − e^(−μh))/μ²)
    within = (h / mu - (1.0 - decay) / mu ** 2)
    # damage carried: M(t) = ∫₀^t Ḋ(w) e^(−μ(t−w)) dw; over a step, ∫ r M(t) dt = r M₀ (1 − e^(−μh))/μ + within r²
    carried = 0.0
    g = 0.0
    for rate in r:
        g += rate * carried * (1.0 - decay) / mu + rate * rate * within
        carried = carried * decay + rate * (1.0 - decay) / mu
    dose_gy = float(np.sum(r) * h)
    if tail_rate_per_h is not None:
        lam = float(tail_rate_per_h)
        r_end = float(dose_rate_gy_per_h(np.array([t_end_h]))[0])
        dose_gy += r_end / lam
        # tail: Ḋ(s) = r_end e^(−λ s), s from t_end; M(s) = carried e^(−μ s) + r_end (e^(−λ s) − e^(−μ s))/(μ − λ)
        g += r_end * carried / (lam + mu) + r_end ** 2 / (2.0 * lam * (lam + mu))
    return dose_gy + 2.0 * g / tissue.alpha_beta_gy


def eqd2_gy(bed_gy: float, alpha_beta_gy: float) -> float:
    """Equivalent dose in 2-Gy fractions (Gy): EQD2 = BED / (1 + 2 Gy / (α/β))."""
    return float(bed_gy) / (1.0 + EQD2_REFERENCE_FRACTION_GY / float(alpha_beta_gy))


def exponential_terms(model_name: str, params: Mapping[str, float]) -> Optional[Tuple[np.ndarray, np.ndarray]]:
    """(amplitudes Bq, rates 1/h) of a fitted exponential model as Σ aᵢ e^(−λᵢ t); None for other models."""
    p = params
    if model_name == "mono_exponential":
        return np.array([p["A0_bq"]]), np.array([p["lambda_per_h"]])
    if model_name == "bi_exponential":
        return (np.array([p["A0_bq"], -p["A0_bq"]]),
                np.array([p["lambda_washout_per_h"], p["lambda_uptake_per_h"]]))
    if model_name == "tri_exponential":
        a1, a2 = p["A1_bq"], p["A2_bq"]
        return (np.array([a1, a2, -(a1 + a2)]),
                np.array([p["lambda1_per_h"], p["lambda2_per_h"], p["lambda3_per_h"]]))
    return None


@dataclass(frozen=True)
class BedResult:
    """BED and EQD2 of one VOI (Gy) with the parameters used."""

    bed_gy: float
    eqd2_gy: float
    alpha_beta_gy: float
    repair_half_time_h: float
    tissue: str
    source: str
    method: str  # "closed form (sum of exponentials)" or "numerical"

    def to_json(self) -> dict:
        return {"bed_gy": self.bed_gy, "eqd2_gy": self.eqd2_gy, "alpha_beta_gy": self.alpha_beta_gy,
                "repair_half_time_h": self.repair_half_time_h, "tissue": self.tissue,
                "radiobiology_source": self.source, "bed_method": self.method}


def bed_for_fit(mean_dose_gy: float, fit, tissue_name: str,
                tissues: Optional[Mapping[str, TissueRadiobiology]] = None) -> BedResult:
    """BED and EQD2 of a VOI's mean absorbed dose, delivered with the shape of its fitted TAC.

    Parameters
    ----------
    mean_dose_gy : float
        Mean absorbed dose of the VOI (Gy), from injection to infinity.
    fit : LuDosimetryLib.kinetics.fit.TacFit
        The VOI's fitted curve (``model``, ``params``, ``evaluate``, ``integral_bq_h``, ``lambda_phys_per_h``).
    tissue_name : str
        A key of ``tissues`` (default :data:`DEFAULT_TISSUES`).
    """
    table = DEFAULT_TISSUES if tissues is None else tissues
    if tissue_name not in table:
        raise RadiobiologyError(f"no radiobiology parameters for tissue {tissue_name!r} "
                                f"(known: {', '.join(sorted(table))})")
    tissue = table[tissue_name]
    dose = float(mean_dose_gy)
    if not math.isfinite(dose) or dose < 0:
        raise RadiobiologyError(f"mean dose {dose!r} Gy is not a dose")
    integral_bq_h = float(fit.integral_bq_h())
    terms = exponential_terms(fit.model, fit.params)
    if dose == 0.0 or not integral_bq_h > 0:
        bed, method = 0.0, "no dose"
    elif terms is not None:
        amplitudes, rates = terms
        bed = bed_from_exponentials_gy(amplitudes * dose / integral_bq_h, rates, tissue)
        method = "closed form (sum of exponentials)"
    else:
        t_last = float(np.max(fit.t_h)) if len(fit.t_h) else 0.0
        t_end = max(t_last, 1.0)

        def rate(t):
            return fit.evaluate(t) * dose / integral_bq_h

        bed = bed_numerical_gy(rate, t_end, tissue, step_h=min(0.05, t_end / 200.0),
                               tail_rate_per_h=float(fit.params.get("lambda_tail_per_h", fit.lambda_phys_per_h)))
        method = "numerical"
    return BedResult(bed_gy=bed, eqd2_gy=eqd2_gy(bed, tissue.alpha_beta_gy), alpha_beta_gy=tissue.alpha_beta_gy,
                     repair_half_time_h=tissue.repair_half_time_h, tissue=tissue_name, source=tissue.source,
                     method=method)
