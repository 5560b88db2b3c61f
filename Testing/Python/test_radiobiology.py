"""BED / EQD2 (#13 radiobiology): closed form against the textbook mono-exponential formula and against
an independent numerical integration for bi- and tri-exponential curves."""
import math

import numpy as np
import pytest

from LuDosimetryLib.kinetics.fit import fit_time_activity_curve
from LuDosimetryLib.radiobiology import (DEFAULT_TISSUES, RadiobiologyError, TissueRadiobiology, bed_for_fit,
                                         bed_from_exponentials_gy, bed_numerical_gy, eqd2_gy)

LAMBDA_LU177_PER_H = math.log(2) / (6.647 * 24)  # T½ 6.647 d (DDEP)
KIDNEY = DEFAULT_TISSUES["kidney"]


def _textbook_mono_bed(dose_gy, lam, tissue):
    """BED = D (1 + D λ / ((μ + λ) α/β)) (Dale 1985) — written out independently of the module."""
    mu = math.log(2) / tissue.repair_half_time_h
    return dose_gy * (1 + dose_gy * lam / ((mu + lam) * tissue.alpha_beta_gy))


@pytest.mark.parametrize("dose_gy,t_eff_h", [(4.0, 50.0), (20.0, 80.0), (0.5, 10.0)])
def test_mono_exponential_matches_the_closed_form(dose_gy, t_eff_h):
    lam = math.log(2) / t_eff_h
    bed = bed_from_exponentials_gy([dose_gy * lam], [lam], KIDNEY)
    assert bed == pytest.approx(_textbook_mono_bed(dose_gy, lam, KIDNEY), rel=1e-12)
    # kidney, 4 Gy at T_eff 50 h: the quadratic term is a few per cent
    assert bed > dose_gy


def test_numerical_integration_agrees_with_closed_form_for_bi_and_tri_exponentials():
    tissue = TissueRadiobiology(2.6, 2.8, "test")
    # uptake-washout: D(t) ∝ e^{-λw t} − e^{-λu t}, scaled to 10 Gy
    lw, lu = math.log(2) / 60.0, math.log(2) / 2.0
    scale = 10.0 / (1 / lw - 1 / lu)
    closed = bed_from_exponentials_gy([scale, -scale], [lw, lu], tissue)

    def rate(t):
        return scale * (np.exp(-lw * t) - np.exp(-lu * t))

    numeric = bed_numerical_gy(rate, 400.0, tissue, step_h=0.01, tail_rate_per_h=lw)
    assert numeric == pytest.approx(closed, rel=2e-4)
    assert closed > 10.0
    # tri-exponential with a fast and a slow washout
    a1, a2, l1, l2, l3 = 3.0, 5.0, math.log(2) / 90, math.log(2) / 8, math.log(2) / 1.0
    closed3 = bed_from_exponentials_gy([a1, a2, -(a1 + a2)], [l1, l2, l3], tissue)
    numeric3 = bed_numerical_gy(lambda t: a1 * np.exp(-l1 * t) + a2 * np.exp(-l2 * t) - (a1 + a2) * np.exp(-l3 * t),
                                500.0, tissue, step_h=0.01, tail_rate_per_h=l1)
    assert numeric3 == pytest.approx(closed3, rel=2e-4)


def test_fast_repair_or_tiny_dose_leaves_bed_equal_to_dose():
    lam = math.log(2) / 50
    fast = TissueRadiobiology(2.6, 1e-6, "test")
    assert bed_from_exponentials_gy([5 * lam], [lam], fast) == pytest.approx(5.0, rel=1e-6)
    assert bed_from_exponentials_gy([1e-6 * lam], [lam], KIDNEY) == pytest.approx(1e-6, rel=1e-9)


def test_eqd2():
    assert eqd2_gy(12.0, 2.0) == pytest.approx(6.0)
    assert eqd2_gy(12.0, 10.0) == pytest.approx(10.0)


