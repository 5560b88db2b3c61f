"""Every option of a dosimetry run and of a reconstruction, declared once.

An :class:`Option` says what an option is — the library attribute, its kind, unit, default, choices,
valid range and help text — and how each front end shows it: the command-line flag and the Slicer
parameter-node name. Everything else derives from the declarations below:

- :class:`RunOptions` and :class:`ReconOptions`, the dataclasses the library takes (library units:
  Bq, 0-based time point indices, ``datetime``);
- the ``argparse`` arguments of ``ludosimetry run`` and ``ludosimetry reconstruct``
  (:func:`add_arguments`) and the options from parsed arguments (:func:`options_from_arguments`);
- the fields of the Slicer module's parameter node (:func:`panel_parameters`) and the options from the
  panel's values (:func:`options_from_panel`);
- :func:`validate`, which checks every value and the combinations of values before any file is read.

The command line and the panel hand in the same *user* values (MBq, 1-based time points, ISO 8601
text, "2,3"), and one parser per kind turns them into library values, so both front ends accept and
refuse the same input.

Adding an option: one :class:`Option` in :data:`RUN_OPTIONS` (or :data:`RECON_OPTIONS`), and, for the
panel, its widget in ``LuDosimetry/Resources/UI/LuDosimetry.ui`` with the ``SlicerParameterName``
property set to the declaration's ``parameter``.

Errors about an option carry its name (:attr:`LuDosimetryLib.errors.LuDosimetryError.option`); the
command line shows it as the ``--flag`` (:func:`cli_flag`), the panel as the widget's label.

This module imports only the standard library: the Slicer module imports it before the library's
dependencies are installed.
"""
from __future__ import annotations

import csv
import json
import math
import re
from dataclasses import dataclass, field, fields, make_dataclass
from datetime import datetime
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from .errors import OptionError

# ------------------------------------------------------------------------------------------ choices

DOSE_METHODS: Tuple[str, ...] = ("dvk", "ldm")
PVC_METHODS: Tuple[str, ...] = ("none", "gtm")
SPECT_SOURCES: Tuple[str, ...] = ("auto", "vendor", "reconstructed")
REGISTRATION_METHODS: Tuple[str, ...] = ("none", "rigid", "deformable")
VOI_MODES: Tuple[str, ...] = ("per-time-point", "reference-only")
TIA_MAP_METHODS: Tuple[str, ...] = ("voi", "voxel")
REDUCED_METHODS: Tuple[str, ...] = ("auto", "population_prior", "hanscheid", "madsen", "two_point", "nlmm")
#: Error models of the time-activity fits (LuDosimetryLib.kinetics.fit.ERROR_MODELS): σ ∝ A, σ ∝ √A, σ constant.
FIT_WEIGHTINGS: Tuple[str, ...] = ("proportional", "counting", "uniform")
#: Components of the uncertainty budget (LuDosimetryLib.uncertainty.COMPONENTS), each overridable in %.
UNCERTAINTY_COMPONENTS: Tuple[str, ...] = ("calibration", "recovery", "volume", "counting", "fit", "dose_factor")
RECON_ALGORITHMS: Tuple[str, ...] = ("osem", "bsrem")
SCATTER_METHODS: Tuple[str, ...] = ("tew", "dew", "none")
PROJECTION_FORMS: Tuple[str, ...] = ("unaltered", "reformatted", "advanced")
#: Collimators of the reconstruction's system model: codes of PyTomography's collimator table
#: (``pytomography/data/collim.col``, from SIMIND): Siemens Symbia/Intevo (SY-), Siemens e.cam (SE-), GE Infinia /
#: Discovery NM/CT 670 (GI-), GE NM/CT 870 DR (G8-), Philips BrightView (PB-); ME/MEGP is the Lu-177 choice.
COLLIMATORS: Tuple[str, ...] = ("SY-ME", "SY-LEHR", "SY-LEAP", "SY-HE", "SE-ME", "SE-LEHR", "SE-LEAP", "SE-HE",
                                "GI-MEGP", "GI-LEHR", "GI-LEGP", "GI-HEGP", "G8-MEGP", "G8-LEHR", "G8-HEGP",
                                "PB-MEGP", "PB-LEHR", "PB-LEGP", "PB-HEGP")

#: The per-VOI model choices of the panel's model table and of ``--voi-model``: (choice, the models of
#: ``RunOptions.models_per_voi``). "auto" leaves the VOI to the AICc selection among ``RunOptions.models``.
MODEL_CHOICES: Tuple[Tuple[str, Optional[Tuple[str, ...]]], ...] = (
    ("auto", None),
    ("mono", ("mono_exponential",)),
    ("bi", ("bi_exponential",)),
    ("tri", ("tri_exponential",)),
    ("trapezoid", ("trapezoid",)),
)


# ------------------------------------------------------------------------ user values → library

def _parse_time_points(text) -> Optional[Tuple[int, ...]]:
    """"2,3" (commas, spaces or semicolons) → (2, 3); "" → None. Raises ValueError."""
    if isinstance(text, (tuple, list)):
        parts = [str(p) for p in text]
    else:
        parts = [p for p in str(text or "").replace(";", ",").replace(" ", ",").split(",") if p]
    if not parts:
        return None
    try:
        numbers = tuple(int(p) for p in parts)
    except ValueError:
        raise ValueError("") from None
    if any(n < 1 for n in numbers):
        raise ValueError("")
    return numbers


def _format_time_points(value) -> str:
    return ",".join(str(int(v)) for v in value) if value else ""


def parse_local_datetime(text) -> Optional[datetime]:
    """ISO 8601 text of a date and time of day, local time without a UTC offset → datetime; "" → None.

    Raises
    ------
    ValueError
        Not ISO 8601 (empty message); a date alone (read as midnight, it would move every time point by the
        hours since midnight); a UTC offset (the DICOM times it is compared with are the scanner's local time,
        without one).
    """
    if isinstance(text, datetime):
        value = text
    else:
        text = str(text or "").strip()
        if not text:
            return None
        try:
            value = datetime.fromisoformat(text)
        except ValueError:
            raise ValueError("") from None
        if re.fullmatch(r"\d{4}-?\d{2}-?\d{2}", text):
            raise ValueError("a date without its time of day; give both, e.g. 2018-11-15T09:22")
    if value.tzinfo is not None:
        raise ValueError("a UTC offset: the DICOM times are the scanner's local time, without one; give the local "
                         "time, e.g. 2018-11-15T09:22")
    return value


