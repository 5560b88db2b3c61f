"""Analytic abdomen of the synthetic patient: shapes, tissues, and rasterisation to fractional occupancy.

All coordinates are DICOM patient coordinates (LPS, mm): +x towards the patient's left, +y posterior,
+z superior. The body is an elliptic cylinder with a subcutaneous fat layer; inside it sit the liver
(right lobe + left lobe), both kidneys (ellipsoids minus a medial hilum notch, tilted), the spleen, the
lumbar spine (vertebral bodies + posterior arch around the spinal canal) and two liver lesions.

A point belongs to the structure of highest priority that contains it (lesions > kidneys > spleen >
liver > spine > soft tissue > fat), so that the tissues never overlap. :func:`rasterise` returns the
fraction of each voxel occupied by each tissue, sampled on ``supersample``³ points per voxel.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Sequence, Tuple

import numpy as np
import SimpleITK as sitk

Vec3 = Tuple[float, float, float]


# --------------------------------------------------------------------------------------------- tissues

@dataclass(frozen=True)
class Tissue:
    """One tissue: CT number and mass density.

    Attributes
    ----------
    name : str
    hu : float
        Unenhanced CT number (HU), typical of 120-130 kVp abdominal CT.
    density_g_per_ml : float
        Mass density (g/mL).
    """

    name: str
    hu: float
    density_g_per_ml: float


# Densities: ICRU Report 46 (1992), "Photon, electron, proton and neutron interaction data for body
# tissues", Appendix A (adipose tissue adult #2 0.95, skeletal muscle 1.05, liver adult #2 1.06,
# kidney adult #2 1.05, spleen 1.06, vertebral column D6/L3 incl. cartilage 1.33 g/cm3); the same
# values underlie the ICRP Publication 110 reference phantoms' organ densities. Tumour tissue is
# taken as soft tissue (1.05, an assumption). CT numbers are typical unenhanced values, not from a table.
TISSUES: Dict[str, Tissue] = {
    "air": Tissue("air", -1000.0, 0.0012),
    "fat": Tissue("fat", -100.0, 0.95),
    "soft_tissue": Tissue("soft_tissue", 40.0, 1.05),
    "bone": Tissue("bone", 450.0, 1.33),
    "liver": Tissue("liver", 55.0, 1.06),
    "spleen": Tissue("spleen", 45.0, 1.06),
    "kidney_left": Tissue("kidney_left", 30.0, 1.05),
    "kidney_right": Tissue("kidney_right", 30.0, 1.05),
    "lesion_1": Tissue("lesion_1", 40.0, 1.05),
    "lesion_2": Tissue("lesion_2", 40.0, 1.05),
}


# --------------------------------------------------------------------------------------------- shapes

def rotation_matrix(deg: Vec3) -> np.ndarray:
    """Rotation matrix R = Rz · Ry · Rx for angles about x, y, z (degrees); local = Rᵀ (p − c)."""
    ax, ay, az = np.radians(deg)
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


@dataclass(frozen=True)
class Superellipsoid:
    """|u/a|^p + |v/b|^p + |w/c|^p ≤ 1 in a frame centred at ``center`` and rotated by ``rotation_deg``.

    A very large radius along one axis makes a cylinder. ``exponent`` 2 is an ellipsoid; larger values
    are boxier.
    """

    center: Vec3
    radii: Vec3
    exponent: float = 2.0
    rotation_deg: Vec3 = (0.0, 0.0, 0.0)

    def inside(self, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        """Boolean array: which points (broadcast x, y, z in mm) lie inside."""
        r = rotation_matrix(self.rotation_deg)
        dx, dy, dz = x - self.center[0], y - self.center[1], z - self.center[2]
        u = r[0, 0] * dx + r[1, 0] * dy + r[2, 0] * dz
        v = r[0, 1] * dx + r[1, 1] * dy + r[2, 1] * dz
        w = r[0, 2] * dx + r[1, 2] * dy + r[2, 2] * dz
        p = self.exponent
        return (np.abs(u / self.radii[0]) ** p + np.abs(v / self.radii[1]) ** p
                + np.abs(w / self.radii[2]) ** p) <= 1.0

    def bounds(self) -> Tuple[np.ndarray, np.ndarray]:
        """(low, high) corners (mm) of a box that contains the shape."""
        c = np.asarray(self.center, dtype=float)
        if any(self.rotation_deg):
            r = np.full(3, max(self.radii)) * (3.0 ** 0.5 if self.exponent > 2 else 1.0)
        else:
            r = np.asarray(self.radii, dtype=float)
        return c - r, c + r


@dataclass(frozen=True)
class Structure:
    """Union of ``parts`` minus the union of ``cuts``, filled with one tissue."""

    tissue: str
    parts: Tuple[Superellipsoid, ...]
    cuts: Tuple[Superellipsoid, ...] = ()

    def inside(self, x, y, z) -> np.ndarray:
        inside = np.zeros(np.broadcast(x, y, z).shape, dtype=bool)
        for p in self.parts:
            inside |= p.inside(x, y, z)
        for c in self.cuts:
            inside &= ~c.inside(x, y, z)
        return inside

    def bounds(self) -> Tuple[np.ndarray, np.ndarray]:
        lows, highs = zip(*(p.bounds() for p in self.parts))
        return np.min(lows, axis=0), np.max(highs, axis=0)


_LONG = 1e6  # mm: "infinite" cylinder length


#: Lumbar spine of the twins with discs (#14 red marrow): vertebral body ~27 mm high + intervertebral disc 9 mm
#: (adult lumbar anthropometry), discs centred at ``DISC_Z0_MM + k · pitch``.
DISC_PITCH_MM = 36.0
DISC_HEIGHT_MM = 9.0
DISC_Z0_MM = 33.0


def body_and_spine(spine_scale: float = 1.0, discs: bool = False) -> List[Structure]:
    """Body (elliptic cylinder 340 x 250 mm, fat layer ~18 mm) and lumbar spine (vertebral bodies and
    posterior arch around the spinal canal), shared by every phantom.

    ``spine_scale`` scales the spine's cross-section (a smaller spine for a female twin); ``discs`` cuts the
    vertebral column into vertebrae with soft-tissue intervertebral discs (:data:`DISC_PITCH_MM`,
    :data:`DISC_HEIGHT_MM`) between z = -300 and 300 mm. The defaults are the historical continuous spine.
    """
    k = float(spine_scale)
    cuts = [Superellipsoid((0.0, 62.0 + 26.0 * k, 0.0), (8.0 * k, 7.0 * k, _LONG))]
    if discs:
        cuts += [Superellipsoid((0.0, 62.0, DISC_Z0_MM + n * DISC_PITCH_MM), (40.0, 24.0 * k, DISC_HEIGHT_MM / 2.0),
                                exponent=8.0) for n in range(-9, 8)]
    return [
        Structure("fat", (Superellipsoid((0.0, 10.0, 0.0), (170.0, 125.0, _LONG)),)),
        Structure("soft_tissue", (Superellipsoid((0.0, 10.0, 0.0), (152.0, 107.0, _LONG)),)),
        Structure("bone", (Superellipsoid((0.0, 62.0, 0.0), (22.0 * k, 18.0 * k, _LONG)),
                           Superellipsoid((0.0, 62.0 + 33.0 * k, 0.0), (26.0 * k, 14.0 * k, _LONG), exponent=3.0)),
                  cuts=tuple(cuts)),
    ]


def default_anatomy() -> List[Structure]:
    """The synthetic patient's structures in painting order (later ones win where they overlap).

    Sizes are chosen so that the true volumes are about: liver 1500 mL (incl. lesions), kidneys 160 mL
    each, spleen 200 mL, lesions 20 mL and 5 mL (see ``truth.json`` for the values on the fine grid).
    """
    return body_and_spine() + [
        # Liver: right lobe + left lobe reaching across the midline, anterior.
        Structure("liver", (Superellipsoid((-72.0, -8.0, 52.0), (76.0, 66.0, 57.0), exponent=2.2),
                            Superellipsoid((5.0, -40.0, 70.0), (62.0, 30.0, 36.0), rotation_deg=(0.0, 0.0, -12.0)))),
        # Spleen: left posterolateral, upper abdomen.
        Structure("spleen", (Superellipsoid((100.0, 38.0, 68.0), (29.0, 38.0, 44.0), rotation_deg=(0.0, 0.0, -30.0)),)),
        # Kidneys: tilted ellipsoids with a medial hilum notch; the left one sits higher.
        Structure("kidney_left", (Superellipsoid((72.0, 68.0, -12.0), (30.0, 24.0, 56.0), rotation_deg=(0.0, -12.0, 0.0)),),
                  cuts=(Superellipsoid((44.0, 62.0, -12.0), (12.0, 10.0, 16.0)),)),
        Structure("kidney_right", (Superellipsoid((-74.0, 70.0, -30.0), (30.0, 24.0, 56.0), rotation_deg=(0.0, 12.0, 0.0)),),
                  cuts=(Superellipsoid((-46.0, 64.0, -30.0), (12.0, 10.0, 16.0)),)),
        # Liver lesions (spheres, ~20 mL and ~5 mL).
        Structure("lesion_1", (Superellipsoid((-95.0, -12.0, 62.0), (16.85, 16.85, 16.85)),)),
        Structure("lesion_2", (Superellipsoid((-38.0, 18.0, 28.0), (10.6, 10.6, 10.6)),)),
    ]


# --------------------------------------------------------------------------------------------- grids

@dataclass(frozen=True)
class Grid:
    """An axis-aligned voxel grid (identity direction) in LPS.

    Attributes
    ----------
    origin : (x, y, z)
        Centre of voxel (0, 0, 0) (mm).
    spacing : (x, y, z)
        Voxel size (mm).
    size : (nx, ny, nz)
    """

    origin: Vec3
    spacing: Vec3
    size: Tuple[int, int, int]

    @property
    def shape(self) -> Tuple[int, int, int]:
        """numpy (z, y, x) shape."""
        return (self.size[2], self.size[1], self.size[0])

    @property
    def voxel_ml(self) -> float:
        """Voxel volume (mL)."""
        return float(np.prod(self.spacing)) / 1000.0

    def axis(self, i: int, offset: float = 0.0) -> np.ndarray:
        """Coordinates (mm) along axis i (0 = x) of voxel centres shifted by ``offset`` voxels."""
        return self.origin[i] + (np.arange(self.size[i]) + offset) * self.spacing[i]

    def refined(self, factor: Sequence[int]) -> "Grid":
        """A grid ``factor`` times finer per axis covering exactly the same box."""
        f = [int(v) for v in factor]
        spacing = tuple(s / k for s, k in zip(self.spacing, f))
        origin = tuple(o - s / 2.0 + sf / 2.0 for o, s, sf in zip(self.origin, self.spacing, spacing))
        return Grid(origin, spacing, tuple(n * k for n, k in zip(self.size, f)))

    def image(self, array: np.ndarray) -> sitk.Image:
        """``array`` (z, y, x) as a SimpleITK image on this grid."""
        img = sitk.GetImageFromArray(np.ascontiguousarray(array))
        img.SetOrigin(tuple(float(v) for v in self.origin))
        img.SetSpacing(tuple(float(v) for v in self.spacing))
        return img


def block_mean(array: np.ndarray, factor: Sequence[int]) -> np.ndarray:
    """Average non-overlapping blocks of ``factor`` = (fz, fy, fx) voxels (shape must divide)."""
    fz, fy, fx = (int(v) for v in factor)
    nz, ny, nx = array.shape
    return array.reshape(nz // fz, fz, ny // fy, fy, nx // fx, fx).mean(axis=(1, 3, 5))


def rasterise(structures: Sequence[Structure], grid: Grid, supersample: int = 2, *,
              boxes=None, to_anatomy=None) -> Dict[str, np.ndarray]:
    """Fraction of each voxel of ``grid`` occupied by each tissue.

    Parameters
    ----------
    structures : sequence of Structure
        In painting order (later ones win).
    grid : Grid
    supersample : int
        Sample points per voxel and axis (``supersample``³ per voxel).
    boxes : sequence of (lo, hi), optional
        Per structure, the grid-frame box (mm) outside which it is absent (default: its own bounds).
    to_anatomy : callable ``(x, y, z) -> (x, y, z)``, optional
        Maps grid (scanner) coordinates to the structures' frame (a posed patient); default identity.

    Returns
    -------
    dict of str to numpy.ndarray
        Tissue name → float32 (z, y, x) fractions; includes ``"air"``; the fractions add to 1.
    """
    names = ["air"] + [s.tissue for s in structures]
    tissue_ids = {name: i for i, name in enumerate(dict.fromkeys(names))}
    counts = np.zeros((len(tissue_ids),) + grid.shape, dtype=np.uint16)
    n = int(supersample)
    offsets = [(k + 0.5) / n - 0.5 for k in range(n)]
    for oz in offsets:
        z = grid.axis(2, oz)
        for oy in offsets:
            y = grid.axis(1, oy)
            for ox in offsets:
                x = grid.axis(0, ox)
                label = np.zeros(grid.shape, dtype=np.uint8)
                for s, (lo, hi) in zip(structures, boxes or [st.bounds() for st in structures]):
                    ix = np.nonzero((x >= lo[0]) & (x <= hi[0]))[0]
                    iy = np.nonzero((y >= lo[1]) & (y <= hi[1]))[0]
                    iz = np.nonzero((z >= lo[2]) & (z <= hi[2]))[0]
                    if ix.size == 0 or iy.size == 0 or iz.size == 0:
                        continue
                    sl = (slice(iz[0], iz[-1] + 1), slice(iy[0], iy[-1] + 1), slice(ix[0], ix[-1] + 1))
                    px, py, pz = x[sl[2]][None, None, :], y[sl[1]][None, :, None], z[sl[0]][:, None, None]
                    if to_anatomy is not None:
                        px, py, pz = to_anatomy(px, py, pz)
                    inside = s.inside(px, py, pz)
                    label[sl][inside] = tissue_ids[s.tissue]
                for name, tid in tissue_ids.items():
                    counts[tid] += label == tid
    total = float(n ** 3)
    return {name: (counts[tid] / total).astype(np.float32) for name, tid in tissue_ids.items()}


def hu_map(fractions: Dict[str, np.ndarray]) -> np.ndarray:
    """CT numbers (HU) as the occupancy-weighted mean of the tissues' HU, per voxel (z, y, x)."""
    out = None
    for name, frac in fractions.items():
        term = frac * np.float32(TISSUES[name].hu)
        out = term if out is None else out + term
    return out
