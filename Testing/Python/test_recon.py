"""Tests of LuDosimetryLib.recon: simulated Siemens-like projections, μ-maps, quantitative reconstruction."""
from __future__ import annotations

import subprocess
import sys
import warnings
from datetime import datetime
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

import LuDosimetryLib
from conftest import require_tool
from LuDosimetryLib.errors import CancelledError, DicomFileError, OptionError, OutputError, StudyError
from LuDosimetryLib.io.dicom_common import PatientInfo, StudyInfo
from LuDosimetryLib.io.images import read_spect, resample_to
from LuDosimetryLib.io.inventory import scan_study
from LuDosimetryLib.progress import Progress
from LuDosimetryLib.recon.energy import EnergyWindow, identify_windows
from LuDosimetryLib.recon.mumap import mu_from_hu, read_mumap, write_mumap_series
from LuDosimetryLib.recon.projections import read_projections
from LuDosimetryLib.recon.quantify import counts_to_bq_per_ml, decay_during_acquisition
from LuDosimetryLib.recon.reconstruct import ReconOptions, reconstruct_study, stitch_beds
from LuDosimetryLib.recon.scatter import energy_window_scatter
from LuDosimetryLib.recon.system import ProjectionGeometry, frames_to_projector, projector_to_frames

ACQ = datetime(2024, 3, 5, 10, 0, 0)
INJ = datetime(2024, 3, 4, 9, 30, 0)
SP = 4.0  # mm, truth grid (2x finer than the 8 mm projection pixels)


def _phantom(n=56):
    z, y, x = np.mgrid[:n, :n, :n].astype(float)
    c = (n - 1) / 2.0
    X, Y, Z = (x - c) * SP, (y - c) * SP, (z - c) * SP
    body = ((X / 95) ** 2 + (Y / 70) ** 2 <= 1) & (np.abs(Z) < 90)
    liver = ((X + 35) / 40) ** 2 + (Y / 35) ** 2 + (Z / 45) ** 2 <= 1  # patient's right (-x in LPS)
    act = np.where(body, 1000.0, 0.0)
    act[liver] = 20000.0
    mu = np.where(body, 0.0135, 0.0)

    def img(a):
        i = sitk.GetImageFromArray(a.astype(np.float32))
        i.SetSpacing((SP,) * 3)
        i.SetOrigin((-c * SP,) * 3)
        return i

    return img(act), img(mu), {"body": body, "liver": liver}


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    root = tmp_path_factory.mktemp("recon_study")
    act, mu, masks = _phantom()
    st = StudyInfo(study_instance_uid="1.2.826.0.1.3680043.2.1125.77.1", study_datetime=ACQ)
    pat = PatientInfo(patient_id="RECON01", patient_name="Recon^Test")
    proj = write_projection_series(root / "study" / "proj", act, mu, acquisition_datetime=ACQ, duration_s=1200,
                                   injected_activity_bq=7.4e9, injection_datetime=INJ, patient=pat, study=st,
                                   series_description="Lu177 SPECT C1S1D1", forms=("unaltered", "advanced"),
                                   n_views=16, matrix=32, pixel_mm=8.0, seed=3)
    mm = write_mumap_series(root / "study" / "mumap", mu, 128, pat, st, "CTAC µ-map 208 keV", None)
    return {"root": root, "study": root / "study", "proj": proj, "mumap": mm, "act": act, "mu": mu, "masks": masks}


from LuDosimetryLib.phantom.projections import write_projection_series  # noqa: E402


# --------------------------------------------------------------------------------------------- pure parts

def test_import_does_not_import_pytomography_or_torch():
    code = ("import sys, LuDosimetryLib.recon, LuDosimetryLib.recon.reconstruct, LuDosimetryLib.phantom.projections, "
            "LuDosimetryLib.recon.mumap, LuDosimetryLib.recon.projections; "
            "bad=[m for m in ('pytomography','torch') if m in sys.modules]; print(bad); sys.exit(1 if bad else 0)")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr


