"""Red-marrow run stage (issue #14): sets ``ctx.red_marrow`` (results.json ``red_marrow``).

Image-based: the L2–L4 VOI is the study's own when an RTSTRUCT ROI is named like ``L2-L4``/``RedMarrow``/``Marrow``
(:func:`LuDosimetryLib.vertebrae.is_marrow_roi_name`; it is then a VOI of the run, fitted like the others);
otherwise it is segmented on each time point's CT (:func:`LuDosimetryLib.vertebrae.segment_l2_l4`), averaged onto
that time point's SPECT grid, and its activities fitted with the run's models and error model: each time point's
activity is its segmentation's concentration times the reference time point's volume (a time point whose volume
differs by more than 15 % is named in the warnings). Blood-based: the
``--blood-samples`` CSV (:mod:`LuDosimetryLib.io.blood_samples`). Physics: :mod:`LuDosimetryLib.red_marrow`.

With ``marrow_method="auto"`` both are computed where their data exist; the blood-based one is the result (the
EANM guideline's method for agents that do not bind to marrow cells; Hindorf et al. 2010) and the image-based one is
reported beside it, with their difference.
"""
from __future__ import annotations

import math
from typing import Callable, Dict, Optional

import numpy as np
import SimpleITK as sitk

from .assumptions import assume
from .errors import OptionError
from .red_marrow import (DEFAULT_RMBLR, L2_L4_MARROW_FRACTION, LUMBAR_MARROW_FRACTION, blood_based_tia_bq_s,
                         image_based_tia_bq_s, marrow_dose, red_marrow_mass_g, reference_body_mass_g,
                         relative_uncertainty_pct)

#: Automatic L2–L4 volumes of a time point more than this fraction from the reference time point's are named.
SEGMENTATION_VOLUME_TOLERANCE = 0.15

S_VALUE_SOURCE = ("S(RM<-RM): ICRP 107 mean electron energy per decay absorbed in the marrow mass + photons; "
                  "S(RM<-RB), S(RM<-VOIs): photons only, mean photon dose per decay of a body-distributed source "
                  "(LuDosimetry photon point kernel, elliptic-cylinder body of the patient's mass; "
                  "LuDosimetryLib/red_marrow.py)")


def red_marrow_stage(ctx, tps, kinetics, vois, fit_activities: Callable, voi_activity: Callable) -> None:
    """Set ``ctx.red_marrow`` (None with ``marrow_method="none"``).

    Parameters
    ----------
    ctx, tps, kinetics, vois
        The run's context, time points, VOI kinetics and VOI results (:mod:`LuDosimetryLib.pipeline`).
    fit_activities : callable ``(activities_bq, name) -> TacFit``
        The run's TAC fit (its models, error model and reduced-time-point method).
    voi_activity : callable ``(time_point, weights) -> Bq``
        A VOI's activity at a time point (the run's VOI arithmetic).

    Raises
    ------
    OptionError
        ``--marrow-method blood`` without ``--blood-samples``; a bad blood-sample file (naming it and the row).
    """
    options = ctx.options
    method = options.marrow_method
    if method == "none":
        return
    if method == "blood" and options.blood_samples is None:
        raise OptionError("the blood-based red-marrow method needs {option}", option="blood_samples")
    sex, sex_source = _sex(ctx, tps)
    mass_g = red_marrow_mass_g(sex)
    image = _image_based(ctx, tps, kinetics, fit_activities, voi_activity, mass_g) if method != "blood" else None
    blood = _blood_based(ctx, mass_g) if method != "image" and options.blood_samples is not None else None
    chosen = blood if blood is not None else image
    if chosen is None or chosen.get("tia_bq_s") is None:
        reason = (image or {}).get("note", "no data for the image-based or blood-based method")
        ctx.warnings.append(f"red marrow: no dose ({reason})")
        ctx.red_marrow = {"method": "none", "tia_bq_s": None, "mean_dose_gy": None, "note": reason,
                          "mass_g": mass_g, "sex": sex, "sex_source": sex_source}
        return
    out = {"method": chosen["method"], "tia_bq_s": chosen["tia_bq_s"], "mass_g": mass_g, "sex": sex,
           "sex_source": sex_source}
    out.update(_dose(ctx, vois, chosen, sex))
    out.update(_uncertainty(ctx, chosen))
    if image is not None:
        out["image_based"] = image
    if blood is not None:
        out["blood_based"] = blood
    if image is not None and blood is not None and image.get("tia_bq_s") and blood.get("tia_bq_s"):
        out["image_vs_blood_pct"] = 100.0 * (image["tia_bq_s"] / blood["tia_bq_s"] - 1.0)
    ctx.red_marrow = out


