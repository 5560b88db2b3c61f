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
import importlib.util
import os
import warnings
from pathlib import Path

import pytest

from LuDosimetryLib.dvh import DVHWarning, dvh_from_files

BASELINE = Path(__file__).resolve().parents[1] / "Baselines" / "dicompyler_core_dvh.csv"


def _baseline_maker():
    """``benchmarks/make_dicompyler_baseline.py``, which made the baseline: one fetcher serves both."""
    path = Path(__file__).resolve().parents[2] / "benchmarks" / "make_dicompyler_baseline.py"
    spec = importlib.util.spec_from_file_location("make_dicompyler_baseline", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


MAKER = _baseline_maker()
FILES = MAKER.MEMBERS


@pytest.fixture(scope="module")
def example_data() -> Path:
    configured = os.environ.get("LUDOSIM_DICOMPYLER_EXAMPLE_DIR")
    if configured:
        folder = Path(configured)
        if not MAKER.has_example_data(folder):
            pytest.fail(f"LUDOSIM_DICOMPYLER_EXAMPLE_DIR={folder} lacks the dicompyler-core 0.5.6 rtdose.dcm/rtss.dcm")
        return folder
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "ludosimetry-test-data" / \
        "dicompyler-core-0.5.6"
    if not MAKER.has_example_data(cache):
        try:
            MAKER.fetch_example_data(cache)
        except Exception as exc:  # no network, no pip: nothing to compare against
            pytest.skip(f"dicompyler-core 0.5.6 example data unavailable ({exc.__class__.__name__}: {exc})")
    if not MAKER.has_example_data(cache):
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