def _format_datetime(value) -> str:
    return value.isoformat() if value else ""


def parse_voi_model_table(text: str) -> Dict[str, str]:
    """The panel's per-VOI model table from its text (JSON ``{"VOI": "choice"}``; "" for none), in order.

    Raises
    ------
    ValueError
        Not such a JSON object, or a choice that is not one of :data:`MODEL_CHOICES`.
    """
    if not (text or "").strip():
        return {}
    try:
        value = json.loads(text)
    except ValueError:
        value = None
    if not isinstance(value, dict):
        raise ValueError(f"{text!r} is not a JSON object of VOI name to model")
    return _checked_model_choices(value.items())


def _checked_model_choices(pairs) -> Dict[str, str]:
    choices = [choice for choice, _ in MODEL_CHOICES]
    table: Dict[str, str] = {}
    for name, choice in pairs:
        if choice not in choices:
            raise ValueError(f"VOI {name!r}: model {choice!r} is not one of {', '.join(choices)}")
        table[str(name)] = str(choice)
    return table


def format_voi_model_table(table: Mapping[str, str]) -> str:
    """Text of the per-VOI model table (inverse of :func:`parse_voi_model_table`); "" when empty."""
    return json.dumps(dict(table), ensure_ascii=False) if table else ""


def voi_model_table_with_names(text: str, names: Sequence[str]) -> str:
    """The model table for the VOIs ``names`` (in that order): each keeps its earlier choice, a new VOI gets
    "auto", VOIs not in ``names`` are dropped; an unreadable ``text`` starts over."""
    try:
        current = parse_voi_model_table(text)
    except ValueError:
        current = {}
    return format_voi_model_table({str(name): current.get(str(name), "auto") for name in names})


def _parse_models_per_voi(value) -> Optional[Dict[str, Tuple[str, ...]]]:
    """``models_per_voi`` from the panel's table text or from ``--voi-model NAME=MODEL`` items (each VOI
    not on "auto"); None when every VOI is on auto. Raises ValueError."""
    if isinstance(value, Mapping):
        table = dict(value)
        if all(isinstance(v, (tuple, list)) for v in table.values()):  # already library form
            return {str(k): tuple(v) for k, v in table.items()} or None
        table = _checked_model_choices(table.items())
    elif isinstance(value, (list, tuple)):
        pairs = []
        for item in value:
            name, sep, choice = str(item).rpartition("=")
            if not sep or not name:
                raise ValueError(f"{item!r} is not NAME=MODEL")
            pairs.append((name, choice))
        table = _checked_model_choices(pairs)
    else:
        table = parse_voi_model_table(value)
    models = dict(MODEL_CHOICES)
    chosen = {name: tuple(models[choice]) for name, choice in table.items() if models[choice] is not None}
    return chosen or None


def _format_models_per_voi(value) -> str:
    inverse = {models: choice for choice, models in MODEL_CHOICES if models is not None}
    return format_voi_model_table({name: inverse.get(tuple(models), "auto") for name, models in (value or {}).items()})


def _parse_percentages(value) -> Optional[Dict[str, float]]:
    """``{component: %}`` of the uncertainty budget from ``COMPONENT=PCT`` items (``--uncertainty``, repeatable)
    or the panel's text ("calibration=3, volume=10": commas, semicolons or spaces); None when there are none.
    Raises ValueError naming the bad item."""
    if isinstance(value, Mapping):
        pairs = [(str(k), v) for k, v in value.items()]
    else:
        items = [value] if isinstance(value, str) else list(value)
        pairs = []
        for item in items:
            for part in str(item).replace(";", ",").replace(" ", ",").split(","):
                if not part:
                    continue
                name, sep, number = part.partition("=")
                if not sep:
                    raise ValueError(f"{part!r} is not COMPONENT=PCT")
                pairs.append((name, number))
    table: Dict[str, float] = {}
    for name, number in pairs:
        name = name.strip().lower()
        if name not in UNCERTAINTY_COMPONENTS:
            raise ValueError(f"{name!r} is not one of {', '.join(UNCERTAINTY_COMPONENTS)}")
        try:
            pct = float(number)
        except (TypeError, ValueError):
            raise ValueError(f"{name}: {number!r} is not a number of %") from None
        if not (math.isfinite(pct) and pct >= 0):
            raise ValueError(f"{name}: {number!r} is not a percentage ≥ 0")
        table[name] = pct
    return table or None


def _format_percentages(value) -> str:
    return ", ".join(f"{name}={pct:g}" for name, pct in (value or {}).items())


def _split_panel_items(text: str) -> Tuple[str, ...]:
    """The items of the panel's text of a repeatable option: separated by commas, spaces around them and empty
    items dropped; an item that holds a comma is written in double quotes (CSV: "Lesion, 1=tumour")."""
    row = next(csv.reader([" ".join(str(text).splitlines())], skipinitialspace=True), [])
    return tuple(item.strip() for item in row if item.strip())


def _format_panel_items(items) -> str:
    """The panel's text of a repeatable option's items (inverse of :func:`_split_panel_items`)."""
    def quoted(item: str) -> str:
        if any(c in item for c in ',"') or item != item.strip():
            return '"' + item.replace('"', '""') + '"'
        return item
    return ", ".join(quoted(str(item)) for item in items or ())


