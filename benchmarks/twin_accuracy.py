"""Accuracy of ``run_study`` on the digital twin: per-VOI TIA and mean dose against ``truth.json``.

Usage: ``python benchmarks/twin_accuracy.py [--preset patient4|patient6] [--seed N] [--fast] [--pvc gtm]
[--out DIR]``. Writes the twin (without projections, which ``run_study`` does not use), runs the pipeline
and prints per-VOI errors. Note: motion between time points is not corrected by the pipeline
(registration is a separate issue); each time point's own contours are what keep the VOI TACs right.
The TIA map of the twin's work 5 (voxel fits of rigidly registered time points) is compared with the
true TIA map per VOI as well.
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
import SimpleITK as sitk

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from LuDosimetryLib.phantom import write_twin  # noqa: E402
from LuDosimetryLib.pipeline import RunOptions, run_study  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="patient4")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--fast", action="store_true")
    ap.add_argument("--pvc", default="gtm", choices=("none", "gtm"))
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    out = Path(args.out or tempfile.mkdtemp(prefix="twin_acc_"))
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        root = write_twin(out, preset=args.preset, seed=args.seed, fast=args.fast, projections=False)
        t1 = time.perf_counter()
        opts = RunOptions(pvc=args.pvc, psf_fwhm_mm=10.0 if args.pvc == "gtm" else None)
        res = run_study(root, opts)
    t2 = time.perf_counter()
    truth = json.loads((root / "truth.json").read_text())
    print(f"twin {args.preset} fast={args.fast} seed={args.seed}: written in {t1 - t0:.1f} s, run_study "
          f"(pvc={args.pvc}) {t2 - t1:.1f} s")
    # Work 5 map vs the true map, per VOI (scan-1 contours on the SPECT grid).
    tia_file = next((root / "TIA").glob("*.dcm"))
    twin_map = sitk.GetArrayFromImage(sitk.ReadImage(str(tia_file))).astype(np.float64)
    true_map = sitk.GetArrayFromImage(sitk.ReadImage(str(root / "truth_tia.nrrd"))).astype(np.float64)
    print(f"{'VOI':10s} {'true TIA MBq.h':>15s} {'run TIA err %':>14s} {'true dose Gy':>13s} "
          f"{'run dose Gy':>12s} {'dose err %':>11s} {'work-5 map/true map in VOI':>27s}")
    for name, t in truth["vois"].items():
        r = res.vois.get(name)
        if r is None:
            print(f"{name:10s} missing from the run")
            continue
        err = 100.0 * (r.tia_bq_s / t["tia_bq_s"] - 1.0)
        derr = 100.0 * (r.mean_dose_gy / t["mean_dose_gy"] - 1.0)
        m = res.time_point_masks[0][name]  # the scan-1 contours on its SPECT grid, as the run used them
        w = float((twin_map * m).sum() / max((true_map * m).sum(), 1e-30)) if m.shape == twin_map.shape else None
        print(f"{name:10s} {t['tia_bq_s'] / 3.6e9:15.1f} {err:14.1f} {t['mean_dose_gy']:13.2f} "
              f"{r.mean_dose_gy:12.2f} {derr:11.1f} {('%.3f' % w) if w else '-':>27s}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
