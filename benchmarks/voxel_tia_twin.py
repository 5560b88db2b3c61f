#!/usr/bin/env python3
"""Voxel-level TIA map on the digital twin: per-VOI integral vs truth, voxel-by-voxel vs the collection-style map.

``run_study(twin, RunOptions(registration=..., tia_map="voxel"))`` registers every time point to time
point 1 (CT–CT, refined per VOI on SPECT), carries the SPECT images to the scan-1 grid (with the
deformation's Jacobian) and fits every body voxel (:func:`LuDosimetryLib.kinetics.voxel.voxel_tia_map`).
The twin's work 5 (``TIA/``, read with :func:`LuDosimetryLib.io.images.read_image_series`) is the
collection's form of the same thing: time points rigidly aligned with the *known* rigid motion
(the breathing deformation left as a residual), MIM-style voxel integration
(:mod:`LuDosimetryLib.phantom.voxel_tia`), Bq·s/mL on the scan-1 SPECT grid. ``truth_tia.nrrd`` is the true
TIA per mL in the scan-1 pose (not blurred); "truth ⊛ PSF" is it blurred by the simulated PSF
(``truth.json`` ``simulation.fwhm_mm``), the map a perfect registration and a perfect fit of the blurred
images would give.

Printed, per registration kind:

- per VOI (scan-1 contours on the SPECT grid, ≥ half covered): Σ map × voxel volume of our map, of the
  work-5 map and of the true map, each vs the true VOI TIA of ``truth.json`` (no partial-volume
  correction in any map: spill-out lowers the small VOIs);
- voxel by voxel, in the body (CT density > 0.5 g/mL, the voxels the pipeline fits) and in each organ: the
  relative difference ``ours/reference − 1`` (median, median of |·|, 95th percentile of |·|) with the
  work-5 map, the truth ⊛ PSF and the unblurred truth as references, and the same for the work-5 map;
- seconds: the whole ``run_study`` and ``voxel_tia_map`` alone on the registered images (threads: as
  the library chooses, the CPU cores available up to 8).

Usage: python benchmarks/voxel_tia_twin.py [--preset patient4|patient6] [--fast] [--seed N] [--twin DIR]
[--registration rigid|deformable|both]
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Dict

import numpy as np
import SimpleITK as sitk
from scipy.ndimage import gaussian_filter

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from LuDosimetryLib.io.images import read_image_series, read_spect  # noqa: E402
from LuDosimetryLib.kinetics.voxel import voxel_tia_map  # noqa: E402
from LuDosimetryLib.phantom import write_twin  # noqa: E402
from LuDosimetryLib.pipeline import RunOptions, _masks_for_time_point, run_study  # noqa: E402


def reference_masks(res) -> Dict[str, np.ndarray]:
    """Scan-1 VOI masks (bool, z,y,x) on the reference SPECT grid, rasterised as ``run_study`` does."""
    inv = res.inventory
    entry = inv.get(res.time_points[res.reference_index].spect_series_uid)
    sp = read_spect(entry.files, injection_time=inv.injection_time)
    masks, _ = _masks_for_time_point(inv, res.reference_index, sp, 3)
    return {k: v >= 0.5 for k, v in masks.items()}


def rel_stats(ours: np.ndarray, ref: np.ndarray, where: np.ndarray) -> str:
    """'median  median|.|  p95|.|' of ours/ref − 1 (%) over ``where`` with ref > 0."""
    sel = where & (ref > 0)
    if not sel.any():
        return f"{'-':>7s} {'-':>7s} {'-':>7s}"
    d = 100.0 * (ours[sel] / ref[sel] - 1.0)
    a = np.abs(d)
    return f"{np.median(d):7.1f} {np.median(a):7.1f} {np.percentile(a, 95):7.1f}"


def images_on_reference(res, root: Path):
    """Every time point's SPECT (Bq/mL) on the reference grid through ``res.registrations`` (as the pipeline)."""
    inv = res.inventory
    ref_img = res.reference_spect
    out = []
    for i, tp in enumerate(res.time_points):
        if i == res.reference_index:
            out.append(ref_img)
            continue
        sp = read_spect(inv.get(tp.spect_series_uid).files, injection_time=inv.injection_time)
        out.append(res.registrations[i].apply_to_image(sp.image, ref_img, jacobian=True))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="patient4")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--fast", action="store_true")
    ap.add_argument("--twin", default=None, help="patient folder of a twin already written")
    ap.add_argument("--registration", default="both", choices=("rigid", "deformable", "both"))
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    if args.twin:
        root = Path(args.twin)
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            root = write_twin(Path(tempfile.mkdtemp(prefix="twin_vox_")), preset=args.preset, seed=args.seed,
                              fast=args.fast, projections=False)
    truth = json.loads((root / "truth.json").read_text())
    sim = truth["simulation"]
    print(f"twin {truth['preset']} fast={sim['fast']} seed={sim['seed']}: SPECT {sim['spect_size']} voxels of "
          f"{sim['spect_spacing_mm'][0]:.2f} mm; {os.cpu_count()} CPU cores")
    work5 = read_image_series(sorted(str(p) for p in (root / "TIA").glob("*.dcm")), what="work-5 TIA map")
    w5 = sitk.GetArrayFromImage(work5.image).astype(np.float64)
    true_img = sitk.ReadImage(str(root / "truth_tia.nrrd"))
    true_map = sitk.GetArrayFromImage(true_img).astype(np.float64)
    sigma = [float(sim["fwhm_mm"]) / (2.0 * math.sqrt(2.0 * math.log(2.0))) / s
             for s in true_img.GetSpacing()[::-1]]
    true_blur = gaussian_filter(true_map, sigma, mode="nearest", truncate=3.0)
    print(f"work-5 map: units {work5.units!r}, grid {work5.image.GetSize()}")
    kinds = ("rigid", "deformable") if args.registration == "both" else (args.registration,)
    for kind in kinds:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            t1 = time.perf_counter()
            res = run_study(root, RunOptions(registration=kind, tia_map="voxel", dose_method="ldm"))
            run_s = time.perf_counter() - t1
            on_ref = images_on_reference(res, root)
        body = sitk.GetArrayFromImage(res.density_g_per_ml) > 0.5
        hours = [tp.hours_post_injection for tp in res.time_points]
        t2 = time.perf_counter()
        _img, _codes, info = voxel_tia_map(on_ref, hours, models=("mono_exponential", "bi_exponential"), mask=body)
        fit_s = time.perf_counter() - t2
        ours = sitk.GetArrayFromImage(res.tia_bq_s_per_ml).astype(np.float64)
        ref = res.reference_spect
        if ours.shape != w5.shape or not np.allclose(ref.GetOrigin(), work5.image.GetOrigin(), atol=1e-3):
            print(f"grids differ: ours {ref.GetSize()} at {ref.GetOrigin()}, work 5 {work5.image.GetSize()} at "
                  f"{work5.image.GetOrigin()}")
            return 1
        vml = float(np.prod(ref.GetSpacing())) / 1000.0
        masks = reference_masks(res)
        print(f"\n### registration {kind}: run_study {run_s:.1f} s; voxel_tia_map alone {fit_s:.2f} s on "
              f"{info['fitted_voxels']} fitted of {body.sum()} body voxels ({ours.size} in the grid), "
              f"workers {info.get('workers')}, models {info.get('voxels')}")
        print("per VOI: map integral over the scan-1 VOI vs the true VOI TIA (truth.json), %")
        print(f"{'VOI':9s} {'true GBq.h':>10s} {'ours %':>8s} {'work-5 %':>9s} {'truth map %':>11s} "
              f"{'VOI fit %':>9s}")
        for name, m in masks.items():
            t = truth["vois"][name]["tia_bq_s"]

            def err(arr):
                return 100.0 * (float(arr[m].sum()) * vml / t - 1.0)
            fit_err = 100.0 * (res.vois[name].tia_bq_s / t - 1.0)
            print(f"{name:9s} {t / 3.6e12:10.3f} {err(ours):8.2f} {err(w5):9.2f} {err(true_map):11.2f} {fit_err:9.2f}")
        print("voxel by voxel: relative difference a/b - 1 (%): median, median |.|, 95th percentile |.|")
        regions = {"body": body}
        regions.update({n: m for n, m in masks.items() if truth["vois"][n]["kind"] == "organ"})
        pairs = (("ours vs work-5", ours, w5), ("ours vs truth*PSF", ours, true_blur),
                 ("ours vs truth", ours, true_map), ("work-5 vs truth*PSF", w5, true_blur),
                 ("work-5 vs truth", w5, true_map))
        print(f"{'region':9s} {'voxels':>6s} " + " ".join(f"{p[0]:>23s}" for p in pairs))
        for rname, where in regions.items():
            print(f"{rname:9s} {int(where.sum()):6d} " + " ".join(f"{rel_stats(a, b, where):>23s}" for _, a, b in pairs))
    print(f"\ntotal {time.perf_counter() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
