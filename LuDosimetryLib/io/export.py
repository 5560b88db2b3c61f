"""Write a run's outputs into a folder atomically: a temporary sibling folder, renamed into place.

Guarantees (see :func:`atomic_output_dir`):

- a half-written output folder never exists under the requested name: the folder is written as a hidden
  sibling and appears under its name by one atomic rename; a ``kill -9`` at any moment leaves the
  previous output or the new one, complete;
- nothing LuDosimetry did not write is replaced or deleted: the final rename re-checks the name. A folder
  that appeared there while the run was writing (a user's, or another run's output) is left alone and
  the run is refused (:class:`OutputError`); an existing folder is replaced only with ``overwrite=True``
  and only when its marker file says LuDosimetry wrote it and every file in it is one LuDosimetry wrote;
- temporary siblings left by a killed run (marked as ours, named with the writer's host and process id,
  that process no longer running) are removed by the next run that writes beside them.

Atomicity rests on ``renameat2(2)`` with ``RENAME_NOREPLACE`` / ``RENAME_EXCHANGE`` (Linux ≥ 3.15 on
local file systems) or ``renamex_np(2)`` with ``RENAME_EXCL`` / ``RENAME_SWAP`` (macOS). Where neither is
available (Windows, some network file systems), the name is checked just before a plain rename (Windows'
rename never replaces an existing folder; elsewhere an *empty* folder created in the microseconds between
the check and the rename could be replaced) and a replacement takes two renames, after which a killed run
leaves the previous output in a hidden sibling that the next run puts back.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import errno
import hashlib
import json
import math
import os
import re
import secrets
import shutil
import socket
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path, PurePosixPath
from typing import Iterator, List, Mapping, Optional, Tuple

from ..errors import OutputError

#: Marker file of a finished LuDosimetry output folder: JSON ``{"written_by": "LuDosimetry", "files": [...]}``
#: listing every file written (relative POSIX paths). Older outputs hold the text "written by LuDosimetry".
MARKER = ".ludosimetry-output"
#: Written first into a temporary folder: the writer's host and process id (JSON).
OWNER_FILE = ".ludosimetry-writing"
_WRITTEN_BY = "LuDosimetry"
#: ``.<name>.ludosimetry-<tmp|old>.<host hash>.<pid>.<random>``
_SIBLING = re.compile(r"^\.(?P<name>.+)\.ludosimetry-(?P<kind>tmp|old)\.(?P<host>[0-9a-f]{8})\.(?P<pid>\d+)\.[^.]+$")


# ------------------------------------------------------------------------------ atomic renames

_RENAME_NOREPLACE, _RENAME_EXCHANGE = 1, 2  # linux/fs.h
_MAC_RENAME_SWAP, _MAC_RENAME_EXCL = 0x2, 0x4  # sys/stdio.h


def _libc():
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") if sys.platform == "darwin" else None, use_errno=True)
    except OSError:
        return None


_LIBC = None if os.name == "nt" else _libc()


def _native_rename(src: str, dst: str, linux_flag: int, mac_flag: int) -> bool:
    """Rename with a no-replace/exchange flag; False when the system or file system has no such rename.

    Raises OSError (e.g. FileExistsError) when the rename itself fails."""
    if _LIBC is None:
        return False
    if sys.platform.startswith("linux") and hasattr(_LIBC, "renameat2"):
        at_fdcwd = -100
        rc = _LIBC.renameat2(at_fdcwd, os.fsencode(src), at_fdcwd, os.fsencode(dst), ctypes.c_uint(linux_flag))
    elif sys.platform == "darwin" and hasattr(_LIBC, "renamex_np"):
        rc = _LIBC.renamex_np(os.fsencode(src), os.fsencode(dst), ctypes.c_uint(mac_flag))
    else:
        return False
    if rc == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, getattr(errno, "EOPNOTSUPP", errno.ENOTSUP)):
        return False  # not supported here (kernel or file system)
    raise OSError(err, os.strerror(err), src, None, dst)


def rename_no_replace(src, dst) -> None:
    """Rename ``src`` to ``dst`` only if ``dst`` does not exist, atomically where the system allows.

    Raises
    ------
    FileExistsError
        ``dst`` exists (a file or a folder, empty or not).
    """
    src, dst = os.fspath(src), os.fspath(dst)
    if _native_rename(src, dst, _RENAME_NOREPLACE, _MAC_RENAME_EXCL):
        return
    if os.path.lexists(dst):  # fallback: check, then rename (see the module notes)
        raise FileExistsError(errno.EEXIST, "exists", dst)
    os.rename(src, dst)


def _exchange(a: Path, b: Path) -> bool:
    """Swap two existing paths atomically; False when the system cannot."""
    return _native_rename(os.fspath(a), os.fspath(b), _RENAME_EXCHANGE, _MAC_RENAME_SWAP)


# --------------------------------------------------------------------------- who wrote what

def _host_tag() -> str:
    return hashlib.sha1(socket.gethostname().encode("utf-8", "replace")).hexdigest()[:8]


def _pid_alive(pid: int) -> bool:
    """Whether a process of this host runs with that id (True when it cannot be told)."""
    if pid == os.getpid():
        return True
    if os.name == "nt":  # os.kill(pid, 0) would terminate the process on Windows
        try:
            kernel32 = ctypes.WinDLL("kernel32", use_last_error=True)  # type: ignore[attr-defined]
            handle = kernel32.OpenProcess(0x1000, False, int(pid))  # PROCESS_QUERY_LIMITED_INFORMATION
            if not handle:
                return ctypes.get_last_error() != 87  # ERROR_INVALID_PARAMETER: no such process
            code = ctypes.c_ulong()
            kernel32.GetExitCodeProcess(handle, ctypes.byref(code))
            kernel32.CloseHandle(handle)
            return code.value == 259  # STILL_ACTIVE
        except (OSError, AttributeError):  # no kernel32 (not Windows after all) or the call failed
            return True
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # e.g. another user's process
    return not _is_zombie(int(pid))


def _is_zombie(pid: int) -> bool:
    """Whether the process has ended but its parent has not collected it yet (state Z or X in
    ``/proc/<pid>/stat``, proc(5)). ``os.kill(pid, 0)`` still succeeds for such a process: a run killed under a
    parent that does not wait for it (a dask worker started by a script, a container without an init) would
    otherwise look alive, and its temporary folder would never be removed. False where there is no ``/proc``."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return False
    fields = stat.rpartition(b")")[2].split()  # the command name in parentheses may hold spaces and ')'
    return bool(fields) and fields[0] in (b"Z", b"X")


