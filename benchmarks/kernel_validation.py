#!/usr/bin/env python3
"""Our Lu-177 dose voxel kernel against Monte Carlo kernels: numbers for issue #3's kernel check.

1. The DOSXYZnrc (EGSnrc) voxel S-value database of Lanconelli et al., Phys Med Biol 57 (2012) 517,
   Lu-177 soft tissue, 4.8 and 2.21 mm voxels (entries transcribed in
   ``Testing/Baselines/lanconelli2012_lu177_soft_tissue_voxel_s.csv``). The database transports the
   beta spectrum only, so our kernel is built from the beta spectrum alone for this comparison
   (``electron_emissions=("beta-",)``) at 1.00 g/mL.
2. The kernel shipped by PyTheranostics 0.1 (``DK_softtissueICRP_mGyperdecay``, 4.7952 mm, mGy per
   decay), read from its wheel in ``$LUDOSIMETRY_PEER_CACHE`` or ``.cache/peers`` when present (the test
   suite downloads it), compared with our default kernel (all ICRP 107 electrons + photons) and with the
   database completed by our conversion/Auger-electron kernel (the part the database lacks).

Also printed: the fraction of the electron energy that escapes the source voxel.

Usage: python benchmarks/kernel_validation.py
"""
from __future__ import annotations

import os
import sys
import zipfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from LuDosimetryLib.dose import dose_voxel_kernel  # noqa: E402
from LuDosimetryLib.dose.kernels import icrp107_emissions  # noqa: E402  (ICRP 107 emission lists)
from LuDosimetryLib.radionuclides import MEV_TO_J, radionuclide  # noqa: E402

DATABASE_CSV = REPO / "Testing" / "Baselines" / "lanconelli2012_lu177_soft_tissue_voxel_s.csv"
PEER_MEMBER = "doodle/kernels/DK_softtissueICRP_mGyperdecay.img"
PEER_VOXEL_MM = 4.7952
GY_PER_DECAY_PER_MGY_PER_MBQ_S = 1e-9  # 1 mGy/(MBq·s) = 1e-3 Gy / 1e6 decays
LU = radionuclide("Lu-177")


def database(voxel_mm: float) -> dict:
    data = np.genfromtxt(DATABASE_CSV, delimiter=",", skip_header=2, names=True)  # 2 comment lines
    rows = data[np.isclose(data["voxel_mm"], voxel_mm)]
    return {(int(r["i"]), int(r["j"]), int(r["k"])): float(r["s_mgy_per_mbq_s"]) * GY_PER_DECAY_PER_MGY_PER_MBQ_S
            for r in rows}


def value_at(kernel: np.ndarray, ijk) -> float:
    c = np.array(kernel.shape) // 2
    z, y, x = c[0] + ijk[2], c[1] + ijk[1], c[2] + ijk[0]
    return float(kernel[z, y, x]) if max(z, y, x) < kernel.shape[0] else 0.0


def centre_shell(get) -> tuple:
    return get((0, 0, 0)), 6 * get((0, 0, 1)) + 12 * get((0, 1, 1)) + 8 * get((1, 1, 1))


def escape(centre_gy: float, voxel_mm: float, electron_mev: float, density: float = 1.0) -> float:
    return 1.0 - centre_gy * density * voxel_mm ** 3 * 1e-6 / MEV_TO_J / electron_mev


def peer_kernel():
    cache = Path(os.environ.get("LUDOSIMETRY_PEER_CACHE", REPO / ".cache" / "peers"))
    wheels = sorted(cache.glob("[Pp]y[Tt]heranostics-0.1-*.whl")) if cache.is_dir() else []
    if not wheels:
        return None
    with zipfile.ZipFile(wheels[0]) as zf:
        raw = zf.read(PEER_MEMBER)
    return np.frombuffer(raw, "<f4").reshape(51, 51, 51).astype(np.float64) * 1e-3  # Gy per decay


