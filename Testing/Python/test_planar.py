"""Planar conjugate-view quantification, whole body, remainder of body and hybrid planar/SPECT (issue #14)."""
from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from scipy.ndimage import distance_transform_edt

from LuDosimetryLib.assumptions import StrictRefusal
from LuDosimetryLib.errors import DicomFileError, OptionError
from LuDosimetryLib.options import RunOptions
from LuDosimetryLib.pipeline import run_study
from LuDosimetryLib.planar.conjugate import (activity_image_bq, conjugate_mean, counts_per_bq, depth_profile_factor,
                                             line_integrals, self_attenuation_factor)
from LuDosimetryLib.planar.projection import PlanarGrid, align_offset_px, project
from LuDosimetryLib.planar.regions import (background_ring, nesting, region_activity, region_masks,
                                          view_depth)
from LuDosimetryLib.planar.windows import split_windows, tew_primary
from test_twin import cached_twin  # the one fast twin of the test session

MU_WATER_PER_MM = 0.01353  # 208 keV (NIST XCOM, log-log between 200 and 300 keV)


# ------------------------------------------------------------------------------------------ physics

def test_conjugate_view_of_a_point_source_in_a_water_slab_is_exact():
    # A point source of A Bq at depth d in a slab of thickness L: I_A = kA e^(-mu d), I_P = kA e^(-mu (L-d)).
    a_bq, k = 5.0e6, counts_per_bq(10.0, 200.0)
    thickness, dy = 240.0, 2.0
    ny = int(thickness / dy)
    mu = np.full((1, ny, 1), MU_WATER_PER_MM)
    to_ant, to_post, total = line_integrals(mu, dy)
    assert total[0, 0] == pytest.approx(MU_WATER_PER_MM * thickness)
    for j in (3, 40, 100):  # shallow, mid, deep
        depth = (j + 0.5) * dy
        assert to_ant[0, j, 0] == pytest.approx(MU_WATER_PER_MM * depth)
        ant = np.array([[k * a_bq * np.exp(-MU_WATER_PER_MM * depth)]])
        post = np.array([[k * a_bq * np.exp(-MU_WATER_PER_MM * (thickness - depth))]])
        t = np.exp(-total)
        got = activity_image_bq(ant, post, t, np.ones((1, 1)), k, sigma_px=0)
        assert got[0, 0] == pytest.approx(a_bq, rel=1e-9)
        # without the attenuation correction it is wrong by e^(mu L / 2) (here 5.1x)
        assert activity_image_bq(ant, post, np.ones((1, 1)), np.ones((1, 1)), k, sigma_px=0)[0, 0] < 0.25 * a_bq
        # the depth factor of a point source is 1
        profile = np.zeros_like(mu)
        profile[0, j, 0] = 1.0
        assert depth_profile_factor(profile, mu, dy)[0, 0] == pytest.approx(1.0, rel=1e-9)


def test_uniform_source_depth_factor_is_the_mird16_self_attenuation_factor():
    dy, mu_t = 0.5, MU_WATER_PER_MM * 200.0  # 20 cm of water: f = 0.75
    mu = np.full((1, 400, 1), MU_WATER_PER_MM)
    f = depth_profile_factor(np.ones_like(mu), mu, dy)[0, 0]
    analytic = (mu_t / 2) / np.sinh(mu_t / 2)
    assert self_attenuation_factor(mu_t) == pytest.approx(analytic)
    assert f == pytest.approx(analytic, rel=1e-4) and analytic < 0.8


def test_conjugate_mean_keeps_counts_where_the_pixel_geometric_mean_is_biased():
    rng = np.random.default_rng(4)
    mean_a, mean_p = np.full((64, 64), 3.0), np.full((64, 64), 1.2)
    a, p = rng.poisson(mean_a).astype(float), rng.poisson(mean_p).astype(float)
    truth = np.sqrt(3.0 * 1.2) * a.size
    assert conjugate_mean(a, p).sum() == pytest.approx(truth, rel=0.03)  # -2.1 % at 1.2 counts per pixel
    assert conjugate_mean(a, p, sigma_px=0).sum() < 0.8 * truth  # pixel-by-pixel GM of Poisson counts: -25 %


