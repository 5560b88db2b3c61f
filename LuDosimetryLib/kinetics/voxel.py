"""Voxel-level time-integrated activity (TIA) map: every voxel's time-activity curve fitted at once.

The same models and selection rules as the VOI fits of :mod:`.fit` (unweighted least squares,
mono-exponential ``A0 e^(−λt)`` and uptake–washout bi-exponential ``A0 (e^(−λw t) − e^(−λu t))``,
every rate ≥ λ_phys, AICc ranking with the 3–4 point guard), vectorised in numpy so that a 128³ volume
with 4 time points takes seconds instead of hours of per-voxel ``scipy.optimize`` calls.

Method (per chunk of voxels, all voxels of the chunk at once)
------------------------------------------------------------
- **Variable projection.** For fixed rates the amplitude is linear: ``A0 = (g·a)/(g·g)`` with ``g`` the
  basis curve at the time points, and the residual sum is ``Σa² − (g·a)²/(g·g)``. The basis does not
  depend on the voxel, so the objective of *every* voxel on a grid of rates is one matrix product
  (``G × n`` basis by ``n × N`` activities). The grid is global (no starting point to get wrong).
- **Mono-exponential:** 160 log-spaced rates in [λ_phys, 100/h]; the best grid rate is refined by a
  parabola in ln λ through its neighbours and then by 3 Gauss–Newton steps on (A0, λ) (2×2 closed form).
- **Bi-exponential** (only where the curve rises after the first point, i.e. where an uptake phase is
  visible, and only with ≥ 4 points): a 32 × 24 grid of (λw, λu/λw), then 12 batched Levenberg–Marquardt
  steps on (A0, λw, λu) with box bounds (λ_phys ≤ λw < λu ≤ 100/h).
- **Selection:** as :func:`~.fit.fit_time_activity_curve`: with ≥ 5 points the lowest AICc; with 3–4
  points the bi-exponential (AICc undefined at n = k + 1) replaces the mono-exponential only when its
  uncorrected AIC is lower by more than ``AIC_MARGIN`` = 2 and every parameter's relative standard error
  is below ``MAX_RELATIVE_SE`` = 50 % (Kletting et al., Med. Phys. 40:102504, 2013).
- **Fall-back for noisy voxels:** when no exponential model is acceptable (amplitude ≤ 0, rate at its
  upper bound, non-finite values, a TIA relative standard error above ``max_tia_relative_se``, or a
  bi-exponential whose parameters are not determined — relative SE ≥ 50 %) the voxel is integrated by
  the trapezoid rule from (0, 0) through the points, with a tail after the last point that decays at the
  clearance rate seen from the curve's maximum on (log-linear fit of those ≥ 2 points, rate ≥ λ_phys;
  code ``trapezoid_fitted_tail``), or at the physical rate when that is not available (the trapezoid
  model of :mod:`.models`, code ``trapezoid``). The physical tail alone overestimates the TIA of a
  clearing voxel (by ~30 % for a 60 h effective half-life).
- Voxels with no positive value get TIA 0 (model code 0).

Activities are concentrations (Bq/mL) at the scan times, not decay-corrected; the map is Bq·s/mL.
"""
from __future__ import annotations

import math
import time
from typing import Dict, Optional, Sequence, Tuple, Union

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
_VOXEL_MODELS = ("mono_exponential", "bi_exponential", "trapezoid")
_CHUNK = 65536
_MONO_GRID = 24
_MONO_ITERATIONS = 5
_BI_GRID = (12, 8)
_BI_ITERATIONS = 15
_RSS_FLOOR_REL = 1e-9  # as in .fit: residuals never below this fraction of the largest activity for AIC


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


def _decay(lam, t):
    """e^(−λ t) as an (n_times, N) array for rates ``lam`` (N,) (1/h).

    The exponential is evaluated in float32 (numpy vectorises it; about 6 times faster than float64)
    and returned as float64: relative error ≈ 1e-7, far below the noise of any SPECT voxel.
    """
    arg = (-t[:, None] * lam[None, :]).astype(np.float32)
    return np.exp(arg).astype(np.float64)


