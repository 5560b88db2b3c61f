"""``ludosimetry population``: the population kinetics of a cohort (population.json), and reading it for a
single-time-point run (``--reduced-method nlmm --population population.json``).

Input: the cohort table ``cohort.csv`` of ``ludosimetry batch`` (:mod:`LuDosimetryLib.cohort`), one row per
patient × cycle × VOI with the VOI's time-activity curve (:data:`~LuDosimetryLib.cohort.TAC_COLUMNS`) and the
administered activity. Each curve is one subject of the nonlinear mixed-effects model of its organ type
(:mod:`LuDosimetryLib.kinetics.population`: Laplace approximation on scipy, Devasia et al., J Nucl Med
62:1118, 2021); the two kidneys of a patient are two subjects (their correlation is not modelled).

Organ type of a row (:func:`group_of`), the same rule at fitting and at prediction: the user's
``--organ-type VOI=TYPE``, else the exact default names (:data:`~LuDosimetryLib.kinetics.reduced.DEFAULT_ORGAN_TYPES`:
Kidney_L → kidney...), else the row's tissue when it is "tumour" (lesions: ROIs interpreted as GTV/CTV/PTV or
typed tumour), else the VOI's name itself (same-named VOIs of different patients pool).

population.json: ``{"format": "LuDosimetry population kinetics", "version": 1, "nuclide", "method",
"source" (cohort.csv path and SHA-256), "grouping", "organ_types": {type: PopulationModel.to_json()}}``. A run that uses it records the file's SHA-256 in results.json ``inputs.other_files`` (role
"population") and the population it used as a named assumption per VOI.
"""
from __future__ import annotations

import csv
import json
import math
import os
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from . import __version__
from .errors import FitError, OptionError, StudyError

FORMAT = "LuDosimetry population kinetics"
VERSION = 1
METHOD = ("nonlinear mixed-effects model, Laplace approximation of the marginal likelihood (FOCE-type Gauss-Newton "
          "Hessian), log-normal between-subject variability (diagonal), proportional (log-normal) residual error; "
          "LuDosimetryLib.kinetics.population on scipy; Devasia et al., J Nucl Med 62:1118-1125, 2021")
GROUPING = ("--organ-type VOI=TYPE, else the exact default organ names, else 'tumour' for lesions, else the VOI name")
#: Fewest curves an organ type needs for a population fit.
MIN_SUBJECTS = 3


def group_of(voi: str, tissue: Optional[str], organ_types: Optional[Dict[str, str]] = None) -> str:
    """The organ type (population group) of a VOI (module docstring)."""
    from .kinetics.reduced import organ_type
    typ = organ_type(voi, organ_types)
    if typ:
        return "tumour" if typ in ("tumour", "tumor", "lesion") else typ
    if str(tissue or "").strip().lower() == "tumour":
        return "tumour"
    return str(voi).strip()


def _numbers(text: str) -> List[float]:
    return [float(x) for x in str(text or "").split()]


def read_cohort_curves(path, organ_types: Optional[Dict[str, str]] = None):
    """The curves of a cohort.csv, by organ type.

    Returns
    -------
    curves : dict organ type → list of (label, t_h array, fraction of administered activity array)
    nuclide : str

    Raises
    ------
    StudyError
        Not a readable cohort table, no curve columns, mixed radionuclides, a bad value (naming the row).
    """
    import numpy as np

    path = Path(path)
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            rows = list(csv.DictReader(fh))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise StudyError(f"cannot read the cohort table ({type(exc).__name__}: {exc})", path) from None
    needed = ("patient_id", "voi", "injected_activity_mbq", "tac_hours_pi", "tac_activity_bq")
    if not rows or any(c not in rows[0] for c in needed):
        raise StudyError(f"is not a cohort table of 'ludosimetry batch' with curves (columns {', '.join(needed)} "
                         f"and rows needed; rerun the batch with this version to add the curve columns)", path)
    nuclides = sorted({(r.get("nuclide") or "Lu-177").strip() for r in rows})
    if len(nuclides) != 1:
        raise StudyError(f"mixes radionuclides ({', '.join(nuclides)}); fit one radionuclide's cohort", path)
    curves: Dict[str, list] = {}
    for i, r in enumerate(rows, start=2):
        try:
            t = np.array(_numbers(r["tac_hours_pi"]))
            a = np.array(_numbers(r["tac_activity_bq"]))
            inj = float(r["injected_activity_mbq"]) * 1e6
        except ValueError:
            raise StudyError(f"line {i}: the curve or the administered activity is not numbers", path) from None
        if t.size == 0:
            continue
        if t.size != a.size or not (math.isfinite(inj) and inj > 0):
            raise StudyError(f"line {i}: {t.size} times for {a.size} activities, administered {inj:g} Bq", path)
        label = f"{r['patient_id']}/{r.get('cycle', '')}/{r['voi']}"
        curves.setdefault(group_of(r["voi"], r.get("tissue"), organ_types), []).append((label, t, a / inj))
    if not curves:
        raise StudyError("holds no time-activity curves", path)
    return curves, nuclides[0]