class _Frame:
    def __init__(self, view, name, kev, counts):
        self.view, self.window_name, self.window_kev, self.counts = view, name, kev, counts


def test_tew_removes_a_known_scatter_and_windows_are_found_by_range():
    primary = np.zeros((20, 20))
    primary[8:12, 8:12] = 1000.0
    d_lower, d_upper = 3.0, 0.4  # scatter counts per keV at the photopeak's edges, uniform in space
    peak_w, side_w = 41.6, 20.8
    scatter_peak = (d_lower + d_upper) / 2.0 * peak_w
    frames = [_Frame("ANTERIOR", "upper", (228.8, 249.6), np.full((20, 20), d_upper * side_w)),
              _Frame("ANTERIOR", "P", (187.2, 228.8), primary + scatter_peak),
              _Frame("ANTERIOR", "low", (166.4, 187.2), np.full((20, 20), d_lower * side_w)),
              _Frame("ANTERIOR", "113keV", (101.7, 124.3), np.full((20, 20), 50.0))]
    views = split_windows(frames)
    assert set(views) == {"ANTERIOR"}
    np.testing.assert_allclose(tew_primary(views["ANTERIOR"]), primary, atol=1e-4)  # float32 scatter
    # without the upper window: the lower alone (the upper taken as 0)
    no_upper = split_windows([f for f in frames if f.window_name != "upper"])["ANTERIOR"]
    assert no_upper.upper is None
    np.testing.assert_allclose(tew_primary(no_upper), primary + d_upper / 2 * peak_w, atol=1e-4)
    with pytest.raises(ValueError, match="208"):
        split_windows([frames[0], frames[2]])


def _box_image(lo_mm, hi_mm, spacing=2.0, size=(60, 60, 60), origin=(-60.0, -60.0, -60.0)) -> sitk.Image:
    arr = np.zeros(size[::-1], dtype=np.float32)
    z, y, x = np.meshgrid(*[origin[i] + spacing * np.arange(size[i]) for i in (2, 1, 0)], indexing="ij")
    inside = ((x >= lo_mm[0]) & (x < hi_mm[0]) & (y >= lo_mm[1]) & (y < hi_mm[1]) & (z >= lo_mm[2]) & (z < hi_mm[2]))
    arr[inside] = 1.0
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing((spacing,) * 3)
    img.SetOrigin(origin)
    return img


def test_voi_projection_gives_its_thickness_and_regions_leave_overlaps_out():
    grid = PlanarGrid(x0_mm=-59.0, z0_mm=59.0, spacing_mm=(2.0, 2.0), shape=(60, 60))
    box = _box_image((-20, -30, -10), (20, 10, 30))  # 40 mm deep along y
    t = project(box, grid)
    x = grid.x0_mm + 2.0 * np.arange(60)
    z = grid.z0_mm - 2.0 * np.arange(60)
    inside = (np.abs(z)[:, None] < 8) & (np.abs(x)[None, :] < 18)
    np.testing.assert_allclose(t[inside], 40.0, atol=1e-3)
    assert t[(np.abs(z)[:, None] > 40) | (np.abs(x)[None, :] > 30)].max() == 0.0
    # two VOIs overlapping in projection and a third nested in the first
    other = _box_image((0, 20, -10), (40, 40, 30))
    nested = _box_image((-10, -20, 0), (0, -10, 10))
    masks3d = {n: sitk.GetArrayFromImage(i) for n, i in (("a", box), ("b", other), ("lesion", nested))}
    nest = nesting(masks3d)
    assert nest["lesion"] == {"a"} and nest["b"] == set()
    thick = {n: project(i, grid) for n, i in (("a", box), ("b", other), ("lesion", nested))}
    regions = region_masks(thick, nest)
    assert not (regions["a"] & regions["b"]).any()
    assert regions["lesion"].sum() > 0 and (regions["lesion"] <= (thick["a"] >= 5)).all()
    # activity spread like the thickness: the part left out is restored
    m = thick["a"] * 10.0  # 10 Bq per mm of VOI; no attenuation, k = 1
    ones = np.ones_like(m)
    ra = region_activity(m, m, 1.0, ones, regions["a"], thick["a"], ones, None, None, None)
    assert ra.activity_bq == pytest.approx(m.sum(), rel=1e-9) and 0.3 < ra.used_thickness_fraction < 0.9


