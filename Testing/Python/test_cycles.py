"""Multi-cycle accumulation (#13): BED added per cycle, one patient in cycle order, projection with its arithmetic."""
import json
import math

import pytest

from LuDosimetryLib import cli
from LuDosimetryLib.assumptions import StrictRefusal, recording
from LuDosimetryLib.cycles import CycleError, order_cycles, summarize_cycles
from LuDosimetryLib.radiobiology import DEFAULT_TISSUES, bed_from_exponentials_gy


def _bed(dose_gy, t_eff_h=50.0, tissue="kidney"):
    lam = math.log(2) / t_eff_h
    return bed_from_exponentials_gy([dose_gy * lam], [lam], DEFAULT_TISSUES[tissue])


def _results(cycle, date, kidney_gy, patient="P1", activity_gbq=7.4, lesion_gy=10.0, code=True):
    desc = f"C{cycle}S1D1 Lu177 SPECT" if code else "Lu177 SPECT"
    return {
        "patient_id": patient, "injected_activity_bq": activity_gbq * 1e9,
        "injection_time": f"{date}T10:00:00",
        "time_points": [{"description": desc}],
        "vois": {
            "Kidney_L": {"tissue": "kidney", "mean_dose_gy": kidney_gy, "bed_gy": _bed(kidney_gy),
                         "gy_per_gbq": kidney_gy / activity_gbq},
            "Lesion_1": {"tissue": "tumour", "mean_dose_gy": lesion_gy, "bed_gy": _bed(lesion_gy, 80, "tumour"),
                         "gy_per_gbq": lesion_gy / activity_gbq},
        },
    }


def test_bed_is_added_per_cycle_not_recomputed_from_the_summed_dose():
    runs = [("c2.json", _results(2, "2026-03-01", 4.0)), ("c1.json", _results(1, "2026-01-05", 5.0))]
    summary = summarize_cycles(runs, next_activity_gbq=7.4)
    assert [c.number for c in summary.cycles] == [1, 2]
    kidney = next(v for v in summary.vois if v.name == "Kidney_L")
    assert kidney.cumulative_dose_gy == pytest.approx(9.0)
    assert kidney.cumulative_bed_gy == pytest.approx(_bed(5.0) + _bed(4.0))
    assert kidney.cumulative_bed_gy < _bed(9.0)  # summed dose would overstate the quadratic term
    proj = kidney.projection
    assert proj["limit_gy"] == 40.0
    # per further cycle: mean 0.608 Gy/GBq x 7.4 GBq = 4.5 Gy; BED = D + k D^2 with this kinetics' k
    d = 4.5
    assert proj["per_cycle_gy"] == pytest.approx(_bed(d), rel=1e-9)
    assert proj["further_cycles"] == math.floor((40.0 - kidney.cumulative_bed_gy) / _bed(d))
    assert any("floor(" in line for line in proj["arithmetic"])
    lesion = next(v for v in summary.vois if v.name == "Lesion_1")
    assert lesion.projection is None  # no limit for tumours


def test_risk_factors_lower_the_kidney_limit():
    runs = [("c1.json", _results(1, "2026-01-05", 5.0)), ("c2.json", _results(2, "2026-03-01", 5.0))]
    low = summarize_cycles(runs, next_activity_gbq=7.4, kidney_risk_factors=True)
    high = summarize_cycles(runs, next_activity_gbq=7.4)
    k_low = next(v for v in low.vois if v.name == "Kidney_L").projection
    k_high = next(v for v in high.vois if v.name == "Kidney_L").projection
    assert k_low["limit_gy"] == 28.0 and k_low["further_cycles"] < k_high["further_cycles"]


def test_mixed_patients_duplicates_and_order_are_refused():
    with pytest.raises(CycleError, match="different patients"):
        order_cycles([("a.json", _results(1, "2026-01-05", 5.0)),
                      ("b.json", _results(2, "2026-03-01", 5.0, patient="P2"))])
    with pytest.raises(CycleError, match="twice"):
        order_cycles([("a.json", _results(1, "2026-01-05", 5.0)), ("b.json", _results(2, "2026-01-05", 5.0))])
    with pytest.raises(CycleError, match="not in date order"):
        order_cycles([("a.json", _results(2, "2026-01-05", 5.0)), ("b.json", _results(1, "2026-03-01", 5.0))])


