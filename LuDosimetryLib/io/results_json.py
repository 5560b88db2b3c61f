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
    return data


__all__ = ["read_results_json"]
