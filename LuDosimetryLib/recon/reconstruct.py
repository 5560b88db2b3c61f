"""Quantitative reconstruction: NM TOMO projections (+ μ-map or CT) → SPECT in Bq/mL (DICOM NM).

PyTomography provides the system model and the algorithms (OSEM; BSREM with a relative-difference
prior, Nuyts et al., IEEE Trans Nucl Sci 2002;49:56-60). It is imported only inside
:func:`reconstruct_projections` (see :mod:`.backend`).
"""
from __future__ import annotations

import re
import warnings
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np
import pydicom
import SimpleITK as sitk

from ..errors import DicomFileError, OutputError, StudyError
from ..io.dicom_common import PatientInfo, SeriesInfo, StudyInfo, write_dataset
from ..io.export import atomic_output_dir, check_output_outside_inputs
from ..io.images import read_ct, resample_to
from ..io.inventory import Inventory, SeriesEntry, scan_study
from ..io.nm_writer import derived_uid, write_nm_multiframe
from ..progress import as_progress
from .collimator import DEFAULT_COLLIMATOR, CollimatorChoice, choose_collimator
from .energy import WindowRoles, identify_windows
from .multibed import fill_from_neighbours, group_beds, stitch_beds  # noqa: F401 - stitch_beds: public here too
from .mumap import mu_image_from_ct, read_mumap
from .projections import ProjectionSeries, read_projections
from .quantify import counts_to_bq_per_ml
from ..options import ReconOptions, validate
from .scatter import energy_window_scatter
from .system import build_system_matrix, frames_to_projector, object_to_image


class ReconstructionWarning(UserWarning):
    """Something the user should know about a reconstruction that did not stop it (the CLI prints it)."""


@dataclass
class ReconResult:
    """One reconstructed projection series (``collimator``: the system model's, and where it came from)."""

    image: sitk.Image
    series: ProjectionSeries
    roles: WindowRoles
    cps_per_mbq: float
    seconds_per_iteration: List[float] = field(default_factory=list)
    collimator: Optional[CollimatorChoice] = None


def _calibration(series: ProjectionSeries, options: ReconOptions) -> float:
    if options.calibration_cps_per_mbq is not None:
        return float(options.calibration_cps_per_mbq)
    if series.header_cps_per_mbq:
        return float(series.header_cps_per_mbq)
    raise StudyError("no calibration factor: the header states none; give {option} "
                     "(photopeak cps/MBq per head)", series.path, option="calibration_cps_per_mbq")