def parse_tissue_items(items) -> List[Tuple[str, float, float]]:
    """``[(TYPE, alpha/beta in Gy, repair half-time in h)]`` of ``--radiobiology`` items
    ``TYPE=ALPHA_BETA_GY:T_REP_H`` (the entries :func:`LuDosimetryLib.radiobiology.parse_tissue_table` puts over
    its defaults), TYPE stripped.

    Raises
    ------
    ValueError
        An item not of that form, or values that are not positive finite numbers (naming the item).
    """
    parsed = []
    for item in items or ():
        typ, sep, value = str(item).partition("=")
        ab, colon, trep = value.partition(":")
        try:
            numbers = (float(ab), float(trep))
        except ValueError:
            numbers = None
        if not sep or not colon or not typ.strip() or numbers is None:
            raise ValueError(f"{item!r} is not TYPE=ALPHA_BETA_GY:T_REP_H")
        if not all(math.isfinite(n) and n > 0 for n in numbers):
            raise ValueError(f"{item!r}: alpha/beta and the repair half-time must be positive numbers "
                             f"(Gy and h)")
        parsed.append((typ.strip(), numbers[0], numbers[1]))
    return parsed


# ------------------------------------------------------------------------------------ declarations

#: Kinds of option: how user values are parsed, checked and shown.
KINDS = ("choice", "float", "int", "bool", "text", "path", "datetime", "time_points", "voi_models",
         "percentages", "repeated_text", "repeated_path", "repeated_choice", "internal")


@dataclass(frozen=True)
class Option:
    """One option, declared once.

    Attributes
    ----------
    name : str
        Attribute of :class:`RunOptions` / :class:`ReconOptions` (library value, library units).
    kind : str
        One of :data:`KINDS`. ``internal`` options are set by the library's callers only (no flag, no
        widget) and are not checked here.
    default
        Library value when the option is not given.
    help : str
        One sentence; the command line's help and the parameter node's documentation.
    unit : str
        Unit of the *user* value (e.g. "MBq", "mm", "g/mL"); "" for none.
    choices : tuple of str
        Allowed values (``choice`` and ``repeated_choice``).
    minimum, maximum : float, optional
        Valid range of the user value; ``exclusive_minimum`` makes the minimum itself invalid.
    scale, offset : float
        library value = user value × ``scale`` + ``offset`` (MBq → Bq: scale 1e6; a 1-based time point
        → 0-based index: offset −1).
    flag : str, optional
        Command-line flag; None when the command line does not offer the option. A ``bool`` option whose
        default is True has a ``--no-…`` flag that sets it False.
    metavar : str, optional
        Placeholder of the flag's value in the command line's help.
    parameter : str, optional
        Name in the Slicer module's parameter node (the ``SlicerParameterName`` of its widget); None when
        the panel does not offer the option.
    panel_unset
        The panel value that means "not given" (a spin box cannot be empty: 0 for an optional number).
    panel_range : (float, float), optional
        Range of the panel's widget, when it differs from the valid range (e.g. it includes
        ``panel_unset``).
    group : str
        ``"run"`` (:class:`RunOptions`), ``"reconstruct"`` (:class:`ReconOptions`) or ``"output"`` (how
        results are written).
    """

    name: str
    kind: str
    default: Any
    help: str
    unit: str = ""
    choices: Tuple[str, ...] = ()
    minimum: Optional[float] = None
    maximum: Optional[float] = None
    exclusive_minimum: bool = False
    scale: float = 1.0
    offset: float = 0.0
    flag: Optional[str] = None
    metavar: Optional[str] = None
    parameter: Optional[str] = None
    panel_unset: Any = None
    panel_range: Optional[Tuple[float, float]] = None
    group: str = "run"

    # -- user value ⇄ library value

    def parse(self, value) -> Any:
        """The library value of a user value (text or number as the command line or the panel hands it
        in); None, "" and an empty list give the default.

        Raises
        ------
        OptionError
            The value cannot be read as this option (naming the option).
        """
        if value is None or (isinstance(value, str) and not value.strip() and self.kind not in ("choice",)) \
                or (isinstance(value, (list, tuple)) and not value and self.kind.startswith("repeated")):
            return self.default
        try:
            return self._parse(value)
        except (TypeError, ValueError) as exc:
            # our own parsers' messages say what is wrong; Python's (float(), fromisoformat) are left out
            detail = f" ({exc})" if self.kind in ("voi_models", "percentages", "datetime") and str(exc) else ""
            raise OptionError(f"{value!r} is not {self._expected()}{detail}", option=self.name) from None

    def _parse(self, value) -> Any:
        kind = self.kind
        if kind in ("float", "int"):
            number = float(value)
            if kind == "int":
                if number != int(number):
                    raise ValueError("")
                number = int(number)
            library = number * self.scale + self.offset
            return int(round(library)) if kind == "int" else float(library)
        if kind == "bool":
            if isinstance(value, str):
                if value.strip().lower() in ("1", "true", "yes", "on"):
                    return True
                if value.strip().lower() in ("0", "false", "no", "off"):
                    return False
                raise ValueError("")
            return bool(value)
        if kind == "datetime":
            return parse_local_datetime(value)
        if kind == "time_points":
            return _parse_time_points(value)
        if kind == "voi_models":
            return _parse_models_per_voi(value)
        if kind == "percentages":
            return _parse_percentages(value)
        if kind == "repeated_text" and isinstance(value, str):  # the panel's text; the command line's is a list
            return _split_panel_items(value) or self.default
        if kind in ("repeated_text", "repeated_path", "repeated_choice"):
            items = [value] if isinstance(value, str) else list(value)
            return tuple(str(v) for v in items)
        return str(value) if kind in ("choice", "text", "path") else value

    def format(self, value) -> Any:
        """The user value of a library value (inverse of :meth:`parse`); the panel's unset value for None."""
        if value is None:
            return self.panel_unset if self.panel_unset is not None else ""
        kind = self.kind
        if kind in ("float", "int"):
            user = (value - self.offset) / self.scale
            return int(round(user)) if kind == "int" else float(user)
        if kind == "datetime":
            return _format_datetime(value)
        if kind == "time_points":
            return _format_time_points(value)
        if kind == "voi_models":
            return _format_models_per_voi(value)
        if kind == "percentages":
            return _format_percentages(value)
        if kind == "repeated_text":
            return _format_panel_items(value)
        return value

    def _expected(self) -> str:
        unit = f" in {self.unit}" if self.unit else ""
        return {"float": f"a number{unit}", "int": "a whole number",
                "bool": "true or false", "datetime": "an ISO 8601 date/time (e.g. 2018-11-15T09:22)",
                "time_points": "a list of time point numbers (1 = first), e.g. 2,3",
                "voi_models": "a table of VOI name to model (" + ", ".join(c for c, _ in MODEL_CHOICES) + ")",
                "percentages": "COMPONENT=PCT (components: " + ", ".join(UNCERTAINTY_COMPONENTS) + ")",
                }.get(self.kind, "a valid value")

    # -- checks

    def check(self, value) -> None:
        """Raise :class:`OptionError` (naming this option) when a library value is not valid."""
        if value is None or self.kind == "internal":
            return
        if self.kind == "choice" and value not in self.choices:
            raise OptionError(f"{value!r} is not one of {', '.join(self.choices)}", option=self.name)
        if self.kind == "repeated_choice":
            bad = [v for v in value if v not in self.choices]
            if bad:
                raise OptionError(f"{', '.join(map(repr, bad))} not among {', '.join(self.choices)}",
                                  option=self.name)
        if self.kind in ("float", "int"):
            try:
                user = float(self.format(value))
            except (TypeError, ValueError):
                raise OptionError(f"{value!r} is not {self._expected()}", option=self.name) from None
            unit = f" {self.unit}" if self.unit else ""
            if not math.isfinite(user):
                raise OptionError(f"must be a finite number, got {user!r}", option=self.name)
            if self.minimum is not None and (user < self.minimum or (self.exclusive_minimum and user <= self.minimum)):
                relation = ">" if self.exclusive_minimum else "≥"
                raise OptionError(f"must be {relation} {self.minimum:g}{unit}, got {user:g}{unit}", option=self.name)
            if self.maximum is not None and user > self.maximum:
                raise OptionError(f"must be ≤ {self.maximum:g}{unit}, got {user:g}{unit}", option=self.name)
        if self.kind == "percentages":
            try:
                _parse_percentages(value)
            except ValueError as exc:
                raise OptionError(str(exc), option=self.name) from None
        if self.kind == "time_points" and any(int(v) < 1 for v in value):
            raise OptionError(f"{value!r}: time points are numbered from 1", option=self.name)


