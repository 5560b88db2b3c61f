"""``run_study``: the one entry point the CLI, the Slicer logic and headless scripts all call.

Study folder → inventory → quantitative SPECT per time point (Bq/mL at acquisition) → VOI masks on
each time point's SPECT grid → per-VOI time-activity curves and fits (AICc) → TIA per VOI →
TIA map (Bq·s/mL) on the reference grid → absorbed dose map (DVK or LDM, CT density) → per-VOI
dose statistics and DVH.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np
import SimpleITK as sitk

from .errors import DicomFileError, FitError, StudyError, StructureError
from .io.images import SpectVolume, mean_over_grid, read_ct, read_spect, resample_to
from .io.inventory import Inventory, SeriesEntry, scan_study
from .progress import as_progress
from .radionuclides import Radionuclide, radionuclide


@dataclass
class RunOptions:
    """Options of one dosimetry run (all optional; defaults are what a physicist expects).

    Attributes
    ----------
    dose_method : str
        ``"dvk"`` (dose-voxel-kernel convolution, default) or ``"ldm"`` (local energy deposition).
    injected_activity_bq : float, optional
        Overrides RadionuclideTotalDose (Bq).
    injection_time : datetime, optional
        Overrides RadiopharmaceuticalStartDateTime.
    spect_series_uid : list of str or str, optional
        Chooses among several reconstructed SPECT series of one time point.
    spect_calibration_bq_per_ml_per_unit : float, optional
        For SPECT not stored in Bq/mL.
    supersample : int
        In-plane sub-samples per voxel edge when rasterising contours (fractional VOI masks).
    density_correction : bool
        Scale dose by CT density (HU → g/mL).
    reference_time_point : int
        Index of the time point whose grid carries the TIA and dose maps.
    models : tuple of str
        Candidate TAC models for the AICc selection.
    models_per_voi : dict, optional
        VOI name → tuple of models, overriding ``models`` for that VOI (e.g. ``("trapezoid",)`` or
        ``("bi_exponential",)`` chosen by the physicist).
    nuclide : str
    pvc : str
        ``"none"`` (default) or ``"gtm"``: partial-volume correction of VOI activities by the geometric
        transfer matrix (Rousset 1998), which needs ``psf_fwhm_mm``.
    psf_fwhm_mm : float, optional
        FWHM of the reconstructed SPECT's point-spread function (mm), for ``pvc="gtm"``.
    spect_source : str
        ``"auto"`` (the only reconstructed SPECT of each time point), ``"vendor"`` (ignore the
        reconstructions made by ``ludosimetry reconstruct``) or ``"reconstructed"`` (use only those).
    extra_study_dirs : tuple of path-like
        More folders read with the study, e.g. the output folder of ``ludosimetry reconstruct``.
    registration : str
        ``"none"`` (time points share the scanner's frame of reference as they are), ``"rigid"`` or
        ``"deformable"``: CT–CT registration of every time point to the reference, refined per VOI on
        SPECT intensity (contour-intensity alignment); used to carry SPECT to the reference grid for the
        TIA map and to propagate VOIs. Transforms are kept in the results and written by ``write_outputs``.
    vois : str
        ``"per-time-point"`` (each time point's own RTSTRUCT; time points without one get the reference's
        contours propagated when a registration is asked) or ``"reference-only"`` (only the reference
        time point's contours, propagated to the others; needs ``registration``).
    tia_map : str
        ``"voi"``: each VOI region's fitted TIA spread like its activity at the reference time point
        (organ-level TIA exactly conserved); ``"voxel"``: every voxel's curve fitted (same models and
        AICc guard as the VOI fits) on the time points carried to the reference grid.
    time_points : tuple of int, optional
        1-based subset of time points (reduced imaging): the TIA comes from
        :func:`~LuDosimetryLib.kinetics.reduced.fit_reduced` on the subset and the full fit's TIA is
        reported beside it. The reference time point must be in the subset.
    reduced_method : str
        Method of :func:`~LuDosimetryLib.kinetics.reduced.fit_reduced` for a subset.
    masks_per_time_point : list of dict, optional
        VOIs given directly (e.g. segmentations edited in Slicer) instead of the study's RTSTRUCTs:
        one ``{name: ndarray (z,y,x)}`` per time point, each on that time point's SPECT grid (values ≥ 0.5
        are inside).
    kernel_path : str, optional
        Dose voxel kernel file computed elsewhere (e.g. Monte Carlo), in Gy/decay, mGy/decay or
        mGy/(MBq·s): an Interfile header (.hdr/.img) or a voxel S-value table (see
        :func:`~LuDosimetryLib.dose.kernel_files.read_dose_kernel`); used instead of the kernel LuDosimetry
        builds, with ``dose_method="dvk"`` only. Its voxel size (mm) must match the SPECT's within 1 %.
    kernel_density_g_ml : float
        Mass density (g/mL) of the medium the kernel is for (default 1.0, water); the density correction
        scales the dose by this over the CT density.
    """

    dose_method: str = "dvk"
    injected_activity_bq: Optional[float] = None
    injection_time: Optional[datetime] = None
    spect_series_uid: Optional[object] = None
    spect_calibration_bq_per_ml_per_unit: Optional[float] = None
    supersample: int = 3
    density_correction: bool = True
    reference_time_point: int = 0
    models: tuple = ("mono_exponential", "bi_exponential", "tri_exponential")
    models_per_voi: Optional[dict] = None
    nuclide: str = "Lu-177"
    pvc: str = "none"
    psf_fwhm_mm: Optional[float] = None
    masks_per_time_point: Optional[list] = None
    spect_source: str = "auto"
    extra_study_dirs: tuple = ()
    registration: str = "none"
    vois: str = "per-time-point"
    tia_map: str = "voi"
    time_points: Optional[tuple] = None
    reduced_method: str = "population_prior"
    kernel_path: Optional[str] = None
    kernel_density_g_ml: float = 1.0


@dataclass
class VoiResult:
    """Per-VOI results; attribute names are the keys of ``results.json``."""

    name: str
    volume_ml: float
    mass_g: float
    activity_bq: List[float]
    concentration_bq_per_ml: List[float]
    tia_bq_s: float
    tia_se_bq_s: Optional[float]
    tiac_h: float
    fit_model: str
    fit_params: Dict[str, float]
    fit_param_se: Dict[str, float]
    effective_half_life_h: Optional[float]
    mean_dose_gy: float
    d2_gy: float
    d50_gy: float
    d98_gy: float
    max_dose_gy: float
    gy_per_gbq: float
    structure_set: str = ""
    fit_warnings: List[str] = field(default_factory=list)
    tia_map_bq_s: Optional[float] = None
    tia_full_bq_s: Optional[float] = None
    reduced_relative_difference: Optional[float] = None

    def to_json(self) -> dict:
        d = dict(self.__dict__)
        d.pop("name")
        return d


@dataclass
class TimePointResult:
    index: int
    acquisition_time: datetime
    hours_post_injection: float
    spect_series_uid: str
    description: str


@dataclass
class StudyResults:
    """Everything a run produced (in memory; :func:`write_outputs` writes it)."""

    patient_id: str
    injected_activity_bq: float
    injection_time: datetime
    time_points: List[TimePointResult]
    dose_method: str
    vois: Dict[str, VoiResult]
    dose_gy: sitk.Image
    tia_bq_s_per_ml: sitk.Image
    reference_spect: sitk.Image
    density_g_per_ml: Optional[sitk.Image]
    dvhs: Dict[str, tuple]
    fits: Dict[str, object]
    frame_of_reference_uid: str
    study_instance_uid: str
    patient_name: str = ""
    warnings: List[str] = field(default_factory=list)
    inventory: Optional[Inventory] = None
    registrations: Dict[int, object] = field(default_factory=dict)
    reference_index: int = 0
    time_points_used: Optional[List[int]] = None
    dose_kernel: Optional[dict] = None  # DVK only: {"source", "spacing_mm" (x, y, z), "density_g_ml"}

    def to_json(self) -> dict:
        extra = {} if self.dose_kernel is None else {"dose_kernel": self.dose_kernel}
        return {
            "patient_id": self.patient_id,
            "injected_activity_bq": self.injected_activity_bq,
            "injection_time": self.injection_time.isoformat(),
            "time_points": [{"index": t.index, "acquisition_time": t.acquisition_time.isoformat(),
                             "hours_post_injection": t.hours_post_injection,
                             "spect_series_uid": t.spect_series_uid, "description": t.description}
                            for t in self.time_points],
            "dose_method": self.dose_method, **extra,
            "reference_time_point": self.reference_index + 1,
            "time_points_used": self.time_points_used,
            "registered": sorted(i + 1 for i in self.registrations),
            "vois": {name: v.to_json() for name, v in self.vois.items()},
            "warnings": self.warnings,
        }


def choose_spect_series(inv: Inventory, options: RunOptions) -> List[SeriesEntry]:
    """One reconstructed SPECT series per time point (refuse ambiguity without a choice)."""
    wanted = options.spect_series_uid
    if isinstance(wanted, str):
        wanted = [wanted]
    wanted = set(wanted or [])
    unknown = wanted - {s.series_instance_uid for s in inv.by_role("spect_recon")}
    if unknown:
        raise StudyError(f"--spect-series {', '.join(sorted(unknown))} is not a reconstructed SPECT series "
                         "of this study (see 'ludosimetry inspect')", inv.root)
    if options.spect_source not in ("auto", "vendor", "reconstructed"):
        raise StudyError(f"unknown SPECT source {options.spect_source!r} (use auto, vendor or reconstructed)")
    chosen = []
    for tp in inv.time_points:
        uids = [u for u in tp.spect_series_uids if not wanted or u in wanted] if wanted else tp.spect_series_uids
        if options.spect_source != "auto":
            ours = options.spect_source == "reconstructed"
            kept = [u for u in uids if inv.get(u).reconstructed_here == ours]
            if not kept:
                raise StudyError(f"time point {tp.index + 1} has no {options.spect_source} SPECT "
                                 + ("(run 'ludosimetry reconstruct' and pass its folder with --recon-dir)"
                                    if ours else "(only LuDosimetry reconstructions)"), inv.root)
            uids = kept
        if wanted and not uids:
            uids = tp.spect_series_uids
        if len(uids) > 1:
            listing = "; ".join(f"{u} ({inv.get(u).description})" for u in uids)
            raise StudyError(f"time point {tp.index + 1} has {len(uids)} reconstructed SPECT series ({listing}); "
                             "choose one with --spect-series UID", inv.root)
        chosen.append(inv.get(uids[0]))
    return chosen


def _structure_sets_for(inv: Inventory, tp_index: int) -> List[SeriesEntry]:
    return [s for s in inv.by_role("rtstruct") if s.time_point == tp_index]


def _masks_for_time_point(inv: Inventory, tp_index: int, spect: SpectVolume, supersample: int):
    """Masks (z,y,x) of every ROI of the time point's structure sets, on the SPECT grid.

    Contours are rasterised with ``supersample``² in-plane sub-samples per voxel and a voxel belongs to
    the VOI when at least half of it is covered (majority rule: unbiased volume, robust for thin shapes).
    Returned as float32 0/1 weights.
    """
    from .io.rtstruct import read_rtstruct
    from .vois import check_frame_of_reference, structure_set_masks

    masks: Dict[str, np.ndarray] = {}
    sources: Dict[str, str] = {}
    for entry in _structure_sets_for(inv, tp_index):
        for path in entry.files:
            ss = read_rtstruct(path)
            check_frame_of_reference(ss, spect.frame_of_reference_uid)
            for name, m in structure_set_masks(ss, spect.image, supersample=supersample).items():
                if name in masks:
                    raise StructureError(f"ROI {name!r} is defined twice at time point {tp_index + 1} "
                                         f"(also in {sources[name]})", path)
                if not np.any(m > 0):
                    warnings.warn(f"{path}: ROI {name!r} covers no voxel of the SPECT grid; it is reported "
                                  "with zero volume")
                masks[name] = (m >= 0.5).astype(np.float32)
                sources[name] = path
    return masks, sources


def _partition(masks: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
    """Binary, non-overlapping regions: each voxel (≥ half covered) goes to the smallest VOI containing it.

    Lesions inside an organ take their voxels from the organ, so the TIA map can be built region by
    region without counting a voxel twice.
    """
    names = sorted(masks, key=lambda n: float(masks[n].sum()))
    taken = None
    regions = {}
    for n in names:
        m = masks[n] >= 0.5
        if taken is None:
            taken = np.zeros_like(m)
        region = m & ~taken
        regions[n] = region
        taken |= region
    return regions


def run_study(study_dir, options: Optional[RunOptions] = None, progress=None) -> StudyResults:
    """Run the whole dosimetry chain on a study folder.

    Parameters
    ----------
    study_dir : path-like
        Folder of DICOM files (any layout).
    options : RunOptions, optional
    progress : callable ``(fraction, message)`` or Progress, optional
        Raising :class:`~LuDosimetryLib.errors.CancelledError` (or ``Progress.cancel()``) stops the run.

    Returns
    -------
    StudyResults

    Raises
    ------
    LuDosimetryError
        With a message naming the file or option and the problem.
    """
    from .dose import density_from_hu, dose_dvk, dose_ldm
    from .dvh import cumulative_dvh, dose_statistics
    from .kinetics import fit_time_activity_curve
    from .kinetics.reduced import fit_reduced

    options = options or RunOptions()
    if options.dose_method not in ("dvk", "ldm"):
        raise StudyError(f"unknown dose method {options.dose_method!r} (use dvk or ldm)")
    if options.pvc not in ("none", "gtm"):
        raise StudyError(f"unknown partial-volume correction {options.pvc!r} (use none or gtm)")
    if options.pvc == "gtm" and not (options.psf_fwhm_mm and options.psf_fwhm_mm > 0):
        raise StudyError("partial-volume correction 'gtm' needs the SPECT resolution: give --psf-fwhm-mm")
    file_kernel = _file_kernel(options)
    progress = as_progress(progress)
    nuclide: Radionuclide = radionuclide(options.nuclide)
    run_warnings: List[str] = []

    progress.report(0.0, "reading study")
    inv = scan_study(study_dir, injected_activity_bq=options.injected_activity_bq,
                     injection_time=options.injection_time, progress=progress.sub(0.0, 0.1),
                     extra_roots=tuple(options.extra_study_dirs))
    run_warnings += inv.warnings
    broken = [item for item in inv.skipped if item["reason"].startswith("unreadable DICOM")]
    if broken:
        raise DicomFileError(broken[0]["reason"] + (f" (and {len(broken) - 1} more such files)" if len(broken) > 1
                                                    else ""), broken[0]["file"])
    if not inv.time_points:
        roles = sorted({s.role for s in inv.series})
        raise StudyError(f"no reconstructed SPECT with an acquisition time (series found: {', '.join(roles)})",
                         study_dir)
    if inv.injected_activity_bq is None:
        raise StudyError("no injected activity in the headers (RadionuclideTotalDose); "
                         "give --injected-activity-mbq", study_dir)
    if inv.injection_time is None:
        raise StudyError("no injection time in the headers (RadiopharmaceuticalStartDateTime); "
                         "give --injection-time", study_dir)
    spect_entries = choose_spect_series(inv, options)
    n_tp = len(spect_entries)
    ref = options.reference_time_point
    if not 0 <= ref < n_tp:
        raise StudyError(f"reference time point {ref + 1} does not exist (study has {n_tp})")
    subset = _time_point_subset(options, n_tp, ref, study_dir)
    if options.registration not in ("none", "rigid", "deformable"):
        raise StudyError(f"unknown registration {options.registration!r} (use none, rigid or deformable)")
    if options.vois not in ("per-time-point", "reference-only"):
        raise StudyError(f"unknown VOI mode {options.vois!r} (use per-time-point or reference-only)")
    if options.tia_map not in ("voi", "voxel"):
        raise StudyError(f"unknown TIA map method {options.tia_map!r} (use voi or voxel)")
    if options.vois == "reference-only" and options.registration == "none":
        raise StudyError("--vois reference-only propagates the reference contours and needs a registration "
                         "(--registration rigid or deformable)", study_dir)

    # Quantitative SPECT per time point.
    spects: List[SpectVolume] = []
    for i, entry in enumerate(spect_entries):
        progress.sub(0.1, 0.25).report(i / n_tp, f"reading SPECT {i + 1}/{n_tp}")
        spects.append(read_spect(entry.files, injection_time=inv.injection_time, nuclide=nuclide,
                                 calibration_bq_per_ml_per_unit=options.spect_calibration_bq_per_ml_per_unit,
                                 what=f"SPECT {entry.description or entry.series_instance_uid}"))
    hours = []
    for entry, sp in zip(spect_entries, spects):
        h = (sp.acquisition_time - inv.injection_time).total_seconds() / 3600.0
        if h <= 0:
            raise StudyError(f"SPECT {entry.description or entry.series_instance_uid} was acquired "
                             f"{sp.acquisition_time.isoformat()}, {-h:.2f} h before the injection "
                             f"({inv.injection_time.isoformat()}); check --injection-time", entry.files[0])
        hours.append(h)

    # CT per time point: HU (registration) and density on the SPECT grid (masses, dose).
    cts: List[Optional[sitk.Image]] = []
    densities: List[Optional[np.ndarray]] = []
    for i, sp in enumerate(spects):
        progress.sub(0.25, 0.35).report(i / n_tp, f"CT density {i + 1}/{n_tp}")
        entries = [s for s in inv.by_role("ct") if s.time_point == i and
                   (not sp.frame_of_reference_uid or s.frame_of_reference_uid == sp.frame_of_reference_uid)]
        if not entries:
            cts.append(None)
            densities.append(None)
            run_warnings.append(f"time point {i + 1}: no CT in the SPECT's frame of reference; "
                                "masses assume 1.04 g/mL (ICRU 46 soft tissue)")
            continue
        hu = read_ct(entries[0].files, what=f"CT {entries[0].description}")
        cts.append(hu)
        hu_on_spect = mean_over_grid(hu, sp.image, default=-1000.0)
        densities.append(density_from_hu(sitk.GetArrayFromImage(hu_on_spect)).astype(np.float32))

    # VOIs per time point (RTSTRUCTs, or masks given directly).
    per_tp_masks = _vois_per_time_point(inv, spects, options, study_dir, progress.sub(0.35, 0.45))

    # Registration of every time point to the reference, and VOI propagation.
    registrations: Dict[int, object] = {}
    if options.registration != "none":
        registrations = _register(spects, cts, per_tp_masks, ref, options, study_dir, progress.sub(0.45, 0.6))
        from .registration import propagate_masks
        for i in range(n_tp):
            if i != ref and (options.vois == "reference-only" or not per_tp_masks[i]):
                moved = propagate_masks(per_tp_masks[ref], spects[ref].image, registrations[i], spects[i].image)
                per_tp_masks[i] = {k: np.asarray(m, dtype=np.float32) for k, m in moved.items()}
    if not per_tp_masks[ref]:
        raise StudyError(f"the reference time point {ref + 1} has no RTSTRUCT (same frame of reference or "
                         "referenced series); nothing to report", study_dir)
    missing = [i + 1 for i, m in enumerate(per_tp_masks) if not m]
    if missing:
        raise StudyError(f"time point(s) {missing} have no RTSTRUCT of their own; propagate the reference "
                         "contours with --registration rigid or deformable", study_dir)
    names = list(per_tp_masks[ref])
    unknown = sorted(set(options.models_per_voi or {}) - set(names))
    if unknown:
        raise StudyError(f"models are given for VOIs that the study does not have: {unknown} "
                         f"(VOIs: {names})", study_dir)
    for i, m in enumerate(per_tp_masks):
        if set(m) != set(names):
            only_ref = sorted(set(names) - set(m))
            only_here = sorted(set(m) - set(names))
            raise StudyError(f"VOI names differ between time point {ref + 1} and {i + 1}: missing at {i + 1}: "
                             f"{only_ref}, only at {i + 1}: {only_here}; rename the ROIs so that every VOI is on "
                             "every time point", study_dir)

    # Non-overlapping regions per time point (lesions carved out of organs) and, with PVC, their true
    # mean concentrations by GTM.
    partitions = [_partition(m) for m in per_tp_masks]
    gtm = [None] * n_tp
    if options.pvc == "gtm":
        from .pvc import gtm_concentrations
        for i, sp in enumerate(spects):
            progress.sub(0.6, 0.63).report(i / n_tp, f"partial-volume correction {i + 1}/{n_tp}")
            gtm[i] = gtm_concentrations(sitk.GetArrayViewFromImage(sp.image), partitions[i],
                                        sp.image.GetSpacing(), options.psf_fwhm_mm)

    def fit_tac(acts, name, label=None):
        """Full fit on every time point; with a subset, the reduced-time-point fit (and the full one)."""
        label = label or name
        models = (options.models_per_voi or {}).get(name, options.models)
        try:
            full = fit_time_activity_curve(np.array(hours), np.array(acts), models=models,
                                           nuclide=nuclide, label=label)
            if subset is None:
                return full, None
            idx = list(subset)
            red = fit_reduced(np.array(hours)[idx], np.array(acts)[idx], options.reduced_method, organ=name,
                              nuclide=nuclide, label=label)
            return red, full
        except FitError as exc:
            raise FitError(f"VOI {label!r}: {exc.problem}", study_dir) from exc

    # TACs and fits per VOI.
    fits, full_fits = {}, {}
    vois: Dict[str, dict] = {}
    spacing = spects[ref].image.GetSpacing()
    for k, name in enumerate(names):
        progress.sub(0.63, 0.68).report(k / len(names), f"fitting {name}")
        acts, concs, vols, masses = [], [], [], []
        for i, sp in enumerate(spects):
            w = per_tp_masks[i][name]
            vml = float(np.prod(sp.image.GetSpacing())) / 1000.0
            if gtm[i] is None:
                a = float(np.sum(w * sitk.GetArrayViewFromImage(sp.image))) * vml
            else:
                inside = w > 0
                a = sum(gtm[i][n] * float(np.count_nonzero(partitions[i][n] & inside)) for n in partitions[i]) * vml
            v = float(w.sum()) * vml
            acts.append(a)
            vols.append(v)
            concs.append(a / v if v > 0 else float("nan"))
            dens = densities[i]
            masses.append(float(np.sum(w * dens)) * vml if dens is not None else v * 1.04)
        fit, full = fit_tac(acts, name)
        fits[name] = fit
        if full is not None:
            full_fits[name] = full
        run_warnings += list(fit.warnings)  # already prefixed with the VOI name
        vois[name] = dict(activity_bq=acts, concentration_bq_per_ml=concs, volume_ml=vols[ref],
                          mass_g=masses[ref], fit=fit, full=full)

    # TIA map (Bq·s/mL) on the reference grid.
    progress.report(0.68, "TIA map")
    ref_img = spects[ref].image
    on_ref = _images_on_reference(spects, ref, registrations)
    if options.tia_map == "voxel":
        from .kinetics.voxel import voxel_tia_map
        use = list(subset) if subset is not None else list(range(n_tp))
        body = None if densities[ref] is None else densities[ref] > 0.5
        tia_img, _, _ = voxel_tia_map([on_ref[i] for i in use], [hours[i] for i in use], nuclide=nuclide,
                                      models=[m for m in options.models if m != "tri_exponential"], mask=body,
                                      progress=progress.sub(0.68, 0.75))
        tia_map = sitk.GetArrayFromImage(tia_img).astype(np.float32)
    else:
        tia_map = _tia_map(on_ref, hours, partitions, gtm, ref, nuclide, spects,
                           lambda acts, name: fit_tac(acts, name, f"{name} (region)")[0], subset)
    vml_ref = float(np.prod(spacing)) / 1000.0
    tia_voxel = tia_map * vml_ref  # Bq·s per voxel
    density = densities[ref]
    dens_for_dose = density if (options.density_correction and density is not None) else None

    progress.report(0.75, f"absorbed dose ({options.dose_method})")
    dose_kernel = None
    if options.dose_method == "dvk":
        if file_kernel is not None:
            from .dose import check_kernel_grid
            check_kernel_grid(file_kernel, spacing)
        dose = dose_dvk(tia_voxel, spacing, density_g_ml=dens_for_dose, nuclide=nuclide,
                        kernel=None if file_kernel is None else file_kernel.values_gy_per_decay,
                        kernel_density_g_ml=options.kernel_density_g_ml, progress=progress.sub(0.75, 0.9))
        kernel_spacing = spacing if file_kernel is None else file_kernel.spacing_mm
        dose_kernel = {"source": "LuDosimetry (built)" if file_kernel is None else file_kernel.source,
                       "spacing_mm": [round(float(v), 6) for v in kernel_spacing],
                       "density_g_ml": float(options.kernel_density_g_ml)}
    else:
        dose = dose_ldm(tia_voxel, spacing, density_g_ml=dens_for_dose, nuclide=nuclide)
    dose = np.asarray(dose, dtype=np.float32)

    progress.report(0.9, "DVH")
    dvhs = {}
    gbq = inv.injected_activity_bq / 1e9
    out_vois: Dict[str, VoiResult] = {}
    for name in names:
        w = per_tp_masks[ref][name]
        info = vois[name]
        fit, full = info["fit"], info["full"]
        if float(w.sum()) > 0:
            stats = dose_statistics(dose, w, vml_ref)
            dvhs[name] = cumulative_dvh(dose, w, vml_ref)
        else:
            stats = {"mean_dose_gy": float("nan"), "d2_gy": float("nan"), "d50_gy": float("nan"),
                     "d98_gy": float("nan"), "max_dose_gy": float("nan")}
        out_vois[name] = VoiResult(
            name=name, volume_ml=info["volume_ml"], mass_g=info["mass_g"], activity_bq=info["activity_bq"],
            concentration_bq_per_ml=info["concentration_bq_per_ml"], tia_bq_s=float(fit.tia_bq_s),
            tia_se_bq_s=None if fit.tia_se_bq_s is None else float(fit.tia_se_bq_s),
            tiac_h=float(fit.tia_bq_s) / inv.injected_activity_bq / 3600.0, fit_model=fit.model,
            fit_params={k: float(v) for k, v in fit.params.items()},
            fit_param_se={k: float(v) for k, v in (fit.param_se or {}).items()},
            effective_half_life_h=None if fit.effective_half_life_h is None else float(fit.effective_half_life_h),
            mean_dose_gy=float(stats["mean_dose_gy"]), d2_gy=float(stats["d2_gy"]), d50_gy=float(stats["d50_gy"]),
            d98_gy=float(stats["d98_gy"]), max_dose_gy=float(stats["max_dose_gy"]),
            gy_per_gbq=float(stats["mean_dose_gy"]) / gbq, fit_warnings=list(fit.warnings),
            tia_map_bq_s=float(np.sum(tia_voxel * (w >= 0.5))),
            tia_full_bq_s=None if full is None else float(full.tia_bq_s),
            reduced_relative_difference=None if full is None else float(fit.tia_bq_s / full.tia_bq_s - 1.0))

    def as_image(arr):
        img = sitk.GetImageFromArray(np.asarray(arr, dtype=np.float32))
        img.CopyInformation(ref_img)
        return img

    first = _series_header(spect_entries[ref])
    progress.report(1.0, "done")
    return StudyResults(
        patient_id=first.get("PatientID", ""), patient_name=str(first.get("PatientName", "")),
        injected_activity_bq=float(inv.injected_activity_bq), injection_time=inv.injection_time,
        time_points=[TimePointResult(i, sp.acquisition_time, h, sp.series_instance_uid, sp.description)
                     for i, (sp, h) in enumerate(zip(spects, hours))],
        dose_method=options.dose_method, vois=out_vois, dose_gy=as_image(dose),
        tia_bq_s_per_ml=as_image(tia_map), reference_spect=ref_img,
        density_g_per_ml=None if density is None else as_image(density), dvhs=dvhs, fits=fits,
        frame_of_reference_uid=spects[ref].frame_of_reference_uid,
        study_instance_uid=spect_entries[ref].study_instance_uid, warnings=run_warnings, inventory=inv,
        registrations=registrations, reference_index=ref,
        time_points_used=None if subset is None else [i + 1 for i in subset], dose_kernel=dose_kernel)


def _file_kernel(options: RunOptions):
    """The dose kernel of ``options.kernel_path`` (read once, before the study), or None."""
    try:
        rho = float(options.kernel_density_g_ml)
    except (TypeError, ValueError):
        rho = float("nan")
    if not (np.isfinite(rho) and rho > 0):
        raise StudyError("--kernel-density-g-ml must be a positive density (g/mL), "
                         f"got {options.kernel_density_g_ml!r}")
    if options.kernel_path is None:
        return None
    if options.dose_method != "dvk":
        raise StudyError(f"a dose kernel file (--kernel) applies to the DVK dose only, not to dose method "
                         f"{options.dose_method!r}", options.kernel_path)
    from .dose import read_dose_kernel
    return read_dose_kernel(options.kernel_path)


def _time_point_subset(options: RunOptions, n_tp: int, ref: int, study_dir) -> Optional[List[int]]:
    """0-based indices of ``options.time_points`` (1-based), validated; None for all time points."""
    if options.time_points is None:
        return None
    idx = sorted({int(t) - 1 for t in options.time_points})
    bad = [i + 1 for i in idx if not 0 <= i < n_tp]
    if bad:
        raise StudyError(f"--time-points {bad} do not exist (the study has {n_tp} time points)", study_dir)
    if not idx:
        raise StudyError("--time-points is empty", study_dir)
    if ref not in idx:
        raise StudyError(f"the reference time point {ref + 1} must be one of --time-points "
                         f"{[i + 1 for i in idx]}", study_dir)
    return None if len(idx) == n_tp else idx


def _vois_per_time_point(inv, spects, options, study_dir, progress) -> List[Dict[str, np.ndarray]]:
    """VOI masks (z,y,x float32 0/1) on each time point's SPECT grid; empty dict where there are none."""
    given = options.masks_per_time_point
    if given is not None and len(given) != len(spects):
        raise StudyError(f"{len(given)} sets of VOI masks given for {len(spects)} time points", study_dir)
    out = []
    for i, sp in enumerate(spects):
        progress.report(i / len(spects), f"VOIs of time point {i + 1}")
        if given is not None:
            shape = sitk.GetArrayViewFromImage(sp.image).shape
            masks = {}
            for name, m in given[i].items():
                m = np.asarray(m)
                if m.shape != shape:
                    raise StructureError(f"mask {name!r} of time point {i + 1} has shape {m.shape}, "
                                         f"the SPECT grid {shape}", study_dir)
                masks[name] = (m >= 0.5).astype(np.float32)
        elif options.vois == "reference-only" and i != options.reference_time_point:
            masks = {}
        else:
            masks, _ = _masks_for_time_point(inv, i, sp, options.supersample)
        out.append(masks)
    if not any(out):
        raise StudyError("no RTSTRUCT matches any SPECT time point (same frame of reference or referenced "
                         "series); nothing to report", study_dir)
    return out