def reconstruct_projections(series: ProjectionSeries, mu_per_mm: Optional[sitk.Image], options: ReconOptions,
                            progress=None, callback=None, collimator: Optional[CollimatorChoice] = None,
                            scatter_sigma_px: float = 1.0) -> ReconResult:
    """Reconstruct one projection series to Bq/mL at the acquisition start.

    Parameters
    ----------
    series : ProjectionSeries
    mu_per_mm : SimpleITK.Image or None
        μ at 208 keV (1/mm) in patient coordinates; resampled onto the reconstruction grid. None: no
        attenuation correction.
    options : ReconOptions
    progress : callable or Progress, optional
        Reported after every sub-iteration; a cancel raises CancelledError.
    callback : callable, optional
        ``callback(iteration, image_bq_per_ml)`` after each full iteration (for benchmarks).
    collimator : CollimatorChoice, optional
        The collimator of the PSF model; default: :func:`.collimator.choose_collimator` of the series'
        header and ``options.collimator``.
    scatter_sigma_px : float
        Gaussian smoothing of the energy-window scatter estimate per view (pixels; 0: none, PyTomography's
        default). Smoothed, the narrow windows' noise does not bias OSEM's non-negative update: on the
        GE sample of ``benchmarks/ge_real_recon.py`` the unsmoothed estimate gives 7.6 % more activity.
    """
    import time

    from .backend import pytomography_session

    validate(options)
    progress = as_progress(progress)
    try:
        roles = identify_windows(series.windows)
    except ValueError as exc:
        raise DicomFileError(str(exc), series.path) from exc
    cps = _calibration(series, options)
    if collimator is None and options.psf:
        collimator = choose_collimator(series.header, options.collimator, series.path)
    geom = series.geometry
    try:
        scatter = energy_window_scatter(series.counts, series.windows, roles, options.scatter,
                                        sigma_px=scatter_sigma_px, dew_k=options.dew_k)
    except ValueError as exc:
        raise DicomFileError(str(exc), series.path) from exc
    peak = frames_to_projector(series.counts[roles.peak], geom)
    additive = frames_to_projector(scatter, geom) if scatter is not None else None
    mu_obj = None
    if mu_per_mm is not None:
        ref = geom.reference_image()
        mu_ref = resample_to(mu_per_mm, ref, default=0.0)
        mu_obj = np.ascontiguousarray(np.transpose(sitk.GetArrayFromImage(mu_ref), (2, 1, 0))) * 10.0
    voxel_ml = geom.pixel_mm ** 2 * geom.slice_mm / 1000.0
    n_iter, n_sub = int(options.iterations), int(min(options.subsets, geom.n_views))
    times: List[float] = []

    def to_bqml(obj: np.ndarray) -> sitk.Image:
        values = counts_to_bq_per_ml(obj, cps_per_mbq=cps, view_duration_s=series.view_duration_s,
                                     total_duration_s=series.duration_s, voxel_ml=voxel_ml,
                                     dead_time_factor=float(options.dead_time_factor))
        return object_to_image(values, geom)

    with pytomography_session(options.device) as ns:
        torch = ns.torch
        progress.report(0.0, "building the system model")
        system = build_system_matrix(ns, geom, mu_obj, psf=bool(options.psf),
                                     collimator=collimator.code if collimator else DEFAULT_COLLIMATOR)
        g = torch.tensor(peak, device=ns.device)
        s = torch.tensor(additive, device=ns.device) if additive is not None else None
        likelihood = ns.PoissonLogLikelihood(system, g, additive_term=s)
        if str(options.algorithm).lower() == "bsrem":
            prior = ns.RelativeDifferencePrior(beta=float(options.beta), gamma=float(options.gamma))
            algorithm = ns.BSREM(likelihood, prior=prior, relaxation_sequence=lambda n: 1.0 / (n / 50.0 + 1.0))
        else:
            algorithm = ns.OSEM(likelihood)
        state = {"t": time.perf_counter()}

        class _Report:
            def run(self, obj, n_iter_done, n_subset):
                frac = (n_iter_done * n_sub + n_subset + 1) / (n_iter * n_sub)
                progress.report(frac, f"{str(options.algorithm).upper()} iteration {n_iter_done + 1}/{n_iter}, "
                                      f"subset {n_subset + 1}/{n_sub}")
                if n_subset == n_sub - 1:
                    now = time.perf_counter()
                    times.append(now - state["t"])
                    state["t"] = now
                    if callback is not None:
                        callback(n_iter_done + 1, to_bqml(obj.detach().cpu().numpy()))
                return obj

            def finalize(self, obj):
                return None

        obj = algorithm(n_iters=n_iter, n_subsets=n_sub, callback=_Report())
        result = obj.detach().cpu().numpy()
    return ReconResult(image=to_bqml(result), series=series, roles=roles, cps_per_mbq=cps,
                       seconds_per_iteration=times, collimator=collimator)


# --------------------------------------------------------------------------------------------- study level

def _nearest(entries: List[SeriesEntry], target: ProjectionSeries) -> Optional[SeriesEntry]:
    if not entries:
        return None
    same = [e for e in entries if e.frame_of_reference_uid and e.frame_of_reference_uid == target.frame_of_reference_uid]
    pool = same or entries

    def dt(e):
        if e.acquisition_time is None or target.acquisition_time is None:
            return float("inf")
        return abs((e.acquisition_time - target.acquisition_time).total_seconds())

    return min(pool, key=dt)


def _mu_for(inv: Inventory, target: ProjectionSeries, cache: Dict[str, sitk.Image]) -> Tuple[Optional[sitk.Image], str]:
    amap = _nearest(inv.by_role("attenuation_map"), target)
    if amap is not None:
        if amap.series_instance_uid not in cache:
            cache[amap.series_instance_uid] = read_mumap(amap.files, what=f"μ-map {amap.description}")
        return cache[amap.series_instance_uid], f"mu-map {amap.description}"
    ct = _nearest(inv.by_role("ct"), target)
    if ct is not None:
        if ct.series_instance_uid not in cache:
            cache[ct.series_instance_uid] = mu_image_from_ct(read_ct(ct.files, what=f"CT {ct.description}"))
        return cache[ct.series_instance_uid], f"CT {ct.description} (bilinear HU->mu at 208 keV)"
    return None, ""


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_")[:60] or "SPECT"


