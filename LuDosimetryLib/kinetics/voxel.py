"""Voxel-level time-integrated activity (TIA) map: every voxel's time-activity curve fitted at once.

The same models and selection rules as the VOI fits of :mod:`.fit` (mono-exponential ``A0 e^(−λt)``
and uptake–washout bi-exponential ``A0 (e^(−λw t) − e^(−λu t))``, every rate ≥ λ_phys, AICc ranking with
σ² counted in K, and this project's rule where AICc is undefined), vectorised in numpy so that a 128³
volume with 4 time points takes seconds instead of hours of per-voxel ``scipy.optimize`` calls. One
difference: voxels are fitted by *unweighted* least squares (the ``"uniform"`` error model of :mod:`.fit`),
not with the VOI fits' default proportional weights: a voxel's value is dominated by image noise that does
not scale with its activity, and relative weights taken from a noisy voxel value would give its low
fluctuations most of the weight.

Method (per block of voxels, all voxels of the block at once)
------------------------------------------------------------
- **Starting points by variable projection on a grid.** For fixed rates the amplitude is linear and
  the best one explains ``(u·a)²`` of the curve ``a``, with ``u`` the unit-norm basis curve at the time
  points. The basis does not depend on the voxel, so the score of *every* voxel at *every* grid rate is
  one float32 matrix product and the best grid point one ``argmax`` (no starting point to get wrong).
- **Mono-exponential:** 32 log-spaced rates in [λ_phys, min(100/h, 30/t₁)], refined by a parabola in
  ln λ through the best grid point's neighbours, then 3 Levenberg–Marquardt steps on (A0, λ) in float32
  and 2 in float64 (2×2 normal equations in closed form; box bounds by projection).
- **Bi-exponential** (only where the curve can bend down at the start: it rises after the first point,
  or the first point lies below the mono-exponential fit, or no mono-exponential was acceptable; and
  only with ≥ 4 points): a 20 × 12 grid of (λw, λu/λw), then batched Levenberg–Marquardt steps on
  (A0, λw, λu) (3×3 normal equations by Cramer's rule) in float32 until the cost stops falling, with the
  converged voxels dropped from the working set, then 2 steps in float64 (bounds
  λ_phys ≤ λw < λu ≤ 100/h).
- **Selection:** as :func:`~.fit.fit_time_activity_curve` (K = k + 1: the variance is estimated from the
  residuals): with ≥ 6 points the lowest AICc; with 4–5 points (bi-exponential AICc undefined, n ≤ K + 1)
  the bi-exponential replaces the mono-exponential only when its uncorrected AIC is lower by more than
  ``AIC_MARGIN`` = 2 and every parameter's relative standard error is below ``MAX_RELATIVE_SE`` = 50 %
  (Kletting et al., Med. Phys. 40:102504, 2013).
- **Fall-back for noisy voxels:** when no exponential model is acceptable (amplitude ≤ 0, rate at its
  upper bound, non-finite values, a TIA relative standard error above ``max_tia_relative_se``, or a
  bi-exponential whose parameters are not determined — relative SE ≥ 50 %) the voxel is integrated by
  the trapezoid rule from (0, 0) through the points, with a tail after the last point that decays at the
  clearance rate seen from the curve's maximum on (log-linear fit of those ≥ 2 points, rate ≥ λ_phys;
  code ``trapezoid_fitted_tail``), or at the physical rate when that is not available (the trapezoid
  model of :mod:`.models`, code ``trapezoid``). The physical tail alone overestimates the TIA of a
  clearing voxel (by ~30 % for a 60 h effective half-life).
- **Noise floor** (:func:`voxel_tia_map` only): a voxel below ``noise_floor`` (default
  :data:`DEFAULT_NOISE_FLOOR` = 1 %) of its time point's image maximum at *every* time point is not
  fitted: background whose curve is noise gets the trapezoid integral (code ``trapezoid``).
- Voxels with no positive value get TIA 0 (model code 0).

Precision: the grid search and the float32 iterations do the bulk of the work (float32 exponentials
are ~4 times faster in numpy); the last steps, the residual sums, covariances and integrals are float64,
so converged parameters carry float64 precision. Blocks of :data:`_BLOCK` voxels bound the memory
(about 60 MB per block) and are shared by ``workers`` threads (numpy releases the GIL).

Activities are concentrations (Bq/mL) at the scan times, not decay-corrected; the map is Bq·s/mL.
"""
from __future__ import annotations

import math
import os
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Dict, NamedTuple, Optional, Sequence, Tuple, Union

import numpy as np
import SimpleITK as sitk

from ..errors import FitError
from ..progress import as_progress
from ..radionuclides import Radionuclide, radionuclide
from .fit import AIC_MARGIN, MAX_RELATIVE_SE, SECONDS_PER_HOUR
from .models import MAX_RATE_PER_H, MODELS, TrapezoidKnots

#: Model codes of the model map.
MODEL_CODES: Dict[str, int] = {"none": 0, "mono_exponential": 1, "bi_exponential": 2, "trapezoid": 3,
                               "trapezoid_fitted_tail": 4}
