"""``dvh_from_files`` against dicompyler-core on a public RT Dose + RTSTRUCT pair.

The pair is ``tests/testdata/example_data/{rtdose,rtss}.dcm`` of the dicompyler-core 0.5.6 source distribution
on PyPI (a breast plan: 129 x 194 x 98 dose grid, 2.5 x 2.5 x 3 mm, 10 ROIs). The reference numbers in
``Testing/Baselines/dicompyler_core_dvh.csv`` were produced by ``benchmarks/make_dicompyler_baseline.py``
(see ``Testing/Baselines/README.md``). The files are taken from ``$LUDOSIM_DICOMPYLER_EXAMPLE_DIR`` when set,
else from a per-user cache, else fetched once with ``pip download``; the test is skipped when none works.

dicompyler-core conventions (0.5.6 defaults), which decide what is comparable:
- structures are rasterised on the dose-grid planes by voxel centre (matplotlib path), no interpolation;
  our default (``supersample=1``) uses the same voxel-centre rule, so volumes agree closely;
- doses are histogrammed in 0.01 Gy bins: its mean uses bin centres (error <= 0.005 Gy), its min / max
  are the upper edges of the lowest / highest occupied bin, and its Dx is the dose bin whose cumulative
  volume is nearest to x % (no interpolation): Dx is only comparable for ROIs of many voxels.
"""
from __future__ import annotations

import csv
import hashlib
import os
import subprocess
import sys
import tarfile
import tempfile
import warnings
from pathlib import Path

import pytest

from LuDosimetryLib.dvh import DVHWarning, dvh_from_files

BASELINE = Path(__file__).resolve().parents[1] / "Baselines" / "dicompyler_core_dvh.csv"
SDIST = "dicompyler-core-0.5.6.tar.gz"
SDIST_SHA256 = "0e3c05920a8fa3f1c0ff05a5c21dab3ff3f735e00012b69b38926b219d07faee"
FILES = {
    "rtdose.dcm": "a78d4d7723e280b1baf8153a43583fda384a681428eca306b53ada37ef7d3123",
    "rtss.dcm": "8fe3e3a20d1acf911f5c284dc40288d46f97acd43e4a63753cd6e3e1dac398cb",
}


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _complete(folder: Path) -> bool:
    return all((folder / name).is_file() and _sha256(folder / name) == digest for name, digest in FILES.items())


def _fetch(folder: Path) -> None:
    """pip-download the sdist, check it, and extract the two files into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", ":all:",
                        "dicompyler-core==0.5.6", "-d", tmp], check=True, timeout=300,
                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        archive = Path(tmp) / SDIST
        if _sha256(archive) != SDIST_SHA256:
            raise RuntimeError(f"{archive}: unexpected SHA-256")
        with tarfile.open(archive) as tar:
            for name in FILES:
                member = tar.getmember(f"dicompyler-core-0.5.6/tests/testdata/example_data/{name}")
                source = tar.extractfile(member)
                partial = folder / (".part_" + name)
                with source, open(partial, "wb") as target:
                    target.write(source.read())
                os.replace(partial, folder / name)


@pytest.fixture(scope="module")
def example_data() -> Path:
    configured = os.environ.get("LUDOSIM_DICOMPYLER_EXAMPLE_DIR")
    if configured:
        folder = Path(configured)
        if not _complete(folder):
            pytest.fail(f"LUDOSIM_DICOMPYLER_EXAMPLE_DIR={folder} lacks the dicompyler-core 0.5.6 rtdose.dcm/rtss.dcm")
        return folder
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "ludosimetry-test-data" / \
        "dicompyler-core-0.5.6"
    if not _complete(cache):
        try:
            _fetch(cache)
        except Exception as exc:  # no network, no pip: nothing to compare against
            pytest.skip(f"dicompyler-core 0.5.6 example data unavailable ({exc.__class__.__name__}: {exc})")
    if not _complete(cache):
        pytest.skip(f"{cache}: dicompyler-core example data incomplete")
    return cache


def _baseline():
    with open(BASELINE, newline="") as handle:
        lines = [line for line in handle if not line.startswith("#")]
    return {row["roi"]: row for row in csv.DictReader(lines)}


def test_baseline_names_the_same_files():
    text = BASELINE.read_text()
    for digest in FILES.values():
        assert digest in text


def test_matches_dicompyler_core(example_data):
    reference = _baseline()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        stats, dvhs = dvh_from_files(example_data / "rtdose.dcm", example_data / "rtss.dcm")
    dvh_warnings = [str(w.message) for w in caught if issubclass(w.category, DVHWarning)]
    clipped = {name for name in reference if any(f"ROI {name!r} extends beyond" in m for m in dvh_warnings)}
    skipped = {name for name in reference if any(f"ROI {name!r} skipped" in m for m in dvh_warnings)}
    # Areola has no contours: dicompyler-core gives it volume 0, we skip it with a warning.
    assert skipped == {"Areola"} and float(reference["Areola"]["volume_cc"]) == 0
    assert clipped == set()  # every other ROI of this plan lies within the dose grid
    compared = [name for name in reference if name not in skipped | clipped]
    assert len(compared) == 9

    report = []
    for name in compared:
        ours, theirs = stats[name], reference[name]
        mean_ref = float(theirs["mean_gy"])
        report.append(f"{name}: mean {ours['mean_dose_gy']:.4f} vs {mean_ref:.4f} Gy, volume "
                      f"{ours['volume_ml']:.3f} vs {float(theirs['volume_cc']):.3f} mL")
        assert ours["mean_dose_gy"] == pytest.approx(mean_ref, rel=0.01), report[-1]
        assert ours["volume_ml"] == pytest.approx(float(theirs["volume_cc"]), rel=0.01), report[-1]
        # its min / max are the upper edges of 0.01 Gy bins
        for key, column in (("max_dose_gy", "max_gy"), ("min_dose_gy", "min_gy")):
            assert float(theirs[column]) - 0.0101 <= ours[key] <= float(theirs[column]) + 1e-4, (name, key)
        if ours["volume_ml"] >= 10.0:  # Dx without interpolation is only comparable on many voxels
            for key, column in (("d2_gy", "d2_gy"), ("d50_gy", "d50_gy"), ("d98_gy", "d98_gy")):
                assert ours[key] == pytest.approx(float(theirs[column]), abs=0.02, rel=0.005), (name, key)
        edges, volume = dvhs[name]
        assert volume[0] == pytest.approx(ours["volume_ml"])
    print("\n".join(report))
