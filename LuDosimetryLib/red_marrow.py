"""Red-marrow dosimetry (issue #14): the physics, no I/O.

The absorbed dose to the red (active) marrow is the self-dose from the activity in the marrow plus the
cross-dose from the rest of the body (Hindorf C., Glatting G., Chiesa C., Lindén O., Flux G., "EANM Dosimetry
Committee guidelines for bone marrow and whole-body dosimetry", Eur J Nucl Med Mol Imaging 2010;37:1238–1250,
eq. 1):

    D_RM = Ã_RM · S(RM←RM) + Ã_RB · S(RM←RB) + Σ_organs Ã_h · S(RM←h).

Marrow time-integrated activity Ã_RM, two ways:

image-based (L2–L4)
    The activity in a VOI of the lumbar vertebral bodies L2–L4 at each SPECT time point, fitted and integrated
    like any VOI (AICc), scaled to the whole marrow by the fraction of the red marrow the three vertebrae hold:
    Ã_RM = Ã_L2–L4 / f_L2–L4 (Hindorf et al. 2010, "image-based methods"; the fraction from Cristy 1981).
blood-based
    Ã_RM = [Ã_blood] · RMBLR · m_RM, with [Ã_blood] the time-integrated activity concentration of blood per gram
    (from the samples' Bq/mL and the blood density) and RMBLR the red-marrow-to-blood activity-concentration
    ratio (Hindorf et al. 2010, eq. 4). RMBLR = 1 by default: for Lu-177 DOTATATE the marrow concentration equals
    the blood's (Forrer F., Krenning E.P., Kooij P.P., et al., "Bone marrow dosimetry in peptide receptor
    radionuclide therapy with [177Lu-DOTA0,Tyr3]octreotate", Eur J Nucl Med Mol Imaging 2009;36:1138–1146),
    which the EANM guidance takes for small molecules that do not bind to blood or marrow cells. The
    haematocrit alternative RMBLR = RMECFF / (1 − HCT), RMECFF = 0.19 (Sgouros G., "Bone marrow dosimetry for
    radioimmunotherapy: theoretical considerations", J Nucl Med 1993;34:689–694) is :func:`rmblr_from_haematocrit`.

S-values used here (stated, not taken from a program's table)
    S(RM←RM): the electrons (ICRP 107 mean energy per decay) absorbed in the marrow mass (non-penetrating
    radiation, the approximation of Hindorf et al. 2010 for the self-dose) plus the photons' share as from a
    body-distributed source (below).
    S(RM←RB) and S(RM←organ): photons only (the electrons of other tissues do not reach the marrow), the mean
    photon absorbed dose per decay of a source spread through the body, Δ_γ · φ_γ / m_TB, with φ_γ the photon
    absorbed fraction of a uniform source in a reference body computed with LuDosimetry's own photon point
    kernel (:func:`LuDosimetryLib.dose.kernels.photon_radial_density`, energy-absorption build-up in water) on
    the reference geometry of :func:`photon_body_absorbed_fraction` of the patient's mass (instead of the
    EANM mass scaling of a phantom's S(RM←TB), Hindorf et al. 2010, eq. 7). Validated against MIRD Pamphlet No. 5
    (revised) total-body absorbed fractions in ``Testing/Python/test_red_marrow.py``.
"""
from __future__ import annotations

import math
from functools import lru_cache
from typing import Dict, Optional, Sequence

import numpy as np

from .errors import OptionError

