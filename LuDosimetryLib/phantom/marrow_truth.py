"""The twin's red marrow (#14): its truth from the analytic kinetics, and its blood samples.

Model (chosen for the twin, stated in truth.json):

- the twin's blood is its "remainder" tissue: the remainder's activity concentration per mL (fast blood-pool
  clearance and a slow tail, :data:`~LuDosimetryLib.phantom.kinetics_truth.TISSUE_KINETICS`) is the blood's;
- its red marrow has the ICRP 89 reference mass of the twin's sex (:func:`LuDosimetryLib.red_marrow.red_marrow_mass_g`)
  at the blood's activity per gram (RMBLR = 1, as for Lu-177 DOTATATE, Forrer et al. 2009), blood density 1.06 g/mL;
- in the images, the vertebral bodies (cancellous bone) carry the remainder concentration per mL like every
  remainder tissue, and their size (``presets``: the female spine is smaller) makes the L2–L4 cancellous
  volume about the ICRP/Cristy L2–L4 share of the marrow: the image-based method is exercised by the images, the
  blood-based one by the samples.

The mean absorbed dose truth applies LuDosimetry's red-marrow S-values (:mod:`LuDosimetryLib.red_marrow`) to the
true TIAs: the twin checks the TIA chain, not the S-values (validated separately in the tests).
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict

import numpy as np

from ..red_marrow import BLOOD_DENSITY_G_ML, DEFAULT_RMBLR, marrow_dose, red_marrow_mass_g

#: Blood sampling times (h after injection): a typical EANM schedule (Hindorf et al. 2010: early samples for
#: the fast phase, then daily).
BLOOD_SAMPLE_HOURS = (0.5, 1.0, 2.0, 4.0, 24.0, 48.0, 96.0, 168.0)
#: Relative standard deviation of a well-counter blood sample (pipetting, counting), multiplicative.
BLOOD_SAMPLE_NOISE = 0.03


def blood_concentration_curve(curves, vol1: Dict[str, float]):
    """The twin's blood activity concentration (Bq/mL) as an exponential sum: the remainder's per mL."""
    rem = curves["remainder"]
    v = float(vol1["remainder"])
    return type(rem)(tuple(c / v for c in rem.coefficients_bq), rem.rates_per_h)


def red_marrow_truth(sex: str, curves, vol1: Dict[str, float], nuclide, whole_body: dict,
                     remainder_of_body: dict) -> dict:
    """``red_marrow`` of truth.json: ``tia_bq_s``, ``mean_dose_gy`` and how they were made."""
    blood = blood_concentration_curve(curves, vol1)
    mass_g = red_marrow_mass_g(sex)
    tia = blood.tia_bq_s() / BLOOD_DENSITY_G_ML * DEFAULT_RMBLR * mass_g
    rest = remainder_of_body["tia_bq_s"] - tia  # the marrow is part of the twin's remainder tissue
    organs = whole_body["tia_bq_s"] - remainder_of_body["tia_bq_s"]
    dose = marrow_dose(tia, mass_g, nuclide, body_mass_g=whole_body["mass_g"], tia_remainder_bq_s=rest,
                       tia_organs_bq_s=organs)
    return {"tia_bq_s": tia, "mean_dose_gy": dose["mean_dose_gy"], "mass_g": mass_g,
            "self_dose_gy": dose["self_dose_gy"], "cross_dose_remainder_gy": dose["cross_dose_remainder_gy"],
            "cross_dose_organs_gy": dose["cross_dose_organs_gy"], "rmblr": DEFAULT_RMBLR,
            "blood_tia_bq_s_per_ml": blood.tia_bq_s(), "blood_tac_model": blood.to_dict(),
            "definition": "ICRP 89 red-marrow mass of the twin's sex at the blood's activity per gram (RMBLR 1); "
                          "blood = the remainder tissue's concentration per mL (1.06 g/mL); dose with "
                          "LuDosimetryLib.red_marrow S-values on the true TIAs",
            "blood_samples_csv": "Blood/blood_samples.csv"}


def write_blood_samples(root: Path, curves, vol1: Dict[str, float], seed: int) -> Path:
    """The twin's blood samples (kBq/mL at the sampling times, 3 % noise) as ``root/Blood/blood_samples.csv``."""
    from ..io.blood_samples import format_blood_samples

    rng = np.random.default_rng([int(seed), 14])
    hours = np.asarray(BLOOD_SAMPLE_HOURS)
    values = blood_concentration_curve(curves, vol1).activity_bq(hours)
    values = values * (1.0 + BLOOD_SAMPLE_NOISE * rng.standard_normal(values.shape))
    path = root / "Blood" / "blood_samples.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(format_blood_samples(hours, values))
    return path
