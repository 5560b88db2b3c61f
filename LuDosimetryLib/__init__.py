"""LuDosimetryLib: patient-specific Lu-177 dosimetry from post-therapy SPECT/CT.

Plain-Python core of the LuDosimetry 3D Slicer extension (no Qt, no Slicer application object).
Every step is a function or a small class with numpy / SimpleITK in and out:

- :mod:`LuDosimetryLib.radionuclides` — decay data (ICRP 107) and decay correction.
- :mod:`LuDosimetryLib.io` — DICOM study inventory, image reading, RTSTRUCT, RT Dose, atomic export.
- :mod:`LuDosimetryLib.vois` — contours to masks and back.
- :mod:`LuDosimetryLib.kinetics` — time-activity curve models, fits, AICc model selection, TIA.
- :mod:`LuDosimetryLib.dose` — local deposition and dose-voxel-kernel convolution, density from CT.
- :mod:`LuDosimetryLib.dvh` — cumulative DVH and per-VOI dose statistics.
- :mod:`LuDosimetryLib.phantom` — the synthetic patient with analytic truth.
- :mod:`LuDosimetryLib.pipeline` — ``run_study``: the one entry point of CLI, Slicer logic and scripts.
"""

__version__ = "0.1.0"
