"""Population kinetics (NLMM) and single-time-point runs with it (issue 15)."""
from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest

from LuDosimetryLib.cli import main
from LuDosimetryLib.kinetics import fit_time_activity_curve
from LuDosimetryLib.kinetics.population import fit_population, log_curve, posterior_fit
from LuDosimetryLib.radionuclides import radionuclide

LAM = radionuclide("Lu-177").decay_constant_per_h
THETA = np.array([math.log(0.015), math.log(0.012), math.log(0.4)])  # 1.5 % IA, k_bio 0.012/h, uptake gap 0.4/h
OMEGA = np.array([0.3, 0.3, 0.3])
SIGMA = 0.07


def _simulated(n=40, seed=3):
    rng = np.random.default_rng(seed)
    subjects = []
    for _ in range(n):
        phi = THETA + rng.normal(0.0, OMEGA)
        t = np.array([4.0, 24.0, 96.0, 168.0]) * np.exp(rng.normal(0.0, 0.03, 4))
        lf, _ = log_curve("bi_exponential", phi[None], t[None], LAM)
        subjects.append((t, np.exp(lf[0] + rng.normal(0.0, SIGMA, 4))))
    return subjects


def test_nlmm_recovers_fixed_effects_and_variability():
    subjects = _simulated()
    pop = fit_population(subjects, "bi_exponential", LAM, "kidney")
    assert np.all(np.abs(np.array(pop.theta[:2]) - THETA[:2]) < 0.12), pop.theta
    assert abs(pop.theta[2] - THETA[2]) < 0.3  # the uptake rate is seen by one early point only
    assert np.all(np.abs(np.array(pop.omega[:2]) - OMEGA[:2]) < 0.1), pop.omega
    assert abs(pop.sigma - SIGMA) < 0.025, pop.sigma
    assert all(math.isfinite(s) and s < 0.2 for s in pop.theta_se[:2])
    # a naive pooled fit (one curve for everybody) has no between-subject variability: its residual takes it all,
    # so the tolerance on sigma above would fail for it
    from scipy.optimize import least_squares
    t = np.array([s[0] for s in subjects])
    ly = np.log(np.array([s[1] for s in subjects]))
    pooled = least_squares(lambda th: (ly - log_curve("bi_exponential", th[None], t, LAM)[0]).ravel(), THETA)
    assert np.std(pooled.fun) > 2 * SIGMA


def test_posterior_with_every_point_agrees_with_own_fit():
    subjects = _simulated()
    pop = fit_population(subjects[1:], "bi_exponential", LAM, "kidney")
    t, y = subjects[0]
    injected = 7.4e9
    post = posterior_fit(pop, t, y * injected, injected)
    own = fit_time_activity_curve(t, y * injected, models=("bi_exponential",))
    assert post.tia_bq_s == pytest.approx(own.tia_bq_s, rel=0.05)
    assert 0 < post.tia_se_bq_s < 0.2 * post.tia_bq_s
    one = posterior_fit(pop, t[[2]], y[[2]] * injected, injected)
    assert one.tia_se_bq_s > post.tia_se_bq_s  # one point: wider posterior


def _cohort_csv(path, n=8, seed=5):
    from LuDosimetryLib.cohort import TAC_COLUMNS
    from LuDosimetryLib.phantom.cohort_variability import noisy_curves, synthetic_cohort
    rng = np.random.default_rng(seed)
    cols = ["patient_id", "cycle", "voi", "injected_activity_mbq", "tissue"] + list(TAC_COLUMNS)
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, cols)
        w.writeheader()
        for p in synthetic_cohort(n, seed):
            for voi, (t, a) in noisy_curves(p, 0.07, rng).items():
                w.writerow({"patient_id": p.patient_id, "cycle": "cycle1", "voi": voi,
                            "injected_activity_mbq": p.injected_activity_bq / 1e6,
                            "tissue": "tumour" if voi.startswith("Lesion") else "", "nuclide": "Lu-177",
                            "tac_hours_pi": " ".join(map(str, t)), "tac_activity_bq": " ".join(map(str, a))})
    return path


@pytest.fixture(scope="module")
def population_json(tmp_path_factory):
    base = tmp_path_factory.mktemp("population")
    csv_path = _cohort_csv(base / "cohort.csv")
    out = base / "population.json"
    assert main(["population", str(csv_path), "--out", str(out), "--model", "bi_exponential", "--quiet"]) == 0
    return out


