"""Time-integrated activity from fewer time points: single-time-point, two-time-point and population-prior fits.

Methods of :func:`fit_reduced` (activity in Bq at scan time, not decay-corrected; times in h p.i.):

- ``"hanscheid"`` — one point: TIA ≈ 2 · A(t) · t / ln 2 (Hänscheid H. et al., "Single time point
  estimate of absorbed doses in PRRT", J Nucl Med 59:75–81, 2018). It is the mono-exponential with its
  effective half-life equal to the scan time, accurate when the scan is near the true T_eff (≈ 3–5 days
  for Lu-177 DOTATATE kidneys and tumours).
- ``"population_half_life"`` (alias ``"madsen"``) — one point and a population effective half-life of the
  organ: A0 = A(t) e^{λ t}, TIA = A0/λ (Madsen M.T. et al., "A practical method for single time point
  dosimetry", Med Phys 45:2318–2324, 2018).
- ``"two_point"`` — the mono-exponential through two points, λ = ln(A1/A2)/(t2 − t1) kept ≥ λ_phys.
- ``"population_prior"`` (alias ``"map"``) — Bayesian maximum a posteriori mono-exponential fit in the
  spirit of the nonlinear mixed-model (NLMM) information-sharing approach of Devasia T.P. et al.
  (J Nucl Med, published online 2020, Lu-177 DOTATATE SPECT/CT with reduced time points): the
  log effective clearance rate has a normal population prior per organ type, the data a proportional
  (log-normal) error of ``cv`` (default 10 %). With one point the MAP is the population half-life; with
  more points the data take over. The standard errors are the Laplace approximation (curvature of the
  log-posterior).

Population effective half-lives (:data:`POPULATION_PRIORS`) are *approximate* central values of the
ranges reported for Lu-177 DOTATATE by Sandström M. et al., J Nucl Med 54:33–41, 2013 and Hänscheid et
al. 2018, with the log-normal spread of effective half-lives advocated by Hou X. et al. (J Nucl Med 2021/2022,
evaluation of single-time-point dosimetry methods). They are not a table of one paper: a clinic
should pass its own (``population=``).
"""
from __future__ import annotations

import math
from typing import Dict, Optional, Tuple, Union

import numpy as np

from ..errors import FitError
from ..radionuclides import Radionuclide, radionuclide
from .fit import SECONDS_PER_HOUR, CandidateFit, TacFit, fit_time_activity_curve

_LN2 = math.log(2.0)

#: organ type → (population effective half-life T_eff (h), SD of ln T_eff). Approximate values (see the
#: module docstring); kidneys ≈ 2 days, liver, spleen and tumours ≈ 3 days.
POPULATION_PRIORS: Dict[str, Tuple[float, float]] = {
    "kidney": (50.0, 0.25),
    "liver": (75.0, 0.30),
    "spleen": (70.0, 0.25),
    "tumor": (80.0, 0.35),
    "other": (50.0, 0.40),
}
_ORGAN_ALIASES = {"kidneys": "kidney", "kidney_l": "kidney", "kidney_r": "kidney", "left kidney": "kidney",
                  "right kidney": "kidney", "lesion": "tumor", "tumour": "tumor", "remainder": "other"}
METHODS = ("hanscheid", "population_half_life", "madsen", "two_point", "population_prior", "map", "full")


def organ_type(name: str) -> str:
    """Organ type of a VOI name (``"Kidney_L"`` → ``"kidney"``, ``"Lesion_2"`` → ``"tumor"``)."""
    key = str(name).strip().lower()
    if key in POPULATION_PRIORS:
        return key
    if key in _ORGAN_ALIASES:
        return _ORGAN_ALIASES[key]
    for prefix, typ in (("kidney", "kidney"), ("liver", "liver"), ("spleen", "spleen"), ("lesion", "tumor"),
                        ("tumo", "tumor"), ("gtv", "tumor"), ("met", "tumor")):
        if key.startswith(prefix):
            return typ
    return "other"


def _prior(organ, population) -> Tuple[float, float]:
    table = dict(POPULATION_PRIORS)
    if population:
        table.update({organ_type(k) if k not in table else k: tuple(v) for k, v in population.items()})
    if organ is None:
        raise FitError("this method needs the organ type (organ='kidney', 'liver', 'spleen', 'tumor' or 'other') "
                       "for its population effective half-life")
    typ = organ if organ in table else organ_type(organ)
    t_eff, sd = table[typ]
    if not (t_eff > 0 and sd > 0):
        raise FitError(f"population prior of {typ!r} must have a positive half-life and spread, got {t_eff}, {sd}")
    return float(t_eff), float(sd)