def test_background_ring_keeps_away_from_other_vois_unless_that_leaves_too_little():
    region = np.zeros((60, 60), dtype=bool)
    region[25:35, 20:30] = True
    other = np.zeros_like(region)
    other[25:35, 44:50] = True  # another VOI 14 px (28 mm at 2 mm) to the right: its blur reaches the ring
    body = np.ones_like(region)
    ring = background_ring(region, region | other, body, 2.0)
    assert ring.sum() >= 20
    assert distance_transform_edt(~other)[ring].min() > 5.0  # more than 10 mm from the other VOI
    assert ring[25:35, 30:44].any()  # and still on that side, between them
    # a region hemmed in on every side: the ring keeps the pixels near the others rather than vanish
    crowded = np.ones_like(region)
    crowded[20:40, 15:35] = False
    tight = background_ring(region, region | crowded, body, 2.0)
    assert tight.sum() > 0 and not (tight & crowded).any()


def _slab_counts(conc_per_mm, mu_per_mm, y_edges_mm, to_anterior: bool):
    """Counts per (count per Bq) of piecewise-uniform sources along a ray of uniform μ, integrated exactly:
    each slab [y0, y1] gives c (e^(−μ y0) − e^(−μ y1)) / μ with y the depth from the view's detector."""
    total = 0.0
    depth_end = y_edges_mm[-1]
    for c, y0, y1 in zip(conc_per_mm, y_edges_mm[:-1], y_edges_mm[1:]):
        if not to_anterior:
            y0, y1 = depth_end - y1, depth_end - y0
        total += c * (np.exp(-mu_per_mm * y0) - np.exp(-mu_per_mm * y1)) / mu_per_mm
    return total


def test_background_removed_view_by_view_is_exact_for_an_organ_off_the_mid_plane():
    # A 300 mm water body with a uniform background b and a 40 mm organ of concentration a at 230-270 mm from
    # the anterior face (a kidney's depth): the counts of each view integrated exactly, no blur.
    mu, dy, depth = MU_WATER_PER_MM, 2.0, 300.0
    rows = cols = 40
    b, a, k = 30.0, 150.0, 0.5  # Bq per mm of path per pixel; counts per Bq
    organ = np.zeros((rows, cols), dtype=bool)
    organ[15:25, 15:25] = True
    edges_organ, edges_body = [0.0, 230.0, 270.0, depth], [0.0, depth]
    ant = np.where(organ, k * _slab_counts([b, a, b], mu, edges_organ, True),
                   k * _slab_counts([b], mu, edges_body, True))
    post = np.where(organ, k * _slab_counts([b, a, b], mu, edges_organ, False),
                    k * _slab_counts([b], mu, edges_body, False))
    ny = int(depth / dy)
    y = (np.arange(ny) + 0.5) * dy
    mu3 = np.full((rows, ny, cols), mu)
    voi3 = np.zeros((rows, ny, cols))
    voi3[:, (y > 230) & (y < 270), :] = 1.0
    voi3 *= organ[:, None, :]
    to_ant, to_post, mu_l = line_integrals(mu3, dy)
    body = view_depth(np.ones_like(mu3), to_ant, to_post, dy)
    around = body - view_depth(voi3, to_ant, to_post, dy)
    thick = voi3.sum(axis=1) * dy
    ring = background_ring(organ, organ, np.ones_like(organ), 4.0)
    ra = region_activity(ant, post, k, np.exp(-mu_l), organ, thick, self_attenuation_factor(mu * thick), around,
                         body, ring)
    truth = a * 40.0 * organ.sum()
    assert ra.activity_bq == pytest.approx(truth, rel=0.01)
    gross = region_activity(ant, post, k, np.exp(-mu_l), organ, thick, self_attenuation_factor(mu * thick), None,
                            None, None)
    assert ra.activity_bq + ra.background_bq == pytest.approx(gross.activity_bq, rel=1e-9)
    assert 0.5 * gross.activity_bq < ra.background_bq < gross.activity_bq  # b over 260 mm against a over 40 mm
    # the background removed after the geometric mean (one c for both views, as Buijs' G-domain correction):
    # the GM of a sum exceeds the sum of the GMs, and the organ comes out too high
    gm = np.sqrt(ant * post) / np.sqrt(np.exp(-mu_l)) / k
    bg_only = np.sqrt(body.anterior_mm * body.posterior_mm) * b / np.sqrt(np.exp(-mu_l))
    c_ring = float(gm[ring].sum()) / float(bg_only[ring].sum()) * b
    g_domain = float(((gm - c_ring / b * np.sqrt(around.anterior_mm * around.posterior_mm) * b
                       / np.sqrt(np.exp(-mu_l))) * self_attenuation_factor(mu * thick))[organ].sum())
    assert g_domain > 1.05 * truth