def fit_cohort(curves: Dict[str, list], nuclide: str = "Lu-177", models: Sequence[str] = ("auto",),
               min_subjects: int = MIN_SUBJECTS) -> Tuple[Dict[str, object], List[str]]:
    """The population model of every organ type with at least ``min_subjects`` curves.

    Parameters
    ----------
    curves : dict
        As :func:`read_cohort_curves`.
    models : sequence of str
        ``("auto",)``: the mono- or bi-exponential NLMM of lower AIC; else the structural models to compare.

    Returns
    -------
    populations : dict organ type → PopulationModel
    skipped : list of str
        One line per organ type left out (too few curves, or the fit failed).
    """
    from .kinetics.population import NLMM_MODELS, select_population
    from .radionuclides import radionuclide

    lam = radionuclide(nuclide).decay_constant_per_h
    chosen = NLMM_MODELS if tuple(models) == ("auto",) else tuple(models)
    out, skipped = {}, []
    for typ in sorted(curves):
        items = curves[typ]
        if len(items) < min_subjects:
            skipped.append(f"{typ}: {len(items)} curve(s), a population needs {min_subjects}")
            continue
        try:
            pop, aics = select_population([(t, y) for _, t, y in items], lam, typ, [lab for lab, _, _ in items],
                                          models=chosen)
        except FitError as exc:
            skipped.append(f"{typ}: {exc}")
            continue
        out[typ] = pop
    return out, skipped


def population_json(populations: Dict[str, object], nuclide: str, source=None) -> dict:
    """population.json's content (module docstring)."""
    from .provenance import sha256_of_file
    types = {typ: pop.to_json() for typ, pop in populations.items()}
    return {"format": FORMAT, "version": VERSION, "software": __version__, "nuclide": nuclide, "method": METHOD,
            "grouping": GROUPING,
            "source": None if source is None else {"path": os.path.abspath(source), "sha256": sha256_of_file(source)},
            "organ_types": types}


def load_population(path, nuclide: str = "Lu-177"):
    """The population models of a population.json, checked against the run's radionuclide.

    Returns
    -------
    populations : dict organ type → PopulationModel
    sha256 : str

    Raises
    ------
    OptionError
        (option ``population``) the file cannot be read, is not a population.json, is for another radionuclide
        or holds a malformed model — one line naming the file.
    """
    from .kinetics.population import PopulationModel
    from .provenance import sha256_of_file
    from .radionuclides import radionuclide

    where = os.fspath(path)
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise OptionError(f"{where}: cannot read the population ({type(exc).__name__}: {exc})",
                          option="population") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT or not isinstance(data.get("organ_types"), dict):
        raise OptionError(f"{where}: is not a population.json of 'ludosimetry population'", option="population")
    try:
        theirs, ours = radionuclide(str(data.get("nuclide"))).name, radionuclide(nuclide).name
    except Exception:  # an unknown name in the file
        theirs, ours = str(data.get("nuclide")), str(nuclide)
    if theirs != ours:
        raise OptionError(f"{where}: the population is for {theirs}, this run for {ours}", option="population")
    pops = {}
    for typ, entry in data["organ_types"].items():
        try:
            pops[str(typ)] = PopulationModel.from_json(entry)
        except (KeyError, TypeError, ValueError) as exc:
            raise OptionError(f"{where}: organ type {typ!r} is malformed ({type(exc).__name__}: {exc})",
                              option="population") from None
    if not pops:
        raise OptionError(f"{where}: holds no organ type", option="population")
    return pops, sha256_of_file(path)