#: Reference red (active) marrow mass of adults (g): ICRP Publication 89 (2002), Table 2.8 ("active marrow"):
#: male 1170 g, female 900 g.
RED_MARROW_MASS_G = {"M": 1170.0, "F": 900.0}
#: Reference adult total body mass (g): ICRP Publication 89, Table 2.9 (male 73 kg, female 60 kg).
REFERENCE_BODY_MASS_G = {"M": 73000.0, "F": 60000.0}
#: Fraction of the adult's active marrow in the lumbar vertebrae (L1–L5): Cristy M., "Active bone marrow
#: distribution as a function of age in humans", Phys Med Biol 1981;26:389–400 (adult), 12.3 %, the value
#: ICRP Publication 70 (1995) adopts for the adult. Shared equally by the five lumbar vertebrae.
LUMBAR_MARROW_FRACTION = 0.123
#: L2–L4: three of the five lumbar vertebrae (3/5 of 12.3 % = 7.38 %). Some authors use 6.7 % instead; a caller
#: gives its own value to :func:`image_based_tia_bq_s`.
L2_L4_MARROW_FRACTION = 3.0 / 5.0 * LUMBAR_MARROW_FRACTION
#: Blood density (g/mL): ICRP Publication 89 reference value (1.06 g/cm³).
BLOOD_DENSITY_G_ML = 1.06
#: Red-marrow-to-blood concentration ratio by default (see the module docstring: Forrer 2009, Hindorf 2010).
DEFAULT_RMBLR = 1.0
#: Red-marrow extracellular fluid fraction of the haematocrit method (Sgouros 1993).
RMECFF = 0.19
#: Reference body for the photon absorbed fraction: an elliptic cylinder of water with the adult trunk's
#: semi-axes of the MIRD phantom (Snyder W.S. et al., MIRD Pamphlet No. 5 revised, 1978: 20 cm × 10 cm),
#: its length set by the reference body mass.
REFERENCE_TRUNK_SEMI_AXES_MM = (200.0, 100.0)
_N_SOURCE_POINTS = 3000
_N_DIRECTIONS = 300


def _sex_key(sex: Optional[str]) -> str:
    key = (sex or "").strip().upper()[:1]
    if key not in RED_MARROW_MASS_G:
        raise OptionError(f"patient sex {sex!r} is not M or F", option="patient_sex")
    return key


def red_marrow_mass_g(sex: str) -> float:
    """Reference adult red-marrow mass (g) of ``sex`` ("M"/"F"): ICRP 89 Table 2.8."""
    return RED_MARROW_MASS_G[_sex_key(sex)]


def reference_body_mass_g(sex: str) -> float:
    """Reference adult body mass (g) of ``sex``: ICRP 89 Table 2.9."""
    return REFERENCE_BODY_MASS_G[_sex_key(sex)]


def image_based_tia_bq_s(tia_l2_l4_bq_s: float, fraction: float = L2_L4_MARROW_FRACTION) -> float:
    """Whole red-marrow TIA (Bq·s) from the TIA of the L2–L4 VOI (Bq·s) and the fraction of the marrow in it."""
    if not 0.0 < fraction <= 1.0:
        raise OptionError(f"marrow fraction {fraction!r} is not in (0, 1]", option="marrow_fraction")
    return float(tia_l2_l4_bq_s) / float(fraction)


def rmblr_from_haematocrit(haematocrit: float) -> float:
    """RMBLR = RMECFF / (1 − HCT) (Sgouros 1993), ``haematocrit`` a fraction in (0, 1)."""
    if not 0.0 < haematocrit < 1.0:
        raise OptionError(f"haematocrit {haematocrit!r} is not a fraction in (0, 1)", option="haematocrit")
    return RMECFF / (1.0 - float(haematocrit))


def blood_based_tia_bq_s(tia_concentration_bq_s_per_ml: float, marrow_mass_g: float, rmblr: float = DEFAULT_RMBLR,
                         blood_density_g_ml: float = BLOOD_DENSITY_G_ML) -> float:
    """Ã_RM = [Ã_blood] · RMBLR · m_RM (Hindorf et al. 2010, eq. 4) (Bq·s).

    Parameters
    ----------
    tia_concentration_bq_s_per_ml : float
        Time-integrated blood activity concentration (Bq·s/mL).
    marrow_mass_g : float
        Red-marrow mass (g).
    rmblr : float
        Red-marrow-to-blood activity-concentration ratio (per gram).
    blood_density_g_ml : float
        Turns the per-mL concentration into per gram.
    """
    if not rmblr > 0:
        raise OptionError(f"RMBLR {rmblr!r} must be positive", option="rmblr")
    return float(tia_concentration_bq_s_per_ml) / float(blood_density_g_ml) * float(rmblr) * float(marrow_mass_g)