def test_alignment_finds_a_known_shift_below_a_pixel():
    yy, xx = np.mgrid[0:80, 0:60]
    blob = lambda r, c: np.exp(-((yy - r) ** 2 + (xx - c) ** 2) / 18.0) + 0.5 * np.exp(-((yy - r - 15) ** 2 + (xx - c + 9) ** 2) / 30.0)  # noqa: E731
    planar = blob(40.3, 27.6)
    template = blob(20.0, 20.0)[10:50, 5:45]  # its (0, 0) is the planar's (10 + 20.3, 5 + 7.6)
    r, c, cc = align_offset_px(planar, template)
    assert r == pytest.approx(30.3, abs=0.25) and c == pytest.approx(12.6, abs=0.25) and cc > 0.95
    r2, c2, _ = align_offset_px(planar, template, guess_px=(28, 14), search_px=4)
    assert (round(r2), round(c2)) == (round(r), round(c))


# ------------------------------------------------------------------------------------- the twin

@pytest.fixture(scope="module")
def twin4(tmp_path_factory):
    """The fast patient4 twin (seed 1), written once per test session and shared with test_twin (read-only)."""
    return cached_twin(tmp_path_factory, "patient4", 1)


@pytest.fixture(scope="module")
def run4(twin4):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return run_study(twin4, RunOptions(hybrid_time_point=1, dose_method="ldm"))


def test_twin_truth_has_whole_body_and_remainder(twin4):
    truth = json.loads((twin4 / "truth.json").read_text())
    wb, rob = truth["whole_body"], truth["remainder_of_body"]
    organs = sum(v["tia_bq_s"] for n, v in truth["vois"].items() if not n.startswith("Lesion"))
    assert wb["tia_bq_s"] == pytest.approx(organs + truth["remainder"]["tia_bq_s"], rel=1e-9)
    assert rob["tia_bq_s"] == pytest.approx(truth["remainder"]["tia_bq_s"], rel=1e-9)
    assert 0 < rob["mass_g"] < wb["mass_g"]


def test_twin_planar_scatter_is_what_tew_estimates(twin4):
    from LuDosimetryLib.io.planar import read_planar
    from LuDosimetryLib.phantom.planar import PEAK_SCATTER_FRACTION
    acq = read_planar(sorted(str(p) for p in (twin4 / "Planar/scan1").glob("*.dcm")))
    views = split_windows(acq.frames)
    for vc in views.values():
        peak = float(vc.peak.sum())
        scatter = peak - float(tew_primary(vc).sum())
        assert scatter / peak == pytest.approx(PEAK_SCATTER_FRACTION / (1 + PEAK_SCATTER_FRACTION), rel=0.03)
    assert acq.dwell_s == pytest.approx(193.5, rel=1e-3)
    # posterior flipped to the anterior orientation: both views have the liver (patient's right) on the same side
    ant, post = (views[v].peak for v in ("ANTERIOR", "POSTERIOR"))
    half = ant.shape[1] // 2
    assert (ant[:, :half].sum() > ant[:, half:].sum()) == (post[:, :half].sum() > post[:, half:].sum())


