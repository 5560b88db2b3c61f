"""Radionuclide decay data (ICRP Publication 107) and decay correction.

Numbers are read from the ``icrp107-database`` package (OpenGATE's JSON transcription of
ICRP Publication 107, "Nuclear Decay Data for Dosimetric Calculations", Ann. ICRP 38(3), 2008),
never typed in: half-life, and per-decay mean energy of electrons (beta spectra means + internal
conversion + Auger) and of photons (gamma + X rays).
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from pathlib import Path

from .errors import LuDosimetryError

MEV_TO_J = 1.602176634e-13  # J per MeV (CODATA 2018, exact by SI definition of e)

_TIME_UNIT_S = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "y": 365.25 * 86400.0,
                "ms": 1e-3, "us": 1e-6}

_ELECTRON_TYPES = ("beta-", "beta+", "IE", "auger")
_PHOTON_TYPES = ("gamma", "X", "annihilation")


@dataclass(frozen=True)
class Radionuclide:
    """Decay data of one radionuclide.

    Attributes
    ----------
    name : str
        ICRP 107 name, e.g. ``"Lu-177"``.
    half_life_s : float
        Physical half-life (s).
    electron_energy_mev : float
        Mean energy emitted as electrons (beta, IC, Auger) per decay (MeV/decay).
    photon_energy_mev : float
        Mean energy emitted as photons (gamma, X) per decay (MeV/decay).
    """

    name: str
    half_life_s: float
    electron_energy_mev: float
    photon_energy_mev: float

    @property
    def half_life_h(self) -> float:
        """Physical half-life (h)."""
        return self.half_life_s / 3600.0

    @property
    def decay_constant_per_s(self) -> float:
        """λ = ln 2 / T½ (1/s)."""
        return math.log(2.0) / self.half_life_s

    @property
    def decay_constant_per_h(self) -> float:
        """λ = ln 2 / T½ (1/h)."""
        return math.log(2.0) / self.half_life_h

    @property
    def electron_energy_j(self) -> float:
        """Mean electron energy per decay (J/decay)."""
        return self.electron_energy_mev * MEV_TO_J

    @property
    def photon_energy_j(self) -> float:
        """Mean photon energy per decay (J/decay)."""
        return self.photon_energy_mev * MEV_TO_J

    def decay_factor(self, elapsed_s: float) -> float:
        """Fraction remaining after ``elapsed_s`` seconds, exp(-λ t) (dimensionless)."""
        return math.exp(-self.decay_constant_per_s * float(elapsed_s))


def _icrp107_file(name: str) -> Path:
    try:
        import icrp107_database
    except ImportError as exc:  # pragma: no cover - dependency is declared
        raise LuDosimetryError("the package 'icrp107-database' is needed for decay data "
                               "(pip install icrp107-database)") from exc
    path = Path(icrp107_database.__file__).parent / "icrp107" / f"{name}.json"
    if not path.exists():
        raise LuDosimetryError(f"radionuclide {name!r} is not in the ICRP 107 database")
    return path


def _normalise_name(name: str) -> str:
    """'Lu177', 'lu-177', '177Lu', '^177^Lutetium' → 'Lu-177'."""
    import re
    s = name.strip().replace("^", "")
    m = re.match(r"^([A-Za-z]+)-?(\d+m?)$", s) or None
    if m:
        sym, mass = m.group(1), m.group(2)
    else:
        m = re.match(r"^(\d+m?)-?([A-Za-z]+)$", s)
        if not m:
            raise LuDosimetryError(f"cannot parse radionuclide name {name!r}")
        mass, sym = m.group(1), m.group(2)
    sym = {"lutetium": "Lu", "yttrium": "Y", "iodine": "I", "technetium": "Tc",
           "gallium": "Ga", "fluorine": "F", "actinium": "Ac"}.get(sym.lower(), sym)
    return f"{sym[0].upper()}{sym[1:].lower()}-{mass}"


@lru_cache(maxsize=None)
def radionuclide(name: str = "Lu-177") -> Radionuclide:
    """Decay data of ``name`` from ICRP 107.

    Parameters
    ----------
    name : str
        Radionuclide, in any usual spelling ('Lu-177', 'Lu177', '177Lu').

    Returns
    -------
    Radionuclide
    """
    key = _normalise_name(name)
    with open(_icrp107_file(key), "rb") as fh:
        data = json.load(fh)
    if isinstance(data, str):  # the package stores a JSON document inside a JSON string
        data = json.loads(data)
    half_life_s = float(data["half_life"]) * _TIME_UNIT_S[data["time_unit"]]
    emissions = data["emissions"]

    def mean_energy(types) -> float:
        # Each entry is [energy (MeV; the mean energy for beta spectra), yield per decay].
        return float(sum(e * y for t in types for e, y in emissions.get(t, [])))

    return Radionuclide(key, half_life_s, mean_energy(_ELECTRON_TYPES), mean_energy(_PHOTON_TYPES))


LU177_NAME = "Lu-177"


def decay_factor_between(t_from: datetime, t_to: datetime, nuclide: Radionuclide) -> float:
    """exp(-λ (t_to - t_from)): activity at ``t_to`` per activity at ``t_from`` (dimensionless)."""
    return nuclide.decay_factor((t_to - t_from).total_seconds())