#: Default noise floor of :func:`voxel_tia_map`: fraction of each time point's image maximum below
#: which (at every time point) a voxel is background and integrated by the trapezoid rule unfitted.
DEFAULT_NOISE_FLOOR = 0.01
#: Default TIA relative standard error above which an exponential fit falls back to the trapezoid.
#: With 4 points a mono-exponential pinned at the physical rate (uptake seen, no clearance yet) has a
#: TIA SE of 150–250 % and is still a better estimate than the trapezoid; fit_time_activity_curve keeps
#: such fits too (with a warning). 300 % only removes fits that are noise.
DEFAULT_MAX_TIA_RELATIVE_SE = 3.0
_VOXEL_MODELS = ("mono_exponential", "bi_exponential", "trapezoid")
_BLOCK = 32768           # voxels per block (bounds the memory: ~60 MB of temporaries per block)
_MONO_GRID = 32          # log-spaced rates of the mono-exponential grid
_MONO_STEPS = (3, 2)     # LM steps in float32, then in float64
_BI_GRID = (20, 12)      # (λw, λu/λw) grid of the bi-exponential
_BI_MAX_STEPS32 = 60     # at most this many float32 LM steps (converged voxels leave earlier)
#: K of the AICc (.fit.information_criteria): the curve parameters + the variance, estimated from the residuals.
_K_MONO, _K_BI = 3, 4
_BI_STEPS64 = 2
_CONVERGED32 = 1e-5      # relative cost change below which a float32 LM step counts as converged
_MU_GIVE_UP = 1e3        # LM damping at which a voxel's float32 iterations stop
_RSS_FLOOR_REL = 1e-9    # as in .fit: residuals never below this fraction of the largest activity for AIC


def _check_inputs(images, hours, mask):
    if len(images) < 2:
        raise FitError(f"a voxel TIA map needs at least 2 time points, got {len(images)} image(s)")
    t = np.asarray(hours, dtype=float).ravel()
    if t.size != len(images):
        raise FitError(f"{len(images)} images but {t.size} times")
    if not np.all(np.isfinite(t)) or np.any(t <= 0):
        raise FitError(f"scan times must be finite and after the injection (> 0 h), got {list(t)}")
    if np.any(np.diff(t) <= 0):
        raise FitError(f"scan times must be strictly increasing, got {list(t)}")
    ref = images[0]
    for i, img in enumerate(images[1:], start=2):
        if (img.GetSize() != ref.GetSize()
                or not np.allclose(img.GetSpacing(), ref.GetSpacing(), rtol=1e-5, atol=1e-6)
                or not np.allclose(img.GetOrigin(), ref.GetOrigin(), atol=1e-3)
                or not np.allclose(img.GetDirection(), ref.GetDirection(), atol=1e-6)):
            raise FitError(f"time point {i} is not on the grid of time point 1 (size {img.GetSize()} vs "
                           f"{ref.GetSize()}, spacing {img.GetSpacing()} vs {ref.GetSpacing()}): resample or "
                           f"register it first")
    shape = ref.GetSize()[::-1]
    if mask is not None:
        if isinstance(mask, sitk.Image):
            mask = sitk.GetArrayViewFromImage(mask)
        mask = np.asarray(mask)
        if mask.shape != tuple(shape):
            raise FitError(f"mask shape {mask.shape} differs from the image shape {tuple(shape)} (z, y, x)")
        mask = mask > 0.5 if mask.dtype != bool else mask
    return t, mask


def _trapezoid_weights_h(t: np.ndarray, lam_phys: float) -> np.ndarray:
    """∫ A dt = w · a (h) for the trapezoid model (linear from (0, 0), physical tail)."""
    knots = TrapezoidKnots(t, np.zeros_like(t), lam_phys, "linear")
    return MODELS["trapezoid"].integral_weights(knots)