def _register(spects, cts, per_tp_masks, ref, options, study_dir, progress) -> Dict[int, object]:
    """Registration of every time point to the reference (CT–CT, refined per VOI on SPECT)."""
    from .registration import register_time_points

    if cts[ref] is None:
        raise StudyError(f"registration needs the reference time point's CT (time point {ref + 1} has none)",
                         study_dir)
    fixed_masks = {k: m >= 0.5 for k, m in per_tp_masks[ref].items()} if per_tp_masks[ref] else None
    regs = {}
    others = [i for i in range(len(spects)) if i != ref]
    for n, i in enumerate(others):
        if cts[i] is None:
            raise StudyError(f"registration needs a CT at every time point (time point {i + 1} has none)",
                             study_dir)
        regs[i] = register_time_points(cts[ref], cts[i], spect_fixed=spects[ref].image,
                                       spect_moving=spects[i].image, masks_fixed=fixed_masks,
                                       deformable=options.registration == "deformable",
                                       progress=progress.sub(n / len(others), (n + 1) / len(others)))
    return regs


def _images_on_reference(spects, ref, registrations) -> List[sitk.Image]:
    """Every time point's SPECT (Bq/mL) on the reference grid: registered (activity-conserving with the
    deformation's Jacobian) or, without registration, resampled in the shared patient coordinates."""
    ref_img = spects[ref].image
    out = []
    for i, sp in enumerate(spects):
        if i == ref:
            out.append(ref_img)
        elif i in registrations:
            out.append(registrations[i].apply_to_image(sp.image, ref_img, jacobian=True))
        else:
            out.append(resample_to(sp.image, ref_img, default=0.0))
    return out


