"""A study folder made of links to files elsewhere (a DICOM database's study, a study with our reconstructions).

The linked files are never opened for writing; the pipeline reads the view like any study folder.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Sequence

from ..errors import OutputError, StudyError


def make_study_view(files: Sequence[os.PathLike], folder) -> Path:
    """A study folder made of links to ``files`` (copies where links cannot be made).

    Links are named ``<n>_<file name>`` so that files of the same name from different folders do not collide.

    Parameters
    ----------
    files : sequence of path-like
        Existing files.
    folder : path-like
        New or empty folder.

    Raises
    ------
    StudyError
        No files, or a file that does not exist.
    OutputError
        ``folder`` exists and is not an empty folder.
    """
    folder = Path(folder)
    files = [Path(f) for f in files]
    if not files:
        raise StudyError("the study has no files", folder)
    for f in files:
        if not f.is_file():
            raise StudyError("file of the study does not exist", f)
    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        raise OutputError("exists and is not an empty folder; a study view needs a new folder", folder)
    folder.mkdir(parents=True, exist_ok=True)
    for k, f in enumerate(files, start=1):
        target = folder / f"{k:06d}_{f.name}"
        try:
            os.symlink(os.path.abspath(str(f)), str(target))
        except (OSError, NotImplementedError):
            shutil.copy2(str(f), str(target))
    return folder
