"""Real GE SPECT/CT (issue #17): LuDosimetry's reconstruction vs PyTomography's own GE pipeline, same data.

The data: the public (MIT) sample of ``PyTomography/slicer_spect_recon`` — a Lu-177 SPECT/CT on a GE
Discovery 670 Pro (MEGP collimator, 2 beds × 60 views × 6 energy windows, 128², 4.4196 mm, 25 s per view)
with its GE Optima CT540 CT (303 slices): ``SlicerSPECTRecon/Resources/DICOM/NM.zip`` (commit 4e678ee) and
``SlicerSPECTRecon/Resources/DICOM/CT/`` (commit 79e0c62). It is NOT in this repository; unpack it anywhere
as ``DIR/NM/bed1_projections.dcm``, ``DIR/NM/bed2_projections.dcm`` and ``DIR/CT/*.dcm`` and pass ``DIR``
(``--data`` or the environment variable ``LUDOSIMETRY_GE_DATA``). Without it the script says so and exits 0.

Both reconstructions use the same settings: OSEM 4 iterations × 10 subsets, CT attenuation, Gaussian
PSF of the GE MEGP collimator (PyTomography table code GI-MEGP) at 208 keV with 3.8 mm intrinsic FWHM
at 140 keV, TEW scatter from the 166.89-186.31 and 229.63-251.16 keV windows around the 187.2-228.8 keV
photopeak, the two beds stitched.

* **LuDosimetry**: ``reconstruct_study`` on a study folder holding the NM and CT files (what
  ``ludosimetry reconstruct DIR --out OUT --algorithm osem --iterations 4 --subsets 10 --scatter tew
  --calibration-cps-per-mbq 10`` does). When it writes several series (one per bed) they are joined
  with its ``stitch_beds`` for the comparison.
* **PyTomography 3.4's own pipeline** (``pytomography.io.SPECT.dicom``): ``get_metadata``,
  ``load_multibed_projections``, ``get_energy_window_scatter_estimate_projections`` (TEW, no smoothing:
  its default), ``get_attenuation_map_from_CT_slices`` (its HU→μ table), ``get_psfmeta_from_scanner_params``,
  ``OSEM``, ``stitch_multibed``. Its counts are turned into Bq/mL with the same calibration
  (:func:`LuDosimetryLib.recon.quantify.counts_to_bq_per_ml`), so only the reconstructions differ.

Printed: LuDosimetry's image resampled (linear) onto PyTomography's stitched grid; total activity
ratio (target within 5 %), Pearson r of the axial activity profiles (sum per slice; target ≥ 0.99),
distance between the activity centroids (target ≤ 3 mm), the per-axis centroid offsets, wall time.

``--identity`` also reconstructs the beds with LuDosimetry's reconstruction (its projection reading, bed
filling and stitching) but PyTomography's two modelling choices where they differ: its HU→μ table
instead of LuDosimetry's bilinear XCOM model, and an unsmoothed TEW estimate instead of a 1-pixel
Gaussian. The result should equal PyTomography's to float rounding, which isolates the differences of
the default run as those two choices.

Usage::

    python benchmarks/ge_real_recon.py [--data DIR] [--calibration 10] [--keep OUT] [--identity]
"""
from __future__ import annotations

import argparse
import contextlib
import io
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import SimpleITK as sitk

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from LuDosimetryLib.io.images import read_spect, resample_to  # noqa: E402
from LuDosimetryLib.options import ReconOptions  # noqa: E402
from LuDosimetryLib.recon.quantify import counts_to_bq_per_ml  # noqa: E402
from LuDosimetryLib.recon.reconstruct import reconstruct_study, stitch_beds  # noqa: E402

ITERATIONS, SUBSETS = 4, 10
#: Indices (EnergyWindowInformationSequence order) of the GE file's photopeak, lower and upper TEW windows.
PEAK, LOWER, UPPER = 1, 3, 2
INTRINSIC_FWHM_140KEV_CM = 0.38


