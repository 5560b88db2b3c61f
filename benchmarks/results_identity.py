#!/usr/bin/env python3
"""Results identity: prove that a code change leaves every number of ``ludosimetry run`` unchanged.

A restructuring (modules moved, options regrouped, Slicer logic split) must not change a single result.
This script runs the same studies through two versions of the code, BASE and HEAD, and compares their
outputs exactly: not within a tolerance, bit for bit.

What it proves
--------------
For each case below, ``ludosimetry run STUDY --out OUT --quiet [options]`` gives, with BASE and HEAD,

- ``results.json``: the same keys and the same values, numbers compared with ``==`` (NaN equal to NaN)
  and of the same JSON type (``1`` is not ``1.0``), key order ignored;
- ``dvh.csv``: the same bytes;
- ``dose_gy.nrrd``, ``tia_bq_s_per_ml.nrrd``: the same array (dtype, shape, every voxel) and header
  (geometry included), read with pynrrd;
- ``rtdose.dcm``: the same DICOM elements (pixel data included), read with pydicom;
- ``registration/``: the same files, JSON compared as ``results.json``, ``.tfm`` as bytes;
- every output file BASE writes, HEAD writes too (the plots ``dvh.png`` and ``tac.png`` are checked for
  presence only); files only HEAD writes (a new output) are listed beside the verdict, not counted as a
  difference.

Both versions read byte-identical inputs: every study is written once, by BASE's phantom code.

Cases
-----
synthetic          the built-in synthetic patient (full size, 4.8 mm SPECT), default options
synthetic-fast     the same patient with ``--fast`` (9.6 mm SPECT), default options
synthetic-gtm      synthetic, ``--pvc gtm --psf-fwhm-mm F`` with F chosen as ``ludosimetry demo`` does
                   (``image_fwhm_mm`` of the phantom's FWHM and SPECT voxel, rounded to 0.1 mm: 10.5)
patient4           digital twin ``phantom --preset patient4 --fast --no-projections``, default options
patient6           the same with ``--preset patient6``
registered         patient4 with ``--registration rigid --vois reference-only``
ldm-voxel          synthetic with ``--dose-method ldm --tia-map voxel``
reduced-hanscheid  synthetic with ``--time-points 3 --reference-time-point 3 --reduced-method hanscheid``
                   (Hänscheid is a one-point method: BASE refuses ``--time-points 2,3`` with it, and the
                   reference time point must be one of the time points used)
reduced-2tp        synthetic with ``--time-points 2,3 --reference-time-point 2`` (population prior)

Excluded from the comparison (the run-to-run noise)
---------------------------------------------------
Found by running BASE twice on the same input (``--head <BASE rev>``); only these differ:

- ``results.json``: nothing excluded. Its UIDs (``time_points[].spect_series_uid``) are the input
  series' and its times (``injection_time``, ``acquisition_time``) the study's, identical between runs.
- ``registration/*/registration.json``: the key ``seconds`` (wall time of the registration).
- ``rtdose.dcm``: the elements generated per run: ``SOPInstanceUID``, ``MediaStorageSOPInstanceUID``
  and ``SeriesInstanceUID`` (new random ``2.25.`` UIDs each run), ``FileMetaInformationGroupLength``
  (the file meta's byte count, which follows the length of the random MediaStorageSOPInstanceUID:
  186 or 188 seen), ``InstanceCreationDate``/``Time`` and ``ContentDate``/``Time`` (the clock at
  writing; the dates only differ across midnight).

Every run has ``ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS=1``: ITK's multi-threaded metric makes the rigid
registration differ between two runs of the same code (about 1e-4 relative in the TIAs); on one thread
it is reproducible to the bit. The other cases are reproducible either way.

How the two versions are isolated
---------------------------------
BASE (default ``bc938fb``, the last commit before the restructuring) is extracted with
``git archive REV | tar -x``: no worktree, no index change. HEAD is the working tree itself (default,
``--head worktree``) or another rev extracted the same way. Each run is a subprocess
``python3 -m LuDosimetryLib.cli run ...`` with the tree first on ``PYTHONPATH``, from a folder outside
both trees, so the editable install of the repository cannot shadow the BASE copy; the script prints
``LuDosimetryLib.__file__`` as seen by each tree's interpreter, and stops if it is not inside that tree.

Usage
-----
    python3 benchmarks/results_identity.py [--base REV] [--head REV|worktree] [--cases a,b,...]
                                           [--keep DIR]

``--head bc938fb`` (BASE against itself) checks the comparison and the exclusions. ``--keep DIR`` keeps
the studies and outputs in DIR (default: a temporary folder, deleted at the end). About 6 minutes on
2 cores with all cases, half of it the two registered runs.

Prints one line per case, ``<case>  identical`` or ``<case>  DIFFERENT: <first differences>``, each
with the seconds of the BASE and HEAD runs, then ``N cases, N identical, N different``. Exit status:
0 all identical, 1 some case differs (a HEAD run that fails counts as different), 2 setup failure
(one line on stderr).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

REPO = Path(__file__).resolve().parent.parent
DEFAULT_BASE = "bc938fb"
WORKTREE = "worktree"
RUN_TIMEOUT_S = 900
MAX_SHOWN = 4

# Study name -> arguments of `ludosimetry phantom DIR ...` (written once, with BASE's code).
STUDIES: Dict[str, Tuple[str, ...]] = {
    "synthetic": (),
    "synthetic-fast": ("--fast",),
    "patient4": ("--preset", "patient4", "--fast", "--no-projections"),
    "patient6": ("--preset", "patient6", "--fast", "--no-projections"),
}


@dataclass(frozen=True)
class Case:
    name: str
    study: str
    options: Tuple[str, ...] = ()  # "{demo_psf_fwhm_mm}" is replaced by the demo's PSF for the study


CASES: Tuple[Case, ...] = (
    Case("synthetic", "synthetic"),
    Case("synthetic-fast", "synthetic-fast"),
    Case("synthetic-gtm", "synthetic", ("--pvc", "gtm", "--psf-fwhm-mm", "{demo_psf_fwhm_mm}")),
    Case("patient4", "patient4"),
    Case("patient6", "patient6"),
    Case("registered", "patient4", ("--registration", "rigid", "--vois", "reference-only")),
    Case("ldm-voxel", "synthetic", ("--dose-method", "ldm", "--tia-map", "voxel")),
    Case("reduced-hanscheid", "synthetic",
         ("--time-points", "3", "--reference-time-point", "3", "--reduced-method", "hanscheid")),
    Case("reduced-2tp", "synthetic", ("--time-points", "2,3", "--reference-time-point", "2")),
)

# Run-to-run noise (see the module docstring). JSON: last key of the flattened path, per file name.
JSON_IGNORED: Dict[str, frozenset] = {
    "results.json": frozenset(),
    "registration.json": frozenset({"seconds"}),
}
DICOM_IGNORED = frozenset({"SOPInstanceUID", "MediaStorageSOPInstanceUID", "FileMetaInformationGroupLength",
                           "SeriesInstanceUID", "InstanceCreationDate", "InstanceCreationTime", "ContentDate",
                           "ContentTime"})
PRESENCE_ONLY_SUFFIXES = (".png",)

# The PSF `ludosimetry demo` (BASE's cmd_demo) passes to --pvc gtm, from the study's truth.json.
_DEMO_PSF_CODE = """\
import json, sys
from LuDosimetryLib.pvc import image_fwhm_mm
sim = json.load(open(sys.argv[1]))["simulation"]
voxel = sum(sim["spect_spacing_mm"]) / 3.0
print(round(image_fwhm_mm(float(sim["fwhm_mm"]), voxel), 1))
"""
_WHERE_CODE = "import LuDosimetryLib, LuDosimetryLib.cli; print(LuDosimetryLib.__file__)"


class SetupError(Exception):
    """Something other than a HEAD run failed: no comparison is possible."""


class _Missing:
    def __repr__(self) -> str:
        return "<missing>"


MISSING = _Missing()


# ---------------------------------------------------------------------------------------------------------
# Pure comparison functions
# ---------------------------------------------------------------------------------------------------------

def flatten_json(obj, prefix: str = "") -> Dict[str, object]:
    """``{"a": {"b": [1, 2]}}`` -> ``{"a.b[0]": 1, "a.b[1]": 2}``; empty containers are leaves."""
    if isinstance(obj, dict) and obj:
        out: Dict[str, object] = {}
        for key, value in obj.items():
            out.update(flatten_json(value, f"{prefix}.{key}" if prefix else str(key)))
        return out
    if isinstance(obj, list) and obj:
        out = {}
        for i, value in enumerate(obj):
            out.update(flatten_json(value, f"{prefix}[{i}]"))
        return out
    return {prefix: obj}


def last_key(path: str) -> str:
    """``"vois.Liver.activity_bq[1]"`` -> ``"activity_bq"``."""
    return path.split(".")[-1].split("[")[0]


def same_value(a, b) -> bool:
    """Exact equality of two leaves: same type, ``==``, NaN equal to NaN."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float) and math.isnan(a) and math.isnan(b):
        return True
    return a == b