def test_mu_from_hu_bilinear_at_208_kev():
    mu = mu_from_hu(np.array([-1000.0, -500.0, 0.0, 1593.0, 3000.0])) * 10.0  # 1/cm
    assert mu[0] == pytest.approx(0.0, abs=1e-9)
    assert mu[1] == pytest.approx(0.5 * mu[2], rel=1e-9)
    assert mu[2] == pytest.approx(0.1350, abs=5e-4)  # NIST XCOM water at 208 keV
    assert mu[3] == pytest.approx(0.2472, abs=2e-3)  # ICRU cortical bone, rho 1.92
    assert np.all(np.diff(mu) > 0)
    with pytest.raises(ValueError):
        mu_from_hu(0.0, energy_kev=30.0)


def test_windows_found_by_range_not_position():
    ws = [EnergyWindow("up", 228.8, 249.6), EnergyWindow("x", 100.0, 130.0), EnergyWindow("peak", 187.2, 228.8),
          EnergyWindow("low", 166.4, 187.2)]
    roles = identify_windows(ws)
    assert (roles.peak, roles.lower, roles.upper) == (2, 3, 0)
    assert identify_windows(ws[1:3]).lower is None
    with pytest.raises(ValueError, match="208"):
        identify_windows([EnergyWindow("tc", 126.0, 154.0)])


def test_projection_layout_round_trip():
    rng = np.random.default_rng(0)
    geom = ProjectionGeometry(n_cols=6, n_rows=4, pixel_mm=4.0, slice_mm=4.0,
                              gantry_angles_deg=np.array([0.0, 357.0, 180.0, 177.0]), radii_mm=np.full(4, 200.0),
                              x0_mm=-10.0, y0_mm=-10.0, z_row0_mm=6.0)
    frames = rng.random((3, 4, 4, 6))
    proj = frames_to_projector(frames, geom)
    assert proj.shape == (3, 4, 6, 4)
    np.testing.assert_allclose(projector_to_frames(proj, geom), frames, rtol=1e-6)
    # sorted by projector angle (gantry + 180)
    assert list(geom.view_order) == [2, 3, 0, 1][::-1][::-1] or np.all(np.diff(geom.projector_angles_deg[geom.view_order]) >= 0)


def test_scatter_tew_dew_and_errors():
    ws = [EnergyWindow("p", 187.2, 228.8), EnergyWindow("l", 166.4, 187.2), EnergyWindow("u", 228.8, 249.6)]
    counts = np.zeros((3, 2, 5, 5), dtype=np.float32)
    counts[1] = 30.0  # 20.8 keV wide
    counts[2] = 10.0
    roles = identify_windows(ws)
    tew = energy_window_scatter(counts, ws, roles, "tew", sigma_px=0)
    assert tew[0, 2, 2] == pytest.approx((30 / 20.8 + 10 / 20.8) * 41.6 / 2)
    dew = energy_window_scatter(counts, ws, roles, "dew", sigma_px=0, dew_k=0.5)
    assert dew[0, 2, 2] == pytest.approx(0.5 * 30)  # Jaszczak et al. 1984: k x lower-window counts
    assert energy_window_scatter(counts, ws, roles, "none") is None
    with pytest.raises(ValueError, match="upper scatter window"):
        energy_window_scatter(counts[:2], ws[:2], identify_windows(ws[:2]), "tew")
    with pytest.raises(ValueError):
        energy_window_scatter(counts, ws, roles, "monte-carlo")


def test_counts_to_bq_per_ml():
    # 1 MBq in a 1 mL voxel, 9.4 cps/MBq, 20 s views, negligible decay -> 188 counts per view
    dec = decay_during_acquisition(1200.0)
    assert 0.998 < dec < 1.0
    out = counts_to_bq_per_ml(np.array([188.0 * dec]), cps_per_mbq=9.4, view_duration_s=20.0,
                              total_duration_s=1200.0, voxel_ml=1.0)
    assert out[0] == pytest.approx(1e6, rel=1e-5)
    with pytest.raises(ValueError):
        counts_to_bq_per_ml(np.ones(1), cps_per_mbq=0.0, view_duration_s=1, total_duration_s=1, voxel_ml=1)


def test_stitch_beds_keeps_a_constant_and_spans_both():
    def bed(z0, value):
        im = sitk.GetImageFromArray(np.full((10, 3, 3), value, np.float32))
        im.SetSpacing((2.0, 2.0, 2.0))
        im.SetOrigin((0.0, 0.0, z0))
        return im

    out = stitch_beds([bed(12.0, 5.0), bed(0.0, 5.0)])
    assert out.GetSize()[2] == 16 and out.GetOrigin()[2] == 0.0
    np.testing.assert_allclose(sitk.GetArrayFromImage(out), 5.0, rtol=1e-6)


