"""Write a run's outputs into a folder atomically: a temporary sibling folder, renamed into place.

A half-written output folder never exists under the requested name; an existing folder is replaced only
with ``overwrite=True`` and only when it holds nothing but a previous LuDosimetry output (so nothing a
user made is lost).
"""
from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from ..errors import OutputError

MARKER = ".ludosimetry-output"


def _is_our_output(path: Path) -> bool:
    return (path / MARKER).exists()


def check_output_dir(out, overwrite: bool) -> Path:
    """Refuse an unusable output folder before any work starts (OutputError naming it)."""
    out = Path(out)
    if out.exists():
        if not out.is_dir():
            raise OutputError("output path exists and is not a folder", out)
        if any(out.iterdir()):
            if not overwrite:
                raise OutputError("output folder exists and is not empty; allow {option} to replace it", out,
                                  option="overwrite")
            if not _is_our_output(out):
                raise OutputError("output folder holds files that LuDosimetry did not write; "
                                  "refusing to overwrite it (choose another output folder)", out)
    parent = out.resolve().parent
    if not parent.exists():
        raise OutputError("parent folder of the output does not exist", parent)
    if not os.access(str(parent), os.W_OK):
        raise OutputError("parent folder of the output is not writable", parent)
    return out


@contextmanager
def atomic_output_dir(out, overwrite: bool = False) -> Iterator[Path]:
    """Context manager yielding a temporary folder that becomes ``out`` on success.

    On an exception the temporary folder is removed and ``out`` is left as it was.
    """
    out = check_output_dir(out, overwrite)
    parent = out.resolve().parent
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=str(parent)))
    try:
        yield tmp
        (tmp / MARKER).write_text("written by LuDosimetry\n")
        old = None
        if out.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=str(parent)))
            os.rmdir(old)
            os.replace(out, old)
        os.replace(tmp, out)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


@contextmanager
def atomic_file(path, suffix: str = "") -> Iterator[str]:
    """Context manager yielding a temporary path beside ``path`` that becomes ``path`` on success.

    The parent folder is created; on an exception the temporary file is removed and ``path`` is left
    as it was. Every file LuDosimetry writes goes through here (or :func:`atomic_output_dir`).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp_", suffix=suffix or path.suffix, dir=str(path.parent))
    os.close(fd)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def _clean(obj):
    """JSON-safe: NaN/inf → None, numpy scalars → Python."""
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if hasattr(obj, "item") and not isinstance(obj, (str, bytes)):
        try:
            obj = obj.item()
        except Exception:
            pass
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def write_json(path, data) -> Path:
    """Write ``data`` as indented JSON atomically (NaN written as null)."""
    path = Path(path)
    with atomic_file(path, ".json") as tmp, open(tmp, "w") as fh:
        json.dump(_clean(data), fh, indent=2, allow_nan=False)
        fh.write("\n")
    return path


def write_file_atomically(path, data: bytes, overwrite: bool = False) -> Path:
    """Write ``data`` to ``path`` through a temporary file beside it, renamed into place.

    Without ``overwrite`` an existing ``path`` is refused, also when it appears while writing (the temporary
    file is hard-linked to the name, which fails when the name exists).

    Raises
    ------
    OutputError
        ``path`` exists (and ``overwrite`` is False, or it is a folder), or its folder does not exist.
    """
    path = Path(path)
    if path.exists() and (not overwrite or path.is_dir()):
        raise OutputError("exists; not overwritten" + (" (it is a folder)" if path.is_dir() else ""), path)
    if not path.parent.is_dir():
        raise OutputError("folder does not exist", path.parent)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=str(path.parent))
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        if overwrite:
            os.replace(tmp, str(path))
        else:
            try:
                os.link(tmp, str(path))
            except FileExistsError:
                raise OutputError("exists; not overwritten", path) from None
            except OSError:  # no hard links on this file system
                if path.exists():
                    raise OutputError("exists; not overwritten", path) from None
                os.replace(tmp, str(path))
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path