def test_whole_body_and_remainder_against_the_twin_truth(twin4, run4):
    truth = json.loads((twin4 / "truth.json").read_text())
    wb, rob = run4.whole_body, run4.remainder_of_body
    assert wb["method"] == "planar conjugate view" and len(wb["time_points"]) == 4
    for tp, true_bq in zip(wb["time_points"], truth["whole_body"]["activity_bq"]):
        assert tp["activity_bq"] == pytest.approx(true_bq, rel=0.06)  # HU->mu vs the twin's mu: about -3.5 %
        assert abs(tp["shift_from_header_mm"][0]) < 6 and abs(tp["shift_from_header_mm"][1]) < 6
    assert wb["tia_bq_s"] == pytest.approx(truth["whole_body"]["tia_bq_s"], rel=0.10)
    assert wb["mass_g"] == pytest.approx(truth["whole_body"]["mass_g"], rel=0.05)
    assert rob["tia_bq_s"] == pytest.approx(truth["remainder_of_body"]["tia_bq_s"], rel=0.25)
    assert rob["mass_g"] == pytest.approx(truth["remainder_of_body"]["mass_g"], rel=0.06)
    assert rob["tia_bq_s"] == pytest.approx(wb["tia_bq_s"] - rob["vois_tia_bq_s"])
    assert wb["mean_dose_gy"] > 0 and rob["tia_uncertainty_pct"] > 0
    # per-region planar activities, late time points within 15 % of the truth for the organs
    for name in ("Liver", "Kidney_L", "Spleen"):
        assert wb["planar_regions"][name]["activity_bq"][-1] == pytest.approx(truth["vois"][name]["activity_bq"][-1],
                                                                             rel=0.15)
    doc = run4.to_json()
    assert doc["whole_body"]["tia_bq_s"] == wb["tia_bq_s"] and "remainder_of_body" in doc
    json.dumps(doc)


def test_hybrid_agrees_with_four_point_spect_for_organs(run4):
    hybrid = run4.whole_body["hybrid"]
    assert hybrid["spect_time_point"] == 2
    for name in ("Liver", "Kidney_L", "Kidney_R", "Spleen"):
        v = run4.vois[name]
        assert abs(v.hybrid_vs_spect_pct) < 10.0
        assert v.to_json()["hybrid_tia_bq_s"] == pytest.approx(v.tia_bq_s * (1 + v.hybrid_vs_spect_pct / 100))
    # the scale is the SPECT over the planar session taken with it (measured against measured)
    assert hybrid["planar_session_paired"] == run4.whole_body["time_points"][1]["acquisition_time"]
    assert all(d["scale_from"].startswith("planar session at") for d in hybrid["vois"].values() if "scale" in d)


def test_hybrid_with_the_spect_at_3_h_agrees_too(twin4):
    # at 3-4 h p.i. the blood pool is 50-65 % of an organ's planar counts: removed view by view
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = run_study(twin4, RunOptions(hybrid_time_point=0, dose_method="ldm"))
    assert res.time_points[0].hours_post_injection < 4.0
    for name in ("Liver", "Kidney_L", "Kidney_R", "Spleen"):
        assert abs(res.vois[name].hybrid_vs_spect_pct) < 10.0, name


def test_whole_body_from_the_spect_field_of_view_without_planar(synthetic_study):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = run_study(synthetic_study, RunOptions(dose_method="ldm"))
    assert res.whole_body["method"] == "SPECT field of view" and res.whole_body["limitations"]
    assert any("SPECT field of view" in w for w in res.warnings)
    # a limitation of the method, not a value assumed
    assert not [a for a in res.assumptions if "planar" in a.what or "whole body" in a.what]
    truth = json.loads((synthetic_study / "truth.json").read_text())
    total = sum(v["tia_bq_s"] for n, v in truth["vois"].items() if not n.lower().startswith("lesion"))
    assert res.whole_body["tia_bq_s"] > total  # the field of view holds the organs and the rest
    assert res.remainder_of_body["tia_bq_s"] > 0 and res.remainder_of_body["mass_g"] > 0
    with pytest.raises(OptionError, match="planar"):
        run_study(synthetic_study, RunOptions(dose_method="ldm", hybrid_time_point=1))


