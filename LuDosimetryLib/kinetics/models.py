"""Time-activity curve (TAC) models with analytic integrals.

Conventions
-----------
- Time ``t_h`` in hours from the injection; activity in Bq (the activity present in the VOI at the
  scan time, *not* decay-corrected); rates (clearance constants) in 1/h; integrals in Bq·h.
- Each exponential model is a small object with ``name``, ``param_names``, ``n_params``,
  ``evaluate(t_h, params)`` (Bq), ``jacobian(t_h, params)`` (∂A/∂p), ``integral(params, t_start_h,
  t_end_h)`` (Bq·h, closed form), ``integral_gradient(...)`` (∂∫/∂p, for the delta method),
  ``initial_guess(t_h, a_bq, lambda_phys_per_h)`` (a list of starting points) and
  ``bounds(lambda_phys_per_h, physical_bound)`` (box bounds on the natural parameters).
- Orderings between rates (uptake faster than washout) cannot be written as box bounds on the
  natural parameters, so every model also has a linear reparametrisation ``p = M q``
  (``to_natural_matrix``) in which they are box bounds (``internal_bounds``): e.g. for the
  bi-exponential ``q = (A0, λw, λu − λw)`` with ``λu − λw > 0``.
- ``physical_bound=True`` constrains every clearance rate to λ ≥ λ_phys: with activity that is not
  decay-corrected the effective half-life cannot exceed the physical one.

:class:`Trapezoid` is not fitted: its "parameters" are the measured points themselves
(:class:`TrapezoidKnots`).
"""
from __future__ import annotations

import math
from typing import Dict, List, NamedTuple, Sequence, Tuple

import numpy as np

#: Smallest clearance rate allowed when ``physical_bound=False`` (1/h; T½ ≈ 79 years).
MIN_RATE_PER_H = 1e-6
#: Largest rate allowed in a fit (1/h; T½ ≈ 25 s): faster phases are not resolved by SPECT time points.
MAX_RATE_PER_H = 100.0
#: Smallest gap between two ordered rates (1/h).
MIN_RATE_GAP_PER_H = 1e-6


def _exp_integral(lam: float, t0: float, t1: float) -> float:
    """∫_{t0}^{t1} e^{-λ t} dt (h), ``t1`` may be +inf."""
    upper = 0.0 if math.isinf(t1) else math.exp(-lam * t1)
    return (math.exp(-lam * t0) - upper) / lam


def _exp_integral_dlam(lam: float, t0: float, t1: float) -> float:
    """∂/∂λ of :func:`_exp_integral` (h²)."""
    g = _exp_integral(lam, t0, t1)
    upper = 0.0 if math.isinf(t1) else t1 * math.exp(-lam * t1)
    return (-t0 * math.exp(-lam * t0) + upper) / lam - g / lam


def _loglinear(t: np.ndarray, a: np.ndarray) -> Tuple[float, float]:
    """Least-squares line through (t, ln a) of the positive points: (slope 1/h, intercept ln Bq)."""
    keep = a > 0
    t, a = t[keep], a[keep]
    if t.size < 2:
        return float("nan"), float("nan")
    slope, intercept = np.polyfit(t, np.log(a), 1)
    return float(slope), float(intercept)


def _late_phase(t: np.ndarray, a: np.ndarray, lam_lo: float) -> Tuple[float, float]:
    """Washout rate (1/h) and back-extrapolated amplitude (Bq) from the points after the peak.

    Uses the points from the maximum on (at least the last two); the rate is kept ≥ ``lam_lo``.
    """
    k = int(np.argmax(a))
    start = min(k, t.size - 2)
    slope, intercept = _loglinear(t[start:], a[start:])
    if not np.isfinite(slope):
        lam = 1.5 * lam_lo
        amp = float(np.max(a)) * math.exp(lam * float(t[k]))
    else:
        lam = max(-slope, 1.05 * lam_lo)
        amp = math.exp(intercept) if -slope >= lam_lo else float(a[k]) * math.exp(lam * float(t[k]))
    return lam, max(amp, float(np.max(a)))


