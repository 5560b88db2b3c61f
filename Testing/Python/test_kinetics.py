"""Time-activity curve models, fits, AICc selection and time-integrated activity."""
from __future__ import annotations

import math
import time
import warnings

import numpy as np
import pytest

from LuDosimetryLib.errors import FitError
from LuDosimetryLib.kinetics import MODELS, TacFit, fit_time_activity_curve, tiac_h
from LuDosimetryLib.kinetics.models import TrapezoidKnots
from LuDosimetryLib.radionuclides import radionuclide

LN2 = math.log(2.0)
LAM_PHYS = radionuclide("Lu-177").decay_constant_per_h
T_A = np.array([4.0, 24.0, 96.0, 120.0])
T_B = np.array([4.0, 24.0, 96.0, 192.0])
T_DENSE = np.array([1.0, 4.0, 24.0, 48.0, 96.0, 168.0])

# Typical Lu-177 DOTATATE kinetics (activity in the VOI, not decay-corrected).
KIDNEY = (20e6, LN2 / 50.0, LN2 / 2.0)        # A0 (Bq), λ washout, λ uptake (1/h)
LIVER = (60e6, LN2 / 80.0)                      # A0 (Bq), λ (1/h)
TUMOUR = (8e6, LN2 / 110.0)


def mono(t, a0, lam):
    return a0 * np.exp(-lam * np.asarray(t))


def bi(t, a0, lw, lu):
    t = np.asarray(t)
    return a0 * (np.exp(-lw * t) - np.exp(-lu * t))


def tri(t, a1, l1, a2, l2, l3):
    t = np.asarray(t)
    return a1 * np.exp(-l1 * t) + a2 * np.exp(-l2 * t) - (a1 + a2) * np.exp(-l3 * t)


def assert_params(fit: TacFit, expected: dict, rel=1e-3):
    for name, value in expected.items():
        assert fit.params[name] == pytest.approx(value, rel=rel), name


# --- models: closed forms --------------------------------------------------------------------

@pytest.mark.parametrize("name,params", [
    ("mono_exponential", LIVER),
    ("bi_exponential", KIDNEY),
    ("tri_exponential", (5e6, LN2 / 120, 3e6, LN2 / 10, LN2 / 1.5)),
])
def test_model_integral_matches_quadrature_and_gradient(name, params):
    from scipy.integrate import quad

    model = MODELS[name]
    p = np.array(params)
    for t0, t1 in [(0.0, 24.0), (4.0, 192.0), (10.0, 5000.0)]:
        numeric, _ = quad(lambda t: float(model.evaluate(t, p)), t0, t1, limit=200, epsabs=0, epsrel=1e-11)
        assert model.integral(p, t0, t1) == pytest.approx(numeric, rel=1e-9)
    # gradient of the 0–∞ integral against central differences
    grad = model.integral_gradient(p)
    for i in range(p.size):
        h = 1e-6 * p[i]
        up, dn = p.copy(), p.copy()
        up[i] += h
        dn[i] -= h
        fd = (model.integral(up) - model.integral(dn)) / (2 * h)
        assert grad[i] == pytest.approx(fd, rel=1e-6)
    # Jacobian of the curve against central differences
    t = np.array([1.0, 10.0, 100.0])
    jac = model.jacobian(t, p)
    for i in range(p.size):
        h = 1e-6 * p[i]
        up, dn = p.copy(), p.copy()
        up[i] += h
        dn[i] -= h
        np.testing.assert_allclose(jac[:, i], (model.evaluate(t, up) - model.evaluate(t, dn)) / (2 * h),
                                   rtol=1e-6, atol=1e-9 * np.max(np.abs(jac)))


# --- noise-free recovery -----------------------------------------------------------------------

@pytest.mark.parametrize("times", [T_A, T_B], ids=["4-24-96-120h", "4-24-96-192h"])
@pytest.mark.parametrize("truth", [LIVER, TUMOUR], ids=["liver", "tumour"])
def test_mono_exponential_recovered(times, truth):
    a0, lam = truth
    fit = fit_time_activity_curve(times, mono(times, a0, lam))
    assert fit.model == "mono_exponential"
    assert_params(fit, {"A0_bq": a0, "lambda_per_h": lam})
    assert fit.tia_bq_s == pytest.approx(a0 / lam * 3600.0, rel=1e-6)
    assert fit.effective_half_life_h == pytest.approx(LN2 / lam, rel=1e-3)
    assert fit.n_points == 4
    assert fit.warnings == []