# ---------------------------------------------------------------------------------------- bad input

def _copy(twin4, tmp_path) -> Path:
    return Path(shutil.copytree(str(twin4), str(tmp_path / "twin")))


def test_planar_without_the_opposite_view_is_one_clear_error(twin4, tmp_path):
    study = _copy(twin4, tmp_path)
    for f in (study / "Planar/scan3").glob("WB_POS_*.dcm"):
        f.unlink()
    with pytest.raises(DicomFileError) as err, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        run_study(study, RunOptions(dose_method="ldm"))
    text = str(err.value)
    assert "posterior" in text and "scan3" in text and "\n" not in text
    with warnings.catch_warnings():  # the way out the message names
        warnings.simplefilter("ignore")
        res = run_study(study, RunOptions(dose_method="ldm", planar=False))
    assert res.whole_body["method"] == "SPECT field of view"


def test_missing_scatter_windows_are_named_assumptions(twin4, tmp_path):
    study = _copy(twin4, tmp_path)
    for f in study.glob("Planar/scan*/WB_*_Lu177_SC_upper.dcm"):
        f.unlink()
    for f in (study / "Planar/scan2").glob("WB_*_Lu177_SC_lower.dcm"):
        f.unlink()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = run_study(study, RunOptions(dose_method="ldm", planar_calibration_cps_per_mbq=10.0))
    whats = [a.what for a in res.assumptions]
    assert any("TEW upper scatter window" in w for w in whats)
    assert any("scatter correction" in w and a.value.startswith("none") for w, a in zip(whats, res.assumptions))
    # scan 2 without scatter correction reads about 1.3x more than with it
    tps = res.whole_body["time_points"]
    assert tps[1]["scatter_fraction"] == pytest.approx(0.0, abs=1e-12) and tps[0]["scatter_fraction"] > 0.15
    with pytest.raises(StrictRefusal), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        run_study(study, RunOptions(dose_method="ldm", planar_calibration_cps_per_mbq=10.0, strict=True))


def test_no_ct_for_the_thickness_is_a_named_assumption(twin4, tmp_path):
    study = _copy(twin4, tmp_path)
    for k in range(1, 5):
        shutil.rmtree(study / f"SPECT_Cts/scan{k}/ct")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = run_study(study, RunOptions(dose_method="ldm"))
    assert any("no CT for the patient's thickness" in a.what for a in res.assumptions)
    assert res.whole_body["method"] == "SPECT field of view"


def _edit_planar(study: Path, name: str, change) -> Path:
    import pydicom
    path = study / "Planar/scan2" / name
    ds = pydicom.dcmread(str(path))
    change(ds)
    ds.save_as(str(path))
    return path


def _cli_run(study: Path, out: Path, capsys, *extra) -> tuple:
    from LuDosimetryLib import cli
    code = cli.main(["run", str(study), "--out", str(out), "--quiet", "--dose-method", "ldm", *extra])
    return code, capsys.readouterr().err.strip().splitlines()


def test_faulty_planar_files_are_one_line_refusals(twin4, tmp_path, capsys):
    # each a whole class of fault: no counts, another patient's file, a damaged file, a file of another date
    def zero_counts(ds):
        ds.PixelData = np.zeros_like(ds.pixel_array).tobytes()

    faults = {
        "no counts": ("WB_ANT_Lu177_208keV.dcm", zero_counts),
        "more than one patient": ("WB_POS_Lu177_208keV.dcm", lambda ds: setattr(ds, "PatientID", "SOMEONE_ELSE")),
        "not one acquisition": ("WB_ANT_Lu177_SC_lower.dcm",
                                lambda ds: (setattr(ds, "AcquisitionDate", "20191116"), ds.pop("AcquisitionDateTime"))),
    }
    for i, (problem, (name, change)) in enumerate(faults.items()):
        study = Path(shutil.copytree(str(twin4), str(tmp_path / f"s{i}")))
        path = _edit_planar(study, name, change)
        code, err = _cli_run(study, tmp_path / f"out{i}", capsys)
        assert code == 2 and len(err) == 1, (problem, err)  # the warnings on the way are not printed
        assert problem in err[0] and "Planar/scan2/" in err[0], err[0]
        assert not (tmp_path / f"out{i}").exists()
    study = Path(shutil.copytree(str(twin4), str(tmp_path / "damaged")))
    (study / "Planar/scan2/WB_ANT_Lu177_208keV.dcm").write_bytes(b"not DICOM" * 50)
    code, err = _cli_run(study, tmp_path / "out_damaged", capsys)
    assert code == 2 and len(err) == 1 and "WB_ANT_Lu177_208keV.dcm" in err[0] and "not a DICOM file" in err[0]


