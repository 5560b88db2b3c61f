"""Time-integrated activity from fewer time points: single-time-point, two-time-point and population-prior fits.

Methods of :func:`fit_reduced` (activity in Bq at scan time, not decay-corrected; times in h p.i.):

- ``"auto"`` — by the number of points: ``"hanscheid"`` for one, ``"two_point"`` for two, the ordinary
  AICc fit (``"full"``) for three or more. It needs no population data.
- ``"hanscheid"`` — one point: TIA ≈ 2 · A(t) · t / ln 2 (Hänscheid H., Lapa C., Buck A.K., Lassmann M.,
  Werner R.A., "Dose mapping after endoradiotherapy with 177Lu-DOTATATE/DOTATOC by a single measurement
  after 4 days", J Nucl Med 59(1):75–81, 2018). It is the mono-exponential with its effective half-life
  equal to the scan time, accurate when the scan is near the true T_eff (≈ 3–5 days for Lu-177 DOTATATE
  kidneys and tumours).
- ``"population_half_life"`` (alias ``"madsen"``) — one point and a population effective half-life of the
  organ type: A0 = A(t) e^{λ t}, TIA = A0/λ (Madsen M.T., Menda Y., O'Dorisio T.M., O'Dorisio M.S.,
  "Technical Note: Single time point dose estimate for exponential clearance", Med Phys 45(5):2318–2324,
  2018).
- ``"two_point"`` — the mono-exponential through two points, λ = ln(A1/A2)/(t2 − t1) kept ≥ λ_phys.
- ``"nlmm"`` — ≥ 1 point: the posterior (MAP) curve given a cohort's nonlinear mixed-effects population
  model of the organ type (:mod:`.population`; Devasia et al., J Nucl Med 62(8):1118–1125, 2021):
  ``population=`` a :class:`~.population.PopulationModel`, ``injected_bq=`` the administered activity.
- ``"population_prior"`` (alias ``"map"``) — Bayesian maximum a posteriori mono-exponential fit in the
  spirit of the nonlinear mixed-model (NLMM) information-sharing approach of Devasia T.P. et al.
  (J Nucl Med, published online 2020, Lu-177 DOTATATE SPECT/CT with reduced time points): the
  log effective clearance rate has a normal population prior per organ type, the data a proportional
  (log-normal) error of ``cv`` (default 10 %). With one point the MAP is the population half-life; with
  more points the data take over. The standard errors are the Laplace approximation (curvature of the
  log-posterior).

Population effective half-lives are **the user's** (``population=``; ``--population-half-life`` on the
command line): LuDosimetry ships no default values, because published values differ between
radiopharmaceuticals, patient groups and imaging protocols, and no single paper gives a table for every
organ type. Each entry is ``organ type → (T_eff in h, SD of ln T_eff)`` (the spread is needed by
``population_prior`` only). docs/reduced_time_points.md shows the format and the table a clinic fills in.

Organ type of a VOI (:func:`organ_type`): an explicit mapping, VOI name → organ type (``organ_types=``;
``--organ-type VOI=TYPE``), else the exact-name defaults of :data:`DEFAULT_ORGAN_TYPES` (the whole name,
case-insensitive, never a prefix: "Liver_met_1" is not liver); a VOI in neither has no organ type and a
population method refuses it.
"""
from __future__ import annotations

import math
from typing import Dict, Iterable, Mapping, Optional, Tuple, Union

import numpy as np

from ..errors import FitError, OptionError
from ..radionuclides import Radionuclide, radionuclide
from .fit import SECONDS_PER_HOUR, CandidateFit, TacFit, fit_time_activity_curve

_LN2 = math.log(2.0)

#: The default mapping of exact VOI names (compared case-insensitively, whole name) to organ types; an
#: ``organ_types`` mapping given by the user comes first. Names are never matched by prefix.
DEFAULT_ORGAN_TYPES: Dict[str, str] = {
    "kidney": "kidney", "kidneys": "kidney", "kidney_l": "kidney", "kidney_r": "kidney",
    "left kidney": "kidney", "right kidney": "kidney", "kidney left": "kidney", "kidney right": "kidney",
    "liver": "liver", "spleen": "spleen",
}
METHODS = ("auto", "hanscheid", "population_half_life", "madsen", "two_point", "population_prior", "map", "full",
           "nlmm")