@pytest.mark.parametrize("times", [T_A, T_B], ids=["4-24-96-120h", "4-24-96-192h"])
def test_bi_exponential_recovered_with_four_points(times):
    a0, lw, lu = KIDNEY
    fit = fit_time_activity_curve(times, bi(times, a0, lw, lu), models=("bi_exponential",))
    assert fit.model == "bi_exponential"
    assert_params(fit, {"A0_bq": a0, "lambda_washout_per_h": lw, "lambda_uptake_per_h": lu})
    assert fit.tia_bq_s == pytest.approx(a0 * (1.0 / lw - 1.0 / lu) * 3600.0, rel=1e-6)
    assert fit.effective_half_life_h == pytest.approx(50.0, rel=1e-3)
    assert math.isnan(fit.aicc)  # n = k + 1: AICc undefined, nothing was compared


def test_bi_exponential_selected_with_six_points():
    a0, lw, lu = KIDNEY
    fit = fit_time_activity_curve(T_DENSE, bi(T_DENSE, a0, lw, lu))
    assert fit.model == "bi_exponential"
    assert_params(fit, {"A0_bq": a0, "lambda_washout_per_h": lw, "lambda_uptake_per_h": lu})
    assert fit.tia_bq_s == pytest.approx(a0 * (1.0 / lw - 1.0 / lu) * 3600.0, rel=1e-6)
    by_model = {c.model: c for c in fit.candidates}
    assert by_model["mono_exponential"].accepted and by_model["bi_exponential"].accepted
    assert by_model["bi_exponential"].aicc < by_model["mono_exponential"].aicc
    assert not by_model["tri_exponential"].accepted and "too few" in by_model["tri_exponential"].reason


def test_tri_exponential_recovered():
    truth = (5e6, LN2 / 120.0, 3e6, LN2 / 10.0, LN2 / 1.5)
    t = np.array([1.0, 4.0, 8.0, 24.0, 48.0, 96.0, 144.0, 192.0])
    fit = fit_time_activity_curve(t, tri(t, *truth))
    assert fit.model == "tri_exponential"
    assert_params(fit, dict(zip(MODELS["tri_exponential"].param_names, truth)))
    a1, l1, a2, l2, l3 = truth
    assert fit.tia_bq_s == pytest.approx((a1 / l1 + a2 / l2 - (a1 + a2) / l3) * 3600.0, rel=1e-6)
    assert fit.effective_half_life_h == pytest.approx(120.0, rel=1e-3)


def test_mono_truth_with_many_points_stays_mono():
    fit = fit_time_activity_curve(T_DENSE, mono(T_DENSE, *LIVER))
    assert fit.model == "mono_exponential"
    assert_params(fit, {"A0_bq": LIVER[0], "lambda_per_h": LIVER[1]})


def test_four_point_kidney_selection_is_sensible():
    # With 4 points AICc is undefined for the bi-exponential (n = k + 1); the 3–4-point guard admits it
    # when it is determined and its AIC beats the mono-exponential's by more than 2.
    a0, lw, lu = KIDNEY
    fit = fit_time_activity_curve(T_B, bi(T_B, a0, lw, lu))
    assert fit.model == "bi_exponential"
    cands = {c.model: c for c in fit.candidates}
    assert math.isnan(cands["bi_exponential"].aicc) and cands["mono_exponential"].accepted
    true_tia = a0 * (1.0 / lw - 1.0 / lu) * 3600.0
    assert fit.tia_bq_s == pytest.approx(true_tia, rel=1e-3)
    assert fit.effective_half_life_h == pytest.approx(math.log(2) / lw, rel=1e-3)
    # a clean mono-exponential is not promoted
    assert fit_time_activity_curve(T_B, mono(T_B, *LIVER)).model == "mono_exponential"