def _series_header(entry: SeriesEntry):
    """Header (no pixels) of a series' first file, read as tolerantly as the inventory read it."""
    from .io.dicom_common import read_dicom
    return read_dicom(entry.files[0], stop_before_pixels=True)


def _tia_map(on_ref, hours, partitions, gtm, ref, nuclide, spects, fit_fn, subset) -> np.ndarray:
    """VOI-based TIA concentration map (Bq·s/mL) on the reference SPECT grid.

    Inside each VOI region (lesions carved out of organs) the region's fitted TIA is distributed in
    proportion to the reference image, so the map's integral over a VOI equals the VOI's TIA (the
    organ-level result). Outside the VOIs each voxel is integrated by trapezoids from (0, 0) with a
    physical-decay tail, on the time points carried to the reference grid (``on_ref``).

    Parameters
    ----------
    on_ref : list of SimpleITK.Image
        Every time point's SPECT (Bq/mL) on the reference grid.
    fit_fn : callable ``(activities_bq, name) -> fit``
        The VOI fit (full, or reduced on ``subset``).
    subset : list of int or None
        Time points (0-based) used outside the VOIs.
    """
    ref_img = spects[ref].image
    ref_arr = sitk.GetArrayFromImage(ref_img).astype(np.float64)
    use = list(range(len(on_ref))) if subset is None else list(subset)
    t_s = np.asarray(hours, dtype=float)[use] * 3600.0
    stack = [np.clip(sitk.GetArrayViewFromImage(on_ref[i]).astype(np.float64), 0.0, None) for i in use]
    lam = nuclide.decay_constant_per_s
    tia = 0.5 * stack[0] * t_s[0]
    for i in range(1, len(t_s)):
        tia += 0.5 * (stack[i] + stack[i - 1]) * (t_s[i] - t_s[i - 1])
    tia += stack[-1] / lam
    vml = float(np.prod(ref_img.GetSpacing())) / 1000.0
    for name, region in partitions[ref].items():
        if not region.any():
            continue
        acts = []
        for i, sp in enumerate(spects):
            # region TAC measured on each time point's own grid with that time point's own contours
            m_i = partitions[i][name]
            vml_i = float(np.prod(sp.image.GetSpacing())) / 1000.0
            if gtm[i] is None:
                acts.append(float(np.sum(sitk.GetArrayViewFromImage(sp.image)[m_i])) * vml_i)
            else:
                acts.append(gtm[i][name] * float(np.count_nonzero(m_i)) * vml_i)
        try:
            region_tia = float(fit_fn(acts, name).tia_bq_s)
        except FitError:
            region_tia = float(np.sum(tia[region])) * vml
        weights = np.clip(ref_arr[region], 0.0, None)
        total = weights.sum()
        if total <= 0:
            weights = np.ones_like(weights)
            total = weights.sum()
        tia[region] = region_tia * weights / total / vml
    return tia.astype(np.float32)


def write_outputs(results: StudyResults, out_dir, overwrite: bool = False) -> Path:
    """Write a run's outputs atomically (see :func:`LuDosimetryLib.report.write_outputs`)."""
    from .report import write_outputs as _write
    return _write(results, out_dir, overwrite=overwrite)
