"""Population kinetics: a nonlinear mixed-effects model (NLMM) of the time-activity curves of one organ type
across patients, and each new patient's curve as the posterior estimate given the population and few points.

Model (per organ type; Devasia T.P., Dewaraja Y.K., Frey K.A., Wong K.K., Schipper M.J., "A Novel
Time–Activity Information-Sharing Approach Using Nonlinear Mixed Models for Patient-Specific Dosimetry with
Reduced Imaging Time Points: Application in SPECT/CT After 177Lu-DOTATATE", J Nucl Med 62(8):1118–1125, 2021,
who fit a bi-exponential NLMM to kidney time-activity data of a cohort and predict a new patient's TIA from
one (~96 h) or two time points):

- data: y_ij = A_ij / A_inj,i, the fraction of the administered activity in the VOI of subject i at t_ij
  (h p.i., not decay-corrected);
- structural model, with φ = θ + η_i the subject's log-parameters:
  ``bi_exponential``  f = e^{φ0} (e^{-λw t} − e^{-λu t}), λw = λ_phys + e^{φ1}, λu = λw + e^{φ2};
  ``mono_exponential`` f = e^{φ0} e^{-λw t}, λw = λ_phys + e^{φ1}
  (so every rate stays ≥ λ_phys and the uptake faster than the washout, as in :mod:`.models`);
- fixed effects θ; between-subject variability η_i ~ N(0, Ω), Ω = diag(ω²): log-normal parameters, i.e.
  ω is the SD of the log of the amplitude, of the biological clearance rate and of the uptake rate;
- residual error: proportional, ln y_ij = ln f(t_ij, φ_i) + ε_ij, ε ~ N(0, σ²) (σ ≈ the relative error of
  the activities, including the structural model's misfit).

Estimation: maximum of the Laplace approximation of the marginal likelihood (Pinheiro J.C., Bates D.M.,
"Approximations to the log-likelihood function in the nonlinear mixed-effects model", J Comput Graph Stat
4(1):12–35, 1995; Wolfinger R., "Laplace's approximation for nonlinear mixed models", Biometrika
80(4):791–795, 1993). Inner step: each subject's posterior mode η̂_i (empirical Bayes estimate, MAP) by a
Levenberg–Marquardt Gauss–Newton solver vectorised over subjects; the Hessian of the subject's negative log
posterior is its Gauss–Newton form H_i = J_iᵀJ_i/σ² + Ω⁻¹ (as in FOCE, Beal S.L., Sheiner L.B., NONMEM Users
Guides; Lindstrom M.J., Bates D.M., Biometrics 46:673–687, 1990), and

    −2 ln L ≈ Σ_i [ Σ_j (r_ij²/σ² + ln 2πσ²) + η̂_iᵀΩ⁻¹η̂_i + ln|Ω| + ln|H_i| ].

Outer step: scipy's L-BFGS-B (finite-difference gradients, one restart) over (θ, ln ω, ln σ), started from a two-stage estimate; standard errors of θ
from the finite-difference Hessian of −2 ln L. Model choice between the mono- and bi-exponential NLMM by AIC
of the marginal likelihood (as Hardiansyah D. et al., "Single-time-point dosimetry using model selection and
nonlinear mixed-effects modelling: a proof of concept", EJNMMI Phys 2023, doi:10.1186/s40658-023-00530-1,
select the function within the NLME framework).

Why written here on scipy: no maintained Python package fits this model by itself. statsmodels has only linear
mixed models; pharmpy(-core) builds models for NONMEM or nlmixr2 (external estimation programs, not
available to a clinic's Python); PyMC would do it by MCMC (a heavy dependency, minutes per organ type);
pynlme and pysaem are new, single-author releases without a validation record. The Laplace/FOCE estimator is
a few hundred lines on numpy/scipy, deterministic and tested here against simulated truth
(Testing/Python/test_population.py, benchmarks/population_kinetics.py).

Prediction (:func:`posterior_fit`): with θ, Ω, σ fixed at the population's estimates, the patient's
parameters are the posterior mode given its one or few points (as NONMEM's POSTHOC / MAP Bayesian
estimation); the posterior covariance is H⁻¹ (Laplace), propagated to the TIA by the delta method. Devasia et
al. refit the NLMM with the new patient's points included; with the population fixed the prediction does not
need the cohort's data, only population.json. The uncertainty is conditional on the population estimates.

This module does no I/O.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..errors import FitError
from .fit import SECONDS_PER_HOUR, CandidateFit, TacFit

#: Structural models of the NLMM and their log-parameters (φ).
MODEL_PARAMETERS: Dict[str, Tuple[str, ...]] = {
    "mono_exponential": ("ln_amplitude_fraction", "ln_clearance_bio_per_h"),
    "bi_exponential": ("ln_amplitude_fraction", "ln_clearance_bio_per_h", "ln_uptake_minus_washout_per_h"),
}
NLMM_MODELS = tuple(MODEL_PARAMETERS)
#: Bounds of the outer optimisation: ω (SD of a log-parameter) and σ (residual SD on the log scale).
OMEGA_BOUNDS = (1e-3, 5.0)
SIGMA_BOUNDS = (1e-3, 2.0)
_LN_2PI = math.log(2.0 * math.pi)


# ------------------------------------------------------------------------------ structural models

def log_curve(model: str, phi: np.ndarray, t_h: np.ndarray, lam_phys: float):
    """ln f(t, φ) and its Jacobian ∂ln f/∂φ.

    Parameters
    ----------
    model : str
        One of :data:`NLMM_MODELS`.
    phi : ndarray (..., p)
        Log-parameters.
    t_h : ndarray (..., m)
        Times (h p.i.), broadcast against ``phi[..., :1]``.
    lam_phys : float
        Physical decay constant (1/h).

    Returns
    -------
    lf : ndarray (..., m)
    jac : ndarray (..., m, p)
    """
    phi = np.asarray(phi, dtype=float)
    t = np.asarray(t_h, dtype=float)
    k = np.exp(phi[..., 1:2])
    lam_w = lam_phys + k
    lf = phi[..., 0:1] - lam_w * t
    cols = [np.ones_like(lf), -t * k]
    if model == "bi_exponential":
        g = np.exp(phi[..., 2:3])
        gt = np.maximum(g * t, 1e-300)
        lf = lf + np.log(-np.expm1(-gt))
        cols.append(gt * np.exp(-gt) / -np.expm1(-gt))  # g t / (e^{g t} − 1), without overflow
    elif model != "mono_exponential":
        raise FitError(f"unknown NLMM structural model {model!r} (one of {', '.join(NLMM_MODELS)})")
    return lf, np.stack(cols, axis=-1)


def curve_tia_h(model: str, phi: np.ndarray, lam_phys: float):
    """∫₀^∞ f dt (fraction of the administered activity × h) and its gradient with respect to φ."""
    phi = np.asarray(phi, dtype=float)
    a, k = math.exp(phi[0]), math.exp(phi[1])
    lam_w = lam_phys + k
    if model == "mono_exponential":
        return a / lam_w, np.array([a / lam_w, -a * k / lam_w ** 2])
    g = math.exp(phi[2])
    lam_u = lam_w + g
    tia = a * (1.0 / lam_w - 1.0 / lam_u)
    return tia, np.array([tia, a * k * (1.0 / lam_u ** 2 - 1.0 / lam_w ** 2), a * g / lam_u ** 2])


# ----------------------------------------------------------------------------------- the inner step

def _padded(subjects: Sequence[Tuple[np.ndarray, np.ndarray]]):
    """(t, ln y, mask) arrays (n_subjects, max points) of subjects [(t_h, y), ...]."""
    m = max(len(t) for t, _ in subjects)
    n = len(subjects)
    t = np.ones((n, m))
    ly = np.zeros((n, m))
    mask = np.zeros((n, m), dtype=bool)
    for i, (ti, yi) in enumerate(subjects):
        t[i, :len(ti)] = ti
        ly[i, :len(ti)] = np.log(yi)
        mask[i, :len(ti)] = True
    return t, ly, mask


def posterior_modes(model: str, theta, omega, sigma: float, t, ly, mask, lam_phys: float,
                    eta0: Optional[np.ndarray] = None, max_iter: int = 200, tol: float = 1e-12):
    """Each subject's posterior mode η̂ (MAP) and the Gauss–Newton Hessian of its negative log posterior.

    Minimises, for every subject at once, ½ Σ_j ((ln y_j − ln f(t_j, θ + η))/σ)² + ½ ηᵀΩ⁻¹η by
    Levenberg–Marquardt (damping per subject).

    Returns
    -------
    eta : ndarray (n, p)
    hess : ndarray (n, p, p)
        J ᵀJ/σ² + Ω⁻¹ at η̂.
    rss : ndarray (n,)
        Σ_j r_j² with r = (ln y − ln f)/σ.
    """
    theta = np.asarray(theta, dtype=float)
    inv_omega2 = 1.0 / np.asarray(omega, dtype=float) ** 2
    n, p = t.shape[0], theta.size
    eta = np.zeros((n, p)) if eta0 is None else np.array(eta0, dtype=float)
    w = mask.astype(float)

    def parts(e):
        lf, jac = log_curve(model, theta + e, t, lam_phys)
        r = (ly - lf) * w / sigma
        obj = 0.5 * np.sum(r * r, axis=1) + 0.5 * np.sum(e * e * inv_omega2, axis=1)
        return r, jac * (w / sigma)[..., None], obj

    r, jac, obj = parts(eta)
    mu = np.full(n, 1e-3)
    eye = np.eye(p)
    for _ in range(max_iter):
        grad = -np.einsum("nm,nmp->np", r, jac) + eta * inv_omega2
        hess = np.einsum("nmp,nmq->npq", jac, jac) + np.diag(inv_omega2)
        # Newton decrement gᵀH⁻¹g: twice the distance of the objective from the mode's (quadratic model)
        if np.all(np.einsum("np,np->n", grad, np.linalg.solve(hess, grad[..., None])[..., 0]) < tol * (1.0 + obj)):
            break
        scale = np.einsum("npp->np", hess)
        step = -np.linalg.solve(hess + mu[:, None, None] * eye * scale[:, :, None], grad[..., None])[..., 0]
        step = np.clip(step, -3.0, 3.0)
        trial = eta + step
        r_t, jac_t, obj_t = parts(trial)
        better = obj_t <= obj
        eta = np.where(better[:, None], trial, eta)
        r = np.where(better[:, None], r_t, r)
        jac = np.where(better[:, None, None], jac_t, jac)
        obj = np.where(better, obj_t, obj)
        mu = np.where(better, np.maximum(mu / 10.0, 1e-12), mu * 10.0)
    hess = np.einsum("nmp,nmq->npq", jac, jac) + np.diag(inv_omega2)
    return eta, hess, np.sum(r * r, axis=1)


# ------------------------------------------------------------------------------------ the population

@dataclass
class PopulationModel:
    """The NLMM of one organ type (what population.json holds per organ type).

    Attributes
    ----------
    organ_type : str
    model : str
        Structural model (:data:`NLMM_MODELS`).
    theta : list of float
        Fixed effects (log-parameters, :data:`MODEL_PARAMETERS`).
    theta_se : list of float
        Their standard errors (NaN when the Hessian is singular).
    omega : list of float
        Between-subject SD of each log-parameter (log-normal random effects, diagonal Ω).
    sigma : float
        Residual SD of ln activity (proportional error).
    lambda_phys_per_h : float
    n_subjects, n_observations : int
    minus2_log_likelihood, aic : float
        Laplace approximation of the marginal likelihood (on the log scale of the data).
    model_aic : dict
        AIC of each structural model compared (:func:`select_population`).
    subjects : list of str
        Which curves (patient/cycle/VOI) it was fitted to.
    """

    organ_type: str
    model: str
    theta: List[float]
    theta_se: List[float]
    omega: List[float]
    sigma: float
    lambda_phys_per_h: float
    n_subjects: int
    n_observations: int
    minus2_log_likelihood: float
    aic: float
    subjects: List[str] = field(default_factory=list)
    model_aic: Dict[str, float] = field(default_factory=dict)

    @property
    def parameter_names(self) -> Tuple[str, ...]:
        return MODEL_PARAMETERS[self.model]

    def typical_effective_half_life_h(self) -> float:
        """ln 2 / λw of the typical subject (η = 0)."""
        return math.log(2.0) / (self.lambda_phys_per_h + math.exp(self.theta[1]))

    def to_json(self) -> dict:
        return {"organ_type": self.organ_type, "model": self.model, "parameters": list(self.parameter_names),
                "theta": list(self.theta), "theta_se": [None if not math.isfinite(s) else s for s in self.theta_se],
                "omega": list(self.omega), "sigma": self.sigma, "lambda_phys_per_h": self.lambda_phys_per_h,
                "n_subjects": self.n_subjects, "n_observations": self.n_observations,
                "minus2_log_likelihood": self.minus2_log_likelihood, "aic": self.aic,
                "typical_effective_half_life_h": self.typical_effective_half_life_h(), "subjects": self.subjects,
                "model_aic": dict(self.model_aic)}

    @classmethod
    def from_json(cls, data: dict) -> "PopulationModel":
        """Raises KeyError/TypeError/ValueError on a malformed entry (the caller names the file)."""
        model = str(data["model"])
        if model not in MODEL_PARAMETERS:
            raise ValueError(f"model {model!r} is not one of {', '.join(NLMM_MODELS)}")
        p = len(MODEL_PARAMETERS[model])
        theta = [float(v) for v in data["theta"]]
        omega = [float(v) for v in data["omega"]]
        sigma = float(data["sigma"])
        if len(theta) != p or len(omega) != p:
            raise ValueError(f"model {model} has {p} parameters, theta/omega have {len(theta)}/{len(omega)}")
        if not all(math.isfinite(v) for v in theta) or not all(math.isfinite(w) and w > 0 for w in omega) \
                or not (math.isfinite(sigma) and sigma > 0):
            raise ValueError("theta must be finite, omega and sigma positive")
        se = [float("nan") if v is None else float(v) for v in data.get("theta_se", [None] * p)]
        return cls(organ_type=str(data["organ_type"]), model=model, theta=theta, theta_se=se, omega=omega,
                   sigma=sigma, lambda_phys_per_h=float(data["lambda_phys_per_h"]),
                   n_subjects=int(data["n_subjects"]), n_observations=int(data["n_observations"]),
                   minus2_log_likelihood=float(data.get("minus2_log_likelihood", float("nan"))),
                   aic=float(data.get("aic", float("nan"))), subjects=list(data.get("subjects", [])),
                   model_aic={str(k): float(v) for k, v in (data.get("model_aic") or {}).items()})


def _checked_subjects(subjects, where: str):
    out = []
    for t, y in subjects:
        t = np.asarray(t, dtype=float).ravel()
        y = np.asarray(y, dtype=float).ravel()
        if t.size != y.size or t.size == 0:
            raise FitError(f"{where}a subject has {t.size} times and {y.size} activities")
        keep = np.isfinite(t) & np.isfinite(y) & (y > 0) & (t > 0)
        if keep.any():
            out.append((t[keep], y[keep]))
    if len(out) < 3:
        raise FitError(f"{where}a population fit needs at least 3 subjects with positive activities, got {len(out)}")
    return out


def _objective(model, x, p, t, ly, mask, lam_phys, cache):
    theta, omega, sigma = x[:p], np.exp(x[p:2 * p]), math.exp(x[2 * p])
    eta, hess, rss = posterior_modes(model, theta, omega, sigma, t, ly, mask, lam_phys, eta0=cache.get("eta"))
    if not np.all(np.isfinite(eta)):
        return 1e12
    cache["eta"] = eta
    n_obs = int(mask.sum())
    _sign, logdet_h = np.linalg.slogdet(hess)
    value = (float(np.sum(rss)) + n_obs * (_LN_2PI + 2.0 * math.log(sigma))
             + float(np.sum(eta * eta / omega ** 2)) + t.shape[0] * float(np.sum(np.log(omega ** 2)))
             + float(np.sum(logdet_h)))
    return value if math.isfinite(value) else 1e12


def _start(model: str, t, ly, mask, lam_phys: float) -> np.ndarray:
    """Two-stage start: every subject's own fit under a wide prior around a pooled heuristic curve."""
    tt, yy = t[mask], ly[mask]
    late = tt >= np.median(tt)
    slope = np.polyfit(tt[late], yy[late], 1)[0] if np.unique(tt[late]).size > 1 else -2 * lam_phys
    k = max(-slope - lam_phys, 0.05 * lam_phys, 1e-4)
    amp = float(np.median(yy[late] + (lam_phys + k) * tt[late]))
    theta = [amp, math.log(k)]
    if model == "bi_exponential":
        theta.append(math.log(2.0 / max(float(np.min(tt)), 0.5)))
    theta = np.array(theta)
    eta, _h, _r = posterior_modes(model, theta, np.full(theta.size, 3.0), 0.1, t, ly, mask, lam_phys)
    return theta + np.mean(eta, axis=0), np.clip(np.std(eta, axis=0), 0.1, 1.0)


