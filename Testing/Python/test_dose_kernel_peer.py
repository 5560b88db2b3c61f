"""Peer and independent checks of our Lu-177 dose voxel kernel.

1. Monte Carlo database (passes): the DOSXYZnrc (EGSnrc) voxel S values of Lanconelli et al., "A free
   database of radionuclide voxel S values for the dosimetry of nonuniform activity distributions",
   Phys Med Biol 57 (2012) 517-533, Lu-177 in soft tissue, 4.8 mm and 2.21 mm voxels. Eleven entries per
   voxel size are transcribed in ``Testing/Baselines/lanconelli2012_lu177_soft_tissue_voxel_s.csv``
   (source files and hashes in that folder's README). The database transports the beta spectrum only:
   its 3³ block holds 0.1339 MeV per decay at 4.8 mm (0.1335 at 2.21 mm) at 1.00 g/mL, which is the
   ICRP 107 mean beta energy (0.1334 MeV) plus the photon energy absorbed there, and ~10 % short of all
   electrons (0.1479 MeV, conversion and Auger electrons included) — ``test_lanconelli_database_is_beta_only``.
   So we compare our kernel built from the beta spectrum alone (``electron_emissions=("beta-",)``), at
   1.00 g/mL, photons included: centre +0.7 %, first shell (26) −2.7 %, photons at 2–5 voxels −2…+4 %
   (4.8 mm); centre +1.0 %, first shell −3.2 % (2.21 mm, where the electron escape is 16 %).

2. Peer (centre passes; first shell does not): the kernel shipped by PyTheranostics 0.1,
   ``doodle/kernels/DK_softtissueICRP_mGyperdecay.img``: 51³ float32, little-endian (the Interfile header
   says LITTLEENDIAN; big-endian reads give NaN), mGy per decay, 4.7952 mm voxels, made with PMOD at LMU
   München (2018; no record of how it was computed). Only the wheel is downloaded (``pip download
   --no-deps``) into ``$LUDOSIMETRY_PEER_CACHE`` or ``<repo>/.cache/peers/``; nothing of it is copied into
   the repository. Requirement of issue #3: centre voxel and sum of the first shell (26 neighbours)
   within 5 %.

   Density: the file name says "soft tissue (ICRP)" only. NIST's "Tissue, Soft (ICRP)" has 1.00 g/cm³,
   Geant4's G4_TISSUE_SOFT_ICRP 1.03 g/cm³. The peer's own energy balance decides: its centre + first
   shell hold 0.1522 MeV per decay at 1.00 g/mL (+2 % over what decays can supply there), 0.1568 MeV at
   1.03 g/mL (+5 %). We compare at 1.00 g/mL and print 1.03 too.

   Result: centre −2.9 %, first shell +10.5 % (1.03 g/mL: −5.5 % / +4.7 %). The peer is the outlier: against
   the DOSXYZnrc database plus our conversion/Auger electrons (the part the database lacks) the peer is
   +3.9 % in the centre and −11.5 % in the first shell, and its photon tail (2–5 voxels) is 16–21 % below
   the database, where ours is within 4.4 %. Its electron escape from the source voxel (≈ 4 %) is below
   what DOSXYZnrc, our transport (6.9 %) and Loevinger's point kernel (7.5 %) give. Matching it would
   make our kernel disagree with the Monte Carlo database; the shell test is therefore
   ``xfail(strict=True)`` at 5 % with these numbers.

3. Independent (no data needed): the kernel's centre value equals an independent numerical integral
   of its electron point kernel over the cube (geometric reduction factor of the cube with a
   Gauss–Legendre direction quadrature), and agrees within 2 % with the self-absorbed energy computed
   from Loevinger's empirical beta point-source function (R. Loevinger, Radiology 66 (1956) 55;
   ν = 18.6 (E0 − 0.036)^-1.37 cm²/g) for the three Lu-177 beta branches (endpoints from ENSDF:
   176.5, 384.9, 498.3 keV; ICRP 107 mean energies and yields), with the conversion and Auger
   electrons deposited along straight CSDA tracks.

Numbers are printed (``pytest -s``).
"""
from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from LuDosimetryLib.dose import dose_voxel_kernel
from LuDosimetryLib.dose.kernels import csda_range_g_cm2, electron_radial_table, icrp107_emissions
from LuDosimetryLib.radionuclides import MEV_TO_J, radionuclide