def command(cohort_csv, out, organ_type_items: Optional[Sequence[str]] = None, models: Sequence[str] = ("auto",),
            overwrite: bool = False) -> Tuple[dict, List[str]]:
    """``ludosimetry population``: fit and write population.json; returns its content and the skipped lines.

    Raises
    ------
    StudyError, OptionError
        A bad cohort table or ``--organ-type`` item; no organ type with enough curves.
    """
    from .io.export import write_file_atomically
    from .kinetics.reduced import parse_organ_types

    try:
        mapping = parse_organ_types(organ_type_items)
    except ValueError as exc:
        raise OptionError(str(exc), option="organ_types") from None
    curves, nuclide = read_cohort_curves(cohort_csv, mapping)
    pops, skipped = fit_cohort(curves, nuclide, models)
    if not pops:
        raise StudyError(f"no organ type has {MIN_SUBJECTS} or more usable curves ({'; '.join(skipped)})", cohort_csv)
    data = population_json(pops, nuclide, cohort_csv)
    text = json.dumps(data, indent=1, allow_nan=False)
    write_file_atomically(out, (text + "\n").encode("utf-8"), overwrite=overwrite)
    return data, skipped


_LOADED: Dict[Tuple[str, float, str], tuple] = {}


def nlmm_fit(path, voi: str, t_h, a_bq, injected_bq: float, *, nuclide: str = "Lu-177", tissue: Optional[str] = None,
             organ_type_items: Optional[Sequence[str]] = None, label: Optional[str] = None):
    """A run's single- (or few-) time-point fit of one VOI by ``--reduced-method nlmm``: the posterior curve given
    its organ type's population in ``path`` (:func:`~LuDosimetryLib.kinetics.reduced.fit_reduced`, "nlmm").

    The fit's warnings name the population used (organ type, model, number of curves); the run records the file's
    SHA-256 (results.json ``inputs``). An organ type not given by ``--organ-type`` is a named assumption, and so is
    the ``auto`` method for a VOI whose organ type the population lacks (e.g. the automatic L2-L4 marrow region).

    Raises
    ------
    OptionError
        The population cannot be read or is for another radionuclide.
    StrictRefusal
        A strict run, which takes no assumption (an organ type by default; a VOI without a population).
    FitError
        The fit itself (non-positive activity...).
    """
    from .assumptions import assume
    from .kinetics.reduced import fit_reduced, organ_type, parse_organ_types

    key = (os.path.abspath(os.fspath(path)), os.path.getmtime(path) if os.path.exists(path) else 0.0, nuclide)
    if key not in _LOADED:
        _LOADED.clear()
        _LOADED[key] = load_population(path, nuclide)
    pops, _sha = _LOADED[key]
    try:
        mapping = parse_organ_types(organ_type_items)
    except ValueError as exc:
        raise OptionError(str(exc), option="organ_types") from None
    typ = group_of(voi, tissue, mapping)
    if typ not in pops:
        assume(f"VOI {voi!r} has no population (organ type {typ!r}; the population has {', '.join(sorted(pops))}): "
               f"its TIA from the points alone", "reduced-time-point method 'auto' (hanscheid for one point, "
               "two_point for two)", "--organ-type VOI=TYPE to give it one", path)
        return fit_reduced(t_h, a_bq, "auto", nuclide=nuclide, label=label)
    if voi not in mapping:
        source = ("default mapping of exact VOI names" if organ_type(voi) else "RT ROI Interpreted Type (lesion)"
                  if typ == "tumour" else "the VOI's own name")
        assume(f"organ type of VOI {voi!r} for its population kinetics (NLMM)", typ,
               f"{source} (--organ-type VOI=TYPE to set it)")
    pop = pops[typ]
    return fit_reduced(t_h, a_bq, "nlmm", population=pop, nuclide=nuclide, injected_bq=injected_bq, label=label)
