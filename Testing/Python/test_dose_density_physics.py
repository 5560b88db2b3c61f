"""Density correction physics (issue #12 items 1 and 2).

- The density correction scales the locally absorbed (electron) dose by ρ_k/ρ and leaves the photon dose
  alone (Dieudonné et al., J Nucl Med 54 (2013) 236): a lung-density region with uniform activity, large
  compared with the electron range, gets E_e·Ã/(ρV) from its electrons; photons far from a source give
  the same dose whatever the density.
- Gas is a Bragg–Gray cavity (no local absorption); outside the body outline the dose is 0, in the map
  and in the RT Dose, whose maximum is then the maximum inside the body.
- The mean dose of a VOI is MIRD's mass-weighted Σ D_i m_i / Σ m_i, named in results.json and the tables.
"""
from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import SimpleITK as sitk

from LuDosimetryLib.dose import (body_outline, dose_dvk, dose_ldm, dose_voxel_kernel, dose_voxel_kernel_parts,
                                 split_kernel)
from LuDosimetryLib.dose.media import GAS_MAX_G_ML
from LuDosimetryLib.io.rtdose import read_rtdose
from LuDosimetryLib.options import RunOptions
from LuDosimetryLib.pipeline import run_study, write_outputs
from LuDosimetryLib.radionuclides import MEV_TO_J, radionuclide
from LuDosimetryLib.result_tables import voi_results_csv_text

from study_builder import build_study

LU = radionuclide("Lu-177")
H = (4.0, 4.0, 4.0)
VOXEL_KG = 4.0 ** 3 * 1e-6  # 64 mm³ of water (1 g/mL) in kg


# --- electrons scaled, photons not -----------------------------------------------------------------------

def test_lung_region_gets_the_electron_energy_over_its_own_mass():
    """Uniform TIA in a 164 mm block of 0.3 g/mL lung: the electron dose in the middle is E_e·Ã/(ρV)."""
    tia = np.full((41, 41, 41), 1.0e9, np.float32)  # decays per voxel
    rho_lung = 0.3
    lung = dose_dvk(tia, H, density_g_ml=np.full(tia.shape, rho_lung, np.float32))
    water = dose_dvk(tia, H, density_g_ml=1.0)
    electrons_water_gy = 1.0e9 * LU.electron_energy_mev * MEV_TO_J / VOXEL_KG
    # the photon dose does not depend on the density: the difference is the electrons' alone
    assert lung[20, 20, 20] - water[20, 20, 20] == pytest.approx(electrons_water_gy * (1 / rho_lung - 1), rel=0.02)
    # and the electron part of the lung dose is E_e·Ã/(ρV) (analytic, within 2 %)
    photons = dose_dvk(tia, H, kernel=dose_voxel_kernel_parts(H)[1])
    assert lung[20, 20, 20] - photons[20, 20, 20] == pytest.approx(electrons_water_gy / rho_lung, rel=0.02)
    # local deposition (electrons only) gives the same in lung
    assert dose_ldm(tia, H, density_g_ml=rho_lung)[20, 20, 20] == pytest.approx(electrons_water_gy / rho_lung,
                                                                                 rel=1e-5)


def test_photon_dose_is_not_scaled_by_the_density():
    tia = np.zeros((41, 41, 41), np.float32)
    tia[20, 20, 20] = 1.0e12
    water = dose_dvk(tia, H, density_g_ml=1.0)
    lung = dose_dvk(tia, H, density_g_ml=0.3)
    far = np.zeros(tia.shape, bool)
    far[20, 20, 26:] = True  # 24 mm and more from the source: photons only (electron range ≤ 2.2 mm in water)
    # equal to the float32 FFT round-off of the electron part (1e-7 of its maximum)
    np.testing.assert_allclose(lung[far], water[far], rtol=1e-4, atol=1e-7 * float(lung.max()))
    assert lung[20, 20, 20] > 3.0 * water[20, 20, 20]  # the source voxel is electron dose: × 1/0.3