#: Options of a dosimetry run (:class:`RunOptions`, ``ludosimetry run``, the panel).
RUN_OPTIONS: Tuple[Option, ...] = (
    Option("dose_method", "choice", "dvk", "dose-voxel-kernel convolution (dvk, default) or local energy "
           "deposition (ldm)", choices=DOSE_METHODS, flag="--dose-method", parameter="doseMethod"),
    Option("kernel_path", "path", None, "dose voxel kernel computed elsewhere (e.g. Monte Carlo) for the dvk "
           "dose: Interfile .hdr/.img or voxel S-value table, in Gy/decay, mGy/decay or mGy/(MBq·s), at the "
           "SPECT's voxel size (within 1 %); default: the kernel LuDosimetry builds",
           flag="--kernel", metavar="FILE", parameter="kernelFile", panel_unset=""),
    Option("kernel_density_g_ml", "float", 1.0, "mass density of the medium the dose kernel is for "
           "(1.0 = water)", unit="g/mL", minimum=0.0, exclusive_minimum=True, flag="--kernel-density-g-ml",
           metavar="G_ML", parameter="kernelDensityGMl", panel_range=(0.01, 25.0)),
    Option("injected_activity_bq", "float", None, "injected activity; overrides the headers (RadionuclideTotalDose)",
           unit="MBq", scale=1.0e6, minimum=0.0, exclusive_minimum=True, flag="--injected-activity-mbq",
           metavar="MBQ", parameter="injectedActivityMBq", panel_unset=0.0, panel_range=(0.0, 1.0e5)),
    Option("injection_time", "datetime", None, "injection date/time, ISO 8601; overrides the headers "
           "(RadiopharmaceuticalStartDateTime)", flag="--injection-time", metavar="ISO",
           parameter="injectionTime", panel_unset=""),
    Option("residual_activity_bq", "float", None, "activity left in the syringe and lines after the "
           "injection, subtracted from the injected activity (the net activity gives TIAC and Gy/GBq)",
           unit="MBq", scale=1.0e6, minimum=0.0, flag="--residual-activity-mbq", metavar="MBQ",
           parameter="residualActivityMBq", panel_unset=0.0, panel_range=(0.0, 1.0e5)),
    Option("spect_series_uid", "repeated_text", None, "reconstructed SPECT series to use where a time point "
           "has several (repeatable)", flag="--spect-series", metavar="UID"),
    Option("spect_calibration_bq_per_ml_per_unit", "float", None, "factor from stored SPECT values to Bq/mL, "
           "for images not in Bq/mL", unit="Bq/mL per unit", minimum=0.0, exclusive_minimum=True,
           flag="--spect-calibration", metavar="BQML_PER_UNIT"),
    Option("density_correction", "bool", True, "scale the dose by the CT density (--no-density-correction: "
           "ignore it)", flag="--no-density-correction", parameter="densityCorrection"),
    Option("pvc", "choice", "none", "partial-volume correction of VOI activities (gtm: geometric transfer "
           "matrix, Rousset 1998; needs the PSF FWHM)", choices=PVC_METHODS, flag="--pvc", parameter="pvc"),
    Option("psf_fwhm_mm", "float", None, "SPECT resolution (FWHM of the point-spread function), needed by "
           "the gtm correction", unit="mm", minimum=0.0, exclusive_minimum=True, flag="--psf-fwhm-mm",
           metavar="MM", parameter="psfFwhmMm", panel_unset=0.0, panel_range=(0.0, 100.0)),
    Option("spect_source", "choice", "auto", "which reconstructed SPECT to use: the only one of each time "
           "point (auto), the vendor's, or ours from 'ludosimetry reconstruct'", choices=SPECT_SOURCES,
           flag="--spect"),
    Option("extra_study_dirs", "repeated_path", (), "output folder of 'ludosimetry reconstruct' read with the "
           "study (repeatable)", flag="--recon-dir", metavar="DIR"),
    Option("reference_time_point", "int", 0, "time point (1 = first) whose SPECT grid carries the TIA and "
           "dose maps", minimum=1, offset=-1, flag="--reference-time-point", metavar="K",
           parameter="referenceTimePoint", panel_range=(1, 10)),
    Option("registration", "choice", "none", "register every time point's CT (refined per VOI on SPECT) to "
           "the reference", choices=REGISTRATION_METHODS, flag="--registration", parameter="registrationMethod"),
    Option("vois", "choice", "per-time-point", "each time point's own contours, or the reference's propagated "
           "by the registration", choices=VOI_MODES, flag="--vois", parameter="voiMode"),
    Option("tia_map", "choice", "voi", "TIA map from the VOI fits (organ TIA conserved) or from voxel-level "
           "fits", choices=TIA_MAP_METHODS, flag="--tia-map", parameter="tiaMap"),
    Option("time_points", "time_points", None, "reduced imaging: only these time points (1 = first, e.g. 2,3) "
           "give the TIA; the fit of all time points is reported beside it", flag="--time-points",
           metavar="LIST", parameter="reducedTimePoints", panel_unset=""),
    Option("reduced_method", "choice", "auto", "TIA method for reduced time points (auto: hanscheid for one "
           "point, two_point for two, the AICc fit for more; population_prior and madsen need "
           "--population-half-life, nlmm needs --population)", choices=REDUCED_METHODS, flag="--reduced-method",
           parameter="reducedMethod"),
    Option("population", "path", None, "population.json of 'ludosimetry population' (a cohort's nonlinear "
           "mixed-effects kinetics) for --reduced-method nlmm: each VOI's TIA is the posterior estimate given "
           "its organ type's population and the time points used", flag="--population", metavar="POPULATION_JSON",
           parameter="populationFile", panel_unset=""),
    Option("population_half_lives", "repeated_text", None, "population effective half-life of an organ type for "
           "the population_prior and madsen methods, TYPE=HOURS:LOG_SD (LOG_SD: SD of ln T_eff, needed by "
           "population_prior; repeatable); LuDosimetry has no default values",
           flag="--population-half-life", metavar="TYPE=HOURS[:LOG_SD]", parameter="populationHalfLives"),
    Option("organ_types", "repeated_text", None, "organ type of a VOI for the population half-lives, VOI=TYPE "
           "(exact VOI name; repeatable); otherwise only exact default names (Kidney_L, Liver, Spleen...; "
           "docs/reduced_time_points.md), recorded as an assumption", flag="--organ-type", metavar="VOI=TYPE",
           parameter="organTypes"),
    Option("kinetics_from", "path", None, "results.json of this patient's earlier cycle (imaged at several time "
           "points): a single-time-point run takes each VOI's effective half-life from it (a named assumption)",
           flag="--kinetics-from", metavar="RESULTS_JSON", parameter="kineticsFrom", panel_unset=""),
    Option("radiobiology", "repeated_text", None, "alpha/beta (Gy) and repair half-time (h) of a tissue for the "
           "BED, TYPE=ALPHA_BETA_GY:T_REP_H (repeatable; TYPE as in --organ-type, 'tumour' for lesions); "
           "defaults: kidney 2.6:2.8, tumour 10:1.5 (LuDosimetryLib/radiobiology.py)", flag="--radiobiology",
           metavar="TYPE=AB:TREP", parameter="radiobiologyTissues"),
    Option("fit_weighting", "choice", "proportional", "error model of the time-activity fits: proportional "
           "(relative uncertainty, weights 1/A²), counting (Poisson, weights 1/A) or uniform (unweighted)",
           choices=FIT_WEIGHTINGS, flag="--fit-weighting", parameter="fitWeighting"),
    Option("uncertainty", "percentages", None, "an uncertainty component's relative standard uncertainty instead "
           "of its default or estimate, COMPONENT=PCT with COMPONENT one of " + ", ".join(UNCERTAINTY_COMPONENTS)
           + " (repeatable; docs/uncertainty.md)", unit="%", flag="--uncertainty", metavar="COMPONENT=PCT",
           parameter="uncertaintyComponents", panel_unset=""),
    Option("models_per_voi", "voi_models", None, "the model of a VOI instead of the AICc choice, NAME=MODEL "
           "with MODEL one of " + ", ".join(c for c, _ in MODEL_CHOICES) + " (repeatable)",
           flag="--voi-model", metavar="NAME=MODEL", parameter="voiModels", panel_unset=""),
    Option("planar", "bool", True, "use the planar whole-body images for the whole body, remainder of body and "
           "hybrid (conjugate view; --no-planar: whole body from the SPECT field of view)", flag="--no-planar",
           parameter="usePlanar"),
    Option("planar_regions", "repeated_path", None, "planar regions edited by the user, replacing the projected "
           "regions of the VOIs they name: a VOI mask file (NRRD) on one planar session's grid, as the run writes "
           "them (planar/session<k>_regions.nrrd) and the panel saves them (repeatable: one file per session)",
           flag="--planar-regions", metavar="NRRD"),
    Option("planar_calibration_cps_per_mbq", "float", None, "planar system sensitivity per head, photopeak, source "
           "in air; default: 10 cps/MBq, a named assumption", unit="cps/MBq", minimum=0.0, exclusive_minimum=True,
           flag="--planar-calibration-cps-per-mbq", metavar="CPS_PER_MBQ", parameter="planarCalibrationCpsPerMBq",
           panel_unset=0.0, panel_range=(0.0, 1.0e4)),
    Option("hybrid_time_point", "int", None, "hybrid planar/SPECT: each VOI's curve shape from the planar images, "
           "its amplitude from the SPECT of time point K (1 = first), reported beside the SPECT TIA",
           minimum=1, offset=-1, flag="--hybrid", metavar="K", parameter="hybridTimePoint", panel_unset=0,
           panel_range=(0, 10)),
    Option("marrow_method", "choice", "none", "red-marrow TIA: image (L2-L4 vertebrae VOI from the CT, or an "
           "RTSTRUCT ROI named L2-L4/RedMarrow/Marrow), blood (--blood-samples), auto (blood when samples are given, "
           "else image; both reported when both exist) or none (default: the automatic L2-L4 region is a named "
           "assumption, so a run computes the marrow only when asked)", choices=("auto", "image", "blood", "none"),
           flag="--marrow-method", parameter="marrowMethod"),
    Option("blood_samples", "path", None, "CSV of blood samples for the blood-based red-marrow method: a time "
           "column (hours after injection or ISO date/time) and a concentration column with its unit in the "
           "header (Bq/mL, kBq/mL or MBq/mL)", flag="--blood-samples", metavar="CSV", parameter="bloodSamples",
           panel_unset=""),
    Option("rmblr", "float", None, "red-marrow-to-blood activity-concentration ratio of the blood-based method; "
           "default 1 (Hindorf et al. 2010, Forrer et al. 2009), a named assumption", minimum=0.0,
           exclusive_minimum=True, flag="--rmblr", metavar="RATIO", parameter="rmblr", panel_unset=0.0,
           panel_range=(0.0, 10.0)),
    Option("patient_sex", "choice", "auto", "patient sex for the ICRP 89 reference red-marrow and body masses "
           "(auto: DICOM PatientSex; neither M nor F there: male, a named assumption)", choices=("auto", "M", "F"),
           flag="--patient-sex", parameter="patientSex"),
    Option("strict", "bool", False, "refuse instead of assuming: every value the run would have to assume "
           "(an inferred date, a default density, a tag read as its default...) ends the run with an error",
           flag="--strict", parameter="strict"),
    # Set by the library's callers only.
    Option("masks_per_time_point", "internal", None, "VOIs given directly (e.g. segmentations edited in "
           "Slicer) instead of the study's RTSTRUCTs: one {name: ndarray (z, y, x)} per time point, each on "
           "that time point's SPECT grid (values ≥ 0.5 are inside)"),
    Option("supersample", "internal", 3, "in-plane sub-samples per voxel edge when rasterising contours"),
    Option("models", "internal", ("mono_exponential", "bi_exponential", "tri_exponential"),
           "candidate TAC models of the AICc selection"),
    Option("nuclide", "internal", "Lu-177", "radionuclide (ICRP 107 name)"),
)

