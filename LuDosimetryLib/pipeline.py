"""``run_study``: the one entry point the CLI, the Slicer logic and headless scripts all call.

Study folder → inventory → quantitative SPECT per time point (Bq/mL at acquisition) → VOI masks on
each time point's SPECT grid → per-VOI time-activity curves and fits (AICc) → TIA per VOI →
TIA map (Bq·s/mL) on the reference grid → absorbed dose map (DVK or LDM, CT density) → per-VOI
dose statistics and DVH.

:func:`run_study` is the list of these stages. They share a :class:`_RunContext` (options, progress,
nuclide, warnings, inventory, reference time point, reduced-imaging subset) and one
:class:`TimePointData` record per time point, which the stages fill in turn: SPECT and hours
(:func:`_read_spects`), CT and density (:func:`_read_ct_density`), VOI masks (:func:`_read_vois`,
:func:`_register_and_propagate`), regions and GTM concentrations (:func:`_partial_volume`).
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np
import SimpleITK as sitk

from .assumptions import Assumption, recording
from .errors import DicomFileError, FitError, OptionError, StudyError, StructureError
from .io.images import SpectVolume, mean_over_grid, read_ct, read_spect, resample_to
from .io.inventory import (Inventory, SeriesEntry, require_one_acquisition, require_one_patient,
                           require_plausible_times, scan_study)
from .options import RunOptions, parse_local_datetime, validate
from .progress import Progress, as_progress
from .radionuclides import Radionuclide, radionuclide


@dataclass
class VoiResult:
    """Per-VOI results; attribute names are the keys of ``results.json``.

    ``mean_dose_gy`` is MIRD's mean absorbed dose, mass-weighted: ``Σ D_i m_i / Σ m_i`` over the VOI's
    voxels with ``m_i`` from the CT density (energy imparted over mass; MIRD Pamphlet No. 21); it gives
    ``gy_per_gbq``. ``mean_dose_volume_weighted_gy`` is ``Σ D_i v_i / Σ v_i``, beside it for comparison
    (the two are equal where the density is uniform, e.g. without a CT).
    """

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
    fit_param_at_bound: Dict[str, str] = field(default_factory=dict)  # name → bound; its SE is null
    fit_error_model: str = ""  # error model of the fit (kinetics.fit: proportional, counting, uniform, given)
    mean_dose_volume_weighted_gy: Optional[float] = None
    # Relative standard uncertainties (%, k = 1; LuDosimetryLib.uncertainty): all components, counting and fit
    # alone, and each component's contribution to the mean dose's.
    tia_uncertainty_pct: Optional[float] = None
    tia_random_uncertainty_pct: Optional[float] = None
    mean_dose_uncertainty_pct: Optional[float] = None
    uncertainty_budget: Dict[str, float] = field(default_factory=dict)
    # Radiobiology (LuDosimetryLib.radiobiology): BED/EQD2 of the mean dose delivered with the fitted curve's
    # shape; None, with the reason in ``radiobiology["note"]``, for a tissue without alpha/beta.
    tissue: Optional[str] = None
    bed_gy: Optional[float] = None
    eqd2_gy: Optional[float] = None
    radiobiology: Dict[str, object] = field(default_factory=dict)
    # Hybrid planar/SPECT (#14, --hybrid K; LuDosimetryLib.whole_body): TIA and its difference from tia_bq_s (%).
    hybrid_tia_bq_s: Optional[float] = None
    hybrid_vs_spect_pct: Optional[float] = None

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
    assumptions: List[Assumption] = field(default_factory=list)
    inventory: Optional[Inventory] = None
    registrations: Dict[int, object] = field(default_factory=dict)
    reference_index: int = 0
    time_points_used: Optional[List[int]] = None
    dose_kernel: Optional[dict] = None  # DVK only: {"source", "spacing_mm" (x, y, z), "density_g_ml"}
    residual_activity_bq: Optional[float] = None  # syringe residual, already subtracted from injected_activity_bq
    options: Optional[RunOptions] = None  # the run's options (results.json "options")
    inputs: Optional[dict] = None  # the series read, a SHA-256 per file (provenance.input_series_json)
    time_point_images: List[sitk.Image] = field(default_factory=list)  # each time point's SPECT (Bq/mL), own grid
    time_point_masks: List[Dict[str, np.ndarray]] = field(default_factory=list)  # VOI masks used, per time point
    # Whole-body quantities (#14): each a dict with at least "tia_bq_s" and "method" (and "mean_dose_gy",
    # uncertainty where computed); written at the top level of results.json under the same names.
    whole_body: Optional[dict] = None
    remainder_of_body: Optional[dict] = None
    red_marrow: Optional[dict] = None
    # Planar views (#14): per planar session (acquisition time ISO, image, {VOI: region}) (whole_body.py)
    planar_views: List[tuple] = field(default_factory=list)

    def to_json(self) -> dict:
        from .options import options_as_json
        from .provenance import software_versions

        extra = {} if self.dose_kernel is None else {"dose_kernel": self.dose_kernel}
        if self.residual_activity_bq is not None:
            extra.update(residual_activity_bq=self.residual_activity_bq,
                         injected_activity_before_residual_bq=self.injected_activity_bq + self.residual_activity_bq)
        for key in ("whole_body", "remainder_of_body", "red_marrow"):
            if getattr(self, key) is not None:
                extra[key] = getattr(self, key)
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
            "assumptions": [a.to_json() for a in self.assumptions],
            "warnings": self.warnings,
            "patient_name": self.patient_name, "study_instance_uid": self.study_instance_uid,
            "frame_of_reference_uid": self.frame_of_reference_uid,
            "options": None if self.options is None else options_as_json(self.options),
            "inputs": self.inputs, "software": software_versions(),
        }


def choose_spect_series(inv: Inventory, options: RunOptions) -> List[SeriesEntry]:
    """One reconstructed SPECT series per time point (refuse ambiguity without a choice)."""
    wanted = options.spect_series_uid
    if isinstance(wanted, str):
        wanted = [wanted]
    wanted = set(wanted or [])
    unknown = wanted - {s.series_instance_uid for s in inv.by_role("spect_recon")}
    if unknown:
        raise StudyError(f"{', '.join(sorted(unknown))} is not a reconstructed SPECT series of this study "
                         "(see 'ludosimetry inspect')", inv.root, option="spect_series_uid")
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
                                 + ("(run 'ludosimetry reconstruct' and pass its folder with {option})"
                                    if ours else "(only LuDosimetry reconstructions)"), inv.root,
                                 option="extra_study_dirs" if ours else "spect_source")
            uids = kept
        if wanted and not uids:
            uids = tp.spect_series_uids
        if len(uids) > 1:
            listing = "; ".join(f"{u} ({inv.get(u).description}, PatientID {inv.get(u).patient_id!r})"
                                for u in uids)
            raise StudyError(f"time point {tp.index + 1} has {len(uids)} reconstructed SPECT series ({listing}); "
                             "choose one with {option}", inv.root, option="spect_series_uid")
        chosen.append(inv.get(uids[0]))
    return chosen


def _structure_sets_for(inv: Inventory, tp_index: int) -> List[SeriesEntry]:
    return [s for s in inv.by_role("rtstruct") if s.time_point == tp_index]


def _ct_series_for(inv: Inventory, tp_index: int, frame_of_reference_uid: str) -> List[SeriesEntry]:
    """The CT series of a time point in its SPECT's frame of reference (the first is read)."""
    return [s for s in inv.by_role("ct") if s.time_point == tp_index and
            (not frame_of_reference_uid or s.frame_of_reference_uid == frame_of_reference_uid)]


def _series_read(ctx: "_RunContext", tps: List["TimePointData"]) -> List[SeriesEntry]:
    """The series a run read: each time point's SPECT, its CT (:func:`_ct_series_for`) and the structure
    sets its VOIs came from (:func:`_read_vois`: none with given masks, the reference's alone with
    ``vois="reference-only"``)."""
    options, inv = ctx.options, ctx.inventory
    read: List[SeriesEntry] = []
    for tp in tps:
        read.append(tp.entry)
        read += _ct_series_for(inv, tp.index, tp.spect.frame_of_reference_uid)[:1]
        if options.masks_per_time_point is None and (options.vois != "reference-only"
                                                     or tp.index == options.reference_time_point):
            read += _structure_sets_for(inv, tp.index)
    return read


