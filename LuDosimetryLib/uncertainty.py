"""Uncertainty of each VOI's time-integrated activity (TIA) and mean absorbed dose: an uncertainty budget.

The method follows the EANM practical guidance: Gear J.I., Cox M.G., Gustafsson J., et al., "EANM practical
guidance on uncertainty analysis for molecular radiotherapy absorbed dose calculations", Eur J Nucl Med Mol
Imaging 45:2456–2474, 2018 (open access, PMC6208822), which applies the law of propagation of uncertainty of
the GUM (JCGM 100:2008, §5) along the dosimetry chain

    count rate → calibration factor → recovery coefficient (partial volume) → activity per time point
    → fit of the time-activity curve (with the full parameter covariance) → TIA → dose factor (mass) → mean dose.

All uncertainties are relative standard uncertainties (k = 1). The components, each with a default and a
user override (``RunOptions.uncertainty``, ``--uncertainty COMPONENT=PCT``; docs/uncertainty.md):

``calibration``
    The calibration factor (image units → Bq). Default :data:`DEFAULT_CALIBRATION_PCT` (a LuDosimetry default,
    not a published value: enter your department's). The same factor is applied at every time point, so it is
    fully correlated across them: it scales every activity, hence the TIA and the dose, by the same factor.
``recovery``
    The recovery coefficient of the partial-volume model. With the GTM correction (``pvc="gtm"``) it is the
    sensitivity of the VOI's recovery coefficient RC = mean over the VOI of the VOI blurred by the PSF to the
    PSF's FWHM, times the FWHM's relative uncertainty (default :data:`DEFAULT_PSF_FWHM_PCT`); without a
    partial-volume correction no recovery coefficient is applied and the component is 0 (the VOI delineation
    below still measures how much of the blurred activity the outline catches). Systematic across time points.
``volume``
    The VOI delineation: the outline is taken to lie within ±1 voxel of the true surface (default), the bounds
    of a rectangular distribution (GUM §4.3.7), so u(V) = (V₊ − V₋)/(2√3) with V± the VOI dilated / eroded by
    one voxel; or the user's relative u(V). Its effect is measured on the images: the activity the VOI holds
    (the count rate as a function of the VOI volume and its gradient, Gear et al. 2018, Fig. 5) for the TIA,
    and the mean of the dose map over the dilated and eroded VOI for the dose — which holds the activity and
    the mass together, so their correlation through V (Gear et al. 2018) is in it. Systematic across time
    points.
``counting``
    Counting statistics of each activity, independent between time points: from the counts when they are
    known (:func:`counts_sigma_bq`), else from the image's own noise (:func:`image_counts_per_bq_ml`: a
    Poisson-like mean–variance relation, voxels independent), or the user's relative u per time point.
    Propagated through the fit with its full parameter covariance (:func:`propagate_through_fit`). The reduced
    χ² of a 3–5 point fit (1–2 degrees of freedom) is never used as the noise level.
``fit``
    What the counting noise through the chosen curve does not cover. (a) Lack of fit: when the fit's χ²
    (residuals over the counting uncertainties) fails the χ² test at :data:`LACK_OF_FIT_P`, the excess Birge
    ratio χ²/ν − 1 times the counting variance (the scale-factor practice of Birge R.T., Phys Rev 40:207–227,
    1932); 0 when the model describes the data within the counting noise. (b) Model choice: another fitted
    model that also describes the data within the counting noise (χ² test) puts the TIA anywhere between the
    two (:func:`model_choice_variance`). For a single-time-point method: its own stated TIA uncertainty
    (population half-life spread) where it gives one.
``dose_factor``
    The dose factor beyond the VOI's volume (dose kernel, density). Default :data:`DEFAULT_DOSE_FACTOR_PCT`
    (a LuDosimetry default; the built kernel agrees with Monte Carlo kernels within about this,
    ``benchmarks/kernel_validation.py``).

The budget lists each component's contribution to the mean dose's relative standard uncertainty (%). The
components are independent of each other (the volume's two paths are combined before), so
``mean_dose_uncertainty_pct² = Σ budget²`` and ``tia_uncertainty_pct²`` is the same sum without
``dose_factor`` and with the volume's effect on the activity instead of on the dose.
``tia_random_uncertainty_pct`` holds only what changes from one noise realisation to the next: counting and
fit.

Physics only: no I/O.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

#: The components of the budget, in the order of the dosimetry chain.
COMPONENTS: Tuple[str, ...] = ("calibration", "recovery", "volume", "counting", "fit", "dose_factor")
#: Relative standard uncertainty of the calibration factor (%): a LuDosimetry default (docs/uncertainty.md).
DEFAULT_CALIBRATION_PCT = 5.0
#: Relative standard uncertainty of the dose factor beyond the VOI volume (%): a LuDosimetry default, of the
#: order of the built kernel's agreement with Monte Carlo kernels (README, benchmarks/kernel_validation.py).
DEFAULT_DOSE_FACTOR_PCT = 3.0
#: Relative standard uncertainty of the PSF FWHM given for the GTM correction (%): a LuDosimetry default.
DEFAULT_PSF_FWHM_PCT = 10.0
#: The delineation's bounds, in voxels on the VOI surface (rectangular distribution, GUM §4.3.7).
DELINEATION_VOXELS = 1
#: Significance of the χ² test above which the fit's residuals count as more than the counting noise.
LACK_OF_FIT_P = 0.05
#: Voxels whose local mean holds fewer counts than this are left out of the image-noise estimate (the
#: normal approximation of the Poisson counts, on which the median rule below rests).
MIN_COUNTS_PER_VOXEL = 20.0

#: Sixth-order difference (binomial high-pass): a smooth, blurred activity distribution (SPECT resolution of
#: 2 voxels and more) passes almost nothing, white noise passes with a variance gain of Σc² = 924.
_HIGH_PASS = np.array([1.0, -6.0, 15.0, -20.0, 15.0, -6.0, 1.0])
#: Median of the χ² distribution with one degree of freedom (a squared standard normal).
_MEDIAN_CHI2_1 = 0.45493642311957283
_SQRT3 = math.sqrt(3.0)


# ------------------------------------------------------------------------------------ counting statistics

def counts_sigma_bq(activity_bq, counts) -> np.ndarray:
    """Counting standard uncertainty of activities measured from known counts (Poisson: u(N) = √N).

    Parameters
    ----------
    activity_bq : array_like
        Activities (Bq).
    counts : array_like
        Counts the activities were measured from (same shape), > 0.

    Returns
    -------
    numpy.ndarray
        u(A) = A / √N (Bq).
    """
    a = np.asarray(activity_bq, dtype=float)
    n = np.asarray(counts, dtype=float)
    return np.abs(a) / np.sqrt(np.clip(n, 1.0, None))


def image_counts_per_bq_ml(image_bq_ml) -> float:
    """The noise level of a SPECT image as counts per (Bq/mL) per voxel, from the image's own noise.

    Poisson-like noise has a variance proportional to the mean: var(x) = x̄ / k for a voxel of mean x̄ (Bq/mL),
    k in counts per Bq/mL. Along each axis the sixth-order difference d of the voxel values removes the smooth
    (resolution-limited) activity distribution and keeps the noise, E[d²] ≈ 924 x̄ / k with independent voxels;
    k is read from the median of d² / (924 x̄) over the voxels whose local mean (3×3×3) holds at least
    :data:`MIN_COUNTS_PER_VOXEL` counts (median of a χ²₁ variable: 0.455). The median is robust to the edges of
    organs, where the activity itself still passes the filter.

    Parameters
    ----------
    image_bq_ml : array_like (z, y, x)
        The SPECT (Bq/mL).

    Returns
    -------
    float
        k (counts per Bq/mL per voxel); ``inf`` for an image without noise; NaN when too few voxels hold
        activity to tell.

    Notes
    -----
    Independent voxels are assumed, as in Poisson-noise simulations. Reconstructed SPECT noise is spatially
    correlated (iterations, resolution recovery, filters), which this estimate does not see; give the counting
    component (``--uncertainty counting=PCT``) from repeated measurements in that case (docs/uncertainty.md).
    """
    from scipy.ndimage import uniform_filter

    x = np.asarray(image_bq_ml, dtype=np.float64)
    if x.ndim != 3 or min(x.shape) < _HIGH_PASS.size:
        return float("nan")
    local = uniform_filter(x, 3, mode="nearest")
    half = _HIGH_PASS.size // 2
    gain = float(np.sum(_HIGH_PASS ** 2))
    ratios, means = [], []
    for axis in range(3):
        n = x.shape[axis]
        d = sum(c * np.take(x, range(j, n - _HIGH_PASS.size + 1 + j), axis=axis) for j, c in enumerate(_HIGH_PASS))
        m = np.take(local, range(half, n - half), axis=axis)
        keep = m > 0
        ratios.append(d[keep] ** 2 / (gain * m[keep]))
        means.append(m[keep])
    ratio, mean = np.concatenate(ratios), np.concatenate(means)

    def estimate(keep) -> float:
        median = float(np.median(ratio[keep]))
        return _MEDIAN_CHI2_1 / median if median > 0 else float("inf")

    # A first estimate over the voxels with activity, then again over those with enough counts.
    first = mean > 0.05 * float(np.percentile(mean, 99.0))
    if np.count_nonzero(first) < 100:
        return float("nan")
    k = estimate(first)
    if not math.isfinite(k):
        return k
    enough = mean * k >= MIN_COUNTS_PER_VOXEL
    return estimate(enough) if np.count_nonzero(enough) >= 100 else k


def image_sigma_bq(image_bq_ml, mask, voxel_ml: float, counts_per_bq_ml: float) -> float:
    """Counting standard uncertainty (Bq) of the activity a VOI holds in a SPECT with Poisson-like noise of
    level ``counts_per_bq_ml`` (:func:`image_counts_per_bq_ml`), voxels independent:
    u²(A) = v² Σ_VOI x / k, the voxel volume v (mL), voxel values x (Bq/mL, negative ones as 0)."""
    if not (counts_per_bq_ml > 0):
        return float("nan")
    inside = np.asarray(mask) >= 0.5
    total = float(np.sum(np.clip(np.asarray(image_bq_ml, dtype=np.float64)[inside], 0.0, None)))
    return math.sqrt(total / counts_per_bq_ml) * float(voxel_ml) if math.isfinite(counts_per_bq_ml) else 0.0


# ----------------------------------------------------------------------------------------- the fit

@dataclass
class FitPropagation:
    """Counting uncertainties of the activities propagated through a fit to its TIA.

    Attributes
    ----------
    tia_bq_s : float
    counting_variance : float
        Var(TIA) from the counting uncertainties ((Bq·s)²): hᵀ Σ h, Σ = diag(σ²).
    sensitivity : numpy.ndarray
        h = ∂TIA/∂A_i (s) of the linearised fit.
    chi2 : float
        Σ ((A_model − A_i) / σ_i)² with the counting σ_i.
    dof : int
        Number of points less the free parameters.
    parameter_covariance : numpy.ndarray
        Covariance of the free parameters under the counting uncertainties (sandwich).
    """

    tia_bq_s: float
    counting_variance: float
    sensitivity: np.ndarray
    chi2: float
    dof: int
    parameter_covariance: np.ndarray


def propagate_through_fit(fit, sigma_bq) -> FitPropagation:
    """Propagate independent uncertainties of the activities through a fitted curve to its TIA.

    The fitted parameters q̂ of a weighted least-squares fit (weights W = diag(1/s_i²), ``s`` the fit's own
    σ shape) move with the data as dq̂ = (JᵀWJ)⁻¹JᵀW dA (J = ∂A_model/∂q at q̂), so their covariance under data
    of covariance Σ is the sandwich C = (JᵀWJ)⁻¹ JᵀWΣWJ (JᵀWJ)⁻¹ — which is (JᵀΣ⁻¹J)⁻¹ when the fit was
    weighted by the same σ — and Var(TIA) = gᵀ C g (g = ∂TIA/∂q): the delta method with the full covariance of
    the parameters (Gear et al. 2018; GUM §5.2). Parameters held by the fit (at a bound; the rates of a
    single-point method) stay fixed (:func:`~LuDosimetryLib.kinetics.fit.tia_linearisation`).

    Parameters
    ----------
    fit : TacFit
        A fit of :mod:`LuDosimetryLib.kinetics` (any model; the trapezoid too).
    sigma_bq : array_like
        Standard uncertainty of each of the fit's activities (Bq), independent.

    Returns
    -------
    FitPropagation
        NaN variance when the linearised fit is singular.
    """
    from .kinetics.fit import tia_linearisation

    jac, grad, weight_sigma = tia_linearisation(fit)
    sigma = np.asarray(sigma_bq, dtype=float).ravel()
    a = np.asarray(fit.activity_bq, dtype=float)
    w = 1.0 / np.asarray(weight_sigma, dtype=float) ** 2
    jw = jac.T * w                                      # Jᵀ W (f × n)
    try:
        gain = np.linalg.solve(jw @ jac, jw)            # ∂q̂/∂A (f × n)
    except np.linalg.LinAlgError:
        nan = float("nan")
        return FitPropagation(float(fit.tia_bq_s), nan, np.full(a.size, nan), nan, 0,
                              np.full((jac.shape[1],) * 2, nan))
    covariance = (gain * sigma ** 2) @ gain.T
    h = grad @ gain
    residual = (fit.evaluate(fit.t_h) - a) / np.where(sigma > 0, sigma, np.inf)
    dof = int(a.size - jac.shape[1]) if fit.model != "trapezoid" else 0
    return FitPropagation(tia_bq_s=float(fit.tia_bq_s), counting_variance=float(np.sum((h * sigma) ** 2)),
                          sensitivity=h, chi2=float(np.sum(residual ** 2)), dof=dof,
                          parameter_covariance=covariance)


def model_choice_variance(fit, sigma_bq, level: float = LACK_OF_FIT_P) -> float:
    """Variance of the TIA ((Bq·s)²) from the choice between fitted models that the data do not settle.

    Every other model the fit tried (``fit.candidates``, converged, accepted or not: a rejection for a parameter
    the points do not determine says nothing of the curve) whose curve passes the χ² test at ``level`` with the
    counting uncertainties ``sigma_bq`` describes the data as well as the counting noise allows, and the TIA
    may lie anywhere between the chosen model's and that model's (a rectangular distribution, GUM §4.3.7): the
    mean square distance from the chosen value, (ΔTIA)²/3, the largest over such models; 0 when there is none.
    Model selection by an information criterion on 3–5 points flips between such models from one noise
    realisation to the next (Burnham K.P., Anderson D.R., *Model Selection and Multimodel Inference*, 2nd ed.,
    Springer 2002, ch. 4: an estimate's variance includes that of the model choice).
    """
    from scipy.stats import chi2

    from .kinetics.fit import SECONDS_PER_HOUR
    from .kinetics.models import MODELS

    t = np.asarray(fit.t_h, dtype=float)
    a = np.asarray(fit.activity_bq, dtype=float)
    sigma = np.asarray(sigma_bq, dtype=float)
    if not np.all(np.isfinite(sigma) & (sigma > 0)):
        return 0.0
    worst = 0.0
    for cand in getattr(fit, "candidates", None) or []:
        if cand.model in (fit.model, "trapezoid") or not cand.params:
            continue
        model = MODELS[cand.model]
        dof = t.size - model.n_params
        params = np.array([cand.params[name] for name in model.param_names], dtype=float)
        if dof <= 0 or not np.all(np.isfinite(params)):
            continue
        tia = model.integral(params) * SECONDS_PER_HOUR
        curve = model.evaluate(t, params)
        if math.isfinite(tia) and chi2.sf(float(np.sum(((curve - a) / sigma) ** 2)), dof) >= level:
            worst = max(worst, (tia - float(fit.tia_bq_s)) ** 2 / 3.0)
    return worst


def lack_of_fit_variance(propagation: FitPropagation, level: float = LACK_OF_FIT_P) -> float:
    """Variance of the TIA ((Bq·s)²) that the counting noise does not explain: (χ²/ν − 1) × the counting
    variance when the χ² test rejects the fit at ``level`` (Birge ratio, Birge 1932), else 0 (also without
    degrees of freedom)."""
    from scipy.stats import chi2

    p = propagation
    if p.dof <= 0 or not np.isfinite(p.chi2) or not np.isfinite(p.counting_variance):
        return 0.0
    if chi2.sf(p.chi2, p.dof) >= level:
        return 0.0
    return max(p.chi2 / p.dof - 1.0, 0.0) * p.counting_variance


# ------------------------------------------------------------------------------ delineation, recovery

def delineation_masks(mask, voxels: int = DELINEATION_VOXELS) -> Tuple[np.ndarray, np.ndarray]:
    """The VOI eroded and dilated by ``voxels`` on its surface (6-connected steps), as bool arrays."""
    from scipy.ndimage import binary_dilation, binary_erosion, generate_binary_structure

    inside = np.asarray(mask) >= 0.5
    step = generate_binary_structure(3, 1)
    return (binary_erosion(inside, step, iterations=voxels, border_value=0),
            binary_dilation(inside, step, iterations=voxels))


def delineation_uncertainty(value_minus: float, value: float, value_plus: float, volume_minus_ml: float,
                            volume_ml: float, volume_plus_ml: float,
                            volume_pct: Optional[float] = None) -> float:
    """Relative standard uncertainty (fraction) of a quantity from the uncertainty of the VOI volume.

    The quantity's values for the VOI eroded / as drawn / dilated (``value_minus``, ``value``, ``value_plus``)
    give its sensitivity to the volume, s = (Δq/q)/(ΔV/V) (a central difference; one-sided from the VOI as
    drawn when the eroded VOI is empty). The volume's relative uncertainty is ``volume_pct`` or, by default,
    (V₊ − V₋)/(2√3 V): the ±1-voxel bounds as a rectangular distribution. Returns |s| u(V)/V, which is
    |q₊ − q₋|/(2√3 q) for the default.
    """
    if not (value != 0 and math.isfinite(value) and volume_ml > 0 and volume_plus_ml > volume_ml):
        return float("nan")
    u_volume = (volume_plus_ml - volume_minus_ml) / (2.0 * _SQRT3 * volume_ml) if volume_pct is None \
        else float(volume_pct) / 100.0
    if volume_minus_ml > 0 and math.isfinite(value_minus):
        slope = ((value_plus - value_minus) / value) / ((volume_plus_ml - volume_minus_ml) / volume_ml)
    else:
        slope = ((value_plus - value) / value) / ((volume_plus_ml - volume_ml) / volume_ml)
    return abs(slope) * u_volume


def recovery_coefficient(mask, spacing_mm: Sequence[float], fwhm_mm: float) -> float:
    """Recovery coefficient of a VOI of uniform activity imaged with a Gaussian PSF: the fraction of its
    activity that stays inside it, the mean over the VOI of the VOI's indicator blurred by the PSF (the
    diagonal of the geometric transfer matrix, Rousset et al., J Nucl Med 39:904, 1998).

    Parameters
    ----------
    mask : array_like (z, y, x)
        The VOI (values ≥ 0.5 inside).
    spacing_mm : sequence of 3 floats
        Voxel spacing (x, y, z) in mm, SimpleITK order.
    fwhm_mm : float
        FWHM of the PSF (mm).
    """
    from scipy.ndimage import gaussian_filter

    inside = np.asarray(mask) >= 0.5
    if not inside.any():
        return float("nan")
    sigma_vox = [fwhm_mm / (2.0 * math.sqrt(2.0 * math.log(2.0))) / float(s) for s in tuple(spacing_mm)[::-1]]
    margin = [int(math.ceil(4.0 * s)) + 1 for s in sigma_vox]
    lo = [max(int(i.min()) - mg, 0) for i, mg in zip(np.nonzero(inside), margin)]
    hi = [min(int(i.max()) + mg + 1, n) for i, mg, n in zip(np.nonzero(inside), margin, inside.shape)]
    box = inside[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]].astype(np.float64)
    blurred = gaussian_filter(box, sigma_vox, mode="constant", cval=0.0, truncate=4.0)
    return float(np.sum(blurred[box > 0]) / np.sum(box))


def recovery_uncertainty(mask, spacing_mm: Sequence[float], fwhm_mm: float,
                         fwhm_pct: float = DEFAULT_PSF_FWHM_PCT, step: float = 0.1) -> float:
    """Relative uncertainty (fraction) of a partial-volume-corrected activity from the uncertainty of the PSF
    FWHM: |∂ ln RC / ∂ ln FWHM| × u(FWHM)/FWHM (:func:`recovery_coefficient`; a corrected activity is the
    observed one over RC), the derivative by a central difference of ±``step`` in FWHM."""
    low = recovery_coefficient(mask, spacing_mm, fwhm_mm * (1.0 - step))
    high = recovery_coefficient(mask, spacing_mm, fwhm_mm * (1.0 + step))
    if not (low > 0 and high > 0):
        return float("nan")
    slope = (math.log(high) - math.log(low)) / (math.log(1.0 + step) - math.log(1.0 - step))
    return abs(slope) * float(fwhm_pct) / 100.0


def mass_weighted_mean(values, mask, density=None) -> float:
    """Mean of ``values`` over a VOI (``mask`` ≥ 0.5), weighted by ``density`` (mass) when given."""
    inside = np.asarray(mask) >= 0.5
    if not inside.any():
        return float("nan")
    v = np.asarray(values, dtype=np.float64)[inside]
    if density is None:
        return float(np.mean(v))
    w = np.asarray(density, dtype=np.float64)[inside]
    return float(np.sum(v * w) / np.sum(w)) if np.sum(w) > 0 else float(np.mean(v))


# ------------------------------------------------------------------------------------------- budget

@dataclass
class TiaUncertainty:
    """The TIA's relative standard uncertainties by component (fractions), and the delineation's effect on it.

    Attributes
    ----------
    components : dict name → float
        ``calibration``, ``recovery``, ``volume`` (through the activity the VOI holds), ``counting``, ``fit``.
    volume_pct : float or None
        The user's relative u(V) (%), None for the ±1-voxel default; the dose's volume component uses it too.
    warnings : list of str
    """

    components: Dict[str, float]
    volume_pct: Optional[float] = None
    warnings: List[str] = field(default_factory=list)

    @property
    def relative(self) -> float:
        """u(TIA)/TIA (fraction), all components."""
        return _quadrature(self.components.values())

    @property
    def random(self) -> float:
        """u(TIA)/TIA (fraction) of counting and fit alone."""
        return _quadrature([self.components["counting"], self.components["fit"]])


def _quadrature(values) -> float:
    values = [float(v) for v in values]
    return math.sqrt(sum(v * v for v in values)) if all(math.isfinite(v) for v in values) else float("nan")


def _override(overrides: Optional[Mapping[str, float]], name: str) -> Optional[float]:
    if not overrides or name not in overrides:
        return None
    return float(overrides[name]) / 100.0


def tia_uncertainty(fit, sigma_bq, *, delineation: Optional[Tuple[float, float, float, float, float, float]] = None,
                    recovery: float = 0.0, overrides: Optional[Mapping[str, float]] = None) -> TiaUncertainty:
    """The TIA's uncertainty components (fractions) for one VOI.

    Parameters
    ----------
    fit : TacFit
        The VOI's fit (its time points).
    sigma_bq : array_like
        Counting standard uncertainty of each of the fit's activities (Bq): :func:`counts_sigma_bq` or
        :func:`image_sigma_bq`. Replaced by ``overrides["counting"]`` % of each activity when given.
    delineation : tuple
        ``(A₋, A, A₊, V₋, V, V₊)``: the activity the VOI holds (Bq, one time point) and its volume (mL), eroded,
        as drawn and dilated by one voxel (:func:`delineation_masks`); None: the volume component is not known
        (NaN).
    recovery : float
        Relative uncertainty of the recovery coefficient (:func:`recovery_uncertainty`; 0 without a
        partial-volume correction).
    overrides : mapping name → %, optional
        The user's values of the components (:data:`COMPONENTS`): they replace the defaults and estimates.
    """
    from .kinetics.models import MODELS

    warnings: List[str] = []
    a = np.asarray(fit.activity_bq, dtype=float)
    counting = _override(overrides, "counting")
    sigma = np.abs(a) * counting if counting is not None else np.asarray(sigma_bq, dtype=float)
    tia = float(fit.tia_bq_s)
    prop = propagate_through_fit(fit, sigma)
    u_counting = math.sqrt(max(prop.counting_variance, 0.0)) / tia if tia > 0 else float("nan")
    fit_override = _override(overrides, "fit")
    single_point = fit.model != "trapezoid" and fit.n_points < MODELS[fit.model].n_params
    if fit_override is not None:
        u_fit = fit_override
    elif single_point:
        se = float(fit.tia_se_bq_s) if fit.tia_se_bq_s is not None else float("nan")
        u_fit = se / tia if math.isfinite(se) and tia > 0 else 0.0
        if not math.isfinite(se):
            warnings.append("the error of the single-time-point method itself (its assumed effective half-life) is "
                            "not in the uncertainty budget; give it with --uncertainty fit=PCT")
    elif tia > 0:
        u_fit = math.sqrt(lack_of_fit_variance(prop) + model_choice_variance(fit, sigma)) / tia
    else:
        u_fit = float("nan")
    volume_pct = None if not overrides or "volume" not in overrides else float(overrides["volume"])
    u_volume = float("nan") if delineation is None else delineation_uncertainty(*delineation, volume_pct=volume_pct)
    recovery_override = _override(overrides, "recovery")
    calibration = _override(overrides, "calibration")
    components = {
        "calibration": DEFAULT_CALIBRATION_PCT / 100.0 if calibration is None else calibration,
        "recovery": float(recovery) if recovery_override is None else recovery_override,
        "volume": u_volume,
        "counting": u_counting,
        "fit": u_fit,
    }
    return TiaUncertainty(components=components, volume_pct=volume_pct, warnings=warnings)


@dataclass
class VoiUncertainty:
    """What ``results.json`` holds per VOI (all in %, relative standard uncertainty, k = 1).

    Attributes
    ----------
    tia_uncertainty_pct, tia_random_uncertainty_pct, mean_dose_uncertainty_pct : float
    uncertainty_budget : dict name → float
        Each component's contribution to the mean dose's relative uncertainty (%); the root sum of squares is
        ``mean_dose_uncertainty_pct``.
    """

    tia_uncertainty_pct: float
    tia_random_uncertainty_pct: float
    mean_dose_uncertainty_pct: float
    uncertainty_budget: Dict[str, float]


def dose_uncertainty(tia: TiaUncertainty, *, dose_delineation: Tuple[float, float, float, float, float, float],
                     overrides: Optional[Mapping[str, float]] = None) -> VoiUncertainty:
    """Combine a VOI's TIA uncertainty with the dose factor into the mean dose's uncertainty and budget.

    Parameters
    ----------
    tia : TiaUncertainty
    dose_delineation : tuple
        ``(D₋, D, D₊, V₋, V, V₊)``: the mean dose (Gy) over the VOI eroded, as drawn and dilated by one voxel,
        and the volumes (mL). It replaces the TIA's volume component: the delineation moves the activity and
        the mass together (D ∝ activity / mass).
    overrides : mapping name → %, optional
        ``dose_factor`` (%) replaces :data:`DEFAULT_DOSE_FACTOR_PCT`.
    """
    dose_factor = _override(overrides, "dose_factor")
    budget = dict(tia.components)
    budget["volume"] = delineation_uncertainty(*dose_delineation, volume_pct=tia.volume_pct)
    budget["dose_factor"] = DEFAULT_DOSE_FACTOR_PCT / 100.0 if dose_factor is None else dose_factor
    budget = {name: budget[name] for name in COMPONENTS}
    return VoiUncertainty(tia_uncertainty_pct=_percent(tia.relative), tia_random_uncertainty_pct=_percent(tia.random),
                          mean_dose_uncertainty_pct=_percent(_quadrature(budget.values())),
                          uncertainty_budget={name: _percent(v) for name, v in budget.items()})


def _percent(fraction: float) -> float:
    """A fraction in %, to 12 significant digits (a user's 7 % stays 7, not 7.000000000000001)."""
    return float(f"{100.0 * float(fraction):.12g}")