def compare_results(a, b, ignored: frozenset = frozenset()) -> List[Tuple[str, object, object]]:
    """Differing leaves ``(path, a_value, b_value)`` of two JSON documents; keys in ``ignored`` skipped."""
    fa, fb = flatten_json(a), flatten_json(b)
    keys = list(fa) + [k for k in fb if k not in fa]
    return [(k, fa.get(k, MISSING), fb.get(k, MISSING)) for k in keys
            if last_key(k) not in ignored and not same_value(fa.get(k, MISSING), fb.get(k, MISSING))]


def same_array(a, b) -> bool:
    """Same dtype, shape and values (NaN equal to NaN)."""
    import numpy as np
    a, b = np.asarray(a), np.asarray(b)
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    nan_ok = a.dtype.kind in "fc"
    return bool(np.array_equal(a, b, equal_nan=nan_ok))


def compare_headers(a: dict, b: dict) -> List[Tuple[str, object, object]]:
    """Differing entries of two NRRD headers (numpy arrays compared with :func:`same_array`)."""
    import numpy as np
    out = []
    for key in list(a) + [k for k in b if k not in a]:
        va, vb = a.get(key, MISSING), b.get(key, MISSING)
        if isinstance(va, np.ndarray) or isinstance(vb, np.ndarray):
            equal = isinstance(va, np.ndarray) and isinstance(vb, np.ndarray) and same_array(va, vb)
        else:
            equal = va == vb
        if not equal:
            out.append((key, va, vb))
    return out


