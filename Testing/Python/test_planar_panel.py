"""Planar view of a run (#14): each planar session's image and VOI regions written to the output folder, regions
edited by the user (``--planar-regions``) and the early checks of the planar inputs and options (one line, exit 2,
before any heavy work). The Slicer side (the whole-body table, loading the view, saving the edited regions and
recomputing) at the end, on PyPI's slicer-core (real MRML)."""
from __future__ import annotations

import shutil
import warnings
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import SimpleITK as sitk

from LuDosimetryLib.cli import main
from LuDosimetryLib.errors import LuDosimetryError
from LuDosimetryLib.io.planar import SESSION_FIELD, read_planar_regions
from LuDosimetryLib.io.voi_masks import write_voi_masks
from LuDosimetryLib.options import RunOptions
from LuDosimetryLib.output_layout import planar_image_file, planar_regions_file
from LuDosimetryLib.pipeline import run_study, write_outputs
from LuDosimetryLib.provenance import sha256_of_file
from test_twin import cached_twin  # the one fast twin of the test session

OPTIONS = dict(dose_method="ldm", planar_calibration_cps_per_mbq=10.0)


def _run(study, **values):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return run_study(study, RunOptions(**{**OPTIONS, **values}))


@pytest.fixture(scope="module")
def twin4(tmp_path_factory):
    """The fast patient4 twin (seed 1), written once per test session and shared with test_twin (read-only)."""
    return cached_twin(tmp_path_factory, "patient4", 1)


@pytest.fixture(scope="module")
def written(twin4, tmp_path_factory):
    results = _run(twin4)
    out = write_outputs(results, tmp_path_factory.mktemp("planar_panel_out") / "out")
    return SimpleNamespace(results=results, out=out, study=twin4)


def _regions_of(results) -> dict:
    return results.whole_body["planar_regions"]


def _write_regions(path: Path, regions: dict, grid: sitk.Image, session: str) -> Path:
    """A region file as the panel saves it after an edit (a VOI mask file on the session's grid)."""
    rows, cols = next(iter(regions.values())).shape
    write_voi_masks(path, {n: np.asarray(m).reshape(rows, 1, cols) for n, m in regions.items()}, grid,
                    {SESSION_FIELD: session})
    return path


# -------------------------------------------------------------------------------------- the files

def test_each_planar_session_is_written_as_its_image_and_regions(written):
    wb = written.results.whole_body
    sessions = wb["time_points"]
    assert len(sessions) == 4 and len(written.results.planar_views) == 4
    vois = set(written.results.vois)
    for k, session in enumerate(sessions, start=1):
        regions, grid, of = read_planar_regions(written.out / planar_regions_file(k))
        image = sitk.ReadImage(str(written.out / planar_image_file(k)))
        assert of == session["acquisition_time"] and image.GetMetaData(SESSION_FIELD) == of
        assert set(regions) == vois  # overlapping regions (a lesion in the liver) kept, each its own mask
        for name, mask in regions.items():
            np.testing.assert_array_equal(mask, written.results.planar_views[k - 1][2][name])
        # one coronal slice on the same grid as its regions
        assert image.GetSize()[1] == 1 and image.GetSize() == grid.GetSize()
        assert np.allclose(image.GetOrigin(), grid.GetOrigin()) and np.allclose(image.GetSpacing(), grid.GetSpacing())
        # the image is the activity behind each pixel: over the whole image, the session's whole-body activity
        # (the room background left outside the whole-body region averages out)
        total = float(sitk.GetArrayFromImage(image).astype(np.float64).sum())
        assert total == pytest.approx(session["activity_bq"], rel=0.02)
        # the liver region holds the liver's planar activity (before its background subtraction and restoration)
        liver = float(sitk.GetArrayFromImage(image)[:, 0, :][regions["Liver"]].sum())
        assert liver > 0.5 * wb["planar_regions"]["Liver"]["activity_bq"][k - 1]


