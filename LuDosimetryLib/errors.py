"""One exception family for everything a user can get wrong.

Every message names the file (or option) and the problem, on one line, so the CLI can print it as is
and the Slicer panel can show it in a message box.

An error about an option carries the option's library name (:attr:`LuDosimetryError.option`, a name of
:mod:`LuDosimetryLib.options`); each front end names it its own way through :meth:`LuDosimetryError.describe`:
the command line as its ``--flag``, the panel as the widget's label, ``str()`` as the library name.
"""
from __future__ import annotations

import os
from typing import Callable, Optional, Union

PathLike = Union[str, "os.PathLike[str]"]


class LuDosimetryError(Exception):
    """Base class: a problem with the user's input or options (not a bug).

    Parameters
    ----------
    message : str
        What is wrong, in plain words.
    path : path-like, optional
        The file or folder concerned; it is prefixed to the message.
    option : str, optional
        The option concerned (its name in :mod:`LuDosimetryLib.options`). The message names it where it
        says ``{option}``; otherwise the option's name is prefixed to it.
    """

    def __init__(self, message: str, path: Optional[PathLike] = None, option: Optional[str] = None):
        self.path = None if path is None else os.fspath(path)
        self.problem = message
        self.option = option
        super().__init__(self.describe())

    def describe(self, name_option: Optional[Callable[[str], str]] = None) -> str:
        """The one-line message, with the option named by ``name_option(option)`` (default: its name)."""
        problem = self.problem
        if self.option:
            name = name_option(self.option) if name_option is not None else self.option
            problem = problem.replace("{option}", name) if "{option}" in problem else f"{name}: {problem}"
        return f"{self.path}: {problem}" if self.path else problem


class OptionError(LuDosimetryError):
    """An option's value is invalid, or does not go with another option's."""


class StudyError(LuDosimetryError):
    """The study folder cannot be used (empty, no DICOM, ambiguous series, missing injection data...)."""


class DicomFileError(LuDosimetryError):
    """One DICOM file is unreadable, truncated or lacks what its role needs."""


class StructureError(LuDosimetryError):
    """An RTSTRUCT does not fit the images (frame of reference, contour outside the image...)."""


class FitError(LuDosimetryError):
    """A time-activity curve cannot be fitted (too few points, non-finite values...)."""


class OutputError(LuDosimetryError):
    """The output folder cannot be written (exists without overwrite, not writable...)."""


class CancelledError(LuDosimetryError):
    """The user cancelled a long step."""

    def __init__(self, message: str = "cancelled by the user"):
        super().__init__(message)