def test_recon_options_validation():
    for bad in (dict(algorithm="mlem"), dict(iterations=0), dict(subsets=0), dict(scatter="mc"),
                dict(calibration_cps_per_mbq=-1.0), dict(forms=("raw",)), dict(dead_time_factor=0.5)):
        with pytest.raises(OptionError):
            ReconOptions(**bad).validate()
    assert ReconOptions(algorithm="bsrem").describe().startswith("BSREM 4i8s RDP")


# --------------------------------------------------------------------------------------------- files

def test_mumap_series_files(study, tmp_path):
    paths = write_mumap_series(tmp_path / "mu256", study["mu"], 256, PatientInfo(), StudyInfo(), "µ-map xSPECT", "1.2.3")
    for p in paths + study["mumap"]:
        ds = pydicom.dcmread(str(p))
        assert ds.Modality == "NM" and "RECON TOMO" in ds.ImageType
    assert pydicom.dcmread(str(paths[0])).Rows == 256
    assert pydicom.dcmread(str(study["mumap"][0])).Rows == 128
    mu = read_mumap([str(p) for p in paths])
    arr = sitk.GetArrayFromImage(mu)
    assert np.median(arr[arr > 0.01]) == pytest.approx(0.0135, rel=1e-3)
    inv = scan_study(tmp_path / "mu256")
    assert [s.role for s in inv.series] == ["attenuation_map"]
    with pytest.raises(OutputError):
        write_mumap_series(tmp_path / "bad", study["mu"] * 1000.0, 128, PatientInfo(), StudyInfo(), "mu-map", None)


def test_dciodvfy_projections_and_mumap(study):
    exe = require_tool("dciodvfy")
    for p in study["proj"] + study["mumap"]:
        res = subprocess.run([exe, str(p)], capture_output=True, text=True)
        errors = [l for l in (res.stdout + res.stderr).splitlines() if l.startswith("Error")]
        assert not errors, (p.name, errors)


def test_projection_files_read_back(study):
    un = read_projections(study["proj"][0])
    adv = read_projections(study["proj"][1])
    assert un.form == "unaltered" and adv.form == "advanced"
    assert "[Advanced]" in adv.description
    assert [(w.lower_kev, w.upper_kev) for w in un.windows] == [(187.2, 228.8), (166.4, 187.2), (228.8, 249.6)]
    assert un.counts.shape == (3, 16, un.geometry.n_rows, 32)
    assert un.views_per_detector == 8 and un.duration_s == pytest.approx(1200.0, rel=1e-3)
    assert un.header_cps_per_mbq == pytest.approx(9.4)
    assert un.injected_activity_bq == pytest.approx(7.4e9) and un.injection_time == INJ
    assert np.ptp(un.geometry.radii_mm) > 5.0  # body-contour orbit: radius differs per view
    ds = pydicom.dcmread(str(study["proj"][0]), stop_before_pixels=True)
    assert list(ds.EnergyWindowVector[:17]) == [1] * 16 + [2]
    assert len(ds.DetectorInformationSequence[0].RadialPosition) == 8
    # photopeak scatter model: TEW estimate ~ SCATTER_FRACTION of the photopeak counts
    tew = energy_window_scatter(un.counts, un.windows, identify_windows(un.windows), "tew")
    assert tew.sum() / un.counts[0].sum() == pytest.approx(0.30, abs=0.03)
    # [Advanced] = raw: a ±3 % non-uniformity the other form has corrected
    assert adv.counts[0].sum() / un.counts[0].sum() == pytest.approx(1.0, abs=0.03)
    assert not np.array_equal(adv.counts, un.counts)
    assert "UNIF" in un.header.CorrectedImage and "UNIF" not in adv.header.CorrectedImage
    inv = scan_study(study["study"])
    assert sorted(s.form for s in inv.by_role("spect_projections")) == ["advanced", "unaltered"]