def _sibling(out: Path, kind: str) -> Path:
    """A new unique hidden sibling name of ``out`` (not created)."""
    stem = f".{out.name}.ludosimetry-{kind}.{_host_tag()}.{os.getpid()}."
    return out.parent / (stem + secrets.token_hex(4))


def _read_marker(folder: Path) -> Optional[dict]:
    """The marker of a LuDosimetry output folder (``files`` None for an older output), or None."""
    path = folder / MARKER
    try:
        if path.is_symlink() or not path.is_file():
            return None
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    try:
        data = json.loads(text)
    except ValueError:
        return {"written_by": _WRITTEN_BY, "files": None} if text.startswith(f"written by {_WRITTEN_BY}") else None
    if isinstance(data, dict) and data.get("written_by") == _WRITTEN_BY and isinstance(data.get("files"), list):
        return data
    return None


def _files_below(folder: Path) -> List[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*")
                  if not p.is_dir() or p.is_symlink())


def foreign_files(folder) -> Optional[List[str]]:
    """Files in ``folder`` that LuDosimetry did not write; None when it is not a LuDosimetry output at all.

    A LuDosimetry output holds its :data:`MARKER`, which lists the files written; anything else in it (a
    user's note added later) makes the folder not ours to replace.
    """
    folder = Path(folder)
    if folder.is_symlink() or not folder.is_dir():
        return None
    marker = _read_marker(folder)
    if marker is None:
        return None
    if marker["files"] is None:  # older output: no list of files
        return []
    ours = set(marker["files"]) | {MARKER, OWNER_FILE}
    return [name for name in _files_below(folder) if name not in ours and _temporary_of(name) not in ours]