#: The methods that need population effective half-lives (and so an organ type per VOI).
POPULATION_METHODS = ("population_half_life", "madsen", "population_prior", "map")


def organ_type(name: str, organ_types: Optional[Mapping[str, str]] = None) -> Optional[str]:
    """Organ type of a VOI by an explicit mapping: ``organ_types[name]``, else
    ``DEFAULT_ORGAN_TYPES[name.lower()]`` (whole name), else None.

    Parameters
    ----------
    name : str
        VOI name.
    organ_types : mapping, optional
        VOI name → organ type, given by the user (exact names).

    Examples
    --------
    ``organ_type("Kidney_L")`` → ``"kidney"``; ``organ_type("Liver_met_1")`` → None;
    ``organ_type("Liver_met_1", {"Liver_met_1": "tumor"})`` → ``"tumor"``.
    """
    if organ_types and name in organ_types:
        return str(organ_types[name]).strip().lower()
    return DEFAULT_ORGAN_TYPES.get(str(name).strip().lower())


def parse_organ_types(items: Optional[Iterable[str]]) -> Dict[str, str]:
    """``["VOI=TYPE", ...]`` (the ``--organ-type`` values) → ``{VOI: type}``; the last ``=`` separates.

    Raises
    ------
    ValueError
        An item that is not ``VOI=TYPE``.
    """
    out: Dict[str, str] = {}
    for item in items or ():
        name, sep, typ = str(item).rpartition("=")
        if not sep or not name or not typ.strip():
            raise ValueError(f"{item!r} is not VOI=TYPE")
        out[name] = typ.strip().lower()
    return out


def parse_population(items: Optional[Iterable[str]]) -> Dict[str, Tuple[float, Optional[float]]]:
    """``["TYPE=HOURS[:LOG_SD]", ...]`` (the ``--population-half-life`` values) → ``{type: (T_eff h,
    SD of ln T_eff or None)}``.

    Raises
    ------
    ValueError
        An item not of that form, or a half-life or spread that is not a positive finite number.
    """
    out: Dict[str, Tuple[float, Optional[float]]] = {}
    for item in items or ():
        typ, sep, value = str(item).partition("=")
        hours, _, spread = value.partition(":")
        try:
            t_eff = float(hours)
            sd = float(spread) if spread.strip() else None
        except ValueError:
            t_eff, sd = float("nan"), None
        if not sep or not typ.strip() or not (math.isfinite(t_eff) and t_eff > 0) \
                or (sd is not None and not (math.isfinite(sd) and sd > 0)):
            raise ValueError(f"{item!r} is not TYPE=HOURS or TYPE=HOURS:LOG_SD with positive numbers")
        out[typ.strip().lower()] = (t_eff, sd)
    return out


def population_inputs(voi_name: str, method: str, organ_type_items=None, population_items=None):
    """Organ type and population table of a VOI for a reduced-time-point method, from the user's items.

    Parameters
    ----------
    voi_name : str
    method : str
        The reduced-time-point method; only :data:`POPULATION_METHODS` need anything.
    organ_type_items, population_items : sequence of str, optional
        The ``--organ-type VOI=TYPE`` and ``--population-half-life TYPE=HOURS[:LOG_SD]`` values.

    Returns
    -------
    organ : str or None
        The VOI's organ type (None when the method needs none).
    population : dict or None
        Organ type → (T_eff h, SD of ln T_eff or None).
    from_default : bool
        True when the organ type came from :data:`DEFAULT_ORGAN_TYPES` (not from the user's mapping).

    Raises
    ------
    OptionError
        An item that cannot be read, no population table, no organ type for the VOI, or no half-life for its
        organ type (naming the option).
    """
    if method not in POPULATION_METHODS:
        return None, None, False
    try:
        mapping = parse_organ_types(organ_type_items)
    except ValueError as exc:
        raise OptionError(str(exc), option="organ_types") from None
    try:
        population = parse_population(population_items)
    except ValueError as exc:
        raise OptionError(str(exc), option="population_half_lives") from None
    if not population:
        raise OptionError(f"reduced-time-point method {method!r} needs the population effective half-lives of "
                          f"the organ types (LuDosimetry has no default values): give {{option}}",
                          option="population_half_lives")
    organ = organ_type(voi_name, mapping)
    if organ is None:
        raise OptionError(f"VOI {voi_name!r} has no organ type for the population half-lives (names are "
                          f"matched exactly, never by prefix): give {{option}} '{voi_name}=TYPE'",
                          option="organ_types")
    if organ not in population:
        raise OptionError(f"no population half-life for organ type {organ!r} of VOI {voi_name!r} (given for "
                          f"{', '.join(sorted(population))}): give {{option}} {organ}=HOURS:LOG_SD",
                          option="population_half_lives")
    return organ, population, voi_name not in mapping