def test_bad_projection_inputs(study, tmp_path):
    with pytest.raises(DicomFileError, match="TOMO"):
        read_projections(study["mumap"][0])
    junk = tmp_path / "junk.dcm"
    junk.write_bytes(b"not dicom")
    with pytest.raises(DicomFileError):
        read_projections(junk)
    with pytest.raises(OutputError, match="n_views"):
        write_projection_series(tmp_path / "x", study["act"], study["mu"], acquisition_datetime=ACQ, duration_s=10,
                                injected_activity_bq=1e9, injection_datetime=INJ, patient=PatientInfo(),
                                study=StudyInfo(), series_description="x", n_views=15)
    with pytest.raises(OutputError, match="forms"):
        write_projection_series(tmp_path / "x", study["act"], study["mu"], acquisition_datetime=ACQ, duration_s=10,
                                injected_activity_bq=1e9, injection_datetime=INJ, patient=PatientInfo(),
                                study=StudyInfo(), series_description="x", forms=("raw",))


# --------------------------------------------------------------------------------------------- reconstruction

def _organ_activity(image, act, mask):
    mk = sitk.GetImageFromArray(mask.astype(np.float32))
    mk.CopyInformation(act)
    m = sitk.GetArrayFromImage(resample_to(mk, image))
    return float((sitk.GetArrayFromImage(image) * m).sum() * np.prod(image.GetSpacing()) / 1000.0)


def test_reconstruct_study_quantitative(study, tmp_path, capsys):
    before = list(warnings.filters)
    reports = []
    out = reconstruct_study(study["study"], tmp_path / "out",
                            ReconOptions(iterations=3, subsets=4, forms=("unaltered",)),
                            progress=lambda f, m: reports.append((f, m)))
    assert warnings.filters == before
    assert capsys.readouterr().out == ""
    assert len(out) == 1
    assert any("iteration 3/3" in m for _, m in reports) and reports[-1][0] == pytest.approx(1.0)
    ds = pydicom.dcmread(str(out[0]), stop_before_pixels=True)
    assert "OSEM 3i4s" in ds.SeriesDescription and ds.ConvolutionKernel == "OSEM 3i4s"
    assert "CTAC" in ds.DerivationDescription and "ATTN" in ds.CorrectedImage
    inv = scan_study(tmp_path / "out")
    assert [s.role for s in inv.series] == ["spect_recon"]
    img = read_spect([str(out[0])]).image
    act, masks = study["act"], study["masks"]
    truth = {k: float((sitk.GetArrayFromImage(act) * v).sum() * SP ** 3 / 1000.0) for k, v in masks.items()}
    body = _organ_activity(img, act, masks["body"]) / truth["body"]
    liver = _organ_activity(img, act, masks["liver"]) / truth["liver"]
    mirrored = _organ_activity(img, act, masks["liver"][:, :, ::-1]) / truth["liver"]
    assert 0.85 < body < 1.15, body
    assert 0.7 < liver < 1.1, liver
    assert mirrored < 0.5 * liver  # left-right orientation is right
    exe = require_tool("dciodvfy")
    res = subprocess.run([exe, str(out[0])], capture_output=True, text=True)
    assert not [l for l in (res.stdout + res.stderr).splitlines() if l.startswith("Error")]
    with pytest.raises(OutputError, match="exists"):
        reconstruct_study(study["study"], tmp_path / "out", ReconOptions(iterations=1, subsets=4, forms=("unaltered",)))


def test_reconstruction_header_says_ludosimetry(study, tmp_path):
    """Our reconstruction is LuDosimetry's, with its version, not the camera vendor's (whose projections
    it was made from)."""
    out = reconstruct_study(study["study"], tmp_path / "out", ReconOptions(iterations=1, subsets=4,
                                                                          forms=("unaltered",)))
    ds = pydicom.dcmread(str(out[0]), stop_before_pixels=True)
    assert ds.Manufacturer == "LuDosimetry"
    assert ds.ManufacturerModelName == "LuDosimetryLib"
    assert ds.SoftwareVersions == f"LuDosimetry {LuDosimetryLib.__version__}"
    projections = pydicom.dcmread(str(study["proj"][0]), stop_before_pixels=True)
    assert projections.Manufacturer == "SIEMENS NM" and projections.ManufacturerModelName == "Symbia Intevo Bold"


def test_cancel_restores_global_state(study, tmp_path):
    import pytomography  # noqa: F401 - already imported by the test above or imported here

    before = list(warnings.filters)
    device = pytomography.device
    prog = Progress(None)

    def cb(f, m):
        if "iteration" in m:
            prog.cancel()

    prog.callback = cb
    with pytest.raises(CancelledError):
        reconstruct_study(study["study"], tmp_path / "c", ReconOptions(iterations=2, subsets=8, algorithm="bsrem",
                                                                      forms=("advanced",)), progress=prog)
    assert warnings.filters == before
    assert pytomography.device == device


