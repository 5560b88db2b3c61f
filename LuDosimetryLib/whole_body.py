"""Whole body, remainder of body and hybrid planar/SPECT dosimetry (issue #14): the run stage.

Whole body
    From the planar whole-body images when the study has them (:func:`quantify_session`: conjugate view,
    TEW scatter, attenuation and source depth from the session's CT and SPECT, :mod:`LuDosimetryLib.planar`),
    one activity per planar session; otherwise from the SPECT field of view (the activity of every time point's
    SPECT), which misses what lies outside the field of view: a limitation the results name. The time-activity
    curve is fitted like a VOI's (:func:`LuDosimetryLib.kinetics.fit_time_activity_curve`, AICc) and integrated.
Remainder of body
    Whole body less the VOIs: TIA_RoB = TIA_WB − the TIA map summed over the union of the VOIs (nested VOIs
    counted once); mass = body mass less the VOIs' (CT body outline on the reference time point, or the
    patient's weight where the planar images reach beyond the CT). This is the remainder-of-body source of the
    EANM red-marrow guidance (Hindorf C. et al., Eur J Nucl Med Mol Imaging 2010;37:1238–1250).
Hybrid planar/SPECT (``options.hybrid_time_point``)
    Each VOI's curve shape from its planar regions over the planar sessions, its amplitude from one SPECT time
    point: the planar curve scaled by the SPECT over the planar activity of the session taken with that SPECT,
    TIA_hyb = TIA_planar · A_SPECT(t_k) / A_planar(t_k) (:func:`_hybrid`): the hybrid planar–SPECT/CT method of the
    EANM Dosimetry Committee's Lu-177 recommendations (Sjögreen Gleisner K. et al., "EANM dosimetry committee
    recommendations for dosimetry of 177Lu-labelled somatostatin-receptor- and PSMA-targeting ligands", Eur J Nucl
    Med Mol Imaging 2022;49:1778–1809, doi:10.1007/s00259-022-05727-7) and of MIRD Pamphlet No. 26 (Ljungberg M.
    et al., J Nucl Med 2016;57:151–162). Reported beside the run's SPECT TIA, with their difference.

Planar view and edited regions
    Each session's attenuation-corrected geometric mean and the regions used are kept (``ctx.planar_views``,
    written by :func:`LuDosimetryLib.io.planar.write_planar_views`); ``options.planar_regions`` (files the panel
    saves after the user edits them) replace the projected regions that they change. A region drawn by the user is
    taken as it is (:func:`~LuDosimetryLib.planar.regions.region_activity` with ``restore=False``). The checks of
    the planar inputs that need only the headers run before any heavy work (:func:`check_planar_inputs`).

Mean absorbed doses here are the electrons' (ICRP 107 mean energy per decay) deposited in the region's mass;
photons and cross-dose are not in them (they are said so in ``dose_method``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Dict, List, Optional

import numpy as np
import SimpleITK as sitk
from scipy.ndimage import binary_dilation

from .assumptions import assume
from .errors import DicomFileError, FitError, OptionError, StudyError

#: Planar sensitivity used when none is given (cps/MBq per head, source in air, 208 keV 20 % window,
#: medium-energy collimator): a LuDosimetry default of the order reported for Lu-177 (MIRD Pamphlet No. 26).
DEFAULT_PLANAR_SENSITIVITY_CPS_PER_MBQ = 10.0
#: The whole-body region is the CT's body outline dilated by this (mm): it takes the blurred edge counts.
WHOLE_BODY_MARGIN_MM = 20.0
#: Room background: pixels at least this far from the body (mm), when there are enough of them.
ROOM_BACKGROUND_MARGIN_MM = 50.0
MIN_BACKGROUND_PIXELS = 50
#: The planar image is searched within this distance of the header's position (mm).
ALIGNMENT_SEARCH_MM = 60.0
#: Rays whose SPECT activity is below this fraction of the largest take the uniform-source factor.
SPECT_PROFILE_MIN_FRACTION = 0.01
#: Hybrid planar/SPECT: the planar session paired with the SPECT is the nearest one within this (h).
HYBRID_PAIRING_H = 6.0
ELECTRON_DOSE = ("electrons (ICRP 107 mean energy per decay) deposited in the region's mass; photons and "
                 "cross-dose not included")


@dataclass
class PlanarMeasurement:
    """What one planar session gave."""

    hours: float
    acquisition_time: str
    whole_body_bq: float
    counts: float
    scatter_fraction: float
    room_background_counts_per_pixel: Dict[str, float]
    sensitivity_cps_per_mbq: float
    imaged_s: float
    time_point: int  # the SPECT/CT time point (1-based) whose CT and SPECT were used
    offset_mm: Optional[List[float]]
    correlation: float
    outside_ct_fraction: float
    regions: Dict[str, object] = field(default_factory=dict)  # VOI → planar.regions.RegionActivity
    file: str = ""
    image: Optional[sitk.Image] = None  # attenuation-corrected geometric mean (Bq per pixel), projection.grid_image
    region_masks: Dict[str, np.ndarray] = field(default_factory=dict)  # VOI → bool (rows, columns), as used
    edited: Dict[str, str] = field(default_factory=dict)  # VOI → the --planar-regions file its region came from

    def to_json(self) -> dict:
        return {"hours": self.hours, "acquisition_time": self.acquisition_time, "activity_bq": self.whole_body_bq,
                "edited_regions": dict(self.edited),
                "counts": self.counts, "scatter_fraction": self.scatter_fraction,
                "room_background_counts_per_pixel": self.room_background_counts_per_pixel,
                "imaged_s": self.imaged_s, "ct_and_spect_of_time_point": self.time_point,
                "shift_from_header_mm": self.offset_mm, "alignment_correlation": self.correlation,
                "fraction_outside_ct": self.outside_ct_fraction, "file": self.file}


# ----------------------------------------------------------------------------------------------- stage

def whole_body_stage(ctx, tps, kinetics, vois, tia_voxel: np.ndarray) -> None:
    """Set ``ctx.whole_body`` and ``ctx.remainder_of_body`` and, with ``options.hybrid_time_point``, each VOI's
    ``hybrid_tia_bq_s`` and ``hybrid_vs_spect_pct``.

    The options and headers were checked by :func:`check_planar_inputs` at the start of the run (K a time
    point, both views, a photopeak window).

    Raises
    ------
    DicomFileError
        A planar session unreadable.
    OptionError
        Hybrid with fewer than two planar sessions measured (no CT for their attenuation).
    """
    options = ctx.options
    entries = ctx.inventory.by_role("planar_whole_body") if options.planar else []
    hybrid = options.hybrid_time_point
    measured: List[PlanarMeasurement] = []
    reason = "no planar whole-body images in the study" if options.planar else "planar images left out (--no-planar)"
    if entries:
        with_ct = [tp for tp in tps if tp.ct_hu is not None]
        if not with_ct:
            assume("planar whole body: no CT for the patient's thickness (attenuation)",
                   "whole body from the SPECT field of view instead", "no CT in any SPECT's frame of reference",
                   entries[0].files[0])
            reason = "no CT for the planar attenuation correction"
        else:
            measured = quantify_study(ctx, with_ct, entries)
    if hybrid is not None and len(measured) < 2:
        raise OptionError("hybrid planar/SPECT needs planar whole-body images at two or more times (with a CT "
                          f"for their attenuation); the study has {len(measured)}", option="hybrid_time_point")
    ctx.planar_views = [(m.acquisition_time, m.image, m.region_masks) for m in measured]
    ctx.whole_body = (_planar_whole_body(ctx, tps, measured) if measured else _spect_whole_body(ctx, tps, reason))
    ctx.remainder_of_body = _remainder(ctx, tps, kinetics, vois, tia_voxel, ctx.whole_body, measured)
    if hybrid is not None:
        ctx.whole_body["hybrid"] = _hybrid(ctx, tps, kinetics, vois, measured, hybrid)


def check_planar_inputs(ctx, n_time_points: int) -> None:
    """The checks of the planar inputs and options made before any heavy work (from the headers only).

    Parameters
    ----------
    ctx
        The run's context, with its inventory.
    n_time_points : int
        The study's SPECT time points.

    Raises
    ------
    OptionError
        ``--hybrid K`` with K not a time point, or without planar images at two or more times;
        ``--planar-regions`` without planar images, or a file not of a planar session of the study or not on
        its matrix.
    DicomFileError
        A planar session without the opposite view or without a window containing the photopeak; a header
        that does not state the view or the energy window.
    """
    from .io.planar import planar_sessions, read_session_header

    options = ctx.options
    hybrid = options.hybrid_time_point
    if hybrid is not None and not 0 <= hybrid < n_time_points:
        raise OptionError(f"time point {hybrid + 1} does not exist (the study has {n_time_points})",
                          option="hybrid_time_point")
    entries = ctx.inventory.by_role("planar_whole_body") if options.planar else []
    headers = [read_session_header(files) for files in planar_sessions(entries)]
    for header in headers:
        _check_views(header.acquisition_time, header.windows, header.files[0])
    without = "the planar images are left out (--no-planar)" if not options.planar else \
        f"the study has {len(headers)} planar whole-body session{'s' if len(headers) != 1 else ''}"
    if hybrid is not None and len(headers) < 2:
        raise OptionError(f"hybrid planar/SPECT needs planar whole-body images at two or more times; {without}",
                          option="hybrid_time_point")
    if options.planar_regions and not headers:
        raise OptionError(f"planar regions given, but {without}", option="planar_regions")
    ctx.planar_regions_by_session = {}
    for path in options.planar_regions or ():
        masks, grid, session = _region_file_session(path, headers)
        ctx.planar_regions_by_session.setdefault(session, []).append((path, masks, grid))


def _check_views(acquisition_time, windows: Dict[str, list], path: str) -> None:
    """Both views, each with a window containing the photopeak (``windows``: view → [(name, keV range)])."""
    from .recon.energy import EnergyWindow, identify_windows

    missing = [v for v in ("ANTERIOR", "POSTERIOR") if v not in windows]
    if missing:
        have = " and ".join(v.lower() for v in windows) or "no"
        raise DicomFileError(f"planar session of {acquisition_time.isoformat()} has only the {have} view: the "
                             f"conjugate-view method needs the {missing[0].lower()} view too (or leave the planar "
                             "images out with {option})", path, option="planar")
    for view, wins in windows.items():
        try:
            identify_windows([EnergyWindow(name, *kev) for name, kev in wins])
        except ValueError as exc:
            raise DicomFileError(f"planar {view.lower()} view of {acquisition_time.isoformat()}: {exc} (or leave "
                                 "the planar images out with {option})", path, option="planar") from None


def _region_file_session(path, headers):
    """A ``--planar-regions`` file read: (regions, grid, the session's ISO time); refused when of no session of
    the study, or not on its session's matrix."""
    from .io.planar import read_planar_regions

    masks, grid, session = read_planar_regions(path)
    by_time = {h.acquisition_time.isoformat(): h for h in headers}
    header = by_time.get(session)
    if header is None:
        raise OptionError(f"the regions are of the planar session of {session or 'an unnamed session'}, which the "
                          f"study does not have (its sessions: {', '.join(by_time) or 'none'})", path,
                          option="planar_regions")
    cols, _one, rows = grid.GetSize()
    sx, _sy, sz = grid.GetSpacing()
    spacing = header.pixel_spacing_mm or (sz, sx)
    if (rows, cols) != tuple(header.shape) or abs(sz - spacing[0]) > 1e-3 * spacing[0] \
            or abs(sx - spacing[1]) > 1e-3 * spacing[1]:
        raise OptionError(f"the regions' grid ({rows}x{cols} pixels of {sz:g}x{sx:g} mm) is not the planar grid of "
                          f"the session of {session} ({header.shape[0]}x{header.shape[1]} pixels of "
                          f"{spacing[0]:g}x{spacing[1]:g} mm)", path, option="planar_regions")
    return masks, grid, session


def summary_rows(whole_body: Optional[dict], remainder_of_body: Optional[dict], red_marrow: Optional[dict]
                 ) -> List[List[object]]:
    """The rows of the whole-body results table: a title row, then one row per quantity the run has:
    ``[quantity, method, TIA (Bq·s), mean dose (Gy), u(TIA) (%), u(dose) (%)]`` (None where not computed)."""
    rows: List[List[object]] = [["Quantity", "Method", "TIA (Bq s)", "Mean dose (Gy)", "u TIA (%)",
                                 "u dose (%)"]]
    for title, d in (("Whole body", whole_body), ("Remainder of body", remainder_of_body),
                     ("Red marrow", red_marrow)):
        if d is not None:
            rows.append([title, d.get("method"), d.get("tia_bq_s"), d.get("mean_dose_gy"),
                         d.get("tia_uncertainty_pct"), d.get("mean_dose_uncertainty_pct")])
    return rows


# ------------------------------------------------------------------------------------------ planar

def quantify_study(ctx, tps_with_ct, entries) -> List[PlanarMeasurement]:
    """Every planar session of the study (series within an hour of each other), in time order."""
    from .io.planar import planar_sessions, read_planar

    out = []
    inj = ctx.inventory.injection_time
    sensitivity = _sensitivity(ctx, entries[0].files[0])
    for files in planar_sessions(entries):
        try:
            acq = read_planar(files)
        except DicomFileError as exc:  # the way out: the run without the planar images
            raise DicomFileError(exc.problem + " (or leave the planar images out with {option})", exc.path,
                                 option="planar") from None
        hours = (acq.acquisition_time - inj).total_seconds() / 3600.0
        if hours <= 0:
            ctx.warnings.append(f"{files[0]}: planar image acquired {-hours:.2f} h before the injection; left out")
            continue
        tp = min(tps_with_ct, key=lambda t: abs(t.hours - hours))
        out.append(quantify_session(ctx, acq, hours, tp, sensitivity))
    return sorted(out, key=lambda m: m.hours)


def _sensitivity(ctx, path: str) -> float:
    given = ctx.options.planar_calibration_cps_per_mbq
    if given is not None:
        return float(given)
    assume("planar system sensitivity (photopeak, per head, source in air)",
           f"{DEFAULT_PLANAR_SENSITIVITY_CPS_PER_MBQ:g} cps/MBq",
           "LuDosimetry default of the order of MIRD Pamphlet 26; give --planar-calibration-cps-per-mbq", path)
    return DEFAULT_PLANAR_SENSITIVITY_CPS_PER_MBQ


def _disk(radius_px: float) -> np.ndarray:
    r = max(int(math.ceil(radius_px)), 1)
    y, x = np.mgrid[-r:r + 1, -r:r + 1]
    return (x * x + y * y) <= radius_px * radius_px + 1e-9


def _views(ctx, acq):
    """Primary counts per view (TEW), photopeak counts per view; the bad-input checks of the windows."""
    from .planar.windows import split_windows, tew_primary

    path = acq.files[0]
    try:
        views = split_windows(acq.frames)
    except ValueError as exc:
        raise DicomFileError(f"planar image: {exc}", path) from None
    _check_views(acq.acquisition_time, {v: [(w.name, (w.lower_kev, w.upper_kev)) for w in vc.windows]
                                        for v, vc in views.items()}, path)
    for view in ("ANTERIOR", "POSTERIOR"):
        vc = views[view]
        if vc.lower is None:
            assume(f"planar {view.lower()} view: scatter correction", "none (no energy window adjacent below the "
                   "photopeak for TEW)", "energy windows of the header", path)
        elif vc.upper is None:
            assume(f"planar {view.lower()} view: TEW upper scatter window", "0 counts (no window adjacent above "
                   "the photopeak)", "energy windows of the header", path)
    peak = {v: np.asarray(views[v].peak, dtype=np.float64) for v in ("ANTERIOR", "POSTERIOR")}
    for view, counts in peak.items():
        if not (np.isfinite(counts).all() and counts.sum() > 0):
            where = next((f.file for f in acq.frames if f.view == view and f.counts is views[view].peak), path)
            raise DicomFileError(f"the planar {view.lower()} photopeak image of {acq.acquisition_time.isoformat()} "
                                 f"holds {'no counts' if np.isfinite(counts).all() else 'non-finite values'} (or "
                                 "leave the planar images out with {option})", where, option="planar")
    primary = {v: tew_primary(views[v]) for v in ("ANTERIOR", "POSTERIOR")}
    return primary, peak


def quantify_session(ctx, acq, hours: float, tp, sensitivity_cps_per_mbq: float) -> PlanarMeasurement:
    """Whole-body and per-VOI activity (Bq) of one planar session, with the CT and SPECT of time point ``tp`` and
    the planar sensitivity (cps/MBq per head).

    The planar image is placed on the CT by correlation with the SPECT's projection; the attenuation is the μ
    line integral through the CT (208 keV); the source depth factor F comes from the SPECT's activity profile
    along each ray (:func:`~LuDosimetryLib.planar.conjugate.depth_profile_factor`), or where the SPECT shows
    nothing, the uniform-source factor for the body's μL; rays beyond the CT's axial extent take those of the
    nearest CT row (a named assumption when they hold activity).
    """
    from .planar.conjugate import (activity_image_bq, conjugate_mean, counts_per_bq, depth_profile_factor,
                                   line_integrals, self_attenuation_factor)
    from .planar.projection import (PlanarGrid, align_offset_px, grid_image, project, sample_on_grid, volume_grid,
                                    y_range)
    from .planar.regions import (MIN_THICKNESS_MM, background_ring, nesting, region_activity, region_masks,
                                 view_depth)
    from .recon.mumap import mu_image_from_ct, mu_water_per_cm

    path = acq.files[0]
    primary, peak = _views(ctx, acq)
    sensitivity = float(sensitivity_cps_per_mbq)
    sz, sx = acq.pixel_spacing_mm
    px = math.sqrt(sz * sx)
    # placement: the SPECT's projection correlated with the geometric mean
    spect = tp.image
    tgrid = volume_grid(spect, acq.pixel_spacing_mm)
    template = project(spect, tgrid)
    gm = conjugate_mean(primary["ANTERIOR"], primary["POSTERIOR"])
    guess = None
    if acq.x0_mm is not None:
        guess = (int(round((acq.z0_mm - tgrid.z0_mm) / sz)), int(round((tgrid.x0_mm - acq.x0_mm) / sx)))
    try:
        r, c, corr = align_offset_px(gm, template, guess, int(math.ceil(ALIGNMENT_SEARCH_MM / min(sz, sx))))
    except ValueError as exc:
        raise StudyError(f"planar image of {acq.acquisition_time.isoformat()}: {exc}", path) from None
    grid = PlanarGrid(tgrid.x0_mm - c * sx, tgrid.z0_mm + r * sz, acq.pixel_spacing_mm, acq.shape)
    offset = None if guess is None else [(r - guess[0]) * sz, (c - guess[1]) * sx]
    # attenuation and depth from the CT and the SPECT, sampled on the same rays
    mu_img = mu_image_from_ct(tp.ct_hu)
    yr = y_range(mu_img)
    dy = float(sx)
    mu, covered, dy = sample_on_grid(mu_img, grid, dy, y_range_mm=yr)
    rows_in = covered.any(axis=1)
    if not rows_in.any():
        raise StudyError(f"the planar image of {acq.acquisition_time.isoformat()} does not overlap the CT of time "
                         f"point {tp.index + 1}", path)
    nearest = None
    if not rows_in.all():  # beyond the CT's axial extent: the rays of the nearest CT row
        idx = np.nonzero(rows_in)[0]
        nearest = idx[np.abs(np.arange(len(rows_in))[:, None] - idx[None, :]).argmin(axis=1)]
        mu = mu[nearest]
    mu_w = mu_water_per_cm() / 10.0
    in_body = mu > 0.5 * mu_w
    body_t = np.count_nonzero(in_body, axis=1) * dy
    integrals = line_integrals(mu, dy)  # (to anterior, to posterior, μL): the depth factor and the VOIs' depths
    to_ant, to_post, mu_l = integrals
    act, _cov, _ = sample_on_grid(spect, grid, dy, y_range_mm=yr)
    column = np.clip(act, 0, None).astype(np.float64).sum(axis=1)
    depth_f = depth_profile_factor(act, mu, dy, integrals)
    use = (column > SPECT_PROFILE_MIN_FRACTION * max(float(column.max()), 1e-30)) & np.isfinite(depth_f)
    factor = np.where(use, depth_f, self_attenuation_factor(mu_l))
    if nearest is not None:  # the whole ray of the nearest CT row, its SPECT profile included
        factor = factor[nearest]
    transmission = np.exp(-mu_l)
    # room background, far from the body
    body = body_t > 0
    far = ~binary_dilation(body, _disk(ROOM_BACKGROUND_MARGIN_MM / px)) & rows_in[:, None]
    background = {v: float(primary[v][far].mean()) if far.sum() >= MIN_BACKGROUND_PIXELS else 0.0 for v in primary}
    ant = primary["ANTERIOR"] - background["ANTERIOR"]
    post = primary["POSTERIOR"] - background["POSTERIOR"]
    k = counts_per_bq(sensitivity, acq.dwell_s)
    m = activity_image_bq(ant, post, transmission, np.ones_like(transmission), k)
    region = binary_dilation(body, _disk(WHOLE_BODY_MARGIN_MM / px)) | ~rows_in[:, None]
    wb = float((m * factor)[region].sum())
    outside = float((m * factor)[~rows_in].sum()) / wb if wb > 0 and not rows_in.all() else 0.0
    if outside > 0.001:
        assume(f"planar whole body at {hours:.1f} h: attenuation beyond the CT's axial extent",
               f"that of the nearest CT row ({100 * outside:.1f} % of the whole-body activity)", "default", path)
    counts = float((peak["ANTERIOR"] + peak["POSTERIOR"])[region].sum())
    prim = float((primary["ANTERIOR"] + primary["POSTERIOR"])[region].sum())
    # the VOIs' regions, and the depths of the body and of each VOI along every ray (background view by view)
    body_depth = view_depth(in_body, to_ant, to_post, dy)
    voi_depth, thick = {}, {}
    for name, mask in tp.masks.items():
        img = sitk.GetImageFromArray(np.asarray(mask, dtype=np.float32))
        img.CopyInformation(tp.image)
        inside = sample_on_grid(img, grid, dy, y_range_mm=yr)[0]
        thick[name] = inside.astype(np.float64).sum(axis=1) * dy
        voi_depth[name] = view_depth(inside * in_body, to_ant, to_post, dy)
    nest = nesting(tp.masks)
    regions = region_masks(thick, nest)
    edited = _edited_regions(ctx, acq, grid, regions)
    regions.update({name: mask for name, (mask, _path) in edited.items()})
    size = {n: float(np.count_nonzero(np.asarray(mk) >= 0.5)) for n, mk in tp.masks.items()}
    acts = {}
    for name in thick:
        # the ring avoids every other VOI but those containing this one (a lesion's background is its organ)
        others = [thick[o] >= MIN_THICKNESS_MM for o in thick
                  if o != name and not (o in nest[name] and size[o] > size[name])]
        excluded = np.any(others, axis=0) if others else np.zeros_like(body)
        ring = background_ring(regions[name], excluded | (thick[name] >= MIN_THICKNESS_MM), body, px)
        around = body_depth - voi_depth[name]
        acts[name] = region_activity(ant, post, k, transmission, regions[name], thick[name],
                                     self_attenuation_factor(mu_w * thick[name]), around, body_depth, ring,
                                     restore=name not in edited)
        if not ring.any() and regions[name].any():
            ctx.warnings.append(f"planar image of {acq.acquisition_time.isoformat()}: {name}: no background pixels "
                                "around its region (other VOIs or the body's edge all around it); its planar "
                                "activity includes the tissue in front of and behind it")
    return PlanarMeasurement(hours=hours, acquisition_time=acq.acquisition_time.isoformat(), whole_body_bq=wb,
                             counts=counts, scatter_fraction=1.0 - prim / counts if counts > 0 else float("nan"),
                             room_background_counts_per_pixel=background, sensitivity_cps_per_mbq=sensitivity,
                             imaged_s=acq.dwell_s, time_point=tp.index + 1, offset_mm=offset, correlation=corr,
                             outside_ct_fraction=outside, regions=acts, file=path,
                             image=grid_image(grid, 0.5 * (yr[0] + yr[1]), m * factor), region_masks=regions,
                             edited={name: path for name, (_mask, path) in edited.items()})


def _edited_regions(ctx, acq, grid, projected: Dict[str, np.ndarray]) -> Dict[str, tuple]:
    """``{VOI: (region, file)}`` of the ``--planar-regions`` files of this session (read once by
    :func:`check_planar_inputs`) whose region differs from the projected one (a region equal to its projection is
    the projection); VOIs the run does not have are named in the warnings and left out.

    Raises
    ------
    OptionError
        A file of this session that does not lie on its planar grid (the placement found on the CT).
    """
    from .planar.projection import same_grid

    session = acq.acquisition_time.isoformat()
    out = {}
    for path, masks, image in ctx.planar_regions_by_session.get(session, []):
        if not same_grid(image, grid):
            raise OptionError(f"the regions do not lie on the planar grid of the session of {session} (its position "
                              f"on the CT: x {grid.x0_mm:.1f} mm, z {grid.z0_mm:.1f} mm; the file's: x "
                              f"{image.GetOrigin()[0]:.1f} mm, z {image.GetOrigin()[2]:.1f} mm)", path,
                              option="planar_regions")
        for name, mask in masks.items():
            if name not in projected:
                ctx.warnings.append(f"{path}: planar region {name!r} is not a VOI of the run; left out")
            elif not np.array_equal(mask, projected[name]):
                out[name] = (np.asarray(mask, dtype=bool), str(path))
    return out


# ------------------------------------------------------------------------------------------ curves

def _fit(ctx, hours, acts, label: str):
    from .kinetics import fit_time_activity_curve
    return fit_time_activity_curve(np.asarray(hours, dtype=float), np.asarray(acts, dtype=float),
                                   models=ctx.options.models, nuclide=ctx.nuclide,
                                   error_model=ctx.options.fit_weighting, label=label)


def _uncertainty(ctx, fit, sigma_bq) -> dict:
    """The TIA's relative standard uncertainty (%, k = 1) from calibration, counting and fit (no delineation:
    the whole body holds every count)."""
    from .uncertainty import tia_uncertainty
    u = tia_uncertainty(fit, sigma_bq, delineation=None, overrides=ctx.options.uncertainty)
    comps = {k: v for k, v in u.components.items() if k in ("calibration", "counting", "fit")}
    total = math.sqrt(sum(v * v for v in comps.values())) if all(math.isfinite(v) for v in comps.values()) else None
    return {"tia_uncertainty_pct": None if total is None else 100.0 * total,
            "uncertainty_budget": {k: 100.0 * v for k, v in comps.items()}}


def _curve_json(ctx, hours, acts, label: str, sigma_bq) -> dict:
    """Fit, TIA and uncertainty of a curve, as results.json holds them; the fit's failure as a note."""
    try:
        fit = _fit(ctx, hours, acts, label)
    except FitError as exc:
        ctx.warnings.append(f"{label}: {exc.problem}; no TIA")
        return {"tia_bq_s": None, "note": exc.problem}
    ctx.warnings += [f"{label}: {w}" for w in fit.warnings]
    out = {"tia_bq_s": float(fit.tia_bq_s),
           "tia_se_bq_s": None if fit.tia_se_bq_s is None or not math.isfinite(fit.tia_se_bq_s)
           else float(fit.tia_se_bq_s),
           "fit_model": fit.model, "fit_params": {k: float(v) for k, v in fit.params.items()},
           "effective_half_life_h": None if fit.effective_half_life_h is None else float(fit.effective_half_life_h),
           "fit_error_model": str(fit.error_model), "_fit": fit}
    out.update(_uncertainty(ctx, fit, sigma_bq))
    return out


def _injected_bq(ctx) -> float:
    residual = ctx.options.residual_activity_bq or 0.0
    return float(ctx.inventory.injected_activity_bq) - float(residual)


def _finish(ctx, d: dict, mass_g: Optional[float]) -> dict:
    fit = d.pop("_fit", None)
    tia = d.get("tia_bq_s")
    d["mass_g"] = mass_g
    d["tiac_h"] = None if tia is None else tia / _injected_bq(ctx) / 3600.0
    d["mean_dose_gy"] = (None if tia is None or not mass_g else tia * ctx.nuclide.electron_energy_j / (mass_g / 1e3))
    d["dose_method"] = ELECTRON_DOSE
    return fit, d


def _planar_whole_body(ctx, tps, measured: List[PlanarMeasurement]) -> dict:
    from .uncertainty import counts_sigma_bq

    hours = [m.hours for m in measured]
    acts = [m.whole_body_bq for m in measured]
    sigma = [float(counts_sigma_bq(m.whole_body_bq, m.counts)) for m in measured]
    d = {"method": "planar conjugate view", **_curve_json(ctx, hours, acts, "whole body (planar)", sigma)}
    d["time_points"] = [m.to_json() for m in measured]
    d["sensitivity_cps_per_mbq"] = measured[0].sensitivity_cps_per_mbq
    d["planar_regions"] = {name: {"hours": hours,
                                  "activity_bq": [m.regions[name].activity_bq for m in measured],
                                  "background_bq": [m.regions[name].background_bq for m in measured],
                                  "fraction_of_projection_used": [m.regions[name].used_thickness_fraction
                                                                  for m in measured],
                                  # the --planar-regions file of each session whose region was edited, else None
                                  "edited_region_file": [m.edited.get(name) for m in measured]}
                           for name in measured[0].regions if all(name in m.regions for m in measured)}
    beyond = max(m.outside_ct_fraction for m in measured)
    d["limitations"] = [] if beyond <= 0.001 else [
        f"up to {100 * beyond:.1f} % of the whole-body activity lies beyond the CT's axial extent (attenuation of "
        "the nearest CT row)"]
    mass, source = _body_mass(ctx, tps, beyond > 0.001)
    d["mass_source"] = source
    return _finish(ctx, d, mass)[1]


def _spect_whole_body(ctx, tps, reason: str) -> dict:
    from . import uncertainty as unc

    used = list(range(len(tps))) if ctx.subset is None else list(ctx.subset)
    hours = [tps[i].hours for i in used]
    acts, sigma = [], []
    for i in used:
        arr = tps[i].array
        acts.append(float(np.sum(arr, dtype=np.float64)) * tps[i].voxel_ml)
        sigma.append(unc.image_sigma_bq(arr, np.ones(arr.shape, dtype=np.float32), tps[i].voxel_ml,
                                        unc.image_counts_per_bq_ml(arr)))
    limitation = (f"whole body from the SPECT field of view ({reason}): activity outside the SPECT's field of "
                  "view is not counted")
    ctx.warnings.append(limitation)
    d = {"method": "SPECT field of view", **_curve_json(ctx, hours, acts, "whole body (SPECT field of view)", sigma)}
    d["time_points"] = [{"hours": h, "activity_bq": a, "time_point": i + 1} for h, a, i in zip(hours, acts, used)]
    d["limitations"] = [limitation]
    mass, source = _body_mass(ctx, tps, False)
    d["mass_source"] = source
    return _finish(ctx, d, mass)[1]


def _body_mass(ctx, tps, beyond_ct: bool):
    """(g, source): the CT body outline's mass on the reference time point, or the patient's weight where the
    whole body reaches beyond the CT (or there is no CT)."""
    ref = tps[ctx.ref]
    density = ref.density_g_ml
    if density is not None and not beyond_ct:
        from .dose import body_outline
        body = body_outline(density)
        return float(np.sum(density[body], dtype=np.float64)) * ref.voxel_ml, "CT body outline"
    from .io.dicom_common import read_dicom
    weight = None
    try:
        weight = float(read_dicom(ref.entry.files[0], stop_before_pixels=True).get("PatientWeight") or 0) or None
    except (ValueError, TypeError):
        weight = None
    if weight:
        return 1000.0 * weight, "PatientWeight"
    return None, "unknown (no CT body outline covering it, no PatientWeight)"


def _top_level(masks: Dict[str, np.ndarray]) -> List[str]:
    """VOIs not contained in another (nested VOIs counted once)."""
    from .planar.regions import nesting
    nest = nesting(masks)
    size = {n: float(np.count_nonzero(np.asarray(m) >= 0.5)) for n, m in masks.items()}
    return [n for n in masks if not any(size[o] > size[n] for o in nest[n])]


def _remainder(ctx, tps, kinetics, vois, tia_voxel, wb: dict, measured) -> dict:
    ref = tps[ctx.ref]
    union = np.any([np.asarray(m) >= 0.5 for m in ref.masks.values()], axis=0)
    vois_tia = float(np.sum(tia_voxel[union], dtype=np.float64))
    wb_tia = wb.get("tia_bq_s")
    tia = None if wb_tia is None else wb_tia - vois_tia
    top = _top_level(ref.masks)
    d = {"method": f"whole body ({wb['method']}) less the VOIs (TIA map over their union)",
         "tia_bq_s": tia, "whole_body_tia_bq_s": wb_tia, "vois_tia_bq_s": vois_tia, "vois": top}
    if tia is not None and tia < 0:
        ctx.warnings.append(f"remainder of body: the VOIs hold more TIA ({vois_tia:.4g} Bq·s) than the whole body "
                            f"({wb_tia:.4g} Bq·s)")
    # per time point: whole body less the top-level VOIs
    if measured:
        d["time_points"] = [{"hours": m.hours, "activity_bq": m.whole_body_bq - sum(
            m.regions[n].activity_bq for n in top if n in m.regions)} for m in measured]
    else:
        used = [tp["time_point"] - 1 for tp in wb["time_points"]]
        d["time_points"] = [{"hours": tps[i].hours, "activity_bq": a["activity_bq"] - sum(
            kinetics[n].activity_bq[i] for n in top)} for i, a in zip(used, wb["time_points"])]
    # uncertainty: the whole body's and the VOIs', independent
    if tia:
        parts = []
        if wb.get("tia_uncertainty_pct") is not None:
            parts.append(wb["tia_uncertainty_pct"] / 100.0 * wb_tia)
        for n in top:
            u = getattr(vois.get(n), "tia_uncertainty_pct", None)
            if u is not None and math.isfinite(u):
                parts.append(u / 100.0 * vois[n].tia_bq_s)
        d["tia_uncertainty_pct"] = 100.0 * math.sqrt(sum(p * p for p in parts)) / abs(tia) if parts else None
    mass = wb.get("mass_g")
    if mass is not None:
        density = ref.density_g_ml
        if wb.get("mass_source") == "CT body outline":
            voi_mass = float(np.sum(density[union], dtype=np.float64)) * ref.voxel_ml
        else:
            voi_mass = sum(vois[n].mass_g for n in top)
        mass = mass - voi_mass
    d["mass_source"] = f"{wb.get('mass_source')} less the VOIs"
    return _finish(ctx, d, mass)[1]


# ------------------------------------------------------------------------------------------ hybrid

def _hybrid(ctx, tps, kinetics, vois, measured: List[PlanarMeasurement], k: int) -> dict:
    """Each VOI's planar curve scaled to its SPECT activity at time point ``k`` (0-based).

    The scale is measured against measured: the SPECT activity at t_K over the planar activity of the session
    taken with that SPECT/CT (the guidance's hybrid method: the planar activities of every session times
    A_SPECT(t_K) / A_planar(t_K); Sjögreen Gleisner et al., Eur J Nucl Med Mol Imaging 2022;49:1778–1809;
    MIRD Pamphlet No. 26). The planar session is carried to t_K along the planar fit (a planar session is usually
    within an hour of its SPECT). Without a planar session within ``HYBRID_PAIRING_H`` of t_K, the fitted planar
    curve at t_K stands in for it (named in the VOI's ``scale_from``).
    """
    t_k = tps[k].hours
    hours = [m.hours for m in measured]
    pair = min(range(len(measured)), key=lambda i: abs(hours[i] - t_k))
    paired = abs(hours[pair] - t_k) <= HYBRID_PAIRING_H
    out = {"spect_time_point": k + 1, "spect_hours": t_k,
           "method": "planar curve shape (fitted) scaled by the SPECT over the planar activity at one time point "
                     "(Sjögreen Gleisner et al., Eur J Nucl Med Mol Imaging 2022; MIRD Pamphlet 26)",
           "planar_session_paired": measured[pair].acquisition_time if paired else None, "vois": {}}
    for name, voi in vois.items():
        acts = [m.regions[name].activity_bq if name in m.regions else float("nan") for m in measured]
        if not all(math.isfinite(a) and a > 0 for a in acts):
            out["vois"][name] = {"note": "no positive planar activity at every planar time"}
            continue
        try:
            fit = _fit(ctx, hours, acts, f"{name} (planar)")
        except FitError as exc:
            out["vois"][name] = {"note": exc.problem}
            continue
        fitted_at = fit.evaluate(np.array([t_k, hours[pair]], dtype=float))
        if paired and fitted_at[1] > 0:
            a_pl = acts[pair] * float(fitted_at[0] / fitted_at[1])
            scale_from = f"planar session at {hours[pair]:.1f} h, carried to {t_k:.1f} h along the planar fit"
        else:
            a_pl = float(fitted_at[0])
            scale_from = (f"fitted planar curve at {t_k:.1f} h (no planar session within {HYBRID_PAIRING_H:g} h "
                          "of the SPECT)")
        a_spect = float(kinetics[name].activity_bq[k])
        scale = a_spect / a_pl
        tia = float(fit.tia_bq_s) * scale
        voi.hybrid_tia_bq_s = tia
        voi.hybrid_vs_spect_pct = 100.0 * (tia / voi.tia_bq_s - 1.0) if voi.tia_bq_s else None
        out["vois"][name] = {"planar_tia_bq_s": float(fit.tia_bq_s), "planar_fit_model": fit.model,
                             "planar_activity_at_spect_bq": a_pl, "scale_from": scale_from,
                             "spect_activity_bq": a_spect, "scale": scale,
                             "hybrid_tia_bq_s": tia, "hybrid_vs_spect_pct": voi.hybrid_vs_spect_pct}
    return out
