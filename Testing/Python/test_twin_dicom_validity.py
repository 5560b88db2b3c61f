"""One file of every kind the twin writes: dciodvfy (no Error lines), pydicom, SimpleITK, dcmtk dcmdump.

Work 6 (projections, mu-maps) is written for one scan through :mod:`LuDosimetryLib.recon` when that
package is importable, and checked the same way; otherwise those kinds are skipped.
"""
from __future__ import annotations

import subprocess
from datetime import datetime
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from conftest import require_tool

KINDS = {
    "ct": "SPECT_Cts/scan1/ct/CT_0001.dcm",
    "spect_pt": "SPECT_Cts/scan1/spect/PT_0001.dcm",
    "spect_stray_nm": None,  # found below (patient 6 scan 2)
    "rtstruct_organs": "VOIs/scan1/organs/RTSTRUCT_organs.dcm",
    "rtstruct_lesions": "VOIs/scan1/lesions/RTSTRUCT_lesions.dcm",
    "seg_organs": "VOIs/scan1/organ_masks/SEG_organ_masks.dcm",
    "seg_lesions": "VOIs/scan1/lesion_masks/SEG_lesion_masks.dcm",
    "planar": "Planar/scan1/WB_ANT_Lu177_208keV.dcm",
    "tia": "TIA/TIA_map.dcm",
    "pet": "Pretherapy/pet/PT_0001.dcm",
    "pet_ct": "Pretherapy/pet_ct/CT_0001.dcm",
    "diagnostic_ct": "Pretherapy/diagnostic_ct/CT_0001.dcm",
}
NO_PIXEL_GEOMETRY = {"rtstruct_organs", "rtstruct_lesions", "seg_organs", "seg_lesions", "planar"}


from test_twin import cached_twin  # noqa: E402  (the patient-6 twin is written once for both files)


@pytest.fixture(scope="module")
def twin(tmp_path_factory):
    root = cached_twin(tmp_path_factory, "patient6", 2)
    files = {k: root / v for k, v in KINDS.items() if v}
    for p in sorted((root / "SPECT_Cts/scan2/spect").glob("*.dcm")):
        if pydicom.dcmread(str(p), stop_before_pixels=True).Modality == "NM":
            files["spect_stray_nm"] = p
    return root, files


@pytest.fixture(scope="module")
def projection_files(twin, tmp_path_factory):
    from LuDosimetryLib.phantom import twin as twin_mod
    recon = twin_mod.projection_writers()
    if recon is None:
        pytest.skip("LuDosimetryLib.recon is not available: work 6 is not written")
    from LuDosimetryLib.io.dicom_common import StudyInfo
    from LuDosimetryLib.phantom.anatomy import Grid
    from LuDosimetryLib.phantom.presets import get_preset
    root, _ = twin
    p = get_preset("patient6")
    g = Grid((-120.0, -100.0, -60.0), (9.6, 9.6, 9.6), (26, 22, 12))
    z, y, x = np.meshgrid(g.axis(2), g.axis(1), g.axis(0), indexing="ij")
    body = ((x / 110.0) ** 2 + ((y - 10.0) / 90.0) ** 2) <= 1.0
    act = np.where(body, 5000.0, 0.0).astype(np.float32)
    mu = np.where(body, 0.0142, 0.0).astype(np.float32)
    fine = g.refined((1, 1, 1))
    out = tmp_path_factory.mktemp("proj")
    study = StudyInfo(study_instance_uid="1.2.3.4", study_datetime=datetime(2019, 5, 15, 14, 0), study_id="1")
    twin_mod._write_projections(recon, out, 1, "C1S1D0", act, mu, fine, datetime(2019, 5, 15, 14, 0), p, study,
                                "1.2.3.4.5", 0, True, None, n_views=8, matrix=32)
    base = out / "Projections" / "scan1"
    return {f"proj_{f}": next((base / f).glob("*.dcm")) for f in
            ("unaltered", "reformatted", "advanced", "mumap_xspect", "mumap_f3d")}


def _check_file(path: Path, kind: str):
    """dciodvfy without Error lines (except the stray NM slice, see below), pydicom, dcmdump, SimpleITK."""
    dciodvfy = require_tool("dciodvfy")
    dcmdump = require_tool("dcmdump")
    proc = subprocess.run([dciodvfy, str(path)], capture_output=True, text=True, timeout=60)
    errors = [ln for ln in (proc.stdout + proc.stderr).splitlines() if ln.startswith("Error")]
    if kind == "spect_stray_nm":
        # Deliberate: as in the published collection, one slice of a PT export is labelled NM (NM Image
        # Storage SOP class over a PET slice's attributes); it cannot satisfy the NM IOD. Readers must cope.
        assert any("NumberOfFrames" in e for e in errors)
    else:
        assert not errors, f"{kind}: {errors}"
    ds = pydicom.dcmread(str(path))
    _ = ds.pixel_array if "PixelData" in ds else None
    dump = subprocess.run([dcmdump, "-q", str(path)], capture_output=True, text=True, timeout=60)
    assert dump.returncode == 0 and "SOPInstanceUID" in dump.stdout.replace(" ", "") or "(0008,0018)" in dump.stdout, kind
    if kind not in NO_PIXEL_GEOMETRY:
        img = sitk.ReadImage(str(path))
        assert img.GetNumberOfPixels() > 0
    return ds


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_kind_valid(twin, kind):
    _root, files = twin
    assert kind in files, kind
    _check_file(files[kind], kind)


@pytest.mark.parametrize("kind", ["proj_unaltered", "proj_reformatted", "proj_advanced", "proj_mumap_xspect",
                                  "proj_mumap_f3d"])
def test_projection_kinds_valid(projection_files, kind):
    ds = _check_file(projection_files[kind], kind)
    if kind.startswith("proj_mumap"):
        assert int(ds.Rows) == (256 if kind.endswith("xspect") else 128)
    elif kind == "proj_advanced":
        assert "[Advanced]" in ds.SeriesDescription
    elif kind == "proj_reformatted":
        assert "[Reformatted]" in ds.SeriesDescription


def test_seg_reads_in_simpleitk_frames(twin):
    """SimpleITK (GDCM) reads the SEG's frames; the count matches the per-frame functional groups."""
    _root, files = twin
    ds = pydicom.dcmread(str(files["seg_organs"]))
    img = sitk.ReadImage(str(files["seg_organs"]))
    assert img.GetSize()[2] == int(ds.NumberOfFrames) == len(ds.PerFrameFunctionalGroupsSequence)
