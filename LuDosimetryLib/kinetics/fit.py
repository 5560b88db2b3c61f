"""Fit a time-activity curve, choose the model by AICc and integrate it (time-integrated activity).

Error model and weighting
-------------------------
Each exponential model of :mod:`.models` is fitted by weighted least squares
(``scipy.optimize.least_squares``, trust-region reflective with box bounds, analytic Jacobian,
several starting points from :meth:`initial_guess`), minimising ``Σ ((A_model(t_i) − A_i) / σ_i)²``.
The standard uncertainty σ_i of each activity follows a stated error model (``error_model``):

- ``"proportional"`` (default): σ_i = s · A_i, a constant *relative* uncertainty s (relative weights
  1/A_i²), the usual model for quantitative SPECT activities, whose uncertainty (calibration, partial
  volume, segmentation, reconstruction) scales with the activity. Weighted fits of this kind are what
  Kletting P. et al., "Molecular radiotherapy: the NUKFIT software for calculating the time-integrated
  activity coefficient", Med. Phys. 40(10):102504, 2013 recommend instead of unweighted fits, in which
  the early, high points dominate and the tail (the effective half-life, most of the TIA) is fitted
  poorly. σ_i is taken from the measured activity, floored at ``SIGMA_FLOOR_REL`` (1 %) of the largest
  one so that a point near 0 cannot take all the weight (a warning names such points).
- ``"counting"``: σ_i = s · √A_i (Poisson counting statistics, with counts proportional to activity,
  i.e. equal acquisition durations and sensitivity).
- ``"uniform"``: σ_i = s (ordinary unweighted least squares in Bq; the former default, in which the
  early high points dominate).
- ``sigma_bq`` given: σ_i known in Bq (s = 1, nothing estimated).

Only the shape of σ_i is known in the first three models; the scale s is a parameter of the likelihood,
estimated from the residuals: ŝ² = RSS/n by maximum likelihood (``RSS`` the weighted residual sum of
squares with s = 1). The same weights are used for every model, so their residual sums are comparable.

Parameter covariance: ``C = (Jᵀ W J)⁻¹`` at the solution, multiplied by the reduced χ²
``RSS / (n − k)`` when s is estimated. The standard error of the time-integrated activity (TIA)
follows by the delta method with the analytic gradient of the closed-form integral: ``SE² = gᵀ C g``.

Parameters at a bound
---------------------
A parameter that ends on a bound of the fit (a clearance rate at the physical decay constant, i.e. no
biological clearance; an uptake rate at the minimum gap above the washout rate) is not estimated in the
ordinary sense: the curvature of the residual sum does not give its uncertainty. Its standard error is
not reported (NaN, ``null`` in results.json) and it is listed in ``param_at_bound`` (name → which
bound); the other parameters' covariance, and the TIA standard error, are computed with it held at the
bound (conditional on it), and a warning says so.

Model selection (AICc)
----------------------
Small-sample corrected Akaike information criterion (Hurvich C.M., Tsai C.-L., Biometrika
76:297-307, 1989; Burnham K.P., Anderson D.R., *Model Selection and Multimodel Inference*, 2nd ed.,
Springer 2002, §2.2 and §2.4), as used for time-activity curves by Glatting G., Kletting P., Reske S.N.,
Hohl K., Ring C., "Choosing the optimal fit function: comparison of the Akaike information criterion and
the F-test", Med. Phys. 34(11):4285-4292, 2007:

    AICc = −2 ln L̂ + 2K + 2K(K + 1)/(n − K − 1)

with n points and K the number of parameters *the likelihood estimates*:

- s estimated (``proportional``, ``counting``, ``uniform``): −2 ln L̂ = n ln(RSS/n) + const and
  **K = k + 1** (the k curve parameters and the variance scale s², which the likelihood estimates;
  Burnham & Anderson 2002, §2.2, count σ² in K for least squares, as Hurvich & Tsai 1989 do);
- σ known (``sigma_bq``): −2 ln L̂ = χ² + const (χ² = RSS) and **K = k**.

The constants are the same for every model of one curve (same data, same weights) and are left out.
The uncorrected AIC = −2 ln L̂ + 2K is kept too (``aic``). The lowest AICc wins.

The model-choice rule for few points (this project's own rule)
--------------------------------------------------------------
AICc is undefined when n ≤ K + 1: with s estimated, for the mono-exponential on 3–4 points and the
bi-exponential on 4–5 points, i.e. for the usual 3–5 SPECT time points. No publication gives a rule for
this case; LuDosimetry uses its own, stated here and in the README:

1. a model is fitted when n ≥ k + 1 (with 5 or more points and several models, n ≥ k + 2);
2. the accepted models whose AICc is defined are ranked by AICc; when none is defined, the simplest
   accepted model is the first choice;
3. a more complex accepted model whose AICc is undefined replaces the choice only when it is
   determined by the data — every parameter not at a bound has a relative standard error below
   ``MAX_RELATIVE_SE`` = 50 % (the acceptance criterion of Kletting et al. 2013) — **and** its
   uncorrected AIC is lower by more than ``AIC_MARGIN`` = 2 (Burnham & Anderson 2002, §2.6: a
   difference above 2 is considerable support for the better model).

So with 4 points a clear uptake–washout curve (e.g. kidney) is fitted bi-exponentially, while noise
alone does not promote the extra parameter; with 3 points the mono-exponential is used.

Rejections
----------
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
#: The error models of the fit (module docstring): σ_i ∝ A_i, σ_i ∝ √A_i, σ_i constant.
ERROR_MODELS = ("proportional", "counting", "uniform")
#: Name of the error model when the uncertainties are given (``sigma_bq``).
GIVEN_SIGMA = "given"
#: Proportional and counting error models: the activity that sets σ_i is never taken below this fraction
#: of the largest activity of the curve (a point near 0 would otherwise take all the weight).
SIGMA_FLOOR_REL = 0.01
#: A parameter within this fraction of a (non-zero) bound of the fit is at that bound.
_AT_BOUND_REL = 1e-6


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
        Weighted residual sum of squares Σ ((A_model − A_i)/σ_i)², with σ_i from the error model
        (dimensionless: χ² when σ is given; with the scale s = 1 otherwise).
    aic : float
        Uncorrected AIC = −2 ln L̂ + 2K (the AICc without its small-sample term).
    k_ic : int
        K, the number of parameters the likelihood estimates: ``n_params`` + 1 when the scale of σ is
        estimated from the residuals, ``n_params`` when σ is given.
    n_params : int
    param_at_bound : dict
        Parameter name → the bound it ended on (its standard error is NaN: not meaningful).
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
    aic: float = float("nan")
    k_ic: int = 0
    n_params: int = 0
    warnings: List[str] = field(default_factory=list)
    param_at_bound: Dict[str, str] = field(default_factory=dict)


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
    error_model : str
        The error model of the fit (one of :data:`ERROR_MODELS`, or ``"given"`` for ``sigma_bq``).
    param_at_bound : dict
        Parameter name → the bound it ended on; its entry of ``param_se`` is NaN (not meaningful) and
        ``tia_se_bq_s`` holds it fixed.
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
    error_model: str = "proportional"
    param_at_bound: Dict[str, str] = field(default_factory=dict)

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
    """Largest standard error / |value| among a candidate's estimated parameters (inf when one is
    undetermined); parameters at a bound are held fixed, not estimated, and are left out."""
    worst = 0.0
    for name, value in cand.params.items():
        if name in cand.param_at_bound:
            continue
        se = cand.param_se.get(name, float("inf"))
        if not np.isfinite(se) or value == 0:
            return float("inf")
        worst = max(worst, abs(se / value))
    return worst


def information_criteria(rss: float, n: int, k: int, sigma_known: bool):
    """AIC and AICc of a least-squares fit, and K.

    Parameters
    ----------
    rss : float
        Weighted residual sum of squares Σ ((A_model − A_i)/σ_i)² (χ² when σ is known).
    n : int
        Number of points.
    k : int
        Number of curve parameters.
    sigma_known : bool
        True when σ_i are known (``sigma_bq``); False when only their shape is and the scale is
        estimated from the residuals.

    Returns
    -------
    aic, aicc : float
        ``AIC = −2 ln L̂ + 2K`` and ``AICc = AIC + 2K(K + 1)/(n − K − 1)`` (NaN when n − K − 1 ≤ 0), with
        ``−2 ln L̂ = n ln(RSS/n)`` and ``K = k + 1`` when the scale is estimated, ``−2 ln L̂ = RSS`` and
        ``K = k`` when σ is known (constants common to every model of the curve left out; Burnham &
        Anderson 2002, §2.2; Hurvich & Tsai 1989; Glatting et al., Med. Phys. 34:4285, 2007).
    K : int
    """
    big_k = k if sigma_known else k + 1
    minus_2_log_l = rss if sigma_known else n * math.log(max(rss, 1e-300) / n)
    aic = minus_2_log_l + 2 * big_k
    aicc = aic + 2.0 * big_k * (big_k + 1) / (n - big_k - 1) if n - big_k - 1 > 0 else float("nan")
    return aic, aicc, big_k


def error_model_sigma(activity_bq, error_model: str) -> np.ndarray:
    """The shape of the standard uncertainties σ_i of an error model (its scale is estimated by the fit).

    Parameters
    ----------
    activity_bq : array_like
        Measured activities (Bq).
    error_model : str
        ``"proportional"`` (σ_i ∝ A_i), ``"counting"`` (σ_i ∝ √A_i) or ``"uniform"`` (σ_i constant).

    Returns
    -------
    numpy.ndarray
        σ_i up to a common factor (Bq for proportional and uniform, √Bq for counting); the activity is
        floored at ``SIGMA_FLOOR_REL`` of the largest one.
    """
    a = np.asarray(activity_bq, dtype=float)
    if error_model == "uniform":
        return np.ones_like(a)
    level = np.maximum(a, SIGMA_FLOOR_REL * float(np.max(a)))
    if error_model == "proportional":
        return level
    if error_model == "counting":
        return np.sqrt(level)
    raise FitError(f"unknown error model {error_model!r}; choose from {', '.join(ERROR_MODELS)}")


def _at_bound(q: np.ndarray, lb: np.ndarray, ub: np.ndarray) -> np.ndarray:
    """Which internal parameters ended on a (non-zero, finite) bound of the fit (``"lower"``, ``"upper"``
    or "")."""
    out = np.full(q.size, "", dtype=object)
    for j in range(q.size):
        if np.isfinite(lb[j]) and lb[j] > 0 and q[j] <= lb[j] * (1 + _AT_BOUND_REL):
            out[j] = "lower"
        elif np.isfinite(ub[j]) and ub[j] > 0 and q[j] >= ub[j] * (1 - _AT_BOUND_REL):
            out[j] = "upper"
    return out


def _bound_text(model, j: int, side: str, physical_bound: bool) -> str:
    """Plain words for internal parameter ``j`` of ``model`` on its ``side`` bound."""
    if side == "upper":
        return f"upper bound ({MAX_RATE_PER_H:g}/h)"
    if j == model.rate_index[0]:
        return f"lower bound ({'the physical decay constant' if physical_bound else 'the smallest rate allowed'})"
    return "lower bound (its minimum separation from the next slower rate)"


def _fit_one(model, t, a, sigma, sigma_known, lam_phys, physical_bound, extra_starts, min_points) -> CandidateFit:
    """Fit one exponential model with weights 1/σ² (σ known, or its shape when ``sigma_known`` is False);
    return an accepted or rejected :class:`CandidateFit`."""
    from scipy.optimize import least_squares

    k, n = model.n_params, t.size
    cand = CandidateFit(model=model.name, accepted=False, n_params=k)
    if n < min_points:
        cand.reason = (f"{n} points are too few: {model.name} has {k} parameters and needs "
                       f"at least {min_points} points")
        return cand

    scale = float(np.max(np.abs(a)))
    amp = list(model.amplitude_index)
    wt = 1.0 / sigma  # 1/σ_i
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
    cand.aic, cand.aicc, cand.k_ic = information_criteria(cand.rss_for_ic, n, k, sigma_known)

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

    # Covariance (Jᵀ W J)⁻¹ with column scaling; singular → parameters not separable. Parameters at a
    # bound are held there: the covariance is that of the others (internal parameters q, p = M q).
    side = _at_bound(best.x, lb, ub)
    fixed = side != ""
    jw = (jac_p if not fixed.any() else jac_p @ m) * wt[:, None]
    free = np.flatnonzero(~fixed)
    jf = jw[:, free]
    col = np.linalg.norm(jf, axis=0)
    if not np.all(np.isfinite(jf)) or np.any(col == 0):
        cand.reason = "the covariance is not finite (a parameter has no effect on the fitted points)"
        return cand
    _, sv, vt = np.linalg.svd(jf / col, full_matrices=False)
    if sv[-1] < _RCOND * sv[0]:
        worst = names[int(free[int(np.argmax(np.abs(vt[-1])))])]
        cand.reason = f"the covariance is singular: {worst} is not determined by the data"
        return cand
    cov_free = (vt.T / sv ** 2) @ vt / np.outer(col, col)
    if fixed.any():
        cov_q = np.zeros((k, k))
        cov_q[np.ix_(free, free)] = cov_free
        cov = m @ cov_q @ m.T
    else:
        cov = cov_free
    if not sigma_known:  # the scale of σ is estimated from the residuals: reduced χ²
        dof = n - k
        cov = cov * (rss / dof) if dof > 0 else np.full_like(cov, np.nan)
    se = np.sqrt(np.clip(np.diag(cov), 0.0, None))
    se[fixed] = np.nan  # not meaningful at a bound (the curvature of the residual sum says nothing there)
    cand.param_se = {nm: float(v) for nm, v in zip(names, se)}
    cand.param_at_bound = {names[j]: _bound_text(model, j, side[j], physical_bound)
                           for j in np.flatnonzero(fixed)}

    tia = model.integral(p) * SECONDS_PER_HOUR
    grad = model.integral_gradient(p) * SECONDS_PER_HOUR
    var = float(grad @ cov @ grad)
    if not (np.isfinite(tia) and tia > 0):
        cand.reason = f"the time-integrated activity is not positive and finite ({tia:g} Bq·s)"
        return cand
    if not np.isfinite(var) and sigma_known:
        cand.reason = "the covariance is not finite"
        return cand
    cand.tia_bq_s = float(tia)
    cand.tia_se_bq_s = math.sqrt(max(var, 0.0)) if np.isfinite(var) else float("nan")
    i = model.rate_index[0]  # the slowest clearance rate
    if physical_bound and p[i] <= lam_phys * (1 + 1e-6):
        cand.warnings.append(f"{model.name}: {names[i]} is at the physical decay constant (no "
                             f"biological clearance is seen; effective half-life = physical)")
    for name, bound in cand.param_at_bound.items():
        cand.warnings.append(f"{model.name}: {name} is at its {bound}: its standard error is not meaningful "
                             f"(reported as null) and the TIA standard error holds it fixed")
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


def fit_time_activity_curve(t_h, activity_bq, *, sigma_bq=None, error_model: str = "proportional",
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
        Standard uncertainty of each activity (Bq). When given, the fit is weighted by 1/σ², the
        covariance is absolute, K = k in the AICc, and ``error_model`` is not used.
    error_model : {"proportional", "counting", "uniform"}
        Without ``sigma_bq``: how σ_i scales with the activity (σ ∝ A, σ ∝ √A, σ constant; see the
        module docstring). The fit is weighted by 1/σ², the scale of σ is estimated from the residuals
        (covariance scaled by the reduced χ², K = k + 1 in the AICc).
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
        everywhere, bad uncertainties, unknown model or error model names.
    """
    where = _prefix(label)
    t, a, sigma = _validate(t_h, activity_bq, sigma_bq, label)
    if error_model not in ERROR_MODELS:
        raise FitError(f"{where}unknown error model {error_model!r}; choose from {', '.join(ERROR_MODELS)}")
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
    sigma_known = sigma is not None
    weights_sigma = sigma if sigma_known else error_model_sigma(a, error_model)
    if not sigma_known and error_model != "uniform" and np.any(a < SIGMA_FLOOR_REL * np.max(a)):
        low = ", ".join(f"{v:g} h" for v in t[a < SIGMA_FLOOR_REL * np.max(a)])
        warnings.append(f"{where}activity below {100 * SIGMA_FLOOR_REL:g} % of the maximum at {low}: its "
                        f"uncertainty is taken as that of {100 * SIGMA_FLOOR_REL:g} % of the maximum "
                        f"({error_model} error model)")

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
            candidates.append(_fit_one(model, t, a, weights_sigma, sigma_known, lam_phys, physical_bound,
                                       extra, min_points))

    accepted = [c for c in candidates if c.accepted]
    if accepted:
        defined = [c for c in accepted if np.isfinite(c.aicc)]
        best = min(defined, key=lambda c: c.aicc) if defined else None
        # AICc undefined (n ≤ K + 1): this project's own rule (module docstring).
        for c in sorted((c for c in accepted if not np.isfinite(c.aicc)), key=lambda c: c.n_params):
            if best is None:
                best = c
            elif (compare and c.n_params > best.n_params and c.aic < best.aic - AIC_MARGIN
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
                  lambda_phys_per_h=lam_phys, trapezoid_start=trapezoid_start,
                  error_model=GIVEN_SIGMA if sigma_known else error_model,
                  param_at_bound=dict(best.param_at_bound))