def test_the_regions_lie_where_the_vois_are_on_the_ct(written):
    """The region of a VOI projected on the planar grid sits, in patient coordinates, over the VOI's 3-D centroid
    (x and z within a pixel): the panel's planar view overlays the CT's coronal view."""
    res = written.results
    regions, grid, _ = read_planar_regions(written.out / planar_regions_file(1))
    tp = res.whole_body["time_points"][0]["ct_and_spect_of_time_point"] - 1
    reference, masks = res.time_point_images[tp], res.time_point_masks[tp]
    sx, _sy, sz = grid.GetSpacing()
    for name in ("Kidney_L", "Spleen"):
        rows, cols = np.nonzero(regions[name])
        x = grid.GetOrigin()[0] + sx * cols.mean()
        z = grid.GetOrigin()[2] - sz * rows.mean()
        k, j, i = np.nonzero(np.asarray(masks[name]) >= 0.5)
        centre = reference.TransformContinuousIndexToPhysicalPoint((float(i.mean()), float(j.mean()),
                                                                    float(k.mean())))
        assert abs(x - centre[0]) < sx and abs(z - centre[2]) < sz, (name, x, z, centre)


# ----------------------------------------------------------------------------------- edited regions

def test_unedited_region_files_change_nothing_and_are_in_the_provenance(written):
    files = [str(written.out / planar_regions_file(k)) for k in range(1, 5)]
    res = _run(written.study, planar_regions=tuple(files))
    for name, before in _regions_of(written.results).items():
        after = _regions_of(res)[name]
        assert after["activity_bq"] == before["activity_bq"], name
        assert after["edited_region_file"] == [None] * 4
    recorded = {f["role"]: f for f in res.inputs["other_files"]}
    for k, path in enumerate(files, start=1):
        assert recorded[f"planar_regions_{k}"]["sha256"] == sha256_of_file(path)


def test_an_edited_region_changes_that_vois_planar_activity_only(written, tmp_path):
    before = _regions_of(written.results)
    regions, grid, session = read_planar_regions(written.out / planar_regions_file(2))
    columns = sitk.GetArrayFromImage(sitk.ReadImage(str(written.out / planar_image_file(2))))[:, 0, :].sum(axis=0)
    assert np.abs(columns[:5]).max() < 1e-3 * columns.max()  # room background at the image's edge
    edited = dict(regions)
    edited["Spleen"] = np.zeros_like(regions["Spleen"])  # shrunk to nothing
    grown = regions["Kidney_L"].copy()
    grown[np.nonzero(grown.any(axis=1))[0], :3] = True  # and pixels of room background
    edited["Kidney_L"] = grown
    rows = np.nonzero(regions["Kidney_R"].any(axis=1))[0]
    moved = np.zeros_like(regions["Kidney_R"])
    moved[rows, :5] = True  # moved off the body, onto the room background
    edited["Kidney_R"] = moved
    path = _write_regions(tmp_path / "session2_edited.nrrd", edited, grid, session)
    res = _run(written.study, planar_regions=(str(path),))
    after = _regions_of(res)
    # the region shrunk to nothing: not measured at that session, measured as before at the others
    assert np.isnan(after["Spleen"]["activity_bq"][1])
    assert [after["Spleen"]["activity_bq"][k] for k in (0, 2, 3)] == [before["Spleen"]["activity_bq"][k]
                                                                      for k in (0, 2, 3)]
    # a region drawn by the user is taken as it is: no restoration of the projection's part left out, so the
    # kidney (its projection, plus room background that holds nothing) reads its region's share of before
    frac = before["Kidney_L"]["fraction_of_projection_used"][1]
    assert frac < 0.99
    assert after["Kidney_L"]["activity_bq"][1] == pytest.approx(frac * before["Kidney_L"]["activity_bq"][1],
                                                                rel=0.01)
    # moved onto the background: (almost) nothing left of the kidney's 70 MBq
    assert abs(after["Kidney_R"]["activity_bq"][1]) < 0.01 * before["Kidney_R"]["activity_bq"][1]
    assert after["Spleen"]["edited_region_file"] == [None, str(path), None, None]
    # the other regions, and every region of the other sessions, unchanged
    for name in ("Liver", "Lesion_1", "Lesion_2"):
        assert after[name]["activity_bq"] == before[name]["activity_bq"], name
    for name in ("Kidney_L", "Kidney_R"):
        assert [after[name]["activity_bq"][k] for k in (0, 2, 3)] == [before[name]["activity_bq"][k]
                                                                      for k in (0, 2, 3)]
    # the whole body does not depend on the regions
    assert res.whole_body["tia_bq_s"] == written.results.whole_body["tia_bq_s"]
    assert res.whole_body["time_points"][1]["edited_regions"] == {n: str(path) for n in ("Kidney_L", "Kidney_R",
                                                                                        "Spleen")}
    assert res.whole_body["time_points"][0]["edited_regions"] == {}