def test_aicc_is_burnham_anderson_formula():
    rng = np.random.default_rng(1)
    y = bi(T_DENSE, *KIDNEY) * (1 + 0.05 * rng.standard_normal(T_DENSE.size))
    n = T_DENSE.size
    # default proportional error model: relative weights 1/y², σ² estimated, so K = k + 1
    for error_model, sigma in (("proportional", y), ("uniform", np.ones_like(y))):
        fit = fit_time_activity_curve(T_DENSE, y, error_model=error_model)
        assert fit.error_model == error_model
        for c in fit.candidates:
            if c.accepted:
                big_k = c.n_params + 1
                expected = n * math.log(c.rss / n) + 2 * big_k + 2 * big_k * (big_k + 1) / (n - big_k - 1)
                assert c.k_ic == big_k
                assert c.aicc == pytest.approx(expected, rel=1e-12)
                model = MODELS[c.model]
                p = np.array([c.params[name] for name in model.param_names])
                assert c.rss == pytest.approx(np.sum(((model.evaluate(T_DENSE, p) - y) / sigma) ** 2), rel=1e-9)
        assert fit.aicc == min(c.aicc for c in fit.candidates if c.accepted and np.isfinite(c.aicc))


# --- trapezoid -----------------------------------------------------------------------------------

def test_trapezoid_hand_computed():
    t = [4.0, 24.0, 96.0, 120.0]
    a = [10e6, 20e6, 8e6, 6e6]
    sigma = [1e6, 2e6, 1e6, 0.5e6]
    # (0,0)→4 h: 0.5·4·10 = 20; 4→24 h: 20·15 = 300; 24→96 h: 72·14 = 1008; 96→120 h: 24·7 = 168 (MBq·h);
    # tail 6 MBq/λ_phys.
    expected_bq_h = (20 + 300 + 1008 + 168) * 1e6 + 6e6 / LAM_PHYS
    fit = fit_time_activity_curve(t, a, models=("trapezoid",), sigma_bq=sigma)
    assert fit.model == "trapezoid"
    assert fit.tia_bq_s == pytest.approx(expected_bq_h * 3600.0, rel=1e-12)
    assert fit.effective_half_life_h == pytest.approx(radionuclide("Lu-177").half_life_h)
    assert fit.warnings == []
    # ∂TIA/∂A_i (h): 2 + 10, 10 + 36, 36 + 12, 12 + 1/λ
    w = np.array([12.0, 46.0, 48.0, 12.0 + 1.0 / LAM_PHYS]) * 3600.0
    assert fit.tia_se_bq_s == pytest.approx(math.sqrt(np.sum((w * np.array(sigma)) ** 2)), rel=1e-12)
    # constant back-extrapolation: the first segment becomes 4·10 = 40 MBq·h
    const = fit_time_activity_curve(t, a, models=("trapezoid",), trapezoid_start="constant")
    assert const.tia_bq_s == pytest.approx((expected_bq_h + 20e6) * 3600.0, rel=1e-12)
    assert math.isnan(const.tia_se_bq_s)
    # the curve goes through the points and decays physically afterwards
    np.testing.assert_allclose(fit.evaluate(t), a)
    assert fit.evaluate([2.0, 130.0]) == pytest.approx([5e6, 6e6 * math.exp(-LAM_PHYS * 10.0)])
    assert const.evaluate([2.0])[0] == pytest.approx(10e6)


def test_trapezoid_partial_integral():
    model = MODELS["trapezoid"]
    knots = TrapezoidKnots([4.0, 24.0], [10.0, 20.0], 0.1)
    # 2→14 h: 0→4: line (0,0)-(4,10): from 2 to 4 = 2·(5+10)/2 = 15; 4→14: 10·(10+15)/2 = 125
    assert model.integral(knots, 2.0, 14.0) == pytest.approx(140.0)
    # 30 h→∞ of the tail 20·e^(−0.1(t−24))
    assert model.integral(knots, 30.0) == pytest.approx(20.0 * math.exp(-0.6) / 0.1)