def _masks_for_time_point(inv: Inventory, tp_index: int, spect: SpectVolume, supersample: int):
    """Masks (z,y,x) of every ROI of the time point's structure sets, on the SPECT grid.

    Contours are rasterised with ``supersample``² in-plane sub-samples per voxel and a voxel belongs to
    the VOI when at least half of it is covered (majority rule: unbiased volume, robust for thin shapes).
    Returned as float32 0/1 weights, with the file of each ROI; an ROI may cover no voxel (see
    :func:`_read_vois`).

    Raises
    ------
    DicomFileError
        The SPECT names no frame of reference (naming the SPECT), so no RTSTRUCT can be checked against it.
    StructureError
        An RTSTRUCT or one of its ROIs is in another frame of reference; an ROI is defined twice.
    """
    from .io.rtstruct import read_rtstruct
    from .vois import check_frame_of_reference, structure_set_masks

    masks: Dict[str, np.ndarray] = {}
    sources: Dict[str, str] = {}
    for entry in _structure_sets_for(inv, tp_index):
        for path in entry.files:
            if not spect.frame_of_reference_uid:
                spect_file = next((s.files[0] for s in inv.series
                                   if s.series_instance_uid == spect.series_instance_uid), inv.root)
                raise DicomFileError(f"the SPECT of time point {tp_index + 1} names no FrameOfReferenceUID, so the "
                                     f"VOIs of {path} cannot be placed on it", spect_file)
            ss = read_rtstruct(path)
            check_frame_of_reference(ss, spect.frame_of_reference_uid)
            for name, m in structure_set_masks(ss, spect.image, supersample=supersample).items():
                if name in masks:
                    raise StructureError(f"ROI {name!r} is defined twice at time point {tp_index + 1} "
                                         f"(also in {sources[name]})", path)
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


@dataclass
class TimePointData:
    """One time point of a run, filled in stage by stage (one record per time point).

    Attributes
    ----------
    index : int
        0-based time point.
    entry : SeriesEntry
        The reconstructed SPECT series chosen for the time point.
    spect : SpectVolume
        Quantitative SPECT (Bq/mL at acquisition).
    hours : float
        Acquisition time after the injection (h).
    ct_hu : SimpleITK.Image, optional
        The time point's CT (HU) in the SPECT's frame of reference; None without one.
    density_g_ml : ndarray (z, y, x) float32, optional
        CT density (g/mL) averaged over each SPECT voxel; None without CT.
    masks : dict name → ndarray (z, y, x) float32
        VOI masks (0/1 weights) on the SPECT grid: the time point's own, or the reference's propagated.
    regions : dict name → bool ndarray (z, y, x)
        Non-overlapping partition of the VOIs (lesions carved out of organs, :func:`_partition`).
    gtm_bq_ml : dict name → float, optional
        GTM concentration (Bq/mL) of every region and of the background regions (``pvc="gtm"``); None
        without PVC.
    pvc_image : SimpleITK.Image, optional
        The SPECT (Bq/mL) corrected voxel by voxel with the GTM concentrations (RBV, ``pvc="gtm"``): what
        the TIA maps are built on; None without PVC.
    registration : Registration, optional
        Transform of this time point to the reference; None for the reference and without registration.
    """

    index: int
    entry: SeriesEntry
    spect: SpectVolume
    hours: float
    ct_hu: Optional[sitk.Image] = None
    density_g_ml: Optional[np.ndarray] = None
    masks: Dict[str, np.ndarray] = field(default_factory=dict)
    regions: Dict[str, np.ndarray] = field(default_factory=dict)
    gtm_bq_ml: Optional[Dict[str, float]] = None
    pvc_image: Optional[sitk.Image] = None
    registration: Optional[object] = None

    @property
    def image(self) -> sitk.Image:
        """The SPECT image (Bq/mL)."""
        return self.spect.image

    @property
    def array(self) -> np.ndarray:
        """The SPECT voxels (z, y, x; Bq/mL), a read-only view."""
        return sitk.GetArrayViewFromImage(self.spect.image)

    @property
    def voxel_ml(self) -> float:
        """Volume of one SPECT voxel (mL)."""
        return float(np.prod(self.spect.image.GetSpacing())) / 1000.0


@dataclass
class _RunContext:
    """What every stage of :func:`run_study` reads.

    Attributes
    ----------
    study_dir, options, progress, nuclide
        The run's inputs (options validated; each stage reports into its own slice of ``progress``).
    warnings : list of str
        The run's warnings, in the order they arise.
    inventory : Inventory
        Set by :func:`_read_inventory`.
    ref : int
        Reference time point (0-based), whose grid carries the TIA and dose maps.
    subset : list of int or None
        Time points (0-based) of a reduced-imaging run (:func:`_choose_time_points`); None for all.
    whole_body, remainder_of_body, red_marrow : dict or None
        Whole-body quantities (#14), set by their stages; copied into :class:`StudyResults`.
    """

    study_dir: object
    options: RunOptions
    progress: Progress
    nuclide: Radionuclide
    warnings: List[str] = field(default_factory=list)
    inventory: Optional[Inventory] = None
    ref: int = 0
    subset: Optional[List[int]] = None
    earlier_half_lives_h: Optional[Dict[str, float]] = None  # --kinetics-from, read once
    whole_body: Optional[dict] = None
    remainder_of_body: Optional[dict] = None
    red_marrow: Optional[dict] = None
    planar_views: List[tuple] = field(default_factory=list)
    # --planar-regions files, read once by the early checks: session (ISO time) → [(file, {VOI: region}, grid)]
    planar_regions_by_session: Dict[str, List[tuple]] = field(default_factory=dict)


@dataclass
class _VoiKinetics:
    """A VOI's time-activity curve (Bq, Bq/mL per time point; mL and g at the reference) and fits: ``fit``
    gives the TIA (the reduced-time-point fit on a subset), ``full`` is the fit on every time point beside
    a reduced one (None without a subset)."""

    activity_bq: List[float]
    concentration_bq_per_ml: List[float]
    volume_ml: float
    mass_g: float
    fit: object
    full: Optional[object]
    uncertainty: Optional[object] = None  # the TIA's uncertainty components (uncertainty.TiaUncertainty)


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
    options = options or RunOptions()
    validate(options)
    # Every value the run has to assume is named (results.json "assumptions"), or refused when strict.
    with recording(strict=options.strict) as assumption_log:
        results = _run_stages(study_dir, options, progress)
    results.assumptions = assumption_log.items
    results.options = options
    return results


def _run_stages(study_dir, options: RunOptions, progress) -> StudyResults:
    """The stages of :func:`run_study`, in order, on validated options."""
    file_kernel = _file_kernel(options)
    ctx = _RunContext(study_dir, options, as_progress(progress), radionuclide(options.nuclide))

    # The stages, and the slice of the progress each reports into.
    ctx.inventory = _read_inventory(ctx)                             # 0    – 0.1
    _check_blood_samples(ctx)
    entries = _choose_time_points(ctx)
    _check_planar(ctx, len(entries))
    tps = _read_spects(ctx, entries)                                 # 0.1  – 0.25
    _read_ct_density(ctx, tps)                                       # 0.25 – 0.35
    _read_vois(ctx, tps)                                             # 0.35 – 0.45
    _register_and_propagate(ctx, tps)                                # 0.45 – 0.6
    names = _check_vois(ctx, tps)
    _partial_volume(ctx, tps)                                        # 0.6  – 0.63
    kinetics = _fit_vois(ctx, tps, names)                            # 0.63 – 0.68
    tia_map = _tia_map(ctx, tps, kinetics)                           # 0.68 – 0.75
    ref_tp = tps[ctx.ref]
    tia_voxel = tia_map * ref_tp.voxel_ml                            # Bq·s per voxel
    dose, dose_kernel = _dose(ctx, ref_tp, tia_voxel, file_kernel)   # 0.75 – 0.9
    vois, dvhs = _statistics(ctx, ref_tp, kinetics, dose, tia_voxel)  # 0.9  – 1
    _whole_body(ctx, tps, kinetics, vois, tia_voxel)
    _red_marrow(ctx, tps, kinetics, vois)
    _radiobiology(ctx, vois, kinetics)
    return _study_results(ctx, tps, kinetics, vois, dvhs, dose, tia_map, dose_kernel)


def _read_inventory(ctx: _RunContext) -> Inventory:
    """Scan the study folder(s) and check that the study can be dosed.

    Returns
    -------
    Inventory
        With the injected activity (Bq) and injection time, from the headers or the options.

    Raises
    ------
    DicomFileError
        A DICOM file could not be read, or names no series (:meth:`Inventory.unusable`).
    StudyError
        A folder could not be listed; no SPECT time point, or no injected activity or injection time.
    StrictRefusal
        Strict run and the injection date inferred from a time alone.
    """
    options, study_dir = ctx.options, ctx.study_dir
    ctx.progress.report(0.0, "reading study")
    inv = scan_study(study_dir, injected_activity_bq=options.injected_activity_bq,
                     injection_time=options.injection_time, progress=ctx.progress.sub(0.0, 0.1),
                     extra_roots=tuple(options.extra_study_dirs))
    ctx.warnings += inv.warnings
    broken = inv.unusable()  # unreadable files and folders, objects without a series: none left out silently
    if broken:
        more = f" (and {len(broken) - 1} more such files or folders)" if len(broken) > 1 else ""
        error = StudyError if broken[0]["reason"].startswith("unreadable folder") else DicomFileError
        raise error(broken[0]["reason"] + more, broken[0]["file"])
    if not inv.time_points:
        roles = sorted({s.role for s in inv.series})
        raise StudyError(f"no reconstructed SPECT with an acquisition time (series found: {', '.join(roles)})",
                         study_dir)
    if inv.injected_activity_bq is None:
        raise StudyError("no injected activity in the headers (RadionuclideTotalDose); "
                         "give {option}", study_dir, option="injected_activity_bq")
    if inv.injection_time is None:
        raise StudyError("no injection time in the headers (RadiopharmaceuticalStartDateTime); "
                         "give {option}", study_dir, option="injection_time")
    administered_activity_bq(inv.injected_activity_bq, options.residual_activity_bq)  # refused early
    return inv


