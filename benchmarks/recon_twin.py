"""Quantitative reconstruction on the digital twin (issue #6): reconstructed activity per VOI vs truth.

Writes the twin (``LuDosimetryLib.phantom.write_twin``; ``--size fast``: 9.6 mm projection pixels,
64², 32 views, simulated from the 4.8 mm twin grid; ``--size full``: 4.8 mm, 128², 120 views from the
2.4 mm grid) or reuses one (``--twin``), reconstructs the unaltered projections of the chosen scans with
OSEM (attenuation from the twin's 128² μ-map, PSF, TEW scatter) and prints, per iteration:

* activity in each organ VOI (the twin's RTSTRUCT rasterised on the reconstruction grid, same frame of
  reference) / truth.json's activity at that time point;
* lesion recovery coefficients (mean concentration in the VOI / true concentration) vs volume;
* liver coefficient of variation (voxels of the liver VOI eroded by one voxel), seconds per iteration;

then, for the last iteration and for the twin's vendor-style SPECT of the same scan, the partial-volume
check: activity in the VOI dilated by 1 and 2 voxels (raw, and with the true remainder concentration
times the added shell volume subtracted), the total activity in the field of view / true total, and
the TEW scatter estimate as a fraction of the photopeak counts (the simulator puts 30 % scatter in the
photopeak). ``--timing`` also times one OSEM subset at 128² and 256² (120 views; see benchmarks/recon.py).

Usage::

    python benchmarks/recon_twin.py [--size fast|full] [--twin PATH] [--out DIR] [--scans 1 [2 ...]]
                                    [--iterations 10] [--subsets 4] [--timing]
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Dict

import numpy as np
import SimpleITK as sitk
from scipy.ndimage import binary_dilation, binary_erosion

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from LuDosimetryLib.io.images import read_spect  # noqa: E402
from LuDosimetryLib.io.rtstruct import read_rtstruct  # noqa: E402
from LuDosimetryLib.recon.energy import identify_windows  # noqa: E402
from LuDosimetryLib.recon.mumap import read_mumap  # noqa: E402
from LuDosimetryLib.recon.projections import read_projections  # noqa: E402
from LuDosimetryLib.recon.reconstruct import ReconOptions, reconstruct_projections  # noqa: E402
from LuDosimetryLib.recon.scatter import energy_window_scatter  # noqa: E402
from LuDosimetryLib.vois import structure_set_masks  # noqa: E402


def voi_masks(root: Path, scan: int, reference: sitk.Image) -> Dict[str, np.ndarray]:
    """Boolean masks (z, y, x) of the scan's organ and lesion RTSTRUCT ROIs on ``reference``'s grid."""
    out = {}
    for folder in ("organs", "lesions"):
        for f in sorted((root / "VOIs" / f"scan{scan}" / folder).glob("*.dcm")):
            ss = read_rtstruct(f)
            for name, m in structure_set_masks(ss, reference).items():
                out[name] = np.asarray(m) >= 0.5
    return out


def truth_at(truth: dict, scan: int):
    """(activity Bq per VOI, volume mL per VOI, remainder Bq/mL, total Bq in the field of view) at a scan."""
    i = scan - 1
    act = {k: v["activity_bq"][i] for k, v in truth["vois"].items()}
    vol = {k: v["volume_ml_per_time_point"][i] for k, v in truth["vois"].items()}
    rem = truth["remainder"]
    rem_conc = rem["activity_bq"][i] / rem["volume_ml"]
    organ_tissues = set()
    for v in truth["vois"].values():
        if v["kind"] == "organ":
            organ_tissues.update(v["tissues"])
    total = rem["activity_bq"][i] + sum(act[k] for k, v in truth["vois"].items() if v["kind"] == "organ")
    total += sum(act[k] for k, v in truth["vois"].items()
                 if v["kind"] != "organ" and not set(v["tissues"]) <= organ_tissues)
    return act, vol, rem_conc, total


def measure(image: sitk.Image, masks, truth: dict, scan: int) -> dict:
    """Per-VOI numbers of one image (Bq/mL) against the truth of ``scan``."""
    arr = sitk.GetArrayFromImage(image).astype(np.float64)
    vml = float(np.prod(image.GetSpacing())) / 1000.0
    act, vol, rem_conc, total = truth_at(truth, scan)
    out = {"total": float(arr.sum() * vml) / total, "vois": {}}
    for name, m in masks.items():
        if name not in act:
            continue
        row = {"kind": truth["vois"][name]["kind"], "ratio": float(arr[m].sum() * vml) / act[name],
               "volume_ml": vol[name], "voi_ml": float(m.sum()) * vml,
               "rc": float(arr[m].mean()) / (act[name] / vol[name]) if m.any() else float("nan")}
        for n in (1, 2):
            d = binary_dilation(m, iterations=n)
            raw = float(arr[d].sum() * vml)
            shell_ml = float((d & ~m).sum()) * vml
            row[f"dil{n}"] = raw / act[name]
            row[f"dil{n}_bg"] = (raw - rem_conc * shell_ml) / act[name]
        if name.lower() == "liver":
            inner = binary_erosion(m, iterations=1)
            row["cov"] = float(arr[inner].std() / arr[inner].mean()) if inner.sum() > 5 else float("nan")
        out["vois"][name] = row
    return out


def iteration_line(it: int, res: dict, seconds: float) -> str:
    organs = "  ".join(f"{k} {v['ratio']:.3f}" for k, v in res["vois"].items() if v["kind"] == "organ")
    lesions = "  ".join(f"{k}({v['volume_ml']:.1f} mL) RC {v['rc']:.2f}" for k, v in res["vois"].items()
                        if v["kind"] != "organ")
    cov = next((v["cov"] for v in res["vois"].values() if "cov" in v), float("nan"))
    return (f"it {it:2d}: activity/truth {organs} | total/true total {res['total']:.3f} | liver CoV {cov:.3f} | "
            f"{lesions} | {seconds:.1f} s")


def pv_table(title: str, res: dict) -> None:
    print(f"\n{title}: total activity in the field of view / truth {res['total']:.3f}")
    print(f"{'VOI':10s} {'true mL':>8s} {'VOI mL':>8s} {'in VOI':>7s} {'+1 vox':>7s} {'+2 vox':>7s} "
          f"{'+1 -bg':>7s} {'+2 -bg':>7s} {'RC mean':>8s}")
    for name, v in res["vois"].items():
        print(f"{name:10s} {v['volume_ml']:8.1f} {v['voi_ml']:8.1f} {v['ratio']:7.3f} {v['dil1']:7.3f} "
              f"{v['dil2']:7.3f} {v['dil1_bg']:7.3f} {v['dil2_bg']:7.3f} {v['rc']:8.3f}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", choices=("fast", "full"), default="fast")
    ap.add_argument("--twin", default=None, help="existing patient folder (skips writing the twin)")
    ap.add_argument("--out", default=None)
    ap.add_argument("--preset", default="patient4")
    ap.add_argument("--scans", type=int, nargs="+", default=[1])
    ap.add_argument("--iterations", type=int, default=10)
    ap.add_argument("--subsets", type=int, default=None, help="default 4 (fast, 32 views) or 8 (full, 120)")
    ap.add_argument("--timing", action="store_true", help="also time 128^2 and 256^2 with 120 views")
    args = ap.parse_args(argv)
    if args.twin:
        root = Path(args.twin)
    else:
        from LuDosimetryLib.phantom import write_twin

        out = Path(args.out or tempfile.mkdtemp(prefix="recon_twin_"))
        t0 = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            root = write_twin(out, preset=args.preset, fast=args.size == "fast")
        print(f"twin {args.preset} ({args.size}) written to {root} in {time.perf_counter() - t0:.1f} s")
    truth = json.loads((root / "truth.json").read_text())
    subsets = args.subsets or (4 if truth["simulation"]["fast"] else 8)
    for scan in args.scans:
        proj = read_projections(next((root / "Projections" / f"scan{scan}" / "unaltered").glob("*.dcm")))
        mu = read_mumap([str(p) for p in sorted((root / "Projections" / f"scan{scan}" / "mumap_f3d").glob("*.dcm"))])
        roles = identify_windows(proj.windows)
        tew = energy_window_scatter(proj.counts, proj.windows, roles, "tew")
        g = proj.geometry
        print(f"\n=== scan {scan}: {proj.description}; {g.n_views} views, {g.n_cols}² x {g.n_rows} rows of "
              f"{g.pixel_mm:.2f} mm; TEW scatter / photopeak counts {tew.sum() / proj.counts[roles.peak].sum():.3f} "
              f"(simulated 0.300) ===")
        masks = voi_masks(root, scan, g.reference_image())
        opts = ReconOptions(iterations=args.iterations, subsets=subsets)
        print(f"OSEM {opts.describe()} on {g.object_shape()} (x, y, z) voxels of {g.pixel_mm:.2f} mm")
        last = {}
        clock = {"t": time.perf_counter()}

        def cb(it, image):
            now = time.perf_counter()
            res = measure(image, masks, truth, scan)
            print(iteration_line(it, res, now - clock["t"]), flush=True)
            last["res"] = res
            clock["t"] = time.perf_counter()

        result = reconstruct_projections(proj, mu, opts, callback=cb)
        print("seconds per iteration (reconstruction only):",
              " ".join(f"{t:.1f}" for t in result.seconds_per_iteration))
        pv_table(f"OSEM {args.iterations} iterations, scan {scan}", last["res"])
        spect_dir = root / "SPECT_Cts" / f"scan{scan}" / "spect"
        from datetime import datetime

        vendor = read_spect([str(p) for p in sorted(spect_dir.glob("*.dcm"))],
                            injection_time=datetime.fromisoformat(truth["injection_time"]))
        vres = measure(vendor.image, voi_masks(root, scan, vendor.image), truth, scan)
        print("\nvendor-style SPECT: " + iteration_line(0, vres, 0.0).split(": ", 1)[1].rsplit(" |", 1)[0])
        pv_table(f"vendor-style SPECT ({vendor.image.GetSpacing()[0]:.2f} mm voxels), scan {scan}", vres)
    if args.timing:
        from recon import time_clinical  # benchmarks/recon.py

        time_clinical()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
