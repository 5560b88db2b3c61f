#!/usr/bin/env python3
"""Accuracy of the whole chain against the synthetic patient's analytic truth.

For a noise-free and a noisy realisation of the synthetic patient, runs ``run_study`` with both dose
methods and prints, per VOI, the error of TIA and of the mean absorbed dose against ``truth.json``
(truth dose: electrons deposited locally, D = TIA·E_e/m), without and with GTM partial-volume correction
(with the phantom's nominal PSF, and with a PSF 10 % too narrow / 20 % too wide, to show the sensitivity to
a wrong resolution estimate). Partial-volume losses show here as they are; nothing is hidden. DVK doses
include photons and cross-dose, which the electrons-only truth does not.

Usage: python benchmarks/accuracy.py [--fast] [--seed N] [--keep DIR]
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from LuDosimetryLib.phantom import write_synthetic_patient
from LuDosimetryLib.pipeline import RunOptions, run_study
from LuDosimetryLib.pvc import image_fwhm_mm


def evaluate(study: Path, method: str, pvc_fwhm_mm=None) -> dict:
    truth = json.loads((study / "truth.json").read_text())
    t0 = time.perf_counter()
    opts = RunOptions(dose_method=method)
    if pvc_fwhm_mm:
        opts.pvc, opts.psf_fwhm_mm = "gtm", float(pvc_fwhm_mm)
    res = run_study(study, opts)
    seconds = time.perf_counter() - t0
    rows = {}
    for name, t in truth["vois"].items():
        r = res.vois.get(name)
        if r is None:
            rows[name] = None
            continue
        rows[name] = {
            "kind": t.get("kind", ""),
            "volume_ml_true": t["volume_ml"], "volume_ml": r.volume_ml,
            "tia_err_pct": 100.0 * (r.tia_bq_s / t["tia_bq_s"] - 1.0),
            "dose_err_pct": 100.0 * (r.mean_dose_gy / t["mean_dose_gy_electrons"] - 1.0),
            "dose_true_gy": t["mean_dose_gy_electrons"], "dose_gy": r.mean_dose_gy, "model": r.fit_model,
        }
    return {"rows": rows, "seconds": seconds}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--fast", action="store_true", help="small phantom grid")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--keep", help="write the phantoms here instead of a temporary folder")
    args = ap.parse_args(argv)
    base = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="ludosimetry-accuracy-"))
    print(f"# LuDosimetry accuracy vs synthetic-patient truth (seed {args.seed}, {'fast' if args.fast else 'full'} grid)")
    for noise in (False, True):
        study = base / ("noisy" if noise else "noise_free")
        if not (study / "truth.json").exists():
            write_synthetic_patient(study, seed=args.seed, fast=args.fast, noise=noise)
        truth = json.loads((study / "truth.json").read_text())
        print(f"\n## {'noisy' if noise else 'noise-free'} SPECT (FWHM {truth['simulation'].get('fwhm_mm')} mm)")
        sim = truth["simulation"]
        # the image's resolution: the system blur plus the averaging into SPECT voxels (what a user measures)
        fwhm = image_fwhm_mm(float(sim["fwhm_mm"]), sum(sim["spect_spacing_mm"]) / 3.0)
        for method, pvc in (("ldm", None), ("ldm", fwhm), ("dvk", fwhm), ("ldm", 0.9 * fwhm), ("ldm", 1.2 * fwhm)):
            ev = evaluate(study, method, pvc)
            what = f"GTM partial-volume correction, PSF FWHM {pvc:.1f} mm" if pvc else "no partial-volume correction"
            print(f"\n### dose method {method.upper()}, {what} (run {ev['seconds']:.1f} s)")
            print(f"{'VOI':<14}{'kind':<8}{'V true mL':>10}{'V mL':>8}{'model':>17}{'TIA err %':>11}"
                  f"{'D true Gy':>11}{'D Gy':>8}{'D err %':>9}")
            for name, r in ev["rows"].items():
                if r is None:
                    print(f"{name:<14} missing from the results")
                    continue
                print(f"{name:<14}{r['kind']:<8}{r['volume_ml_true']:10.1f}{r['volume_ml']:8.1f}{r['model']:>17}"
                      f"{r['tia_err_pct']:11.2f}{r['dose_true_gy']:11.3f}{r['dose_gy']:8.3f}{r['dose_err_pct']:9.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
