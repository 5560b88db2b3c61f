"""Voxel-level TIA map (kinetics.voxel): agreement with the VOI fitter, exact integrals, fall-backs, errors."""
from __future__ import annotations

import math

import numpy as np
import pytest
import SimpleITK as sitk

from LuDosimetryLib.errors import FitError
from LuDosimetryLib.kinetics import fit_time_activity_curve
from LuDosimetryLib.kinetics.models import MODELS, TrapezoidKnots
from LuDosimetryLib.kinetics.voxel import MODEL_CODES, fit_voxels, voxel_tia_map
from LuDosimetryLib.radionuclides import radionuclide

T = np.array([3.74, 27.73, 103.09, 123.98])
LAM_P = radionuclide("Lu-177").decay_constant_per_h


def _curves(n, rng, noise=0.0):
    a = np.empty((T.size, n))
    truth = np.empty(n)
    for i in range(n):
        a0 = rng.uniform(1, 100)
        lw = LAM_P + math.log(2) / rng.uniform(20, 300)
        if i % 2:
            lu = lw + rng.uniform(0.03, 0.3)
            a[:, i] = a0 * (np.exp(-lw * T) - np.exp(-lu * T))
            truth[i] = a0 * (1 / lw - 1 / lu)
        else:
            a[:, i] = a0 * np.exp(-lw * T)
            truth[i] = a0 / lw
    if noise:
        a = a * (1 + noise * rng.standard_normal(a.shape))
    return a, truth


def test_noise_free_curves_integrate_exactly():
    a, truth = _curves(60, np.random.default_rng(0))
    tia_h, code = fit_voxels(T, a)
    err = np.abs(tia_h / truth - 1)
    # a few uptake–washout curves with nearly equal rates end in a neighbouring minimum (< 1 % of curves)
    assert np.median(err) < 1e-5 and np.mean(err < 2e-3) >= 0.95, err
    assert set(np.unique(code)) <= {MODEL_CODES["mono_exponential"], MODEL_CODES["bi_exponential"]}
    # the uptake–washout curves are recognised as such
    assert np.mean(code[1::2] == MODEL_CODES["bi_exponential"]) > 0.8


def test_agrees_with_the_voi_fitter_on_noisy_curves():
    a, _ = _curves(60, np.random.default_rng(1), noise=0.05)
    tia_h, code = fit_voxels(T, a)
    # voxels are fitted unweighted (the "uniform" error model; kinetics.voxel docstring)
    refs = [fit_time_activity_curve(T, a[:, i], models=("mono_exponential", "bi_exponential"), error_model="uniform")
            for i in range(a.shape[1])]
    ref = np.array([r.tia_bq_s for r in refs]) / 3600.0
    name = {v: k for k, v in MODEL_CODES.items()}
    same = np.array([name[int(c)].split("_fitted")[0] == r.model for c, r in zip(code, refs)])
    assert same.mean() >= 0.95, [(name[int(c)], r.model) for c, r in zip(code, refs)]
    close = np.abs(tia_h / ref - 1) < 1e-3
    assert close[same].mean() >= 0.95, np.abs(tia_h / ref - 1)


def test_three_points_never_bi_and_two_points_closed_form():
    a, truth = _curves(20, np.random.default_rng(2))
    _, code3 = fit_voxels(T[:3], a[:3])
    assert not np.any(code3 == MODEL_CODES["bi_exponential"])
    mono = a[:, ::2]
    tia2, code2 = fit_voxels(T[2:], mono[2:])
    np.testing.assert_allclose(tia2, truth[::2], rtol=1e-9)
    assert np.all(code2 == MODEL_CODES["mono_exponential"])


def test_fallbacks_zero_and_noisy_voxels():
    # nothing; wild and highest at the end (physical tail); wild with a peak (tail fitted from the peak on)
    a = np.array([[0.0, 0.0, 0.0, 0.0], [30.0, 5.0, 10.0, 60.0], [30.0, 80.0, 5.0, 60.0]]).T
    tia_h, code = fit_voxels(T, a, max_tia_relative_se=1.0)
    assert code[0] == MODEL_CODES["none"] and tia_h[0] == 0.0
    assert code[1] == MODEL_CODES["trapezoid"]  # no exponential fits this with TIA SE < 100 %
    expected = MODELS["trapezoid"].integral(TrapezoidKnots(T, a[:, 1], LAM_P, "linear"))
    assert tia_h[1] == pytest.approx(expected, rel=1e-9)
    assert code[2] == MODEL_CODES["trapezoid_fitted_tail"]
    slope = np.polyfit(T[1:], np.log(a[1:, 2]), 1)[0]  # log-linear clearance from the peak on
    trap = MODELS["trapezoid"].integral(TrapezoidKnots(T, a[:, 2], LAM_P, "linear"))
    assert tia_h[2] == pytest.approx(trap - 60.0 / LAM_P + 60.0 / -slope, rel=1e-9)
    # the noise threshold decides: a strict one sends every noisy voxel to the trapezoid
    noisy, _ = _curves(10, np.random.default_rng(5), noise=0.2)
    _, strict = fit_voxels(T, noisy, max_tia_relative_se=1e-6)
    assert np.all(np.isin(strict, (MODEL_CODES["trapezoid"], MODEL_CODES["trapezoid_fitted_tail"])))
    only_trap, code_t = fit_voxels(T, _curves(4, np.random.default_rng(3))[0], models=("trapezoid",))
    assert np.all(code_t == MODEL_CODES["trapezoid"]) and np.all(only_trap > 0)