def reconstruct_study(study_dir, out_dir, options: ReconOptions, progress=None, overwrite: bool = False,
                      injected_activity_bq: Optional[float] = None,
                      injection_time: Optional[datetime] = None) -> List[Path]:
    """Reconstruct every projection series of a study folder; write one NM SPECT (Bq/mL) per series
    (bed positions of one acquisition completed from each other and stitched into one series, as
    PyTomography's multi-bed functions do: :mod:`.multibed`).

    Parameters
    ----------
    study_dir : path-like
        Study folder (any layout; series found by their headers).
    out_dir : path-like
        Output folder; one sub-folder per reconstruction, ``RECON_<n>_<description>``, holding
        ``NM_RECON.dcm`` (NM multi-frame RECON TOMO, Bq/mL, DecayCorrection NONE, same frame of
        reference as the projections, with the reconstruction parameters in SeriesDescription,
        ConvolutionKernel and DerivationDescription: collimator and its source, calibration, dead-time
        factor, attenuation, injection source). Each sub-folder is written atomically
        (:func:`~LuDosimetryLib.io.export.atomic_output_dir`).
    options : ReconOptions
    progress : callable or Progress, optional
    overwrite : bool
        Replace existing output sub-folders (only LuDosimetry's own).
    injected_activity_bq, injection_time : optional
        The injection, for the output header (the reconstruction itself does not need it); default: the
        study's headers. When neither gives it, the reconstruction is written without it and a
        :class:`ReconstructionWarning` says so (``ludosimetry run`` then needs it on its command line).

    Returns
    -------
    list of Path
        The files written.

    Raises
    ------
    StudyError
        No projections, no μ-map/CT while attenuation correction is asked, no calibration factor.
    OutputError
        Output exists and ``overwrite`` is False.
    """
    validate(options)
    progress = as_progress(progress)
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise OutputError("exists and is not a folder", out_dir)
    check_output_outside_inputs(out_dir, [study_dir])  # its series would join the study's own
    inv = scan_study(study_dir, injected_activity_bq=injected_activity_bq, injection_time=injection_time,
                     progress=progress.sub(0.0, 0.05))
    entries = inv.by_role("spect_projections")
    if options.forms is not None:
        entries = [e for e in entries if e.form in options.forms]
    if not entries:
        raise StudyError("no SPECT projection series (NM TOMO) in the study"
                         + (f" of the forms {list(options.forms)}" if options.forms else ""), study_dir)
    series = []
    for e in entries:
        for f in e.files:
            series.append(read_projections(f))
    groups = group_beds(series)
    written: List[Path] = []
    cache: Dict[str, sitk.Image] = {}
    span = 0.95 / len(groups)
    for gi, group in enumerate(groups):
        # the header (acquisition start, description, UIDs) is the first-acquired bed's; beds are in z order
        first = min(group, key=lambda s: (s.acquisition_time is None, s.acquisition_time or datetime.min))
        name = f"RECON_{gi + 1:02d}_{_safe(first.description)}"
        target = out_dir / name
        if target.exists() and not overwrite:
            raise OutputError(f"{name} exists; pass overwrite to replace it", out_dir)
        images = []
        source = ""
        collimator = choose_collimator(first.header, options.collimator, first.path) if options.psf else None
        if collimator is not None and collimator.header_code and collimator.header_code != collimator.code:
            warnings.warn(ReconstructionWarning(
                f"{first.path}: collimator {collimator.code} as given, although the header names "
                f"{collimator.header_code} ({collimator.header_text})"), stacklevel=2)
        if len(group) > 1:
            try:
                group = fill_from_neighbours(group)
            except ValueError as exc:
                warnings.warn(ReconstructionWarning(f"{exc}; each bed is reconstructed from its own projections "
                                                    "only"), stacklevel=2)
        for bi, bed in enumerate(group):
            mu = None
            if options.attenuation:
                mu, source = _mu_for(inv, bed, cache)
                if mu is None:
                    raise StudyError("attenuation correction needs a μ-map or CT series in the study; none found "
                                     "(or reconstruct without attenuation correction)", study_dir)
            sub = progress.sub(0.05 + gi * span + bi * span / len(group), 0.05 + gi * span + (bi + 1) * span / len(group))
            images.append(reconstruct_projections(bed, mu, options, progress=sub, collimator=collimator).image)
        image = stitch_beds(images)
        out_dir.mkdir(parents=True, exist_ok=True)
        with atomic_output_dir(target, overwrite=overwrite) as tmp:
            _write_recon(tmp / "NM_RECON.dcm", image, first, options, source, len(group), inv, collimator)
        written.append(target / "NM_RECON.dcm")
    progress.report(1.0, f"{len(written)} reconstruction(s) written")
    return written


