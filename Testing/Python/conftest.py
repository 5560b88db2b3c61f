"""Shared pytest fixtures for the LuDosimetryLib suite."""
from __future__ import annotations

import shutil

import pytest


def require_tool(name: str) -> str:
    """Path of an external program, or skip the test when it is absent (``.ci/run`` installs them)."""
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} is not installed (Debian package; .ci/run installs it)")
    return path
