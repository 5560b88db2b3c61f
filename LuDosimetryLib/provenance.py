"""What a run read and with which software: the input series with a SHA-256 of every file, and the
versions of LuDosimetry and of the libraries that computed the numbers (``results.json`` "inputs",
"software"; shown in the per-patient report)."""
from __future__ import annotations

import hashlib
import os
import platform
from functools import lru_cache
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence

#: Libraries whose version is recorded beside LuDosimetry's (those that compute or read the numbers).
RECORDED_LIBRARIES = ("numpy", "scipy", "SimpleITK", "pydicom")


def sha256_of_file(path, chunk_bytes: int = 1 << 20) -> str:
    """SHA-256 (hex) of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(chunk_bytes), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _relative(path: str, root: str) -> str:
    """``path`` relative to ``root`` (POSIX separators) when it lies below it, else absolute."""
    path = os.path.abspath(path)
    try:
        relative = os.path.relpath(path, root)
    except ValueError:  # another drive (Windows)
        return path.replace(os.sep, "/")
    return path.replace(os.sep, "/") if relative.startswith("..") else relative.replace(os.sep, "/")


def input_series_json(series: Sequence, root, other_files: Optional[Mapping[str, object]] = None
                      ) -> Dict[str, object]:
    """The series a run read, each with the SHA-256 of each of its files, and the other files it read.

    Parameters
    ----------
    series : sequence of SeriesEntry
        The series read (``role``, ``modality``, ``series_instance_uid``, ``description``, ``time_point``,
        ``files``), in the order read; a series listed twice is recorded once.
    root : path-like
        The study folder; file paths are recorded relative to it.
    other_files : mapping role → path, optional
        Files read beside the study (e.g. ``{"dose_kernel": path}``); a folder stands for its files.

    Returns
    -------
    dict
        ``{"root": absolute folder, "series": [{"role", "modality", "series_uid", "description",
        "time_point" (1-based or None), "files": [{"path", "sha256"}]}], "other_files": [{"role", "path",
        "sha256"}]}``.
    """
    root = os.path.abspath(os.fspath(root))
    seen = set()
    out: List[dict] = []
    for entry in series:
        if entry.series_instance_uid in seen:
            continue
        seen.add(entry.series_instance_uid)
        out.append({"role": entry.role, "modality": entry.modality, "series_uid": entry.series_instance_uid,
                    "description": entry.description,
                    "time_point": None if entry.time_point is None else entry.time_point + 1,
                    "files": [{"path": _relative(f, root), "sha256": sha256_of_file(f)} for f in sorted(entry.files)]})
    others = []
    for role, path in (other_files or {}).items():
        path = os.path.abspath(os.fspath(path))
        paths = sorted(str(p) for p in Path(path).rglob("*") if p.is_file()) if os.path.isdir(path) else [path]
        others += [{"role": role, "path": _relative(p, root), "sha256": sha256_of_file(p)} for p in paths]
    return {"root": root, "series": out, "other_files": others}


def series_digest(files: Sequence[Mapping[str, str]]) -> str:
    """One SHA-256 for a series: of its ``sha256sum`` listing, one line ``<sha256>  <path>\\n`` per file,
    sorted by path (``files`` as in :func:`input_series_json`). In the study folder, with the same relative
    paths: ``sha256sum FILES | LC_ALL=C sort -k2 | sha256sum``."""
    listing = "".join(f"{f['sha256']}  {f['path']}\n" for f in sorted(files, key=lambda f: f["path"]))
    return hashlib.sha256(listing.encode("utf-8")).hexdigest()


@lru_cache(maxsize=1)
def source_sha256() -> str:
    """SHA-256 of LuDosimetryLib's own files (each file's path in the package and contents, in path order;
    compiled caches left out): which code made a result, also between two builds of one version number."""
    package = Path(__file__).resolve().parent
    digest = hashlib.sha256()
    for path in sorted(p for p in package.rglob("*") if p.is_file() and "__pycache__" not in p.parts):
        digest.update(path.relative_to(package).as_posix().encode("utf-8") + b"\0")
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


def software_versions() -> Dict[str, str]:
    """Versions of LuDosimetry (and :func:`source_sha256` of its code), Python and :data:`RECORDED_LIBRARIES`
    ("not installed" for a missing one)."""
    from importlib import import_module

    from . import __version__

    versions = {"LuDosimetry": __version__, "LuDosimetry source sha256": source_sha256(),
                "python": platform.python_version()}
    for name in RECORDED_LIBRARIES:
        try:
            versions[name] = str(getattr(import_module(name), "__version__", "unknown"))
        except ImportError:
            versions[name] = "not installed"
    return versions
