"""Quantitative Lu-177 SPECT reconstruction from projections (PyTomography back end).

Importing this package imports neither torch nor PyTomography; they are imported lazily, only in the
reconstruction and simulation paths (:mod:`.backend`).

- :mod:`.energy` — energy windows identified by range.
- :mod:`.projections` — read NM TOMO projection files (Siemens, GE, Philips standard attributes).
- :mod:`.mumap` — HU → μ at 208 keV, write/read μ-map series.
- :mod:`.system` — geometry and the PyTomography system model.
- :mod:`.scatter` — triple/dual energy window scatter estimates.
- :mod:`.quantify` — counts → Bq/mL.
- :mod:`.reconstruct` — :class:`ReconOptions`, :func:`reconstruct_study`.

The simulated Siemens-like projection files of the digital twin, tests and benchmarks are written by
:mod:`LuDosimetryLib.phantom.projections`.
"""
from __future__ import annotations

from .reconstruct import ReconOptions, reconstruct_study  # noqa: E402  (no torch/pytomography import)

__all__ = ["ReconOptions", "reconstruct_study"]