def test_cycle_numbers_from_dates_are_an_assumption():
    runs = [("a.json", _results(1, "2026-01-05", 5.0, code=False)),
            ("b.json", _results(1, "2026-03-01", 5.0, code=False))]
    with recording() as log:
        cycles = order_cycles(runs)
    assert [c.number for c in cycles] == [1, 2]
    assert len(log.items) == 2 and "order of the injection dates" in log.items[0].what
    with pytest.raises(StrictRefusal):
        with recording(strict=True):
            order_cycles(runs)


def test_cycles_command_writes_the_table_and_refuses_bad_files(tmp_path, capsys):
    paths = []
    for cycle, date, gy in ((1, "2026-01-05", 5.0), (2, "2026-03-01", 4.0)):
        p = tmp_path / f"c{cycle}" / "results.json"
        p.parent.mkdir()
        p.write_text(json.dumps(_results(cycle, date, gy)))
        paths.append(str(p))
    out = tmp_path / "cycles"
    assert cli.main(["cycles", *paths, "--out", str(out), "--next-activity-mbq", "7400"]) == 0
    data = json.loads((out / "cycles.json").read_text())
    assert data["vois"]["Kidney_L"]["cumulative_dose_gy"] == pytest.approx(9.0)
    assert (out / "cycles.csv").read_text().startswith("VOI,tissue,C1 dose (Gy)")
    assert "further cycle" in (out / "cycles.txt").read_text()
    assert "Kidney_L" in capsys.readouterr().out
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    assert cli.main(["cycles", paths[0], str(bad), "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(bad) in err[0] and "Traceback" not in err[0]
    assert not (tmp_path / "x").exists()


def test_a_single_time_point_cycle_uses_the_patients_own_earlier_kinetics(synthetic_study, tmp_path, capsys):
    first = tmp_path / "cycle1"
    assert cli.main(["run", str(synthetic_study), "--out", str(first), "--dose-method", "ldm", "--quiet"]) == 0
    full = json.loads((first / "results.json").read_text())
    later = tmp_path / "cycle2"
    argv = ["run", str(synthetic_study), "--out", str(later), "--dose-method", "ldm", "--quiet", "--time-points", "3",
            "--reference-time-point", "3", "--kinetics-from", str(first / "results.json")]
    assert cli.main(argv) == 0
    res = json.loads((later / "results.json").read_text())
    for name in ("Liver", "Kidney_L", "Spleen"):
        # the same patient imaged once: its own half-life gives back the 4-point TIA within a few per cent
        assert res["vois"][name]["tia_bq_s"] == pytest.approx(full["vois"][name]["tia_bq_s"], rel=0.08), name
    assumed = [a for a in res["assumptions"] if "earlier cycle" in a["what"]]
    assert {a["path"] for a in assumed} == {str(first / "results.json")} and len(assumed) >= 3
    capsys.readouterr()
    assert cli.main(argv[:3] + [str(tmp_path / "strict")] + argv[4:] + ["--strict"]) == 2
    other = dict(full, patient_id="SOMEONE-ELSE")
    (tmp_path / "other.json").write_text(json.dumps(other))
    capsys.readouterr()
    assert cli.main(argv[:3] + [str(tmp_path / "x")] + argv[4:-1] + [str(tmp_path / "other.json")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert "SOMEONE-ELSE" in err[-1] and str(tmp_path / "other.json") in err[-1]
    assert cli.main(["run", str(synthetic_study), "--out", str(tmp_path / "y"), "--kinetics-from",
                     str(first / "results.json")]) == 2  # needs one time point
    capsys.readouterr()
    # the same injection's results (this check): used, and said in the warnings
    assert any("this study's own injection" in w for w in res["warnings"])
    # an "earlier" file that cannot be this patient's earlier cycle: one line naming it, nothing written
    later_cycle = dict(full, injection_time="2100-01-01T10:00:00")
    other_nuclide = dict(full, options=dict(full["options"], nuclide="Y-90"))
    negative = dict(full, vois={n: dict(v, effective_half_life_h=-50.0) for n, v in full["vois"].items()})
    text = dict(full, vois={n: dict(v, effective_half_life_h="long") for n, v in full["vois"].items()})
    for name, doc, said in (("later.json", later_cycle, "is not an earlier cycle"),
                            ("yttrium.json", other_nuclide, "radionuclide is Y-90"),
                            ("negative.json", negative, "-50.0 is not a positive number of hours"),
                            ("text.json", text, "'long' is not a positive number of hours")):
        (tmp_path / name).write_text(json.dumps(doc))
        out = tmp_path / f"out_{name}"
        assert cli.main(argv[:3] + [str(out)] + argv[4:-1] + [str(tmp_path / name)]) == 2, name
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and said in err[0] and str(tmp_path / name) in err[0], err
        assert not out.exists()
