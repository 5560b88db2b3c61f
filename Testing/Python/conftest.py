"""Shared pytest fixtures for the LuDosimetryLib suite."""
from __future__ import annotations

import shutil

import numpy as np
import pytest


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