def test_a_planar_time_from_another_header_is_a_named_assumption(twin4, tmp_path):
    study = _copy(twin4, tmp_path)
    for path in (study / "Planar/scan2").glob("*.dcm"):
        _edit_planar(study, path.name, lambda ds: (setattr(ds, "AcquisitionDate", ""),
                                                   setattr(ds, "AcquisitionTime", ""), ds.pop("AcquisitionDateTime")))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = run_study(study, RunOptions(dose_method="ldm"))
        named = [a for a in res.assumptions if a.what.startswith("acquisition time of series")]
        assert len(named) == 1 and "SeriesDate/SeriesTime" in named[0].source
        assert not any("SeriesDate/SeriesTime" in w for w in res.warnings)  # named once, as the assumption
        with pytest.raises(StrictRefusal, match="acquisition time"):
            run_study(study, RunOptions(dose_method="ldm", strict=True))


def test_the_default_planar_sensitivity_is_named_and_a_given_one_is_used(twin4, run4):
    named = [a for a in run4.assumptions if "planar system sensitivity" in a.what]
    assert len(named) == 1 and named[0].value == "10 cps/MBq"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = run_study(twin4, RunOptions(dose_method="ldm", planar_calibration_cps_per_mbq=20.0))
    assert not any("planar system sensitivity" in a.what for a in res.assumptions)
    assert res.whole_body["time_points"][0]["activity_bq"] == pytest.approx(
        0.5 * run4.whole_body["time_points"][0]["activity_bq"], rel=1e-9)


def test_report_and_results_json_show_whole_body_remainder_and_hybrid(run4, tmp_path):
    from LuDosimetryLib.pipeline import write_outputs
    out = write_outputs(run4, tmp_path / "out")
    doc = json.loads((out / "results.json").read_text())
    assert doc["whole_body"]["method"] == "planar conjugate view"
    assert doc["remainder_of_body"]["tia_bq_s"] == pytest.approx(run4.remainder_of_body["tia_bq_s"])
    assert doc["vois"]["Liver"]["hybrid_tia_bq_s"] == pytest.approx(run4.vois["Liver"].hybrid_tia_bq_s)
    html = (out / "report.html").read_text()
    assert "Whole body and remainder of body" in html and "Hybrid planar/SPECT" in html


def test_reader_orients_views_and_refuses_a_sweep_without_its_speed(twin4, tmp_path):
    import pydicom
    from LuDosimetryLib.io.planar import read_planar
    files = sorted((twin4 / "Planar/scan1").glob("*.dcm"))
    acq = read_planar([str(f) for f in files])
    assert {(f.view, f.window_name) for f in acq.frames} == {(v, w) for v in ("ANTERIOR", "POSTERIOR") for w in
                                                              ("Lu177_208keV", "Lu177_SC_lower", "Lu177_SC_upper")}
    post = next(f for f in acq.frames if f.view == "POSTERIOR" and f.window_name == "Lu177_208keV")
    stored = pydicom.dcmread(post.file).pixel_array.astype(float)
    np.testing.assert_array_equal(post.counts, stored[:, ::-1])  # posterior flipped to the anterior orientation
    assert acq.x0_mm is not None and acq.z0_mm is not None
    broken = tmp_path / "WB.dcm"
    ds = pydicom.dcmread(str(files[0]))
    del ds.ScanVelocity
    ds.save_as(str(broken))
    with pytest.raises(DicomFileError, match="ScanVelocity") as err:
        read_planar([str(broken)])
    assert err.value.path == str(broken)