def test_population_cli_end_to_end(population_json, tmp_path, capsys):
    data = json.loads(population_json.read_text())
    assert data["nuclide"] == "Lu-177" and "Laplace" in data["method"]
    assert set(data["organ_types"]) == {"kidney", "liver", "spleen", "tumour"}
    kidney = data["organ_types"]["kidney"]
    assert kidney["n_subjects"] == 16 and kidney["model"] == "bi_exponential"
    # the synthetic kidneys: T_bio 72 h x log-normal, T_eff ≈ 50 h typical
    assert 35 < kidney["typical_effective_half_life_h"] < 70
    assert 0.1 < kidney["omega"][1] < 0.6 and 0.02 < kidney["sigma"] < 0.15
    assert data["source"]["sha256"]
    # refuses to overwrite; a table without curves is one line, exit 2
    assert main(["population", str(population_json.parent / "cohort.csv"), "--out", str(population_json)]) == 2
    bad = tmp_path / "bad.csv"
    bad.write_text("patient_id,voi,tia_mbq_h\nA,Kidney_L,3\n")
    capsys.readouterr()
    assert main(["population", str(bad), "--out", str(tmp_path / "p.json")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "bad.csv" in err[0] and "curves" in err[0]


def test_run_nlmm_single_time_point(synthetic_study, population_json, tmp_path):
    out = tmp_path / "out"
    rc = main(["run", str(synthetic_study), "--out", str(out), "--time-points", "3", "--reference-time-point", "3",
               "--reduced-method", "nlmm", "--population", str(population_json), "--quiet",
               "--marrow-method", "image"])  # the automatic L2-L4 VOI: a VOI without population kinetics
    assert rc == 0
    res = json.loads((out / "results.json").read_text())
    assert res["options"]["reduced_method"] == "nlmm"
    from LuDosimetryLib.provenance import sha256_of_file
    roles = {f["role"]: f["sha256"] for f in res["inputs"]["other_files"]}
    assert roles["population"] == sha256_of_file(population_json)
    organ_types = {a["what"]: a["value"] for a in res["assumptions"] if "population kinetics (NLMM)" in a["what"]}
    assert organ_types["organ type of VOI 'Kidney_L' for its population kinetics (NLMM)"] == "kidney"
    assert organ_types["organ type of VOI 'Lesion_1' for its population kinetics (NLMM)"] == "tumour"
    for name in ("Kidney_L", "Liver", "Lesion_1"):
        v = res["vois"][name]
        assert any("NLMM posterior" in w for w in v["fit_warnings"]), v["fit_warnings"]
        assert v["tia_full_bq_s"] and abs(v["tia_bq_s"] / v["tia_full_bq_s"] - 1) < 0.3, name
        assert v["uncertainty_budget"]["fit"] > 0
    assert any("'L2-L4 (automatic)' has no population" in a["what"] for a in res["assumptions"])


def test_bad_population_exit_2_one_line(synthetic_study, population_json, tmp_path, capsys):
    def run(pop, *extra):
        capsys.readouterr()
        rc = main(["run", str(synthetic_study), "--out", str(tmp_path / "o"), "--time-points", "3",
                   "--reference-time-point", "3", "--reduced-method", "nlmm", *extra, "--quiet"]
                  + (["--population", str(pop)] if pop else []))
        return rc, capsys.readouterr().err.strip().splitlines()

    rc, err = run(None)
    assert rc == 2 and len(err) == 1 and "--population" in err[0]
    garbage = tmp_path / "garbage.json"
    garbage.write_text("{not json")
    rc, err = run(garbage)
    assert rc == 2 and len(err) == 1 and "garbage.json" in err[0] and "--population" in err[0]
    data = json.loads(population_json.read_text())
    other = tmp_path / "i131.json"
    other.write_text(json.dumps(dict(data, nuclide="I-131")))
    rc, err = run(other)
    assert rc == 2 and len(err) == 1 and "I-131" in err[0] and "Lu-177" in err[0]
    no_kidney = tmp_path / "nokidney.json"
    no_kidney.write_text(json.dumps(dict(data, organ_types={k: v for k, v in data["organ_types"].items()
                                                            if k != "kidney"})))
    capsys.readouterr()
    assert main(["run", str(synthetic_study), "--out", str(tmp_path / "nk"), "--time-points", "3",
                 "--reference-time-point", "3", "--reduced-method", "nlmm", "--population", str(no_kidney),
                 "--quiet"]) == 0  # a VOI without a population: the auto method, a named assumption
    res = json.loads((tmp_path / "nk" / "results.json").read_text())
    assert any("'Kidney_L' has no population" in a["what"] for a in res["assumptions"])
    assert not any("NLMM" in w for w in res["vois"]["Kidney_L"]["fit_warnings"])
    rc, err = run(no_kidney, "--strict")  # which a strict run refuses
    assert rc == 2 and len(err) == 1 and "strict" in err[0] and "population" in err[0]


def test_batch_fingerprint_follows_the_population_file(tmp_path):
    from LuDosimetryLib.cohort import fingerprint
    from LuDosimetryLib.options import RunOptions
    study = tmp_path / "study"
    study.mkdir()
    (study / "a.dcm").write_bytes(b"x")
    pop = tmp_path / "population.json"
    pop.write_text("{}")
    opts = RunOptions(time_points=(3,), reference_time_point=2, reduced_method="nlmm", population=str(pop))
    before = fingerprint(study, opts)
    pop.write_text('{"changed": 1}')  # same path, other population: a batch must rerun
    assert fingerprint(study, opts) != before