def administered_activity_bq(injected_bq: float, residual_bq: Optional[float]) -> float:
    """The activity the patient received: the injected (assayed) activity less the syringe residual (Bq).

    Raises
    ------
    OptionError
        The residual is not smaller than the injected activity.
    """
    if residual_bq is None:
        return float(injected_bq)
    if not residual_bq < injected_bq:
        raise OptionError(f"the residual activity ({residual_bq / 1e6:g} MBq) must be smaller than the injected "
                          f"activity ({injected_bq / 1e6:g} MBq)", option="residual_activity_bq")
    return float(injected_bq) - float(residual_bq)


def _choose_time_points(ctx: _RunContext) -> List[SeriesEntry]:
    """The SPECT series of every time point; checks the reference and sets the reduced-imaging subset.

    Returns
    -------
    list of SeriesEntry
        One reconstructed SPECT series per time point (:func:`choose_spect_series`).

    Raises
    ------
    StudyError
        Time points (or planar images) of more than one patient; a scan before the injection or implausibly long
        after it.
    DicomFileError
        A SPECT or planar file whose acquisition time disagrees with the rest of its series.
    StrictRefusal
        A strict run, and an acquisition time read from another header than AcquisitionDateTime/Date+Time.
    """
    from .assumptions import assume

    entries = choose_spect_series(ctx.inventory, ctx.options)
    planar = ctx.inventory.by_role("planar_whole_body") if ctx.options.planar else []
    ctx.warnings += require_one_patient(ctx.inventory, entries, also_used=planar)
    for s in planar:  # a file of another session mixed into a planar session
        require_one_acquisition(s, "planar", " (or leave the planar images out with {option})", option="planar")
    for s in [*entries, *planar]:  # an acquisition time read from another header is a time the run assumes
        if s.acquisition_time_fallback:  # named once: as the assumption, no longer also as the scan's warning
            ctx.warnings = [w for w in ctx.warnings if not w.endswith(s.acquisition_time_fallback)]
            assume(f"acquisition time of series {s.description or s.series_instance_uid}",
                   f"{s.acquisition_time.isoformat() if s.acquisition_time else 'none'}",
                   s.acquisition_time_fallback, s.files[0])
    require_plausible_times(ctx.inventory, entries)
    n_tp = len(entries)
    ctx.ref = ref = ctx.options.reference_time_point
    if not 0 <= ref < n_tp:
        raise StudyError(f"time point {ref + 1} does not exist (the study has {n_tp})", ctx.study_dir,
                         option="reference_time_point")
    ctx.subset = _time_point_subset(ctx.options, n_tp, ref, ctx.study_dir)
    return entries


def _read_spects(ctx: _RunContext, entries: List[SeriesEntry]) -> List[TimePointData]:
    """Quantitative SPECT (Bq/mL at acquisition) and hours after injection of every time point.

    Returns
    -------
    list of TimePointData
        One per time point, with ``entry``, ``spect`` and ``hours`` set.

    Raises
    ------
    StudyError
        A SPECT acquired before the injection.
    """
    inv, n_tp = ctx.inventory, len(entries)
    progress = ctx.progress.sub(0.1, 0.25)
    spects: List[SpectVolume] = []
    for i, entry in enumerate(entries):
        progress.report(i / n_tp, f"reading SPECT {i + 1}/{n_tp}")
        spects.append(read_spect(entry.files, injection_time=inv.injection_time, nuclide=ctx.nuclide,
                                 calibration_bq_per_ml_per_unit=ctx.options.spect_calibration_bq_per_ml_per_unit,
                                 what=f"SPECT {entry.description or entry.series_instance_uid}"))
    tps = []
    for i, (entry, sp) in enumerate(zip(entries, spects)):
        h = (sp.acquisition_time - inv.injection_time).total_seconds() / 3600.0
        if h <= 0:
            raise StudyError(f"SPECT {entry.description or entry.series_instance_uid} was acquired "
                             f"{sp.acquisition_time.isoformat()}, {-h:.2f} h before the injection "
                             f"({inv.injection_time.isoformat()}); check {{option}}", entry.files[0],
                             option="injection_time")
        tps.append(TimePointData(index=i, entry=entry, spect=sp, hours=h))
    return tps


def _read_ct_density(ctx: _RunContext, tps: List[TimePointData]) -> None:
    """Each time point's CT (HU, for registration) and density (g/mL) on its SPECT grid (masses, dose).

    Sets ``ct_hu`` and ``density_g_ml``. Where no CT shares the SPECT's frame of reference ``density_g_ml``
    stays None, a named assumption (refused with ``strict``): masses at 1.04 g/mL (ICRU 46 soft tissue),
    the dose in the kernel's medium everywhere (no density correction) and, on the reference time point,
    no body outline (the dose is not set to 0 outside the body: the outline comes from the CT only).
    """
    from .assumptions import assume
    from .dose import density_from_hu

    progress = ctx.progress.sub(0.25, 0.35)
    for tp in tps:
        i, sp = tp.index, tp.spect
        progress.report(i / len(tps), f"CT density {i + 1}/{len(tps)}")
        entries = _ct_series_for(ctx.inventory, i, sp.frame_of_reference_uid)
        if not entries:
            outline = "; no body outline (dose not set to 0 outside the body)" if i == ctx.ref else ""
            assume(f"time point {i + 1}: no CT in the SPECT's frame of reference: density",
                   f"1.04 g/mL for masses (ICRU 46 soft tissue), the dose kernel's medium for the dose{outline}",
                   "default", tp.entry.files[0])
            continue
        tp.ct_hu = read_ct(entries[0].files, what=f"CT {entries[0].description}")
        hu_on_spect = mean_over_grid(tp.ct_hu, sp.image, default=-1000.0)
        tp.density_g_ml = density_from_hu(sitk.GetArrayFromImage(hu_on_spect)).astype(np.float32)


def _read_vois(ctx: _RunContext, tps: List[TimePointData]) -> None:
    """VOI masks (z,y,x float32 0/1) on each time point's SPECT grid: the study's RTSTRUCTs or the masks
    given in ``options.masks_per_time_point``. Sets ``masks`` (empty where a time point has none).

    A VOI that covers no voxel of the reference time point (no contour there, or none on the SPECT grid)
    is left out of the run, with a warning naming it and its file. One that covers no voxel of another
    time point, while the reference has it, is refused without a registration; with one,
    :func:`_check_vois` replaces it by the propagated reference VOI. The RTSTRUCT reader's warnings
    (contours skipped, ROIs renamed) are the run's warnings.

    Raises
    ------
    StudyError
        No time point has a VOI, the given masks do not match the time points, or no VOI of the
        reference time point covers a voxel.
    StructureError
        A given mask is not on its SPECT grid; an ROI is defined twice; a VOI covers no voxel of a time
        point other than the reference and there is no registration.
    """
    options, study_dir = ctx.options, ctx.study_dir
    progress = ctx.progress.sub(0.35, 0.45)
    given = options.masks_per_time_point
    sources: Dict[int, Dict[str, str]] = {}
    if given is not None and len(given) != len(tps):
        raise StudyError(f"{len(given)} sets of VOI masks given for {len(tps)} time points", study_dir)
    for tp in tps:
        i = tp.index
        progress.report(i / len(tps), f"VOIs of time point {i + 1}")
        if given is not None:
            shape = tp.array.shape
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
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                masks, sources[i] = _masks_for_time_point(ctx.inventory, i, tp.spect, options.supersample)
            for w in caught:
                if str(w.message) not in ctx.warnings:
                    ctx.warnings.append(str(w.message))
        tp.masks = masks
    if not any(tp.masks for tp in tps):
        raise StudyError("no RTSTRUCT matches any SPECT time point (same frame of reference or referenced "
                         "series); nothing to report", study_dir)
    ref = ctx.ref
    reference = tps[ref].masks
    for name in [n for n, m in reference.items() if not m.any()]:
        ctx.warnings.append(f"{sources.get(ref, {}).get(name, study_dir)}: VOI {name!r} covers no voxel of the "
                            f"reference time point {ref + 1} (no contour there, or none on the SPECT grid); it "
                            "is left out of the results")
        for tp in tps:
            tp.masks.pop(name, None)
        if not reference:
            raise StudyError(f"no VOI covers a voxel of the reference time point {ref + 1}; nothing to report",
                             study_dir)
    if options.registration != "none":
        return  # _check_vois replaces empty VOIs of other time points by the propagated reference VOIs
    for tp in tps:
        empty = [n for n, m in tp.masks.items() if n in reference and not m.any()]
        if tp.index != ref and empty:
            raise StructureError(f"VOI {empty[0]!r} covers no voxel of time point {tp.index + 1} (no contour "
                                 "there, or none on the SPECT grid) while the reference time point "
                                 f"{ref + 1} has it: its activity would be 0; contour it, or propagate the "
                                 "reference contours with {option} rigid or deformable",
                                 sources.get(tp.index, {}).get(empty[0], study_dir), option="registration")