@lru_cache(maxsize=16)
def photon_body_absorbed_fraction(nuclide_name: str = "Lu-177", body_mass_g: float = 73000.0) -> float:
    """φ_γ: fraction of the photon energy emitted by a uniform source in a reference body that the body absorbs.

    The body is an elliptic cylinder of water (semi-axes :data:`REFERENCE_TRUNK_SEMI_AXES_MM`) long enough to
    weigh ``body_mass_g``. Each ray from a source point (uniform in the body, 3000 points, fixed seed) along one
    of 300 isotropic directions (fixed seed) deposits ``∫₀^s ε_γ(r) dr`` inside, ``s`` the distance to the surface
    and ``ε_γ`` the photon point kernel of :func:`LuDosimetryLib.dose.kernels.photon_radial_density` (energy
    absorbed per mm at radius r in infinite water, build-up included); φ_γ is the mean over the rays divided
    by the emitted photon energy. The infinite-medium kernel misses the backscatter that a finite body loses,
    so φ_γ is slightly high (a few %).
    """
    from .dose.kernels import photon_radial_density

    a_mm, b_mm = REFERENCE_TRUNK_SEMI_AXES_MM
    length_mm = body_mass_g / 1.0 / (math.pi * a_mm * b_mm / 1000.0)  # water, mL = g
    r_mm = np.arange(0.0, 4000.0, 0.5)
    eps = photon_radial_density(nuclide_name, r_mm, 1.0)
    emitted = float(np.sum(0.5 * (eps[1:] + eps[:-1]) * np.diff(r_mm)))  # the infinite medium absorbs everything emitted
    cumulative = np.concatenate([[0.0], np.cumsum(0.5 * (eps[1:] + eps[:-1]) * np.diff(r_mm))])
    rng = np.random.default_rng(20101238)
    rho = np.sqrt(rng.random(_N_SOURCE_POINTS))
    theta = rng.random(_N_SOURCE_POINTS) * 2.0 * math.pi
    px, py = a_mm * rho * np.cos(theta), b_mm * rho * np.sin(theta)
    pz = (rng.random(_N_SOURCE_POINTS) - 0.5) * length_mm
    d = rng.normal(size=(_N_SOURCE_POINTS, _N_DIRECTIONS, 3))
    d /= np.linalg.norm(d, axis=2, keepdims=True)
    dx, dy, dz = d[..., 0], d[..., 1], d[..., 2]
    qa = (dx / a_mm) ** 2 + (dy / b_mm) ** 2
    qb = 2.0 * (px[:, None] * dx / a_mm ** 2 + py[:, None] * dy / b_mm ** 2)
    qc = ((px / a_mm) ** 2 + (py / b_mm) ** 2 - 1.0)[:, None]
    with np.errstate(divide="ignore", invalid="ignore"):
        s_side = np.where(qa > 1e-12, (-qb + np.sqrt(qb ** 2 - 4.0 * qa * qc)) / (2.0 * qa), np.inf)
        s_end = np.where(dz > 0, (length_mm / 2.0 - pz[:, None]) / dz,
                         np.where(dz < 0, (-length_mm / 2.0 - pz[:, None]) / dz, np.inf))
    s = np.minimum(s_side, s_end)
    absorbed = np.interp(s, r_mm, cumulative, right=cumulative[-1])
    return float(absorbed.mean() / emitted)


