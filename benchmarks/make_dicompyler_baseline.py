"""Per-ROI DVH numbers from dicompyler-core, the independent reference for ``dvh_from_files``.

Runs in its own virtual environment (dicompyler-core needs pydicom < 3; LuDosimetryLib is not imported)::

    python3 -m venv /tmp/dcvenv
    /tmp/dcvenv/bin/pip install 'pydicom<3' dicompyler-core==0.5.6
    /tmp/dcvenv/bin/python benchmarks/make_dicompyler_baseline.py \\
        --out Testing/Baselines/dicompyler_core_dvh.csv

Input: the RT Dose + RTSTRUCT pair ``tests/testdata/example_data/{rtdose,rtss}.dcm`` shipped in the
dicompyler-core 0.5.6 source distribution on PyPI (a breast plan, BSD licence). The script fetches that sdist
with ``pip download`` (or takes ``--data-dir`` pointing at the two files), checks the SHA-256 of the archive
and of both files, and runs ``dicompylercore.dvhcalc.get_dvh`` with its defaults for every ROI: structures
rasterised on the dose grid planes (matplotlib path, voxel centres), no in-plane or between-plane
interpolation, 0.01 Gy bins, volume from contour areas x structure plane thickness including parts outside
the dose grid (``calculate_full_volume=True``).

Output columns: roi, roi_number, volume_cc, mean_gy, min_gy, max_gy, d2_gy, d50_gy, d98_gy, plus the
versions and file hashes in ``#`` comment lines at the top.
(pydicom's own test files rtdose.dcm / rtstruct.dcm cannot be used: their frames of reference differ,
the dose is RELATIVE and the structures lie outside the dose grid.)
"""
from __future__ import annotations

import argparse
import csv
import hashlib
import os
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

SDIST = "dicompyler-core-0.5.6.tar.gz"
SDIST_SHA256 = "0e3c05920a8fa3f1c0ff05a5c21dab3ff3f735e00012b69b38926b219d07faee"
MEMBERS = {
    "rtdose.dcm": "a78d4d7723e280b1baf8153a43583fda384a681428eca306b53ada37ef7d3123",
    "rtss.dcm": "8fe3e3a20d1acf911f5c284dc40288d46f97acd43e4a63753cd6e3e1dac398cb",
}


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def has_example_data(folder: Path) -> bool:
    """Whether ``folder`` holds both files with their dicompyler-core 0.5.6 SHA-256."""
    return all((folder / name).is_file() and sha256(folder / name) == digest for name, digest in MEMBERS.items())


def fetch_example_data(target: Path) -> Path:
    """Download the sdist with pip, verify it and extract the two files into ``target`` (each atomically).

    Raises RuntimeError when the sdist's SHA-256 is not the expected one (subprocess errors when pip fails).
    """
    target.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", ":all:",
                        "dicompyler-core==0.5.6", "-d", tmp], check=True, timeout=300,
                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        archive = Path(tmp) / SDIST
        if sha256(archive) != SDIST_SHA256:
            raise RuntimeError(f"{archive}: unexpected SHA-256")
        with tarfile.open(archive) as tar:
            for name in MEMBERS:
                member = tar.getmember(f"dicompyler-core-0.5.6/tests/testdata/example_data/{name}")
                partial = target / (".part_" + name)
                with tar.extractfile(member) as src, open(partial, "wb") as dst:
                    dst.write(src.read())
                os.replace(partial, target / name)
    return target


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", type=Path, help="folder with rtdose.dcm and rtss.dcm (else downloaded)")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()

    import dicompylercore
    import numpy
    import pydicom
    from dicompylercore import dicomparser, dvhcalc

    try:
        data = args.data_dir or fetch_example_data(Path(tempfile.mkdtemp(prefix="dicompyler_example_")))
    except RuntimeError as exc:
        raise SystemExit(str(exc))
    for name, expected in MEMBERS.items():
        if sha256(data / name) != expected:
            raise SystemExit(f"{data / name}: SHA-256 differs from the dicompyler-core 0.5.6 file")
    dose, rtss = data / "rtdose.dcm", data / "rtss.dcm"

    structures = dicomparser.DicomParser(str(rtss)).GetStructures()
    rows = []
    for number, structure in sorted(structures.items()):
        if structure.get("type") == "MARKER":
            continue
        result = dvhcalc.get_dvh(str(rtss), str(dose), number)
        if result.volume == 0:
            rows.append([structure["name"], number, 0, "", "", "", "", "", ""])
            continue
        rows.append([structure["name"], number, f"{result.volume:.4f}", f"{result.mean:.5f}", f"{result.min:.2f}",
                     f"{result.max:.2f}", f"{float(result.D2.value):.2f}", f"{float(result.D50.value):.2f}",
                     f"{float(result.D98.value):.2f}"])

    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_name(".tmp_" + args.out.name)
    with open(tmp, "w", newline="") as handle:
        handle.write(f"# dicompyler-core {dicompylercore.__version__}, pydicom {pydicom.__version__}, "
                     f"numpy {numpy.__version__}, Python {sys.version.split()[0]}\n")
        handle.write("# get_dvh defaults (no interpolation, 0.01 Gy bins, calculate_full_volume=True)\n")
        for name, digest in MEMBERS.items():
            handle.write(f"# {SDIST} tests/testdata/example_data/{name} sha256 {digest}\n")
        writer = csv.writer(handle)
        writer.writerow(["roi", "roi_number", "volume_cc", "mean_gy", "min_gy", "max_gy", "d2_gy", "d50_gy",
                         "d98_gy"])
        writer.writerows(rows)
    os.replace(tmp, args.out)
    print(f"wrote {args.out} ({len(rows)} ROIs)")


if __name__ == "__main__":
    main()