# ------------------------------------------------------------------------------------------- inputs

def _sex(ctx, tps):
    """The sex for the reference red-marrow mass: ``--patient-sex`` (a header that says otherwise is a named
    assumption), else the header's PatientSex, else male (a named assumption)."""
    from .io.dicom_common import read_dicom
    given = ctx.options.patient_sex
    entry = tps[ctx.ref].entry
    header = read_dicom(entry.files[0], stop_before_pixels=True)
    value = str(header.get("PatientSex", "") or "").strip().upper()
    if given in ("M", "F"):
        if value in ("M", "F") and value != given:
            assume(f"patient sex for the ICRP 89 reference red-marrow mass over the header's PatientSex {value}",
                   given, "the command line", entry.files[0])
        return given, "--patient-sex"
    if value in ("M", "F"):
        return value, "DICOM PatientSex"
    assume("patient sex for the ICRP 89 reference red-marrow mass", "M (1170 g)",
           f"PatientSex is {value or 'empty'}; give --patient-sex", entry.files[0])
    return "M", "assumed (no PatientSex M/F)"


def _marrow_voi(kinetics) -> Optional[str]:
    from .vertebrae import is_marrow_roi_name
    names = [n for n in kinetics if is_marrow_roi_name(n)]
    return names[0] if names else None


def _image_based(ctx, tps, kinetics, fit_activities, voi_activity, mass_g) -> Optional[dict]:
    """The image-based TIA (dict with ``tia_bq_s``), or a dict with ``tia_bq_s`` None and a ``note``."""
    name = _marrow_voi(kinetics)
    if name is not None:
        kin = kinetics[name]
        assume(f"VOI {name!r} is the L2-L4 vertebral marrow", f"{100 * L2_L4_MARROW_FRACTION:.2f} % of the red "
               "marrow", "Cristy 1981 / ICRP 70: lumbar vertebrae 12.3 %, 3 of 5 vertebrae")
        return _image_result(f"image-based L2-L4 (RTSTRUCT ROI {name!r})", kin.fit, L2_L4_MARROW_FRACTION,
                             kin.volume_ml, kin.activity_bq, voi=name)
    from .io.images import mean_over_grid
    from .vertebrae import VERTEBRA_PITCH_MM, segment_l2_l4

    activities, segs = [], []
    for tp in tps:
        if tp.ct_hu is None:
            return {"tia_bq_s": None, "note": f"time point {tp.index + 1} has no CT for the L2-L4 segmentation "
                                              "(give an RTSTRUCT ROI named L2-L4)"}
        seg = segment_l2_l4(tp.ct_hu)
        if seg is None:
            return {"tia_bq_s": None, "note": f"no lumbar spine found on the CT of time point {tp.index + 1} "
                                              "(give an RTSTRUCT ROI named L2-L4)"}
        mask_img = sitk.GetImageFromArray(seg.mask.astype(np.float32))
        mask_img.CopyInformation(tp.ct_hu)
        weights = sitk.GetArrayFromImage(mean_over_grid(mask_img, tp.image, default=0.0)).astype(np.float32)
        activities.append(float(voi_activity(tp, weights)))
        segs.append(seg)
    ref = segs[ctx.ref]
    # each time point gives the concentration; the volume is the reference time point's (a segmentation that
    # found less or more of the bodies on one CT, e.g. by its noise, must not move the curve)
    activities = [a * ref.volume_ml / s.volume_ml for a, s in zip(activities, segs)]
    odd = [f"{i + 1} ({s.volume_ml:.0f} mL)" for i, s in enumerate(segs)
           if abs(s.volume_ml / ref.volume_ml - 1.0) > SEGMENTATION_VOLUME_TOLERANCE]
    if odd:
        ctx.warnings.append(f"red marrow: the automatic L2-L4 volume of time point(s) {', '.join(odd)} differs by "
                            f"more than {100 * SEGMENTATION_VOLUME_TOLERANCE:.0f} % from the reference time point's "
                            f"({ref.volume_ml:.0f} mL); their concentration is used with the reference volume. "
                            "Check the segmentation, or contour an ROI named L2-L4")
    n_vert = min(s.n_vertebrae for s in segs)
    fraction = n_vert / 5.0 * LUMBAR_MARROW_FRACTION
    lo, hi = ref.z_range_mm
    assume("L2-L4 located by position on the CT (no vertebra identified)",
           f"{hi - lo:.0f} mm of lumbar vertebral bodies centred in the CT's spine, z {lo:.0f} to {hi:.0f} mm "
           f"(time point {ctx.ref + 1}), {n_vert:.2f} vertebrae of {VERTEBRA_PITCH_MM:g} mm = "
           f"{100 * fraction:.2f} % of the red marrow", "LuDosimetryLib/vertebrae.py; contour an ROI named L2-L4 "
           "to correct it")
    fit = fit_activities(activities, "L2-L4 (automatic)")
    return _image_result("image-based L2-L4 (automatic CT segmentation)", fit, fraction, ref.volume_ml, activities,
                         z_range_mm=list(ref.z_range_mm), canal_found=ref.canal_found,
                         volume_ml_per_time_point=[s.volume_ml for s in segs])