def _mono(t, a, lam_phys):
    """Mono-exponential fits of the columns of ``a`` (n, N). Returns A0, λ, rss, ok, tia_rel_se."""
    n, nvox = a.shape
    # rates above 30/t_first leave e^(-30) of the amplitude at the first scan: the top of the grid
    # stands for "faster than the time points resolve" (rejected, like a rate at its bound in .fit)
    lam_top = min(MAX_RATE_PER_H, 30.0 / float(t[0]))
    ln_grid = np.linspace(math.log(lam_phys), math.log(lam_top), _MONO_GRID)
    basis = np.exp(-np.exp(ln_grid)[:, None] * t[None, :])  # (G, n)
    s2 = np.sum(basis * basis, axis=1)
    s1 = basis @ a  # (G, N)
    score = np.where(s1 > 0, s1 * s1 / s2[:, None], -np.inf)  # explained sum of squares (A0 > 0 only)
    k = np.argmax(score, axis=0)
    cols = np.arange(nvox)
    ln_lam = ln_grid[k]
    # parabola in ln λ through the neighbours
    inner = (k > 0) & (k < _MONO_GRID - 1)
    ki = k[inner]
    ci = cols[inner]
    f0, f1, f2 = score[ki - 1, ci], score[ki, ci], score[ki + 1, ci]
    den = f0 - 2 * f1 + f2
    with np.errstate(invalid="ignore", divide="ignore"):
        shift = np.where(np.isfinite(den) & (den < 0), 0.5 * (f0 - f2) / den, 0.0)
    step = ln_grid[1] - ln_grid[0]
    ln_lam[inner] = ln_lam[inner] + np.clip(np.nan_to_num(shift), -1.0, 1.0) * step
    lam = np.exp(ln_lam)
    e = _decay(lam, t)
    a0 = np.sum(a * e, axis=0) / np.sum(e * e, axis=0)
    cost = np.sum((a0 * e - a) ** 2, axis=0)
    # Gauss-Newton on (A0, λ), 2x2 closed form, bounds λ_phys ≤ λ ≤ MAX, on the unconverged voxels
    active = np.arange(nvox)
    tt = t[:, None]
    for _ in range(_MONO_ITERATIONS):
        if active.size == 0:
            break
        ea, a0a, la, aa = e[:, active], a0[active], lam[active], a[:, active]
        r = a0a * ea - aa
        j1 = -tt * a0a * ea
        h00, h01, h11 = np.einsum("nv,nv->v", ea, ea), np.einsum("nv,nv->v", ea, j1), np.einsum("nv,nv->v", j1, j1)
        g0, g1 = np.einsum("nv,nv->v", ea, r), np.einsum("nv,nv->v", j1, r)
        det = h00 * h11 - h01 * h01
        with np.errstate(invalid="ignore", divide="ignore"):
            d0 = (h11 * g0 - h01 * g1) / det
            d1 = (h00 * g1 - h01 * g0) / det
        good = np.isfinite(d0) & np.isfinite(d1)
        new_lam = np.clip(la - np.where(good, d1, 0.0), lam_phys, MAX_RATE_PER_H)
        new_a0 = a0a - np.where(good, d0, 0.0)
        e_new = _decay(new_lam, t)
        c_new = np.sum((new_a0 * e_new - aa) ** 2, 0)
        c_old = cost[active]
        better = c_new < c_old
        sel = active[better]
        lam[sel], a0[sel], e[:, sel], cost[sel] = new_lam[better], new_a0[better], e_new[:, better], c_new[better]
        active = active[better & (c_old - c_new > 1e-12 * c_old)]
    rss = cost
    # covariance (JᵀJ)⁻¹ · RSS/(n − 2) and delta-method SE of TIA = A0/λ
    j0, j1 = e, -t[:, None] * a0 * e
    h00, h01, h11 = np.sum(j0 * j0, 0), np.sum(j0 * j1, 0), np.sum(j1 * j1, 0)
    det = h00 * h11 - h01 * h01
    s2_hat = rss / max(n - 2, 1) if n > 2 else np.full(nvox, np.nan)
    with np.errstate(invalid="ignore", divide="ignore"):
        c00, c01, c11 = h11 / det * s2_hat, -h01 / det * s2_hat, h00 / det * s2_hat
        ga, gl = 1.0 / lam, -a0 / lam ** 2
        var = ga * ga * c00 + 2 * ga * gl * c01 + gl * gl * c11
        tia = a0 / lam
        rel_se = np.sqrt(np.clip(var, 0, None)) / tia
    ok = (np.isfinite(a0) & (a0 > 0) & (k < _MONO_GRID - 1) & (lam < 0.999 * MAX_RATE_PER_H)
          & np.isfinite(tia))
    return a0, lam, rss, ok, rel_se