def _register_and_propagate(ctx: _RunContext, tps: List[TimePointData]) -> None:
    """With ``options.registration``: register every time point to the reference (CT–CT, refined per VOI
    on SPECT), then carry the reference VOIs to the time points that take them (``vois="reference-only"``,
    or no VOIs of their own). Sets ``registration`` and, where propagated, ``masks``.

    A propagated VOI keeps its volume (``propagate_masks(mode="volume")``: the reference volume, times the
    deformation's Jacobian, in the voxels mapping deepest into it), so that its activity cannot drift with
    where the map puts the voxel centres.

    Raises
    ------
    StudyError
        A time point to register has no CT.
    """
    options, study_dir, ref = ctx.options, ctx.study_dir, ctx.ref
    if options.registration == "none":
        return
    from .registration import propagate_masks, register_time_points

    progress = ctx.progress.sub(0.45, 0.6)
    fixed = tps[ref]
    if fixed.ct_hu is None:
        raise StudyError(f"registration needs the reference time point's CT (time point {ref + 1} has none)",
                         study_dir)
    fixed_masks = {k: m >= 0.5 for k, m in fixed.masks.items()} if fixed.masks else None
    others = [tp for tp in tps if tp.index != ref]
    for n, tp in enumerate(others):
        if tp.ct_hu is None:
            raise StudyError(f"registration needs a CT at every time point (time point {tp.index + 1} has none)",
                             study_dir)
        tp.registration = register_time_points(fixed.ct_hu, tp.ct_hu, spect_fixed=fixed.image,
                                               spect_moving=tp.image, masks_fixed=fixed_masks,
                                               deformable=options.registration == "deformable",
                                               progress=progress.sub(n / len(others), (n + 1) / len(others)))
    for tp in others:
        if options.vois == "reference-only" or not tp.masks:
            moved = propagate_masks(fixed.masks, fixed.image, tp.registration, tp.image, mode="volume")
            tp.masks = {k: np.asarray(m, dtype=np.float32) for k, m in moved.items()}


def _check_vois(ctx: _RunContext, tps: List[TimePointData]) -> List[str]:
    """Check that every time point has the reference's VOIs (and models are given for known VOIs only).

    Returns
    -------
    list of str
        The VOI names, in the reference time point's order.

    A VOI that covers no voxel of a time point other than the reference (:func:`_read_vois` lets it pass
    only with a registration) is replaced there by the reference VOI propagated by the registration, with
    a warning.

    Raises
    ------
    StudyError
        The reference or another time point has no VOIs, VOI names differ between time points, or a VOI
        covers no voxel of a time point even when propagated.
    """
    ref, study_dir = ctx.ref, ctx.study_dir
    if not tps[ref].masks:
        raise StudyError(f"the reference time point {ref + 1} has no RTSTRUCT (same frame of reference or "
                         "referenced series); nothing to report", study_dir)
    missing = [tp.index + 1 for tp in tps if not tp.masks]
    if missing:
        raise StudyError(f"time point(s) {missing} have no RTSTRUCT of their own; propagate the reference "
                         "contours with a registration ({option} rigid or deformable)", study_dir,
                         option="registration")
    names = list(tps[ref].masks)
    unknown = sorted(set(ctx.options.models_per_voi or {}) - set(names))
    if unknown:
        raise StudyError(f"models are given for VOIs that the study does not have: {unknown} "
                         f"(VOIs: {names})", study_dir)
    for tp in tps:
        if set(tp.masks) != set(names):
            i = tp.index
            only_ref = sorted(set(names) - set(tp.masks))
            only_here = sorted(set(tp.masks) - set(names))
            raise StudyError(f"VOI names differ between time point {ref + 1} and {i + 1}: missing at {i + 1}: "
                             f"{only_ref}, only at {i + 1}: {only_here}; rename the ROIs so that every VOI is on "
                             "every time point", study_dir)
    fixed = tps[ref]
    for tp in tps:
        empty = [n for n in names if tp.index != ref and not tp.masks[n].any()]
        if empty and tp.registration is not None:
            from .registration import propagate_masks
            moved = propagate_masks({n: fixed.masks[n] for n in empty}, fixed.image, tp.registration, tp.image)
            tp.masks.update({n: np.asarray(moved[n], dtype=np.float32) for n in empty})
            ctx.warnings.append(f"time point {tp.index + 1}: VOI(s) {', '.join(repr(n) for n in empty)} cover no "
                                "voxel of the time point's own contours; the reference contours, propagated by "
                                "the registration, are used instead")
        still = [n for n in empty if not tp.masks[n].any()]
        if still:
            raise StudyError(f"VOI {still[0]!r} covers no voxel of time point {tp.index + 1}, even propagated "
                             f"from the reference time point {ref + 1}: its activity would be 0", study_dir)
    return names


def _partial_volume(ctx: _RunContext, tps: List[TimePointData]) -> None:
    """Non-overlapping regions per time point (lesions carved out of organs) and, with ``pvc="gtm"``,
    their true mean concentrations by GTM and the SPECT corrected voxel by voxel (RBV, :mod:`.pvc`).
    Sets ``regions``, ``gtm_bq_ml`` and ``pvc_image``.

    The GTM background is split at the body outline of the time point's CT
    (:func:`~LuDosimetryLib.dose.body_outline`) into the rest of the body and the air around it; without
    a CT it is one region, a named assumption (refused with ``strict``).
    """
    for tp in tps:
        tp.regions = _partition(tp.masks)
    if ctx.options.pvc != "gtm":
        return
    from .assumptions import assume
    from .dose import body_outline
    from .pvc import gtm_correction

    progress = ctx.progress.sub(0.6, 0.63)
    for tp in tps:
        progress.report(tp.index / len(tps), f"partial-volume correction {tp.index + 1}/{len(tps)}")
        body = None if tp.density_g_ml is None else body_outline(tp.density_g_ml)
        if body is None:
            assume(f"partial-volume correction (GTM) of time point {tp.index + 1}: body and air outside the VOIs "
                   "taken as one background region", "one background region (no CT for a body outline)",
                   "default", tp.entry.files[0])
        pvc = gtm_correction(tp.array, tp.regions, tp.image.GetSpacing(), ctx.options.psf_fwhm_mm, body=body)
        tp.gtm_bq_ml = pvc.concentrations_bq_ml
        tp.pvc_image = sitk.GetImageFromArray(pvc.corrected_bq_ml)
        tp.pvc_image.CopyInformation(tp.image)


def _fit_vois(ctx: _RunContext, tps: List[TimePointData], names: List[str]) -> Dict[str, _VoiKinetics]:
    """Time-activity curve of every VOI (activity per time point, on that time point's own grid and
    contours) and its fit (AICc model selection; the reduced-time-point fit on a subset).

    Returns
    -------
    dict name → _VoiKinetics
        In the order of ``names``. The fits' warnings are added to the run's.
    """
    from . import uncertainty as unc

    progress = ctx.progress.sub(0.63, 0.68)
    overrides, ref_tp = ctx.options.uncertainty or {}, tps[ctx.ref]
    # counting noise of each time point from the image's own noise (unless the user gives it)
    noise = [float("nan") if "counting" in overrides else unc.image_counts_per_bq_ml(tp.array) for tp in tps]
    out: Dict[str, _VoiKinetics] = {}
    for k, name in enumerate(names):
        progress.report(k / len(names), f"fitting {name}")
        acts, concs, vols, masses, sigmas = [], [], [], [], []
        for tp, counts_scale in zip(tps, noise):
            w = tp.masks[name]
            vml = tp.voxel_ml
            a = _voi_activity_bq(tp.array, w, vml, gtm=tp.gtm_bq_ml, regions=tp.regions)
            v = float(w.sum()) * vml
            acts.append(a)
            vols.append(v)
            concs.append(a / v if v > 0 else float("nan"))
            dens = tp.density_g_ml
            masses.append(float(np.sum(w * dens)) * vml if dens is not None else v * 1.04)
            raw = _voi_activity_bq(tp.array, w, vml) if tp.gtm_bq_ml is not None else a  # GTM: same relative u
            sigmas.append(unc.image_sigma_bq(tp.array, w, vml, counts_scale) * abs(a / raw) if raw else float("nan"))
        fit, full = _fit_tac(ctx, tps, acts, name)
        ctx.warnings += list(fit.warnings)  # already prefixed with the VOI name
        # Uncertainty (LuDosimetryLib.uncertainty): the fit's points, the VOI ±1 voxel, the PSF's recovery (GTM).
        used = list(range(len(tps))) if ctx.subset is None else list(ctx.subset)
        drawn = ref_tp.masks[name]
        minus, plus = unc.delineation_masks(drawn)
        delineation = [_voi_activity_bq(ref_tp.array, m.astype(np.float32), ref_tp.voxel_ml, gtm=ref_tp.gtm_bq_ml,
                                        regions=ref_tp.regions) for m in (minus, drawn, plus)]
        delineation += [float(np.count_nonzero(m >= 0.5)) * ref_tp.voxel_ml for m in (minus, drawn, plus)]
        recovery = 0.0 if ctx.options.pvc != "gtm" else unc.recovery_uncertainty(
            drawn, ref_tp.image.GetSpacing(), ctx.options.psf_fwhm_mm)
        tia_unc = unc.tia_uncertainty(fit, [sigmas[i] for i in used], delineation=tuple(delineation),
                                      recovery=recovery, overrides=overrides)
        ctx.warnings += [w for w in tia_unc.warnings if w not in ctx.warnings]
        out[name] = _VoiKinetics(activity_bq=acts, concentration_bq_per_ml=concs, volume_ml=vols[ctx.ref],
                                 mass_g=masses[ctx.ref], fit=fit, full=full, uncertainty=tia_unc)
    if "counting" not in overrides and any(not (s >= 0) for s in noise):
        ctx.warnings.append("the counting noise of a time point could not be read from its SPECT (too few voxels "
                            "with activity): its uncertainty is not known; give it with --uncertainty counting=PCT")
    return out


