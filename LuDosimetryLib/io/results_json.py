"""A run's ``results.json`` read back: by ``ludosimetry cycles`` and the panel's Cycles section (one file per
cycle), and by a later cycle's run that takes the patient's own kinetics from it (``--kinetics-from``).

A file that cannot be read, is not JSON or is not a run's results is refused with one line naming it
(:class:`~LuDosimetryLib.errors.StudyError`); its contents are checked further by their readers
(:mod:`LuDosimetryLib.cycles`).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict

from ..errors import PathLike, StudyError


def read_results_json(path: PathLike, what: str = "a results.json") -> Dict[str, Any]:
    """The results of one run, as written in its ``results.json``.

    Parameters
    ----------
    path : path-like
        The file.
    what : str
        What the file is to the caller, for the error line (e.g. "an earlier cycle's results.json").

    Returns
    -------
    dict
        The document; its ``"vois"`` is a dict (VOI name → results).

    Raises
    ------
    StudyError
        The file cannot be read or is not JSON, or it is not a run's results (no object with a ``"vois"``
        object), naming the file.
    """
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise StudyError(f"cannot read {what} ({type(exc).__name__}: {exc})", path) from None
    if not isinstance(data, dict) or not isinstance(data.get("vois"), dict):
        raise StudyError(f"is not {what} of a LuDosimetry run (no object with per-VOI results)", path)
    problem = shape_problem(data)
    if problem:
        raise StudyError(f"is not {what} of a LuDosimetry run ({problem})", path)
    return data


#: Top-level entries that are lists of objects, and those that are objects, where present.
_LISTS_OF_OBJECTS = ("time_points", "assumptions")
_OBJECTS = ("vois", "options", "inputs", "software", "whole_body", "remainder_of_body", "red_marrow")


def shape_problem(data: Dict[str, Any]) -> str:
    """What in a results document does not have the shape a run writes (each VOI an object, the time points
    a list of objects...), or "" — checked once here, so that its readers (the report, the cycles, a later
    cycle's run, the panel) meet the values, not a list where an object was written."""
    for key in _OBJECTS:
        if key in data and data[key] is not None and not isinstance(data[key], dict):
            return f"{key!r} is not an object"
    for key in _LISTS_OF_OBJECTS:
        if key in data and not (isinstance(data[key], list) and all(isinstance(x, dict) for x in data[key])):
            return f"{key!r} is not a list of objects"
    bad = [name for name, voi in data.get("vois", {}).items() if not isinstance(voi, dict)]
    if bad:
        return f"VOI {bad[0]!r} is not an object"
    return ""


__all__ = ["read_results_json", "shape_problem"]
