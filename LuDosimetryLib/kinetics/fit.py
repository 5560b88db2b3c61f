"""Fit a time-activity curve, choose the model by AICc and integrate it (time-integrated activity).

Method
------
Each exponential model of :mod:`.models` is fitted by weighted least squares
(``scipy.optimize.least_squares``, trust-region reflective with box bounds, analytic Jacobian,
several starting points from :meth:`initial_guess`). Residuals are ``(A_model − A_i) / σ_i`` when
``sigma_bq`` is given, ``A_model − A_i`` otherwise — the same weighting for every model, so that
their residual sums are comparable.

Parameter covariance: ``C = (Jᵀ W J)⁻¹`` at the solution, multiplied by the reduced χ²
``RSS / (n − k)`` when ``sigma_bq`` is None (the scatter of the points then estimates the noise).
The standard error of the time-integrated activity (TIA) follows by the delta method with the
analytic gradient of the closed-form integral: ``SE² = gᵀ C g``.

Model selection uses the small-sample corrected Akaike information criterion (Burnham K.P.,
Anderson D.R., *Model Selection and Multimodel Inference*, 2nd ed., Springer 2002, chapter 2: AICc
with the least-squares form of the log-likelihood), as recommended for time-activity curves by
Glatting G. et al., "Choosing the optimal fit function: comparison of the Akaike information
criterion and the F-test", Med. Phys. 34(11):4285-4292, 2007:

    AICc = n ln(RSS/n) + 2k + 2k(k+1)/(n − k − 1)

with ``RSS`` the (weighted when σ is given) residual sum of squares, ``n`` points, ``k`` fitted
parameters. The lowest AICc wins.

Point-count guard (the usual 3–4 SPECT time points): a model is fitted when ``n ≥ k + 1`` (one
residual degree of freedom; with 5 or more points and several models, ``n ≥ k + 2`` so that AICc is
defined for every candidate). The AICc correction term is undefined for ``n = k + 1`` (bi-exponential
on 4 points, mono-exponential on 3), so models are first ranked by AICc where it is defined; a more
complex model whose AICc is undefined replaces the choice only when it is determined by the data (it
passed the rejection tests below, and every parameter's relative standard error is below 50 %, the
acceptance rule of Kletting et al., Med. Phys. 40:102504, 2013) **and** its uncorrected AIC = n ln(RSS/n) + 2k is lower by more than
``AIC_MARGIN`` = 2 (Burnham & Anderson 2002, §2.6: a difference above 2 is considerable support).
So with 4 points a clear uptake–washout curve (e.g. kidney) is fitted bi-exponentially, while noise
alone does not promote the extra parameter; with 3 points the mono-exponential is used.

A fit is rejected (kept in ``candidates`` with the reason) when the optimiser fails, when the
covariance is singular or not finite (a parameter the data do not determine, e.g. an uptake faster
than the first time point), when an amplitude is fitted to 0 or a rate runs to its upper bound, or
when the TIA is not finite and positive. If no exponential model is acceptable the trapezoid model
(linear from (0, 0) to the first point, trapezoids, then physical decay after the last point) is used
with a warning.

Activities are the activity in the VOI at scan time (not decay-corrected); time is hours after the
injection.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Union

import numpy as np

from ..errors import FitError
from ..radionuclides import Radionuclide, radionuclide
from .models import EXPONENTIAL_MODELS, MAX_RATE_PER_H, MODELS, TrapezoidKnots

SECONDS_PER_HOUR = 3600.0
#: Singular values of the column-scaled weighted Jacobian below this fraction of the largest one
#: mean a parameter is not determined by the data (covariance treated as not finite).
_RCOND = 1e-7
#: Residuals are never taken below this fraction of the largest weighted activity when the AICc is
#: formed, so that exact (noise-free) fits keep a finite AICc and the parameter penalty decides.
_RSS_FLOOR_REL = 1e-9
#: Relative change of the curve (fraction of the largest activity) that a 100 % change of a parameter
#: must at least cause at one time point for the parameter to count as determined by the data.
_MIN_EFFECT = 1e-3
#: Function evaluations allowed per starting point and for all starting points of a model, per
#: fitted parameter (a fit that converges needs 5–25 in all; this bounds the time spent on wild data).
_NFEV_PER_START_PER_PARAM = 20
_NFEV_BUDGET_PER_PARAM = 60


@dataclass
class CandidateFit:
    """The result of fitting one model (accepted or not).

    Attributes
    ----------
    model : str
    accepted : bool
    reason : str
        Why it was rejected ("" when accepted).
    params, param_se : dict
        Parameter name → value / standard error (Bq, 1/h).
    tia_bq_s, tia_se_bq_s : float
        Time-integrated activity 0–∞ and its standard error (Bq·s).
    aicc : float
        AICc (NaN when undefined or not fitted).
    rss : float
        Residual sum of squares (weighted χ² when σ is given; Bq² otherwise).
    n_params : int
    """

    model: str
    accepted: bool
    reason: str = ""
    params: Dict[str, float] = field(default_factory=dict)
    param_se: Dict[str, float] = field(default_factory=dict)
    tia_bq_s: float = float("nan")
    tia_se_bq_s: float = float("nan")
    aicc: float = float("nan")
    rss: float = float("nan")
    rss_for_ic: float = float("nan")
    n_params: int = 0
    warnings: List[str] = field(default_factory=list)


@dataclass
class TacFit:
    """A fitted time-activity curve and its time-integrated activity.

    Attributes
    ----------
    model : str
        The chosen model (a key of ``MODELS``).
    params, param_se : dict
        Parameter name → value / standard error (Bq, 1/h).
    tia_bq_s : float
        Time-integrated activity from injection to infinity (Bq·s).
    tia_se_bq_s : float
        Its standard error (Bq·s): delta method on the fit covariance; for the trapezoid, linear
        propagation of ``sigma_bq`` (NaN without it).
    effective_half_life_h : float
        ln 2 / (slowest clearance rate) (h); for the trapezoid, the physical half-life of the tail.
    aicc : float
        AICc of the chosen model (NaN for the trapezoid or when undefined).
    n_points : int
    candidates : list of CandidateFit
        Every model tried, with the reason of each rejection.
    warnings : list of str
    t_h, activity_bq : numpy.ndarray
        Copies of the data (h, Bq), for plots.
    sigma_bq : numpy.ndarray or None
    lambda_phys_per_h : float
        Physical decay constant used (1/h).
    trapezoid_start : str
        ``"linear"`` or ``"constant"`` (how the trapezoid model starts at t = 0).
    """

    model: str
    params: Dict[str, float]
    param_se: Dict[str, float]
    tia_bq_s: float
    tia_se_bq_s: float
    effective_half_life_h: float
    aicc: float
    n_points: int
    candidates: List[CandidateFit]
    warnings: List[str]
    t_h: np.ndarray
    activity_bq: np.ndarray
    sigma_bq: Optional[np.ndarray] = None
    lambda_phys_per_h: float = float("nan")
    trapezoid_start: str = "linear"

    def evaluate(self, t_h) -> np.ndarray:
        """The fitted curve (Bq) at ``t_h`` (h after injection)."""
        model = MODELS[self.model]
        if self.model == "trapezoid":
            return model.evaluate(t_h, self._knots())
        return model.evaluate(t_h, np.array([self.params[name] for name in model.param_names]))

    def integral_bq_h(self, t_start_h: float = 0.0, t_end_h: float = math.inf) -> float:
        """∫ A dt of the fitted curve over [t_start_h, t_end_h] (Bq·h)."""
        model = MODELS[self.model]
        if self.model == "trapezoid":
            return model.integral(self._knots(), t_start_h, t_end_h)
        return model.integral(np.array([self.params[name] for name in model.param_names]), t_start_h, t_end_h)

    def _knots(self) -> TrapezoidKnots:
        return TrapezoidKnots(self.t_h, self.activity_bq, self.params["lambda_tail_per_h"], self.trapezoid_start)


def tiac_h(tia_bq_s: float, injected_bq: float) -> float:
    """Time-integrated activity coefficient (residence time) in hours: TIA / A_injected.

    Parameters
    ----------
    tia_bq_s : float
        Time-integrated activity (Bq·s).
    injected_bq : float
        Injected activity (Bq), > 0.
    """
    if not (np.isfinite(injected_bq) and injected_bq > 0):
        raise FitError(f"injected activity must be a positive number of Bq, not {injected_bq!r}")
    return float(tia_bq_s) / float(injected_bq) / SECONDS_PER_HOUR


def _prefix(label: Optional[str]) -> str:
    return f"{label}: " if label else ""


def _validate(t_h, activity_bq, sigma_bq, label):
    where = _prefix(label)
    try:
        t = np.array(t_h, dtype=float).ravel()
        a = np.array(activity_bq, dtype=float).ravel()
    except (TypeError, ValueError) as exc:
        raise FitError(f"{where}time and activity must be numbers ({exc})") from None
    if t.size != a.size:
        raise FitError(f"{where}{t.size} time points but {a.size} activity values")
    if t.size < 2:
        raise FitError(f"{where}a time-activity curve needs at least 2 time points, got {t.size}")
    if not np.all(np.isfinite(t)):
        raise FitError(f"{where}time point {int(np.flatnonzero(~np.isfinite(t))[0]) + 1} is not finite")
    if not np.all(np.isfinite(a)):
        i = int(np.flatnonzero(~np.isfinite(a))[0])
        raise FitError(f"{where}activity at t = {t[i]:g} h is not finite ({a[i]})")
    if np.any(t < 0):
        raise FitError(f"{where}time {t[t < 0][0]:g} h is before the injection (negative)")
    if np.any(np.diff(t) <= 0):
        i = int(np.flatnonzero(np.diff(t) <= 0)[0])
        raise FitError(f"{where}time points are not strictly increasing ({t[i]:g} h then {t[i + 1]:g} h)")
    if np.all(a <= 0):
        raise FitError(f"{where}activity is zero or negative at every time point")
    s = None
    if sigma_bq is not None:
        s = np.array(sigma_bq, dtype=float).ravel()
        if s.size == 1 and a.size > 1:
            s = np.full(a.size, float(s[0]))
        if s.size != a.size:
            raise FitError(f"{where}{s.size} uncertainties for {a.size} activity values")
        if not np.all(np.isfinite(s) & (s > 0)):
            raise FitError(f"{where}activity uncertainties (sigma) must be finite and positive")
    return t, a, s


AIC_MARGIN = 2.0  # Burnham & Anderson 2002, §2.6: ΔAIC > 2 = considerable support


MAX_RELATIVE_SE = 0.5  # Kletting et al., Med. Phys. 40:102504 (2013): fit parameters with CV ≥ 50 % are not accepted


def _max_relative_se(cand: "CandidateFit") -> float:
    """Largest standard error / |value| among a candidate's parameters (inf when undetermined)."""
    worst = 0.0
    for name, value in cand.params.items():
        se = cand.param_se.get(name, float("inf"))
        if not np.isfinite(se) or value == 0:
            return float("inf")
        worst = max(worst, abs(se / value))
    return worst