def _image_result(method, fit, fraction, volume_ml, activities, **extra) -> dict:
    tia_voi = float(fit.tia_bq_s)
    se = float(fit.tia_se_bq_s) if fit.tia_se_bq_s is not None else float("nan")
    return {"method": method, "tia_bq_s": image_based_tia_bq_s(tia_voi, fraction), "l2_l4_tia_bq_s": tia_voi,
            "fraction_of_red_marrow": fraction, "voi_volume_ml": float(volume_ml),
            "activity_bq": [float(a) for a in activities], "fit_model": fit.model,
            "fit_relative_se_pct": 100.0 * se / tia_voi if tia_voi > 0 and math.isfinite(se) else None,
            "effective_half_life_h": _finite(fit.effective_half_life_h), **extra}


def _blood_based(ctx, mass_g) -> dict:
    from .errors import FitError
    from .io.blood_samples import read_blood_samples, samples_as_tuple
    from .red_marrow import fit_blood_clearance

    options = ctx.options
    samples = read_blood_samples(options.blood_samples, ctx.inventory.injection_time)
    try:
        fit = fit_blood_clearance(samples.t_h, samples.concentration_bq_per_ml, ctx.nuclide.decay_constant_per_h)
    except FitError as exc:
        raise FitError(exc.problem, samples.path) from None
    rmblr = options.rmblr
    if rmblr is None:
        assume("red-marrow-to-blood concentration ratio (RMBLR)", f"{DEFAULT_RMBLR:g}",
               "default for Lu-177 peptides (Hindorf et al. 2010; Forrer et al. 2009); give --rmblr",
               samples.path)
        rmblr = DEFAULT_RMBLR
    tia_conc, se = fit.tia_bq_s_per_ml, fit.tia_se_bq_s_per_ml
    hours, conc = samples_as_tuple(samples)
    return {"method": "blood-based", "tia_bq_s": blood_based_tia_bq_s(tia_conc, mass_g, rmblr),
            "blood_tia_bq_s_per_ml": tia_conc, "rmblr": float(rmblr), "samples_h": hours,
            "samples_bq_per_ml": conc, "file": samples.path, "fit_model": fit.model,
            "fit_coefficients_bq_per_ml": list(fit.coefficients_bq_per_ml), "fit_rates_per_h": list(fit.rates_per_h),
            "fit_relative_se_pct": 100.0 * se / tia_conc if tia_conc > 0 and math.isfinite(se) else None,
            "effective_half_life_h": _finite(fit.effective_half_life_h)}