#: Options of a reconstruction (:class:`ReconOptions`, ``ludosimetry reconstruct``, the panel).
RECON_OPTIONS: Tuple[Option, ...] = (
    Option("algorithm", "choice", "osem", "reconstruction algorithm (bsrem: relative-difference prior)",
           choices=RECON_ALGORITHMS, flag="--algorithm", parameter="reconAlgorithm", group="reconstruct"),
    Option("iterations", "int", 4, "iterations", minimum=1, flag="--iterations", parameter="reconIterations",
           panel_range=(1, 100), group="reconstruct"),
    Option("subsets", "int", 8, "subsets", minimum=1, flag="--subsets", parameter="reconSubsets",
           panel_range=(1, 64), group="reconstruct"),
    Option("calibration_cps_per_mbq", "float", None, "system sensitivity in the photopeak per head; default: "
           "from the header", unit="cps/MBq", minimum=0.0, exclusive_minimum=True,
           flag="--calibration-cps-per-mbq", metavar="CPS_PER_MBQ", group="reconstruct"),
    Option("psf", "bool", True, "model the collimator-detector response (--no-psf: none)", flag="--no-psf",
           parameter="reconPsf", group="reconstruct"),
    Option("dew_k", "float", None, "dual-energy-window scatter multiplier k (scatter = k x lower-window counts, "
           "Jaszczak 1984); required by --scatter dew: it depends on the windows and the radionuclide",
           minimum=0.0, exclusive_minimum=True, flag="--dew-k", metavar="K", parameter="reconDewK", panel_unset=0.0,
           panel_range=(0.0, 10.0), group="reconstruct"),
    Option("scatter", "choice", "tew", "scatter estimate from the energy windows", choices=SCATTER_METHODS,
           flag="--scatter", parameter="reconScatter", group="reconstruct"),
    Option("forms", "repeated_choice", None, "projection form(s) to reconstruct (repeatable; default: every "
           "form found)", choices=PROJECTION_FORMS, flag="--form", group="reconstruct"),
    Option("attenuation", "internal", True, "attenuation correction from the study's mu-map, else its CT",
           group="reconstruct"),
    Option("beta", "internal", 0.3, "relative-difference prior strength (BSREM)", group="reconstruct"),
    Option("gamma", "internal", 2.0, "relative-difference prior edge parameter (BSREM)", group="reconstruct"),
    Option("dead_time_factor", "float", 1.0, "count-loss (dead-time) correction factor the activity is multiplied "
           "by (1 = none); written into the reconstruction's header", minimum=1.0, flag="--dead-time-factor",
           metavar="FACTOR", parameter="reconDeadTimeFactor", panel_range=(1.0, 10.0), group="reconstruct"),
    Option("collimator", "choice", "auto", "collimator of the system model (PyTomography collimator table code); "
           "auto: from the projections' header (Manufacturer, CollimatorGridName), else the maker's "
           "medium-energy collimator, named as an assumption", choices=("auto",) + COLLIMATORS,
           flag="--collimator", parameter="reconCollimator", group="reconstruct"),
    Option("device", "internal", None, "torch device ('cpu', 'cuda'); default: a GPU when torch sees one",
           group="reconstruct"),
)

