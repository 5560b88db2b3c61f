"""Python packages LuDosimetryLib needs, for the Slicer module's first-run installer.

Plain standard library: the module reads these before any of them is installed in Slicer's Python.
"""
from __future__ import annotations

import importlib.util
import sys
from typing import List, Sequence, Tuple

#: Packages LuDosimetryLib needs at run time: (import name, pip requirement). Kept equal to
#: ``[project] dependencies`` of pyproject.toml (a test checks it).
REQUIRED_PACKAGES: Tuple[Tuple[str, str], ...] = (
    ("numpy", "numpy>=1.21"),
    ("scipy", "scipy>=1.7"),
    ("pydicom", "pydicom>=2.3"),
    ("SimpleITK", "SimpleITK>=2.2"),
    ("matplotlib", "matplotlib>=3.5"),
    ("nrrd", "pynrrd>=1.0"),
    ("icrp107_database", "icrp107-database>=0.0.3"),
)

#: The torch build for this Python: 2.13.0 has no wheel for Python 3.9 (Slicer 5.8), whose newest is 2.8.0.
TORCH_REQUIREMENT = "torch==2.8.0" if sys.version_info < (3, 10) else "torch==2.13.0"

#: Packages of the reconstruction (heavy: installed only when the user asks), in install order: torch first,
#: so that pytomography does not bring another build of it.
RECON_PACKAGES: Tuple[Tuple[str, str], ...] = (
    ("torch", TORCH_REQUIREMENT),
    ("pytomography", "pytomography>=3.4"),
)


def missing_requirements(packages: Sequence[Tuple[str, str]] = REQUIRED_PACKAGES) -> List[str]:
    """Pip requirements of the packages that cannot be imported (found without importing them)."""
    return [requirement for module_name, requirement in packages if importlib.util.find_spec(module_name) is None]