def _solve3(h, g):
    """Solve the symmetric 3×3 systems H x = g for every voxel (Cramer's rule, closed form).

    ``h`` is a dict of the 6 distinct entries (each (N,)), ``g`` a list of 3 (N,) arrays.
    Returns (x0, x1, x2) and the determinant.
    """
    a, b, c, d, e, f = h["00"], h["01"], h["02"], h["11"], h["12"], h["22"]
    c00 = d * f - e * e
    c01 = c * e - b * f
    c02 = b * e - c * d
    c11 = a * f - c * c
    c12 = b * c - a * e
    c22 = a * d - b * b
    det = a * c00 + b * c01 + c * c02
    with np.errstate(all="ignore"):
        x0 = (c00 * g[0] + c01 * g[1] + c02 * g[2]) / det
        x1 = (c01 * g[0] + c11 * g[1] + c12 * g[2]) / det
        x2 = (c02 * g[0] + c12 * g[1] + c22 * g[2]) / det
    return (x0, x1, x2), det, (c00, c01, c02, c11, c12, c22)


def _normal_eq(j, r):
    h = {"00": np.einsum("nv,nv->v", j[0], j[0]), "01": np.einsum("nv,nv->v", j[0], j[1]),
         "02": np.einsum("nv,nv->v", j[0], j[2]), "11": np.einsum("nv,nv->v", j[1], j[1]),
         "12": np.einsum("nv,nv->v", j[1], j[2]), "22": np.einsum("nv,nv->v", j[2], j[2])}
    g = None if r is None else [np.einsum("nv,nv->v", j[i], r) for i in range(3)]
    return h, g


def _bi_eval(t, p):
    ew = _decay(p[1], t)
    eu = _decay(p[2], t)
    return p[0] * (ew - eu), ew, eu


def _bi_jac(t, p, ew, eu):
    tt = t[:, None]
    return (ew - eu, -tt * p[0] * ew, tt * p[0] * eu)


def _bi(t, a, lam_phys):
    """Bi-exponential (uptake–washout) fits of the columns of ``a`` (n, N).

    Returns p (3, N) = (A0, λw, λu), rss, ok, max relative parameter SE, TIA relative SE.
    """
    n, nvox = a.shape
    nw, nr = _BI_GRID
    lw_top = min(MAX_RATE_PER_H / 4.0, 30.0 / float(t[0]))
    lw_grid = np.exp(np.linspace(math.log(lam_phys), math.log(lw_top), nw))
    ratio = np.exp(np.linspace(math.log(1.5), math.log(300.0), nr))
    lw = np.repeat(lw_grid, nr)
    lu = np.minimum(np.tile(ratio, nw) * lw, MAX_RATE_PER_H * 0.99)
    keep = lu > lw * 1.05
    lw, lu = lw[keep], lu[keep]
    basis = np.exp(-lw[:, None] * t[None, :]) - np.exp(-lu[:, None] * t[None, :])  # (G, n)
    s2 = np.sum(basis * basis, axis=1)
    s1 = basis @ a  # (G, N)
    with np.errstate(all="ignore"):
        score = np.where(s1 > 0, s1 * s1 / s2[:, None], -np.inf)
    cols = np.arange(nvox)
    # Two starts: the best grid point, and the best one with a fast uptake (λu ≥ 5 λw), which lies in
    # the other basin of the uptake–washout objective; the lower final cost is kept.
    fast = lu >= 5.0 * lw
    starts = [np.argmax(score, axis=0), np.flatnonzero(fast)[np.argmax(score[fast], axis=0)]]
    p_starts = [np.stack([np.maximum(s1[b, cols], 0.0) / s2[b], lw[b], lu[b]]) for b in starts]  # (3, N)
    del s1, score

    def refine(p):
        f, ew, eu = _bi_eval(t, p)
        cost = np.sum((f - a) ** 2, axis=0)
        mu = np.full(nvox, 1e-3)
        active = np.arange(nvox)
        for _ in range(_BI_ITERATIONS):
            if active.size == 0:
                break
            pa, aa = p[:, active], a[:, active]
            fa, ewa, eua = f[:, active], ew[:, active], eu[:, active]
            j = _bi_jac(t, pa, ewa, eua)
            h, g = _normal_eq(j, fa - aa)
            m = mu[active]
            for key in ("00", "11", "22"):
                h[key] = h[key] * (1.0 + m)
            (x0, x1, x2), _det, _cof = _solve3(h, g)
            step = np.stack([x0, x1, x2])
            step = np.where(np.isfinite(step), step, 0.0)
            q = pa - step
            q[1] = np.clip(q[1], lam_phys, MAX_RATE_PER_H * 0.999)
            q[2] = np.clip(q[2], q[1] * (1 + 1e-6), MAX_RATE_PER_H)
            q[0] = np.maximum(q[0], 0.0)
            fq, ewq, euq = _bi_eval(t, q)
            cq = np.sum((fq - aa) ** 2, axis=0)
            c_old = cost[active]
            better = cq < c_old
            sel = active[better]
            p[:, sel] = q[:, better]
            f[:, sel], ew[:, sel], eu[:, sel] = fq[:, better], ewq[:, better], euq[:, better]
            cost[sel] = cq[better]
            mu[active] = np.where(better, m * 0.3, m * 10.0)
            # converged: the cost changed by less than 1e-14 relative, or the damping blew up
            done = (better & (c_old - cq <= 1e-14 * c_old)) | (mu[active] > 1e10)
            active = active[~done]
        return p, f, ew, eu, cost

    p, f, ew, eu, cost = refine(p_starts[0])
    p2, f2, ew2, eu2, cost2 = refine(p_starts[1])
    second = cost2 < cost
    p = np.where(second[None, :], p2, p)
    f, ew, eu = (np.where(second[None, :], x2, x) for x, x2 in ((f, f2), (ew, ew2), (eu, eu2)))
    cost = np.where(second, cost2, cost)
    rss = cost
    j = _bi_jac(t, p, ew, eu)
    h, _ = _normal_eq(j, None)
    dof = n - 3
    with np.errstate(all="ignore"):
        _, det, (c00, c01, c02, c11, c12, c22) = _solve3(h, [np.zeros(nvox)] * 3)
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


