#!/usr/bin/env python3
"""Resolution (FWHM, mm) of LuDosimetry's own reconstructions, measured without any patient truth.

Point-like sources (one fine voxel, 2.4 mm) in a warm water-equivalent body (ellipse 300 × 220 mm) are
simulated through the same chain as the twin (PyTomography projector on a 2× finer grid, attenuation, SY-ME
collimator-detector response, scatter, Poisson noise at a long acquisition so noise does not dominate) and
reconstructed like a study (OSEM with PSF and TEW scatter). A 3D Gaussian + constant is fitted around each
source; the printed FWHM is what ``--pvc gtm --psf-fwhm-mm`` needs for images reconstructed with those
settings (the usual line/point-source measurement, done in simulation).

Usage: python benchmarks/recon_resolution.py [--iterations 12] [--subsets 8] [--views 120] [--matrix 128]
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
from scipy.optimize import least_squares

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from LuDosimetryLib.io.dicom_common import PatientInfo, StudyInfo  # noqa: E402
from LuDosimetryLib.pvc import FWHM_TO_SIGMA  # noqa: E402
from LuDosimetryLib.recon.mumap import read_mumap, write_mumap_series  # noqa: E402
from LuDosimetryLib.recon.projections import read_projections  # noqa: E402
from LuDosimetryLib.recon.reconstruct import ReconOptions, reconstruct_projections  # noqa: E402
from LuDosimetryLib.phantom.projections import write_projection_series  # noqa: E402

ACQ = datetime(2024, 3, 5, 10, 0)
INJ = datetime(2024, 3, 4, 10, 0)
SOURCES_MM = [(0.0, 0.0, 0.0), (80.0, 0.0, 0.0), (0.0, 60.0, 20.0), (-120.0, -30.0, -20.0)]


def phantom(fine_mm: float, matrix: int, pixel_mm: float):
    n = int(round(matrix * pixel_mm / fine_mm))
    nz = int(round(160.0 / fine_mm))
    z, y, x = np.mgrid[:nz, :n, :n].astype(np.float32)
    X = (x - (n - 1) / 2) * fine_mm
    Y = (y - (n - 1) / 2) * fine_mm
    Z = (z - (nz - 1) / 2) * fine_mm
    body = ((X / 150.0) ** 2 + (Y / 110.0) ** 2 <= 1.0) & (np.abs(Z) < 70.0)
    act = np.where(body, 200.0, 0.0).astype(np.float32)  # Bq/mL warm background
    for cx, cy, cz in SOURCES_MM:
        k = (int(round(cz / fine_mm + (nz - 1) / 2)), int(round(cy / fine_mm + (n - 1) / 2)),
             int(round(cx / fine_mm + (n - 1) / 2)))
        act[k] = 2.0e7  # one fine voxel: ≈ 0.28 MBq
    mu = np.where(body, 0.0135, 0.0).astype(np.float32)  # water at 208 keV (1/mm)

    def img(a):
        im = sitk.GetImageFromArray(a)
        im.SetSpacing((fine_mm,) * 3)
        im.SetOrigin((-(n - 1) / 2 * fine_mm, -(n - 1) / 2 * fine_mm, -(nz - 1) / 2 * fine_mm))
        return im

    return img(act), img(mu)


def fit_fwhm(image: sitk.Image, centre_mm, half: int = 5):
    """FWHM (x, y, z) in mm of a 3D Gaussian + constant fitted around ``centre_mm``."""
    arr = sitk.GetArrayFromImage(image).astype(np.float64)
    idx = np.round(image.TransformPhysicalPointToContinuousIndex(centre_mm)).astype(int)  # (x, y, z)
    sl = tuple(slice(max(i - half, 0), i + half + 1) for i in idx[::-1])
    box = arr[sl]
    zz, yy, xx = np.indices(box.shape).astype(np.float64)
    sp = image.GetSpacing()
    peak = np.unravel_index(np.argmax(box), box.shape)

    def model(p):
        a, x0, y0, z0, sx, sy, sz, b = p
        return a * np.exp(-0.5 * (((xx - x0) * sp[0] / sx) ** 2 + ((yy - y0) * sp[1] / sy) ** 2
                                  + ((zz - z0) * sp[2] / sz) ** 2)) + b

    p0 = [box.max() - np.median(box), peak[2], peak[1], peak[0], 4.0, 4.0, 4.0, np.median(box)]
    r = least_squares(lambda p: (model(p) - box).ravel(), p0,
                      bounds=([0, 0, 0, 0, 0.5, 0.5, 0.5, -np.inf], [np.inf, box.shape[2], box.shape[1],
                                                                     box.shape[0], 40, 40, 40, np.inf]))
    return np.abs(r.x[4:7]) / FWHM_TO_SIGMA


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--iterations", type=int, default=12)
    ap.add_argument("--subsets", type=int, default=8)
    ap.add_argument("--views", type=int, default=120)
    ap.add_argument("--matrix", type=int, default=128)
    ap.add_argument("--pixel", type=float, default=4.7952)
    args = ap.parse_args(argv)
    act, mu = phantom(args.pixel / 2, args.matrix, args.pixel)
    st = StudyInfo(study_instance_uid="1.2.826.0.1.3680043.2.1125.99.2")
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        paths = write_projection_series(Path(tmp) / "proj", act, mu, acquisition_datetime=ACQ, duration_s=1.0e5,
                                        injected_activity_bq=7.4e9, injection_datetime=INJ, patient=PatientInfo(),
                                        study=st, series_description="point sources", forms=("unaltered",),
                                        n_views=args.views, matrix=args.matrix, pixel_mm=args.pixel, seed=2)
        mm = write_mumap_series(Path(tmp) / "mu", mu, 128, PatientInfo(), st, "CTAC µ-map", None)
        print(f"# reconstructed resolution: {args.views} views, {args.matrix}² × {args.pixel} mm, simulation "
              f"{time.perf_counter() - t0:.0f} s")
        series = read_projections(paths[0])
        opts = ReconOptions(iterations=args.iterations, subsets=args.subsets)
        fwhms = {}

        def cb(it, image):
            if it in (2, 4, 8, 12, 16, 20, args.iterations):
                fwhms[it] = [fit_fwhm(image, c) for c in SOURCES_MM]

        res = reconstruct_projections(series, read_mumap([str(p) for p in mm]), opts, callback=cb)
    print(f"{opts.describe()}; seconds per iteration {np.mean(res.seconds_per_iteration):.1f}")
    print(f"{'it':>3}  " + "  ".join(f"src {i} ({c[0]:+.0f},{c[1]:+.0f},{c[2]:+.0f}) FWHM x/y/z mm".ljust(34)
                                      for i, c in enumerate(SOURCES_MM)) + "  mean")
    for it in sorted(fwhms):
        cells = [f"{f[0]:5.1f} {f[1]:5.1f} {f[2]:5.1f}".ljust(34) for f in fwhms[it]]
        mean = float(np.mean([np.cbrt(np.prod(f)) for f in fwhms[it]]))
        print(f"{it:>3}  " + "  ".join(cells) + f"  {mean:5.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