def _aic(cand: "CandidateFit", n: int) -> float:
    """Uncorrected AIC of a candidate (least-squares form), with the same RSS floor as its AICc."""
    return n * math.log(max(cand.rss_for_ic, 1e-300) / n) + 2 * cand.n_params


def _aicc(rss: float, n: int, k: int) -> float:
    if n - k - 1 <= 0:
        return float("nan")
    return n * math.log(rss / n) + 2 * k + 2.0 * k * (k + 1) / (n - k - 1)


def _fit_one(model, t, a, sigma, lam_phys, physical_bound, extra_starts, min_points) -> CandidateFit:
    """Fit one exponential model; return an accepted or rejected :class:`CandidateFit`."""
    from scipy.optimize import least_squares

    k, n = model.n_params, t.size
    cand = CandidateFit(model=model.name, accepted=False, n_params=k)
    if n < min_points:
        cand.reason = (f"{n} points are too few: {model.name} has {k} parameters and needs "
                       f"at least {min_points} points")
        return cand

    scale = float(np.max(np.abs(a)))
    amp = list(model.amplitude_index)
    wt = np.ones(n) if sigma is None else 1.0 / sigma  # weights in 1/Bq (or 1)
    w_n = wt * scale                                     # weights for activities in units of `scale`
    a_n = a / scale
    m = model.to_natural_matrix
    m_inv = np.linalg.inv(m)
    lb, ub = model.internal_bounds(lam_phys, physical_bound)

    def natural(q):
        return m @ q

    def residuals(q):
        return (model.evaluate(t, natural(q)) - a_n) * w_n

    def jac(q):
        return (model.jacobian(t, natural(q)) @ m) * w_n[:, None]

    starts = list(model.initial_guess(t, a, lam_phys, physical_bound)) + list(extra_starts)
    # costs (½ Σ r²) that differ by less than this are the same minimum (numerical noise floor)
    cost_floor = 0.5 * n * (_RSS_FLOOR_REL * float(np.max(np.abs(a_n) * w_n))) ** 2
    best, n_agree, budget = None, 0, _NFEV_BUDGET_PER_PARAM * k
    for p0 in starts:
        if n_agree >= 2:  # two starting points reached the same minimum: take it as the global one
            break
        if budget <= 0:  # wild data: bound the time spent on one model
            break
        p0 = np.array(p0, dtype=float)
        p0[amp] /= scale
        q0 = np.clip(m_inv @ p0, lb, ub)
        if not np.all(np.isfinite(q0)):
            continue
        try:
            with np.errstate(all="ignore"):  # wild data: overflow inside the trust-region steps
                res = least_squares(residuals, q0, jac=jac, bounds=(lb, ub), method="trf", x_scale="jac",
                                    ftol=1e-12, xtol=1e-12, gtol=1e-12,
                                    max_nfev=min(_NFEV_PER_START_PER_PARAM * k, budget))
        except (ValueError, np.linalg.LinAlgError, FloatingPointError):
            continue
        budget -= res.nfev
        if res.status <= 0 or not np.isfinite(res.cost):
            continue
        tol = 1e-6 * (best.cost if best is not None else 0.0) + cost_floor
        if best is None or res.cost < best.cost - tol:
            best, n_agree = res, 1
        elif res.cost <= best.cost + tol:
            n_agree += 1
    if best is None:
        cand.reason = "the least-squares fit did not converge from any starting point"
        return cand

    p = natural(best.x)
    p[amp] *= scale
    names = model.param_names
    cand.params = {nm: float(v) for nm, v in zip(names, p)}
    r = (model.evaluate(t, p) - a) * wt
    rss = float(np.sum(r * r))
    cand.rss = rss
    rss_floor = n * (_RSS_FLOOR_REL * float(np.max(np.abs(a) * wt))) ** 2
    cand.rss_for_ic = max(rss, rss_floor)
    cand.aicc = _aicc(cand.rss_for_ic, n, k)

    if not np.all(np.isfinite(p)):
        cand.reason = "the fit gave non-finite parameters"
        return cand
    for i in amp:
        if p[i] <= 1e-9 * scale:
            cand.reason = f"{names[i]} was fitted to 0 (the data do not support this component)"
            return cand
    for i in model.rate_index:
        if p[i] >= 0.999 * MAX_RATE_PER_H:
            cand.reason = (f"{names[i]} ran to its upper bound {MAX_RATE_PER_H:g}/h (a phase faster "
                           f"than the time points can resolve)")
            return cand

    # A parameter whose doubling changes the curve at the time points by less than _MIN_EFFECT of
    # the largest activity is not determined by the data (e.g. an uptake faster than the first scan).
    jac_p = model.jacobian(t, p)
    effect = np.max(np.abs(jac_p * p[None, :]), axis=0)
    if np.any(effect < _MIN_EFFECT * scale):
        worst = names[int(np.argmin(effect))]
        cand.reason = (f"{worst} = {p[int(np.argmin(effect))]:.4g} has no visible effect on the "
                       f"fitted points (not determined by the data)")
        return cand

    # Covariance (Jᵀ W J)⁻¹ with column scaling; singular → parameters not separable.
    jw = jac_p * wt[:, None]
    col = np.linalg.norm(jw, axis=0)
    if not np.all(np.isfinite(jw)) or np.any(col == 0):
        cand.reason = "the covariance is not finite (a parameter has no effect on the fitted points)"
        return cand
    _, sv, vt = np.linalg.svd(jw / col, full_matrices=False)
    if sv[-1] < _RCOND * sv[0]:
        worst = names[int(np.argmax(np.abs(vt[-1])))]
        cand.reason = f"the covariance is singular: {worst} is not determined by the data"
        return cand
    cov = (vt.T / sv ** 2) @ vt / np.outer(col, col)
    if sigma is None:
        dof = n - k
        cov = cov * (rss / dof) if dof > 0 else np.full_like(cov, np.nan)
    se = np.sqrt(np.clip(np.diag(cov), 0.0, None))
    cand.param_se = {nm: float(v) for nm, v in zip(names, se)}

    tia = model.integral(p) * SECONDS_PER_HOUR
    grad = model.integral_gradient(p) * SECONDS_PER_HOUR
    var = float(grad @ cov @ grad)
    if not (np.isfinite(tia) and tia > 0):
        cand.reason = f"the time-integrated activity is not positive and finite ({tia:g} Bq·s)"
        return cand
    if not np.isfinite(var) and sigma is not None:
        cand.reason = "the covariance is not finite"
        return cand
    cand.tia_bq_s = float(tia)
    cand.tia_se_bq_s = math.sqrt(max(var, 0.0)) if np.isfinite(var) else float("nan")
    i = model.rate_index[0]  # the slowest clearance rate
    if physical_bound and p[i] <= lam_phys * (1 + 1e-6):
        cand.warnings.append(f"{model.name}: {names[i]} is at the physical decay constant (no "
                             f"biological clearance is seen; effective half-life = physical)")
    cand.accepted = True
    return cand