def _tia_map(ctx: _RunContext, tps: List[TimePointData], kinetics: Dict[str, _VoiKinetics]) -> np.ndarray:
    """TIA concentration map (Bq·s/mL, float32 z,y,x) on the reference grid, by ``options.tia_map``:
    ``"voxel"`` (every voxel's curve fitted, :func:`~LuDosimetryLib.kinetics.voxel.voxel_tia_map`) or
    ``"voi"`` (each VOI's reported TIA spread like its reference activity, :func:`_voi_tia_map`). Both are
    built on the time points' SPECT corrected voxel by voxel when ``pvc="gtm"`` (:func:`_images_on_reference`)."""
    options, ref, subset = ctx.options, ctx.ref, ctx.subset
    ctx.progress.report(0.68, "TIA map")
    on_ref = _images_on_reference(tps, ref)
    if options.tia_map == "voxel":
        from .kinetics.voxel import voxel_tia_map
        use = list(subset) if subset is not None else list(range(len(tps)))
        density = tps[ref].density_g_ml
        body = None if density is None else density > 0.5
        tia_img, _, _ = voxel_tia_map([on_ref[i] for i in use], [tps[i].hours for i in use], nuclide=ctx.nuclide,
                                      models=[m for m in options.models if m != "tri_exponential"], mask=body,
                                      progress=ctx.progress.sub(0.68, 0.75))
        return sitk.GetArrayFromImage(tia_img).astype(np.float32)
    return _voi_tia_map(ctx, tps, on_ref, kinetics)


def _dose(ctx: _RunContext, ref_tp: TimePointData, tia_voxel: np.ndarray,
          file_kernel) -> Tuple[np.ndarray, Optional[dict]]:
    """Absorbed dose (Gy) on the reference grid from the TIA per voxel (Bq·s), by DVK or LDM.

    Parameters
    ----------
    ref_tp : TimePointData
        The reference time point (grid, density).
    tia_voxel : ndarray (z, y, x)
        TIA per voxel (Bq·s).
    file_kernel : DoseKernel, optional
        A kernel read from ``options.kernel_path``; None for the kernel LuDosimetry builds.

    Returns
    -------
    dose : ndarray (z, y, x) float32
        Gy; 0 outside the body outline.
    dose_kernel : dict or None
        DVK only: the kernel's source, spacing (mm) and medium density (g/mL), for ``results.json``.

    Notes
    -----
    The body outline is the reference CT's (:func:`~LuDosimetryLib.dose.media.body_outline`: density of at
    least 0.5 g/mL with its cavities filled), with or without the density correction; without a CT there
    is none (the dose is the kernel medium's everywhere, a named assumption of :func:`_read_ct_density`).
    With the correction the electron part of the dose is scaled by the density, the photon part is not
    (:mod:`~LuDosimetryLib.dose.convolve`); a kernel file is split into the two by
    :func:`~LuDosimetryLib.dose.kernels.split_kernel`.
    """
    from .dose import body_outline, dose_dvk, dose_ldm

    options = ctx.options
    spacing = ref_tp.image.GetSpacing()
    density = ref_tp.density_g_ml
    dens_for_dose = density if (options.density_correction and density is not None) else None
    body = None if density is None else body_outline(density)

    ctx.progress.report(0.75, f"absorbed dose ({options.dose_method})")
    dose_kernel = None
    if options.dose_method == "dvk":
        photon_kernel = None
        if file_kernel is not None:
            from .dose import check_kernel_grid, split_kernel
            check_kernel_grid(file_kernel, spacing)
            if dens_for_dose is not None:
                photon_kernel = split_kernel(file_kernel.values_gy_per_decay, file_kernel.spacing_mm, ctx.nuclide,
                                             density_g_ml=options.kernel_density_g_ml)[1]
        dose = dose_dvk(tia_voxel, spacing, density_g_ml=dens_for_dose, nuclide=ctx.nuclide,
                        kernel=None if file_kernel is None else file_kernel.values_gy_per_decay,
                        photon_kernel=photon_kernel, kernel_density_g_ml=options.kernel_density_g_ml,
                        body_mask=body, progress=ctx.progress.sub(0.75, 0.9))
        kernel_spacing = spacing if file_kernel is None else file_kernel.spacing_mm
        dose_kernel = {"source": "LuDosimetry (built)" if file_kernel is None else file_kernel.source,
                       "spacing_mm": [round(float(v), 6) for v in kernel_spacing],
                       "density_g_ml": float(options.kernel_density_g_ml)}
    else:
        dose = dose_ldm(tia_voxel, spacing, density_g_ml=dens_for_dose, nuclide=ctx.nuclide, body_mask=body)
    return np.asarray(dose, dtype=np.float32), dose_kernel


def _statistics(ctx: _RunContext, ref_tp: TimePointData, kinetics: Dict[str, _VoiKinetics], dose: np.ndarray,
                tia_voxel: np.ndarray) -> Tuple[Dict[str, VoiResult], dict]:
    """Per-VOI results: kinetics, dose statistics and DVH on the reference time point's VOI masks.

    Returns
    -------
    vois : dict name → VoiResult
        ``mean_dose_gy`` mass-weighted by the reference CT density (volume-weighted, the same, without
        a CT), ``mean_dose_volume_weighted_gy`` beside it.
    dvhs : dict name → cumulative DVH
        VOIs covering no voxel have NaN dose statistics and no DVH.

    A VOI more than 1 % of which lies outside the body outline (air, where the dose is 0) is a warning.
    """
    from .dose import body_outline
    from .dvh import cumulative_dvh, dose_statistics

    ctx.progress.report(0.9, "DVH")
    outside_body = None if ref_tp.density_g_ml is None else ~body_outline(ref_tp.density_g_ml)
    injected_bq = administered_activity_bq(ctx.inventory.injected_activity_bq, ctx.options.residual_activity_bq)
    gbq = injected_bq / 1e9
    vml_ref = ref_tp.voxel_ml
    dvhs = {}
    out: Dict[str, VoiResult] = {}
    from . import uncertainty as unc

    for name, kin in kinetics.items():
        w = ref_tp.masks[name]
        fit, full = kin.fit, kin.full
        # the mean dose over the VOI eroded / as drawn / dilated by one voxel, and their volumes (uncertainty)
        minus, plus = unc.delineation_masks(w)
        shells = (minus, w >= 0.5, plus)
        delineation = tuple(unc.mass_weighted_mean(dose, m, ref_tp.density_g_ml) for m in shells) + tuple(
            float(np.count_nonzero(m)) * vml_ref for m in shells)
        budget = unc.dose_uncertainty(kin.uncertainty, dose_delineation=delineation,
                                      overrides=ctx.options.uncertainty)
        if float(w.sum()) > 0:
            stats = dose_statistics(dose, w, vml_ref, mass_weights=ref_tp.density_g_ml)
            dvhs[name] = cumulative_dvh(dose, w, vml_ref)
            outside = 0.0 if outside_body is None else float(np.sum(w[outside_body])) / float(w.sum())
            if outside > 0.01:
                ctx.warnings.append(f"VOI {name!r}: {100.0 * outside:.1f} % of its volume lies outside the body "
                                    "outline (air on the CT): the dose there is 0")
        else:
            stats = {"mean_dose_gy": float("nan"), "mean_dose_volume_weighted_gy": float("nan"),
                     "d2_gy": float("nan"), "d50_gy": float("nan"), "d98_gy": float("nan"),
                     "max_dose_gy": float("nan")}
        out[name] = VoiResult(
            name=name, volume_ml=kin.volume_ml, mass_g=kin.mass_g, activity_bq=kin.activity_bq,
            concentration_bq_per_ml=kin.concentration_bq_per_ml, tia_bq_s=float(fit.tia_bq_s),
            tia_se_bq_s=None if fit.tia_se_bq_s is None else float(fit.tia_se_bq_s),
            tiac_h=float(fit.tia_bq_s) / injected_bq / 3600.0, fit_model=fit.model,
            fit_params={k: float(v) for k, v in fit.params.items()},
            fit_param_se={k: float(v) for k, v in (fit.param_se or {}).items()},
            fit_param_at_bound=dict(getattr(fit, "param_at_bound", {}) or {}),
            fit_error_model=str(getattr(fit, "error_model", "")),
            effective_half_life_h=None if fit.effective_half_life_h is None else float(fit.effective_half_life_h),
            mean_dose_gy=float(stats["mean_dose_gy"]), d2_gy=float(stats["d2_gy"]), d50_gy=float(stats["d50_gy"]),
            d98_gy=float(stats["d98_gy"]), max_dose_gy=float(stats["max_dose_gy"]),
            gy_per_gbq=float(stats["mean_dose_gy"]) / gbq, fit_warnings=list(fit.warnings),
            tia_map_bq_s=float(np.sum(tia_voxel * (w >= 0.5))),
            tia_full_bq_s=None if full is None else float(full.tia_bq_s),
            reduced_relative_difference=None if full is None else float(fit.tia_bq_s / full.tia_bq_s - 1.0),
            mean_dose_volume_weighted_gy=float(stats["mean_dose_volume_weighted_gy"]),
            tia_uncertainty_pct=budget.tia_uncertainty_pct,
            tia_random_uncertainty_pct=budget.tia_random_uncertainty_pct,
            mean_dose_uncertainty_pct=budget.mean_dose_uncertainty_pct, uncertainty_budget=budget.uncertainty_budget)
    return out, dvhs


