"""End to end: the twin's projections → ``ludosimetry reconstruct`` → ``ludosimetry run --spect reconstructed``."""
from __future__ import annotations

import json
import warnings

import pytest

pytest.importorskip("pytomography")

from LuDosimetryLib.cli import main  # noqa: E402
from LuDosimetryLib.phantom import write_twin  # noqa: E402


def test_reconstruct_then_run_on_our_reconstructions(tmp_path, capsys):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        twin = write_twin(tmp_path / "twin", preset="patient4", seed=3, fast=True, projections=True)
    recon = tmp_path / "recon"
    assert main(["reconstruct", str(twin), "--out", str(recon), "--iterations", "4", "--subsets", "8",
                 "--form", "unaltered", "--quiet"]) == 0
    assert len(list(recon.rglob("*.dcm"))) == 4  # one reconstruction per scan
    out = tmp_path / "out"
    assert main(["run", str(twin), "--recon-dir", str(recon), "--spect", "reconstructed", "--out", str(out),
                 "--dose-method", "ldm", "--quiet"]) == 0
    res = json.loads((out / "results.json").read_text())
    truth = json.loads((twin / "truth.json").read_text())
    used = {t["spect_series_uid"] for t in res["time_points"]}
    assert main(["inspect", str(twin), "--json"]) == 0
    vendor = {s["series_instance_uid"] for s in json.loads(capsys.readouterr().out)["series"]
              if s["role"] == "spect_recon"}
    assert not used & vendor  # the run used our reconstructions, not the vendor-style images
    for name in ("Liver", "Kidney_L", "Spleen"):
        # 9.6 mm fast grid, no partial-volume correction: spill-out of up to ~20 % is expected
        assert 0.75 < res["vois"][name]["tia_bq_s"] / truth["vois"][name]["tia_bq_s"] < 1.05, name