def fit_voxels(t_h, activity, *, nuclide: Union[Radionuclide, str, None] = None,
               models: Sequence[str] = ("mono_exponential", "bi_exponential"),
               max_tia_relative_se: float = 1.0) -> Tuple[np.ndarray, np.ndarray]:
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
    nuc = radionuclide(nuclide or "Lu-177") if not isinstance(nuclide, Radionuclide) else nuclide
    lam_phys = nuc.decay_constant_per_h
    t = np.asarray(t_h, dtype=float)
    a = np.asarray(activity, dtype=float)
    n, nvox = a.shape
    unknown = [m for m in models if m not in MODELS]
    if unknown:
        raise FitError(f"unknown time-activity model {unknown[0]!r}; choose from {sorted(_VOXEL_MODELS)}")
    use = [m for m in models if m in _VOXEL_MODELS]
    if not use:
        raise FitError(f"none of the models {list(models)} can be fitted per voxel; use "
                       f"{', '.join(_VOXEL_MODELS)}")
    trap_w = _trapezoid_weights_h(t, lam_phys)
    tia = a.T @ trap_w
    code = np.full(nvox, MODEL_CODES["trapezoid"], dtype=np.uint8)
    positive = np.any(a > 0, axis=0)
    code[~positive] = MODEL_CODES["none"]
    tia[~positive] = 0.0
    if "mono_exponential" not in use and "bi_exponential" not in use:
        return np.maximum(tia, 0.0), code
    idx = np.flatnonzero(positive)
    if idx.size == 0:
        return tia, code
    ap = a[:, idx]
    aic_floor = n * (_RSS_FLOOR_REL * np.max(np.abs(ap), axis=0)) ** 2
    chosen_tia = np.full(idx.size, np.nan)
    chosen_code = np.full(idx.size, MODEL_CODES["trapezoid"], dtype=np.uint8)
    mono_ok = np.zeros(idx.size, dtype=bool)
    aic_mono = np.full(idx.size, np.inf)
    aicc_mono = np.full(idx.size, np.nan)
    compare = "mono_exponential" in use and "bi_exponential" in use
    mono_min = 2 + (2 if compare and n > 4 else 1)
    if "mono_exponential" in use and n >= mono_min:
        a0, lam, rss, ok, rel = _mono(t, ap, lam_phys)
        ok &= ~(rel > max_tia_relative_se)
        mono_ok = ok
        rss_ic = np.maximum(rss, aic_floor)
        with np.errstate(divide="ignore"):
            aic_mono = n * np.log(rss_ic / n) + 4
        if n - 3 > 0:
            aicc_mono = aic_mono + 12.0 / (n - 3)
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
            p, rss, ok, rel, tia_rel = _bi(t, ap[:, rising], lam_phys)
            ok &= ~(tia_rel > max_tia_relative_se)
            rss_ic = np.maximum(rss, aic_floor[rising])
            with np.errstate(divide="ignore"):
                aic_bi = n * np.log(rss_ic / n) + 6
            if n - 4 > 0:  # AICc defined for both models: the lower wins
                aicc_bi = aic_bi + 24.0 / (n - 4)
                wins = ok & (~mono_ok[rising] | (aicc_bi < aicc_mono[rising]))
            else:  # n = k + 1: the guard of .fit (AIC margin and parameter precision)
                # (unlike a VOI, a voxel's bi-exponential must be determined by the data even when the
                # mono-exponential was rejected: otherwise the voxel falls back to the trapezoid)
                wins = ok & (rel < MAX_RELATIVE_SE) & (~mono_ok[rising] | (aic_bi < aic_mono[rising] - AIC_MARGIN))
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
        tail_rate = _tail_rate(t, a[:, rest], lam_phys)
        use_tail = np.isfinite(tail_rate) & (tail_rate > lam_phys)
        if np.any(use_tail):
            sel = rest[use_tail]
            last = a[-1, sel]
            tia[sel] = tia[sel] - last / lam_phys + last / tail_rate[use_tail]
            code[sel] = MODEL_CODES["trapezoid_fitted_tail"]
    return np.maximum(tia, 0.0), code


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