def _whole_body(ctx: _RunContext, tps: List[TimePointData], kinetics: Dict[str, _VoiKinetics],
                vois: Dict[str, VoiResult], tia_voxel: np.ndarray) -> None:
    """Whole body, remainder of body and hybrid planar/SPECT (:mod:`.whole_body`): sets ``ctx.whole_body``,
    ``ctx.remainder_of_body`` and, with ``--hybrid``, each VOI's hybrid TIA."""
    from .whole_body import whole_body_stage
    ctx.progress.report(0.95, "whole body")
    whole_body_stage(ctx, tps, kinetics, vois, tia_voxel)


def _check_planar(ctx: _RunContext, n_time_points: int) -> None:
    """Check the planar images' headers and the planar options at the start (:mod:`.whole_body`)."""
    from .whole_body import check_planar_inputs
    check_planar_inputs(ctx, n_time_points)


def _planar_region_files(options: RunOptions) -> List[Tuple[str, str]]:
    """``[(provenance role, path)]`` of the ``--planar-regions`` files (one role per file)."""
    return [(f"planar_regions_{k + 1}", path) for k, path in enumerate(options.planar_regions or ())]


def _check_blood_samples(ctx: _RunContext) -> None:
    """Read ``--blood-samples`` at the start, so that a bad file ends the run before its long stages."""
    if ctx.options.blood_samples is not None and ctx.options.marrow_method in ("auto", "blood"):
        from .io.blood_samples import read_blood_samples
        read_blood_samples(ctx.options.blood_samples, ctx.inventory.injection_time)


def _red_marrow(ctx: _RunContext, tps: List[TimePointData], kinetics: Dict[str, _VoiKinetics],
                vois: Dict[str, VoiResult]) -> None:
    """Red marrow, image-based (L2-L4) and/or blood-based, self- and cross-dose (:mod:`.marrow_stage`): sets
    ``ctx.red_marrow``."""
    from .marrow_stage import red_marrow_stage
    ctx.progress.report(0.97, "red marrow")
    red_marrow_stage(ctx, tps, kinetics, vois, fit_activities=lambda acts, name: _fit_tac(ctx, tps, acts, name)[0],
                     voi_activity=lambda tp, weights: _voi_activity_bq(tp.array, weights, tp.voxel_ml))


def _roi_interpreted_types(ctx: _RunContext) -> Dict[str, str]:
    """RT ROI Interpreted Type of each ROI of the reference time point's structure sets."""
    from .io.rtstruct import read_rtstruct
    types: Dict[str, str] = {}
    for entry in _structure_sets_for(ctx.inventory, ctx.ref):
        for path in entry.files:
            for roi in read_rtstruct(path).rois:
                types.setdefault(roi.name, roi.roi_type)
    return types


def _radiobiology(ctx: _RunContext, vois: Dict[str, VoiResult], kinetics: Dict[str, _VoiKinetics]) -> None:
    """BED and EQD2 of every VOI (set on ``vois``).

    The tissue of a VOI is its organ type (``--organ-type``, else the exact default names of
    :data:`~LuDosimetryLib.kinetics.reduced.DEFAULT_ORGAN_TYPES`), else "tumour" for an ROI interpreted as
    GTV/CTV/PTV in its RTSTRUCT; its alpha/beta and repair half-time come from ``--radiobiology`` over
    :data:`~LuDosimetryLib.radiobiology.DEFAULT_TISSUES`. A VOI whose tissue has no entry gets no BED and a
    note saying what to give.
    """
    from .kinetics.reduced import organ_type, parse_organ_types
    from .radiobiology import RadiobiologyError, bed_for_fit, parse_tissue_table, tissue_of

    table = parse_tissue_table(ctx.options.radiobiology)
    given = parse_organ_types(ctx.options.organ_types)
    roi_types = _roi_interpreted_types(ctx) if ctx.options.masks_per_time_point is None else {}
    for name, voi in vois.items():
        typ = organ_type(name, given)
        tissue = tissue_of(typ, roi_types.get(name, ""))
        voi.tissue = tissue
        source = ("--organ-type" if name in given else "VOI name (default organ types)" if typ
                  else f"RTROIInterpretedType {roi_types.get(name)}" if tissue else "")
        if tissue is None or tissue not in table:
            what = f"tissue {tissue!r}" if tissue else "no tissue type"
            voi.radiobiology = {"note": f"{what} has no alpha/beta: give --organ-type {name}=TYPE and/or "
                                        f"--radiobiology TYPE=ALPHA_BETA_GY:T_REP_H for a BED"}
            continue
        if not math.isfinite(voi.mean_dose_gy):
            voi.radiobiology = {"note": "no mean dose"}
            continue
        try:
            bed = bed_for_fit(voi.mean_dose_gy, kinetics[name].fit, tissue, table)
        except RadiobiologyError as exc:
            voi.radiobiology = {"note": str(exc)}
            continue
        voi.bed_gy, voi.eqd2_gy = bed.bed_gy, bed.eqd2_gy
        voi.radiobiology = dict(bed.to_json(), tissue_source=source)
        voi.radiobiology.pop("bed_gy")
        voi.radiobiology.pop("eqd2_gy")


def _study_results(ctx: _RunContext, tps: List[TimePointData], kinetics: Dict[str, _VoiKinetics],
                   vois: Dict[str, VoiResult], dvhs: dict, dose: np.ndarray, tia_map: np.ndarray,
                   dose_kernel: Optional[dict]) -> StudyResults:
    """The run's :class:`StudyResults` (maps as images on the reference SPECT grid)."""
    from .provenance import input_series_json

    ref_tp = tps[ctx.ref]
    inv, ref_img = ctx.inventory, ref_tp.image

    def as_image(arr):
        img = sitk.GetImageFromArray(np.asarray(arr, dtype=np.float32))
        img.CopyInformation(ref_img)
        return img

    first = _series_header(ref_tp.entry)
    ctx.progress.report(1.0, "done")
    density = ref_tp.density_g_ml
    return StudyResults(
        patient_id=first.get("PatientID", ""), patient_name=str(first.get("PatientName", "")),
        injected_activity_bq=administered_activity_bq(inv.injected_activity_bq, ctx.options.residual_activity_bq),
        residual_activity_bq=ctx.options.residual_activity_bq, injection_time=inv.injection_time,
        time_points=[TimePointResult(tp.index, tp.spect.acquisition_time, tp.hours, tp.spect.series_instance_uid,
                                     tp.spect.description) for tp in tps],
        dose_method=ctx.options.dose_method, vois=vois, dose_gy=as_image(dose),
        tia_bq_s_per_ml=as_image(tia_map), reference_spect=ref_img,
        density_g_per_ml=None if density is None else as_image(density), dvhs=dvhs,
        fits={name: kin.fit for name, kin in kinetics.items()},
        frame_of_reference_uid=ref_tp.spect.frame_of_reference_uid,
        study_instance_uid=ref_tp.entry.study_instance_uid, warnings=ctx.warnings, inventory=inv,
        registrations={tp.index: tp.registration for tp in tps if tp.registration is not None},
        reference_index=ctx.ref,
        time_points_used=None if ctx.subset is None else [i + 1 for i in ctx.subset], dose_kernel=dose_kernel,
        inputs=input_series_json(_series_read(ctx, tps), inv.root,
                                 other_files={role: path for role, path in (("dose_kernel", ctx.options.kernel_path),
                                                                            ("population", ctx.options.population
                                                                             if ctx.options.reduced_method == "nlmm"
                                                                             else None),
                                                                            *_planar_region_files(ctx.options))
                                              if path is not None}),
        time_point_images=[tp.image for tp in tps], time_point_masks=[tp.masks for tp in tps],
        whole_body=ctx.whole_body, remainder_of_body=ctx.remainder_of_body, red_marrow=ctx.red_marrow,
        planar_views=ctx.planar_views)