#: ``.<name>.<random>.tmp``: the temporary file :func:`write_file_atomically` writes beside ``<name>``.
_TEMPORARY_FILE = re.compile(r"^\.(?P<name>.+)\.[A-Za-z0-9_]+\.tmp$")


def _temporary_of(relative: str) -> Optional[str]:
    """The file (relative POSIX path) whose temporary file of :func:`write_file_atomically` ``relative`` is
    (a write killed before its rename leaves it), or None."""
    folder, _, name = relative.rpartition("/")
    m = _TEMPORARY_FILE.match(name)
    if m is None:
        return None
    return f"{folder}/{m['name']}" if folder else m["name"]


def _is_our_output(path: Path) -> bool:
    return foreign_files(path) == []


def _marker_text(files: List[str]) -> str:
    from .. import __version__

    return json.dumps({"written_by": _WRITTEN_BY, "version": __version__, "files": files}, indent=1) + "\n"


def _write_marker(folder: Path) -> None:
    files = [name for name in _files_below(folder) if name not in (MARKER, OWNER_FILE)]
    (folder / MARKER).write_text(_marker_text(files), encoding="utf-8")


def _remove_ours(folder: Path) -> None:
    """Delete a folder of ours, its :data:`MARKER` and :data:`OWNER_FILE` last: a run killed while deleting
    leaves a folder that is still recognisably ours (and removed by the next run)."""
    keep = {MARKER, OWNER_FILE}
    for entry in list(os.scandir(folder)):
        if entry.name in keep:
            continue
        if entry.is_dir(follow_symlinks=False):
            shutil.rmtree(entry.path, ignore_errors=True)
        else:
            try:
                os.unlink(entry.path)
            except FileNotFoundError:
                pass
    shutil.rmtree(folder, ignore_errors=True)


# ------------------------------------------------------------------------ stale temporary folders

def clean_stale_siblings(parent) -> List[Path]:
    """Remove the temporary folders that killed LuDosimetry runs of this host left in ``parent``.

    A folder is removed only when its name says LuDosimetry made it on this host, the process named in it
    no longer runs, and it holds our :data:`OWNER_FILE` (a temporary output; or nothing, killed before
    writing that) or our :data:`MARKER` (a previous output swapped out, or set aside, by a replacement). A previous output set aside whose folder name
    is now free is renamed back instead (a run killed between the two renames of a replacement).

    Returns
    -------
    list of Path
        The folders removed or put back.
    """
    parent = Path(parent)
    done: List[Path] = []
    host = _host_tag()
    try:
        entries = list(os.scandir(parent))
    except OSError:
        return done
    for entry in entries:
        m = _SIBLING.match(entry.name)
        if m is None or m["host"] != host or _pid_alive(int(m["pid"])):
            continue
        path = Path(entry.path)
        if path.is_symlink() or not path.is_dir():
            continue
        try:
            if m["kind"] == "tmp" and ((path / OWNER_FILE).is_file() or _read_marker(path) is not None
                                       or not any(path.iterdir())):
                _remove_ours(path)
                done.append(path)
            elif m["kind"] == "old" and _read_marker(path) is not None:
                try:
                    rename_no_replace(path, parent / m["name"])  # the replacement never came: put it back
                except FileExistsError:
                    _remove_ours(path)
                done.append(path)
        except OSError:
            pass  # another process is cleaning it, or it is not ours to touch
    return done


# ------------------------------------------------------------------------------- output folders

