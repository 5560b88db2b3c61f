#!/usr/bin/env python3
"""Seconds per OSEM iteration of the PyTomography system model LuDosimetry reconstructs with, at the
clinical sizes: 128² (4.8 mm) and 256² (2.4 mm), 120 views, 387 mm axial FOV, attenuation + Siemens ME
collimator-detector response at 208 keV, 8 subsets — on the CPU and, when present, a CUDA GPU.

Stand-alone on purpose (torch + PyTomography only, the same object/projection metadata and transforms as
``LuDosimetryLib.recon.system.build_system_matrix``), so that it also runs on a GPU machine that has
neither SimpleITK nor the rest of the stack. One subset is timed (after a warm-up) and scaled to an
iteration (8 subsets) — the projector cost is linear in the number of views.

Usage: python benchmarks/recon_timing.py [--sizes 128,256] [--devices cpu,cuda] [--views 120]
"""
from __future__ import annotations

import argparse
import contextlib
import io
import os
import sys
import time


def time_one(torch, ns, m: int, pixel_mm: float, views: int, device: str, subsets: int = 8) -> dict:
    rows = int(round(387.0 / pixel_mm))
    dr_cm = (pixel_mm / 10.0, pixel_mm / 10.0, pixel_mm / 10.0)
    object_meta = ns["SPECTObjectMeta"](dr_cm, (m, m, rows))
    angles = [float(a) for a in (torch.arange(views) * (360.0 / views)).tolist()]
    radii = [25.0] * views  # cm
    proj_meta = ns["SPECTProjMeta"]((m, rows), (dr_cm[0], dr_cm[2]), angles, radii)
    mu = torch.full((m, m, rows), 0.135, device=device)  # water at 208 keV (1/cm)
    with contextlib.redirect_stdout(io.StringIO()):
        psf_meta = ns["dicom"].get_psfmeta_from_scanner_params("SY-ME", 208.0, intrinsic_resolution_140keV=0.38)
    transforms = [ns["SPECTAttenuationTransform"](attenuation_map=mu), ns["SPECTPSFTransform"](psf_meta)]
    system = ns["SPECTSystemMatrix"](obj2obj_transforms=transforms, proj2proj_transforms=[],
                                     object_meta=object_meta, proj_meta=proj_meta)
    system.set_n_subsets(subsets)
    obj = torch.ones((m, m, rows), device=device)

    def sync():
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    fp = system.forward(obj, 0)  # warm-up (kernels, PSF kernels)
    system.backward(fp, 0)
    sync()
    t0 = time.perf_counter()
    fp = system.forward(obj, 1)
    sync()
    t_fp = time.perf_counter() - t0
    t0 = time.perf_counter()
    system.backward(fp, 1)
    sync()
    t_bp = time.perf_counter() - t0
    return {"rows": rows, "fp": t_fp, "bp": t_bp, "iteration": (t_fp + t_bp) * subsets}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="128,256")
    ap.add_argument("--devices", default="cpu,cuda")
    ap.add_argument("--views", type=int, default=120)
    args = ap.parse_args(argv)
    import torch
    with contextlib.redirect_stdout(io.StringIO()):
        import pytomography  # noqa: F401  (prints a banner and silences warnings on import)
        from pytomography.io.SPECT import dicom
        from pytomography.metadata.SPECT import SPECTObjectMeta, SPECTProjMeta
        from pytomography.projectors.SPECT import SPECTSystemMatrix
        from pytomography.transforms.SPECT import SPECTAttenuationTransform, SPECTPSFTransform
    ns = dict(dicom=dicom, SPECTObjectMeta=SPECTObjectMeta, SPECTProjMeta=SPECTProjMeta,
              SPECTSystemMatrix=SPECTSystemMatrix, SPECTAttenuationTransform=SPECTAttenuationTransform,
              SPECTPSFTransform=SPECTPSFTransform)
    print(f"# PyTomography OSEM iteration cost, {args.views} views, 8 subsets, attenuation + SY-ME PSF at 208 keV")
    print(f"torch {torch.__version__}, {os.cpu_count()} CPU cores, torch threads {torch.get_num_threads()}, "
          f"CUDA: {torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'none'}")
    print(f"{'device':<8}{'matrix':>8}{'rows':>6}{'fwd s/subset':>14}{'back s/subset':>15}{'s/iteration':>13}")
    for device in args.devices.split(","):
        if device == "cuda" and not torch.cuda.is_available():
            continue
        import pytomography
        pytomography.device = torch.device(device)
        for m in (int(v) for v in args.sizes.split(",")):
            pixel = 4.8 * 128 / m
            r = time_one(torch, ns, m, pixel, args.views, device)
            print(f"{device:<8}{m:>7}²{r['rows']:>6}{r['fp']:>14.2f}{r['bp']:>15.2f}{r['iteration']:>13.1f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