def fit_population(subjects: Sequence[Tuple[Sequence[float], Sequence[float]]], model: str = "bi_exponential",
                   lambda_phys_per_h: float = math.log(2.0) / (6.647 * 24.0), organ_type: str = "",
                   labels: Optional[Sequence[str]] = None) -> PopulationModel:
    """Fit the NLMM of one organ type by the Laplace approximation (module docstring).

    Parameters
    ----------
    subjects : sequence of (t_h, y)
        Each subject's (curve's) times (h p.i.) and fractions of the administered activity (not
        decay-corrected); non-positive or non-finite points are left out.
    model : str
        ``"bi_exponential"`` or ``"mono_exponential"``.
    lambda_phys_per_h : float
        Physical decay constant (1/h) (default Lu-177, T½ 6.647 d).
    organ_type : str
    labels : sequence of str, optional
        Name of each subject, recorded.

    Returns
    -------
    PopulationModel

    Raises
    ------
    FitError
        Fewer than 3 usable subjects, or no convergence.
    """
    from scipy.optimize import minimize

    where = f"organ type {organ_type!r}: " if organ_type else ""
    if model not in MODEL_PARAMETERS:
        raise FitError(f"{where}unknown NLMM structural model {model!r} (one of {', '.join(NLMM_MODELS)})")
    data = _checked_subjects(subjects, where)
    t, ly, mask = _padded(data)
    p = len(MODEL_PARAMETERS[model])
    theta0, omega0 = _start(model, t, ly, mask, lambda_phys_per_h)
    x0 = np.concatenate([theta0, np.log(omega0), [math.log(0.1)]])
    bounds = ([(v - 15.0, v + 15.0) for v in theta0] + [tuple(np.log(OMEGA_BOUNDS))] * p
              + [tuple(np.log(SIGMA_BOUNDS))])
    cache: dict = {}

    def fun(x):
        return _objective(model, x, p, t, ly, mask, lambda_phys_per_h, cache)

    res = minimize(fun, x0, method="L-BFGS-B", bounds=bounds, options={"maxiter": 500, "eps": 1e-6})
    x = res.x
    if not np.isfinite(res.fun) or res.fun >= 1e12:
        raise FitError(f"{where}the NLMM fit did not converge ({res.message})")
    # restart from the solution (a fresh quasi-Newton Hessian): finite-difference gradients may stop early on
    # the flat ridges of variance parameters
    res2 = minimize(fun, x, method="L-BFGS-B", bounds=bounds, options={"maxiter": 500, "eps": 1e-6})
    if np.isfinite(res2.fun) and res2.fun < res.fun:
        x, value = res2.x, float(res2.fun)
    else:
        value = float(res.fun)
    theta_se = _theta_se(fun, x, p)
    n_par = 2 * p + 1
    return PopulationModel(organ_type=organ_type, model=model, theta=[float(v) for v in x[:p]],
                           theta_se=theta_se, omega=[float(v) for v in np.exp(x[p:2 * p])],
                           sigma=float(math.exp(x[2 * p])), lambda_phys_per_h=float(lambda_phys_per_h),
                           n_subjects=int(t.shape[0]), n_observations=int(mask.sum()),
                           minus2_log_likelihood=value, aic=value + 2 * n_par,
                           subjects=[str(s) for s in labels] if labels is not None else [])