#: How outputs are written (the command line and the panel; not part of RunOptions).
OUTPUT_OPTIONS: Tuple[Option, ...] = (
    Option("overwrite", "bool", False, "replace an existing LuDosimetry output folder (never a folder "
           "LuDosimetry did not write)", flag="--overwrite", parameter="overwrite", group="output"),
)

ALL_OPTIONS: Tuple[Option, ...] = RUN_OPTIONS + RECON_OPTIONS + OUTPUT_OPTIONS
_GROUPS: Dict[str, Tuple[Option, ...]] = {"run": RUN_OPTIONS, "reconstruct": RECON_OPTIONS, "output": OUTPUT_OPTIONS}


def option(name: str, group: Optional[str] = None) -> Option:
    """The declaration of an option by its library name (KeyError when there is none)."""
    for candidate in ALL_OPTIONS:
        if candidate.name == name and (group is None or candidate.group == group):
            return candidate
    raise KeyError(name)


def cli_flag(name: Optional[str]) -> str:
    """The command-line flag of an option (its library name when it has none)."""
    try:
        declared = option(str(name))
    except KeyError:
        return str(name)
    return declared.flag or declared.name


# ------------------------------------------------------------------------------------ the classes

def _options_class(class_name: str, declared: Sequence[Option], doc: str, namespace=None):
    """A dataclass with one field per declaration (its default), documented from the declarations."""
    attributes = "\n".join(f"    {o.name}\n        {o.help}" + (f" (user unit {o.unit})" if o.unit else "")
                           for o in declared)
    cls = make_dataclass(class_name, [(o.name, Any, field(default=o.default)) for o in declared],
                         namespace=dict(namespace or {}))
    cls.__doc__ = f"{doc}\n\n    Attributes (library units; see :mod:`LuDosimetryLib.options`)\n    ----------\n{attributes}\n"
    cls.__module__ = __name__
    return cls