def photon_dose_per_decay_gy(nuclide, body_mass_g: float) -> float:
    """Mean photon absorbed dose per decay (Gy/(Bq·s)) in a body of ``body_mass_g`` from a source spread through it:
    Δ_γ · φ_γ / m_TB, with φ_γ of the reference geometry of that mass (:func:`photon_body_absorbed_fraction`,
    mass rounded to 1 kg). It replaces the EANM mass scaling of a phantom's S(RM←TB) (Hindorf et al. 2010,
    eq. 7: S ∝ 1/m_TB at a fixed φ_γ) by φ_γ computed at the patient's mass."""
    mass_kg = max(round(float(body_mass_g) / 1000.0), 1)
    phi = photon_body_absorbed_fraction(nuclide.name, float(mass_kg) * 1000.0)
    return nuclide.photon_energy_j * phi / (float(body_mass_g) / 1000.0)


def marrow_dose(tia_marrow_bq_s: float, marrow_mass_g: float, nuclide, *, body_mass_g: float,
                tia_remainder_bq_s: Optional[float],
                tia_organs_bq_s: float = 0.0) -> Dict[str, Optional[float]]:
    """Red-marrow mean absorbed dose (Gy): self, cross from the remainder of body and from the VOIs, total.

    Parameters
    ----------
    tia_marrow_bq_s : float
        Ã_RM (Bq·s).
    marrow_mass_g : float
        m_RM (g).
    nuclide : Radionuclide
    body_mass_g : float
        Patient's body mass (g) for the photon S-values (:func:`photon_dose_per_decay_gy`).
    tia_remainder_bq_s : float or None
        Ã_RB, the remainder of body without the marrow (Bq·s); None when not available: the cross-dose from
        it is then None, and so is the total.
    tia_organs_bq_s : float
        Ã of the VOIs (organs, lesions) (Bq·s), photons only.

    Returns
    -------
    dict
        ``s_rm_rm_gy_per_bq_s``, ``s_rm_rb_gy_per_bq_s``, ``self_dose_gy``, ``cross_dose_remainder_gy``,
        ``cross_dose_organs_gy``, ``mean_dose_gy``.
    """
    photon = photon_dose_per_decay_gy(nuclide, body_mass_g)
    s_self = nuclide.electron_energy_j / (marrow_mass_g / 1000.0) + photon
    self_gy = tia_marrow_bq_s * s_self
    cross_rb = None if tia_remainder_bq_s is None else max(float(tia_remainder_bq_s), 0.0) * photon
    cross_organs = float(tia_organs_bq_s) * photon
    total = None if cross_rb is None else self_gy + cross_rb + cross_organs
    return {"s_rm_rm_gy_per_bq_s": s_self, "s_rm_rb_gy_per_bq_s": photon, "self_dose_gy": self_gy,
            "cross_dose_remainder_gy": cross_rb, "cross_dose_organs_gy": cross_organs, "mean_dose_gy": total}


def relative_uncertainty_pct(components_pct: Sequence[float]) -> float:
    """Independent relative standard uncertainties (%, k = 1) combined in quadrature (GUM §5.1)."""
    return float(math.sqrt(sum(float(c) ** 2 for c in components_pct if c is not None and math.isfinite(c))))


class BloodClearanceFit:
    """A blood activity-concentration curve C(t) = Σ_j c_j e^(−k_j t) (1 or 2 terms, k_j ≥ λ_phys) and its integral.

    Attributes
    ----------
    n_terms : int
    coefficients_bq_per_ml, rates_per_h : tuple of float
    tia_bq_s_per_ml : float
        ∫₀^∞ C dt (Bq·s/mL).
    tia_se_bq_s_per_ml : float
        Its standard error (delta method on the fit's covariance, scaled by the residual variance).
    aicc : float
    """

    def __init__(self, n_terms, coefficients, rates, tia, tia_se, aicc):
        self.n_terms, self.coefficients_bq_per_ml, self.rates_per_h = n_terms, tuple(coefficients), tuple(rates)
        self.tia_bq_s_per_ml, self.tia_se_bq_s_per_ml, self.aicc = float(tia), float(tia_se), float(aicc)

    @property
    def model(self) -> str:
        return "mono_exponential_clearance" if self.n_terms == 1 else "bi_exponential_clearance"

    @property
    def effective_half_life_h(self) -> float:
        """ln 2 over the slowest rate (h)."""
        return math.log(2.0) / min(self.rates_per_h)