# ---------------------------------------------------------------------------------------------- helpers

def _voi_activity_bq(image: np.ndarray, voi: np.ndarray, voxel_ml: float,
                     gtm: Optional[Dict[str, float]] = None,
                     regions: Optional[Dict[str, np.ndarray]] = None) -> float:
    """Activity (Bq) of a VOI at one time point, for the VOI curves (:func:`_fit_vois`) and the region
    curves of the VOI-based TIA map (:func:`_voi_tia_map`): the SPECT concentration summed over the VOI
    or, with GTM, each region's corrected concentration times its voxels in the VOI; times the voxel volume.

    Parameters
    ----------
    image : ndarray (z, y, x)
        The time point's SPECT (Bq/mL).
    voi : ndarray (z, y, x)
        A VOI mask as float32 0/1 weights, or one boolean region of the time point's partition.
    voxel_ml : float
        Voxel volume (mL).
    gtm : dict name → float, optional
        GTM concentrations (Bq/mL) of the time point's regions; None for the plain sum.
    regions : dict name → bool ndarray, optional
        With ``gtm``, the regions the VOI's activity is made of: for a weights mask, every region of the
        time point's partition (each counted on its voxels inside the VOI); for a boolean region,
        ``{name: voi}`` (the region itself). A region without voxels (absent from ``gtm``) holds 0 Bq.

    Returns
    -------
    float
        Activity (Bq).

    Notes
    -----
    Each kind of ``voi`` keeps its own arithmetic, so that no result changes in its last bit (float32
    sums depend on what is summed and in which order): weights as ``sum(voi * image)`` over the whole
    grid or, with GTM, ``Σ_r c_r·|r ∩ {voi > 0}|`` over every region in order; a region as
    ``sum(image[voi])`` or ``c_name·|voi|``. The two agree in exact arithmetic, not always in the last bit.
    """
    if voi.dtype == bool:  # a region of the partition
        if gtm is None:
            return float(np.sum(image[voi])) * voxel_ml
        (name,) = regions
        return gtm[name] * float(np.count_nonzero(voi)) * voxel_ml if name in gtm else 0.0
    if gtm is None:  # a VOI's 0/1 weights
        return float(np.sum(voi * image)) * voxel_ml
    inside = voi > 0
    # a region without voxels at this time point has no GTM value and holds nothing
    return sum(gtm[n] * float(np.count_nonzero(regions[n] & inside)) for n in regions if n in gtm) * voxel_ml


def _fit_tac(ctx: _RunContext, tps: List[TimePointData], acts: List[float], name: str,
             label: Optional[str] = None):
    """Fit a VOI's (or region's) activities (Bq per time point) with the VOI's candidate models, weighted by
    the error model ``options.fit_weighting`` (:mod:`~LuDosimetryLib.kinetics.fit`).

    Returns
    -------
    fit, full : TacFit, TacFit or None
        The fit on every time point and None; with a subset, the reduced-time-point fit
        (:func:`~LuDosimetryLib.kinetics.reduced.fit_reduced`) and the fit on every time point. A population
        method takes the VOI's organ type from ``options.organ_types`` or, as a named assumption, from the
        exact-name defaults, and the user's ``options.population_half_lives``.

    Raises
    ------
    FitError
        Naming the VOI (``label``, default ``name``).
    OptionError
        A population method without the population half-lives, or without an organ type for the VOI.
    """
    from .assumptions import assume
    from .kinetics import fit_time_activity_curve
    from .kinetics.reduced import fit_reduced, population_inputs

    options, subset = ctx.options, ctx.subset
    label = label or name
    hours = [tp.hours for tp in tps]
    models = (options.models_per_voi or {}).get(name, options.models)
    try:
        full = fit_time_activity_curve(np.array(hours), np.array(acts), models=models, nuclide=ctx.nuclide,
                                       error_model=options.fit_weighting, label=label)
        if subset is None:
            return full, None
        idx = list(subset)
        if options.kinetics_from is not None:
            return _fit_with_earlier_cycle(ctx, np.array(hours)[idx], np.array(acts)[idx], name, label,
                                           tps[ctx.ref].entry.patient_id), full
        if options.reduced_method == "nlmm":  # a cohort's population kinetics (LuDosimetryLib.population)
            return _fit_nlmm(ctx, np.array(hours)[idx], np.array(acts)[idx], name, label), full
        organ, population, from_default = population_inputs(name, options.reduced_method, options.organ_types,
                                                             options.population_half_lives)
        if from_default:
            assume(f"organ type of VOI {name!r} for its population half-life", organ,
                   "default mapping of exact VOI names (--organ-type VOI=TYPE to set it)")
        red = fit_reduced(np.array(hours)[idx], np.array(acts)[idx], options.reduced_method, organ=organ,
                          population=population, nuclide=ctx.nuclide, label=label,
                          error_model=options.fit_weighting)
        return red, full
    except FitError as exc:
        raise FitError(f"VOI {label!r}: {exc.problem}", ctx.study_dir) from exc


def _fit_nlmm(ctx: _RunContext, t_h: np.ndarray, a_bq: np.ndarray, name: str, label: str):
    """The VOI's posterior curve given its organ type's population (``options.population``; the tissue of a lesion
    from its RT ROI Interpreted Type, as for the radiobiology), :func:`LuDosimetryLib.population.nlmm_fit`."""
    from .kinetics.reduced import organ_type, parse_organ_types
    from .population import nlmm_fit
    from .radiobiology import tissue_of

    roi_types = _roi_interpreted_types(ctx) if ctx.options.masks_per_time_point is None else {}
    tissue = tissue_of(organ_type(name, parse_organ_types(ctx.options.organ_types)), roi_types.get(name, ""))
    injected_bq = administered_activity_bq(ctx.inventory.injected_activity_bq, ctx.options.residual_activity_bq)
    return nlmm_fit(ctx.options.population, name, t_h, a_bq, injected_bq, nuclide=ctx.nuclide.name, tissue=tissue,
                    organ_type_items=ctx.options.organ_types, label=label)


def _earlier_cycle_half_lives(ctx: _RunContext, patient_id: str) -> Dict[str, float]:
    """``{VOI: effective half-life h}`` of the earlier cycle's results.json (``options.kinetics_from``),
    checked to be this patient's (StudyError naming the file otherwise)."""
    from .io.results_json import read_results_json
    from .patient_report import finite_number

    path = ctx.options.kinetics_from
    if ctx.earlier_half_lives_h is not None:
        return ctx.earlier_half_lives_h
    data = read_results_json(path, "an earlier cycle's results.json")
    vois, patient = data["vois"], str(data.get("patient_id", ""))
    if patient_id and patient and patient != patient_id:
        raise StudyError(f"the earlier cycle is patient {patient!r}, this study patient {patient_id!r}", path)
    recorded = data.get("options") if isinstance(data.get("options"), dict) else {}
    nuclide = recorded.get("nuclide")
    if nuclide is not None and str(nuclide) != ctx.nuclide.name:
        raise StudyError(f"the earlier cycle's radionuclide is {nuclide}, this run's {ctx.nuclide.name}: an effective "
                         "half-life holds the radionuclide's physical decay", path)
    _require_earlier_injection(data.get("injection_time"), ctx.inventory.injection_time, path, ctx.warnings)
    half_lives = {}
    for name, v in vois.items():
        value = v.get("effective_half_life_h") if isinstance(v, dict) else None
        if value is None:
            continue  # a VOI fitted without one (trapezoids): refused only when this run needs it
        t_eff_h = finite_number(value)
        if t_eff_h is None or t_eff_h <= 0.0:
            raise StudyError(f"VOI {name!r}: effective_half_life_h {value!r} is not a positive number of hours", path)
        half_lives[name] = t_eff_h
    ctx.earlier_half_lives_h = half_lives
    return half_lives


