"""Dose voxel kernels computed elsewhere (Monte Carlo), read from files.

Physicists often own a validated Monte Carlo dose voxel kernel; this module reads it so that
:func:`~LuDosimetryLib.dose.convolve.dose_dvk` can use it instead of the kernel LuDosimetry builds
(:func:`~LuDosimetryLib.dose.kernels.dose_voxel_kernel`). Two layouts are recognised from the file's
content (not only its extension):

* **Interfile 3.3** header (``!INTERFILE :=`` on its first line) with its raw data file named by
  ``!name of data file`` (relative to the header), e.g. the kernels of PyTheranostics. Passing the data
  file itself (``.img``) finds the header beside it.
* **Voxel S-value text tables** laid out like the database of Lanconelli et al., "A free database of
  radionuclide voxel S values for the dosimetry of nonuniform activity distributions",
  Phys. Med. Biol. 57 (2012) 517–533: a title line naming the voxel size (``Lu177 - 4.8mm - Soft tissue``),
  a column line ``i j k S [mGy/(MBq·s)]`` naming the units, then one row ``i j k value`` per voxel of the
  octant ``i, j, k ≥ 0`` (voxel offsets along x, y, z; cubic voxels); the octant is mirrored to the full box.
  Interfile data without ``!imagedata byte order`` are read big-endian (the Interfile 3.3 default).

Kernels are returned in Gy per decay (Gy/(Bq·s)), numpy order (z, y, x), odd sizes, source voxel at the
centre. Unit conversions: 1 mGy/decay = 1e-3 Gy/decay; 1 mGy/(MBq·s) = 1e-3 Gy / 1e6 decays
= 1e-9 Gy/decay.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Optional, Sequence, Tuple

import numpy as np

from ..errors import LuDosimetryError

__all__ = ["DoseKernel", "KernelFileError", "read_dose_kernel", "check_kernel_grid"]

# Units → factor to Gy per decay, keyed by the normalised spelling (see _units_factor).
_UNIT_FACTORS_GY_PER_DECAY: Dict[str, float] = {
    "gy/decay": 1.0,
    "mgy/decay": 1e-3,
    "gy/bqs": 1.0,  # Gy per Bq·s = Gy per decay
    "mgy/bqs": 1e-3,
    "mgy/mbqs": 1e-9,  # mGy per MBq·s = 1e-3 Gy per 1e6 decays
    "mgy/mbq/s": 1e-9,
}
_ACCEPTED_UNITS = "mGy/decay, Gy/decay, mGy/(MBq·s) (or mGy/MBqs)"

# Interfile number formats → numpy kind per byte count.
_INTERFILE_FORMATS = {
    "short float": {4: "f"},
    "float": {4: "f", 8: "f"},
    "long float": {8: "f"},
    "signed integer": {1: "i", 2: "i", 4: "i"},
    "unsigned integer": {1: "u", 2: "u", 4: "u"},
}
_DEFAULT_BYTES = {"short float": 4, "float": 4, "long float": 8, "signed integer": 2, "unsigned integer": 2}
_HEADER_SUFFIXES = (".hdr", ".HDR", ".h33", ".H33")
_TABLE_HEADER = re.compile(r"^\s*i[\s,;]+j[\s,;]+k[\s,;]+S\b\s*(.*)$", re.IGNORECASE)
_VOXEL_MM = re.compile(r"([0-9]+(?:[.,][0-9]+)?)\s*mm\b", re.IGNORECASE)


class KernelFileError(LuDosimetryError):
    """A dose kernel file cannot be used (unreadable, inconsistent, unknown units...)."""


@dataclass(frozen=True, eq=False)
class DoseKernel:
    """A dose voxel kernel read from a file.

    Attributes
    ----------
    values_gy_per_decay : numpy.ndarray
        float64 (z, y, x), odd sizes, source voxel at the centre, full box (read-only): mean absorbed
        dose (Gy) in each voxel per decay in the centre voxel.
    spacing_mm : tuple of 3 floats
        Voxel size (x, y, z) in mm.
    source : str
        The file it was read from.
    description : str
        What the file says about itself (format, title, units in the file).
    """

    values_gy_per_decay: np.ndarray
    spacing_mm: Tuple[float, float, float]
    source: str
    description: str


def _units_factor(units: str) -> Optional[float]:
    """Factor from ``units`` to Gy per decay, or None when the spelling is unknown.

    Case, spaces, brackets and the middle dot (in any encoding, e.g. UTF-8 read as latin-1) are ignored;
    ``per`` is read as ``/``.
    """
    text = units.lower().replace("per", "/")
    key = re.sub(r"[^a-z0-9/]", "", text)
    return _UNIT_FACTORS_GY_PER_DECAY.get(key)


def _decode_text(raw: bytes) -> str:
    """Text of a header or table: UTF-8 when it decodes as such, else latin-1 (any byte decodes)."""
    try:
        return raw.decode("utf-8-sig")  # a byte-order mark is dropped
    except UnicodeDecodeError:
        return raw.decode("latin-1")


def _resolve_units(file_units: Optional[str], units: Optional[str], path: Path) -> Tuple[float, str]:
    """Factor to Gy/decay and the units' text, from the file's units and the caller's ``units``."""
    if units is not None:
        given = _units_factor(units)
        if given is None:
            raise KernelFileError(f"units={units!r} are not understood (use {_ACCEPTED_UNITS})", path)
        if file_units:
            in_file = _units_factor(file_units)
            if in_file is not None and not math.isclose(in_file, given, rel_tol=1e-12):
                raise KernelFileError(f"the file says its units are {file_units!r}, units={units!r} was given; "
                                      "they disagree", path)
        return given, units
    if not file_units:
        raise KernelFileError(f"the file does not state its units; give them (one of {_ACCEPTED_UNITS})", path)
    factor = _units_factor(file_units)
    if factor is None:
        raise KernelFileError(f"units {file_units!r} are not a dose per decay ({_ACCEPTED_UNITS}); give the "
                              "units explicitly if the values are one of these", path)
    return factor, file_units