def check_output_outside_inputs(out, inputs) -> None:
    """Refuse an output folder that is, or lies inside, one of the ``inputs`` folders (OutputError naming it).

    A run never writes into its inputs: its files would change the study folder, and the study, scanned again,
    would hold them (a second RT Dose, a second reconstructed SPECT).
    """
    target = Path(out).resolve()
    for folder in inputs:
        if not folder:
            continue
        source = Path(folder).resolve()
        if target == source or source in target.parents:
            raise OutputError(f"lies inside the input folder {source}; LuDosimetry never writes into its inputs: "
                              "choose an output folder outside it", out)


def check_output_dir(out, overwrite: bool) -> Path:
    """Refuse an unusable output folder before any work starts (OutputError naming it)."""
    out = Path(out)
    if out.is_symlink():  # renames act on the link, not on the folder it points to
        raise OutputError("output path is a symbolic link; give the folder itself", out)
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
    parent = out.absolute().parent
    if not parent.exists():
        raise OutputError("parent folder of the output does not exist", parent)
    if not os.access(str(parent), os.W_OK):
        raise OutputError("parent folder of the output is not writable", parent)
    return out


def _empty_dir_identity(out: Path) -> Optional[Tuple[int, int]]:
    """(device, inode) of ``out`` when it is an empty real folder, else None."""
    try:
        if out.is_symlink() or not out.is_dir() or any(out.iterdir()):
            return None
        st = os.stat(out)
    except OSError:
        return None
    return (st.st_dev, st.st_ino)


def _appeared(out: Path) -> OutputError:
    return OutputError("was created or filled while the run was writing (by another run, or by hand); "
                       "left as it is, and this run's outputs were not written", out)


def _publish(tmp: Path, out: Path, overwrite: bool, empty_at_start: Optional[Tuple[int, int]]) -> None:
    """Put the finished ``tmp`` under the name ``out``, re-checking what is there now."""
    try:
        rename_no_replace(tmp, out)
        return
    except FileExistsError:
        pass
    # Something is at ``out`` now. The empty folder that was there when the run started may give way.
    if empty_at_start is not None and _empty_dir_identity(out) == empty_at_start:
        try:
            os.rmdir(out)
        except OSError:
            raise _appeared(out) from None
        try:
            rename_no_replace(tmp, out)
        except FileExistsError:
            raise _appeared(out) from None
        return
    if not overwrite:
        raise _appeared(out)
    if out.is_symlink() or not _is_our_output(out):
        raise OutputError("output folder holds files that LuDosimetry did not write; refusing to overwrite "
                          "it (this run's outputs were not written)", out)
    if _exchange(tmp, out):
        # ``tmp`` now holds what was at ``out``: make sure it was ours, else swap back.
        if not _is_our_output(tmp):
            _exchange(tmp, out)
            raise OutputError("output folder changed while the run was writing; left as it is, and this "
                              "run's outputs were not written", out)
        _remove_ours(tmp)
        return
    # No atomic exchange here: set the old output aside (a killed run's next run puts it back), then rename.
    old = _sibling(out, "old")
    os.rename(out, old)
    if not _is_our_output(old):
        rename_no_replace(old, out)
        raise OutputError("output folder changed while the run was writing; left as it is", out)
    try:
        rename_no_replace(tmp, out)
    except FileExistsError:
        raise OutputError(f"appeared while the run was writing; the previous output was kept in {old}",
                          out) from None
    _remove_ours(old)