def _uptake_rate_from_peak(t_peak_h: float, lam_w: float) -> float:
    """λu such that A0(e^{-λw t} − e^{-λu t}) peaks at ``t_peak_h``: ln(λu/λw)/(λu−λw) = t_peak."""
    from scipy.optimize import brentq

    def peak_time(lam_u: float) -> float:
        return math.log(lam_u / lam_w) / (lam_u - lam_w) - t_peak_h

    lo, hi = lam_w * (1 + 1e-9), MAX_RATE_PER_H
    if lo >= hi or peak_time(lo) * peak_time(hi) > 0:
        return float("nan")
    return brentq(lambda x: peak_time(x), lo * (1 + 1e-6), hi)


class MonoExponential:
    """A(t) = A0 · e^(−λ t): clearance only (uptake complete before the first scan).

    Parameters ``(A0_bq, lambda_per_h)``; ∫_0^∞ = A0/λ.
    """

    name = "mono_exponential"
    param_names = ("A0_bq", "lambda_per_h")
    n_params = 2
    amplitude_index = (0,)
    rate_index = (1,)
    to_natural_matrix = np.eye(2)

    def evaluate(self, t_h, params) -> np.ndarray:
        """Activity (Bq) at ``t_h`` (h)."""
        a0, lam = params
        return a0 * np.exp(-lam * np.asarray(t_h, dtype=float))

    def jacobian(self, t_h, params) -> np.ndarray:
        """∂A/∂p, shape (n_times, 2)."""
        a0, lam = params
        t = np.asarray(t_h, dtype=float)
        e = np.exp(-lam * t)
        return np.column_stack([e, -t * a0 * e])

    def integral(self, params, t_start_h: float = 0.0, t_end_h: float = math.inf) -> float:
        """∫ A dt over [t_start_h, t_end_h] (Bq·h)."""
        a0, lam = params
        return a0 * _exp_integral(lam, t_start_h, t_end_h)

    def integral_gradient(self, params, t_start_h: float = 0.0, t_end_h: float = math.inf) -> np.ndarray:
        """∂(∫ A dt)/∂p (Bq·h per unit of each parameter)."""
        a0, lam = params
        return np.array([_exp_integral(lam, t_start_h, t_end_h),
                         a0 * _exp_integral_dlam(lam, t_start_h, t_end_h)])

    def slowest_rate_per_h(self, params) -> float:
        """The clearance rate that sets the effective half-life (1/h)."""
        return float(params[1])

    def bounds(self, lambda_phys_per_h: float, physical_bound: bool = True):
        """Box bounds (lower, upper) on ``(A0_bq, lambda_per_h)``."""
        lo = lambda_phys_per_h if physical_bound else MIN_RATE_PER_H
        return np.array([0.0, lo]), np.array([np.inf, MAX_RATE_PER_H])

    def internal_bounds(self, lambda_phys_per_h: float, physical_bound: bool = True):
        """Box bounds on the internal parameters q (here q = p)."""
        return self.bounds(lambda_phys_per_h, physical_bound)

    def initial_guess(self, t_h, a_bq, lambda_phys_per_h: float, physical_bound: bool = True) -> List[np.ndarray]:
        """Starting points: log-linear fits on the late points and on all points, and a slow start."""
        t, a = np.asarray(t_h, float), np.asarray(a_bq, float)
        lam_lo = lambda_phys_per_h if physical_bound else MIN_RATE_PER_H
        guesses = []
        lam, amp = _late_phase(t, a, lam_lo)
        guesses.append(np.array([amp, lam]))
        slope, intercept = _loglinear(t, a)
        if np.isfinite(slope) and -slope > lam_lo:
            guesses.append(np.array([math.exp(intercept), -slope]))
        lam = 1.2 * max(lam_lo, lambda_phys_per_h)
        guesses.append(np.array([float(np.max(a)) * math.exp(lam * float(t[int(np.argmax(a))])), lam]))
        return guesses


