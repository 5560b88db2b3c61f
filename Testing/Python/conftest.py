"""Shared pytest fixtures for the LuDosimetryLib suite."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest


def _file_tree(root: Path) -> dict:
    """``{relative path: (size, mtime_ns)}`` of every file below ``root``."""
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="session")
def synthetic_study(tmp_path_factory) -> Path:
    """The fast synthetic patient (seed 0), written once for the whole test session.

    Read-only: tests only read it (a test that changes files works on a copy, :func:`synthetic_study_copy`).
    Its teardown fails when a test changed, added or removed a file of it.
    """
    from LuDosimetryLib.phantom import write_synthetic_patient

    study = Path(write_synthetic_patient(tmp_path_factory.mktemp("synthetic") / "study", seed=0, fast=True))
    written = _file_tree(study)
    yield study
    now = _file_tree(study)
    differing = sorted(name for name in set(now) | set(written) if now.get(name) != written.get(name))
    assert not differing, ("a test changed the shared synthetic study (a test that changes files must use "
                           "synthetic_study_copy): " + ", ".join(differing[:5]))


@pytest.fixture
def synthetic_study_copy(synthetic_study, tmp_path) -> Path:
    """A copy of :func:`synthetic_study` that a test may change."""
    return Path(shutil.copytree(str(synthetic_study), str(tmp_path / "study")))


def require_tool(name: str) -> str:
    """Path of an external program, or skip the test when it is absent (``.ci/run`` installs them)."""
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} is not installed (Debian package; .ci/run installs it)")
    return path


def voxel_centres_mm(reference):
    """LPS coordinates (mm) of the voxel centres of a SimpleITK image, array (z, y, x, 3)."""
    from LuDosimetryLib import vois
    nx, ny, nz = reference.GetSize()
    k, j, i = np.indices((nz, ny, nx), dtype=np.float64)
    index = np.stack([i, j, k], axis=-1).reshape(-1, 3)
    return vois.index_to_physical(index, reference).reshape(nz, ny, nx, 3)


def in_plane_coverage(inside, reference, n=4):
    """Fraction of each voxel's n × n in-plane sub-samples (on the slice plane) where ``inside(points_mm)``.

    The reference the contours of an RTSTRUCT are rasterised on: float32 (z, y, x) in [0, 1].
    """
    from LuDosimetryLib import vois
    nx, ny, nz = reference.GetSize()
    offsets = (np.arange(n) + 0.5) / n - 0.5
    k, j, i = np.indices((nz, ny, nx), dtype=np.float64)
    total = np.zeros((nz, ny, nx))
    for dy in offsets:
        for dx in offsets:
            index = np.stack([i + dx, j + dy, k], axis=-1).reshape(-1, 3)
            total += inside(vois.index_to_physical(index, reference)).reshape(nz, ny, nx)
    return (total / (n * n)).astype(np.float32)