def describe_array_difference(a, b) -> str:
    import numpy as np
    a, b = np.asarray(a), np.asarray(b)
    if a.dtype != b.dtype or a.shape != b.shape:
        return f"array {a.dtype}{a.shape} != {b.dtype}{b.shape}"
    differ = ~((a == b) | (np.isnan(a) & np.isnan(b))) if a.dtype.kind in "fc" else a != b
    delta = np.abs(a[differ].astype(np.float64) - b[differ].astype(np.float64))
    return f"{int(differ.sum())} of {a.size} voxels differ (max |diff| {np.nanmax(delta):.6g})"


def flatten_dicom(ds, prefix: str = "") -> Dict[str, object]:
    """Every element of a pydicom dataset as ``{"Seq[0].Keyword": str(value) or bytes}``."""
    out: Dict[str, object] = {}
    for elem in ds:
        name = prefix + (elem.keyword or str(elem.tag))
        if elem.VR == "SQ":
            for i, item in enumerate(elem.value):
                out.update(flatten_dicom(item, f"{name}[{i}]."))
        else:
            out[name] = elem.value if isinstance(elem.value, bytes) else str(elem.value)
    return out


def _short(value, width: int = 60) -> str:
    text = f"<{len(value)} bytes>" if isinstance(value, bytes) else repr(value)
    return text if len(text) <= width else text[:width - 3] + "..."


def _leaf_differences(rel: str, diffs: Sequence[Tuple[str, object, object]]) -> List[str]:
    return [f"{rel}:{key}: {_short(va)} != {_short(vb)}" for key, va, vb in diffs]


# ---------------------------------------------------------------------------------------------------------
# Output files
# ---------------------------------------------------------------------------------------------------------

def compare_file(rel: str, a: Path, b: Path) -> List[str]:
    """Differences of one output file present in both runs (one string each)."""
    if rel.endswith(PRESENCE_ONLY_SUFFIXES):
        return []
    if rel.endswith(".json"):
        ignored = JSON_IGNORED.get(Path(rel).name, frozenset())
        return _leaf_differences(rel, compare_results(json.loads(a.read_text()), json.loads(b.read_text()),
                                                      ignored))
    if rel.endswith(".nrrd"):
        import nrrd
        da, ha = nrrd.read(str(a))
        db, hb = nrrd.read(str(b))
        out = _leaf_differences(rel, compare_headers(ha, hb))
        if not same_array(da, db):
            out.append(f"{rel}: {describe_array_difference(da, db)}")
        return out
    if rel.endswith(".dcm"):
        import pydicom
        fa, fb = (flatten_dicom(d.file_meta) | flatten_dicom(d) for d in (pydicom.dcmread(a), pydicom.dcmread(b)))
        return _leaf_differences(rel, compare_results(fa, fb, DICOM_IGNORED))  # flat: keys kept as they are
    if a.read_bytes() != b.read_bytes():
        return [f"{rel}: bytes differ"]
    return []