class BiExponential:
    """Uptake–washout: A(t) = A0 · (e^(−λw t) − e^(−λu t)), λu > λw.

    Parameters ``(A0_bq, lambda_washout_per_h, lambda_uptake_per_h)``; ∫_0^∞ = A0 (1/λw − 1/λu).
    Internal parameters q = (A0, λw, λu − λw).
    """

    name = "bi_exponential"
    param_names = ("A0_bq", "lambda_washout_per_h", "lambda_uptake_per_h")
    n_params = 3
    amplitude_index = (0,)
    rate_index = (1, 2)
    to_natural_matrix = np.array([[1.0, 0.0, 0.0],
                                  [0.0, 1.0, 0.0],
                                  [0.0, 1.0, 1.0]])

    def evaluate(self, t_h, params) -> np.ndarray:
        """Activity (Bq) at ``t_h`` (h)."""
        a0, lw, lu = params
        t = np.asarray(t_h, dtype=float)
        return a0 * (np.exp(-lw * t) - np.exp(-lu * t))

    def jacobian(self, t_h, params) -> np.ndarray:
        """∂A/∂p, shape (n_times, 3)."""
        a0, lw, lu = params
        t = np.asarray(t_h, dtype=float)
        ew, eu = np.exp(-lw * t), np.exp(-lu * t)
        return np.column_stack([ew - eu, -t * a0 * ew, t * a0 * eu])

    def integral(self, params, t_start_h: float = 0.0, t_end_h: float = math.inf) -> float:
        """∫ A dt over [t_start_h, t_end_h] (Bq·h)."""
        a0, lw, lu = params
        return a0 * (_exp_integral(lw, t_start_h, t_end_h) - _exp_integral(lu, t_start_h, t_end_h))

    def integral_gradient(self, params, t_start_h: float = 0.0, t_end_h: float = math.inf) -> np.ndarray:
        """∂(∫ A dt)/∂p."""
        a0, lw, lu = params
        return np.array([_exp_integral(lw, t_start_h, t_end_h) - _exp_integral(lu, t_start_h, t_end_h),
                         a0 * _exp_integral_dlam(lw, t_start_h, t_end_h),
                         -a0 * _exp_integral_dlam(lu, t_start_h, t_end_h)])

    def slowest_rate_per_h(self, params) -> float:
        """The washout rate λw (1/h)."""
        return float(params[1])

    def bounds(self, lambda_phys_per_h: float, physical_bound: bool = True):
        """Box bounds on ``(A0, λw, λu)``; the ordering λu > λw is enforced internally."""
        lo = lambda_phys_per_h if physical_bound else MIN_RATE_PER_H
        return np.array([0.0, lo, lo]), np.array([np.inf, MAX_RATE_PER_H, MAX_RATE_PER_H])

    def internal_bounds(self, lambda_phys_per_h: float, physical_bound: bool = True):
        """Box bounds on q = (A0, λw, λu − λw)."""
        lo = lambda_phys_per_h if physical_bound else MIN_RATE_PER_H
        return (np.array([0.0, lo, MIN_RATE_GAP_PER_H]),
                np.array([np.inf, MAX_RATE_PER_H, MAX_RATE_PER_H]))

    def initial_guess(self, t_h, a_bq, lambda_phys_per_h: float, physical_bound: bool = True) -> List[np.ndarray]:
        """Starting points: washout from a log-linear fit after the peak, uptake from the peak time
        (or, when the first point is the maximum, a few rates faster than 1/t_first)."""
        t, a = np.asarray(t_h, float), np.asarray(a_bq, float)
        lam_lo = lambda_phys_per_h if physical_bound else MIN_RATE_PER_H
        lam_w, amp = _late_phase(t, a, lam_lo)
        k = int(np.argmax(a))
        uptakes = []
        if k > 0:
            lu = _uptake_rate_from_peak(float(t[k]), lam_w)
            if np.isfinite(lu):
                uptakes.append(lu)
        t_first = max(float(t[0]), 1e-3)
        uptakes += [1.0 / t_first, 3.0 / t_first, 0.3 / t_first]
        guesses = []
        for lu in uptakes:
            lu = min(max(lu, 2.0 * lam_w), 0.5 * MAX_RATE_PER_H)
            guesses.append(np.array([amp, lam_w, lu]))
        return guesses