def _images(arr4, spacing=(4.0, 4.0, 4.0)):
    out = []
    for a in arr4:
        img = sitk.GetImageFromArray(a.astype(np.float32))
        img.SetSpacing(spacing)
        img.SetOrigin((-10.0, 5.0, 2.0))
        out.append(img)
    return out


def test_map_units_mask_and_grid():
    rng = np.random.default_rng(4)
    shape = (6, 7, 8)
    a, truth = _curves(int(np.prod(shape)), rng)
    imgs = _images([a[k].reshape(shape) for k in range(T.size)])
    tia, codes, info = voxel_tia_map(imgs, T, noise_floor=0.0)
    assert tia.GetSize() == imgs[0].GetSize() and tia.GetOrigin() == imgs[0].GetOrigin()
    arr = sitk.GetArrayFromImage(tia)
    err = np.abs(arr.ravel() / (truth * 3600.0) - 1)  # Bq·s/mL
    assert np.median(err) < 1e-5 and np.mean(err < 3e-3) >= 0.95
    assert info["voxels"]["mono_exponential"] + info["voxels"]["bi_exponential"] == arr.size
    mask = np.zeros(shape, dtype=bool)
    mask[2:4] = True
    tia_m, codes_m, info_m = voxel_tia_map(imgs, T, mask=mask, noise_floor=0.0)
    cm = sitk.GetArrayFromImage(codes_m)
    assert np.all(cm[~mask] == MODEL_CODES["trapezoid"]) and info_m["fitted_voxels"] == int(mask.sum())
    np.testing.assert_allclose(sitk.GetArrayFromImage(tia_m)[mask], arr[mask], rtol=1e-6)


def test_bad_input():
    imgs = _images([np.ones((3, 3, 3)) * v for v in (4, 3, 2, 1)])
    with pytest.raises(FitError, match="4 images but 3 times"):
        voxel_tia_map(imgs, T[:3])
    with pytest.raises(FitError, match="strictly increasing"):
        voxel_tia_map(imgs, T[::-1])
    with pytest.raises(FitError, match="at least 2 time points"):
        voxel_tia_map(imgs[:1], T[:1])
    other = _images([np.ones((3, 3, 3))], spacing=(2.0, 2.0, 2.0))[0]
    with pytest.raises(FitError, match="time point 3 is not on the grid"):
        voxel_tia_map(imgs[:2] + [other] + imgs[3:], T)
    with pytest.raises(FitError, match="mask shape"):
        voxel_tia_map(imgs, T, mask=np.ones((2, 2, 2)))
    with pytest.raises(FitError, match="unknown time-activity model"):
        voxel_tia_map(imgs, T, models=("quadratic",))


def test_noise_floor_background_is_not_fitted_and_threads_agree():
    rng = np.random.default_rng(8)
    shape = (4, 5, 6)
    a, _ = _curves(int(np.prod(shape)), rng, noise=0.05)
    a[:, :30] *= 0.004  # background: below 1 % of every time point's maximum
    imgs = _images([a[k].reshape(shape) for k in range(T.size)])
    tia, codes, info = voxel_tia_map(imgs, T, workers=1)
    flat_codes = sitk.GetArrayFromImage(codes).ravel()
    low = np.all(a < 0.01 * a.max(axis=1, keepdims=True), axis=0)
    assert low.sum() >= 30 and info["below_noise_floor"] == int(low.sum())
    assert info["fitted_voxels"] == a.shape[1] - int(low.sum())
    assert np.all(flat_codes[low] == MODEL_CODES["trapezoid"])
    trap = np.array([MODELS["trapezoid"].integral(TrapezoidKnots(T, a[:, j], LAM_P, "linear")) for j in np.flatnonzero(low)])
    np.testing.assert_allclose(sitk.GetArrayFromImage(tia).ravel()[low], trap * 3600.0, rtol=1e-5)
    # fitted voxels are the same as fit_voxels; several threads give the same map as one
    ref_tia, ref_code = fit_voxels(T, a[:, ~low].astype(np.float32).astype(float))
    np.testing.assert_allclose(sitk.GetArrayFromImage(tia).ravel()[~low], ref_tia * 3600.0, rtol=1e-6)
    assert np.array_equal(flat_codes[~low], ref_code)
    import LuDosimetryLib.kinetics.voxel as voxel
    old = voxel._BLOCK
    voxel._BLOCK = 16  # several blocks shared by the threads
    try:
        tia1, codes1, _ = voxel_tia_map(imgs, T, workers=1)
        tia2, codes2, info2 = voxel_tia_map(imgs, T, workers=3)
    finally:
        voxel._BLOCK = old
    assert info2["workers"] == 3
    np.testing.assert_array_equal(sitk.GetArrayFromImage(tia2), sitk.GetArrayFromImage(tia1))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(codes2), sitk.GetArrayFromImage(codes1))
    np.testing.assert_allclose(sitk.GetArrayFromImage(tia1), sitk.GetArrayFromImage(tia), rtol=1e-4)
    _, _, every = voxel_tia_map(imgs, T, noise_floor=0.0)
    assert every["below_noise_floor"] == 0 and every["fitted_voxels"] == a.shape[1]
    with pytest.raises(FitError, match="noise floor"):
        voxel_tia_map(imgs, T, noise_floor=1.5)