def _prior(organ, population, method: str, where: str) -> Tuple[str, float, Optional[float]]:
    """(organ type, T_eff h, SD of ln T_eff or None) for a population method."""
    if not population:
        raise FitError(f"{where}method {method!r} needs population effective half-lives (population=; "
                       f"--population-half-life TYPE=HOURS:LOG_SD); LuDosimetry has no default values")
    table = {str(k).strip().lower(): v for k, v in population.items()}
    if organ is None:
        raise FitError(f"{where}method {method!r} needs the organ type of the curve (organ=; --organ-type)")
    typ = str(organ).strip().lower()
    if typ not in table:
        typ = organ_type(organ) or typ
    if typ not in table:
        raise FitError(f"{where}no population effective half-life for organ type {typ!r} (given for "
                       f"{', '.join(sorted(table))})")
    entry = tuple(table[typ])
    t_eff = float(entry[0])
    sd = None if len(entry) < 2 or entry[1] is None else float(entry[1])
    if not (math.isfinite(t_eff) and t_eff > 0) or (sd is not None and not (math.isfinite(sd) and sd > 0)):
        raise FitError(f"{where}population prior of {typ!r} must have a positive half-life and spread, "
                       f"got {t_eff}, {sd}")
    return typ, t_eff, sd


def _result(t, a, a0, lam, method, lam_phys, se=None, warnings=None, error_model="none (not fitted)") -> TacFit:
    tia = a0 / lam * SECONDS_PER_HOUR
    params = {"A0_bq": float(a0), "lambda_per_h": float(lam)}
    param_se = {"A0_bq": float("nan"), "lambda_per_h": float("nan")}
    tia_se = float("nan")
    if se is not None:
        param_se, tia_se = se
    cand = CandidateFit(model="mono_exponential", accepted=True, params=dict(params), param_se=dict(param_se),
                        tia_bq_s=float(tia), tia_se_bq_s=tia_se, n_params=2,
                        reason="", warnings=[f"reduced time points: {method}"])
    return TacFit(model="mono_exponential", params=params, param_se=param_se, tia_bq_s=float(tia),
                  tia_se_bq_s=tia_se, effective_half_life_h=_LN2 / lam, aicc=float("nan"), n_points=int(t.size),
                  candidates=[cand], warnings=list(warnings or []), t_h=t.copy(), activity_bq=a.copy(),
                  lambda_phys_per_h=lam_phys, error_model=error_model)