@contextmanager
def atomic_output_dir(out, overwrite: bool = False) -> Iterator[Path]:
    """Context manager yielding a temporary folder that becomes ``out`` on success.

    The temporary folder is a hidden sibling of ``out``; temporary folders of killed runs beside it are
    removed first (:func:`clean_stale_siblings`). On success the marker listing the files written is added
    and the folder renamed to ``out`` — if ``out`` is free, or is the empty folder that was there when
    the run started, or (``overwrite``) holds a LuDosimetry output and nothing else. Anything else found at
    ``out`` at that moment (e.g. a folder made while the run was writing, or the output of a concurrent run)
    is left alone and :class:`OutputError` is raised. On an exception the temporary folder is removed and
    ``out`` is left as it was.

    Raises
    ------
    OutputError
        ``out`` is unusable now (see :func:`check_output_dir`) or at the final rename.
    """
    out = check_output_dir(out, overwrite)
    out = out.absolute()
    clean_stale_siblings(out.parent)
    empty_at_start = _empty_dir_identity(out)
    tmp = _sibling(out, "tmp")
    try:
        tmp.mkdir(mode=0o777)
    except OSError as exc:
        raise OutputError(f"cannot create a temporary folder beside the output ({exc.strerror})", out.parent) \
            from None
    try:
        (tmp / OWNER_FILE).write_text(json.dumps({"host": socket.gethostname(), "pid": os.getpid()}) + "\n",
                                      encoding="utf-8")
        yield tmp
        _write_marker(tmp)
        _publish(tmp, out, overwrite, empty_at_start)
    except BaseException:
        _remove_ours(tmp)
        raise
    try:
        os.unlink(out / OWNER_FILE)
    except OSError:
        pass


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
        except (TypeError, ValueError):  # an array of more than one element, or an object whose item() wants arguments
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


def check_files_addable(folder, names) -> Optional[List[str]]:
    """Check that :func:`add_files_to_output` may write ``names`` into ``folder``, before any work is done.

    Returns
    -------
    list of str or None
        The files the folder's :data:`MARKER` lists (None for an older output, which lists none).

    Raises
    ------
    OutputError
        ``folder`` is not a LuDosimetry output folder; a name is taken by a file LuDosimetry did not write,
        by a folder or by a link.
    """
    folder = Path(folder)
    marker = None if folder.is_symlink() or not folder.is_dir() else _read_marker(folder)
    if marker is None:
        raise OutputError(f"is not a LuDosimetry output folder (it has no {MARKER} file)", folder)
    listed = marker["files"]
    for name in names:
        relative = PurePosixPath(name)
        if relative.is_absolute() or not relative.parts or ".." in relative.parts or name in (MARKER, OWNER_FILE):
            raise ValueError(f"not a file name inside the output folder: {name!r}")
        path = folder / name
        if path.is_symlink() or path.is_dir():
            raise OutputError("is a folder or a link; not replaced", path)
        if path.exists() and listed is not None and name not in listed:
            raise OutputError("exists and LuDosimetry did not write it; not replaced (move it away first)", path)
    return listed


def add_files_to_output(folder, files: Mapping[str, bytes]) -> List[Path]:
    """Add files to an existing LuDosimetry output folder (e.g. a report rebuilt from it), keeping its marker
    right.

    Each file goes through a temporary file beside it, renamed into place (:func:`write_file_atomically`): a
    reader sees the previous file or the new one, whole. A name that exists is replaced only when the
    folder's :data:`MARKER` says LuDosimetry wrote it (:func:`check_files_addable`); a name that appears while
    writing is not replaced. The marker lists the new files before they are written, so a write killed
    half-way leaves a marker naming a file that is not there, or a temporary file of a listed name
    (recognised as ours by :func:`foreign_files`) — never a file that looks like the user's. Nothing is
    written when any name is refused.

    Parameters
    ----------
    folder : path-like
        A LuDosimetry output folder (one that holds the marker).
    files : mapping relative POSIX path → bytes
        The files to write (sub-folders are created).

    Returns
    -------
    list of Path
        The files written.

    Raises
    ------
    OutputError
        As :func:`check_files_addable`.
    """
    folder = Path(folder)
    listed = check_files_addable(folder, list(files))
    if listed is not None and not set(files) <= set(listed):
        write_file_atomically(folder / MARKER, _marker_text(sorted(set(listed) | set(files))).encode("utf-8"),
                              overwrite=True)
    written = []
    for name, data in files.items():
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        written.append(write_file_atomically(path, data, overwrite=path.exists()))
    return written
