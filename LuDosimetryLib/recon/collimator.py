"""Which collimator the projections were acquired with, and where that was learnt.

The collimator-detector response of the system model (:func:`.system.psf_meta`) is computed from the
hole diameter and length of one entry of PyTomography's collimator table (``pytomography/data/collim.col``,
taken from the SIMIND Monte Carlo program; codes such as ``SY-ME`` = Siemens Symbia/Intevo medium energy,
``GI-MEGP`` = GE Infinia / Discovery NM/CT 670 MEGP). The code is chosen, in this order:

1. the ``collimator`` option (``--collimator``), one of :data:`LuDosimetryLib.options.COLLIMATORS`;
2. the projections' header: the camera maker (Manufacturer, ManufacturerModelName) gives the table's
   family, the CollimatorGridName of the Detector Information Sequence the collimator (:func:`from_header`);
3. else the maker's medium-energy collimator (the one used for Lu-177), or Siemens ME for an unknown maker,
   taken as a named assumption (:func:`LuDosimetryLib.assumptions.assume`).

The choice and its source are written into the reconstruction's header (DerivationDescription).
This module imports neither torch nor PyTomography.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple

from ..assumptions import assume

#: Used when neither the option nor the header says: Siemens Symbia/Intevo medium energy (MELP).
DEFAULT_COLLIMATOR = "SY-ME"

#: CollimatorGridName (upper case, spaces and dashes removed) → energy class.
_GRID_CLASSES: Tuple[Tuple[Tuple[str, ...], str], ...] = (
    (("MELP", "ME", "MEGP", "MEAP", "MEDIUM", "MEDIUMENERGY"), "ME"),
    (("LEHR", "LEHRES", "HR", "HIRES", "LOWENERGYHIGHRESOLUTION"), "LEHR"),
    (("LEAP", "LEGP", "AP", "GP", "LOWENERGYALLPURPOSE"), "LEGP"),
    (("HE", "HEGP", "HIGH", "HIGHENERGY"), "HE"),
)

#: (maker test, model test, {energy class: table code}); the first family whose tests match is used.
_FAMILIES = (
    ("SIEMENS", ("E.CAM", "ECAM"), {"ME": "SE-ME", "LEHR": "SE-LEHR", "LEGP": "SE-LEAP", "HE": "SE-HE"}),
    ("SIEMENS", (), {"ME": "SY-ME", "LEHR": "SY-LEHR", "LEGP": "SY-LEAP", "HE": "SY-HE"}),
    ("GE", ("870",), {"ME": "G8-MEGP", "LEHR": "G8-LEHR", "HE": "G8-HEGP"}),
    ("GE", (), {"ME": "GI-MEGP", "LEHR": "GI-LEHR", "LEGP": "GI-LEGP", "HE": "GI-HEGP"}),
    ("PHILIPS", (), {"ME": "PB-MEGP", "LEHR": "PB-LEHR", "LEGP": "PB-LEGP", "HE": "PB-HEGP"}),
)


@dataclass(frozen=True)
class CollimatorChoice:
    """The collimator of a projection series.

    Attributes
    ----------
    code : str
        PyTomography collimator table code.
    source : str
        "command line" / "option", "header", or "assumed".
    header_text : str
        What the header says (maker, model, CollimatorGridName), for the record.
    header_code : str or None
        The code the header gives, when it gives one.
    """

    code: str
    source: str
    header_text: str
    header_code: Optional[str] = None

    def describe(self) -> str:
        """One phrase for the reconstruction's header."""
        text = f"collimator {self.code} ({self.source}"
        if self.header_text:
            text += f"; header: {self.header_text}"
        return text + ")"


def _clean(value) -> str:
    return str(value or "").strip()


def _header_fields(ds) -> Tuple[str, str, str]:
    """(Manufacturer, ManufacturerModelName, CollimatorGridName) of a projection header."""
    if ds is None:
        return "", "", ""
    grid = _clean(ds.get("CollimatorGridName", ""))
    for item in ds.get("DetectorInformationSequence") or []:
        grid = grid or _clean(item.get("CollimatorGridName", ""))
    return _clean(ds.get("Manufacturer", "")), _clean(ds.get("ManufacturerModelName", "")), grid


def _energy_class(grid: str) -> Optional[str]:
    key = grid.upper().replace(" ", "").replace("-", "").replace("_", "")
    for names, energy_class in _GRID_CLASSES:
        if key in names:
            return energy_class
    return None


def _family(maker: str, model: str) -> Optional[dict]:
    maker_u, model_u = maker.upper(), model.upper()
    for maker_test, model_tests, codes in _FAMILIES:
        if maker_u.startswith(maker_test) and (not model_tests or any(t in model_u for t in model_tests)):
            return codes
    return None


def from_header(ds) -> Tuple[Optional[str], str]:
    """The table code a projection header names, or None; and the header's words for the record."""
    maker, model, grid = _header_fields(ds)
    text = ", ".join(f"{k} {v!r}" for k, v in (("Manufacturer", maker), ("ManufacturerModelName", model),
                                                  ("CollimatorGridName", grid)) if v)
    codes = _family(maker, model)
    energy_class = _energy_class(grid) if grid else None
    if codes is None or energy_class is None:
        return None, text
    return codes.get(energy_class), text


def choose_collimator(ds, option: Optional[str] = None, path=None) -> CollimatorChoice:
    """The collimator of a projection series: the option, else the header, else an assumption.

    Parameters
    ----------
    ds : pydicom.Dataset or None
        The projection file's header.
    option : str, optional
        The ``collimator`` option: a table code, or None / "auto" for the header's.
    path : path-like, optional
        The projection file (named in an assumption).

    Returns
    -------
    CollimatorChoice
    """
    header_code, text = from_header(ds)
    if option and option != "auto":
        return CollimatorChoice(str(option), "option", text, header_code)
    if header_code is not None:
        return CollimatorChoice(header_code, "header", text, header_code)
    maker, model, _grid = _header_fields(ds)
    codes = _family(maker, model)
    code = codes["ME"] if codes else DEFAULT_COLLIMATOR
    assume("collimator not identified from the projections' header "
           f"({text or 'no Manufacturer or CollimatorGridName'}); the medium-energy collimator used for Lu-177 "
           "is assumed (give --collimator)", code, "default", path=path)
    return CollimatorChoice(code, "assumed", text, None)