def fit_reduced(t_h, a_bq, method: str = "auto", *, organ: Optional[str] = None,
                nuclide: Union[Radionuclide, str, None] = None, population: Optional[dict] = None,
                cv: float = 0.10, label: Optional[str] = None, error_model: str = "proportional",
                injected_bq: Optional[float] = None) -> TacFit:
    """TIA from a reduced set of time points.

    Parameters
    ----------
    t_h : array_like
        Scan times (h after injection).
    a_bq : array_like
        Activity (Bq) at each time (not decay-corrected).
    method : str
        ``"auto"`` (by the number of points: hanscheid, two_point, full), ``"hanscheid"`` (1 point),
        ``"population_half_life"``/``"madsen"`` (1 point), ``"two_point"`` (2 points),
        ``"population_prior"``/``"map"`` (≥ 1 point), ``"full"`` (the ordinary AICc fit).
    organ : str, optional
        Organ type (a key of ``population``) or a VOI name of :data:`DEFAULT_ORGAN_TYPES`, for the
        population methods.
    nuclide : Radionuclide or str, optional
        Default Lu-177; rates are kept ≥ its decay constant.
    population : dict, optional
        Organ type → (T_eff h, SD of ln T_eff or None): the user's population effective half-lives,
        required by the population methods (there are no defaults).
    cv : float
        Relative uncertainty of each activity for the population-prior fit.
    label : str, optional
        Name used in messages.
    error_model : str
        Error model of the ``"full"`` fit (:func:`~.fit.fit_time_activity_curve`).
    injected_bq : float, optional
        Administered activity (Bq), for ``"nlmm"`` (whose ``population`` is a
        :class:`~.population.PopulationModel`).

    Returns
    -------
    TacFit
        Mono-exponential parameters (``A0_bq``, ``lambda_per_h``), TIA (Bq·s), effective half-life;
        ``warnings`` name the method.

    Raises
    ------
    FitError
        Wrong number of points for the method, non-positive activity or time, unknown method or organ.
    """
    where = f"{label}: " if label else ""
    if method not in METHODS:
        raise FitError(f"{where}unknown reduced-time-point method {method!r}; choose from {', '.join(METHODS)}")
    nuc = radionuclide(nuclide or "Lu-177") if not isinstance(nuclide, Radionuclide) else nuclide
    lam_phys = nuc.decay_constant_per_h
    try:
        t = np.array(t_h, dtype=float).ravel()
        a = np.array(a_bq, dtype=float).ravel()
    except (TypeError, ValueError) as exc:
        raise FitError(f"{where}time and activity must be numbers ({exc})") from None
    if t.size != a.size or t.size == 0:
        raise FitError(f"{where}{t.size} time points but {a.size} activity values")
    if method == "auto":
        method = {1: "hanscheid", 2: "two_point"}.get(int(t.size), "full")
    if method == "full":
        return fit_time_activity_curve(t, a, nuclide=nuc, label=label, error_model=error_model)
    if method == "nlmm":
        from .population import PopulationModel, posterior_fit
        if not isinstance(population, PopulationModel) or injected_bq is None:
            raise FitError(f"{where}method 'nlmm' needs a population model (population=) and the administered "
                           f"activity (injected_bq=)")
        if abs(population.lambda_phys_per_h / lam_phys - 1.0) > 1e-6:
            raise FitError(f"{where}the population was fitted for another radionuclide than {nuc.name}")
        return posterior_fit(population, t, a, float(injected_bq), label=label)
    if not (np.all(np.isfinite(t)) and np.all(t > 0)):
        raise FitError(f"{where}scan times must be finite and after the injection, got {list(t)}")
    if np.any(np.diff(t) <= 0):
        raise FitError(f"{where}scan times must be strictly increasing, got {list(t)}")
    if not (np.all(np.isfinite(a)) and np.all(a > 0)):
        raise FitError(f"{where}every activity must be positive for method {method!r}, got {list(a)}")
    warnings = []
    if method == "hanscheid":
        if t.size != 1:
            raise FitError(f"{where}method 'hanscheid' uses one time point, got {t.size}")
        lam = max(_LN2 / t[0], lam_phys)
        if not 48.0 <= t[0] <= 168.0:
            warnings.append(f"{where}Hänscheid's approximation assumes a scan near the effective half-life "
                            f"(about 4 days); this one is at {t[0]:.1f} h")
        return _result(t, a, a[0] * math.exp(lam * t[0]), lam, method, lam_phys, warnings=warnings)
    if method in ("population_half_life", "madsen"):
        if t.size != 1:
            raise FitError(f"{where}method {method!r} uses one time point, got {t.size}")
        typ, t_eff, _sd = _prior(organ, population, method, where)
        lam = max(_LN2 / t_eff, lam_phys)
        warnings.append(f"{where}population effective half-life of organ type {typ!r}: {t_eff:g} h (user's "
                        f"population table)")
        return _result(t, a, a[0] * math.exp(lam * t[0]), lam, method, lam_phys, warnings=warnings)
    if method == "two_point":
        if t.size != 2:
            raise FitError(f"{where}method 'two_point' uses two time points, got {t.size}")
        lam = math.log(a[0] / a[1]) / (t[1] - t[0])
        if lam < lam_phys:
            warnings.append(f"{where}the activity falls slower than physical decay between the two points; "
                            f"the physical decay constant is used")
            lam = lam_phys
        # amplitude through the later point (the one nearer the bulk of the integral)
        return _result(t, a, a[1] * math.exp(lam * t[1]), lam, method, lam_phys, warnings=warnings)
    # population prior (MAP)
    if not cv > 0:
        raise FitError(f"{where}cv must be positive, got {cv!r}")
    typ, t_eff, sd = _prior(organ, population, method, where)
    if sd is None:
        raise FitError(f"{where}method {method!r} needs the spread (SD of ln T_eff) of organ type {typ!r}'s "
                       f"population half-life: TYPE=HOURS:LOG_SD")
    warnings.append(f"{where}population prior of organ type {typ!r}: T_eff {t_eff:g} h, log-SD {sd:g} "
                    f"(user's population table)")
    mu = math.log(_LN2 / t_eff)
    y = np.log(a)

    def neg_log_post(u: float) -> float:
        lam = lam_phys + math.exp(u)
        ln_a0 = float(np.mean(y + lam * t))
        r = y - ln_a0 + lam * t
        return 0.5 * float(np.sum(r * r)) / cv ** 2 + 0.5 * ((math.log(lam) - mu) / sd) ** 2

    from scipy.optimize import minimize_scalar
    u0 = math.log(max(math.exp(mu) - lam_phys, 1e-6))
    res = minimize_scalar(neg_log_post, bracket=(u0 - 1.0, u0 + 1.0), tol=1e-10)
    u = float(res.x)
    lam = lam_phys + math.exp(u)
    ln_a0 = float(np.mean(y + lam * t))
    a0 = math.exp(ln_a0)
    # Laplace approximation on (ln A0, ln λ_bio = u): Hessian of the negative log-posterior
    theta = np.array([ln_a0, u])

    def nlp2(th):
        la = lam_phys + math.exp(th[1])
        r = y - th[0] + la * t
        return 0.5 * float(np.sum(r * r)) / cv ** 2 + 0.5 * ((math.log(la) - mu) / sd) ** 2

    h = 1e-4
    hess = np.zeros((2, 2))
    for i in range(2):
        for j in range(2):
            ei, ej = np.eye(2)[i] * h, np.eye(2)[j] * h
            hess[i, j] = (nlp2(theta + ei + ej) - nlp2(theta + ei - ej) - nlp2(theta - ei + ej)
                          + nlp2(theta - ei - ej)) / (4 * h * h)
    try:
        cov = np.linalg.inv(hess)
        g = np.array([1.0, -math.exp(u) / lam]) * (a0 / lam)  # ∂(A0/λ)/∂(ln A0, u)
        tia_se = math.sqrt(max(float(g @ cov @ g), 0.0)) * SECONDS_PER_HOUR
        se = ({"A0_bq": a0 * math.sqrt(max(cov[0, 0], 0.0)),
               "lambda_per_h": math.exp(u) * math.sqrt(max(cov[1, 1], 0.0))}, tia_se)
    except np.linalg.LinAlgError:
        se = None
    return _result(t, a, a0, lam, f"population prior ({typ}: T_eff {t_eff:g} h, log-SD {sd:g})", lam_phys,
                   se=se, warnings=warnings, error_model=f"log-normal (cv {cv:g}) with a population prior")


def compare_with_full(full: TacFit, reduced: TacFit) -> dict:
    """Relative difference of a reduced-time-point result from the full fit.

    Returns
    -------
    dict
        ``tia_full_bq_s``, ``tia_reduced_bq_s``, ``relative_difference`` ((reduced − full)/full),
        ``effective_half_life_full_h``, ``effective_half_life_reduced_h``.
    """
    return {"tia_full_bq_s": float(full.tia_bq_s), "tia_reduced_bq_s": float(reduced.tia_bq_s),
            "relative_difference": float(reduced.tia_bq_s / full.tia_bq_s - 1.0),
            "effective_half_life_full_h": float(full.effective_half_life_h),
            "effective_half_life_reduced_h": float(reduced.effective_half_life_h)}