def pytomography_reference(files_nm, files_ct):
    """PyTomography 3.4's own multi-bed GE pipeline; the stitched object (counts/view/voxel) as (Lx, Ly, Lz),
    and the LPS affine of its voxel grid (index → mm)."""
    with contextlib.redirect_stdout(io.StringIO()):
        import torch
        from pytomography.algorithms import OSEM
        from pytomography.io.SPECT import dicom
        from pytomography.likelihoods import PoissonLogLikelihood
        from pytomography.projectors.SPECT import SPECTSystemMatrix
        from pytomography.transforms.SPECT import SPECTAttenuationTransform, SPECTPSFTransform
    with contextlib.redirect_stdout(io.StringIO()):
        projections = dicom.load_multibed_projections(files_nm)
        psf_meta = dicom.get_psfmeta_from_scanner_params("GI-MEGP", 208.0,
                                                         intrinsic_resolution_140keV=INTRINSIC_FWHM_140KEV_CM)
        recons = []
        for i, f in enumerate(files_nm):
            object_meta, proj_meta = dicom.get_metadata(f, index_peak=PEAK)
            peak = projections[i][PEAK]
            scatter = dicom.get_energy_window_scatter_estimate_projections(f, projections[i], PEAK, LOWER, UPPER)
            mu = dicom.get_attenuation_map_from_CT_slices(files_ct, f, index_peak=PEAK)
            system = SPECTSystemMatrix(obj2obj_transforms=[SPECTAttenuationTransform(mu), SPECTPSFTransform(psf_meta)],
                                       proj2proj_transforms=[], object_meta=object_meta, proj_meta=proj_meta)
            likelihood = PoissonLogLikelihood(system, peak, additive_term=scatter)
            recons.append(OSEM(likelihood)(n_iters=ITERATIONS, n_subsets=SUBSETS))
        stitched = dicom.stitch_multibed(torch.stack(recons), files_nm)
        # the lowest bed's affine gives the stitched grid's origin (stitch_multibed sorts by z)
        affines = [dicom._get_affine_spect_projections(f) for f in files_nm]
    affine = min(affines, key=lambda m: m[2, 3])
    return stitched.cpu().numpy(), affine


def object_image(obj: np.ndarray, affine: np.ndarray) -> sitk.Image:
    img = sitk.GetImageFromArray(np.ascontiguousarray(np.transpose(obj, (2, 1, 0)).astype(np.float32)))
    img.SetSpacing(tuple(float(affine[i, i]) for i in range(3)))
    img.SetOrigin(tuple(float(affine[i, 3]) for i in range(3)))
    return img