def _dot(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Column-wise dot products of two (n_times, N) arrays → (N,)."""
    return np.einsum("ij,ij->j", x, y)


class _Grids(NamedTuple):
    """Unit-norm basis curves at the scan times (float32 rows) and their rates, for one schedule."""

    mono_u: np.ndarray     # (G, n) unit rows e^(−λ t)/‖·‖
    mono_ln: np.ndarray    # (G,) ln λ (1/h)
    bi_u: np.ndarray       # (G2, n) unit rows (e^(−λw t) − e^(−λu t))/‖·‖
    bi_norm: np.ndarray    # (G2,) the norms
    bi_lw: np.ndarray      # (G2,) λw (1/h)
    bi_lu: np.ndarray      # (G2,) λu (1/h)


def _grids(t: np.ndarray, lam_phys: float) -> _Grids:
    # rates above 30/t_first leave e^(-30) of the amplitude at the first scan: the top of the grid
    # stands for "faster than the time points resolve" (rejected, like a rate at its bound in .fit)
    lam_top = min(MAX_RATE_PER_H, 30.0 / float(t[0]))
    ln_grid = np.linspace(math.log(lam_phys), math.log(lam_top), _MONO_GRID)
    basis = np.exp(-np.exp(ln_grid)[:, None] * t[None, :])
    mono_u = (basis / np.linalg.norm(basis, axis=1)[:, None]).astype(np.float32)
    nw, nr = _BI_GRID
    lw_top = min(MAX_RATE_PER_H / 4.0, 30.0 / float(t[0]))
    lw_grid = np.exp(np.linspace(math.log(lam_phys), math.log(lw_top), nw))
    ratio = np.exp(np.linspace(math.log(1.2), math.log(300.0), nr))
    lw = np.repeat(lw_grid, nr)
    lu = np.minimum(np.tile(ratio, nw) * lw, MAX_RATE_PER_H * 0.99)
    keep = lu > lw * 1.05
    lw, lu = lw[keep], lu[keep]
    basis = np.exp(-lw[:, None] * t[None, :]) - np.exp(-lu[:, None] * t[None, :])
    norm = np.linalg.norm(basis, axis=1)
    return _Grids(mono_u, ln_grid, (basis / norm[:, None]).astype(np.float32), norm, lw, lu)


def _best_on_grid(a32: np.ndarray, unit: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Index of the grid curve that explains most of each column of ``a32`` (n, N), and the scores (N, G)."""
    score = a32.T @ unit.T  # (N, G): projections on the unit curves (positive amplitude only)
    return np.argmax(score, axis=1), score


# ---------------------------------------------------------------------------- mono-exponential

def _mono_lm(tt, a, a0, lam, e, cost, mu, lo, hi, steps):
    """``steps`` Levenberg–Marquardt steps on (A0, λ) of every column (dtype of the inputs)."""
    one = a.dtype.type(1.0)
    for _ in range(steps):
        r = a0 * e - a
        j1 = -tt * (a0 * e)
        h00, h01, h11 = _dot(e, e) * (one + mu), _dot(e, j1), _dot(j1, j1) * (one + mu)
        g0, g1 = _dot(e, r), _dot(j1, r)
        with np.errstate(all="ignore"):
            det = h00 * h11 - h01 * h01
            d0 = (h11 * g0 - h01 * g1) / det
            d1 = (h00 * g1 - h01 * g0) / det
            good = np.isfinite(d0) & np.isfinite(d1)
            new_lam = np.clip(lam - np.where(good, d1, 0), lo, hi)
            new_a0 = a0 - np.where(good, d0, 0)
            e_new = np.exp(-tt * new_lam)
            r_new = new_a0 * e_new - a
            c_new = _dot(r_new, r_new)
        better = c_new < cost
        a0 = np.where(better, new_a0, a0)
        lam = np.where(better, new_lam, lam)
        e = np.where(better, e_new, e)
        cost = np.where(better, c_new, cost)
        mu = np.where(better, mu * 0.3, mu * 10)
    return a0, lam, e, cost, mu


def _mono(t, a32, a64, lam_phys, grids):
    """Mono-exponential fits of the columns of ``a64`` (n, N). Returns A0, λ, rss, ok, tia_rel_se."""
    n, nvox = a64.shape
    k, score = _best_on_grid(a32, grids.mono_u)
    gmax = grids.mono_ln.size - 1
    cols = np.arange(nvox)
    kc = np.clip(k, 1, gmax - 1)
    f0, f1, f2 = score[cols, kc - 1], score[cols, kc], score[cols, kc + 1]
    del score
    with np.errstate(all="ignore"):
        den = f0 - 2 * f1 + f2
        shift = np.where((k == kc) & (den < 0), 0.5 * (f0 - f2) / den, 0.0)
    step = grids.mono_ln[1] - grids.mono_ln[0]
    lam = np.exp(grids.mono_ln[k] + np.clip(np.nan_to_num(shift), -0.5, 0.5) * step).astype(np.float32)
    tt32 = t.astype(np.float32)[:, None]
    e = np.exp(-tt32 * lam)
    with np.errstate(all="ignore"):
        a0 = _dot(e, a32) / _dot(e, e)
    r = a0 * e - a32
    cost = _dot(r, r)
    mu = np.full(nvox, 1e-3, dtype=np.float32)
    lo, hi = np.float32(lam_phys), np.float32(MAX_RATE_PER_H)
    a0, lam, e, cost, mu = _mono_lm(tt32, a32, a0, lam, e, cost, mu, lo, hi, _MONO_STEPS[0])
    # float64 steps from the float32 solution
    tt = t[:, None]
    a0, lam, mu = a0.astype(np.float64), lam.astype(np.float64), mu.astype(np.float64)
    e = np.exp(-tt * lam)
    r = a0 * e - a64
    cost = _dot(r, r)
    a0, lam, e, cost, mu = _mono_lm(tt, a64, a0, lam, e, cost, np.minimum(mu, 1e-3), lam_phys, MAX_RATE_PER_H,
                                    _MONO_STEPS[1])
    rss = cost
    # covariance (JᵀJ)⁻¹ · RSS/(n − 2) and delta-method SE of TIA = A0/λ
    j1 = -tt * a0 * e
    h00, h01, h11 = _dot(e, e), _dot(e, j1), _dot(j1, j1)
    s2_hat = rss / (n - 2) if n > 2 else np.full(nvox, np.nan)
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        det = h00 * h11 - h01 * h01
        c00, c01, c11 = h11 / det * s2_hat, -h01 / det * s2_hat, h00 / det * s2_hat
        ga, gl = 1.0 / lam, -a0 / lam ** 2
        var = ga * ga * c00 + 2 * ga * gl * c01 + gl * gl * c11
        tia = a0 / lam
        rel_se = np.sqrt(np.clip(var, 0, None)) / tia
    ok = (np.isfinite(a0) & (a0 > 0) & (k < gmax) & (lam < 0.999 * MAX_RATE_PER_H) & np.isfinite(tia))
    return a0, lam, rss, ok, rel_se


# ------------------------------------------------------------------------------ bi-exponential

def _solve3(h, g):
    """Solve the symmetric 3×3 systems H x = g for every voxel (Cramer's rule, closed form).

    ``h`` = (h00, h01, h02, h11, h12, h22), each (N,); ``g`` = 3 (N,) arrays or None.
    Returns (x0, x1, x2) (None when ``g`` is None), the determinant and the 6 cofactors.
    """
    a, b, c, d, e, f = h
    c00 = d * f - e * e
    c01 = c * e - b * f
    c02 = b * e - c * d
    c11 = a * f - c * c
    c12 = b * c - a * e
    c22 = a * d - b * b
    det = a * c00 + b * c01 + c * c02
    x = None
    if g is not None:
        x = ((c00 * g[0] + c01 * g[1] + c02 * g[2]) / det,
             (c01 * g[0] + c11 * g[1] + c12 * g[2]) / det,
             (c02 * g[0] + c12 * g[1] + c22 * g[2]) / det)
    return x, det, (c00, c01, c02, c11, c12, c22)


def _bi_jac(tt, a0, ew, eu):
    return ew - eu, -tt * (a0 * ew), tt * (a0 * eu)


def _normal(j):
    return (_dot(j[0], j[0]), _dot(j[0], j[1]), _dot(j[0], j[2]),
            _dot(j[1], j[1]), _dot(j[1], j[2]), _dot(j[2], j[2]))


def _bi_step(tt, a, p, ew, eu, cost, mu, lam_phys):
    """One Levenberg–Marquardt step on p = (A0, λw, λu) of every column; returns the trial point."""
    one = a.dtype.type(1.0)
    j = _bi_jac(tt, p[0], ew, eu)
    r = p[0] * j[0] - a
    h00, h01, h02, h11, h12, h22 = _normal(j)
    g = (_dot(j[0], r), _dot(j[1], r), _dot(j[2], r))
    damp = one + mu
    with np.errstate(all="ignore"):
        (x0, x1, x2), _, _ = _solve3((h00 * damp, h01, h02, h11 * damp, h12, h22 * damp), g)
        good = np.isfinite(x0) & np.isfinite(x1) & np.isfinite(x2)
        q0 = np.maximum(p[0] - np.where(good, x0, 0), 0)
        q1 = np.clip(p[1] - np.where(good, x1, 0), lam_phys, MAX_RATE_PER_H * 0.999)
        q2 = np.clip(p[2] - np.where(good, x2, 0), q1 * (1 + 1e-6), MAX_RATE_PER_H)
        ew2 = np.exp(-tt * q1)
        eu2 = np.exp(-tt * q2)
        r2 = q0 * (ew2 - eu2) - a
        c2 = _dot(r2, r2)
    return (q0, q1, q2), ew2, eu2, c2


def _bi_refine32(tt, a, p, lam_phys):
    """Float32 LM iterations until the cost stops falling; converged voxels leave the working set."""
    nvox = a.shape[1]
    out_p = [x.copy() for x in p]
    out_mu = np.full(nvox, 1e-3, dtype=a.dtype)
    idx = np.arange(nvox)
    lo = a.dtype.type(lam_phys)
    ew, eu = np.exp(-tt * p[1]), np.exp(-tt * p[2])
    r = p[0] * (ew - eu) - a
    cost = _dot(r, r)
    mu = out_mu.copy()
    done = np.zeros(nvox, dtype=bool)
    for _ in range(_BI_MAX_STEPS32):
        q, ew2, eu2, c2 = _bi_step(tt, a, p, ew, eu, cost, mu, lo)
        better = c2 < cost
        # converged: the cost changes by less than float32 resolves, or the damping blew up
        done |= (np.abs(cost - c2) <= _CONVERGED32 * cost) | (~better & (mu > _MU_GIVE_UP))
        p = tuple(np.where(better, qi, pi) for qi, pi in zip(q, p))
        ew = np.where(better, ew2, ew)
        eu = np.where(better, eu2, eu)
        cost = np.where(better, c2, cost)
        mu = np.where(better, mu * a.dtype.type(0.3), np.minimum(mu * a.dtype.type(10), a.dtype.type(1e10)))
        n_done = int(np.count_nonzero(done))
        if n_done == done.size:
            break
        if n_done >= 0.25 * done.size:  # compact the working set
            fin = idx[done]
            for o, pi in zip(out_p, p):
                o[fin] = pi[done]
            out_mu[fin] = mu[done]
            keep = ~done
            idx, a, ew, eu = idx[keep], a[:, keep], ew[:, keep], eu[:, keep]
            p = tuple(pi[keep] for pi in p)
            cost, mu, done = cost[keep], mu[keep], done[keep]
    for o, pi in zip(out_p, p):
        o[idx] = pi
    out_mu[idx] = mu
    return out_p, out_mu


def _bi_start_from_mono(t, a, a0, lam, lam_phys):
    """Bi-exponential start (A0, λw, λu) from a mono-exponential fit (A0, λ): washout = λ, and the
    uptake that explains the first point's deficit below the mono-exponential, 1 − e^(−λu t₁)."""
    with np.errstate(all="ignore"):
        deficit = 1.0 - a[0] / (a0 * np.exp(-lam * t[0]))
        lu = -np.log(np.clip(deficit, 1e-6, 0.5)) / t[0]
    lw = np.clip(lam, lam_phys, MAX_RATE_PER_H / 10)
    lu = np.clip(np.nan_to_num(lu, nan=1.0), 2.0 * lw, MAX_RATE_PER_H / 2)
    amp = np.where(np.isfinite(a0) & (a0 > 0), a0, np.max(a, axis=0) * 2.0)
    return tuple(x.astype(np.float32) for x in (amp, lw, lu))


def _bi(t, a32, a64, lam_phys, grids, start=None):
    """Bi-exponential (uptake–washout) fits of the columns of ``a64`` (n, N).

    ``start`` = (A0, λw, λu) arrays; default the best point of the grid.
    Returns p (3, N) = (A0, λw, λu), rss, ok, max relative parameter SE, TIA relative SE.
    """
    n, nvox = a64.shape
    if start is None:
        k, score = _best_on_grid(a32, grids.bi_u)
        best = score[np.arange(nvox), k]
        del score
        p32 = (np.maximum(best, 0) / grids.bi_norm[k].astype(np.float32),
               grids.bi_lw[k].astype(np.float32), grids.bi_lu[k].astype(np.float32))
    else:
        p32 = tuple(np.asarray(x, dtype=np.float32) for x in start)
    tt32 = t.astype(np.float32)[:, None]
    p32, mu = _bi_refine32(tt32, a32, p32, lam_phys)
    # float64 steps from the float32 solution
    tt = t[:, None]
    p = tuple(x.astype(np.float64) for x in p32)
    mu = np.minimum(mu.astype(np.float64), 1e-3)
    ew, eu = np.exp(-tt * p[1]), np.exp(-tt * p[2])
    r = p[0] * (ew - eu) - a64
    cost = _dot(r, r)
    for _ in range(_BI_STEPS64):
        q, ew2, eu2, c2 = _bi_step(tt, a64, p, ew, eu, cost, mu, lam_phys)
        better = c2 < cost
        p = tuple(np.where(better, qi, pi) for qi, pi in zip(q, p))
        ew, eu = np.where(better, ew2, ew), np.where(better, eu2, eu)
        cost = np.where(better, c2, cost)
        mu = np.where(better, mu * 0.3, mu * 10)
    p = np.stack(p)
    rss = cost
    dof = n - 3
    with np.errstate(all="ignore"):
        _, det, (c00, c01, c02, c11, c12, c22) = _solve3(_normal(_bi_jac(tt, p[0], ew, eu)), None)
        s2_hat = rss / dof if dof > 0 else np.full(nvox, np.nan)
        scale = s2_hat / det
        var_p = np.stack([c00, c11, c22]) * scale
        se = np.sqrt(np.clip(var_p, 0, None))
        rel = np.max(np.abs(se / p), axis=0)
        rel = np.where(np.all(np.isfinite(se), axis=0) & np.isfinite(det) & (det > 0), rel, np.inf)
        tia = p[0] * (1.0 / p[1] - 1.0 / p[2])
        g0, g1, g2 = 1.0 / p[1] - 1.0 / p[2], -p[0] / p[1] ** 2, p[0] / p[2] ** 2
        var = scale * (g0 * g0 * c00 + g1 * g1 * c11 + g2 * g2 * c22
                       + 2 * (g0 * g1 * c01 + g0 * g2 * c02 + g1 * g2 * c12))
        tia_rel = np.sqrt(np.clip(var, 0, None)) / tia
    ok = (np.all(np.isfinite(p), axis=0) & (p[0] > 0) & (p[2] < 0.999 * MAX_RATE_PER_H)
          & (p[2] > p[1]) & np.isfinite(tia) & (tia > 0))
    return p, rss, ok, rel, tia_rel


# ------------------------------------------------------------------------------- selection

def _bi_wins(n, rss, ok, rel, tia_rel, rising, aic_floor, mono_ok, aic_mono, aicc_mono, max_tia_relative_se):
    """Where the bi-exponential fits of the voxels ``rising`` replace the mono-exponential (rules of .fit)."""
    ok = ok & ~(tia_rel > max_tia_relative_se)
    rss_ic = np.maximum(rss, aic_floor[rising])
    with np.errstate(divide="ignore"):
        aic_bi = n * np.log(rss_ic / n) + 2 * _K_BI
    if n - _K_BI - 1 > 0:  # AICc defined for both models: the lower wins
        aicc_bi = aic_bi + 2.0 * _K_BI * (_K_BI + 1) / (n - _K_BI - 1)
        return ok & (~mono_ok[rising] | (aicc_bi < aicc_mono[rising]))
    # n ≤ K + 1: the rule of .fit (AIC margin and parameter precision)
    # (unlike a VOI, a voxel's bi-exponential must be determined by the data even when the
    # mono-exponential was rejected: otherwise the voxel falls back to the trapezoid)
    return ok & (rel < MAX_RELATIVE_SE) & (~mono_ok[rising] | (aic_bi < aic_mono[rising] - AIC_MARGIN))


def _fit_block(t, a64, lam_phys, use, max_tia_relative_se, grids, trap_w):
    """TIA (units of ``a64`` × h) and model codes of the columns of ``a64`` (n, N) float64."""
    n, nvox = a64.shape
    tia = a64.T @ trap_w
    code = np.full(nvox, MODEL_CODES["trapezoid"], dtype=np.uint8)
    positive = np.any(a64 > 0, axis=0)
    code[~positive] = MODEL_CODES["none"]
    tia[~positive] = 0.0
    if "mono_exponential" not in use and "bi_exponential" not in use:
        return np.maximum(tia, 0.0), code
    idx = np.flatnonzero(positive)
    if idx.size == 0:
        return tia, code
    ap = a64[:, idx] if idx.size < nvox else a64
    ap32 = ap.astype(np.float32)
    aic_floor = n * (_RSS_FLOOR_REL * np.max(np.abs(ap), axis=0)) ** 2
    chosen_tia = np.full(idx.size, np.nan)
    chosen_code = np.full(idx.size, MODEL_CODES["trapezoid"], dtype=np.uint8)
    mono_ok = np.zeros(idx.size, dtype=bool)
    aic_mono = np.full(idx.size, np.inf)
    aicc_mono = np.full(idx.size, np.nan)
    compare = "mono_exponential" in use and "bi_exponential" in use
    mono_min = 2 + (2 if compare and n > 4 else 1)
    if "mono_exponential" in use and n >= mono_min:
        a0, lam, rss, ok, rel = _mono(t, ap32, ap, lam_phys, grids)
        ok &= ~(rel > max_tia_relative_se)
        mono_ok = ok
        rss_ic = np.maximum(rss, aic_floor)
        with np.errstate(divide="ignore"):
            aic_mono = n * np.log(rss_ic / n) + 2 * _K_MONO
        if n - _K_MONO - 1 > 0:
            aicc_mono = aic_mono + 2.0 * _K_MONO * (_K_MONO + 1) / (n - _K_MONO - 1)
        chosen_tia = np.where(ok, a0 / lam, chosen_tia)
        chosen_code = np.where(ok, MODEL_CODES["mono_exponential"], chosen_code).astype(np.uint8)
    elif "mono_exponential" in use and n == 2:
        # two points: the mono-exponential through them (closed form), rate ≥ λ_phys
        with np.errstate(all="ignore"):
            lam = np.maximum(np.log(ap[0] / ap[1]) / (t[1] - t[0]), lam_phys)
            a0 = ap[0] * np.exp(lam * t[0])
        ok = np.isfinite(a0) & (ap[0] > 0) & (ap[1] > 0) & (lam < MAX_RATE_PER_H)
        mono_ok = ok
        chosen_tia = np.where(ok, a0 / lam, chosen_tia)
        chosen_code = np.where(ok, MODEL_CODES["mono_exponential"], chosen_code).astype(np.uint8)
    bi_min = 3 + (2 if compare and n > 4 else 1)
    if "bi_exponential" in use and n >= bi_min:
        # Screen: A0 (e^(−λw t) − e^(−λu t)) is log-concave (a convolution of two decaying exponentials),
        # so it can beat the mono-exponential only where the data bend down at the start: the curve
        # rises after the first point, or the first point lies below the mono-exponential fit.
        if "mono_exponential" in use and n >= mono_min:
            below = ~mono_ok | (a0 * np.exp(-lam * t[0]) > ap[0])
            rising = np.flatnonzero((np.argmax(ap, axis=0) > 0) | below)
        else:
            rising = np.arange(idx.size)
        if rising.size:
            sub = rising.size < idx.size
            p, rss, ok, rel, tia_rel = _bi(t, ap32[:, rising] if sub else ap32, ap[:, rising] if sub else ap,
                                           lam_phys, grids)
            wins = _bi_wins(n, rss, ok, rel, tia_rel, rising, aic_floor, mono_ok, aic_mono, aicc_mono,
                            max_tia_relative_se)
            # a second start, from the mono-exponential fit, where the bi-exponential did not win (the
            # objective has a second basin with a fast uptake that the grid's best point can miss)
            again = np.flatnonzero(~wins)
            if again.size and "mono_exponential" in use and n >= mono_min:
                va = rising[again]
                start = _bi_start_from_mono(t, ap[:, va], a0[va], lam[va], lam_phys)
                p2, rss2, ok2, rel2, tia_rel2 = _bi(t, ap32[:, va], ap[:, va], lam_phys, grids, start)
                lower = rss2 < rss[again]
                take = again[lower]
                p[:, take], rss[take], ok[take] = p2[:, lower], rss2[lower], ok2[lower]
                rel[take], tia_rel[take] = rel2[lower], tia_rel2[lower]
                wins = _bi_wins(n, rss, ok, rel, tia_rel, rising, aic_floor, mono_ok, aic_mono, aicc_mono,
                                max_tia_relative_se)
            sel = rising[wins]
            chosen_tia[sel] = (p[0] * (1.0 / p[1] - 1.0 / p[2]))[wins]
            chosen_code[sel] = MODEL_CODES["bi_exponential"]
    fitted = np.isfinite(chosen_tia) & (chosen_code != MODEL_CODES["trapezoid"])
    tia[idx[fitted]] = chosen_tia[fitted]
    code[idx] = np.where(fitted, chosen_code, MODEL_CODES["trapezoid"])
    # Fall-back voxels: trapezoids to the last point, then the clearance seen from the maximum on
    # (log-linear fit of the points from the peak, ≥ 2 points, rate ≥ λ_phys) instead of physical decay.
    rest = idx[~fitted]
    if rest.size:
        tail_rate = _tail_rate(t, a64[:, rest], lam_phys)
        use_tail = np.isfinite(tail_rate) & (tail_rate > lam_phys)
        if np.any(use_tail):
            sel = rest[use_tail]
            last = a64[-1, sel]
            tia[sel] = tia[sel] - last / lam_phys + last / tail_rate[use_tail]
            code[sel] = MODEL_CODES["trapezoid_fitted_tail"]
    return np.maximum(tia, 0.0), code


def _prepare(t_h, nuclide, models):
    nuc = radionuclide(nuclide or "Lu-177") if not isinstance(nuclide, Radionuclide) else nuclide
    unknown = [m for m in models if m not in MODELS]
    if unknown:
        raise FitError(f"unknown time-activity model {unknown[0]!r}; choose from {sorted(_VOXEL_MODELS)}")
    use = tuple(m for m in models if m in _VOXEL_MODELS)
    if not use:
        raise FitError(f"none of the models {list(models)} can be fitted per voxel; use "
                       f"{', '.join(_VOXEL_MODELS)}")
    t = np.asarray(t_h, dtype=float).ravel()
    lam_phys = nuc.decay_constant_per_h
    return nuc, use, t, lam_phys, _grids(t, lam_phys), _trapezoid_weights_h(t, lam_phys)


def fit_voxels(t_h, activity, *, nuclide: Union[Radionuclide, str, None] = None,
               models: Sequence[str] = ("mono_exponential", "bi_exponential"),
               max_tia_relative_se: float = DEFAULT_MAX_TIA_RELATIVE_SE) -> Tuple[np.ndarray, np.ndarray]:
    """Fit the curves in the columns of ``activity`` (n_times, N) and integrate them.

    Parameters
    ----------
    t_h : array_like
        Scan times (h after injection), strictly increasing, > 0.
    activity : numpy.ndarray
        (n_times, N) activities or concentrations (Bq or Bq/mL) at the scan times.
    nuclide : Radionuclide or str, optional
        Default Lu-177 (the physical decay bounds the rates and sets the trapezoid tail).
    models : sequence of str
        Among ``mono_exponential``, ``bi_exponential``, ``trapezoid`` (others, e.g. the tri-exponential
        that 4 points cannot determine, are ignored). ``("trapezoid",)`` integrates without fitting.
    max_tia_relative_se : float
        An exponential fit whose TIA has a larger relative standard error falls back to the trapezoid.

    Returns
    -------
    tia_h : numpy.ndarray
        (N,) ∫₀^∞ A dt in units of ``activity`` × h.
    code : numpy.ndarray
        (N,) uint8 model codes (:data:`MODEL_CODES`).
    """
    _, use, t, lam_phys, grids, trap_w = _prepare(t_h, nuclide, models)
    a = np.asarray(activity, dtype=float)
    nvox = a.shape[1]
    tia = np.empty(nvox)
    code = np.empty(nvox, dtype=np.uint8)
    for start in range(0, nvox, _BLOCK):
        part = slice(start, start + _BLOCK)
        tia[part], code[part] = _fit_block(t, a[:, part], lam_phys, use, max_tia_relative_se, grids, trap_w)
    return tia, code


def _tail_rate(t: np.ndarray, a: np.ndarray, lam_phys: float) -> np.ndarray:
    """Clearance rate (1/h) after the peak: log-linear least squares on the points from each column's
    maximum on, when there are ≥ 2 of them and all are positive; NaN otherwise."""
    n = t.size
    peak = np.argmax(a, axis=0)
    w = (np.arange(n)[:, None] >= peak[None, :]) & (a > 0)
    ok = (np.sum(w, axis=0) >= 2) & np.all(a[-1:] > 0, axis=0) & (peak <= n - 2)
    with np.errstate(all="ignore"):
        y = np.where(w, np.log(np.where(a > 0, a, 1.0)), 0.0)
        cnt = np.sum(w, axis=0)
        tm = np.sum(w * t[:, None], axis=0) / cnt
        ym = np.sum(y, axis=0) / cnt
        dt = np.where(w, t[:, None] - tm, 0.0)
        slope = np.sum(dt * (y - ym), axis=0) / np.sum(dt * dt, axis=0)
    rate = np.maximum(-slope, lam_phys)
    return np.where(ok & np.isfinite(rate), rate, np.nan)


def _default_workers() -> int:
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    return max(1, min(cores, 8))


def voxel_tia_map(images: Sequence[sitk.Image], hours, *, nuclide: Union[Radionuclide, str, None] = None,
                  models: Sequence[str] = ("mono_exponential", "bi_exponential"), mask=None,
                  max_tia_relative_se: float = DEFAULT_MAX_TIA_RELATIVE_SE, noise_floor: float = DEFAULT_NOISE_FLOOR,
                  workers: Optional[int] = None, progress=None) -> Tuple[sitk.Image, sitk.Image, dict]:
    """Voxel-level TIA map from registered SPECT images.

    Parameters
    ----------
    images : sequence of SimpleITK.Image
        Activity concentration (Bq/mL at the scan time, not decay-corrected), one per time point,
        all on one grid (register and resample first).
    hours : sequence of float
        Scan times (h after injection), strictly increasing.
    nuclide : Radionuclide or str, optional
        Default Lu-177.
    models : sequence of str
        Candidate models (see :func:`fit_voxels`).
    mask : numpy.ndarray or SimpleITK.Image, optional
        (z, y, x) voxels to fit (> 0.5); the others get the trapezoid integral (no fit). Default: all.
    max_tia_relative_se : float
        Noisy-voxel threshold for the fall-back to the trapezoid (relative SE of the fitted TIA).
    noise_floor : float
        A voxel whose value is below ``noise_floor`` × (that time point's image maximum) at every time
        point is background: trapezoid integral (code ``trapezoid``), no fit. Default
        :data:`DEFAULT_NOISE_FLOOR` (1 %); 0 fits every voxel.
    workers : int, optional
        Threads sharing the voxel blocks (default: the CPU cores available, at most 8).
    progress : callable or Progress, optional

    Returns
    -------
    tia : SimpleITK.Image
        float32 TIA concentration (Bq·s/mL) on the grid of ``images[0]``.
    model_map : SimpleITK.Image
        uint8 code per voxel (:data:`MODEL_CODES`: 0 none, 1 mono, 2 bi, 3 trapezoid with physical tail,
        4 trapezoid with the tail fitted from the peak on).
    info : dict
        ``voxels`` (count per model name), ``fitted_voxels``, ``below_noise_floor``, ``seconds``,
        ``workers``, ``models`` used, ``units``.

    Raises
    ------
    FitError
        Fewer than 2 images, times not increasing or ≤ 0, images on different grids, bad mask, a noise
        floor outside [0, 1).
    """
    t0 = time.perf_counter()
    prog = as_progress(progress)
    t, mask_arr = _check_inputs(images, hours, mask)
    if not (0.0 <= float(noise_floor) < 1.0):
        raise FitError(f"noise floor must be a fraction of the image maximum in [0, 1), not {noise_floor!r}")
    nuc, use, t, lam_phys, grids, trap_w = _prepare(t, nuclide, models)
    nworkers = _default_workers() if workers is None else max(1, int(workers))
    shape = images[0].GetSize()[::-1]
    flat = np.stack([sitk.GetArrayViewFromImage(img).reshape(-1) for img in images])  # (n, V) copy
    if not np.issubdtype(flat.dtype, np.floating):
        flat = flat.astype(np.float32)
    nvox = flat.shape[1]
    fit_here = np.ones(nvox, dtype=bool) if mask_arr is None else mask_arr.reshape(-1).copy()
    n_masked = int(np.count_nonzero(fit_here))
    if noise_floor > 0:
        floor = noise_floor * np.max(flat, axis=1)  # per time point
        fit_here &= np.any(flat >= floor[:, None], axis=0)
    sel = np.flatnonzero(fit_here)
    rest = np.flatnonzero(~fit_here)
    tia = np.zeros(nvox)
    code = np.zeros(nvox, dtype=np.uint8)
    for start in range(0, rest.size, 4 * _BLOCK):  # not fitted: trapezoid with the physical tail
        part = rest[start:start + 4 * _BLOCK]
        a = flat[:, part].astype(np.float64)
        tia[part] = np.maximum(a.T @ trap_w, 0.0)
        code[part] = np.where(np.any(a > 0, axis=0), MODEL_CODES["trapezoid"], MODEL_CODES["none"])

    def work(start):
        part = sel[start:start + _BLOCK]
        tia[part], code[part] = _fit_block(t, flat[:, part].astype(np.float64), lam_phys, use,
                                           max_tia_relative_se, grids, trap_w)
        return part.size

    starts = list(range(0, sel.size, _BLOCK))
    done = 0
    prog.report(0.0, f"voxel fits 0/{sel.size}")
    if nworkers == 1 or len(starts) <= 1:
        for s in starts:
            done += work(s)
            prog.report(done / max(sel.size, 1), f"voxel fits {done}/{sel.size}")
    else:
        with ThreadPoolExecutor(max_workers=nworkers) as pool:
            futures = [pool.submit(work, s) for s in starts]
            try:
                for f in futures:
                    done += f.result()
                    prog.report(done / max(sel.size, 1), f"voxel fits {done}/{sel.size}")
            except BaseException:
                for f in futures:
                    f.cancel()
                raise
    prog.report(1.0, "voxel fits done")
    tia_img = sitk.GetImageFromArray((tia * SECONDS_PER_HOUR).astype(np.float32).reshape(shape))
    tia_img.CopyInformation(images[0])
    code_img = sitk.GetImageFromArray(code.reshape(shape))
    code_img.CopyInformation(images[0])
    counts = {name: int(np.count_nonzero(code == c)) for name, c in MODEL_CODES.items()}
    info = {"voxels": counts, "fitted_voxels": int(sel.size), "below_noise_floor": n_masked - int(sel.size),
            "seconds": time.perf_counter() - t0, "workers": nworkers,
            "models": list(use), "units": "Bq·s/mL (TIA concentration)"}
    return tia_img, code_img, info
