#!/usr/bin/env python3
"""Reduced time points on the digital twin: TIA per VOI from subsets of the scans vs the 4-point fit and the truth.

Both twin presets (patient4: days 0, 1, 4, 5 at 3.74, 27.73, 103.09, 123.98 h; patient6: days 0, 1, 4, 8
at 4.05, 24.60, 96.25, 191.80 h). Every subset is a real pipeline run,
``run_study(twin, RunOptions(time_points=..., reduced_method=..., reference_time_point=first of the subset))``,
with each time point's own VOIs and GTM partial-volume correction at the image resolution
(``image_fwhm_mm(truth fwhm, SPECT voxel)``); dose method LDM (TIA does not depend on it). The 4-point
run (AICc model choice) is the reference "full"; each subset run also reports its own full-fit TIA
(``tia_full_bq_s``), which must equal it.

Subsets (1-based time points): single point at day 4 (time point 3) with ``hanscheid`` and
``population_prior``; two points (1, 3), (2, 3), (3, 4) with ``two_point`` and ``population_prior``.

LuDosimetry has no built-in population half-lives (the user gives them). The population here is the *other*
twin (leave-one-out): its 4-point effective half-life per organ type (kidney, liver, spleen, lesion), with a
spread of ln T_eff of 0.25 (stated, not measured). With one preset only, its own 4-point values are used,
an optimistic bound, and the table says so.

Usage: python benchmarks/reduced_twin.py [--fast] [--seed N] [--twins DIR] [--preset patient4|patient6|both]
(``--twins`` reuses twins already written: DIR/patient_4, DIR/patient_6).
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from LuDosimetryLib.phantom import write_twin  # noqa: E402
from LuDosimetryLib.pipeline import RunOptions, run_study  # noqa: E402
from LuDosimetryLib.pvc import image_fwhm_mm  # noqa: E402

CASES = (((3,), "hanscheid"), ((3,), "population_prior"),
         ((1, 3), "two_point"), ((1, 3), "population_prior"),
         ((2, 3), "two_point"), ((2, 3), "population_prior"),
         ((3, 4), "two_point"), ((3, 4), "population_prior"))


#: Spread of ln T_eff of the stand-in population (stated, not measured).
POPULATION_LOG_SD = 0.25


def _organ_type_items(names) -> list:
    """--organ-type items: lesions by name (the defaults know kidneys, liver and spleen)."""
    return [f"{n}=lesion" for n in names if n.lower().startswith("lesion")]


def _base_options(root: Path) -> dict:
    truth = json.loads((root / "truth.json").read_text())
    sim = truth["simulation"]
    fwhm = image_fwhm_mm(float(sim["fwhm_mm"]), float(sim["spect_spacing_mm"][0]))
    return dict(pvc="gtm", psf_fwhm_mm=fwhm, dose_method="ldm", organ_types=_organ_type_items(truth["vois"]))


def population_from(root: Path) -> list:
    """--population-half-life items from a twin's 4-point run: mean T_eff per organ type."""
    from LuDosimetryLib.kinetics.reduced import organ_type
    base = _base_options(root)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        full = run_study(root, RunOptions(**base))
    types = dict(item.split("=") for item in base["organ_types"])
    per_type = {}
    for name, v in full.vois.items():
        typ = organ_type(name, types)
        if typ and v.effective_half_life_h:
            per_type.setdefault(typ, []).append(v.effective_half_life_h)
    return [f"{t}={np.mean(h):.1f}:{POPULATION_LOG_SD}" for t, h in sorted(per_type.items())]