def _injection_for(series: ProjectionSeries, inv: Inventory) -> Tuple[Optional[float], Optional[datetime], str]:
    """(injected activity Bq, injection time, where they came from) for a reconstruction's header."""
    activity = inv.injected_activity_bq or series.injected_activity_bq
    when = inv.injection_time or series.injection_time
    if activity is None and when is None:
        return None, None, "not known (not in the headers, not given)"
    source = inv.injection_source or "RadiopharmaceuticalInformationSequence"
    missing = [name for name, value in (("activity", activity), ("time", when)) if value is None]
    return activity, when, source + (f"; injection {' and '.join(missing)} not known" if missing else "")


def _write_recon(path: Path, image: sitk.Image, series: ProjectionSeries, options: ReconOptions, mu_source: str,
                 beds: int, inv: Inventory, collimator: Optional[CollimatorChoice]) -> Path:
    """Write one reconstruction (NM multi-frame, Bq/mL, DecayCorrection NONE) with its provenance.

    The injection is not needed by the reconstruction (its values are at the acquisition start): when it
    is unknown the Radiopharmaceutical Information item is written without RadionuclideTotalDose and
    start times (both Type 3 in the NM Isotope module, PS3.3 C.8.4.10) and a warning says so.
    """
    ds = series.header
    patient = PatientInfo(patient_id=str(ds.get("PatientID", "ANON") or "ANON"),
                          patient_name=str(ds.get("PatientName", "Anonymous") or "Anonymous"),
                          birth_date=str(ds.get("PatientBirthDate", "") or ""), sex=str(ds.get("PatientSex", "") or ""))
    from ..io.dicom_time import combine

    study_dt = combine(ds.get("StudyDate", ""), ds.get("StudyTime", "")) or series.acquisition_time or datetime.now()
    study = StudyInfo(study_instance_uid=str(ds.StudyInstanceUID), study_datetime=study_dt,
                      study_id=str(ds.get("StudyID", "1") or "1"), description=str(ds.get("StudyDescription", "") or ""),
                      accession_number=str(ds.get("AccessionNumber", "") or ""))
    desc = f"{series.description} {options.describe()}"[:64]
    info = SeriesInfo(modality="NM", series_instance_uid=derived_uid(f"{series.series_instance_uid}/recon/{options.describe()}"),
                      series_number=int(ds.get("SeriesNumber", 1) or 1) + 1000, description=desc,
                      frame_of_reference_uid=series.frame_of_reference_uid or None)
    acq = series.acquisition_time or study_dt
    activity, inj, injection_source = _injection_for(series, inv)
    if activity is None or inj is None:
        warnings.warn(ReconstructionWarning(
            f"{series.path}: the injected activity and/or injection time are unknown (no Radiopharmaceutical"
            "InformationSequence in the projections, none given): the reconstruction is written without them; "
            "give --injected-activity-mbq and --injection-time here or to 'ludosimetry run'"), stacklevel=3)
    # write_nm_multiframe needs both; with DecayCorrection NONE they only fill the radiopharmaceutical item,
    # from which unknown ones are removed below.
    write_nm_multiframe(image, path, patient, study, info, acquisition_datetime=acq, duration_s=series.duration_s,
                        injected_activity_bq=activity if activity is not None else 1.0,
                        injection_datetime=inj if inj is not None else acq, decay_correction="NONE")
    out = pydicom.dcmread(str(path))
    item = out.RadiopharmaceuticalInformationSequence[0]
    if activity is None:
        del item.RadionuclideTotalDose
    if inj is None:
        del item.RadiopharmaceuticalStartTime
        del item.RadiopharmaceuticalStartDateTime
    calibration = "option" if options.calibration_cps_per_mbq is not None else "header"
    out.ConvolutionKernel = f"{str(options.algorithm).upper()} {int(options.iterations)}i{int(options.subsets)}s"[:16]
    out.DerivationDescription = (f"Reconstructed from {series.description} ({beds} bed(s)) with PyTomography: "
                                 f"{options.describe()}; {collimator.describe() if collimator else 'no PSF model'}; "
                                 f"calibration {_calibration(series, options):g} cps/MBq ({calibration}); "
                                 f"dead-time factor {float(options.dead_time_factor):g}; "
                                 f"attenuation from {mu_source or 'none'}; injection: {injection_source}")[:1024]
    out.ImageType = ["DERIVED", "PRIMARY", "RECON TOMO", "EMISSION"]
    corrected = (["ATTN"] if mu_source else []) + (["SCAT"] if str(options.scatter).lower() != "none" else [])
    out.CorrectedImage = corrected + ["UNIF", "COR"]
    write_dataset(out, path)
    return path