def test_kernel_parts_add_up_and_a_file_kernel_splits_like_the_built_one():
    electrons, photons = dose_voxel_kernel_parts(H)
    total = dose_voxel_kernel(H)
    np.testing.assert_allclose(electrons + photons, total, rtol=1e-12, atol=1e-30)
    assert photons.min() >= 0 and electrons.min() >= 0
    c = tuple(n // 2 for n in total.shape)
    assert electrons[c] > 0.95 * total[c]  # the source voxel: electrons
    assert electrons[c[0], c[1], c[2] + 5] == 0.0  # 20 mm away: photons only
    e2, p2 = split_kernel(total, H)
    np.testing.assert_allclose(p2, photons, rtol=1e-9, atol=1e-30)
    np.testing.assert_allclose(e2 + p2, total, rtol=1e-12)
    # a kernel file is split the same way inside dose_dvk
    tia = np.zeros((21, 21, 21), np.float32)
    tia[8:13, 8:13, 8:13] = 1e9
    rho = np.full(tia.shape, 0.3, np.float32)
    np.testing.assert_allclose(dose_dvk(tia, H, kernel=total, density_g_ml=rho), dose_dvk(tia, H, density_g_ml=rho),
                               rtol=1e-4, atol=1e-6 * float(dose_dvk(tia, H, density_g_ml=rho).max()))


# --- gas and the body outline ----------------------------------------------------------------------------

def _body_with_lung_and_gas():
    """(z, y, x) density: air around an elliptic body of soft tissue holding a lung and a gas pocket."""
    z, y, x = np.mgrid[0:24, 0:40, 0:48]
    rho = np.full(z.shape, 0.0012, np.float32)
    body = ((x - 24) / 20.0) ** 2 + ((y - 20) / 15.0) ** 2 <= 1.0
    rho[body] = 1.04
    lung = body & (((x - 14) / 5.0) ** 2 + ((y - 20) / 6.0) ** 2 <= 1.0) & (z > 3) & (z < 20)
    rho[lung] = 0.26
    gas = body & (abs(x - 30) <= 1) & (abs(y - 20) <= 1) & (abs(z - 12) <= 1)
    rho[gas] = 0.0012
    return rho, body, lung, gas


def test_body_outline_holds_lung_and_gas_not_the_air_around():
    rho, body, lung, gas = _body_with_lung_and_gas()
    outline = body_outline(rho)
    assert outline[lung].all() and outline[gas].all()
    assert not outline[~body].any()
    assert GAS_MAX_G_ML == pytest.approx(0.0527, abs=5e-4)  # -950 HU, Schneider et al. 2000


def test_no_dose_outside_the_body_and_gas_is_a_cavity():
    """SPECT-like blur puts activity in air and gas; no voxel there may exceed the hot tissue's dose."""
    from scipy import ndimage

    rho, body, lung, gas = _body_with_lung_and_gas()
    tia = np.zeros(rho.shape, np.float32)
    hot = body & ~gas & (np.abs(np.mgrid[0:24, 0:40, 0:48][2] - 34) <= 2)  # a slab beside the gas pocket
    tia[hot] = 5e10
    tia[body] += 1e9
    tia = ndimage.gaussian_filter(tia, 2.5).astype(np.float32)  # spill into the air and the gas
    outline = body_outline(rho)
    for dose in (dose_dvk(tia, H, density_g_ml=rho, body_mask=outline),
                 dose_ldm(tia, H, density_g_ml=rho, body_mask=outline)):
        assert np.all(dose[~outline] == 0.0)
        assert dose[gas].max() <= dose[hot].max()
        assert dose.max() == dose[outline & (rho > GAS_MAX_G_ML)].max()


@pytest.fixture(scope="module")
def demo_run(synthetic_study, tmp_path_factory):
    """The fast synthetic patient (demo-like, CT with air around the body): DVK and LDM runs, written."""
    out = {}
    for method in ("dvk", "ldm"):
        res = run_study(synthetic_study, RunOptions(dose_method=method))
        folder = write_outputs(res, tmp_path_factory.mktemp(method) / "out")
        out[method] = (res, folder)
    return out


@pytest.mark.parametrize("method", ["dvk", "ldm"])
def test_demo_dose_in_air_is_zero_and_rtdose_max_is_inside_the_body(demo_run, method):
    res, folder = demo_run[method]
    dose = sitk.GetArrayFromImage(res.dose_gy)
    rho = sitk.GetArrayFromImage(res.density_g_per_ml)
    outline = body_outline(rho)
    air = rho < GAS_MAX_G_ML
    lesion_min_gy = min(v.mean_dose_gy for n, v in res.vois.items() if n.startswith("Lesion"))
    assert air.any() and not outline.all()
    assert np.all(dose[~outline] == 0.0)
    assert dose[air].max() < lesion_min_gy  # no voxel in air exceeds the lesion doses
    back = sitk.GetArrayFromImage(read_rtdose(folder / "rtdose.dcm").image)
    assert back.max() == pytest.approx(float(dose[outline].max()), rel=1e-6)
    assert back.max() == pytest.approx(max(v.max_dose_gy for v in res.vois.values()), rel=0.25)


# --- mass-weighted mean dose -----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def mixed_density_run(tmp_path_factory):
    """Analytic study whose CT has a bone-like 'spine' (700 HU) through the liver sphere; one VOI straddles it."""
    root = tmp_path_factory.mktemp("mixed") / "study"
    built = build_study(root, shifts_mm=[(0.0, 0.0, 0.0)] * 4)  # the CT with body, spheres and spine
    z, y, x = np.mgrid[0:24, 0:32, 0:40]
    box = ((np.abs(x - 20) <= 2) & (y >= 19) & (y <= 25) & (np.abs(z - 12) <= 2)).astype(np.float32)
    # the kidney sphere at the body's left edge, with air beyond the skin
    edge = ((x >= 1) & (x <= 4) & (y >= 19) & (y <= 22) & (np.abs(z - 12) <= 1)).astype(np.float32)
    res = run_study(built.root, RunOptions(masks_per_time_point=[{"Straddling": box, "Edge": edge}] * 4))
    out = write_outputs(res, tmp_path_factory.mktemp("mixed_out") / "out")
    return res, box, out


def test_mean_dose_is_mass_weighted_and_named(mixed_density_run):
    res, box, out = mixed_density_run
    dose = sitk.GetArrayFromImage(res.dose_gy).astype(np.float64)
    rho = sitk.GetArrayFromImage(res.density_g_per_ml).astype(np.float64)
    inside = box > 0
    assert rho[inside].max() > 1.3 and rho[inside].min() < 1.1  # bone and soft tissue in the VOI
    mass_weighted = float(np.sum(dose[inside] * rho[inside]) / np.sum(rho[inside]))
    volume_weighted = float(dose[inside].mean())
    assert abs(mass_weighted / volume_weighted - 1) > 0.01  # the two differ here
    voi = res.vois["Straddling"]
    assert voi.mean_dose_gy == pytest.approx(mass_weighted, rel=1e-6)
    assert voi.mean_dose_volume_weighted_gy == pytest.approx(volume_weighted, rel=1e-6)
    assert voi.gy_per_gbq == pytest.approx(voi.mean_dose_gy / (res.injected_activity_bq / 1e9), rel=1e-12)
    saved = json.loads((out / "results.json").read_text())["vois"]["Straddling"]
    assert saved["mean_dose_gy"] == pytest.approx(mass_weighted, rel=1e-6)
    assert saved["mean_dose_volume_weighted_gy"] == pytest.approx(volume_weighted, rel=1e-6)
    rows = list(csv.DictReader((out / "voi_results.csv").read_text(encoding="utf-8").splitlines()))
    assert rows[0]["VOI"] == "Straddling"
    assert float(rows[0]["Mean dose, mass-weighted (Gy)"]) == pytest.approx(mass_weighted, rel=1e-6)
    assert float(rows[0]["Mean dose, volume-weighted (Gy)"]) == pytest.approx(volume_weighted, rel=1e-6)


def test_a_voi_reaching_into_the_air_is_a_warning(mixed_density_run):
    res, _, _ = mixed_density_run
    dose = sitk.GetArrayFromImage(res.dose_gy)
    outline = body_outline(sitk.GetArrayFromImage(res.density_g_per_ml))
    assert np.all(dose[~outline] == 0.0)
    (warning,) = [w for w in res.warnings if "outside the body outline" in w]
    assert warning.startswith("VOI 'Edge': ") and "Straddling" not in " ".join(res.warnings)


def test_results_of_an_earlier_version_are_not_shown_as_mass_weighted():
    """An earlier results.json has a volume-weighted mean_dose_gy only: it goes under the volume-weighted title."""
    rows = list(csv.DictReader(voi_results_csv_text({"Liver": {"volume_ml": 1.0, "mean_dose_gy": 4.5}})
                               .splitlines()))
    assert rows[0]["Mean dose, volume-weighted (Gy)"] == repr(4.5)
    assert rows[0]["Mean dose, mass-weighted (Gy)"] == ""
