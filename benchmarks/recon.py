"""Benchmark of the quantitative reconstruction on simulated Lu-177 data (LuDosimetryLib.recon).

Simulates an abdomen (body, liver, kidneys, spleen and spherical lesions of several volumes) on a 2×
finer grid than the projections (phantom.projections.write_projection_series), writes a 128² μ-map, reconstructs
with OSEM (and optionally BSREM) and prints, per iteration: activity recovered in each organ vs truth,
lesion recovery coefficients (mean concentration / true concentration) vs volume, liver coefficient of
variation (noise), and seconds per iteration. ``--timing`` also times one OSEM subset at the clinical
128² and 256² sizes (120 views) and extrapolates seconds per iteration.

Usage::

    python benchmarks/recon.py [--matrix 48] [--pixel 8] [--views 32] [--iterations 8] [--subsets 4]
                               [--bsrem] [--timing]
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from scipy.ndimage import binary_dilation

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from LuDosimetryLib.io.dicom_common import PatientInfo, StudyInfo  # noqa: E402
from LuDosimetryLib.io.images import resample_to  # noqa: E402
from LuDosimetryLib.recon.mumap import read_mumap, write_mumap_series  # noqa: E402
from LuDosimetryLib.recon.projections import read_projections  # noqa: E402
from LuDosimetryLib.recon.reconstruct import ReconOptions, reconstruct_projections  # noqa: E402
from LuDosimetryLib.phantom.projections import write_projection_series  # noqa: E402

ACQ = datetime(2024, 3, 5, 10, 0)
INJ = datetime(2024, 3, 4, 10, 0)


def abdomen(spacing_mm: float, half_fov_mm: float, half_z_mm: float):
    """Activity (Bq/mL at 24 h after 7.4 GBq, illustrative), μ (1/mm) and masks on a fine grid."""
    n = int(round(2 * half_fov_mm / spacing_mm))
    nz = int(round(2 * half_z_mm / spacing_mm))
    z, y, x = np.mgrid[:nz, :n, :n].astype(np.float32)
    X = (x - (n - 1) / 2) * spacing_mm
    Y = (y - (n - 1) / 2) * spacing_mm
    Z = (z - (nz - 1) / 2) * spacing_mm
    ell = lambda cx, cy, cz, a, b, c: ((X - cx) / a) ** 2 + ((Y - cy) / b) ** 2 + ((Z - cz) / c) ** 2 <= 1  # noqa
    body = (((X / 160) ** 2 + (Y / 110) ** 2) <= 1) & (np.abs(Z) < half_z_mm - 10)
    masks = {
        "liver": ell(-60, -10, 20, 75, 60, 60) & body,
        "spleen": ell(85, 20, 30, 35, 30, 45) & body,
        "kidney_left": ell(65, 55, -30, 25, 22, 45) & body,
        "kidney_right": ell(-60, 55, -35, 25, 22, 45) & body,
    }
    lesions = {}
    for i, (r, cx, cy, cz) in enumerate([(20, -60, -30, 10), (14, -20, -50, 40), (10, 20, -60, -20), (7, 0, 0, 0)]):
        m = ell(cx, cy, cz, r, r, r)
        lesions[f"lesion_r{r}mm"] = m
    any_lesion = np.zeros_like(body)
    for m in lesions.values():
        any_lesion |= m
    masks = {k: m & ~any_lesion for k, m in masks.items()}
    act = np.where(body, 2000.0, 0.0).astype(np.float32)  # Bq/mL background
    conc = {"liver": 15000.0, "spleen": 25000.0, "kidney_left": 35000.0, "kidney_right": 35000.0}
    for k, m in masks.items():
        act[m] = conc[k]
    for k, m in lesions.items():
        act[m] = 150000.0
        conc[k] = 150000.0
    masks.update(lesions)
    mu = np.where(body, 0.0135, 0.0).astype(np.float32)  # water at 208 keV (1/mm)
    spine = ell(0, 75, 0, 18, 18, 400) & body
    mu[spine] = 0.0247 * 0.6 + 0.0135 * 0.4  # trabecular bone-ish

    def img(a):
        im = sitk.GetImageFromArray(a)
        im.SetSpacing((spacing_mm,) * 3)
        im.SetOrigin((-(n - 1) / 2 * spacing_mm, -(n - 1) / 2 * spacing_mm, -(nz - 1) / 2 * spacing_mm))
        return im

    return img(act), img(mu), masks, conc


def organ_table(image, act, masks, conc):
    vml = float(np.prod(image.GetSpacing())) / 1000.0
    arr = sitk.GetArrayFromImage(image)
    out = {}
    for k, m in masks.items():
        mk = sitk.GetImageFromArray(m.astype(np.float32))
        mk.CopyInformation(act)
        frac = sitk.GetArrayFromImage(resample_to(mk, image))
        truth = float((sitk.GetArrayFromImage(act) * m).sum() * np.prod(act.GetSpacing()) / 1000.0)
        total = float((arr * frac).sum() * vml)
        inner = frac > 0.99
        mean_inner = float(arr[inner].mean()) if inner.any() else float("nan")
        cov = float(arr[inner].std() / arr[inner].mean()) if inner.sum() > 5 else float("nan")
        dil = binary_dilation(frac > 0.5, iterations=1)
        out[k] = (truth, total, mean_inner / conc[k], cov, m.sum() * np.prod(act.GetSpacing()) / 1000.0,
                  float(arr[dil].sum() * vml))
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--matrix", type=int, default=48)
    ap.add_argument("--pixel", type=float, default=8.0, help="projection pixel (mm)")
    ap.add_argument("--views", type=int, default=32)
    ap.add_argument("--iterations", type=int, default=8)
    ap.add_argument("--subsets", type=int, default=4)
    ap.add_argument("--duration", type=float, default=1200.0)
    ap.add_argument("--bsrem", action="store_true")
    ap.add_argument("--timing", action="store_true", help="also time 128^2 and 256^2 with 120 views")
    args = ap.parse_args(argv)
    half = args.matrix * args.pixel / 2
    fine = args.pixel / 2
    act, mu, masks, conc = abdomen(fine, min(half, 200.0), min(half, 120.0))
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        st = StudyInfo(study_instance_uid="1.2.826.0.1.3680043.2.1125.99.1")
        paths = write_projection_series(Path(tmp) / "proj", act, mu, acquisition_datetime=ACQ,
                                        duration_s=args.duration, injected_activity_bq=7.4e9, injection_datetime=INJ,
                                        patient=PatientInfo(), study=st, series_description="bench",
                                        forms=("unaltered",), n_views=args.views, matrix=args.matrix,
                                        pixel_mm=args.pixel, seed=1)
        mm = write_mumap_series(Path(tmp) / "mu", mu, 128, PatientInfo(), st, "CTAC µ-map", None)
        print(f"simulation: {time.perf_counter() - t0:.1f} s ({args.views} views, {args.matrix}² × "
              f"{args.pixel} mm, object {act.GetSize()} at {fine} mm)")
        series = read_projections(paths[0])
        mu_img = read_mumap([str(p) for p in mm])
        algos = ["osem"] + (["bsrem"] if args.bsrem else [])
        for alg in algos:
            opts = ReconOptions(algorithm=alg, iterations=args.iterations, subsets=args.subsets)
            print(f"\n== {opts.describe()} on {series.geometry.object_shape()} ==")

            def cb(it, image):
                tab = organ_table(image, act, masks, conc)
                organs = "  ".join(f"{k} {v[1] / v[0]:.3f}" for k, v in tab.items() if not k.startswith("lesion"))
                rcs = "  ".join(f"{k}({v[4]:.1f} mL) RC {v[2]:.2f}" for k, v in tab.items() if k.startswith("lesion"))
                print(f"it {it:2d}: activity/truth {organs} | liver CoV {tab['liver'][3]:.3f} | {rcs}", flush=True)

            res = reconstruct_projections(series, mu_img, opts, callback=cb)
            print("seconds per iteration:", " ".join(f"{t:.1f}" for t in res.seconds_per_iteration))
            # partial-volume check: the VOI dilated by one voxel (includes 2000 Bq/mL background spill-in)
            tab = organ_table(res.image, act, masks, conc)
            arr = sitk.GetArrayFromImage(res.image)
            true_total = float(sitk.GetArrayFromImage(act).sum() * np.prod(act.GetSpacing()) / 1000.0)
            print(f"total activity in the field of view / truth "
                  f"{arr.sum() * np.prod(res.image.GetSpacing()) / 1000.0 / true_total:.3f}")
            print("organ activity in VOI / truth -> VOI dilated by 1 voxel / truth: " + "  ".join(
                f"{k} {v[1] / v[0]:.3f} -> {v[5] / v[0]:.3f}" for k, v in tab.items() if not k.startswith("lesion")))
    if args.timing:
        time_clinical()


def time_clinical(conv_at_128: bool = True):
    """One OSEM subset (15 of 120 views) at 128² (4.8 mm) and 256² (2.4 mm), 387 mm axial FOV.

    The PSF is applied by FFT (``GaussianPSFOperator``, the default of ``build_system_matrix``); at 128²
    PyTomography's own direct convolution is timed too.
    """
    from LuDosimetryLib.recon.backend import pytomography_session
    from LuDosimetryLib.recon.system import ProjectionGeometry, build_system_matrix

    print("\n== clinical sizes, 120 views, attenuation + PSF, OSEM 8 subsets (torch threads: "
          f"{_threads()}) ==")
    cases = [(128, 4.8, True)] + ([(128, 4.8, False)] if conv_at_128 else []) + [(256, 2.4, True)]
    for m, p, fft in cases:
        rows = int(387 / p)
        geom = ProjectionGeometry(n_cols=m, n_rows=rows, pixel_mm=p, slice_mm=p,
                                  gantry_angles_deg=np.arange(120) * 3.0, radii_mm=np.full(120, 250.0),
                                  x0_mm=-(m - 1) / 2 * p, y0_mm=-(m - 1) / 2 * p, z_row0_mm=(rows - 1) / 2 * p)
        with pytomography_session("cpu") as ns:
            torch = ns.torch
            mu = np.full(geom.object_shape(), 0.135, np.float32)
            system = build_system_matrix(ns, geom, mu, psf=True, psf_by_fft=fft)
            system.set_n_subsets(8)
            obj = torch.ones(geom.object_shape())
            system.forward(obj, 1)  # warm-up (FFT plans, kernels)
            t = time.perf_counter()
            fp = system.forward(obj, 0)
            t_fp = time.perf_counter() - t
            t = time.perf_counter()
            system.backward(fp, 0)
            t_bp = time.perf_counter() - t
        per_it = (t_fp + t_bp) * 8
        print(f"{m}² × {rows} rows, PSF by {'FFT' if fft else 'PyTomography conv1d'}: one 15-view subset forward "
              f"{t_fp:.1f} s + back {t_bp:.1f} s -> ≈ {per_it:.0f} s per OSEM iteration (120 views), plus H^T 1 "
              f"(one back projection of all views) once", flush=True)


def _threads() -> int:
    import torch

    return torch.get_num_threads()


if __name__ == "__main__":
    main()