def test_a_region_without_background_pixels_around_it_is_named_in_the_warnings(written, tmp_path):
    """A region with no ring around it (here drawn over the whole image) is measured without a background
    subtraction: its activity then holds the tissue in front of and behind it, and the run says so."""
    assert not [w for w in written.results.warnings if "no background pixels" in w]
    regions, grid, session = read_planar_regions(written.out / planar_regions_file(3))
    edited = dict(regions, Liver=np.ones_like(regions["Liver"]))
    path = _write_regions(tmp_path / "session3_liver_everywhere.nrrd", edited, grid, session)
    res = _run(written.study, planar_regions=(str(path),))
    named = [w for w in res.warnings if "no background pixels" in w]
    assert len(named) == 1 and "Liver" in named[0] and session in named[0], named
    after, before = _regions_of(res)["Liver"]["activity_bq"][2], _regions_of(written.results)["Liver"]["activity_bq"][2]
    assert after > 1.3 * before  # the activity of the tissue around it (and of other VOIs) is not subtracted
    for name in ("Kidney_L", "Spleen"):
        assert _regions_of(res)[name]["activity_bq"] == _regions_of(written.results)[name]["activity_bq"], name


def _cli_error(argv, capsys) -> str:
    code = main(["run", *argv, "--quiet"])
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


def test_a_region_file_off_the_planar_grid_is_one_line_and_exit_2(written, tmp_path, capsys):
    regions, grid, session = read_planar_regions(written.out / planar_regions_file(2))
    base = ["--dose-method", "ldm", "--planar-calibration-cps-per-mbq", "10"]
    # another matrix: refused from the headers, before any heavy work
    cropped = _write_regions(tmp_path / "cropped.nrrd", {n: m[:, 1:] for n, m in regions.items()},
                             sitk.Image([grid.GetSize()[0] - 1, 1, grid.GetSize()[2]], sitk.sitkUInt8), session)
    err = _cli_error([str(written.study), "--out", str(tmp_path / "o1"), *base, "--planar-regions", str(cropped)],
                     capsys)
    assert "cropped.nrrd" in err and "--planar-regions" in err and "not the planar grid" in err
    # the same matrix placed elsewhere than the session's image on the CT
    shifted_grid = sitk.Image(grid)
    shifted_grid.SetOrigin(tuple(np.add(grid.GetOrigin(), (3 * grid.GetSpacing()[0], 0.0, 0.0))))
    shifted = _write_regions(tmp_path / "shifted.nrrd", regions, shifted_grid, session)
    err = _cli_error([str(written.study), "--out", str(tmp_path / "o2"), *base, "--planar-regions", str(shifted)],
                     capsys)
    assert "shifted.nrrd" in err and "do not lie on the planar grid" in err
    # a session the study does not have
    other = _write_regions(tmp_path / "other.nrrd", regions, grid, "2001-01-01T00:00:00")
    err = _cli_error([str(written.study), "--out", str(tmp_path / "o3"), *base, "--planar-regions", str(other)],
                     capsys)
    assert "2001-01-01T00:00:00" in err and "does not have" in err
    # not a region file at all
    text = tmp_path / "regions.nrrd"
    text.write_text("not an image")
    err = _cli_error([str(written.study), "--out", str(tmp_path / "o4"), *base, "--planar-regions", str(text)], capsys)
    assert "regions.nrrd" in err and "--planar-regions" in err and "not a LuDosimetry VOI mask file" in err
    err = _cli_error([str(written.study), "--out", str(tmp_path / "o5"), *base, "--planar-regions",
                      str(tmp_path / "missing.nrrd")], capsys)
    assert "missing.nrrd" in err and "no such file" in err
    assert not any((tmp_path / f"o{k}").exists() for k in range(1, 6))