def _theta_se(fun, x, p: int, h: float = 1e-3) -> List[float]:
    """Standard errors of θ from the central-difference Hessian of −2 ln L (covariance 2 H⁻¹) in θ, with the
    variance parameters held at their estimates."""
    hess = np.zeros((p, p))
    f0 = fun(x)
    for i in range(p):
        for j in range(i, p):
            e_i, e_j = np.eye(x.size)[i] * h, np.eye(x.size)[j] * h
            if i == j:
                hess[i, i] = (fun(x + e_i) - 2 * f0 + fun(x - e_i)) / h ** 2
            else:
                hess[i, j] = hess[j, i] = (fun(x + e_i + e_j) - fun(x + e_i - e_j) - fun(x - e_i + e_j)
                                           + fun(x - e_i - e_j)) / (4 * h * h)
    try:
        cov = 2.0 * np.linalg.inv(hess)
    except np.linalg.LinAlgError:
        return [float("nan")] * p
    return [float(math.sqrt(c)) if c > 0 else float("nan") for c in np.diag(cov)]


def select_population(subjects, lambda_phys_per_h: float, organ_type: str = "", labels=None,
                      models: Sequence[str] = NLMM_MODELS) -> Tuple[PopulationModel, Dict[str, float]]:
    """Fit every model of ``models`` and keep the one of lowest AIC; returns it and ``{model: AIC}`` (a model
    that could not be fitted is left out)."""
    fits, aics, errors = {}, {}, []
    for name in models:
        try:
            fits[name] = fit_population(subjects, name, lambda_phys_per_h, organ_type, labels)
            aics[name] = fits[name].aic
        except FitError as exc:
            errors.append(str(exc))
    if not fits:
        raise FitError("; ".join(errors))
    best = fits[min(aics, key=aics.get)]
    best.model_aic = dict(aics)
    return best, aics