def fit_blood_clearance(t_h, concentration_bq_per_ml, lambda_phys_per_h: float) -> BloodClearanceFit:
    """Fit blood samples with a sum of one or two decaying exponentials (blood has its highest concentration at
    the injection and clears in a fast and a slow phase; Hindorf et al. 2010), proportional errors (least squares
    on log C), both rates ≥ the physical decay constant; the model by AICc (the two-term one needs ≥ 5 samples).

    Raises
    ------
    FitError
        Fewer than two positive samples, or no fit converged.
    """
    from scipy.optimize import least_squares

    from .errors import FitError

    t = np.asarray(t_h, dtype=float)
    c = np.asarray(concentration_bq_per_ml, dtype=float)
    ok = c > 0
    t, c = t[ok], c[ok]
    if t.size < 2:
        raise FitError(f"{t.size} positive blood sample(s): at least two are needed")
    lam = float(lambda_phys_per_h)
    y = np.log(c)
    fits = []
    for n_terms in (1, 2):
        p = 2 * n_terms
        if t.size < p + 1:
            continue
        # parameters: ln c_j, ln(k_j − λ) (k_j ≥ λ)
        def model(q):
            return sum(np.exp(q[2 * j]) * np.exp(-(lam + np.exp(q[2 * j + 1])) * t) for j in range(n_terms))

        def resid(q):
            return np.log(np.maximum(model(q), 1e-300)) - y

        slope = max(-np.polyfit(t, y, 1)[0] - lam, 1e-4)
        starts = [[y[0] + slope * t[0], math.log(slope)]] if n_terms == 1 else [
            [y[0], math.log(max(10 * slope, 0.05)), y[-1] + slope * t[-1], math.log(slope)],
            [y[0] + 1.0, math.log(1.0), y[-1] + slope * t[-1], math.log(slope * 0.5)]]
        best = None
        for q0 in starts:
            r = least_squares(resid, np.asarray(q0, dtype=float), method="lm")
            if r.success and (best is None or r.cost < best.cost):
                best = r
        if best is None:
            continue
        rss = float(2.0 * best.cost)
        n = t.size
        k = p + 1
        aicc = n * math.log(max(rss / n, 1e-300)) + 2 * k + (2 * k * (k + 1) / (n - k - 1) if n - k - 1 > 0 else np.inf)
        q = best.x
        coeffs = [math.exp(q[2 * j]) for j in range(n_terms)]
        rates = [lam + math.exp(q[2 * j + 1]) for j in range(n_terms)]
        tia_h = sum(a / kk for a, kk in zip(coeffs, rates))
        # delta method: d TIA / d q
        grad = []
        for j in range(n_terms):
            grad += [coeffs[j] / rates[j], -coeffs[j] / rates[j] ** 2 * (rates[j] - lam)]
        grad = np.asarray(grad)
        dof = max(n - p, 1)
        try:
            cov = np.linalg.pinv(best.jac.T @ best.jac) * rss / dof
            se_h = float(math.sqrt(max(grad @ cov @ grad, 0.0)))
        except np.linalg.LinAlgError:
            se_h = float("nan")
        fits.append(BloodClearanceFit(n_terms, coeffs, rates, tia_h * 3600.0, se_h * 3600.0, aicc))
    if not fits:
        raise FitError("no fit of the blood samples converged")
    return min(fits, key=lambda f: f.aicc)
