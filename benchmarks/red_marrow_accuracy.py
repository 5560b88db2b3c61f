"""Red-marrow accuracy (#14): image-based (L2–L4 from the CT) and blood-based TIA and mean dose against the twin's truth.

Usage: ``python benchmarks/red_marrow_accuracy.py [--presets patient4 patient6] [--seed N] [--full] [--out DIR]``.
Writes each twin (fast by default: 9.6 mm SPECT voxels, 9.6 mm CT slices; ``--full`` for the 4.8 mm twin),
runs ``run_study`` with the twin's blood samples (``Blood/blood_samples.csv``) and prints, per preset, the
red-marrow TIA of each method and the mean dose against ``truth.json["red_marrow"]`` (target: within 20 %).

What the twin measures (``LuDosimetryLib/phantom/marrow_truth.py``): its marrow is the ICRP 89 mass at the
blood's concentration; the blood is its remainder tissue (fast + slow clearance), sampled 8 times with 3 % noise;
its vertebral bodies carry the same concentration in the images, their size about the ICRP/Cristy L2–L4 share.
The dose truth applies the same S-values to the true TIAs, so the dose error is the TIA chain's (marrow TIA,
remainder and whole-body TIAs from the planar images), not the S-values'.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from LuDosimetryLib.phantom import write_twin  # noqa: E402
from LuDosimetryLib.pipeline import RunOptions, run_study  # noqa: E402

TARGET_PCT = 20.0


def _pct(value, truth) -> float:
    return 100.0 * (value / truth - 1.0)


def run_preset(preset: str, seed: int, fast: bool, out: Path) -> dict:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        root = Path(write_twin(out / preset, preset=preset, seed=seed, fast=fast, projections=False))
        # both methods (auto: blood with the samples, image-based beside it); the run's default is no marrow
        res = run_study(root, RunOptions(blood_samples=str(root / "Blood" / "blood_samples.csv"),
                                         marrow_method="auto"))
    truth = json.loads((root / "truth.json").read_text())["red_marrow"]
    rm = res.red_marrow
    return {"preset": preset, "truth_tia": truth["tia_bq_s"], "truth_dose": truth["mean_dose_gy"],
            "blood_tia": rm["blood_based"]["tia_bq_s"], "image_tia": rm["image_based"]["tia_bq_s"],
            "dose": rm["mean_dose_gy"], "method": rm["method"], "voi_ml": rm["image_based"]["voi_volume_ml"],
            "fraction": rm["image_based"]["fraction_of_red_marrow"], "image_fit": rm["image_based"]["fit_model"],
            "blood_fit": rm["blood_based"]["fit_model"], "self": rm["self_dose_gy"],
            "cross_rb": rm["cross_dose_remainder_gy"], "cross_vois": rm["cross_dose_organs_gy"],
            "truth_self": truth["self_dose_gy"], "truth_cross_rb": truth["cross_dose_remainder_gy"],
            "truth_cross_vois": truth["cross_dose_organs_gy"]}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--presets", nargs="+", default=["patient4", "patient6"])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--full", action="store_true", help="the full-resolution twin (slower)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    out = Path(args.out or tempfile.mkdtemp(prefix="red_marrow_acc_"))
    print(f"twins in {out} ({'full' if args.full else 'fast'} resolution), seed {args.seed}")
    print(f"{'preset':9} {'truth TIA MBq·h':>15} {'blood %':>8} {'image %':>8} {'dose Gy':>8} {'truth Gy':>8} "
          f"{'dose %':>7}  L2-L4 VOI mL, fraction, fits; dose parts (self / RB / VOIs) run vs truth")
    worst = 0.0
    for preset in args.presets:
        t0 = time.perf_counter()
        r = run_preset(preset, args.seed, not args.full, out)
        errs = (_pct(r["blood_tia"], r["truth_tia"]), _pct(r["image_tia"], r["truth_tia"]),
                _pct(r["dose"], r["truth_dose"]))
        worst = max(worst, *(abs(e) for e in errs))
        print(f"{preset:9} {r['truth_tia'] / 3.6e9:15.1f} {errs[0]:+8.1f} {errs[1]:+8.1f} {r['dose']:8.4f} "
              f"{r['truth_dose']:8.4f} {errs[2]:+7.1f}  {r['voi_ml']:.1f} mL, {100 * r['fraction']:.2f} %, "
              f"{r['image_fit']} / {r['blood_fit']}; {r['self']:.4f}/{r['cross_rb']:.4f}/{r['cross_vois']:.4f} vs "
              f"{r['truth_self']:.4f}/{r['truth_cross_rb']:.4f}/{r['truth_cross_vois']:.4f} "
              f"({time.perf_counter() - t0:.0f} s)")
    print(f"largest |error| {worst:.1f} % (target {TARGET_PCT:g} %): {'met' if worst <= TARGET_PCT else 'NOT met'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