class TriExponential:
    """A(t) = A1 e^(−λ1 t) + A2 e^(−λ2 t) − (A1 + A2) e^(−λ3 t), λ1 < λ2 < λ3, A1, A2 ≥ 0.

    Uptake at rate λ3 (A(0) = 0) and two washout phases; λ1 is the slowest clearance.
    Parameters ``(A1_bq, lambda1_per_h, A2_bq, lambda2_per_h, lambda3_per_h)``;
    ∫_0^∞ = A1/λ1 + A2/λ2 − (A1 + A2)/λ3. Internal q = (A1, λ1, A2, λ2 − λ1, λ3 − λ2).
    """

    name = "tri_exponential"
    param_names = ("A1_bq", "lambda1_per_h", "A2_bq", "lambda2_per_h", "lambda3_per_h")
    n_params = 5
    amplitude_index = (0, 2)
    rate_index = (1, 3, 4)
    to_natural_matrix = np.array([[1.0, 0.0, 0.0, 0.0, 0.0],
                                  [0.0, 1.0, 0.0, 0.0, 0.0],
                                  [0.0, 0.0, 1.0, 0.0, 0.0],
                                  [0.0, 1.0, 0.0, 1.0, 0.0],
                                  [0.0, 1.0, 0.0, 1.0, 1.0]])

    def evaluate(self, t_h, params) -> np.ndarray:
        """Activity (Bq) at ``t_h`` (h)."""
        a1, l1, a2, l2, l3 = params
        t = np.asarray(t_h, dtype=float)
        return a1 * np.exp(-l1 * t) + a2 * np.exp(-l2 * t) - (a1 + a2) * np.exp(-l3 * t)

    def jacobian(self, t_h, params) -> np.ndarray:
        """∂A/∂p, shape (n_times, 5)."""
        a1, l1, a2, l2, l3 = params
        t = np.asarray(t_h, dtype=float)
        e1, e2, e3 = np.exp(-l1 * t), np.exp(-l2 * t), np.exp(-l3 * t)
        return np.column_stack([e1 - e3, -t * a1 * e1, e2 - e3, -t * a2 * e2, t * (a1 + a2) * e3])

    def integral(self, params, t_start_h: float = 0.0, t_end_h: float = math.inf) -> float:
        """∫ A dt over [t_start_h, t_end_h] (Bq·h)."""
        a1, l1, a2, l2, l3 = params
        g1, g2, g3 = (_exp_integral(lam, t_start_h, t_end_h) for lam in (l1, l2, l3))
        return a1 * g1 + a2 * g2 - (a1 + a2) * g3

    def integral_gradient(self, params, t_start_h: float = 0.0, t_end_h: float = math.inf) -> np.ndarray:
        """∂(∫ A dt)/∂p."""
        a1, l1, a2, l2, l3 = params
        g1, g2, g3 = (_exp_integral(lam, t_start_h, t_end_h) for lam in (l1, l2, l3))
        d1, d2, d3 = (_exp_integral_dlam(lam, t_start_h, t_end_h) for lam in (l1, l2, l3))
        return np.array([g1 - g3, a1 * d1, g2 - g3, a2 * d2, -(a1 + a2) * d3])

    def slowest_rate_per_h(self, params) -> float:
        """The slowest clearance λ1 (1/h)."""
        return float(params[1])

    def bounds(self, lambda_phys_per_h: float, physical_bound: bool = True):
        """Box bounds on the natural parameters; λ1 < λ2 < λ3 is enforced internally."""
        lo = lambda_phys_per_h if physical_bound else MIN_RATE_PER_H
        return (np.array([0.0, lo, 0.0, lo, lo]),
                np.array([np.inf, MAX_RATE_PER_H, np.inf, MAX_RATE_PER_H, MAX_RATE_PER_H]))

    def internal_bounds(self, lambda_phys_per_h: float, physical_bound: bool = True):
        """Box bounds on q = (A1, λ1, A2, λ2 − λ1, λ3 − λ2)."""
        lo = lambda_phys_per_h if physical_bound else MIN_RATE_PER_H
        return (np.array([0.0, lo, 0.0, MIN_RATE_GAP_PER_H, MIN_RATE_GAP_PER_H]),
                np.array([np.inf, MAX_RATE_PER_H, np.inf, MAX_RATE_PER_H, MAX_RATE_PER_H]))

    def initial_guess(self, t_h, a_bq, lambda_phys_per_h: float, physical_bound: bool = True) -> List[np.ndarray]:
        """Starting points: slow phase from the late points, uptake from the peak, an intermediate
        phase between them with a few splits of the amplitude."""
        t, a = np.asarray(t_h, float), np.asarray(a_bq, float)
        lam_lo = lambda_phys_per_h if physical_bound else MIN_RATE_PER_H
        l1, amp = _late_phase(t, a, lam_lo)
        guesses = []
        for bi in BiExponential().initial_guess(t, a, lambda_phys_per_h, physical_bound)[:2]:
            l3 = max(bi[2], 4.0 * l1)
            for l2 in (math.sqrt(l1 * l3), 3.0 * l1):
                l2 = min(max(l2, 1.5 * l1), 0.7 * l3)
                for frac in (0.8, 0.5):
                    guesses.append(np.array([frac * amp, l1, (1.0 - frac) * amp * 2.0, l2, l3]))
        return guesses