def bench_preset(root: Path, population: list, population_source: str) -> dict:
    """Print the table of one twin; returns {case label: {VOI: (err vs full %, err vs truth %)}}."""
    truth = json.loads((root / "truth.json").read_text())
    sim = truth["simulation"]
    base = _base_options(root)
    fwhm = base["psf_fwhm_mm"]
    days = [tp["day"] for tp in truth["time_points"]]
    hours = [tp["hours_post_injection"] for tp in truth["time_points"]]
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        full = run_study(root, RunOptions(**base))
        print(f"\n## {truth['preset']} (fast={sim['fast']}): days {days} = {hours} h; GTM PSF FWHM {fwhm:.2f} mm; "
              f"4-point run {time.perf_counter() - t0:.1f} s")
        print(f"population half-lives ({population_source}): {' '.join(population)}")
        names = list(truth["vois"])
        print(f"{'VOI':9s} {'true GBq.h':>10s} {'4-pt model':>16s} {'4-pt vs truth %':>15s}")
        for n in names:
            t = truth["vois"][n]["tia_bq_s"]
            v = full.vois[n]
            print(f"{n:9s} {t / 3.6e12:10.3f} {v.fit_model:>16s} {100 * (v.tia_bq_s / t - 1):15.2f}")
        out = {}
        rows = []
        for tps, method in CASES:
            t1 = time.perf_counter()
            res = run_study(root, RunOptions(time_points=tps, reduced_method=method,
                                             reference_time_point=tps[0] - 1, population_half_lives=population,
                                             **base))
            secs = time.perf_counter() - t1
            label = f"{','.join(f'd{days[i - 1]}' for i in tps)} {method}"
            errs = {}
            for n in names:
                v = res.vois[n]
                if abs(v.tia_full_bq_s / full.vois[n].tia_bq_s - 1.0) > 1e-6:
                    print(f"  note: {label} {n}: the subset run's full fit {v.tia_full_bq_s:.6g} differs from the "
                          f"4-point run {full.vois[n].tia_bq_s:.6g}")
                errs[n] = (100.0 * (v.tia_bq_s / full.vois[n].tia_bq_s - 1.0),
                           100.0 * (v.tia_bq_s / truth["vois"][n]["tia_bq_s"] - 1.0))
            out[label] = errs
            rows.append((label, tps, errs, secs))
    print("\nTIA error % of each subset: vs the 4-point fit / vs truth")
    print(f"{'subset (tp) method':34s} " + " ".join(f"{n:>15s}" for n in names))
    for label, tps, errs, secs in rows:
        print(f"{label + ' (' + ','.join(map(str, tps)) + ')':34s} "
              + " ".join(f"{errs[n][0]:7.1f}/{errs[n][1]:7.1f}" for n in names))
    organs = [n for n in names if truth["vois"][n]["kind"] == "organ"]
    print("organs, max |error| vs 4-point fit / vs truth:")
    for label, _tps, errs, _s in rows:
        print(f"  {label:30s} {max(abs(errs[n][0]) for n in organs):6.1f} / {max(abs(errs[n][1]) for n in organs):6.1f}")
    print(f"({time.perf_counter() - t0:.1f} s for the preset)")
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="both", choices=("patient4", "patient6", "both"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--fast", action="store_true")
    ap.add_argument("--twins", default=None, help="folder holding patient_4 / patient_6 already written")
    args = ap.parse_args(argv)
    presets = ("patient4", "patient6") if args.preset == "both" else (args.preset,)
    out = Path(args.twins) if args.twins else Path(tempfile.mkdtemp(prefix="twin_reduced_"))
    roots = {}
    for preset in presets:
        root = out / ("patient_" + preset[-1])
        if not (root / "truth.json").is_file():
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                root = write_twin(out, preset=preset, seed=args.seed, fast=args.fast, projections=False)
        roots[preset] = root
    for preset, root in roots.items():
        others = [r for p, r in roots.items() if p != preset]
        source = (f"leave-one-out: the other twin's 4-point fits, log SD {POPULATION_LOG_SD}" if others
                  else f"this twin's own 4-point fits (optimistic), log SD {POPULATION_LOG_SD}")
        bench_preset(root, population_from(others[0] if others else root), source)
    return 0


if __name__ == "__main__":
    np.set_printoptions(precision=2)
    raise SystemExit(main())
