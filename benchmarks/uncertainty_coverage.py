#!/usr/bin/env python3
"""Is the reported random TIA uncertainty calibrated? Coverage on the synthetic patient through the real pipeline.

The synthetic patient (:func:`LuDosimetryLib.phantom.write_synthetic_patient`) is written once without noise
and N times with Poisson noise (seeds 1..N; counts C·V·S·T per SPECT voxel, S = 10 cps/MBq, T = 1200 s: a
realistic count level for a dual-head camera). Each is a real ``run_study`` with the default options. For every
VOI × noise realisation the TIA's difference from the noise-free run's is compared with the noisy run's own
``tia_random_uncertainty_pct`` (counting and fit: the parts that change from one realisation to the next).

Printed: per VOI the median reported random u, the observed spread (RMS of the relative differences from the
noise-free TIA) and their ratio, the share of realisations whose difference lies within ±1u and ±2u; then the
same over all VOI × realisation pairs. Calibrated (issue #13): ±2u covers ≥ 90 %, ±1u roughly 68 %, and the
median of the per-VOI ratios reported u / observed spread lies in [0.7, 1.5].

Usage: python benchmarks/uncertainty_coverage.py [--realisations N] [--fast] [--dir DIR]
(``--fast``: the coarse 9.6 mm grid, seconds per run; default: the full 4.8 mm grid, ~25 s per realisation).
"""
from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from LuDosimetryLib.phantom import write_synthetic_patient  # noqa: E402
from LuDosimetryLib.pipeline import RunOptions, run_study  # noqa: E402


def _run(study: Path) -> dict:
    """``{VOI: (TIA Bq·s, random u %, fit model)}`` of a default run."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        results = run_study(study, RunOptions())
    return {name: (v.tia_bq_s, v.tia_random_uncertainty_pct, v.fit_model) for name, v in results.vois.items()}


def coverage_table(reference: dict, noisy: list) -> dict:
    """Per VOI and overall: median reported u (%), observed spread (%), ratio, coverage within ±1u and ±2u.

    Parameters
    ----------
    reference : dict VOI → (TIA, u %, model)
        The noise-free run.
    noisy : list of dict VOI → (TIA, u %, model)
        One per noise realisation.
    """
    rows, z_all, ratios = {}, [], []
    for name, (tia_ref, _, model_ref) in reference.items():
        diff = np.array([100.0 * (run[name][0] / tia_ref - 1.0) for run in noisy])
        u = np.array([run[name][1] for run in noisy])
        z = diff / u
        spread = float(np.sqrt(np.mean(diff ** 2)))
        ratio = float(np.median(u)) / spread if spread > 0 else float("inf")
        switched = sum(run[name][2] != model_ref for run in noisy)
        rows[name] = dict(u=float(np.median(u)), spread=spread, ratio=ratio, within1=float(np.mean(np.abs(z) <= 1)),
                          within2=float(np.mean(np.abs(z) <= 2)), switched=switched)
        z_all.extend(z.tolist())
        ratios.append(ratio)
    z_all = np.abs(np.array(z_all))
    rows["all"] = dict(u=float("nan"), spread=float("nan"), ratio=float(np.median(ratios)),
                       within1=float(np.mean(z_all <= 1)), within2=float(np.mean(z_all <= 2)),
                       switched=sum(r["switched"] for r in rows.values()))
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--realisations", type=int, default=20)
    parser.add_argument("--fast", action="store_true", help="coarse grid (9.6 mm voxels)")
    parser.add_argument("--dir", help="working folder (default: a temporary one, removed)")
    args = parser.parse_args(argv)
    work = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="ludo_coverage_"))
    work.mkdir(parents=True, exist_ok=True)
    start = time.time()
    try:
        reference = _run(write_synthetic_patient(work / "noise_free", seed=0, fast=args.fast, noise=False))
        noisy = []
        for seed in range(1, args.realisations + 1):
            study = write_synthetic_patient(work / f"seed_{seed}", seed=seed, fast=args.fast, noise=True)
            noisy.append(_run(study))
            shutil.rmtree(study)
            print(f"realisation {seed}/{args.realisations} ({time.time() - start:.0f} s)", file=sys.stderr)
    finally:
        if not args.dir:
            shutil.rmtree(work, ignore_errors=True)
    rows = coverage_table(reference, noisy)
    grid = "fast 9.6 mm" if args.fast else "full 4.8 mm"
    print(f"Random TIA uncertainty vs noise-free run: synthetic patient ({grid} grid), {args.realisations} Poisson "
          f"realisations, default options")
    print(f"{'VOI':10s} {'model':17s} {'median u %':>10s} {'spread %':>9s} {'u/spread':>8s} {'in ±1u':>7s} "
          f"{'in ±2u':>7s} {'model switched':>14s}")
    for name, r in rows.items():
        model = reference[name][2] if name in reference else ""
        print(f"{name:10s} {model:17s} {r['u']:10.3f} {r['spread']:9.3f} {r['ratio']:8.2f} {100 * r['within1']:6.0f}% "
              f"{100 * r['within2']:6.0f}% {r['switched']:14d}")
    ok = rows["all"]["within2"] >= 0.9 and 0.7 <= rows["all"]["ratio"] <= 1.5
    print(f"calibrated (±2u ≥ 90 %, median u/spread in [0.7, 1.5]): {'yes' if ok else 'NO'}; "
          f"{time.time() - start:.0f} s")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