def voxel_tia_map(images: Sequence[sitk.Image], hours, *, nuclide: Union[Radionuclide, str, None] = None,
                  models: Sequence[str] = ("mono_exponential", "bi_exponential"), mask=None,
                  max_tia_relative_se: float = 1.0, progress=None) -> Tuple[sitk.Image, sitk.Image, dict]:
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
    progress : callable or Progress, optional

    Returns
    -------
    tia : SimpleITK.Image
        float32 TIA concentration (Bq·s/mL) on the grid of ``images[0]``.
    model_map : SimpleITK.Image
        uint8 code per voxel (:data:`MODEL_CODES`: 0 none, 1 mono, 2 bi, 3 trapezoid with physical tail,
        4 trapezoid with the tail fitted from the peak on).
    info : dict
        ``voxels`` (count per model name), ``seconds``, ``models`` used.

    Raises
    ------
    FitError
        Fewer than 2 images, times not increasing or ≤ 0, images on different grids, bad mask.
    """
    t0 = time.perf_counter()
    prog = as_progress(progress)
    t, mask_arr = _check_inputs(images, hours, mask)
    nuc = radionuclide(nuclide or "Lu-177") if not isinstance(nuclide, Radionuclide) else nuclide
    shape = images[0].GetSize()[::-1]
    flat = np.stack([sitk.GetArrayViewFromImage(img).reshape(-1) for img in images])  # (n, V) views copied
    nvox = flat.shape[1]
    tia = np.zeros(nvox)
    code = np.zeros(nvox, dtype=np.uint8)
    lam_phys = nuc.decay_constant_per_h
    trap_w = _trapezoid_weights_h(t, lam_phys)
    if mask_arr is not None:
        sel = np.flatnonzero(mask_arr.reshape(-1))
        outside = np.ones(nvox, dtype=bool)
        outside[sel] = False
        tia[outside] = np.maximum(flat[:, outside].astype(float).T @ trap_w, 0.0)
        code[outside] = np.where(np.any(flat[:, outside] > 0, axis=0), MODEL_CODES["trapezoid"], 0)
    else:
        sel = np.arange(nvox)
    for k, start in enumerate(range(0, sel.size, _CHUNK)):
        prog.report(start / max(sel.size, 1), f"voxel fits {start}/{sel.size}")
        part = sel[start:start + _CHUNK]
        tia_c, code_c = fit_voxels(t, flat[:, part].astype(np.float64), nuclide=nuc, models=models,
                                   max_tia_relative_se=max_tia_relative_se)
        tia[part] = tia_c
        code[part] = code_c
    prog.report(1.0, "voxel fits done")
    tia_img = sitk.GetImageFromArray((tia * SECONDS_PER_HOUR).astype(np.float32).reshape(shape))
    tia_img.CopyInformation(images[0])
    code_img = sitk.GetImageFromArray(code.reshape(shape))
    code_img.CopyInformation(images[0])
    counts = {name: int(np.count_nonzero(code == c)) for name, c in MODEL_CODES.items()}
    info = {"voxels": counts, "fitted_voxels": int(sel.size), "seconds": time.perf_counter() - t0,
            "models": [m for m in models if m in _VOXEL_MODELS],
            "units": "Bq·s/mL (TIA concentration)"}
    return tia_img, code_img, info