class TrapezoidKnots(NamedTuple):
    """The "parameters" of the trapezoid model: the measured points and the tail.

    Attributes
    ----------
    t_h : sequence of float
        Time points (h), strictly increasing, ≥ 0.
    activity_bq : sequence of float
        Activity at each point (Bq).
    lambda_tail_per_h : float
        Decay constant of the tail after the last point (1/h), the physical one.
    start : str
        ``"linear"``: straight line from (0, 0) to the first point; ``"constant"``: the first
        value held back to t = 0.
    """

    t_h: Sequence[float]
    activity_bq: Sequence[float]
    lambda_tail_per_h: float
    start: str = "linear"


class Trapezoid:
    """Piecewise-linear TAC through the measured points with an exponential tail (not fitted).

    Before the first point: linear from (0, 0) (``start="linear"``) or constant back-extrapolation
    (``start="constant"``); between points: straight lines (trapezoid rule); after the last point
    ``A_n e^(−λ_phys (t − t_n))``, integrated analytically (A_n / λ_phys to infinity).
    """

    name = "trapezoid"
    param_names = ("lambda_tail_per_h",)
    n_params = 0  # nothing is fitted
    STARTS = ("linear", "constant")

    def _knots(self, knots: TrapezoidKnots) -> Tuple[np.ndarray, np.ndarray]:
        t = np.asarray(knots.t_h, dtype=float)
        a = np.asarray(knots.activity_bq, dtype=float)
        if knots.start not in self.STARTS:
            raise ValueError(f"trapezoid start must be one of {self.STARTS}, not {knots.start!r}")
        if t[0] > 0:
            t = np.concatenate([[0.0], t])
            a = np.concatenate([[0.0 if knots.start == "linear" else a[0]], a])
        return t, a

    def evaluate(self, t_h, knots: TrapezoidKnots) -> np.ndarray:
        """Activity (Bq) at ``t_h`` (h); 0 before t = 0."""
        tk, ak = self._knots(knots)
        t = np.asarray(t_h, dtype=float)
        out = np.interp(t, tk, ak)
        tail = t > tk[-1]
        out = np.where(tail, ak[-1] * np.exp(-knots.lambda_tail_per_h * (t - tk[-1])), out)
        return np.where(t < 0, 0.0, out)

    def integral(self, knots: TrapezoidKnots, t_start_h: float = 0.0, t_end_h: float = math.inf) -> float:
        """∫ A dt over [t_start_h, t_end_h] (Bq·h): exact for the piecewise-linear part, closed form
        for the tail."""
        tk, ak = self._knots(knots)
        lo, hi = max(float(t_start_h), 0.0), float(t_end_h)
        total = 0.0
        for i in range(tk.size - 1):
            u, v = max(lo, tk[i]), min(hi, tk[i + 1])
            if v > u:
                yu, yv = np.interp([u, v], tk[i:i + 2], ak[i:i + 2])
                total += 0.5 * (v - u) * (yu + yv)
        u = max(lo, tk[-1])
        if hi > u:
            lam = knots.lambda_tail_per_h
            total += ak[-1] * math.exp(-lam * (u - tk[-1])) * _exp_integral(lam, 0.0, hi - u)
        return float(total)

    def integral_weights(self, knots: TrapezoidKnots, t_start_h: float = 0.0,
                         t_end_h: float = math.inf) -> np.ndarray:
        """∂(∫ A dt)/∂A_i (h): the integral is linear in the measured activities."""
        n = len(knots.t_h)
        weights = np.empty(n)
        for i in range(n):
            unit = np.zeros(n)
            unit[i] = 1.0
            weights[i] = self.integral(knots._replace(activity_bq=unit), t_start_h, t_end_h)
        return weights


#: The models by name.
MODELS: Dict[str, object] = {
    m.name: m for m in (MonoExponential(), BiExponential(), TriExponential(), Trapezoid())
}
#: The models that are fitted (candidates for AICc selection).
EXPONENTIAL_MODELS = ("mono_exponential", "bi_exponential", "tri_exponential")