def _describe_recon(self) -> str:
    """Short text of the reconstruction parameters, written into the output header."""
    algorithm = str(self.algorithm).upper()
    text = f"{algorithm} {int(self.iterations)}i{int(self.subsets)}s"
    if algorithm == "BSREM":
        text += f" RDP b={self.beta:g} g={self.gamma:g}"
    text += " AC" if self.attenuation else " noAC"
    text += " PSF" if self.psf else ""
    text += f" SC={str(self.scatter).upper()}"
    return text


def _validate_self(self) -> None:
    """Raise :class:`~LuDosimetryLib.errors.OptionError` naming the first invalid option."""
    validate(self)


RunOptions = _options_class(
    "RunOptions", RUN_OPTIONS, "Options of one dosimetry run (all optional; defaults are what a physicist expects).",
    {"validate": _validate_self})
ReconOptions = _options_class(
    "ReconOptions", RECON_OPTIONS, "Options of a reconstruction (``ludosimetry reconstruct``).",
    {"validate": _validate_self, "describe": _describe_recon})


def _declarations_of(options) -> Tuple[Option, ...]:
    if isinstance(options, RunOptions):
        return RUN_OPTIONS
    if isinstance(options, ReconOptions):
        return RECON_OPTIONS
    raise TypeError(f"not RunOptions or ReconOptions: {type(options).__name__}")


def validate(options) -> None:
    """Check every option of a :class:`RunOptions` or :class:`ReconOptions` and their combinations.

    Runs before any file is read: a bad option is refused at once, not after the study scan.

    Raises
    ------
    OptionError
        Naming the option (``error.option``) and the problem.
    """
    for declared in _declarations_of(options):
        declared.check(getattr(options, declared.name))
    if isinstance(options, RunOptions):
        _check_run_combinations(options)
    elif isinstance(options, ReconOptions) and options.scatter == "dew" and options.dew_k is None:
        raise OptionError("dual-energy-window scatter correction needs its multiplier k: give {option} "
                          "(no value is established for Lu-177)", option="dew_k")


def _check_run_combinations(options) -> None:
    try:
        parse_tissue_items(options.radiobiology)
    except ValueError as exc:
        raise OptionError(str(exc), option="radiobiology") from None
    if options.pvc == "gtm" and options.psf_fwhm_mm is None:
        raise OptionError("partial-volume correction 'gtm' needs the SPECT resolution: give {option}",
                          option="psf_fwhm_mm")
    if options.vois == "reference-only" and options.registration == "none":
        raise OptionError("'reference-only' propagates the reference contours and needs a registration "
                          "(rigid or deformable)", option="vois")
    if options.kernel_path is not None and options.dose_method != "dvk":
        raise OptionError(f"a dose kernel file applies to the dvk dose only, not to dose method "
                          f"{options.dose_method!r}", option="kernel_path")
    if options.kinetics_from is not None and (options.time_points is None or len(options.time_points) != 1):
        raise OptionError("an earlier cycle's kinetics are for a run on one time point: give {option} with one "
                          "time point", option="time_points")
    if options.reduced_method == "nlmm" and options.population is None:
        raise OptionError("reduced-time-point method 'nlmm' needs the population kinetics of a cohort: give "
                          "{option} (a population.json of 'ludosimetry population')", option="population")
    if options.marrow_method == "blood" and options.blood_samples is None:
        raise OptionError("the blood-based red-marrow method needs the blood samples: give {option}",
                          option="blood_samples")
    _refuse_unused_inputs(options)
    if options.time_points is not None and options.reference_time_point + 1 not in options.time_points:
        raise OptionError(f"the reference time point {options.reference_time_point + 1} must be one of "
                          f"{list(options.time_points)}", option="time_points")


def _refuse_unused_inputs(options) -> None:
    """Refuse an input given for a method the other options leave out: the run would go without it, and a user
    who gave it would take the result as made with it."""
    if options.marrow_method in ("none", "image"):
        for name, what in (("blood_samples", "blood samples"), ("rmblr", "a red-marrow-to-blood ratio")):
            if getattr(options, name) is not None:
                raise OptionError(f"{what} given for the blood-based red marrow, which the red-marrow method "
                                  f"{options.marrow_method!r} does not compute (choose 'blood' or 'auto'), or "
                                  "leave out {option}", option=name)
    if options.population is not None and options.reduced_method != "nlmm":
        raise OptionError(f"population kinetics given for the reduced-time-point method 'nlmm', but the method is "
                          f"{options.reduced_method!r}: leave out {{option}} or choose 'nlmm'", option="population")
    if options.planar_calibration_cps_per_mbq is not None and not options.planar:
        raise OptionError("a planar calibration given, but the planar images are left out: leave out {option} "
                          "or use the planar images", option="planar_calibration_cps_per_mbq")


# -------------------------------------------------------------------------------- command line