def _tri_starts_from(candidates: List[CandidateFit]) -> List[np.ndarray]:
    """Tri-exponential starting points derived from an accepted bi-exponential fit."""
    for c in candidates:
        if c.model == "bi_exponential" and c.accepted:
            a0, lw, lu = (c.params[k] for k in MODELS["bi_exponential"].param_names)
            mid = math.sqrt(lw * lu)
            return [np.array([0.9 * a0, lw, 0.1 * a0, mid, lu]),
                    np.array([0.6 * a0, lw, 0.4 * a0, min(3 * lw, 0.5 * (lw + lu)), lu])]
    return []


def tia_linearisation(fit: TacFit):
    """The fitted curve and its TIA linearised in the parameters the data determine, for propagating the
    uncertainties of the activities through the fit (:mod:`LuDosimetryLib.uncertainty`).

    The free parameters are the model's internal ones (``p = M q``, :mod:`.models`), less those held: a
    parameter at a bound (``param_at_bound``, as for the TIA standard error) and, on a curve with fewer
    points than parameters (single-time-point methods of :mod:`.reduced`), every rate (the method sets it,
    not the data).

    Parameters
    ----------
    fit : TacFit

    Returns
    -------
    jacobian : numpy.ndarray (n, f)
        ∂A_model(t_i)/∂q_j at the fit's time points (Bq per unit of q_j).
    gradient : numpy.ndarray (f,)
        ∂TIA/∂q_j (Bq·s per unit of q_j).
    weight_sigma : numpy.ndarray (n,)
        The σ_i (up to a common factor) the fit weighted the points by: ``sigma_bq`` when given, else its error
        model's (proportional for curves not fitted by least squares, e.g. the reduced methods).

    For the trapezoid (not fitted; its TIA is linear in the points) the parameters are the points themselves:
    the identity, the integral weights (Bq·s per Bq) and ones.
    """
    t = np.asarray(fit.t_h, dtype=float)
    a = np.asarray(fit.activity_bq, dtype=float)
    model = MODELS[fit.model]
    if fit.model == "trapezoid":
        knots = TrapezoidKnots(t, a, fit.params["lambda_tail_per_h"], fit.trapezoid_start)
        return np.eye(t.size), model.integral_weights(knots) * SECONDS_PER_HOUR, np.ones(t.size)
    if fit.sigma_bq is not None:
        weight_sigma = np.asarray(fit.sigma_bq, dtype=float)
    else:
        weight_sigma = error_model_sigma(a, fit.error_model if fit.error_model in ERROR_MODELS else "proportional")
    names = model.param_names
    p = np.array([fit.params[name] for name in names], dtype=float)
    m = model.to_natural_matrix
    held = {names.index(name) for name in fit.param_at_bound if name in names}
    if t.size < model.n_params:
        held |= set(model.rate_index)
    free = [j for j in range(model.n_params) if j not in held]
    jacobian = (model.jacobian(t, p) @ m)[:, free]
    gradient = (model.integral_gradient(p) @ m)[free] * SECONDS_PER_HOUR
    return jacobian, gradient, weight_sigma