# --------------------------------------------------------------------------------------- prediction

def posterior_fit(population: PopulationModel, t_h, a_bq, injected_bq: float, label: Optional[str] = None) -> TacFit:
    """A patient's curve and TIA as the posterior mode given the population and its points.

    Parameters
    ----------
    population : PopulationModel
    t_h : array_like
        Scan times (h p.i.), one or more.
    a_bq : array_like
        Activity in the VOI at each time (Bq, not decay-corrected), positive.
    injected_bq : float
        The patient's administered activity (Bq).
    label : str, optional

    Returns
    -------
    TacFit
        Model and parameters of :mod:`.models` (``A0_bq`` and rates), TIA (Bq·s) with its posterior standard
        error (Laplace covariance H⁻¹, delta method), ``error_model`` naming the population.

    Raises
    ------
    FitError
        Non-positive activity, time or administered activity.
    """
    where = f"{label}: " if label else ""
    t = np.array(t_h, dtype=float).ravel()
    a = np.array(a_bq, dtype=float).ravel()
    if t.size == 0 or t.size != a.size:
        raise FitError(f"{where}{t.size} time points but {a.size} activity values")
    if not (np.all(np.isfinite(t)) and np.all(t > 0) and np.all(np.isfinite(a)) and np.all(a > 0)):
        raise FitError(f"{where}the NLMM posterior needs positive activities at positive times, got "
                       f"{list(a)} Bq at {list(t)} h")
    if not (math.isfinite(injected_bq) and injected_bq > 0):
        raise FitError(f"{where}the administered activity must be positive, got {injected_bq!r} Bq")
    lam_phys = population.lambda_phys_per_h
    theta = np.array(population.theta)
    eta, hess, _rss = posterior_modes(population.model, theta, population.omega, population.sigma,
                                      t[None, :], np.log(a / injected_bq)[None, :], np.ones((1, t.size), bool),
                                      lam_phys)
    phi = theta + eta[0]
    cov = np.linalg.inv(hess[0])
    tia_frac_h, grad = curve_tia_h(population.model, phi, lam_phys)
    tia = tia_frac_h * injected_bq * SECONDS_PER_HOUR
    tia_se = math.sqrt(max(float(grad @ cov @ grad), 0.0)) * injected_bq * SECONDS_PER_HOUR
    amp, k = math.exp(phi[0]) * injected_bq, math.exp(phi[1])
    lam_w = lam_phys + k
    d_amp = np.eye(phi.size)[0] * amp
    d_w = np.eye(phi.size)[1] * k
    if population.model == "bi_exponential":
        g = math.exp(phi[2])
        params = {"A0_bq": amp, "lambda_washout_per_h": lam_w, "lambda_uptake_per_h": lam_w + g}
        grads = {"A0_bq": d_amp, "lambda_washout_per_h": d_w, "lambda_uptake_per_h": d_w + np.eye(3)[2] * g}
    else:
        params = {"A0_bq": amp, "lambda_per_h": lam_w}
        grads = {"A0_bq": d_amp, "lambda_per_h": d_w}
    param_se = {name: math.sqrt(max(float(d @ cov @ d), 0.0)) for name, d in grads.items()}
    method = (f"NLMM posterior mode ({population.organ_type}: {population.model}, {population.n_subjects} "
              f"curves)")
    note = f"{where}reduced time points: {method}"
    cand = CandidateFit(model=population.model, accepted=True, params=dict(params), param_se=dict(param_se),
                        tia_bq_s=float(tia), tia_se_bq_s=float(tia_se), n_params=len(params), reason="",
                        warnings=[note])
    return TacFit(model=population.model, params=params, param_se=param_se, tia_bq_s=float(tia),
                  tia_se_bq_s=float(tia_se), effective_half_life_h=math.log(2.0) / lam_w, aicc=float("nan"),
                  n_points=int(t.size), candidates=[cand], warnings=[note], t_h=t.copy(), activity_bq=a.copy(),
                  lambda_phys_per_h=lam_phys,
                  error_model=f"log-normal (sigma {population.sigma:.3g}) with the NLMM population prior")