def add_arguments(parser, group: str = "run") -> None:
    """Add the flags of a group's options (``"run"``, ``"reconstruct"``, ``"output"``) to an argparse parser.

    Values are kept as given (text or number); :func:`options_from_arguments` parses them, as the panel's.
    """
    for declared in _GROUPS[group]:
        if not declared.flag:
            continue
        unit = f" ({declared.unit})" if declared.unit else ""
        kwargs: Dict[str, Any] = {"dest": declared.name, "help": (declared.help + unit).replace("%", "%%")}
        if declared.kind == "bool":
            kwargs["action"] = "store_false" if declared.default else "store_true"
            kwargs["default"] = declared.default
        else:
            kwargs["default"] = None
            if declared.kind.startswith("repeated") or declared.kind in ("voi_models", "percentages"):
                kwargs["action"] = "append"
            if declared.choices:
                kwargs["choices"] = declared.choices
            if declared.metavar:
                kwargs["metavar"] = declared.metavar
            if declared.default is not None and declared.kind not in ("repeated_path", "repeated_text"):
                kwargs["help"] += f"; default {declared.format(declared.default)}"
        parser.add_argument(declared.flag, **kwargs)


def values_from_arguments(args, group: str = "run") -> Dict[str, Any]:
    """``{name: library value}`` of a group's options from parsed arguments (defaults where not given)."""
    values = {}
    for declared in _GROUPS[group]:
        if declared.flag:
            values[declared.name] = declared.parse(getattr(args, declared.name, None))
    return values


def options_from_arguments(args, group: str = "run", **library_values):
    """:class:`RunOptions` (or :class:`ReconOptions` for ``group="reconstruct"``) from parsed arguments,
    validated. ``library_values`` set options that have no flag (e.g. ``masks_per_time_point``)."""
    cls = {"run": RunOptions, "reconstruct": ReconOptions}[group]
    options = cls(**{**values_from_arguments(args, group), **library_values})
    validate(options)
    return options


# ------------------------------------------------------------------------------------ the panel

@dataclass(frozen=True)
class PanelParameter:
    """One field of the Slicer module's parameter node that holds an option.

    ``type`` is the parameter's Python type (str, float, int, bool), ``default`` its user value,
    ``choices`` the allowed texts (a Choice), ``range`` the widget's (minimum, maximum) (a WithinRange).
    """

    name: str
    type: type
    default: Any
    choices: Tuple[str, ...]
    range: Optional[Tuple[float, float]]
    option: Option


def _panel_type(declared: Option) -> type:
    return {"float": float, "int": int, "bool": bool}.get(declared.kind, str)


def panel_parameters(groups: Sequence[str] = ("run", "reconstruct", "output")) -> List[PanelParameter]:
    """The parameter-node fields of every option the panel offers, in declaration order."""
    out = []
    for group in groups:
        for declared in _GROUPS[group]:
            if not declared.parameter:
                continue
            default = declared.format(declared.default)
            rng = declared.panel_range
            if rng is None and declared.kind in ("float", "int") and declared.minimum is not None \
                    and declared.maximum is not None:
                rng = (declared.minimum, declared.maximum)
            out.append(PanelParameter(declared.parameter, _panel_type(declared), default,
                                      tuple(declared.choices) if declared.kind == "choice" else (), rng, declared))
    return out


def panel_option(parameter: str) -> Option:
    """The declaration behind a parameter-node name (KeyError when none)."""
    for declared in ALL_OPTIONS:
        if declared.parameter == parameter:
            return declared
    raise KeyError(parameter)


def values_from_panel(values, group: str = "run", names: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    """``{name: library value}`` of a group's options from the panel: a parameter node, or any object or
    mapping with its field names. A field at the option's ``panel_unset`` gives the default. With ``names``,
    only those options are read (the others' values, valid or not, are not looked at)."""
    get = values.get if isinstance(values, Mapping) else (lambda key, default=None: getattr(values, key, default))
    out = {}
    for declared in _GROUPS[group]:
        if not declared.parameter or (names is not None and declared.name not in names):
            continue
        value = get(declared.parameter, None)
        if declared.panel_unset is not None and value == declared.panel_unset:
            value = None
        out[declared.name] = declared.parse(value)
    return out


def options_from_panel(values, group: str = "run", **library_values):
    """:class:`RunOptions` (or :class:`ReconOptions`) from the panel's values, validated (see
    :func:`values_from_panel`); ``library_values`` set options the panel does not show."""
    cls = {"run": RunOptions, "reconstruct": ReconOptions}[group]
    options = cls(**{**values_from_panel(values, group), **library_values})
    validate(options)
    return options


def option_names(group: str = "run") -> List[str]:
    """Library names of a group's options, in declaration order."""
    return [o.name for o in _GROUPS[group]]


def replace_options(options, **changes):
    """A copy of a RunOptions/ReconOptions with ``changes`` (library values), validated."""
    values = {f.name: getattr(options, f.name) for f in fields(options)}
    values.update(changes)
    new = type(options)(**values)
    validate(new)
    return new


def _json_value(value) -> Any:
    """A library value as JSON (datetimes as ISO 8601, tuples as lists, arrays summarised by their shape)."""
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, Mapping):
        return {str(k): _json_value(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_value(v) for v in value]
    if hasattr(value, "shape") and hasattr(value, "dtype"):  # a numpy array (this module imports no numpy)
        return f"array {tuple(int(n) for n in value.shape)} {value.dtype}"
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


def options_as_json(options) -> Dict[str, Any]:
    """Every option of a RunOptions/ReconOptions, library name → library value (library units), as JSON:
    what a run's ``results.json`` records and its report shows."""
    return {declared.name: _json_value(getattr(options, declared.name)) for declared in _declarations_of(options)}


__all__ = ["Option", "PanelParameter", "RunOptions", "ReconOptions", "RUN_OPTIONS", "RECON_OPTIONS",
           "OUTPUT_OPTIONS", "ALL_OPTIONS", "MODEL_CHOICES", "validate", "add_arguments", "options_from_arguments",
           "values_from_arguments", "panel_parameters", "panel_option", "options_from_panel", "values_from_panel",
           "option", "cli_flag", "parse_voi_model_table", "format_voi_model_table", "voi_model_table_with_names",
           "option_names", "replace_options", "options_as_json", "parse_tissue_items"]