def _require_earlier_injection(recorded, injection_time: datetime, path, warnings_out: List[str]) -> None:
    """Refuse an "earlier" cycle injected after this study (a later cycle's file given by mistake), or one whose
    injection time is not a date; a file of this same injection is used and named in the warnings (the
    patient's multi-time-point kinetics of this cycle: a check of the single-time-point method)."""
    if recorded is None:
        return
    try:
        earlier = parse_local_datetime(str(recorded))
    except ValueError as exc:
        detail = f" ({exc})" if str(exc) else ""
        raise StudyError(f"injection_time {recorded!r} is not an ISO 8601 date and time{detail}", path) from None
    if earlier > injection_time:
        raise StudyError(f"is not an earlier cycle: injected {earlier.isoformat()}, after this study's injection "
                         f"({injection_time.isoformat()})", path)
    if earlier == injection_time:
        warnings_out.append(f"{path}: the earlier cycle's results are of this study's own injection "
                            f"({injection_time.isoformat()}); its kinetics are this cycle's multi-time-point fit")


def _fit_with_earlier_cycle(ctx: _RunContext, t_h: np.ndarray, a_bq: np.ndarray, name: str, label: str,
                            patient_id: str):
    """Single-time-point TIA with the VOI's own effective half-life from the patient's earlier cycle
    (Madsen et al., Med Phys 45(5):2318, 2018, with the patient's T_eff instead of a population's; the
    cycle-to-cycle stability of T_eff in Lu-177 DOTATATE: Garske-Román et al., EJNMMI 2018;45:970)."""
    from .assumptions import assume
    from .kinetics.reduced import fit_reduced

    half_lives = _earlier_cycle_half_lives(ctx, patient_id)
    if name not in half_lives:
        raise FitError(f"no effective half-life for it in the earlier cycle's results ({ctx.options.kinetics_from})")
    t_eff_h = half_lives[name]
    assume(f"effective half-life of VOI {name!r} equal to the patient's earlier cycle", f"{t_eff_h:.4g} h",
           "earlier cycle's results.json", ctx.options.kinetics_from)
    key = f"earlier cycle: {name}"
    return fit_reduced(t_h, a_bq, "population_half_life", organ=key, population={key: (t_eff_h, None)},
                       nuclide=ctx.nuclide, label=label)


def _voi_tia_map(ctx: _RunContext, tps: List[TimePointData], on_ref: List[sitk.Image],
                 kinetics: Dict[str, _VoiKinetics]) -> np.ndarray:
    """VOI-based TIA concentration map (Bq·s/mL) on the reference SPECT grid, whose integral over every VOI,
    nested ones included, is the VOI's reported TIA.

    Outside the VOIs each voxel is integrated by trapezoids from (0, 0) with a physical-decay tail, on the
    time points carried to the reference grid (``on_ref``; with ``pvc="gtm"`` corrected voxel by voxel, so
    that the activity a VOI recovers is not also left in its halo). The VOI regions (lesions carved out of
    organs, :func:`_partition`) are filled smallest first: each gets its VOI's reported TIA less what the
    map already holds in the VOI's other voxels (the smaller VOIs inside it), spread in proportion to the
    reference image (``on_ref``). The fit of a whole organ and the fits of the lesions inside it are not
    additive; taking the organ's remainder, not a separate fit of its parenchyma, keeps both the organ's
    and each lesion's TIA.

    Where the VOIs inside a VOI hold more than its own TIA (fits that cannot be reconciled) its region
    takes its own fitted curve instead (:func:`_region_tia_bq_s`), and a warning says so.

    Parameters
    ----------
    tps : list of TimePointData
        The time points (hours, SPECT, regions and GTM concentrations on each one's own grid).
    on_ref : list of SimpleITK.Image
        Every time point's SPECT (Bq/mL) on the reference grid (:func:`_images_on_reference`).
    kinetics : dict name → _VoiKinetics
        The VOIs' fits (:func:`_fit_vois`); ``fit.tia_bq_s`` is the reported TIA.
    """
    ref, subset = ctx.ref, ctx.subset
    ref_tp = tps[ref]
    ref_arr = sitk.GetArrayFromImage(on_ref[ref]).astype(np.float64)
    use = list(range(len(on_ref))) if subset is None else list(subset)
    t_s = np.asarray([tp.hours for tp in tps], dtype=float)[use] * 3600.0
    stack = [np.clip(sitk.GetArrayViewFromImage(on_ref[i]).astype(np.float64), 0.0, None) for i in use]
    lam = ctx.nuclide.decay_constant_per_s
    tia = 0.5 * stack[0] * t_s[0]
    for i in range(1, len(t_s)):
        tia += 0.5 * (stack[i] + stack[i - 1]) * (t_s[i] - t_s[i - 1])
    tia += stack[-1] / lam
    vml = ref_tp.voxel_ml
    for name, region in ref_tp.regions.items():  # smallest VOI first
        if not region.any():
            continue
        others = (ref_tp.masks[name] >= 0.5) & ~region  # the smaller VOIs' voxels inside this one, already set
        held = float(np.sum(tia[others])) * vml
        region_tia = float(kinetics[name].fit.tia_bq_s) - held
        if region_tia < 0:
            region_tia = _region_tia_bq_s(ctx, tps, name, float(np.sum(tia[region])) * vml)
            ctx.warnings.append(
                f"VOI {name!r}: the VOIs inside it hold {held:.4g} Bq·s, more than its own TIA "
                f"({float(kinetics[name].fit.tia_bq_s):.4g} Bq·s); the TIA map fills its remaining voxels with "
                f"their own fit ({region_tia:.4g} Bq·s), so the map's TIA over {name!r} differs from the reported")
        weights = np.clip(ref_arr[region], 0.0, None)
        total = weights.sum()
        if total <= 0:
            weights = np.ones_like(weights)
            total = weights.sum()
        tia[region] = region_tia * weights / total / vml
    return tia.astype(np.float32)


def _region_tia_bq_s(ctx: _RunContext, tps: List[TimePointData], name: str, trapezoid_bq_s: float) -> float:
    """TIA (Bq·s) of VOI ``name``'s region (the VOI less the smaller VOIs inside it) from its own curve, measured
    on every time point's own grid and regions (:func:`_voi_activity_bq`) and fitted like its VOI
    (:func:`_fit_tac`); ``trapezoid_bq_s`` (the voxels' trapezoid integral) where the fit fails."""
    acts = [_voi_activity_bq(tp.array, tp.regions[name], tp.voxel_ml, gtm=tp.gtm_bq_ml,
                             regions={name: tp.regions[name]}) for tp in tps]
    try:
        return float(_fit_tac(ctx, tps, acts, name, f"{name} (region)")[0].tia_bq_s)
    except FitError:
        return trapezoid_bq_s


def _images_on_reference(tps: List[TimePointData], ref: int) -> List[sitk.Image]:
    """Every time point's SPECT (Bq/mL) on the reference grid: registered (activity-conserving with the
    deformation's Jacobian) or, without registration, resampled in the shared patient coordinates. With
    ``pvc="gtm"`` each time point's image corrected voxel by voxel on its own grid (``pvc_image``)."""
    ref_img = tps[ref].image
    out = []
    for tp in tps:
        img = tp.image if tp.pvc_image is None else tp.pvc_image
        if tp.index == ref:
            out.append(img)
        elif tp.registration is not None:
            out.append(tp.registration.apply_to_image(img, ref_img, jacobian=True))
        else:
            out.append(resample_to(img, ref_img, default=0.0))
    return out


def _file_kernel(options: RunOptions):
    """The dose kernel of ``options.kernel_path`` (read once, before the study), or None."""
    if options.kernel_path is None:
        return None
    from .dose import read_dose_kernel
    return read_dose_kernel(options.kernel_path)


def _time_point_subset(options: RunOptions, n_tp: int, ref: int, study_dir) -> Optional[List[int]]:
    """0-based indices of ``options.time_points`` (1-based), validated; None for all time points."""
    if options.time_points is None:
        return None
    idx = sorted({int(t) - 1 for t in options.time_points})
    bad = [i + 1 for i in idx if not 0 <= i < n_tp]
    if bad:
        raise StudyError(f"{bad} do not exist (the study has {n_tp} time points)", study_dir, option="time_points")
    if not idx:
        raise StudyError("is empty", study_dir, option="time_points")
    if ref not in idx:
        raise StudyError(f"the reference time point {ref + 1} must be one of {[i + 1 for i in idx]}", study_dir,
                         option="time_points")
    return None if len(idx) == n_tp else idx


def _series_header(entry: SeriesEntry):
    """Header (no pixels) of a series' first file, read as tolerantly as the inventory read it."""
    from .io.dicom_common import read_dicom
    return read_dicom(entry.files[0], stop_before_pixels=True)


def write_outputs(results: StudyResults, out_dir, overwrite: bool = False) -> Path:
    """Write a run's outputs atomically (see :func:`LuDosimetryLib.report.write_outputs`)."""
    from .report import write_outputs as _write
    return _write(results, out_dir, overwrite=overwrite)