def test_three_points_aicc_guard_uses_the_mono_exponential():
    t = T_A[:3]
    a = mono(t, *LIVER)
    fit = fit_time_activity_curve(t, a, label="VOI 'liver'")
    assert fit.model == "mono_exponential"
    cands = {c.model: c for c in fit.candidates}
    assert not cands["bi_exponential"].accepted and "at least 4 points" in cands["bi_exponential"].reason
    assert fit.tia_bq_s == pytest.approx(LIVER[0] / LIVER[1] * 3600.0, rel=1e-6)
    # two points: no exponential with a residual degree of freedom → trapezoid with a warning
    two = fit_time_activity_curve(T_A[:2], mono(T_A[:2], *LIVER), label="VOI 'liver'")
    assert two.model == "trapezoid"
    assert any("no exponential model is acceptable" in w and "VOI 'liver'" in w for w in two.warnings)
    # asked alone, a mono-exponential is fitted with 3 points (one residual degree of freedom)
    alone = fit_time_activity_curve(t, a, models=("mono_exponential",))
    assert alone.model == "mono_exponential"
    assert alone.tia_bq_s == pytest.approx(LIVER[0] / LIVER[1] * 3600.0, rel=1e-6)


def test_no_clearance_is_bounded_by_physical_decay():
    # Activity that decays slower than Lu-177 itself is impossible without renewed uptake.
    lam = 0.5 * LAM_PHYS
    y = mono(T_B, 1e6, lam) * np.array([1.0, 1.01, 0.99, 1.0])
    bounded = fit_time_activity_curve(T_B, y, label="VOI 'spleen'")
    assert bounded.model == "mono_exponential"
    assert bounded.params["lambda_per_h"] == pytest.approx(LAM_PHYS, rel=1e-6)
    assert bounded.effective_half_life_h == pytest.approx(radionuclide("Lu-177").half_life_h, rel=1e-6)
    assert any(w.startswith("VOI 'spleen': ") and "physical decay constant" in w for w in bounded.warnings)
    free = fit_time_activity_curve(T_B, mono(T_B, 1e6, lam), physical_bound=False)
    assert free.params["lambda_per_h"] == pytest.approx(lam, rel=1e-3)


def test_uptake_faster_than_first_point_is_rejected():
    # Instant uptake: the bi-exponential uptake rate is not determined by points from 4 h on.
    fit = fit_time_activity_curve(T_DENSE[1:], mono(T_DENSE[1:], *LIVER))
    bi_c = {c.model: c for c in fit.candidates}["bi_exponential"]
    assert not bi_c.accepted and bi_c.reason
    assert fit.model == "mono_exponential"


def test_tiac():
    fit = fit_time_activity_curve(T_B, mono(T_B, *LIVER))
    injected = 7.4e9
    assert tiac_h(fit.tia_bq_s, injected) == pytest.approx(LIVER[0] / LIVER[1] / injected, rel=1e-6)
    with pytest.raises(FitError, match="injected activity"):
        tiac_h(1.0, 0.0)


def test_evaluate_and_inputs_untouched():
    t = T_DENSE.copy()
    y = bi(t, *KIDNEY)
    y_before = y.copy()
    fit = fit_time_activity_curve(t, y, sigma_bq=0.05 * y)
    np.testing.assert_array_equal(y, y_before)
    np.testing.assert_array_equal(t, T_DENSE)
    grid = np.linspace(0, 300, 7)
    np.testing.assert_allclose(fit.evaluate(grid), bi(grid, *KIDNEY), rtol=1e-6, atol=1e-3)
    assert fit.integral_bq_h() * 3600.0 == pytest.approx(fit.tia_bq_s)


# --- noise: standard errors cover the truth ------------------------------------------------------

def _z_scores(times, truth_fn, truth_tia, n_trials, seed, sigma_known, **kw):
    """(TIA − truth) / reported SE over ``n_trials`` curves with 5 % Gaussian noise."""
    rng = np.random.default_rng(seed)
    clean = truth_fn(times)
    z, models = [], []
    for _ in range(n_trials):
        y = clean * (1.0 + 0.05 * rng.standard_normal(times.size))
        fit = fit_time_activity_curve(times, y, sigma_bq=0.05 * clean if sigma_known else None, **kw)
        models.append(fit.model)
        assert np.isfinite(fit.tia_se_bq_s) and fit.tia_se_bq_s > 0
        z.append((fit.tia_bq_s - truth_tia) / fit.tia_se_bq_s)
    return np.array(z), models


def test_coverage_mono_four_points_known_sigma():
    a0, lam = LIVER
    z, models = _z_scores(T_B, lambda t: mono(t, a0, lam), a0 / lam * 3600.0, 200, 20240601, True)
    # the 4-point guard sometimes promotes noise to a bi-exponential; the TIA stays covered either way
    assert models.count("mono_exponential") >= 150
    assert np.mean(np.abs(z) <= 3.0) >= 0.90
    # and the SE is not inflated: about 68 % within one SE
    assert 0.55 <= np.mean(np.abs(z) <= 1.0) <= 0.80


