"""Absorbed dose: local deposition, dose voxel kernels, FFT convolution, HU→density."""
from __future__ import annotations

import time

import numpy as np
import pytest

from LuDosimetryLib.dose import density_from_hu, dose_dvk, dose_ldm, dose_voxel_kernel
from LuDosimetryLib.dose.kernels import photon_radial_density
from LuDosimetryLib.dose.local import dose_ldm_photons
from LuDosimetryLib.errors import CancelledError, LuDosimetryError
from LuDosimetryLib.progress import Progress
from LuDosimetryLib.radionuclides import MEV_TO_J, radionuclide

LU = radionuclide("Lu-177")
_trapz = getattr(np, "trapezoid", None) or getattr(np, "trapz")  # numpy 2 renamed trapz


def _voxel_mass_kg(spacing, rho=1.0):
    return rho * spacing[0] * spacing[1] * spacing[2] * 1e-6


def test_ldm_uniform_block_is_exact():
    spacing = (4.0, 4.0, 5.0)
    tia = np.zeros((10, 12, 14), np.float32)
    tia[2:7, 3:9, 4:10] = 3.0e9  # decays per voxel
    before = tia.copy()
    d = dose_ldm(tia, spacing)
    expected = 3.0e9 * LU.electron_energy_mev * MEV_TO_J / _voxel_mass_kg(spacing)
    assert np.allclose(d[2:7, 3:9, 4:10], expected, rtol=1e-6)
    assert np.all(d[tia == 0] == 0)
    assert np.array_equal(tia, before)
    d2 = dose_ldm(tia, spacing, density_g_ml=2.0)
    assert np.allclose(d2, d / 2.0, rtol=1e-6)
    dp = dose_ldm(tia, spacing, include_photons=True)
    assert np.allclose(dp, d + dose_ldm_photons(tia, spacing), rtol=1e-5)
    assert np.allclose(dose_ldm_photons(tia, spacing)[4, 4, 5],
                       3.0e9 * LU.photon_energy_mev * MEV_TO_J / _voxel_mass_kg(spacing), rtol=1e-6)


