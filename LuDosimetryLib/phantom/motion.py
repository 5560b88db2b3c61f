"""Patient motion between imaging sessions: a rigid transform plus a breathing-like deformation.

Each time point has a :class:`Motion` that maps a point ``p`` of the scanner frame (DICOM LPS, mm) of that
session to the point ``q`` of the anatomy (:func:`~.anatomy.default_anatomy` frame) found there:

    r = c + Rᵀ (p − c − t)          (undo the rigid pose: rotation R about the pivot c, then shift t)
    q = r − u(r)                    (undo the breathing-like displacement u)

with u(r) = a · w(r) · (0, 0.3, 1): a cranio-caudal (and slightly antero-posterior) shift of amplitude
``a`` (mm) weighted by w(r) = exp(−(r_z − z_d)² / (2 σ²)), largest at the dome of the diaphragm
z_d and fading caudally (σ = 60 mm), the pattern of respiratory organ motion in the upper abdomen
(liver/spleen/kidneys move mostly along z with the diaphragm). The rotation R = Rz·Ry·Rx is given as
angles about x, y, z (degrees).

:func:`rasterise_posed` is :func:`~.anatomy.rasterise` for an anatomy seen in a given pose.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Sequence, Tuple

import numpy as np

from .anatomy import Grid, Structure, rasterise, rotation_matrix

Vec3 = Tuple[float, float, float]

#: Breathing deformation: dome of the diaphragm (mm, z in the anatomy frame) and fall-off (mm).
DIAPHRAGM_Z_MM = 110.0
BREATHING_SIGMA_MM = 60.0


@dataclass(frozen=True)
class Motion:
    """Pose of the patient at one session (see the module docstring).

    Attributes
    ----------
    translation_mm : (x, y, z)
    rotation_deg : (about x, about y, about z)
    pivot_mm : (x, y, z)
    breathing_mm : float
        Amplitude ``a`` of the cranio-caudal breathing-like displacement (mm).
    """

    translation_mm: Vec3 = (0.0, 0.0, 0.0)
    rotation_deg: Vec3 = (0.0, 0.0, 0.0)
    pivot_mm: Vec3 = (0.0, 10.0, 15.0)
    breathing_mm: float = 0.0

    @property
    def matrix(self) -> np.ndarray:
        return rotation_matrix(self.rotation_deg)

    def is_identity(self) -> bool:
        return not any(self.translation_mm) and not any(self.rotation_deg) and self.breathing_mm == 0.0

    def rigid_to_anatomy(self, x, y, z):
        """r = c + Rᵀ (p − c − t) for broadcastable coordinate arrays (mm)."""
        r = self.matrix
        c, t = self.pivot_mm, self.translation_mm
        dx, dy, dz = x - c[0] - t[0], y - c[1] - t[1], z - c[2] - t[2]
        return (c[0] + r[0, 0] * dx + r[1, 0] * dy + r[2, 0] * dz,
                c[1] + r[0, 1] * dx + r[1, 1] * dy + r[2, 1] * dz,
                c[2] + r[0, 2] * dx + r[1, 2] * dy + r[2, 2] * dz)

    def rigid_from_anatomy(self, x, y, z):
        """p = c + R (r − c) + t (the inverse of :meth:`rigid_to_anatomy`)."""
        r = self.matrix
        c, t = self.pivot_mm, self.translation_mm
        dx, dy, dz = x - c[0], y - c[1], z - c[2]
        return (c[0] + t[0] + r[0, 0] * dx + r[0, 1] * dy + r[0, 2] * dz,
                c[1] + t[1] + r[1, 0] * dx + r[1, 1] * dy + r[1, 2] * dz,
                c[2] + t[2] + r[2, 0] * dx + r[2, 1] * dy + r[2, 2] * dz)

    def to_anatomy(self, x, y, z):
        """Scanner point(s) → anatomy point(s) q = r − u(r)."""
        rx, ry, rz = self.rigid_to_anatomy(x, y, z)
        if self.breathing_mm == 0.0:
            return rx, ry, rz
        w = self.breathing_mm * np.exp(-((rz - DIAPHRAGM_Z_MM) ** 2) / (2.0 * BREATHING_SIGMA_MM ** 2))
        return rx, ry - 0.3 * w, rz - w

    def to_dict(self) -> dict:
        return {"translation_mm": list(self.translation_mm), "rotation_deg": list(self.rotation_deg),
                "rotation_convention": "R = Rz*Ry*Rx, angles about x, y, z (deg); scanner p -> anatomy "
                                       "r = c + R^T (p - c - t)",
                "pivot_mm": list(self.pivot_mm),
                "deformation": {"kind": "breathing-like cranio-caudal shift",
                                "amplitude_mm": self.breathing_mm,
                                "map": "q = r - a*w(r)*(0, 0.3, 1), w(r) = exp(-(r_z - z_d)^2 / (2 sigma^2))",
                                "diaphragm_z_mm": DIAPHRAGM_Z_MM, "sigma_mm": BREATHING_SIGMA_MM}}


def _corners(lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    return np.array([[a, b, c] for a in (lo[0], hi[0]) for b in (lo[1], hi[1]) for c in (lo[2], hi[2])])


def rasterise_posed(structures: Sequence[Structure], grid: Grid, motion: Motion,
                    supersample: int = 2) -> Dict[str, np.ndarray]:
    """Fraction of each voxel of ``grid`` (scanner frame) occupied by each tissue of the posed anatomy.

    Same contract as :func:`~.anatomy.rasterise` (painting order, ``"air"`` included, fractions add to 1).
    """
    margin = abs(motion.breathing_mm) + 1.0
    # Scanner-frame boxes of each structure (for speed): the anatomy box mapped forward, plus the
    # breathing amplitude.
    boxes = []
    for s in structures:
        lo, hi = s.bounds()
        lo, hi = np.maximum(lo, -1e4), np.minimum(hi, 1e4)
        cx, cy, cz = motion.rigid_from_anatomy(*_corners(lo, hi).T)
        pts = np.stack([cx, cy, cz], axis=1)
        boxes.append((pts.min(axis=0) - margin, pts.max(axis=0) + margin))
    return rasterise(structures, grid, supersample, boxes=boxes, to_anatomy=motion.to_anatomy)
