"""One exception family for everything a user can get wrong.

Every message names the file (or option) and the problem, on one line, so the CLI can print it as is
and the Slicer panel can show it in a message box.
"""
from __future__ import annotations

import os
from typing import Optional, Union

PathLike = Union[str, "os.PathLike[str]"]


class LuDosimetryError(Exception):
    """Base class: a problem with the user's input or options (not a bug).

    Parameters
    ----------
    message : str
        What is wrong, in plain words.
    path : path-like, optional
        The file or folder concerned; it is prefixed to the message.
    """

    def __init__(self, message: str, path: Optional[PathLike] = None):
        self.path = None if path is None else os.fspath(path)
        self.problem = message
        super().__init__(f"{self.path}: {message}" if self.path else message)


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