def _trapezoid(t, a, sigma, lam_phys, start) -> CandidateFit:
    model = MODELS["trapezoid"]
    knots = TrapezoidKnots(t, a, lam_phys, start)
    tia = model.integral(knots) * SECONDS_PER_HOUR
    if sigma is not None:
        w = model.integral_weights(knots) * SECONDS_PER_HOUR
        se = float(math.sqrt(np.sum((w * sigma) ** 2)))
    else:
        se = float("nan")
    return CandidateFit(model="trapezoid", accepted=True, params={"lambda_tail_per_h": lam_phys},
                        param_se={"lambda_tail_per_h": 0.0}, tia_bq_s=float(tia), tia_se_bq_s=se,
                        n_params=0)


def fit_time_activity_curve(t_h, activity_bq, *, sigma_bq=None,
                            models: Sequence[str] = ("mono_exponential", "bi_exponential", "tri_exponential"),
                            nuclide: Union[Radionuclide, str, None] = None,
                            physical_bound: bool = True,
                            trapezoid_start: str = "linear",
                            label: Optional[str] = None) -> TacFit:
    """Fit a time-activity curve, select the model by AICc and compute its TIA.

    Parameters
    ----------
    t_h : array_like
        Times after injection (h), strictly increasing, ≥ 0.
    activity_bq : array_like
        Activity in the VOI at each time (Bq, not decay-corrected).
    sigma_bq : array_like or float, optional
        Standard uncertainty of each activity (Bq). When given, the fit is weighted by 1/σ² and
        the covariance is absolute; when None, unweighted and scaled by the reduced χ².
    models : sequence of str
        Models to try (keys of ``MODELS``). ``("trapezoid",)`` skips fitting altogether.
    nuclide : Radionuclide or str, optional
        Radionuclide (default Lu-177): its decay constant bounds the clearance rates and
        sets the trapezoid tail.
    physical_bound : bool
        Constrain every clearance rate to ≥ λ_phys (effective half-life ≤ physical).
    trapezoid_start : {"linear", "constant"}
        Trapezoid model before the first point: line from (0, 0), or the first value held.
    label : str, optional
        Name of the curve (e.g. the VOI) used in error messages.

    Returns
    -------
    TacFit

    Raises
    ------
    FitError
        Fewer than 2 points, non-finite values, negative or non-increasing times, activity ≤ 0
        everywhere, bad uncertainties, unknown model names.
    """
    where = _prefix(label)
    t, a, sigma = _validate(t_h, activity_bq, sigma_bq, label)
    if nuclide is None:
        nuclide = radionuclide("Lu-177")
    elif isinstance(nuclide, str):
        nuclide = radionuclide(nuclide)
    lam_phys = nuclide.decay_constant_per_h
    if trapezoid_start not in ("linear", "constant"):
        raise FitError(f"{where}trapezoid start must be 'linear' or 'constant', not {trapezoid_start!r}")
    models = tuple(models)
    unknown = [m for m in models if m not in MODELS]
    if unknown or not models:
        raise FitError(f"{where}unknown time-activity model {unknown[0] if unknown else '(none)'!r}; "
                       f"choose from {sorted(MODELS)}")
    warnings: List[str] = []
    n = t.size

    exp_models = sorted((m for m in models if m in EXPONENTIAL_MODELS), key=lambda m: MODELS[m].n_params)
    if "trapezoid" in models and exp_models:
        raise FitError(f"{where}the trapezoid model is not fitted and cannot be compared by AICc with "
                       f"{', '.join(exp_models)}; ask for it alone")
    compare = len(exp_models) > 1
    candidates: List[CandidateFit] = []
    extra: List[np.ndarray] = []
    for name in exp_models:
        model = MODELS[name]
        # ≥ 5 points: AICc ranks the models it is defined for (n ≥ k + 2); 3–4 points: the guard below.
        min_points = model.n_params + (2 if compare and n > 4 else 1)
        if name == "tri_exponential":
            extra = _tri_starts_from(candidates)
        with np.errstate(over="ignore", divide="ignore", invalid="ignore"):  # checked: isfinite below
            candidates.append(_fit_one(model, t, a, sigma, lam_phys, physical_bound, extra, min_points))

    accepted = [c for c in candidates if c.accepted]
    if accepted:
        defined = [c for c in accepted if np.isfinite(c.aicc)]
        best = min(defined, key=lambda c: c.aicc) if defined else None
        for c in sorted((c for c in accepted if not np.isfinite(c.aicc)), key=lambda c: c.n_params):
            if best is None:
                best = c
            elif (compare and n <= 4 and c.n_params > best.n_params and _aic(c, n) < _aic(best, n) - AIC_MARGIN
                  and _max_relative_se(c) < MAX_RELATIVE_SE):
                best = c
        warnings.extend(where + w for w in best.warnings)
        model = MODELS[best.model]
        slowest = model.slowest_rate_per_h(np.array([best.params[p] for p in model.param_names]))
        half_life = math.log(2.0) / slowest
    else:
        best = _trapezoid(t, a, sigma, lam_phys, trapezoid_start)
        if exp_models:
            why = "; ".join(f"{c.model}: {c.reason}" for c in candidates)
            warnings.append(f"{where}no exponential model is acceptable ({why}); using the trapezoid "
                            f"rule with a physical-decay tail after the last point")
        candidates.append(best)
        half_life = nuclide.half_life_h

    if np.isfinite(best.tia_se_bq_s) and best.tia_se_bq_s > 0.5 * best.tia_bq_s:
        warnings.append(f"{where}the time-integrated activity is uncertain "
                        f"(standard error {100 * best.tia_se_bq_s / best.tia_bq_s:.0f} %)")
    if int(np.argmax(a)) == n - 1:
        warnings.append(f"{where}the activity is highest at the last time point: the clearance "
                        f"after it is extrapolated")

    return TacFit(model=best.model, params=dict(best.params), param_se=dict(best.param_se),
                  tia_bq_s=best.tia_bq_s, tia_se_bq_s=best.tia_se_bq_s,
                  effective_half_life_h=half_life,
                  aicc=best.aicc if best.model != "trapezoid" else float("nan"),
                  n_points=n, candidates=candidates, warnings=warnings,
                  t_h=t.copy(), activity_bq=a.copy(), sigma_bq=None if sigma is None else sigma.copy(),
                  lambda_phys_per_h=lam_phys, trapezoid_start=trapezoid_start)


def _tri_starts_from(candidates: List[CandidateFit]) -> List[np.ndarray]:
    """Tri-exponential starting points derived from an accepted bi-exponential fit."""
    for c in candidates:
        if c.model == "bi_exponential" and c.accepted:
            a0, lw, lu = (c.params[k] for k in MODELS["bi_exponential"].param_names)
            mid = math.sqrt(lw * lu)
            return [np.array([0.9 * a0, lw, 0.1 * a0, mid, lu]),
                    np.array([0.6 * a0, lw, 0.4 * a0, min(3 * lw, 0.5 * (lw + lu)), lu])]
    return []
