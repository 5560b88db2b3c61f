"""The synthetic patient and the digital twin of the published collection.

:func:`write_synthetic_patient` writes a 4-time-point Lu-177 DOTATATE study (like patient 4 of the
published collection) whose activities, time-integrated activities and doses are known exactly.
:func:`write_twin` writes one patient of the University of Michigan collection (``patient4`` /
``patient6``) as its six works (pre-therapy PET/CT and CT, planar whole body, SPECT/CT, VOIs with masks,
TIA map, projections when the simulator is available) with truth.

Their files are written by the vendor-like writers of :mod:`.dicom` (CT and PT slices, planar views,
PET, SEG, TIA map) and :mod:`.projections` (simulated SPECT projections), with the camera's equipment
(:mod:`.dicom.vendor`).
"""
from __future__ import annotations

from .study import write_synthetic_patient
from .twin import write_twin

__all__ = ["write_synthetic_patient", "write_twin"]