def test_bed_for_fitted_tacs_uses_the_curve_shape():
    t = np.array([4.0, 24.0, 96.0, 168.0])
    lw, lu = math.log(2) / 55.0 + 0.0, math.log(2) / 1.5
    a = 5e7 * (np.exp(-lw * t) - np.exp(-lu * t))
    fit = fit_time_activity_curve(t, a, models=("bi_exponential",))
    res = bed_for_fit(6.0, fit, "kidney")
    lw_fit, lu_fit = fit.params["lambda_washout_per_h"], fit.params["lambda_uptake_per_h"]
    scale = 6.0 / (1 / lw_fit - 1 / lu_fit)
    expected = bed_numerical_gy(lambda x: scale * (np.exp(-lw_fit * x) - np.exp(-lu_fit * x)), 600.0, KIDNEY,
                                step_h=0.01, tail_rate_per_h=lw_fit)
    assert res.bed_gy == pytest.approx(expected, rel=2e-4)
    assert res.method.startswith("closed form")
    assert res.eqd2_gy == pytest.approx(res.bed_gy / (1 + 2 / 2.6))
    # the trapezoid curve goes the numerical way; its physical-decay tail spreads the same dose over a longer
    # time, so its BED is a little lower (6.44 vs 6.66 Gy here)
    trap = fit_time_activity_curve(t, a, models=("trapezoid",))
    res_trap = bed_for_fit(6.0, trap, "kidney")
    assert res_trap.method == "numerical"
    assert 6.0 < res_trap.bed_gy < res.bed_gy
    assert res_trap.bed_gy == pytest.approx(res.bed_gy, rel=0.05)
    assert res.to_json()["radiobiology_source"].startswith("Bodei")


@pytest.mark.parametrize("tissue", [TissueRadiobiology(0.0, 2.8, "x"), TissueRadiobiology(2.6, -1.0, "x"),
                                    TissueRadiobiology(float("nan"), 2.8, "x")])
def test_bad_parameters_are_refused(tissue):
    with pytest.raises(RadiobiologyError):
        bed_from_exponentials_gy([1.0], [0.1], tissue)


def test_unknown_tissue_is_refused_naming_the_known_ones():
    t = np.array([4.0, 24.0, 96.0, 168.0])
    fit = fit_time_activity_curve(t, 1e7 * np.exp(-0.01 * t), models=("mono_exponential",))
    with pytest.raises(RadiobiologyError, match="kidney"):
        bed_for_fit(2.0, fit, "spleen")


def test_a_run_reports_bed_for_kidneys_and_lesions_and_says_why_not_elsewhere(synthetic_study):
    from LuDosimetryLib.errors import OptionError
    from LuDosimetryLib.options import RunOptions, validate
    from LuDosimetryLib.pipeline import run_study

    res = run_study(synthetic_study, RunOptions(dose_method="ldm", radiobiology=("liver=2.5:1.5",)))
    data = res.to_json()["vois"]
    kidney = data["Kidney_L"]
    assert kidney["tissue"] == "kidney" and kidney["bed_gy"] > kidney["mean_dose_gy"] > 0
    assert kidney["eqd2_gy"] == pytest.approx(kidney["bed_gy"] / (1 + 2 / 2.6))
    assert kidney["radiobiology"]["alpha_beta_gy"] == 2.6
    assert kidney["radiobiology"]["tissue_source"] == "VOI name (default organ types)"
    lesion = data["Lesion_1"]  # the phantom's RTSTRUCT marks lesions GTV
    assert lesion["tissue"] == "tumour" and lesion["bed_gy"] > lesion["mean_dose_gy"]
    assert lesion["radiobiology"]["tissue_source"] == "RTROIInterpretedType GTV"
    assert data["Liver"]["radiobiology"]["alpha_beta_gy"] == 2.5  # the user's table entry
    spleen = data["Spleen"]
    assert spleen["bed_gy"] is None and "--radiobiology" in spleen["radiobiology"]["note"]
    with pytest.raises(OptionError, match="radiobiology"):
        validate(RunOptions(radiobiology=("kidney=2.6",)))