WHEEL_GLOB = "[Pp]y[Tt]heranostics-0.1-*.whl"
MEMBER = "doodle/kernels/DK_softtissueICRP_mGyperdecay.img"
VOXEL_MM = 4.7952
NIST_SOFT_TISSUE_ICRP_G_ML = 1.00  # NIST "Tissue, Soft (ICRP)"; see the module docstring
GEANT4_SOFT_TISSUE_ICRP_G_ML = 1.03  # Geant4 G4_TISSUE_SOFT_ICRP (ICRU-44 male soft tissue)
TOLERANCE = 0.05
LU = radionuclide("Lu-177")
_trapz = getattr(np, "trapezoid", None) or getattr(np, "trapz")  # numpy 2 renamed trapz
# Lu-177 beta branches: endpoint energies (MeV) from ENSDF, in the order of ICRP 107's 'beta-' list
LU177_BETA_ENDPOINTS_MEV = (0.1765, 0.2488, 0.3849, 0.4983)


def _cache_dir() -> Path:
    env = os.environ.get("LUDOSIMETRY_PEER_CACHE")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[2] / ".cache" / "peers"


@pytest.fixture(scope="module")
def peer_kernel_mgy() -> np.ndarray:
    cache = _cache_dir()
    wheels = sorted(cache.glob(WHEEL_GLOB)) if cache.is_dir() else []
    if not wheels:
        try:
            cache.mkdir(parents=True, exist_ok=True)
            subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "pytheranostics==0.1",
                            "-d", str(cache)], check=True, capture_output=True, timeout=300)
        except (OSError, subprocess.SubprocessError) as exc:
            pytest.skip(f"cannot download the PyTheranostics 0.1 wheel into {cache}: {exc}")
        wheels = sorted(cache.glob(WHEEL_GLOB))
        if not wheels:
            pytest.skip(f"pip download left no PyTheranostics 0.1 wheel in {cache}")
    with zipfile.ZipFile(wheels[0]) as zf:
        raw = zf.read(MEMBER)
    assert len(raw) == 51 ** 3 * 4, "unexpected size of the peer kernel"
    k = np.frombuffer(raw, "<f4").reshape(51, 51, 51).astype(np.float64)
    assert np.all(np.isfinite(k)) and k[25, 25, 25] == k.max(), "peer kernel not little-endian float32?"
    return k


