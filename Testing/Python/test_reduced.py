"""Reduced time points (kinetics.reduced): exact cases of each method, prior/data balance, errors."""
from __future__ import annotations

import math

import numpy as np
import pytest

from LuDosimetryLib.errors import FitError
from LuDosimetryLib.kinetics import fit_time_activity_curve
from LuDosimetryLib.kinetics.reduced import compare_with_full, fit_reduced, organ_type
from LuDosimetryLib.radionuclides import radionuclide

LN2 = math.log(2.0)
#: A population table for the tests (LuDosimetry ships none: the user supplies it).
POP = {"kidney": (50.0, 0.25), "liver": (75.0, 0.30)}


def _mono(a0, t_eff_h, t):
    return a0 * np.exp(-LN2 / t_eff_h * np.asarray(t, dtype=float))


def test_hanscheid_exact_when_scan_at_effective_half_life():
    t = np.array([96.0])
    a = _mono(1e8, 96.0, t)
    fit = fit_reduced(t, a, "hanscheid")
    assert fit.tia_bq_s == pytest.approx(2 * a[0] * 96.0 / LN2 * 3600.0, rel=1e-12)
    assert fit.tia_bq_s == pytest.approx(1e8 * 96.0 / LN2 * 3600.0, rel=1e-12)  # the true integral
    assert fit.effective_half_life_h == pytest.approx(96.0)
    assert fit.evaluate([96.0])[0] == pytest.approx(a[0])
    early = fit_reduced([24.0], [1e8], "hanscheid")
    assert any("near the effective half-life" in w for w in early.warnings)


def test_population_half_life_exact_with_the_right_population():
    t = np.array([24.0])
    a = _mono(5e7, 60.0, t)
    fit = fit_reduced(t, a, "madsen", organ="Kidney_L", population={"kidney": (60.0, 0.2)})
    assert fit.tia_bq_s == pytest.approx(5e7 * 60.0 / LN2 * 3600.0, rel=1e-12)
    other = fit_reduced(t, a, "population_half_life", organ="kidney", population=POP)
    assert other.effective_half_life_h == pytest.approx(POP["kidney"][0])


def test_two_point_exact_and_physical_floor():
    t = np.array([24.0, 96.0])
    fit = fit_reduced(t, _mono(3e7, 45.0, t), "two_point")
    assert fit.tia_bq_s == pytest.approx(3e7 * 45.0 / LN2 * 3600.0, rel=1e-10)
    rising = fit_reduced(t, [1e7, 2e7], "two_point")
    lam_p = radionuclide("Lu-177").decay_constant_per_h
    assert rising.params["lambda_per_h"] == pytest.approx(lam_p)
    assert any("slower than physical decay" in w for w in rising.warnings)


def test_population_prior_balances_prior_and_data():
    t4 = np.array([4.0, 24.0, 96.0, 120.0])
    a4 = _mono(2e7, 30.0, t4)  # true T_eff 30 h; kidney prior 50 h
    truth = 2e7 * 30.0 / LN2 * 3600.0
    one = fit_reduced(t4[2:3], a4[2:3], "map", organ="kidney", population=POP)
    madsen = fit_reduced(t4[2:3], a4[2:3], "madsen", organ="kidney", population=POP)
    assert one.tia_bq_s == pytest.approx(madsen.tia_bq_s, rel=1e-6)  # one point: the prior decides
    four = fit_reduced(t4, a4, "map", organ="kidney", population=POP)
    assert four.tia_bq_s == pytest.approx(truth, rel=0.02)  # four points: the data decide
    two = fit_reduced(t4[1:3], a4[1:3], "map", organ="kidney", population=POP)
    assert 30.0 <= two.effective_half_life_h <= 50.0
    assert np.isfinite(two.tia_se_bq_s) and two.tia_se_bq_s > 0
    assert two.tia_se_bq_s < one.tia_se_bq_s  # more data, less uncertainty


def test_full_method_and_comparison():
    t = np.array([4.0, 24.0, 96.0, 120.0])
    a = _mono(2e7, 50.0, t)
    full = fit_reduced(t, a, "full")
    assert full.tia_bq_s == pytest.approx(fit_time_activity_curve(t, a).tia_bq_s)
    red = fit_reduced(t[2:3], a[2:3], "madsen", organ="kidney", population=POP)
    cmp = compare_with_full(full, red)
    assert cmp["relative_difference"] == pytest.approx(red.tia_bq_s / full.tia_bq_s - 1)
    assert abs(cmp["relative_difference"]) < 1e-6  # population half-life = true 50 h


def test_organ_types():
    assert organ_type("Kidney_R") == "kidney"
    assert organ_type("Liver") == "liver"
    assert organ_type("Lesion_1") is None  # exact names only: a lesion's type is the user's to give
    assert organ_type("Lesion_1", {"Lesion_1": "Tumor"}) == "tumor"
    assert organ_type("bladder") is None


def test_bad_input():
    with pytest.raises(FitError, match="unknown reduced-time-point method"):
        fit_reduced([96.0], [1.0], "guess")
    with pytest.raises(FitError, match="uses one time point"):
        fit_reduced([24.0, 96.0], [2.0, 1.0], "hanscheid")
    with pytest.raises(FitError, match="uses two time points"):
        fit_reduced([96.0], [1.0], "two_point")
    with pytest.raises(FitError, match="needs population effective half-lives"):
        fit_reduced([96.0], [1.0], "madsen", organ="kidney")
    with pytest.raises(FitError, match="needs the organ type"):
        fit_reduced([96.0], [1.0], "madsen", population=POP)
    with pytest.raises(FitError, match="must be positive"):
        fit_reduced([24.0, 96.0], [2.0, -1.0], "map", organ="liver", population=POP)
    with pytest.raises(FitError, match="strictly increasing"):
        fit_reduced([96.0, 24.0], [1.0, 2.0], "two_point")
    with pytest.raises(FitError, match="Kidney_L: 1 time points but 2"):
        fit_reduced([96.0], [1.0, 2.0], "map", organ="kidney", label="Kidney_L", population=POP)