def _spacing_arg(spacing_mm, path: Path) -> Optional[Tuple[float, float, float]]:
    if spacing_mm is None:
        return None
    try:
        values = np.broadcast_to(np.asarray(spacing_mm, dtype=float), (3,))
    except (TypeError, ValueError) as exc:
        raise KernelFileError(f"spacing_mm={spacing_mm!r} is not 1 or 3 voxel sizes in mm", path) from exc
    if not np.all(np.isfinite(values)) or np.any(values <= 0):
        raise KernelFileError(f"spacing_mm={spacing_mm!r} must be positive (mm)", path)
    return tuple(float(v) for v in values)


def _validate(values: np.ndarray, path: Path) -> np.ndarray:
    """Checks shared by every format; returns a read-only float64 copy."""
    k = np.array(values, dtype=np.float64)
    if k.ndim != 3:
        raise KernelFileError(f"a dose kernel must be 3-D, this one has shape {k.shape}", path)
    if any(n % 2 == 0 for n in k.shape):
        raise KernelFileError(f"kernel size {k.shape[::-1]} (x, y, z) is even along an axis; a kernel centred "
                              "on its source voxel has odd sizes", path)
    if not np.all(np.isfinite(k)):
        raise KernelFileError(f"kernel holds {int(np.count_nonzero(~np.isfinite(k)))} NaN/infinite values "
                              "(wrong byte order or number format?)", path)
    if np.any(k < 0):
        raise KernelFileError(f"kernel holds {int(np.count_nonzero(k < 0))} negative values "
                              f"(minimum {k.min():.4g}); a dose per decay is ≥ 0", path)
    centre = tuple(n // 2 for n in k.shape)
    if not k[centre] > 0 or k[centre] < k.max():
        at = np.unravel_index(int(np.argmax(k)), k.shape)
        raise KernelFileError(f"kernel maximum is at voxel (x, y, z) {tuple(int(v) for v in at[::-1])}, not at "
                              f"the centre {centre[::-1]}; the source voxel must be the centre", path)
    k.setflags(write=False)
    return k


# ---------------------------------------------------------------------------------------------------
# Interfile
# ---------------------------------------------------------------------------------------------------

def _parse_interfile(text: str) -> Dict[str, str]:
    """``key := value`` pairs; keys lower-case without ``!`` and with single spaces; first one wins."""
    keys: Dict[str, str] = {}
    for line in text.splitlines():
        if ":=" not in line:
            continue
        key, value = line.split(":=", 1)
        key = " ".join(key.strip().lstrip("!").lower().split())
        key = re.sub(r"\s*\[\s*", " [", key).replace(" ]", "]")
        keys.setdefault(key, value.strip())
    return keys


def _header_for(path: Path) -> Optional[Path]:
    for suffix in _HEADER_SUFFIXES:
        candidate = path.with_suffix(suffix)
        if candidate != path and candidate.is_file():
            return candidate
    return None


def _int_key(keys, name, header: Path) -> int:
    if name not in keys:
        raise KernelFileError(f"Interfile header has no '!{name}'", header)
    try:
        value = int(float(keys[name]))
    except ValueError as exc:
        raise KernelFileError(f"'!{name} := {keys[name]}' is not an integer", header) from exc
    return value


def _float_key(keys, name, header: Path, default: Optional[float] = None) -> Optional[float]:
    if not keys.get(name):
        return default
    try:
        return float(keys[name])
    except ValueError as exc:
        raise KernelFileError(f"'{name} := {keys[name]}' is not a number", header) from exc


def _read_interfile(header: Path, units: Optional[str], spacing_mm) -> DoseKernel:
    keys = _parse_interfile(_decode_text(header.read_bytes()))
    name = keys.get("name of data file")
    if not name:
        raise KernelFileError("Interfile header has no '!name of data file'", header)
    data = header.parent / name
    if not data.is_file() and (header.parent / Path(name.replace("\\", "/")).name).is_file():
        data = header.parent / Path(name.replace("\\", "/")).name  # header written on another machine
    if not data.is_file():
        raise KernelFileError(f"the data file {name!r} named by the header is missing ({data})", header)
    dims = int(_float_key(keys, "number of dimensions", header, 3))
    if dims != 3:
        raise KernelFileError(f"Interfile data has {dims} dimensions; a dose kernel has 3", header)
    size = [_int_key(keys, f"matrix size [{i}]", header) for i in (1, 2, 3)]  # x, y, z
    if min(size) < 1:
        raise KernelFileError(f"matrix size {size} is not positive", header)
    fmt = " ".join(keys.get("number format", "").lower().split())
    if fmt not in _INTERFILE_FORMATS:
        raise KernelFileError(f"number format {keys.get('number format')!r} is not supported "
                              f"(use {', '.join(_INTERFILE_FORMATS)})", header)
    nbytes = int(_float_key(keys, "number of bytes per pixel", header, _DEFAULT_BYTES[fmt]))
    if nbytes not in _INTERFILE_FORMATS[fmt]:
        raise KernelFileError(f"number format {fmt!r} with {nbytes} bytes per pixel is not supported", header)
    order = keys.get("imagedata byte order", "BIGENDIAN").upper()  # Interfile 3.3 default: big-endian
    if order not in ("LITTLEENDIAN", "BIGENDIAN"):
        raise KernelFileError(f"imagedata byte order {order!r} is neither LITTLEENDIAN nor BIGENDIAN", header)
    dtype = np.dtype(("<" if order == "LITTLEENDIAN" else ">") + _INTERFILE_FORMATS[fmt][nbytes] + str(nbytes))
    offset = int(_float_key(keys, "data offset in bytes", header, 0))
    expected = int(np.prod(size)) * nbytes
    available = data.stat().st_size - offset
    if available != expected:
        raise KernelFileError(f"data file {data.name} holds {available} bytes after the {offset}-byte offset, the "
                              f"header's {size[0]}×{size[1]}×{size[2]} {fmt} voxels need {expected}", header)
    raw = np.fromfile(str(data), dtype=dtype, count=int(np.prod(size)), offset=offset)
    values = raw.astype(np.float64).reshape(size[2], size[1], size[0])
    slope = _float_key(keys, "data rescale slope", header, 1.0)
    intercept = _float_key(keys, "data rescale offset", header, 0.0)
    if slope != 1.0 or intercept != 0.0:
        values = values * slope + intercept

    given = _spacing_arg(spacing_mm, header)
    in_file = [_float_key(keys, f"scaling factor (mm/pixel) [{i}]", header) for i in (1, 2, 3)]
    if given is not None:
        spacing = given
    elif any(v is None for v in in_file):
        raise KernelFileError("Interfile header lacks 'scaling factor (mm/pixel) [1..3]' (the voxel size); "
                              "give spacing_mm", header)
    elif any(not (math.isfinite(v) and v > 0) for v in in_file):
        raise KernelFileError(f"voxel size {in_file} mm is not positive", header)
    else:
        spacing = tuple(float(v) for v in in_file)
    factor, units_text = _resolve_units(keys.get("units"), units, header)
    values = _validate(values * factor, header)
    what = keys.get("data description") or header.stem
    description = (f"Interfile {what}: {size[0]}×{size[1]}×{size[2]} voxels of "
                   f"{' × '.join(f'{v:g}' for v in spacing)} mm, {units_text} in the file")
    return DoseKernel(values, spacing, str(header), description)


# ---------------------------------------------------------------------------------------------------
# Voxel S-value tables (Lanconelli et al. 2012 layout)
# ---------------------------------------------------------------------------------------------------

def _mirror(octant: np.ndarray) -> np.ndarray:
    """Full box from the octant ``[k, j, i]`` with i, j, k ≥ 0 (index 0 = source voxel)."""
    full = octant
    for axis in range(3):
        tail = np.take(full, np.arange(1, full.shape[axis]), axis=axis)
        full = np.concatenate([np.flip(tail, axis=axis), full], axis=axis)
    return full


def _read_table(path: Path, lines: Sequence[str], header_row: int, units: Optional[str],
                spacing_mm) -> DoseKernel:
    title = " ".join(line.strip() for line in lines[:header_row] if line.strip())
    unit_field = _TABLE_HEADER.match(lines[header_row]).group(1).strip()
    file_units = re.sub(r"^[\[(](.*)[\])]$", r"\1", unit_field).strip()  # "[mGy/(MBq·s)]" → "mGy/(MBq·s)"
    rows = []
    for n, line in enumerate(lines[header_row + 1:], start=header_row + 2):
        fields = re.split(r"[\s,;]+", line.strip())
        if fields == [""]:
            continue
        if len(fields) != 4:
            raise KernelFileError(f"line {n}: expected 'i j k S', got {line.strip()!r}", path)
        try:
            i, j, k = (int(f) for f in fields[:3])
            value = float(fields[3])
        except ValueError as exc:
            raise KernelFileError(f"line {n}: {line.strip()!r} is not 'i j k S' numbers", path) from exc
        if min(i, j, k) < 0:
            raise KernelFileError(f"line {n}: negative index in {line.strip()!r}; the table must hold the "
                                  "octant i, j, k ≥ 0", path)
        rows.append((i, j, k, value))
    if not rows:
        raise KernelFileError("voxel S-value table has no rows", path)
    idx = np.array([r[:3] for r in rows], dtype=np.int64)
    n_i, n_j, n_k = (int(v) + 1 for v in idx.max(axis=0))
    octant = np.full((n_k, n_j, n_i), np.nan)
    seen = np.zeros(octant.shape, dtype=np.int64)
    for (i, j, k, value) in rows:
        octant[k, j, i] = value
        seen[k, j, i] += 1
    if np.any(seen > 1):
        k, j, i = (int(v) for v in np.argwhere(seen > 1)[0])
        raise KernelFileError(f"voxel (i, j, k) = ({i}, {j}, {k}) is listed twice", path)
    if np.any(seen == 0):
        k, j, i = (int(v) for v in np.argwhere(seen == 0)[0])
        raise KernelFileError(f"the octant 0..{n_i - 1} × 0..{n_j - 1} × 0..{n_k - 1} is incomplete: voxel "
                              f"(i, j, k) = ({i}, {j}, {k}) is missing", path)

    given = _spacing_arg(spacing_mm, path)
    match = _VOXEL_MM.search(title)
    from_title = float(match.group(1).replace(",", ".")) if match else None
    if given is not None:
        if from_title is not None and any(abs(g / from_title - 1.0) > 1e-3 for g in given):
            raise KernelFileError(f"the title says {from_title:g} mm voxels, spacing_mm={list(given)} was given",
                                  path)
        spacing = given
    elif from_title is None or from_title <= 0:
        raise KernelFileError(f"no voxel size in the title line {title!r} (e.g. 'Lu177 - 4.8mm - Soft tissue'); "
                              "give spacing_mm", path)
    else:
        spacing = (from_title,) * 3
    factor, units_text = _resolve_units(file_units, units, path)
    values = _validate(_mirror(octant) * factor, path)
    nz, ny, nx = values.shape
    description = (f"voxel S-value table {title or path.stem!r}: octant mirrored to {nx}×{ny}×{nz} voxels of "
                   f"{' × '.join(f'{v:g}' for v in spacing)} mm, {units_text} in the file")
    return DoseKernel(values, spacing, str(path), description)


# ---------------------------------------------------------------------------------------------------

def read_dose_kernel(path, *, units: Optional[str] = None, spacing_mm=None) -> DoseKernel:
    """Read a dose voxel kernel (Interfile or voxel S-value table) in Gy per decay.

    Parameters
    ----------
    path : path-like
        Interfile header (``.hdr``), its data file (``.img``, the header beside it is used) or a voxel
        S-value text table; the format is recognised from the content.
    units : str, optional
        Units of the stored values (``mGy/decay``, ``Gy/decay``, ``mGy/(MBq·s)``), for files that do not
        state them; when the file states other units, an error is raised.
    spacing_mm : float or sequence of 3 floats, optional
        Voxel size (x, y, z) in mm, for files that do not state it (it wins over an Interfile header's;
        it must agree with a table title's).

    Returns
    -------
    DoseKernel

    Raises
    ------
    KernelFileError
        One line naming the file and the problem: missing file or data file, size mismatch, even sizes,
        negative/NaN values, maximum not at the centre, missing voxel size, unknown units.
    """
    p = Path(path)
    if not p.is_file():
        raise KernelFileError("dose kernel file does not exist" if not p.exists() else "is not a file", p)
    try:
        head = p.read_bytes()[:65536]
    except OSError as exc:
        raise KernelFileError(f"cannot read the dose kernel: {exc.strerror or exc}", p) from exc
    text = head.decode("latin-1").lstrip("\ufeff\xef\xbb\xbf")
    first = next((line.strip() for line in text.splitlines() if line.strip()), "")
    if first.upper().startswith("!INTERFILE"):  # (PMOD headers hold stray NUL bytes)
        return _read_interfile(p, units, spacing_mm)
    if b"\x00" not in head:
        lines = _decode_text(p.read_bytes()).splitlines()
        header_row = next((n for n, line in enumerate(lines) if _TABLE_HEADER.match(line)), None)
        if header_row is not None:
            return _read_table(p, lines, header_row, units, spacing_mm)
    header = _header_for(p)
    if header is not None and header.read_bytes()[:4096].decode("latin-1").lstrip().upper().startswith("!INTERFILE"):
        named = _parse_interfile(header.read_bytes().decode("latin-1")).get("name of data file", "")
        if Path(named.replace("\\", "/")).name != p.name:
            raise KernelFileError(f"the Interfile header beside it ({header.name}) names another data file "
                                  f"({named!r}); pass the header", p)
        return _read_interfile(header, units, spacing_mm)
    raise KernelFileError("not a dose kernel: neither an Interfile header ('!INTERFILE :=' first), nor raw data "
                          "with an Interfile .hdr beside it, nor a voxel S-value table ('i j k S [units]' line)", p)


def check_kernel_grid(kernel: DoseKernel, spacing_mm, tolerance: float = 0.01) -> None:
    """Refuse a kernel whose voxel size differs from the image's.

    Parameters
    ----------
    kernel : DoseKernel
    spacing_mm : sequence of 3 floats
        The image's voxel size (x, y, z) in mm.
    tolerance : float
        Largest relative difference per axis (default 1 %).

    Raises
    ------
    KernelFileError
        Naming the kernel file and both voxel sizes: resample the image to the kernel's voxel size (or use
        a kernel made for the image's); the kernel is never resampled silently.
    """
    image = np.asarray(spacing_mm, dtype=float).reshape(-1)
    if image.shape != (3,) or not np.all(np.isfinite(image)) or np.any(image <= 0):
        raise KernelFileError(f"image voxel size {spacing_mm!r} is not 3 positive values (mm)", kernel.source)
    own = np.asarray(kernel.spacing_mm, dtype=float)
    if np.any(np.abs(own / image - 1.0) > tolerance):
        fmt = lambda v: " × ".join(f"{x:.4g}" for x in v)  # noqa: E731
        raise KernelFileError(f"kernel voxel size {fmt(own)} mm differs from the image's {fmt(image)} mm by more "
                              f"than {100 * tolerance:g} % on an axis; resample the image to the kernel's voxel "
                              "size or use a kernel made for the image's", kernel.source)