def test_reconstruct_study_bad_inputs(study, tmp_path):
    with pytest.raises(StudyError, match="no SPECT projection"):
        reconstruct_study(study["root"] / "study" / "mumap", tmp_path / "a", ReconOptions())
    only_proj = tmp_path / "only_proj"
    only_proj.mkdir()
    (only_proj / "p.dcm").write_bytes(Path(study["proj"][0]).read_bytes())
    with pytest.raises(StudyError, match="μ-map or CT"):
        reconstruct_study(only_proj, tmp_path / "b", ReconOptions(iterations=1))
    ds = pydicom.dcmread(str(only_proj / "p.dcm"))
    del ds.ImageComments
    ds.save_as(str(only_proj / "p.dcm"))
    with pytest.raises(StudyError, match="calibration"):
        reconstruct_study(only_proj, tmp_path / "c", ReconOptions(iterations=1, attenuation=False))


# --------------------------------------------------------------------------------------------- speed-ups

def test_fft_psf_equals_pytomography_convolution():
    """GaussianPSFOperator (FFT) reproduces PyTomography's own PSF convolution, forward and back."""
    pytest.importorskip("pytomography")
    from LuDosimetryLib.recon.backend import pytomography_session
    from LuDosimetryLib.recon.system import build_system_matrix

    m, rows, nv = 24, 10, 4
    geom = ProjectionGeometry(n_cols=m, n_rows=rows, pixel_mm=4.0, slice_mm=4.0,
                              gantry_angles_deg=np.arange(nv) * 90.0, radii_mm=np.array([120., 150., 180., 210.]),
                              x0_mm=-(m - 1) * 2.0, y0_mm=-(m - 1) * 2.0, z_row0_mm=(rows - 1) * 2.0)
    rng = np.random.default_rng(1)
    with pytomography_session("cpu") as ns:
        obj = ns.torch.tensor(rng.random(geom.object_shape()).astype(np.float32))
        mu = np.full(geom.object_shape(), 0.135, np.float32)
        out = []
        for fft in (False, True):
            system = build_system_matrix(ns, geom, mu, psf=True, psf_by_fft=fft)
            fp = system.forward(obj)
            out.append((fp.numpy(), system.backward(fp).numpy()))
    for a, b in zip(*out):
        assert np.abs(a - b).max() <= 1e-5 * np.abs(a).max()
    # the PSF does blur: a no-PSF projection differs
    assert out[0][0].std() > 0


def test_simulation_cropped_to_the_support_equals_the_full_detector():
    """Projecting only the detector columns that can receive photons changes nothing (< 1e-4)."""
    pytest.importorskip("pytomography")
    from LuDosimetryLib.phantom.projections import simulate_expected, simulation_geometry

    n = 40
    z, y, x = np.mgrid[:n // 2, :n, :n].astype(float)
    c = (n - 1) / 2.0
    X, Y = (x - c) * 4.0, (y - c) * 4.0
    body = (X / 40) ** 2 + (Y / 30) ** 2 <= 1
    act = np.where(body, 1000.0, 0.0)
    act[((X + 15) / 12) ** 2 + (Y / 10) ** 2 <= 1] = 20000.0

    def img(a):
        i = sitk.GetImageFromArray(a.astype(np.float32))
        i.SetSpacing((4.0,) * 3)
        i.SetOrigin((-c * 4.0, -c * 4.0, 0.0))
        return i

    res = []
    for crop in (True, False):
        geom = simulation_geometry(img(act), 8, 32, pixel_mm=8.0)
        res.append(simulate_expected(img(act), img(np.where(body, 0.0135, 0.0)), geom, duration_s=600,
                                     crop_to_support=crop))
    a, b = res
    assert a.shape == b.shape == (3, 8, geom.n_rows, 32)
    assert np.abs(a - b).max() <= 1e-4 * b.max()
    # and the cropped detector is narrower than the full one
    from LuDosimetryLib.phantom.projections import support_geometry, support_radius_mm

    sub, off = support_geometry(geom, support_radius_mm([img(act)], [0.0], (0.0, 0.0)) + 30.0)
    assert sub.n_cols < 32 and off > 0 and sub.n_cols + 2 * off == 32