def _finite(value) -> Optional[float]:
    return float(value) if value is not None and math.isfinite(value) else None


# ------------------------------------------------------------------------------------------- dose

def _dose(ctx, vois, chosen: dict, sex: str) -> Dict[str, object]:
    """Self- and cross-doses; the cross-dose from the remainder of body is None (named) without its TIA."""
    rb, wb = ctx.remainder_of_body, ctx.whole_body
    tia = chosen["tia_bq_s"]
    in_voi = vois[chosen["voi"]].tia_bq_s if chosen.get("voi") in vois else 0.0
    notes = []
    if rb is not None and rb.get("tia_bq_s") is not None:
        rest = float(rb["tia_bq_s"]) - tia + in_voi  # the marrow is in the remainder, except its VOI if any
        if rest < 0:
            notes.append("the red-marrow TIA exceeds the remainder of body's: cross-dose from it taken as 0")
            rest = 0.0
    else:
        rest = None
        notes.append("no remainder-of-body TIA: the cross-dose from it is not available and not in the mean dose")
    if wb is not None and wb.get("tia_bq_s") is not None and rb is not None and rb.get("tia_bq_s") is not None:
        organs = float(wb["tia_bq_s"]) - float(rb["tia_bq_s"]) - in_voi
    else:
        organs = sum(v.tia_bq_s for n, v in vois.items() if n != chosen.get("voi"))
        notes.append("VOI cross-dose from the sum of the VOIs' TIAs (nested VOIs counted twice)")
    body_g = None
    for source in (wb, rb):
        if source is not None and source.get("mass_g"):
            body_g = float(source["mass_g"]) if source is wb else float(source["mass_g"]) + sum(
                v.mass_g for v in vois.values())
            break
    if body_g is None:
        body_g = reference_body_mass_g(sex)
        assume("body mass for the red-marrow photon S-values", f"{body_g / 1000:g} kg (ICRP 89 reference, {sex})",
               "no whole-body or remainder-of-body mass in the run")
    d = marrow_dose(tia, red_marrow_mass_g(sex), ctx.nuclide, body_mass_g=body_g, tia_remainder_bq_s=rest,
                    tia_organs_bq_s=max(organs, 0.0))
    if d["mean_dose_gy"] is None:
        d["mean_dose_gy"] = d["self_dose_gy"] + d["cross_dose_organs_gy"]
        d["mean_dose_complete"] = False
    for note in notes:
        ctx.warnings.append(f"red marrow: {note}")
    d.update(body_mass_g=body_g, remainder_tia_for_cross_dose_bq_s=rest, organs_tia_for_cross_dose_bq_s=organs,
             s_value_source=S_VALUE_SOURCE, notes=notes)
    return d


def _uncertainty(ctx, chosen: dict) -> dict:
    """Relative standard uncertainties (%, k = 1): the fit's, the calibration's (image-based) and the dose factor's
    (defaults and ``--uncertainty`` overrides of :mod:`LuDosimetryLib.uncertainty`); the marrow fraction, RMBLR
    and mass are model quantities without a stated uncertainty here."""
    from .uncertainty import DEFAULT_CALIBRATION_PCT, DEFAULT_DOSE_FACTOR_PCT
    given = ctx.options.uncertainty or {}
    budget = {"fit": chosen.get("fit_relative_se_pct")}
    if chosen["method"].startswith("image"):
        budget["calibration"] = float(given.get("calibration", DEFAULT_CALIBRATION_PCT))
    tia_pct = relative_uncertainty_pct(budget.values())
    budget["dose_factor"] = float(given.get("dose_factor", DEFAULT_DOSE_FACTOR_PCT))
    return {"tia_uncertainty_pct": tia_pct, "mean_dose_uncertainty_pct": relative_uncertainty_pct(budget.values()),
            "uncertainty_budget": {k: v for k, v in budget.items() if v is not None}}