def compare(ours: sitk.Image, ref: sitk.Image) -> dict:
    """Total ratio, axial profile r, centroid distance (mm) of ``ours`` (resampled onto ``ref``) vs ``ref``."""
    a = sitk.GetArrayFromImage(resample_to(ours, ref, default=0.0)).astype(np.float64)  # z, y, x
    b = sitk.GetArrayFromImage(ref).astype(np.float64)
    pa, pb = a.sum(axis=(1, 2)), b.sum(axis=(1, 2))
    z, y, x = np.meshgrid(*[np.arange(n) for n in b.shape], indexing="ij")

    def centroid(v):
        idx = [float((v * c).sum() / v.sum()) for c in (x, y, z)]
        return np.array(ref.TransformContinuousIndexToPhysicalPoint(idx))

    ca, cb = centroid(a), centroid(b)
    return {"total_ratio": a.sum() / b.sum(), "axial_r": float(np.corrcoef(pa, pb)[0, 1]),
            "centroid_mm": float(np.linalg.norm(ca - cb)), "centroid_offset_mm": ca - cb,
            "total_ours_mbq": a.sum() * np.prod(ref.GetSpacing()) / 1e3 / 1e6,
            "total_ref_mbq": b.sum() * np.prod(ref.GetSpacing()) / 1e3 / 1e6}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default=os.environ.get("LUDOSIMETRY_GE_DATA", ""),
                    help="folder with NM/bed*_projections.dcm and CT/*.dcm (or $LUDOSIMETRY_GE_DATA)")
    ap.add_argument("--calibration", type=float, default=10.0, help="cps/MBq given to both (the header has none)")
    ap.add_argument("--identity", action="store_true",
                    help="also run LuDosimetry with PyTomography's HU->mu and unsmoothed TEW (see the notes)")
    ap.add_argument("--keep", default="", help="write LuDosimetry's reconstruction here instead of a temporary folder")
    args = ap.parse_args(argv)
    data = Path(args.data) if args.data else None
    files_nm = sorted(str(p) for p in (data / "NM").glob("*.dcm")) if data else []
    files_ct = sorted(str(p) for p in (data / "CT").glob("*.dcm")) if data else []
    if not files_nm or not files_ct:
        print("SKIPPED: the GE sample is not here (give --data DIR or LUDOSIMETRY_GE_DATA holding NM/*.dcm and "
              "CT/*.dcm; see the module notes for where to get it)")
        return 0
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        study = Path(tmp) / "study"
        for sub, files in (("NM", files_nm), ("CT", files_ct)):
            (study / sub).mkdir(parents=True)
            for f in files:
                os.symlink(f, study / sub / Path(f).name)
        out = Path(args.keep) if args.keep else Path(tmp) / "out"
        options = ReconOptions(algorithm="osem", iterations=ITERATIONS, subsets=SUBSETS, scatter="tew",
                               calibration_cps_per_mbq=args.calibration, attenuation=True, psf=True)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            written = reconstruct_study(study, out, options, overwrite=True)
        for w in caught:
            if "ReconstructionWarning" in type(w.message).__name__ or "Assumption" in type(w.message).__name__:
                print(f"  warning: {str(w.message)[:160]}")
        images = [read_spect([str(p)]).image for p in written]
        ours = stitch_beds(images) if len(images) > 1 else images[0]
    t_ours = time.perf_counter() - t0
    print(f"LuDosimetry: {len(written)} series written ({', '.join(Path(p).parent.name for p in written)}), "
          f"{t_ours:.0f} s; grid {ours.GetSize()} origin {tuple(round(v, 1) for v in ours.GetOrigin())}")
    t0 = time.perf_counter()
    obj, affine = pytomography_reference(files_nm, files_ct)
    t_ref = time.perf_counter() - t0
    import pydicom

    ds = pydicom.dcmread(files_nm[0], stop_before_pixels=True)
    view_s = float(ds.RotationInformationSequence[0].ActualFrameDuration) / 1000.0
    n_views = int(ds.RotationInformationSequence[0].NumberOfFramesInRotation)
    voxel_ml = float(np.prod(np.diag(affine)[:3])) / 1000.0
    ref_bqml = counts_to_bq_per_ml(obj, cps_per_mbq=args.calibration, view_duration_s=view_s,
                                   total_duration_s=view_s * n_views, voxel_ml=voxel_ml)
    ref = object_image(ref_bqml, affine)
    print(f"PyTomography {__import__('pytomography').__version__}: stitched {ref.GetSize()} origin "
          f"{tuple(round(v, 1) for v in ref.GetOrigin())}, {t_ref:.0f} s")
    m = compare(ours, ref)
    ok = lambda c: "ok" if c else "FAIL"  # noqa: E731
    print(f"total activity (calibration {args.calibration:g} cps/MBq): ours {m['total_ours_mbq']:.1f} MBq, "
          f"PyTomography {m['total_ref_mbq']:.1f} MBq, ratio {m['total_ratio']:.3f} "
          f"[{ok(abs(m['total_ratio'] - 1) <= 0.05)}: within 5 %]")
    print(f"axial profile r = {m['axial_r']:.4f} [{ok(m['axial_r'] >= 0.99)}: >= 0.99]")
    off = m["centroid_offset_mm"]
    print(f"centroid distance {m['centroid_mm']:.1f} mm (dx {off[0]:+.1f}, dy {off[1]:+.1f}, dz {off[2]:+.1f}) "
          f"[{ok(m['centroid_mm'] <= 3.0)}: <= 3 mm]")
    if args.identity:
        m = compare(identity_run(files_nm, files_ct, args.calibration), ref)
        print(f"identity run (PyTomography's HU->mu, unsmoothed TEW): total ratio {m['total_ratio']:.4f}, "
              f"axial r {m['axial_r']:.4f}, centroid {m['centroid_mm']:.2f} mm")
    return 0


def identity_run(files_nm, files_ct, calibration: float) -> sitk.Image:
    """LuDosimetry's bed grouping, filling, reconstruction and stitching with PyTomography's μ-map and an
    unsmoothed TEW estimate (``--identity``)."""
    from pytomography.io.SPECT import dicom

    from LuDosimetryLib.recon.multibed import fill_from_neighbours, group_beds
    from LuDosimetryLib.recon.projections import read_projections
    from LuDosimetryLib.recon.reconstruct import reconstruct_projections

    options = ReconOptions(algorithm="osem", iterations=ITERATIONS, subsets=SUBSETS, scatter="tew",
                           calibration_cps_per_mbq=calibration)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        beds = fill_from_neighbours(group_beds([read_projections(f) for f in files_nm])[0])
    images = []
    for bed in beds:
        with contextlib.redirect_stdout(io.StringIO()):
            mu_per_cm = dicom.get_attenuation_map_from_CT_slices(files_ct, str(bed.path), index_peak=PEAK).cpu().numpy()
        mu = sitk.GetImageFromArray(np.ascontiguousarray(np.transpose(mu_per_cm, (2, 1, 0)) / 10.0))
        mu.CopyInformation(bed.geometry.reference_image())
        images.append(reconstruct_projections(bed, mu, options, scatter_sigma_px=0.0).image)
    return stitch_beds(images)


if __name__ == "__main__":
    sys.exit(main())