def main() -> None:
    beta_mev = sum(float(e) * float(y) for e, y in icrp107_emissions("Lu-177")["beta-"])
    print(f"Lu-177 (ICRP 107): electrons {LU.electron_energy_mev:.4f} MeV/decay, of which beta spectrum "
          f"{beta_mev:.4f} MeV")
    for voxel in (4.8, 2.21):
        ref = database(voxel)
        ours = dose_voxel_kernel((voxel,) * 3, "Lu-177", density_g_ml=1.0, electron_emissions=("beta-",))
        print(f"\n== DOSXYZnrc database (Lanconelli 2012), {voxel} mm, ours from the beta spectrum, 1.00 g/mL ==")
        print(f"{'(i,j,k)':10s} {'database Gy/decay':>18s} {'ours Gy/decay':>15s} {'ours/db':>8s}")
        for ijk, v in ref.items():
            o = value_at(ours, ijk)
            print(f"{str(ijk):10s} {v:18.4e} {o:15.4e} {o / v:8.3f}")
        (co, so), (cr, sr) = centre_shell(lambda t: value_at(ours, t)), centre_shell(ref.get)
        print(f"centre {co / cr - 1:+.1%}   first shell (26) {so / sr - 1:+.1%}")
        print(f"beta energy escaping the source voxel: database {escape(cr, voxel, beta_mev):.1%}, "
              f"ours {escape(co, voxel, beta_mev):.1%}")
        full = dose_voxel_kernel((voxel,) * 3, "Lu-177", density_g_ml=1.0, include_photons=False)
        all_escape = escape(value_at(full, (0, 0, 0)), voxel, LU.electron_energy_mev)
        print(f"all electrons (beta + IC + Auger) escaping, ours: {all_escape:.1%}")

    peer = peer_kernel()
    if peer is None:
        print("\nPyTheranostics 0.1 wheel not in the peer cache: run the test suite once (it downloads it).")
        return
    ref = database(4.8)
    ic = dose_voxel_kernel((4.8,) * 3, "Lu-177", density_g_ml=1.0, include_photons=False,
                           electron_emissions=("IE", "auger"))
    completed = {t: v + value_at(ic, t) for t, v in ref.items()}
    get_peer = (lambda t: value_at(peer, t))
    print(f"\n== PyTheranostics 0.1 DK_softtissueICRP ({PEER_VOXEL_MM} mm) ==")
    for density in (1.00, 1.03):
        ours = dose_voxel_kernel((PEER_VOXEL_MM,) * 3, "Lu-177", density_g_ml=density)
        (co, so), (cp, sp) = centre_shell(lambda t: value_at(ours, t)), centre_shell(get_peer)
        print(f"ours (all electrons + photons, {density:.2f} g/mL) vs peer: centre {co / cp - 1:+.1%}, "
              f"first shell (26) {so / sp - 1:+.1%}")
    (cc, sc), (cp, sp) = centre_shell(completed.get), centre_shell(get_peer)
    print(f"peer vs database + our IC/Auger electrons (1.00 g/mL): centre {cp / cc - 1:+.1%}, "
          f"first shell {sp / sc - 1:+.1%}")
    print("photon voxels, peer/database: " + ", ".join(
        f"{t} {get_peer(t) / ref[t]:.3f}" for t in ref if max(t) >= 2))
    mass_kg = PEER_VOXEL_MM ** 3 * 1e-6
    block = peer[24:27, 24:27, 24:27].sum() * mass_kg / MEV_TO_J
    print(f"energy in the peer's 3x3x3 block: {block:.4f} MeV/decay at 1.00 g/mL, {block * 1.03:.4f} at 1.03 "
          f"(electrons available {LU.electron_energy_mev:.4f} + a little photon energy)")
    print(f"electron energy escaping the peer's source voxel (1.00 g/mL): "
          f"{escape(peer[25, 25, 25], PEER_VOXEL_MM, LU.electron_energy_mev):.1%} (photons in the centre ignored)")


if __name__ == "__main__":
    main()
