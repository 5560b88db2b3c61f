"""Voxel-level time-integrated activity from registered time points, the way MIM's MRT package does it.

For each voxel with concentrations C_1..C_n (Bq/mL) at times t_1 < … < t_n (s after injection):

* [0, t_1]: linear rise from 0 (triangle, C_1 t_1 / 2);
* [t_1, t_2]: trapezoid;
* [t_2, ∞): mono-exponential C(t) = C_2' exp(−k (t − t_2)) fitted by weighted log-linear least squares to
  the last three points (weights C_i², i.e. the relative errors of the counts), with the rate clipped to
  at least the physical decay constant (no uptake after t_2); its integral is C_2'/k.

Voxels where a point is ≤ 0 fall back to trapezoids with a physical-decay tail from the last point.
All of it vectorised over the voxels.
"""
from __future__ import annotations

import numpy as np


def voxel_tia(stack_bq_per_ml: np.ndarray, hours, decay_constant_per_s: float) -> np.ndarray:
    """TIA per mL (Bq·s/mL) from a (t, z, y, x) stack of registered concentrations (Bq/mL) at ``hours`` (h)."""
    c = np.clip(np.asarray(stack_bq_per_ml, dtype=np.float64), 0.0, None)
    t = np.asarray(hours, dtype=float) * 3600.0
    if c.shape[0] != t.size or t.size < 4:
        raise ValueError("need at least 4 time points, one per image")
    lam = float(decay_constant_per_s)
    tia = 0.5 * c[0] * t[0] + 0.5 * (c[0] + c[1]) * (t[1] - t[0])
    tail_t = t[-3:] - t[-3]
    tail_c = c[-3:]
    ok = np.all(tail_c > 0, axis=0)
    logc = np.log(np.where(tail_c > 0, tail_c, 1.0))
    w = np.where(tail_c > 0, tail_c, 0.0) ** 2
    sw = w.sum(axis=0)
    sw = np.where(sw > 0, sw, 1.0)
    tm = (w * tail_t[:, None, None, None]).sum(axis=0) / sw
    lm = (w * logc).sum(axis=0) / sw
    dt = tail_t[:, None, None, None] - tm
    sxx = (w * dt * dt).sum(axis=0)
    slope = (w * dt * (logc - lm)).sum(axis=0) / np.where(sxx > 0, sxx, 1.0)
    k = np.maximum(-slope, lam)
    c0 = np.exp(lm + slope * (0.0 - tm))  # fitted value at t_{n-2} (start of the tail window)
    fitted_tail = c0 / k
    # Fallback: trapezoids over the tail points + physical decay after the last one.
    trap = sum(0.5 * (c[i] + c[i - 1]) * (t[i] - t[i - 1]) for i in range(t.size - 2, t.size)) + c[-1] / lam
    tail_start_is_t2 = t.size == 4  # the tail window starts at t_2 for 4 points
    if not tail_start_is_t2:
        # More than 4 points: integrate trapezoids up to the tail window start.
        for i in range(2, t.size - 2):
            tia += 0.5 * (c[i] + c[i - 1]) * (t[i] - t[i - 1])
    return np.where(ok, tia + fitted_tail, tia + trap).astype(np.float32)
