"""Projection geometry and the PyTomography SPECT system model (attenuation + collimator-detector response).

Geometry conventions
--------------------
PyTomography's rotate-and-sum projector works on an object tensor ``f[i, j, k]`` of shape
``(Lx, Ly, Lz)`` and projections ``g[view, r, k]``. The mapping to DICOM used here is the one of
PyTomography 3.4's NM TOMO reader (``pytomography.io.SPECT.dicom.parse_projection_dataset`` and
``_get_affine_spect_projections``), which was developed on Siemens Symbia data:

* the projector angle of a view is ``(gantry angle + 180) mod 360`` (degrees), views sorted by it;
* the radial bin ``r`` is the stored column (``r = column``; PyTomography reverses the rows, not the
  columns: ``projections[:, :, sorted_idxs, ::-1]`` indexes the row axis). Until issue #17 this module
  reversed the columns too, which is PyTomography's geometry turned by 180° about the rotation axis: on
  the simulated twin (written and read with the same mapping) it cancelled, on a real GE acquisition it
  put the attenuation on the wrong side (−47 % activity, centroid 54 mm off);
* object voxel ``(i, j)`` sits at LPS ``(x0 + i·Δ, y0 + j·Δ)``, ``(x0, y0)`` taken from the
  Detector Information Sequence's ImagePositionPatient (or centred on the rotation axis when that
  position has y = 0, as PyTomography does).

Along the axis we follow the DICOM meaning of ImagePositionPatient/ImageOrientationPatient of the
detector item: row 0 lies at the given z and the rows run along the column direction cosine (default
(0, 0, −1), i.e. head to feet), so object slice ``k`` lies at ``z_bottom + k·Δz``. For such files this is
PyTomography's order too (it reverses the rows and puts slice 0 at ImagePositionPatient z − (Rows − 1)·Δz),
and what a GE Discovery 670 writes (see :mod:`.projections`). The simulator of
:mod:`LuDosimetryLib.phantom.projections` writes files with exactly this convention.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
import SimpleITK as sitk

from ..errors import OptionError
from .collimator import DEFAULT_COLLIMATOR  # noqa: F401 - Siemens ME; the choice is made in .collimator

#: Siemens Symbia/Intevo medium-energy low-penetration (MELP) collimator is PyTomography's collimator table
#: entry "SY-ME" (hole diameter 0.294 cm, septa 0.114 cm, length 4.064 cm; from the SIMIND collimator
#: data file shipped with PyTomography, ``pytomography/data/collim.col``); GE's MEGP of the Infinia /
#: Discovery NM/CT 670 is "GI-MEGP" (0.300 cm, 0.105 cm, 5.800 cm). See :mod:`.collimator`.
#: Intrinsic resolution FWHM at 140 keV of the Symbia/Intevo 3/8" NaI detector, 3.8 mm (Siemens Symbia
#: Intevo system specifications, UFOV intrinsic spatial resolution); scaled as E^-1/2 by PyTomography.
#: Used for every camera: at 208 keV with a medium-energy collimator the collimator's blur dominates.
INTRINSIC_FWHM_140KEV_MM = 3.8
#: Lu-177 main photopeak, 208.366 keV (ICRP Publication 107 / NNDC ENSDF); 208 keV used for mu and PSF.
LU177_PEAK_KEV = 208.366


@dataclass
class ProjectionGeometry:
    """Where the projections and the reconstruction grid lie.

    Attributes
    ----------
    n_cols, n_rows : int
        Radial bins (Columns) and axial bins (Rows) of each view.
    pixel_mm, slice_mm : float
        Radial bin size and axial bin size (mm).
    gantry_angles_deg : numpy.ndarray
        DICOM gantry angle of each stored view (degrees), in stored order.
    radii_mm : numpy.ndarray
        Distance from the rotation axis to the detector face for each stored view (mm).
    x0_mm, y0_mm : float
        LPS x, y of object voxel (0, 0) centre (mm).
    z_row0_mm : float
        LPS z of the centre of row 0 (mm).
    rows_downward : bool
        True when increasing row index goes towards −z (feet).
    """

    n_cols: int
    n_rows: int
    pixel_mm: float
    slice_mm: float
    gantry_angles_deg: np.ndarray
    radii_mm: np.ndarray
    x0_mm: float
    y0_mm: float
    z_row0_mm: float
    rows_downward: bool = True

    @property
    def n_views(self) -> int:
        return int(len(self.gantry_angles_deg))

    @property
    def projector_angles_deg(self) -> np.ndarray:
        """PyTomography detector angles (degrees) of the stored views."""
        return (np.asarray(self.gantry_angles_deg, dtype=float) + 180.0) % 360.0

    @property
    def view_order(self) -> np.ndarray:
        """Indices that sort the stored views by projector angle (PyTomography's order)."""
        return np.argsort(self.projector_angles_deg, kind="stable")

    @property
    def z_bottom_mm(self) -> float:
        return self.z_row0_mm - (self.n_rows - 1) * self.slice_mm if self.rows_downward else self.z_row0_mm

    def object_shape(self) -> tuple:
        """PyTomography object shape (Lx, Ly, Lz)."""
        return (self.n_cols, self.n_cols, self.n_rows)

    def reference_image(self) -> sitk.Image:
        """An empty float32 image on the reconstruction grid (LPS, identity direction)."""
        img = sitk.Image(self.n_cols, self.n_cols, self.n_rows, sitk.sitkFloat32)
        img.SetSpacing((self.pixel_mm, self.pixel_mm, self.slice_mm))
        img.SetOrigin((self.x0_mm, self.y0_mm, self.z_bottom_mm))
        return img


def frames_to_projector(frames: np.ndarray, geom: ProjectionGeometry) -> np.ndarray:
    """Stored views ``[..., view, row, col]`` → PyTomography ``[..., view (sorted), r, k]`` (float32)."""
    arr = np.asarray(frames, dtype=np.float32)
    arr = arr[..., geom.view_order, :, :]
    if geom.rows_downward:
        arr = arr[..., ::-1, :]
    return np.ascontiguousarray(np.swapaxes(arr, -1, -2))


def projector_to_frames(proj: np.ndarray, geom: ProjectionGeometry) -> np.ndarray:
    """Inverse of :func:`frames_to_projector`."""
    arr = np.swapaxes(np.asarray(proj), -1, -2)
    if geom.rows_downward:
        arr = arr[..., ::-1, :]
    out = np.empty_like(arr)
    out[..., geom.view_order, :, :] = arr
    return np.ascontiguousarray(out)


def image_to_object(image: sitk.Image) -> np.ndarray:
    """SimpleITK image on the reconstruction grid → PyTomography object array (Lx, Ly, Lz)."""
    return np.ascontiguousarray(np.transpose(sitk.GetArrayFromImage(image), (2, 1, 0)).astype(np.float32))


def object_to_image(obj: np.ndarray, geom: ProjectionGeometry) -> sitk.Image:
    """PyTomography object array (Lx, Ly, Lz) → SimpleITK image on the reconstruction grid."""
    img = sitk.GetImageFromArray(np.ascontiguousarray(np.transpose(np.asarray(obj, dtype=np.float32), (2, 1, 0))))
    ref = geom.reference_image()
    img.CopyInformation(ref)
    return img


def psf_meta(ns, energy_kev: float = LU177_PEAK_KEV, collimator: str = DEFAULT_COLLIMATOR,
             intrinsic_fwhm_140kev_mm: float = INTRINSIC_FWHM_140KEV_MM):
    """Gaussian distance-dependent collimator-detector response from PyTomography's collimator table.

    σ(d) = sqrt((a·d + b)² + c²) with a = D/(L − 2/μ_Pb(E)), b = D (hole diameter D, length L, converted
    FWHM→σ) and c the intrinsic σ; PyTomography's ``get_psfmeta_from_scanner_params``.
    """
    import contextlib
    import io as _io

    if collimator not in collimator_table_codes():
        # PyTomography matches a code as a substring and fails obscurely on an unknown one
        raise OptionError(f"{collimator!r} is not in PyTomography's collimator table", option="collimator")
    with contextlib.redirect_stdout(_io.StringIO()):
        from pytomography.io.SPECT import dicom as pyt_dicom

        return pyt_dicom.get_psfmeta_from_scanner_params(
            collimator, float(energy_kev), intrinsic_resolution_140keV=intrinsic_fwhm_140kev_mm / 10.0)


def collimator_table_codes() -> frozenset:
    """The codes of PyTomography's collimator table (``pytomography/data/collim.col``: records start with "*")."""
    import importlib.util
    import os

    spec = importlib.util.find_spec("pytomography")
    table = os.path.join(os.path.dirname(spec.origin), "data", "collim.col")
    with open(table, encoding="latin-1") as handle:
        return frozenset(line[1:].split()[0] for line in handle if line.startswith("*") and line[1:].split())


class GaussianPSFOperator:
    """Depth-dependent Gaussian collimator-detector response applied by FFT along each detector axis.

    The same model and the same discrete kernels as PyTomography's ``SPECTPSFTransform(psf_meta)``
    (``pytomography.transforms.SPECT.psf``): per plane at distance d from the detector a sampled
    Gaussian of σ(d) = ``meta.sigma_fit(d)``, truncated at ``meta.min_sigmas`` times the largest σ of
    the planes, normalised to unit sum, zero padded ('same' output). PyTomography applies it with a
    grouped direct convolution, whose cost grows with the kernel length (41-51 taps at 2.4 mm); here
    the product of FFTs gives the identical result (to float32 rounding) several times faster. The
    inputs are non-negative in SPECT, so rounding residues below 0 are set to 0. It is
    passed to ``SPECTPSFTransform(psf_operator=...)``, which calls it with the plane distances (cm).
    """

    def __init__(self, meta, dr_cm: Sequence[float]):
        self.meta = meta
        self.dr_cm = tuple(float(v) for v in dr_cm)
        self._cache = {}

    def _transfer(self, torch, distances, axis: int, n: int, length: int):
        key = (axis, n, tuple(np.round(distances.detach().cpu().numpy().astype(float), 6)))
        hit = self._cache.get(key)
        if hit is not None:
            return hit
        d = distances.detach().cpu().numpy().astype(float)
        sigma = np.asarray(self.meta.sigma_fit(d, *self.meta.sigma_fit_params), dtype=float) / self.dr_cm[axis]
        k = int(np.ceil(sigma.max() * float(self.meta.min_sigmas)) * 2 + 1)
        half = k // 2
        x = torch.arange(-half, half + 1, device=distances.device, dtype=torch.float32)[None, :]
        s = torch.tensor(sigma, device=distances.device, dtype=torch.float32)[:, None]
        kern = torch.exp(-x ** 2 / (2 * s ** 2 + 1e-11))  # pytomography.delta = 1e-11
        kern = kern / kern.sum(dim=1, keepdim=True)
        # circular shift so that the kernel's centre is at index 0: output index i sums input i - j
        full = torch.zeros((kern.shape[0], n), device=distances.device, dtype=torch.float32)
        full[:, :half + 1] = kern[:, half:]
        full[:, n - half:] = kern[:, :half]
        transfer = torch.fft.rfft(full, dim=1)
        if len(self._cache) > 512:
            self._cache.clear()
        self._cache[key] = transfer
        return transfer

    def __call__(self, obj, xv=None, yv=None, distances=None, normalize=True):
        import torch

        out = obj
        for axis in (1, 2):
            length = out.shape[axis]
            d = distances
            # the largest kernel half-width needed: zero padding of at least that many samples
            sig_max = float(np.max(self.meta.sigma_fit(d.detach().cpu().numpy().astype(float),
                                                       *self.meta.sigma_fit_params))) / self.dr_cm[axis]
            half = int(np.ceil(sig_max * float(self.meta.min_sigmas)))
            n = _fast_length(max(length + half, 2 * half + 1))  # no wrap-around into the output
            transfer = self._transfer(torch, d, axis, n, length)
            spec = torch.fft.rfft(out, n=n, dim=axis)
            spec = spec * (transfer[:, :, None] if axis == 1 else transfer[:, None, :])
            out = torch.fft.irfft(spec, n=n, dim=axis).narrow(axis, 0, length)
        # Objects and back-projected ratios are ≥ 0, as is the exact result; FFT rounding leaves values
        # of order 1e-7 × max around 0, whose negative ones would upset Poisson sampling and OSEM ratios.
        return out.clamp(min=0.0).contiguous()


def _fast_length(n: int) -> int:
    """Smallest 2^a 3^b 5^c ≥ n (fast FFT length)."""
    best = 1 << (int(n) - 1).bit_length()
    p2 = 1
    while p2 < best:
        p3 = p2
        while p3 < best:
            p5 = p3
            while p5 < best:
                if p5 >= n:
                    best = p5
                p5 *= 5
            p3 *= 3
        p2 *= 2
    return best


def build_system_matrix(ns, geom: ProjectionGeometry, mu_object_per_cm: Optional[np.ndarray], *, psf: bool = True,
                        energy_kev: float = LU177_PEAK_KEV, collimator: str = DEFAULT_COLLIMATOR,
                        view_indices: Optional[Sequence[int]] = None, psf_by_fft: bool = True):
    """PyTomography ``SPECTSystemMatrix`` for ``geom``.

    Parameters
    ----------
    ns : namespace from :func:`~.backend.pytomography_session`
    geom : ProjectionGeometry
    mu_object_per_cm : numpy.ndarray or None
        Linear attenuation coefficients at the photon energy (1/cm) on the object grid (Lx, Ly, Lz);
        None: no attenuation.
    psf : bool
        Model the distance-dependent collimator-detector response.
    psf_by_fft : bool
        Apply that response with :class:`GaussianPSFOperator` (same kernels, FFT) instead of
        PyTomography's direct grouped convolution.

    Returns
    -------
    SPECTSystemMatrix
        Object values are expected counts per view from each voxel without attenuation.
    """
    torch = ns.torch
    dr_cm = (geom.pixel_mm / 10.0, geom.pixel_mm / 10.0, geom.slice_mm / 10.0)
    object_meta = ns.SPECTObjectMeta(dr_cm, geom.object_shape())
    order = geom.view_order
    angles = geom.projector_angles_deg[order]
    radii_cm = np.asarray(geom.radii_mm, dtype=float)[order] / 10.0
    # one PSF layer per distinct radius: quantise to 0.1 mm
    radii_cm = np.round(radii_cm, 2)
    proj_meta = ns.SPECTProjMeta((geom.n_cols, geom.n_rows), (dr_cm[0], dr_cm[2]), angles.tolist(), radii_cm)
    transforms = []
    if mu_object_per_cm is not None:
        mu = torch.tensor(np.ascontiguousarray(mu_object_per_cm, dtype=np.float32), device=ns.device)
        transforms.append(ns.SPECTAttenuationTransform(attenuation_map=mu))
    if psf:
        meta = psf_meta(ns, energy_kev, collimator)
        if psf_by_fft:
            transforms.append(ns.SPECTPSFTransform(psf_operator=GaussianPSFOperator(meta, dr_cm)))
        else:
            transforms.append(ns.SPECTPSFTransform(meta))
    system = ns.SPECTSystemMatrix(obj2obj_transforms=transforms, proj2proj_transforms=[],
                                  object_meta=object_meta, proj_meta=proj_meta)
    return system


def body_contour_radii_mm(ns, geom: ProjectionGeometry, body_object: np.ndarray, clearance_mm: float = 20.0,
                          minimum_mm: float = 50.0) -> np.ndarray:
    """Non-circular (body-contour) orbit: per stored view, the body's extent towards the detector + clearance.

    Uses PyTomography's own rotation so that the radius matches the projector's geometry.
    """
    torch = ns.torch
    body = torch.tensor(np.ascontiguousarray(body_object, dtype=np.float32), device=ns.device)
    padded = ns.pad_object(body)
    lx = padded.shape[0]
    centre = (lx - 1) / 2.0
    radii = np.empty(geom.n_views)
    for v, angle in enumerate(geom.projector_angles_deg):
        rot = ns.rotate_detector_z(padded, torch.tensor([float(angle)], device=ns.device)
                                   .to(padded.dtype)[0])
        occupied = torch.nonzero(rot.sum(dim=(1, 2)) > 0.5)
        extent = (float(occupied.max()) - centre + 0.5) * geom.pixel_mm if len(occupied) else 0.0
        radii[v] = max(minimum_mm, extent + clearance_mm)
    return radii