# ------------------------------------------------------------------------------------- early checks

def _copy_without(study: Path, tmp_path: Path, pattern: str) -> Path:
    copy = Path(shutil.copytree(str(study), str(tmp_path / "study")))
    removed = list(copy.glob(pattern))
    assert removed
    for f in removed:
        f.unlink()
    return copy


EARLY = [
    # (id, study: "twin" or "synthetic", files removed from the twin, argv, what the line says)
    ("hybrid without planar images", "synthetic", None, ["--hybrid", "2"], ("--hybrid", "planar")),
    ("hybrid with the planar images left out", "twin", None, ["--hybrid", "2", "--no-planar"],
     ("--hybrid", "--no-planar")),
    ("hybrid at a time point the study does not have", "twin", None, ["--hybrid", "7"],
     ("--hybrid", "time point 7 does not exist", "has 4")),
    ("blood-based marrow without blood samples", "synthetic", None, ["--marrow-method", "blood"],
     ("--blood-samples",)),
    ("a planar session with one view only", "twin", "Planar/scan3/WB_POS_*.dcm", [],
     ("scan3", "posterior view", "--no-planar")),
    ("a planar session without its photopeak window", "twin", "Planar/scan2/WB_*_Lu177_208keV.dcm", [],
     ("scan2", "no energy window contains 208", "--no-planar")),
    ("planar regions without planar images", "synthetic", None, ["--planar-regions", "regions.nrrd"],
     ("--planar-regions", "planar")),
]


@pytest.mark.parametrize("which, removed, argv, says", [c[1:] for c in EARLY], ids=[c[0] for c in EARLY])
def test_early_checks_are_one_line_exit_2_before_any_heavy_work(which, removed, argv, says, twin4, synthetic_study,
                                                                tmp_path, capsys):
    study = twin4 if which == "twin" else synthetic_study
    if removed:
        study = _copy_without(twin4, tmp_path, removed)
    err = _cli_error([str(study), "--out", str(tmp_path / "out"), "--dose-method", "ldm", *argv], capsys)
    for text in says:
        assert text in err, (text, err)
    assert not (tmp_path / "out").exists()
    # raised in the load/inventory stage: before the SPECTs are read
    from LuDosimetryLib.cli import build_parser
    from LuDosimetryLib.options import options_from_arguments
    reported = []
    try:
        options = options_from_arguments(build_parser().parse_args(["run", str(study), "--out", "o", "--dose-method",
                                                                    "ldm", *argv]))
    except LuDosimetryError:
        return  # refused with the options, before the study is read
    with pytest.raises(LuDosimetryError), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        run_study(study, options, progress=lambda fraction, message: reported.append(fraction))
    assert max(reported, default=0.0) <= 0.1, reported


# ------------------------------------------------------------------------------- the panel's scene

@pytest.fixture
def scene():
    slicer = pytest.importorskip("slicer")
    if not hasattr(slicer, "vtkMRMLScene"):  # pragma: no cover - a different 'slicer' package
        pytest.skip("the installed 'slicer' package has no MRML (install slicer-core)")
    from LuDosimetryLib import mrml
    s = mrml.create_scene()
    yield s
    mrml.release_scene(s)