def _result(t, a, a0, lam, method, lam_phys, se=None, warnings=None) -> TacFit:
    tia = a0 / lam * SECONDS_PER_HOUR
    params = {"A0_bq": float(a0), "lambda_per_h": float(lam)}
    param_se = {"A0_bq": float("nan"), "lambda_per_h": float("nan")}
    tia_se = float("nan")
    if se is not None:
        param_se, tia_se = se
    cand = CandidateFit(model="mono_exponential", accepted=True, params=dict(params), param_se=dict(param_se),
                        tia_bq_s=float(tia), tia_se_bq_s=tia_se, n_params=2,
                        reason="", warnings=[f"reduced time points: {method}"])
    return TacFit(model="mono_exponential", params=params, param_se=param_se, tia_bq_s=float(tia),
                  tia_se_bq_s=tia_se, effective_half_life_h=_LN2 / lam, aicc=float("nan"), n_points=int(t.size),
                  candidates=[cand], warnings=list(warnings or []), t_h=t.copy(), activity_bq=a.copy(),
                  lambda_phys_per_h=lam_phys)


def fit_reduced(t_h, a_bq, method: str = "population_prior", *, organ: Optional[str] = None,
                nuclide: Union[Radionuclide, str, None] = None, population: Optional[dict] = None,
                cv: float = 0.10, label: Optional[str] = None) -> TacFit:
    """TIA from a reduced set of time points.

    Parameters
    ----------
    t_h : array_like
        Scan times (h after injection).
    a_bq : array_like
        Activity (Bq) at each time (not decay-corrected).
    method : str
        ``"hanscheid"`` (1 point), ``"population_half_life"``/``"madsen"`` (1 point), ``"two_point"``
        (2 points), ``"population_prior"``/``"map"`` (≥ 1 point), ``"full"`` (the ordinary AICc fit).
    organ : str, optional
        Organ type or VOI name (``kidney``, ``liver``, ``spleen``, ``tumor``, ``other``; ``"Kidney_L"``
        and ``"Lesion_1"`` are understood) for the population methods.
    nuclide : Radionuclide or str, optional
        Default Lu-177; rates are kept ≥ its decay constant.
    population : dict, optional
        Organ type → (T_eff h, SD of ln T_eff), overriding :data:`POPULATION_PRIORS`.
    cv : float
        Relative uncertainty of each activity for the population-prior fit.
    label : str, optional
        Name used in messages.

    Returns
    -------
    TacFit
        Mono-exponential parameters (``A0_bq``, ``lambda_per_h``), TIA (Bq·s), effective half-life;
        ``warnings`` name the method.

    Raises
    ------
    FitError
        Wrong number of points for the method, non-positive activity or time, unknown method or organ.
    """
    where = f"{label}: " if label else ""
    if method not in METHODS:
        raise FitError(f"{where}unknown reduced-time-point method {method!r}; choose from {', '.join(METHODS)}")
    nuc = radionuclide(nuclide or "Lu-177") if not isinstance(nuclide, Radionuclide) else nuclide
    lam_phys = nuc.decay_constant_per_h
    try:
        t = np.array(t_h, dtype=float).ravel()
        a = np.array(a_bq, dtype=float).ravel()
    except (TypeError, ValueError) as exc:
        raise FitError(f"{where}time and activity must be numbers ({exc})") from None
    if t.size != a.size or t.size == 0:
        raise FitError(f"{where}{t.size} time points but {a.size} activity values")
    if method == "full":
        return fit_time_activity_curve(t, a, nuclide=nuc, label=label)
    if not (np.all(np.isfinite(t)) and np.all(t > 0)):
        raise FitError(f"{where}scan times must be finite and after the injection, got {list(t)}")
    if np.any(np.diff(t) <= 0):
        raise FitError(f"{where}scan times must be strictly increasing, got {list(t)}")
    if not (np.all(np.isfinite(a)) and np.all(a > 0)):
        raise FitError(f"{where}every activity must be positive for method {method!r}, got {list(a)}")
    warnings = []
    if method == "hanscheid":
        if t.size != 1:
            raise FitError(f"{where}method 'hanscheid' uses one time point, got {t.size}")
        lam = max(_LN2 / t[0], lam_phys)
        if not 48.0 <= t[0] <= 168.0:
            warnings.append(f"{where}Hänscheid's approximation assumes a scan near the effective half-life "
                            f"(about 4 days); this one is at {t[0]:.1f} h")
        return _result(t, a, a[0] * math.exp(lam * t[0]), lam, method, lam_phys, warnings=warnings)
    if method in ("population_half_life", "madsen"):
        if t.size != 1:
            raise FitError(f"{where}method {method!r} uses one time point, got {t.size}")
        t_eff, _sd = _prior(organ, population)
        lam = max(_LN2 / t_eff, lam_phys)
        return _result(t, a, a[0] * math.exp(lam * t[0]), lam, method, lam_phys)
    if method == "two_point":
        if t.size != 2:
            raise FitError(f"{where}method 'two_point' uses two time points, got {t.size}")
        lam = math.log(a[0] / a[1]) / (t[1] - t[0])
        if lam < lam_phys:
            warnings.append(f"{where}the activity falls slower than physical decay between the two points; "
                            f"the physical decay constant is used")
            lam = lam_phys
        # amplitude through the later point (the one nearer the bulk of the integral)
        return _result(t, a, a[1] * math.exp(lam * t[1]), lam, method, lam_phys, warnings=warnings)
    # population prior (MAP)
    if not cv > 0:
        raise FitError(f"{where}cv must be positive, got {cv!r}")
    t_eff, sd = _prior(organ, population)
    mu = math.log(_LN2 / t_eff)
    y = np.log(a)

    def neg_log_post(u: float) -> float:
        lam = lam_phys + math.exp(u)
        ln_a0 = float(np.mean(y + lam * t))
        r = y - ln_a0 + lam * t
        return 0.5 * float(np.sum(r * r)) / cv ** 2 + 0.5 * ((math.log(lam) - mu) / sd) ** 2

    from scipy.optimize import minimize_scalar
    u0 = math.log(max(math.exp(mu) - lam_phys, 1e-6))
    res = minimize_scalar(neg_log_post, bracket=(u0 - 1.0, u0 + 1.0), tol=1e-10)
    u = float(res.x)
    lam = lam_phys + math.exp(u)
    ln_a0 = float(np.mean(y + lam * t))
    a0 = math.exp(ln_a0)
    # Laplace approximation on (ln A0, ln λ_bio = u): Hessian of the negative log-posterior
    theta = np.array([ln_a0, u])

    def nlp2(th):
        la = lam_phys + math.exp(th[1])
        r = y - th[0] + la * t
        return 0.5 * float(np.sum(r * r)) / cv ** 2 + 0.5 * ((math.log(la) - mu) / sd) ** 2

    h = 1e-4
    hess = np.zeros((2, 2))
    for i in range(2):
        for j in range(2):
            ei, ej = np.eye(2)[i] * h, np.eye(2)[j] * h
            hess[i, j] = (nlp2(theta + ei + ej) - nlp2(theta + ei - ej) - nlp2(theta - ei + ej)
                          + nlp2(theta - ei - ej)) / (4 * h * h)
    try:
        cov = np.linalg.inv(hess)
        g = np.array([1.0, -math.exp(u) / lam]) * (a0 / lam)  # ∂(A0/λ)/∂(ln A0, u)
        tia_se = math.sqrt(max(float(g @ cov @ g), 0.0)) * SECONDS_PER_HOUR
        se = ({"A0_bq": a0 * math.sqrt(max(cov[0, 0], 0.0)),
               "lambda_per_h": math.exp(u) * math.sqrt(max(cov[1, 1], 0.0))}, tia_se)
    except np.linalg.LinAlgError:
        se = None
    return _result(t, a, a0, lam, f"population prior ({organ_type(organ)}: T_eff {t_eff:g} h, "
                                  f"log-SD {sd:g})", lam_phys, se=se)


def compare_with_full(full: TacFit, reduced: TacFit) -> dict:
    """Relative difference of a reduced-time-point result from the full fit.

    Returns
    -------
    dict
        ``tia_full_bq_s``, ``tia_reduced_bq_s``, ``relative_difference`` ((reduced − full)/full),
        ``effective_half_life_full_h``, ``effective_half_life_reduced_h``.
    """
    return {"tia_full_bq_s": float(full.tia_bq_s), "tia_reduced_bq_s": float(reduced.tia_bq_s),
            "relative_difference": float(reduced.tia_bq_s / full.tia_bq_s - 1.0),
            "effective_half_life_full_h": float(full.effective_half_life_h),
            "effective_half_life_reduced_h": float(reduced.effective_half_life_h)}
