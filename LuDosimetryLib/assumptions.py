"""Named assumptions: every value a run takes that the data did not state.

A dosimetry run sometimes has to take a value the study does not give: an injection date inferred from a
time alone, ``DecayCorrection`` empty read as START, water density where no CT shares the SPECT's frame, a
missing ``RescaleSlope`` read as 1, a header that disagrees with the command line. Each such choice is
an :class:`Assumption` (what was assumed, the value used, where it came from) and is taken through
:func:`assume`, wherever in the library it arises, so that none changes a result in silence:

- inside :func:`recording` (``run_study`` wraps a whole run in it) the assumption goes to the run's
  :class:`AssumptionLog`, which ``results.json["assumptions"]`` lists, the command line prints once and the
  Slicer panel shows beside the results;
- with ``strict=True`` the first assumption refuses the run instead: :class:`StrictRefusal`, one line
  naming the file and what would have been assumed (exit 2 on the command line);
- outside a run (a library caller reading one file) it is a :class:`AssumptionWarning`.

The log is held in a :mod:`contextvars` variable, so concurrent runs in threads or tasks keep their own.

This module does no I/O and imports only the standard library.
"""
from __future__ import annotations

import contextvars
import os
import warnings
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Iterator, List, Optional

from .errors import LuDosimetryError, PathLike


@dataclass(frozen=True)
class Assumption:
    """One assumption a run took.

    Attributes
    ----------
    what : str
        What was assumed, in plain words (e.g. "injection date inferred from the first scan's date").
    value : str
        The value used (with its unit).
    source : str
        Where the value came from ("default", "command line", a header tag...).
    path : str or None
        The file or series concerned.
    """

    what: str
    value: str
    source: str
    path: Optional[str] = None

    def message(self) -> str:
        """One line: ``path: what: value (source)``."""
        text = f"{self.what}: {self.value} ({self.source})"
        return f"{self.path}: {text}" if self.path else text

    def to_json(self) -> dict:
        return asdict(self)


class AssumptionWarning(UserWarning):
    """An assumption taken outside a run (no :func:`recording` active); ``.assumption`` holds it."""

    def __init__(self, assumption: Assumption):
        self.assumption = assumption
        super().__init__(assumption.message())


class StrictRefusal(LuDosimetryError):
    """A strict run met a value it would have had to assume."""


class AssumptionLog:
    """The assumptions of one run, each once, in the order taken.

    Parameters
    ----------
    strict : bool
        Refuse (:class:`StrictRefusal`) instead of recording.
    """

    def __init__(self, strict: bool = False):
        self.strict = bool(strict)
        self._items: List[Assumption] = []

    def take(self, assumption: Assumption) -> None:
        if self.strict:
            raise StrictRefusal(f"refused in strict mode: {assumption.what}: {assumption.value} "
                                f"({assumption.source}) would be assumed", assumption.path)
        if assumption not in self._items:
            self._items.append(assumption)

    @property
    def items(self) -> List[Assumption]:
        return list(self._items)

    def to_json(self) -> List[dict]:
        return [a.to_json() for a in self._items]

    def __len__(self) -> int:
        return len(self._items)


_CURRENT: "contextvars.ContextVar[Optional[AssumptionLog]]" = contextvars.ContextVar(
    "ludosimetry_assumption_log", default=None)


def assume(what: str, value, source: str, path: Optional[PathLike] = None) -> Assumption:
    """Take an assumption: record it in the active run's log, refuse in a strict run, else warn.

    Parameters
    ----------
    what : str
        What is assumed, in plain words.
    value : object
        The value used; shown with ``str()`` (give the unit in the text, e.g. "1.0 g/mL").
    source : str
        Where it came from.
    path : path-like, optional
        The file, series or folder concerned.

    Returns
    -------
    Assumption

    Raises
    ------
    StrictRefusal
        The active run is strict.
    """
    assumption = Assumption(str(what), str(value), str(source), None if path is None else os.fspath(path))
    log = _CURRENT.get()
    if log is None:
        warnings.warn(AssumptionWarning(assumption), stacklevel=2)
    else:
        log.take(assumption)
    return assumption


@contextmanager
def recording(strict: bool = False) -> Iterator[AssumptionLog]:
    """Collect the assumptions taken inside the ``with`` block into a new :class:`AssumptionLog`."""
    log = AssumptionLog(strict)
    token = _CURRENT.set(log)
    try:
        yield log
    finally:
        _CURRENT.reset(token)


def active_log() -> Optional[AssumptionLog]:
    """The log of the run in progress, or None."""
    return _CURRENT.get()