def test_the_panel_shows_the_planar_view_and_recomputes_with_its_edited_regions(written, scene, tmp_path):
    """What the panel's whole-body section does, on a real MRML scene: the run's whole-body table, a planar
    session shown as a volume with its regions, a region edited and the run again with the edited regions."""
    from LuDosimetryLib import mrml
    from LuDosimetryLib.mrml.session import DosimetrySession, edited_output_dir, planar_regions_dir
    from LuDosimetryLib.result_tables import format_value

    session = DosimetrySession(scene)
    out = tmp_path / "out"
    results = session.run(written.study, out, RunOptions(**OPTIONS))
    # the whole-body table: whole body and remainder of body (no red marrow asked), as in results.json
    table = session.last_nodes["whole_body_table"].GetTable()
    rows = {table.GetColumn(0).GetValue(r): [table.GetColumn(c).GetValue(r) for c in range(table.GetNumberOfColumns())]
            for r in range(table.GetNumberOfRows())}
    assert set(rows) == {"Whole body", "Remainder of body"}
    assert rows["Whole body"][1] == "planar conjugate view"
    assert rows["Whole body"][2] == format_value("tia_bq_s", results.whole_body["tia_bq_s"])
    assert rows["Remainder of body"][3] == format_value("", results.remainder_of_body["mean_dose_gy"])
    assert session.whole_body_rows()[1][0] == "Whole body"
    # the planar view of session 2: the image and the regions the run used
    assert session.planar_session_count() == 4
    volume, segmentation = session.show_planar_view(2)
    assert session.show_planar_view(2) == (volume, segmentation)  # once per session
    image = sitk.ReadImage(str(out / planar_image_file(2)))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(mrml.image_from_volume_node(volume)),
                                  sitk.GetArrayFromImage(image))
    regions = mrml.planar_regions_from_segmentation(segmentation, image)
    for name, mask in regions.items():
        np.testing.assert_array_equal(mask, results.planar_views[1][2][name])
    # the user empties the spleen's region (what the Segment Editor's erase leaves: an empty segment)
    segments = segmentation.GetSegmentation()
    segments.RemoveSegment(segments.GetSegmentIdBySegmentName("Spleen"))
    empty = mrml.add_segmentation(scene, {"Spleen": np.zeros(image.GetSize()[::-1], dtype=bool)}, image, "erased")
    segments.CopySegmentFromSegmentation(empty.GetSegmentation(), empty.GetSegmentation().GetNthSegmentID(0))
    edited_out = edited_output_dir(out)
    again = session.recompute_with_edited_planar_regions(written.study, edited_out, RunOptions(**OPTIONS))
    saved = sorted(planar_regions_dir(edited_out).glob("*.nrrd"))
    assert [p.name for p in saved] == ["session2_regions.nrrd"]
    assert np.isnan(_regions_of(again)["Spleen"]["activity_bq"][1])
    assert _regions_of(again)["Spleen"]["edited_region_file"] == [None, str(saved[0]), None, None]
    for name in ("Liver", "Kidney_L", "Kidney_R"):
        assert _regions_of(again)[name]["activity_bq"] == _regions_of(results)[name]["activity_bq"], name
    # the new run's folder holds the regions it used: the view shown from it has the spleen's region empty
    assert session.planar_view_nodes == {}
    _volume, shown = session.show_planar_view(2, edited_out)
    assert not mrml.planar_regions_from_segmentation(shown, image)["Spleen"].any()


def test_the_whole_body_table_has_a_row_per_quantity_the_run_has(scene):
    from LuDosimetryLib import mrml
    from LuDosimetryLib.result_tables import MISSING_TEXT

    marrow = {"method": "blood-based", "tia_bq_s": 2.5e11, "mean_dose_gy": 0.125, "tia_uncertainty_pct": 12.0,
              "mean_dose_uncertainty_pct": 14.5}
    results = SimpleNamespace(whole_body=None, remainder_of_body=None, red_marrow=marrow)
    table = mrml.add_whole_body_table(scene, results).GetTable()
    cells = [table.GetColumn(c).GetValue(0) for c in range(table.GetNumberOfColumns())]
    assert table.GetNumberOfRows() == 1
    assert cells == ["Red marrow", "blood-based", "2.500e+11", "0.125", "12", "14.5"]
    assert [table.GetColumn(c).GetName() for c in range(6)] == ["Quantity", "Method", "TIA (Bq s)", "Mean dose (Gy)",
                                                                "u TIA (%)", "u dose (%)"]
    # a quantity without a dose (no mass) shows the dash, a run without any quantity has no table
    results = SimpleNamespace(whole_body={"method": "SPECT field of view", "tia_bq_s": 1e12}, remainder_of_body=None,
                              red_marrow=None)
    table = mrml.add_whole_body_table(scene, results).GetTable()
    assert table.GetColumn(3).GetValue(0) == MISSING_TEXT
    assert mrml.add_whole_body_table(scene, SimpleNamespace(whole_body=None, remainder_of_body=None,
                                                            red_marrow=None)) is None