def output_files(folder: Path) -> List[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


def compare_outputs(a: Path, b: Path) -> Tuple[List[str], List[str]]:
    """``(differences, added)`` between two ``ludosimetry run`` output folders: every difference of the files
    BASE writes (``results.json`` first; a file HEAD no longer writes is one), and the files only HEAD writes
    (a new output changes no number BASE gave: listed, not counted as a difference)."""
    files_a, files_b = output_files(a), output_files(b)
    out = [f"{rel}: only in base" for rel in files_a if rel not in files_b]
    added = [rel for rel in files_b if rel not in files_a]
    common = sorted(set(files_a) & set(files_b), key=lambda rel: (rel != "results.json", rel))
    for rel in common:
        out += compare_file(rel, a / rel, b / rel)
    return out, added


# ---------------------------------------------------------------------------------------------------------
# Trees and subprocesses
# ---------------------------------------------------------------------------------------------------------

def git(*args: str) -> str:
    proc = subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True)
    if proc.returncode:
        raise SetupError(f"git {' '.join(args)}: {proc.stderr.strip() or proc.returncode}")
    return proc.stdout.strip()


def archive(rev: str, dest: Path) -> str:
    """Extract ``rev`` into ``dest`` with ``git archive | tar -x``; returns the short commit id."""
    commit = git("rev-parse", "--short", "--verify", f"{rev}^{{commit}}")
    dest.mkdir(parents=True)
    producer = subprocess.Popen(["git", "-C", str(REPO), "archive", commit], stdout=subprocess.PIPE)
    tar = subprocess.run(["tar", "-x", "-C", str(dest)], stdin=producer.stdout, capture_output=True)
    producer.stdout.close()
    if producer.wait() or tar.returncode:
        raise SetupError(f"git archive {commit} | tar -x -C {dest} failed: {tar.stderr.decode().strip()}")
    return commit


def tree_env(tree: Path) -> Dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(tree)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    env["PYTHONDONTWRITEBYTECODE"] = "1"  # no __pycache__ in the trees (the working tree is someone's)
    env["MPLBACKEND"] = "Agg"
    env["ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"] = "1"  # reproducible registration (see the docstring)
    return env


def python(tree: Path, args: Sequence[str], cwd: Path) -> subprocess.CompletedProcess:
    """``python3 args...`` with ``tree`` first on PYTHONPATH, run from ``cwd`` (outside the trees)."""
    try:
        return subprocess.run([sys.executable, *args], cwd=cwd, env=tree_env(tree), capture_output=True,
                              text=True, timeout=RUN_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        return subprocess.CompletedProcess(args, 124, "", f"timed out after {RUN_TIMEOUT_S} s")


def last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1].strip() if lines else ""


def package_location(label: str, tree: Path, cwd: Path) -> str:
    """``LuDosimetryLib.__file__`` as the tree's subprocesses import it; must be inside ``tree``."""
    proc = python(tree, ["-c", _WHERE_CODE], cwd)
    if proc.returncode:
        raise SetupError(f"{label} tree: import LuDosimetryLib.cli failed: {last_line(proc.stderr)}")
    where = Path(proc.stdout.strip()).resolve()
    if tree.resolve() not in where.parents:
        raise SetupError(f"{label} tree: LuDosimetryLib imported from {where}, not from {tree}")
    return str(where)


def write_study(base: Path, name: str, dest: Path, cwd: Path) -> Path:
    """Write study ``name`` with BASE's phantom code; returns the study folder (the one with truth.json)."""
    proc = python(base, ["-m", "LuDosimetryLib.cli", "phantom", str(dest), *STUDIES[name], "--quiet"], cwd)
    if proc.returncode:
        raise SetupError(f"phantom {name} failed (exit {proc.returncode}): {last_line(proc.stderr)}")
    found = sorted(p.parent for p in dest.rglob("truth.json"))
    if len(found) != 1:
        raise SetupError(f"phantom {name}: expected one truth.json under {dest}, found {len(found)}")
    return found[0]


def demo_psf_fwhm_mm(base: Path, study: Path, cwd: Path) -> str:
    proc = python(base, ["-c", _DEMO_PSF_CODE, str(study / "truth.json")], cwd)
    if proc.returncode:
        raise SetupError(f"demo PSF of {study}: {last_line(proc.stderr)}")
    return proc.stdout.strip()


def run_case(tree: Path, study: Path, options: Sequence[str], out: Path, cwd: Path):
    """``ludosimetry run`` with one tree: (completed process, seconds)."""
    t0 = time.monotonic()
    proc = python(tree, ["-m", "LuDosimetryLib.cli", "run", str(study), "--out", str(out), "--quiet",
                         *options], cwd)
    return proc, time.monotonic() - t0