def test_kernel_shape_symmetry_and_cache():
    k = dose_voxel_kernel((3.0, 3.0, 3.0))
    assert all(n % 2 == 1 for n in k.shape)
    c = tuple(n // 2 for n in k.shape)
    assert k[c] == k.max()
    for axis in range(3):
        assert np.allclose(k, np.flip(k, axis=axis), rtol=1e-12, atol=0)
    assert np.allclose(k, np.transpose(k, (1, 0, 2)), rtol=1e-6)
    assert np.allclose(k, np.transpose(k, (2, 1, 0)), rtol=1e-6)
    assert np.all(k >= 0)
    k[c] = -1.0  # the returned array is a copy: the cache must not change
    assert dose_voxel_kernel((3.0, 3.0, 3.0))[c] > 0
    # anisotropic voxels: (z, y, x) order follows the spacing (x, y, z)
    ka = dose_voxel_kernel((2.0, 2.0, 4.0), include_photons=False)
    assert ka.shape[0] < ka.shape[2]


@pytest.mark.parametrize("spacing", [(4.7952,) * 3, (2.0, 2.0, 3.0), (1.0, 1.0, 1.0)])
def test_kernel_conserves_electron_energy(spacing):
    k = dose_voxel_kernel(spacing, include_photons=False)
    energy_mev = k.sum() * _voxel_mass_kg(spacing) / MEV_TO_J
    assert energy_mev == pytest.approx(LU.electron_energy_mev, rel=0.005)


def test_kernel_photon_energy_matches_point_kernel_integral():
    spacing = (4.0, 4.0, 4.0)
    radius = 40.0
    k = dose_voxel_kernel(spacing, radius_mm=radius)
    ke = dose_voxel_kernel(spacing, radius_mm=radius, include_photons=False)
    photon_abs = (k.sum() - ke.sum()) * _voxel_mass_kg(spacing) / MEV_TO_J
    assert 0.0 < photon_abs < LU.photon_energy_mev
    # the box of half-width 42 mm (incl. the half voxel) lies between spheres of 42 and 42·√3 mm
    r = np.linspace(0.0, 80.0, 400001)
    eps = photon_radial_density("Lu-177", r, 1.0)
    inner = _trapz(eps[r <= 42.0], r[r <= 42.0])
    outer_mask = r <= 42.0 * np.sqrt(3.0)
    outer = _trapz(eps[outer_mask], r[outer_mask])
    assert inner < photon_abs < outer
    # all photon energy is absorbed in an infinite medium (buildup normalised by energy conservation)
    r = np.linspace(0.0, 1500.0, 300001)
    eps = photon_radial_density("Lu-177", r, 1.0)
    total = _trapz(eps, r)
    assert total == pytest.approx(LU.photon_energy_mev, rel=0.01)


def test_kernel_density_scaling():
    """ρ·K is density independent when electrons stay inside the voxel (self dose ~ 1/ρ)."""
    k1 = dose_voxel_kernel((5.0,) * 3, include_photons=False, density_g_ml=1.0)
    k2 = dose_voxel_kernel((5.0,) * 3, include_photons=False, density_g_ml=2.0)
    c1 = tuple(n // 2 for n in k1.shape)
    c2 = tuple(n // 2 for n in k2.shape)
    assert 2.0 * k2[c2] == pytest.approx(k1[c1], rel=0.05)
    assert 2.0 * k2[c2] > k1[c1]  # denser medium: fewer electrons escape


def test_dvk_uniform_region_equals_ldm_in_centre():
    spacing = (4.0, 4.0, 4.0)
    tia = np.full((41, 41, 41), 1.0e9, np.float32)
    before = tia.copy()
    ke = dose_voxel_kernel(spacing, include_photons=False)
    d = dose_dvk(tia, spacing, kernel=ke)
    assert np.array_equal(tia, before)
    ldm = dose_ldm(tia, spacing)
    assert d[20, 20, 20] == pytest.approx(ldm[20, 20, 20], rel=0.02)
    assert d[20, 20, 20] == pytest.approx(ldm[20, 20, 20], rel=0.005)
    # with photons, kernel box (±40 mm) inside the region: electrons + photons absorbed in the box
    k = dose_voxel_kernel(spacing, radius_mm=40.0)
    d = dose_dvk(tia, spacing, kernel=k)
    photon_abs_mev = (k.sum() - ke.sum()) * _voxel_mass_kg(spacing) / MEV_TO_J
    expected = ldm[20, 20, 20] * (LU.electron_energy_mev + photon_abs_mev) / LU.electron_energy_mev
    assert d[20, 20, 20] == pytest.approx(expected, rel=0.02)
    assert d[20, 20, 20] > ldm[20, 20, 20] * 1.02  # photons do add dose
    assert d[20, 20, 20] < dose_ldm(tia, spacing, include_photons=True)[20, 20, 20]


def test_dvk_point_source_reproduces_kernel():
    spacing = (3.0, 3.0, 3.0)
    k = dose_voxel_kernel(spacing, radius_mm=15.0)
    tia = np.zeros((21, 21, 21), np.float32)
    tia[10, 10, 10] = 1.0e10
    d = dose_dvk(tia, spacing, kernel=k)
    n = k.shape[0] // 2
    np.testing.assert_allclose(d[10 - n:11 + n, 10 - n:11 + n, 10 - n:11 + n], 1e10 * k, rtol=1e-3,
                               atol=1e-6 * 1e10 * k.max())


def test_dvk_density_correction_analytic():
    spacing = (4.0, 4.0, 4.0)
    tia = np.zeros((20, 20, 20), np.float32)
    tia[5:15, 5:15, 5:15] = 2.0e9
    k = dose_voxel_kernel(spacing, include_photons=False)
    no_photons = np.zeros_like(k)  # a kernel of electrons only: all of it is density-scaled
    water = dose_dvk(tia, spacing, kernel=k)
    rho = np.full(tia.shape, 2.0, np.float32)
    rho[:, :, :10] = 0.5
    rho_before = rho.copy()
    d = dose_dvk(tia, spacing, kernel=k, density_g_ml=rho, photon_kernel=no_photons)
    assert np.array_equal(rho, rho_before)
    np.testing.assert_allclose(d, water / rho, rtol=1e-5, atol=1e-7 * water.max())
    # uniform density 2: equals local deposition in the middle of the block within 2 %
    d2 = dose_dvk(tia, spacing, kernel=k, density_g_ml=2.0, photon_kernel=no_photons)
    assert d2[10, 10, 10] == pytest.approx(dose_ldm(tia, spacing, 2.0)[10, 10, 10], rel=0.02)
    # the kernel density is respected
    d3 = dose_dvk(tia, spacing, kernel=k, density_g_ml=2.0, kernel_density_g_ml=2.0, photon_kernel=no_photons)
    np.testing.assert_allclose(d3, water, rtol=1e-6)


def test_dvk_default_kernel_and_progress_and_cancel():
    spacing = (4.7952,) * 3
    tia = np.zeros((16, 16, 16), np.float32)
    tia[8, 8, 8] = 1e9
    seen = []
    d = dose_dvk(tia, spacing, progress=lambda f, m: seen.append(f))
    assert seen and seen[-1] == 1.0 and seen == sorted(seen)
    assert d[8, 8, 8] == pytest.approx(1e9 * dose_voxel_kernel(spacing)[tuple(n // 2 for n in dose_voxel_kernel(spacing).shape)], rel=1e-3)
    p = Progress()
    p.cancel()
    with pytest.raises(CancelledError):
        dose_dvk(tia, spacing, progress=p)


def test_dvk_speed_is_comparable_to_fftconvolve():
    from scipy.signal import fftconvolve
    rng = np.random.default_rng(1)
    a = rng.random((64, 96, 96), dtype=np.float32)
    k = dose_voxel_kernel((4.0, 4.0, 4.0), radius_mm=40.0).astype(np.float32)
    t_ref, t_ours = [], []
    for _ in range(3):
        t = time.perf_counter()
        ref = fftconvolve(a, k, mode="same")
        t_ref.append(time.perf_counter() - t)
        t = time.perf_counter()
        ours = dose_dvk(a, (4.0, 4.0, 4.0), kernel=k)
        t_ours.append(time.perf_counter() - t)
    np.testing.assert_allclose(ours, np.maximum(ref, 0), rtol=1e-4, atol=1e-5 * ref.max())
    assert min(t_ours) < 5.0 * min(t_ref) + 0.05  # loose: the benchmark measures the real ratio


def test_kernel_build_is_fast():
    t = time.perf_counter()
    dose_voxel_kernel((3.3, 3.3, 3.3))
    assert time.perf_counter() - t < 10.0  # loose guard against pathological slow-downs


@pytest.mark.parametrize("call, match", [
    (lambda: dose_voxel_kernel((4.0, 0.0, 4.0)), "spacing"),
    (lambda: dose_voxel_kernel((4.0, 4.0)), "spacing"),
    (lambda: dose_voxel_kernel((4.0,) * 3, density_g_ml=-1), "density"),
    (lambda: dose_voxel_kernel((4.0,) * 3, radius_mm=0), "radius"),
    (lambda: dose_voxel_kernel((4.0,) * 3, "Xx-999"), "Xx"),
    (lambda: dose_dvk(np.full((4, 4, 4), np.nan), (4.0,) * 3), "NaN"),
    (lambda: dose_dvk(np.ones((4, 4)), (4.0,) * 3), "3-D"),
    (lambda: dose_dvk(np.ones((4, 4, 4)), (4.0,) * 3, kernel=np.ones((2, 3, 3))), "odd"),
    (lambda: dose_dvk(np.ones((4, 4, 4)), (4.0,) * 3, density_g_ml=np.ones((3, 4, 4))), "shape"),
    (lambda: dose_ldm(np.ones((4, 4, 4)), (4.0,) * 3, density_g_ml=0.0), "density"),
])
def test_bad_input_raises_clear_error(call, match):
    with pytest.raises(LuDosimetryError, match=match):
        call()


def test_density_from_hu_nodes_and_clipping():
    hu = np.array([-3000.0, -1000.0, -98.0, 14.0, 100.0, 101.0, 1600.0, 3000.0, 5000.0, np.nan])
    before = hu.copy()
    rho = density_from_hu(hu)
    assert rho.dtype == np.float32
    np.testing.assert_allclose(rho[:8], [0.00121, 0.00121, 0.93, 1.03, 1.1199, 1.0762, 1.9642, 2.8], rtol=1e-5)
    assert rho[8] == pytest.approx(3.0)
    assert rho[9] == pytest.approx(0.001)
    assert np.array_equal(hu[:9], before[:9])
    # monotone within each branch, ~1 g/mL for water
    assert density_from_hu(np.array([0.0]))[0] == pytest.approx(1.0, abs=0.03)
    grid = density_from_hu(np.linspace(-1000, 100, 500))
    assert np.all(np.diff(grid) >= 0)
    assert density_from_hu(np.zeros((2, 3, 4))).shape == (2, 3, 4)
