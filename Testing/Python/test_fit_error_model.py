"""Issue #12 items 10 and 13: the fits' stated error model, σ² in AICc's K, standard errors at a bound, the
n ≤ K + 1 model-choice rule; reduced time points without built-in population half-lives, organ types by an
explicit mapping, the Madsen 2018 citation, and Jaszczak's dual-energy-window scatter."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from LuDosimetryLib.cli import main
from LuDosimetryLib.errors import FitError, OptionError
from LuDosimetryLib.kinetics import fit as fit_module
from LuDosimetryLib.kinetics import fit_time_activity_curve
from LuDosimetryLib.kinetics import reduced as reduced_module
from LuDosimetryLib.kinetics.reduced import fit_reduced, organ_type
from LuDosimetryLib.options import ReconOptions, RunOptions, validate
from LuDosimetryLib.pipeline import run_study
from LuDosimetryLib.radionuclides import radionuclide

from study_builder import Sphere, build_study

LN2 = math.log(2.0)
LAM_PHYS = radionuclide("Lu-177").decay_constant_per_h
T4 = np.array([4.0, 24.0, 96.0, 168.0])
README = Path(__file__).resolve().parents[2] / "README.md"


def _teff_errors(truth_fn, teff_true, error_model, cv, trials, seed):
    rng = np.random.default_rng(seed)
    clean = truth_fn(T4)
    out = []
    for _ in range(trials):
        y = clean * (1.0 + cv * rng.standard_normal(T4.size))
        out.append(fit_time_activity_curve(T4, y, error_model=error_model).effective_half_life_h / teff_true - 1)
    return np.array(out)


# --- item 10: error model ------------------------------------------------------------------------

def test_error_models_are_declared_once():
    from LuDosimetryLib.options import FIT_WEIGHTINGS

    assert fit_module.ERROR_MODELS == FIT_WEIGHTINGS
    assert RunOptions().fit_weighting == "proportional"
    with pytest.raises(OptionError):
        validate(RunOptions(fit_weighting="chi-by-eye"))
    with pytest.raises(FitError, match="unknown error model"):
        fit_time_activity_curve(T4, 1e6 * np.exp(-0.01 * T4), error_model="chi-by-eye")


def test_weighted_fit_recovers_the_tail_half_life_better_than_unweighted():
    # (a) a fast early clearance on top of the tail (80 % of the activity at 0 h leaves with T½ 6 h): four
    # points cannot resolve both phases; unweighted, the high 4 h point pulls the fitted tail down.
    two_phase = lambda t: 40e6 * np.exp(-LN2 / 6.0 * t) + 10e6 * np.exp(-LN2 / 90.0 * t)  # noqa: E731
    y = two_phase(T4)
    unweighted = fit_time_activity_curve(T4, y, error_model="uniform").effective_half_life_h
    weighted = fit_time_activity_curve(T4, y, error_model="proportional").effective_half_life_h
    print(f"\ntwo-phase curve, true tail T_eff 90 h: unweighted {unweighted:.1f} h ({unweighted / 90 - 1:+.1%}), "
          f"proportional {weighted:.1f} h ({weighted / 90 - 1:+.1%})")
    assert abs(weighted / 90.0 - 1) < 0.5 * abs(unweighted / 90.0 - 1)
    # (b) mono-exponential liver (T_eff 80 h) with 10 % proportional noise, 100 curves
    mono = lambda t: 60e6 * np.exp(-LN2 / 80.0 * t)  # noqa: E731
    e_u = _teff_errors(mono, 80.0, "uniform", 0.10, 100, 7)
    e_p = _teff_errors(mono, 80.0, "proportional", 0.10, 100, 7)
    rms_u, rms_p = float(np.sqrt(np.mean(e_u ** 2))), float(np.sqrt(np.mean(e_p ** 2)))
    print(f"mono T_eff 80 h, 10 % noise, 100 curves: unweighted bias {np.mean(e_u):+.2%} RMS {rms_u:.2%}; "
          f"proportional bias {np.mean(e_p):+.2%} RMS {rms_p:.2%}")
    assert rms_p < 0.95 * rms_u
    assert abs(np.mean(e_p)) < abs(np.mean(e_u))


def test_aicc_counts_sigma_squared_in_k_where_the_likelihood_estimates_it():
    rng = np.random.default_rng(3)
    t = np.array([1.0, 4.0, 24.0, 48.0, 96.0, 168.0])
    clean = 20e6 * (np.exp(-LN2 / 50 * t) - np.exp(-LN2 / 2 * t))
    y = clean * (1 + 0.05 * rng.standard_normal(t.size))
    n = t.size
    # σ's scale estimated (proportional): −2 ln L = n ln(RSS/n), K = k + 1
    fit = fit_time_activity_curve(t, y)
    for c in (c for c in fit.candidates if c.accepted):
        big_k = c.n_params + 1
        assert c.k_ic == big_k
        assert c.aic == pytest.approx(n * math.log(c.rss / n) + 2 * big_k, rel=1e-12)
        assert c.aicc == pytest.approx(c.aic + 2 * big_k * (big_k + 1) / (n - big_k - 1), rel=1e-12)
    # σ known: −2 ln L = χ², K = k
    sigma = 0.05 * clean
    known = fit_time_activity_curve(t, y, sigma_bq=sigma)
    assert known.error_model == "given"
    for c in (c for c in known.candidates if c.accepted):
        k = c.n_params
        model = fit_module.MODELS[c.model]
        p = np.array([c.params[name] for name in model.param_names])
        chi2 = float(np.sum(((model.evaluate(t, p) - y) / sigma) ** 2))
        assert c.k_ic == k and c.rss == pytest.approx(chi2, rel=1e-9)
        assert c.aicc == pytest.approx(chi2 + 2 * k + 2 * k * (k + 1) / (n - k - 1), rel=1e-9)
    # four points, σ estimated: the mono-exponential's AICc is undefined (n − K − 1 = 0), with σ known it is not
    mono4 = 60e6 * np.exp(-LN2 / 80 * T4) * np.array([1.02, 0.97, 1.01, 0.99])
    est = {c.model: c for c in fit_time_activity_curve(T4, mono4).candidates}["mono_exponential"]
    giv = {c.model: c for c in fit_time_activity_curve(T4, mono4, sigma_bq=0.03 * mono4).candidates}
    assert math.isnan(est.aicc) and est.k_ic == 3
    assert np.isfinite(giv["mono_exponential"].aicc) and giv["mono_exponential"].k_ic == 2


def test_few_point_model_choice_rule_is_documented_as_this_projects_own():
    assert "this project's own rule" in fit_module.__doc__
    text = README.read_text(encoding="utf-8")
    assert "model-choice rule" in text and "this project's own" in text
    # the rule: a clear uptake–washout on 4 points is bi-exponential, a clean mono-exponential stays mono
    kidney = 20e6 * (np.exp(-LN2 / 50 * T4) - np.exp(-LN2 / 2 * T4))
    fit = fit_time_activity_curve(T4, kidney)
    cands = {c.model: c for c in fit.candidates}
    assert fit.model == "bi_exponential" and all(math.isnan(c.aicc) for c in cands.values() if c.accepted)
    assert cands["bi_exponential"].aic < cands["mono_exponential"].aic - fit_module.AIC_MARGIN
    assert fit_time_activity_curve(T4, 60e6 * np.exp(-LN2 / 80 * T4)).model == "mono_exponential"


def test_standard_error_at_a_bound_is_flagged_not_reported():
    # activity that falls slower than Lu-177 decays: the clearance rate ends on its lower bound, λ_phys
    y = 1e7 * np.exp(-0.5 * LAM_PHYS * T4) * np.array([1.0, 1.02, 0.98, 1.0])
    fit = fit_time_activity_curve(T4, y, label="VOI 'spleen'")
    assert fit.model == "mono_exponential"
    assert fit.params["lambda_per_h"] == pytest.approx(LAM_PHYS, rel=1e-6)
    assert math.isnan(fit.param_se["lambda_per_h"])  # never a misleading number
    assert "lambda_per_h" in fit.param_at_bound and "physical decay constant" in fit.param_at_bound["lambda_per_h"]
    assert any("not meaningful" in w and w.startswith("VOI 'spleen': ") for w in fit.warnings)
    # the amplitude's SE is finite; the TIA SE holds λ at the bound: SE(A0)/λ
    assert np.isfinite(fit.param_se["A0_bq"]) and fit.param_se["A0_bq"] > 0
    assert fit.tia_se_bq_s == pytest.approx(fit.param_se["A0_bq"] / LAM_PHYS * 3600.0, rel=1e-6)
    # a fit away from the bounds flags nothing
    free = fit_time_activity_curve(T4, 60e6 * np.exp(-LN2 / 80 * T4) * np.array([1.02, 0.97, 1.01, 0.99]))
    assert free.param_at_bound == {} and all(np.isfinite(v) for v in free.param_se.values())


@pytest.fixture(scope="module")
def slow_study(tmp_path_factory):
    """Analytic study with a VOI that clears slower than physical decay (its λ ends at λ_phys)."""
    spheres = (Sphere("Liver", (10.0, 0.0, 0.0), 45.0, 400e6, 80.0),
               Sphere("Liver_met_1", (-55.0, 20.0, 0.0), 30.0, 110e6, 400.0))
    return build_study(tmp_path_factory.mktemp("slow") / "study", spheres=spheres)


def test_se_at_a_bound_and_the_error_model_reach_results_json(slow_study, tmp_path):
    out = tmp_path / "out"
    assert main(["run", str(slow_study.root), "--out", str(out), "--quiet", "--dose-method", "ldm"]) == 0
    res = json.loads((out / "results.json").read_text())
    slow, liver = res["vois"]["Liver_met_1"], res["vois"]["Liver"]
    assert slow["fit_param_se"]["lambda_per_h"] is None
    assert "lambda_per_h" in slow["fit_param_at_bound"]
    assert slow["fit_param_se"]["A0_bq"] > 0 and slow["tia_se_bq_s"] > 0
    assert liver["fit_param_at_bound"] == {} and liver["fit_error_model"] == "proportional"
    # the unweighted fit of the former default stays available
    uniform = run_study(slow_study.root, RunOptions(dose_method="ldm", fit_weighting="uniform"))
    assert uniform.vois["Liver"].fit_error_model == "uniform"


# --- item 13: reduced time points ----------------------------------------------------------------

def test_no_built_in_population_half_lives():
    assert not hasattr(reduced_module, "POPULATION_PRIORS")
    for method in ("madsen", "population_half_life", "population_prior", "map"):
        with pytest.raises(FitError, match="needs population effective half-lives"):
            fit_reduced([96.0], [1e7], method, organ="kidney")
    with pytest.raises(FitError, match="spread"):  # the MAP needs the user's log-SD
        fit_reduced([96.0], [1e7], "map", organ="kidney", population={"kidney": (50.0, None)})
    fit = fit_reduced([96.0], [1e7], "madsen", organ="kidney", population={"kidney": (50.0, None)})
    assert fit.effective_half_life_h == pytest.approx(50.0)
    assert any("'kidney'" in w and "50 h" in w and "user's" in w for w in fit.warnings)
    assert RunOptions().reduced_method == "auto"


def test_auto_reduced_method_needs_no_population():
    t = np.array([24.0, 96.0, 168.0])
    a = 3e7 * np.exp(-LN2 / 96.0 * t)
    assert fit_reduced(t[1:2], a[1:2]).tia_bq_s == pytest.approx(fit_reduced(t[1:2], a[1:2], "hanscheid").tia_bq_s)
    assert fit_reduced(t[:2], a[:2]).tia_bq_s == pytest.approx(3e7 * 96.0 / LN2 * 3600.0, rel=1e-9)
    assert fit_reduced(t, a).tia_bq_s == pytest.approx(fit_time_activity_curve(t, a).tia_bq_s)


def test_organ_type_is_an_explicit_mapping_not_a_name_prefix():
    from LuDosimetryLib.kinetics.reduced import population_inputs

    assert organ_type("Liver") == "liver" and organ_type("kidney_l") == "kidney"
    for name in ("Liver_met_1", "Kidney_cyst", "Spleen_lesion", "Lesion_1", "metastasis"):
        assert organ_type(name) is None, name
    assert organ_type("Liver_met_1", {"Liver_met_1": "tumor"}) == "tumor"
    assert organ_type("Liver", {"Liver": "Liver_with_mets"}) == "liver_with_mets"  # the user's mapping wins
    pop = ["liver=75:0.3", "tumor=80:0.35"]
    with pytest.raises(OptionError) as err:
        population_inputs("Liver_met_1", "madsen", None, pop)
    assert err.value.option == "organ_types" and "Liver_met_1" in str(err.value)
    assert population_inputs("Liver_met_1", "madsen", ["Liver_met_1=tumor"], pop) == (
        "tumor", {"liver": (75.0, 0.3), "tumor": (80.0, 0.35)}, False)
    assert population_inputs("Liver", "map", None, pop)[0::2] == ("liver", True)  # default mapping: flagged
    assert population_inputs("Liver_met_1", "two_point", None, None) == (None, None, False)
    with pytest.raises(OptionError) as err:
        population_inputs("Liver", "map", None, None)
    assert err.value.option == "population_half_lives"
    for bad in (["liver"], ["liver=-3"], ["liver=75:x"], ["=75"]):
        with pytest.raises(OptionError):
            population_inputs("Liver", "map", None, bad)


def test_reduced_run_with_population_prior_names_the_defaulted_organ_type(slow_study, tmp_path):
    common = ["run", str(slow_study.root), "--quiet", "--dose-method", "ldm", "--time-points", "2,3",
              "--reference-time-point", "2", "--reduced-method", "population_prior"]
    # no population table: refused, one line naming the flag
    assert main(common + ["--out", str(tmp_path / "a")]) == 2
    # Liver_met_1 has no organ type: refused naming the VOI and the flag
    assert main(common + ["--out", str(tmp_path / "b"), "--population-half-life", "liver=75:0.3"]) == 2
    options = RunOptions(dose_method="ldm", time_points=(2, 3), reference_time_point=1,
                         reduced_method="population_prior", population_half_lives=("liver=75:0.3", "tumor=200:0.4"),
                         organ_types=("Liver_met_1=tumor",))
    res = run_study(slow_study.root, options)
    assumed = [a for a in res.assumptions if "organ type" in a.what]
    assert [a.what for a in assumed] == ["organ type of VOI 'Liver' for its population half-life"]
    assert assumed[0].value == "liver"
    assert any("'tumor'" in w and "200 h" in w for w in res.vois["Liver_met_1"].fit_warnings)
    assert main(common + ["--out", str(tmp_path / "d"), "--population-half-life", "liver=75:0.3",
                          "--population-half-life", "tumor=200:0.4", "--organ-type", "Liver_met_1=tumor",
                          "--strict"]) == 2


def test_cli_messages_for_population_options(slow_study, tmp_path, capsys):
    argv = ["run", str(slow_study.root), "--quiet", "--dose-method", "ldm", "--time-points", "2",
            "--reference-time-point", "2", "--reduced-method", "madsen", "--out", str(tmp_path / "x")]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--population-half-life" in err[0]
    assert main(argv + ["--population-half-life", "liver=75"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Liver_met_1" in err[0] and "--organ-type" in err[0]


def test_madsen_2018_citation():
    doc = reduced_module.__doc__
    assert "Madsen" in doc and "Med Phys 45(5):2318" in doc
    assert "A practical method for single time point dosimetry" not in doc


def test_dew_is_jaszczaks_k_times_the_lower_window():
    from LuDosimetryLib.recon.energy import EnergyWindow, identify_windows
    from LuDosimetryLib.recon.scatter import energy_window_scatter

    ws = [EnergyWindow("p", 187.2, 228.8), EnergyWindow("l", 166.4, 187.2)]
    counts = np.zeros((2, 2, 5, 5), dtype=np.float32)
    counts[0] = 100.0
    counts[1] = 30.0
    roles = identify_windows(ws)
    dew = energy_window_scatter(counts, ws, roles, "dew", sigma_px=0, dew_k=0.5)
    assert dew[0, 2, 2] == pytest.approx(0.5 * 30.0)  # S = k · C_lower (Jaszczak et al. 1984)
    for k in (None, 0.0, -1.0, float("nan")):
        with pytest.raises(OptionError) as err:
            energy_window_scatter(counts, ws, roles, "dew", dew_k=k)
        assert err.value.option == "dew_k"
    with pytest.raises(OptionError):
        validate(ReconOptions(scatter="dew", dew_k=0.0))
    assert ReconOptions().dew_k is None