def _regions(k: np.ndarray):
    """(centre, 26-neighbour sum, 6-face sum, second-shell (5³ − 3³) sum)."""
    c = tuple(n // 2 for n in k.shape)
    b3 = k[c[0] - 1:c[0] + 2, c[1] - 1:c[1] + 2, c[2] - 1:c[2] + 2]
    b5 = k[c[0] - 2:c[0] + 3, c[1] - 2:c[1] + 3, c[2] - 2:c[2] + 3]
    faces = sum(k[tuple(c[i] + (d if i == a else 0) for i in range(3))] for a in range(3) for d in (-1, 1))
    return k[c], b3.sum() - k[c], faces, b5.sum() - b3.sum()


def _comparison(peer_mgy: np.ndarray, density: float):
    ours = dose_voxel_kernel((VOXEL_MM,) * 3, "Lu-177", density_g_ml=density) * 1e3  # mGy per decay
    o, p = _regions(ours), _regions(peer_mgy)
    names = ("centre voxel", "26 neighbours", "6 face neighbours", "2nd shell (98)")
    print(f"\nLu-177 DVK, {VOXEL_MM} mm voxels, {density:.2f} g/mL (mGy per decay)")
    for name, a, b in zip(names, o, p):
        print(f"  {name:18s} ours {a:.5e}  peer {b:.5e}  diff {a / b - 1:+.2%}")
    return ours, o, p


def test_peer_energy_balance_supports_1_00_g_ml(peer_kernel_mgy):
    """The peer's centre + first shell hold no more energy than decays can put there at 1.00 g/mL."""
    mass_kg = VOXEL_MM ** 3 * 1e-6  # per g/mL
    block = peer_kernel_mgy[24:27, 24:27, 24:27].sum() * 1e-3 / MEV_TO_J  # MeV per decay per (g/mL)
    ours = dose_voxel_kernel((VOXEL_MM,) * 3, "Lu-177", density_g_ml=1.0)
    c = tuple(n // 2 for n in ours.shape)
    ours_block = ours[c[0] - 1:c[0] + 2, c[1] - 1:c[1] + 2, c[2] - 1:c[2] + 2].sum() * mass_kg / MEV_TO_J
    print(f"\npeer centre+shell energy: {block * mass_kg * 1.00:.4f} MeV at 1.00 g/mL, "
          f"{block * mass_kg * 1.03:.4f} MeV at 1.03 g/mL; ours (electrons + photons) {ours_block:.4f} MeV; "
          f"ICRP 107 electrons {LU.electron_energy_mev:.4f} MeV")
    assert ours_block < LU.electron_energy_mev + LU.photon_energy_mev
    assert block * mass_kg * 1.00 == pytest.approx(ours_block, rel=0.03)
    assert block * mass_kg * 1.03 > ours_block * 1.04  # 1.03 g/mL would need energy the decay lacks


def test_lu177_kernel_centre_matches_peer(peer_kernel_mgy):
    _comparison(peer_kernel_mgy, GEANT4_SOFT_TISSUE_ICRP_G_ML)  # printed for the record only
    ours, o, p = _comparison(peer_kernel_mgy, NIST_SOFT_TISSUE_ICRP_G_ML)
    assert o[0] == pytest.approx(p[0], rel=TOLERANCE)
    # same decay: the radial fall-off (photons) agrees in order of magnitude out to 5 and 10 voxels
    c = ours.shape[0] // 2
    for i in (5, 10):
        ratio = ours[c, c, c + i] / peer_kernel_mgy[25, 25, 25 + i]
        assert 0.7 < ratio < 1.6, f"photon tail ratio at {i} voxels: {ratio:.2f}"


@pytest.mark.xfail(strict=True, reason=(
    "first shell 26-neighbour sum at 1.00 g/mL is +10.5 % (6 faces +9.4 %, centre -2.9 %, 2nd shell +21.6 %); "
    "at 1.03 g/mL: 26 neighbours +4.7 %, centre -5.5 %. The peer itself differs from the DOSXYZnrc database "
    "(Lanconelli 2012) + our IC/Auger electrons by +3.9 % (centre) and -11.5 % (first shell), and its photon "
    "tail is 16-21 % below the database; ours agrees with the database within 3.2 % (centre, shell) and "
    "5.1 % (photon voxels) (see "
    "test_beta_kernel_matches_dosxyznrc_database and the module docstring)."))
def test_lu177_kernel_first_shell_matches_peer(peer_kernel_mgy):
    _, o, p = _comparison(peer_kernel_mgy, NIST_SOFT_TISSUE_ICRP_G_ML)
    assert o[1] == pytest.approx(p[1], rel=TOLERANCE)


def _cube_reduction_factor(r_mm: np.ndarray, side_mm: float) -> np.ndarray:
    """Probability that a point at distance r (random direction) from a uniform point in a cube stays in it.

    ``G(r) = < Π_i max(0, 1 − r |n_i| / a) >_n``, direction average by Gauss–Legendre in (cos θ, φ)
    over one octant (independent of the kernel's Fibonacci quadrature).
    """
    mu, wm = np.polynomial.legendre.leggauss(48)
    mu, wm = 0.5 * (mu + 1.0), 0.5 * wm
    ph, wp = np.polynomial.legendre.leggauss(48)
    ph, wp = 0.25 * np.pi * (ph + 1.0), 0.25 * np.pi * wp
    m, p = np.meshgrid(mu, ph, indexing="ij")
    w = (np.outer(wm, wp) / (0.5 * np.pi)).ravel()
    s = np.sqrt(1.0 - m * m)
    n = np.abs(np.stack([s * np.cos(p), s * np.sin(p), m]).reshape(3, -1))
    r = np.asarray(r_mm, dtype=np.float64).ravel()
    out = np.empty(r.size)
    for start in range(0, r.size, 2048):
        rr = r[start:start + 2048]
        f = np.prod(np.maximum(0.0, 1.0 - rr[:, None, None] * n[None] / side_mm), axis=1)
        out[start:start + 2048] = f @ w
    return out.reshape(np.shape(r_mm))


def _loevinger_radial(x_g_cm2: np.ndarray, e0_mev: float) -> np.ndarray:
    """4πx² J(x) of Loevinger's beta point-source function (shape only; forbiddenness factor 1)."""
    nu = 18.6 * (e0_mev - 0.036) ** -1.37  # cm²/g
    c = 2.0 if e0_mev < 0.5 else (1.5 if e0_mev < 1.5 else 1.0)
    nx = nu * x_g_cm2
    inner = c * (1.0 - (nx / c) * np.exp(1.0 - nx / c)) + nx * np.exp(1.0 - nx)
    j = np.where(nx < c, inner, nx * np.exp(1.0 - nx)) / nx ** 2
    return 4.0 * np.pi * x_g_cm2 ** 2 * j


@pytest.mark.parametrize("density", [1.00, 1.03])
def test_kernel_centre_equals_independent_cube_self_absorption(density):
    k = dose_voxel_kernel((VOXEL_MM,) * 3, "Lu-177", include_photons=False, density_g_ml=density)
    c = tuple(n // 2 for n in k.shape)
    centre_mev = k[c] * density * VOXEL_MM ** 3 * 1e-6 / MEV_TO_J
    # (a) the kernel's own electron radial deposition, integrated over the cube independently
    edges, energy = electron_radial_table("Lu-177")
    e_mm = edges * 10.0 / density
    g, w = np.polynomial.legendre.leggauss(8)
    pts = 0.5 * (e_mm[1:] + e_mm[:-1])[:, None] + 0.5 * np.diff(e_mm)[:, None] * g[None, :]
    own = float(np.sum(energy * (_cube_reduction_factor(pts, VOXEL_MM) @ w) / 2.0))
    # (b) Loevinger's empirical beta point-source function + straight CSDA tracks for IC/Auger lines
    em = icrp107_emissions("Lu-177")
    loev = 0.0
    for e0, (e_mean, y) in zip(LU177_BETA_ENDPOINTS_MEV, em["beta-"]):
        nu = 18.6 * (e0 - 0.036) ** -1.37
        x = np.linspace(1e-7, 20.0 / nu, 4001)  # g/cm²
        f = _loevinger_radial(x, e0)
        f /= _trapz(f, x)
        gx = _cube_reduction_factor(x * 10.0 / density, VOXEL_MM)
        loev += e_mean * y * float(np.sum(0.5 * (f[1:] * gx[1:] + f[:-1] * gx[:-1]) * np.diff(x)))
    for kind in ("IE", "auger"):
        for e, y in em[kind]:
            track = np.linspace(0.0, float(csda_range_g_cm2(np.array([e]))[0]) * 10.0 / density, 64)
            loev += e * y * float(np.mean(_cube_reduction_factor(track, VOXEL_MM)))
    ee = LU.electron_energy_mev
    print(f"\n{density:.2f} g/mL, {VOXEL_MM} mm cube: kernel centre {centre_mev:.5f} MeV (escape {1 - centre_mev / ee:.2%}), "
          f"own DPK integrated {own:.5f} MeV, Loevinger {loev:.5f} MeV (escape {1 - loev / ee:.2%})")
    assert centre_mev == pytest.approx(own, rel=2e-3)
    assert centre_mev == pytest.approx(loev, rel=0.02)
    assert 0.03 < 1.0 - centre_mev / ee < 0.12


# --- Monte Carlo database: Lanconelli et al. 2012 (DOSXYZnrc) ------------------------------------------
LANCONELLI_CSV = Path(__file__).resolve().parents[1] / "Baselines" / "lanconelli2012_lu177_soft_tissue_voxel_s.csv"
MGY_PER_MBQ_S_TO_GY_PER_DECAY = 1e-3 / 1e6  # mGy/(MBq·s) → Gy per decay


def _lanconelli(voxel_mm: float) -> dict:
    """{(i, j, k): S in Gy per decay} of the transcribed database entries for one voxel size."""
    table = {}
    with open(LANCONELLI_CSV, encoding="utf-8") as fh:
        rows = [line.strip().split(",") for line in fh if line.strip() and not line.startswith("#")]
    assert rows[0] == ["voxel_mm", "i", "j", "k", "s_mgy_per_mbq_s"], "unexpected baseline header"
    for size, i, j, k, s in rows[1:]:
        if float(size) == voxel_mm:
            table[(int(i), int(j), int(k))] = float(s) * MGY_PER_MBQ_S_TO_GY_PER_DECAY
    assert table, f"no {voxel_mm} mm entries in {LANCONELLI_CSV}"
    return table


def _at(kernel: np.ndarray, ijk) -> float:
    c = tuple(n // 2 for n in kernel.shape)
    return float(kernel[c[0] + ijk[2], c[1] + ijk[1], c[2] + ijk[0]])


def _centre_and_shell(get) -> tuple:
    """(centre, sum of the 26 neighbours) from octant entries (symmetric kernels)."""
    return get((0, 0, 0)), 6 * get((0, 0, 1)) + 12 * get((0, 1, 1)) + 8 * get((1, 1, 1))


@pytest.mark.parametrize("voxel_mm", [4.8, 2.21])
def test_lanconelli_database_is_beta_only(voxel_mm):
    """The database's 3³ block holds the beta energy (+ photons), not all electrons, at 1.00 g/mL."""
    ref = _lanconelli(voxel_mm)
    centre, shell = _centre_and_shell(ref.get)
    mass_kg = voxel_mm ** 3 * 1e-6 * 1.00  # 1.00 g/mL
    block_mev = (centre + shell) * mass_kg / MEV_TO_J
    beta_mev = sum(e * y for e, y in icrp107_emissions("Lu-177")["beta-"])
    print(f"\nDOSXYZnrc {voxel_mm} mm: 3x3x3 block {block_mev:.4f} MeV per decay at 1.00 g/mL; ICRP 107 beta "
          f"{beta_mev:.4f} MeV, all electrons {LU.electron_energy_mev:.4f} MeV")
    assert beta_mev < block_mev < beta_mev + 0.01 * beta_mev + LU.photon_energy_mev * 0.05
    assert block_mev < 0.93 * LU.electron_energy_mev


@pytest.mark.parametrize("voxel_mm", [4.8, 2.21])
def test_beta_kernel_matches_dosxyznrc_database(voxel_mm):
    """Our kernel from the beta spectrum alone vs the DOSXYZnrc voxel S values: centre, first shell, photons."""
    ref = _lanconelli(voxel_mm)
    ours = dose_voxel_kernel((voxel_mm,) * 3, "Lu-177", density_g_ml=1.00, electron_emissions=("beta-",))
    print(f"\nLu-177 beta-only DVK vs DOSXYZnrc (Lanconelli 2012), {voxel_mm} mm, 1.00 g/mL")
    for ijk, value in ref.items():
        print(f"  {str(ijk):10s} ours/database {_at(ours, ijk) / value:.3f}")
    (c_o, s_o), (c_r, s_r) = _centre_and_shell(lambda t: _at(ours, t)), _centre_and_shell(ref.get)
    print(f"  centre {c_o / c_r - 1:+.2%}, first shell (26) {s_o / s_r - 1:+.2%}")
    assert c_o == pytest.approx(c_r, rel=TOLERANCE)
    assert s_o == pytest.approx(s_r, rel=TOLERANCE)
    for ijk, value in ref.items():  # photon-dominated voxels beyond the electron range
        if max(ijk) >= 2:
            assert _at(ours, ijk) == pytest.approx(value, rel=0.10), f"photon voxel {ijk}"


def test_electron_emissions_partition_the_kernel():
    """beta + (IC, Auger) kernels add up to the all-electron kernel; bad kinds are refused."""
    h = (4.8,) * 3
    full = dose_voxel_kernel(h, "Lu-177", include_photons=False)
    beta = dose_voxel_kernel(h, "Lu-177", include_photons=False, electron_emissions=("beta-",))
    rest = dose_voxel_kernel(h, "Lu-177", include_photons=False, electron_emissions=["IE", "auger"])
    assert beta.shape == full.shape == rest.shape
    # each subset gets its own radial bins (range of its most energetic electron): equal to 1e-4, not bitwise
    np.testing.assert_allclose(beta + rest, full, rtol=1e-3, atol=1e-6 * full.max())
    assert beta.sum() * 4.8 ** 3 * 1e-6 / MEV_TO_J == pytest.approx(
        sum(e * y for e, y in icrp107_emissions("Lu-177")["beta-"]), rel=1e-3)
    from LuDosimetryLib.errors import LuDosimetryError
    for bad in ((), ("beta+",), ("gamma",)):
        with pytest.raises(LuDosimetryError, match="electron emissions"):
            dose_voxel_kernel(h, "Lu-177", electron_emissions=bad)