def case_verdict(differences: Sequence[str]) -> str:
    if not differences:
        return "identical"
    more = f"; ... (+{len(differences) - MAX_SHOWN} more)" if len(differences) > MAX_SHOWN else ""
    return "DIFFERENT: " + "; ".join(differences[:MAX_SHOWN]) + more


# ---------------------------------------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------------------------------------

def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--base", default=DEFAULT_BASE, help=f"reference rev (default {DEFAULT_BASE})")
    p.add_argument("--head", default=WORKTREE, help="rev to compare, or 'worktree' (default): the working tree")
    p.add_argument("--cases", help="comma-separated subset of: " + ",".join(c.name for c in CASES))
    p.add_argument("--keep", metavar="DIR", help="keep studies and outputs in DIR (must not exist or be empty)")
    return p.parse_args(argv)


def select_cases(text: Optional[str]) -> List[Case]:
    if not text:
        return list(CASES)
    wanted = [w.strip() for w in text.split(",") if w.strip()]
    known = {c.name: c for c in CASES}
    unknown = [w for w in wanted if w not in known]
    if unknown:
        raise SetupError(f"unknown case(s) {', '.join(unknown)}; choose from {', '.join(known)}")
    return [known[w] for w in wanted]


def workspace(keep: Optional[str]) -> Path:
    if keep is None:
        return Path(tempfile.mkdtemp(prefix="results-identity-"))
    work = Path(keep).resolve()
    if work == REPO or REPO in work.parents:
        raise SetupError(f"--keep {work} is inside the repository; choose a folder outside it")
    if work.exists() and any(work.iterdir()):
        raise SetupError(f"--keep {work} is not empty")
    work.mkdir(parents=True, exist_ok=True)
    return work


def compare(args: argparse.Namespace, work: Path) -> int:
    cases = select_cases(args.cases)
    cwd = work / "cwd"
    cwd.mkdir()
    base_commit = archive(args.base, work / "base")
    base = work / "base"
    if args.head == WORKTREE:
        head, head_label = REPO, f"worktree of {REPO} (HEAD {git('rev-parse', '--short', 'HEAD')})"
    else:
        head = work / "head"
        head_label = archive(args.head, head)
    print(f"base  {base_commit}: LuDosimetryLib from {package_location('base', base, cwd)}")
    print(f"head  {head_label}: LuDosimetryLib from {package_location('head', head, cwd)}")

    studies: Dict[str, Path] = {}
    for name in dict.fromkeys(c.study for c in cases):
        t0 = time.monotonic()
        (work / "studies").mkdir(exist_ok=True)
        studies[name] = write_study(base, name, work / "studies" / name, cwd)
        print(f"study {name:<16} written by base in {time.monotonic() - t0:5.1f} s: {studies[name]}")

    psf: Dict[str, str] = {}
    n_diff = 0
    t_all = time.monotonic()
    for case in cases:
        study = studies[case.study]
        if any("{demo_psf_fwhm_mm}" in o for o in case.options) and case.study not in psf:
            psf[case.study] = demo_psf_fwhm_mm(base, study, cwd)
        options = [o.format(demo_psf_fwhm_mm=psf.get(case.study)) for o in case.options]
        outs = {side: work / "runs" / case.name / side for side in ("base", "head")}
        outs["base"].parent.mkdir(parents=True)
        proc_b, t_b = run_case(base, study, options, outs["base"], cwd)
        if proc_b.returncode:
            raise SetupError(f"case {case.name}: base run failed (exit {proc_b.returncode}): "
                             f"{last_line(proc_b.stderr)}")
        proc_h, t_h = run_case(head, study, options, outs["head"], cwd)
        added: List[str] = []
        if proc_h.returncode:
            differences = [f"head run failed (exit {proc_h.returncode}): {last_line(proc_h.stderr)}"]
        else:
            differences, added = compare_outputs(outs["base"], outs["head"])
        n_diff += bool(differences)
        also = f" (head also writes {', '.join(added)})" if added else ""
        print(f"{case.name:<18} {case_verdict(differences)}{also}  (base {t_b:.1f} s, head {t_h:.1f} s"
              f"{'; ' + ' '.join(options) if options else ''})", flush=True)
    print(f"{len(cases)} cases, {len(cases) - n_diff} identical, {n_diff} different "
          f"(runs {time.monotonic() - t_all:.0f} s)")
    return 1 if n_diff else 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    work = None
    try:
        work = workspace(args.keep)
        return compare(args, work)
    except SetupError as exc:
        print(f"results_identity: setup failure: {exc}", file=sys.stderr)
        return 2
    finally:
        if work is not None and args.keep is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