def test_coverage_mono_six_points_sigma_from_residuals():
    a0, lam = TUMOUR
    z, _ = _z_scores(T_DENSE, lambda t: mono(t, a0, lam), a0 / lam * 3600.0, 200, 7, False,
                     models=("mono_exponential",))
    assert np.mean(np.abs(z) <= 3.0) >= 0.90


def test_coverage_bi_with_model_selection():
    a0, lw, lu = KIDNEY
    z, models = _z_scores(T_DENSE, lambda t: bi(t, a0, lw, lu), a0 * (1 / lw - 1 / lu) * 3600.0,
                          200, 11, True)
    assert models.count("bi_exponential") >= 180
    assert np.mean(np.abs(z) <= 3.0) >= 0.90
    assert 0.55 <= np.mean(np.abs(z) <= 1.0) <= 0.80


def test_wild_data_gives_a_finite_answer_without_numpy_warnings():
    rng = np.random.default_rng(3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for _ in range(30):
            n = int(rng.integers(2, 9))
            t = np.sort(rng.choice(np.arange(0, 300), n, replace=False)).astype(float)
            a = rng.lognormal(10, 2, n) * (rng.random(n) > 0.15)
            a[int(rng.integers(n))] += 1.0  # never zero everywhere
            fit = fit_time_activity_curve(t, a)
            assert np.isfinite(fit.tia_bq_s) and fit.tia_bq_s > 0
            assert np.isfinite(fit.effective_half_life_h) and fit.effective_half_life_h > 0


# --- speed ---------------------------------------------------------------------------------------

def test_single_fit_is_fast():
    y = bi(T_B, *KIDNEY)
    fit_time_activity_curve(T_B, y)  # warm-up (imports, decay data)
    rng = np.random.default_rng(0)
    for times in (T_B, T_DENSE):  # 4 points (mono only), 6 points (mono and bi compared)
        durations = []  # CPU time, so that other processes on the machine do not count
        for _ in range(5):
            y = bi(times, *KIDNEY) * (1.0 + 0.05 * rng.standard_normal(times.size))
            t0 = time.process_time()
            fit_time_activity_curve(times, y)
            durations.append(time.process_time() - t0)
        assert sorted(durations)[2] < 0.05


# --- bad input -----------------------------------------------------------------------------------

@pytest.mark.parametrize("t,a,match", [
    ([4.0], [1.0], "at least 2 time points, got 1"),
    ([4.0, 24.0], [1.0, float("nan")], "activity at t = 24 h is not finite"),
    ([4.0, float("inf")], [1.0, 2.0], "time point 2 is not finite"),
    ([-1.0, 24.0], [1.0, 2.0], "before the injection"),
    ([24.0, 4.0, 96.0], [1.0, 2.0, 3.0], "not strictly increasing"),
    ([4.0, 4.0, 96.0], [1.0, 2.0, 3.0], "not strictly increasing"),
    ([4.0, 24.0, 96.0], [0.0, -1.0, -2.0], "zero or negative at every time point"),
    ([4.0, 24.0, 96.0], [1.0, 2.0], "3 time points but 2 activity values"),
])
def test_bad_input(t, a, match):
    with pytest.raises(FitError, match=match) as info:
        fit_time_activity_curve(t, a, label="VOI 'kidney_left'")
    assert str(info.value).startswith("VOI 'kidney_left': ")


def test_bad_options():
    with pytest.raises(FitError, match="sigma"):
        fit_time_activity_curve(T_B, mono(T_B, *LIVER), sigma_bq=[1, 1, 0, 1])
    with pytest.raises(FitError, match="unknown time-activity model 'gamma_variate'"):
        fit_time_activity_curve(T_B, mono(T_B, *LIVER), models=("gamma_variate",))
    with pytest.raises(FitError, match="trapezoid"):
        fit_time_activity_curve(T_B, mono(T_B, *LIVER), models=("mono_exponential", "trapezoid"))
    with pytest.raises(FitError, match="'linear' or 'constant'"):
        fit_time_activity_curve(T_B, mono(T_B, *LIVER), trapezoid_start="zero")
