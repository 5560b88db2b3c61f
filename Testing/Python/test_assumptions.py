"""Named assumptions: recorded once per run, refused when strict, a warning outside a run."""
from __future__ import annotations

import json
import threading
import warnings

import pytest

from LuDosimetryLib import assumptions, cli, options
from LuDosimetryLib.assumptions import AssumptionWarning, StrictRefusal, assume, recording
from LuDosimetryLib.errors import LuDosimetryError


def test_assumptions_are_recorded_once_in_order():
    with recording() as log:
        assume("RescaleSlope missing, read as", "1", "DICOM default", path="a.dcm")
        assume("density without CT", "1.0 g/mL", "water", path="tp2")
        assume("RescaleSlope missing, read as", "1", "DICOM default", path="a.dcm")  # the same again
    assert [a.what for a in log.items] == ["RescaleSlope missing, read as", "density without CT"]
    assert log.to_json()[0] == {"what": "RescaleSlope missing, read as", "value": "1", "source": "DICOM default",
                                "path": "a.dcm"}
    assert assumptions.active_log() is None  # the log ends with the block


def test_strict_refuses_with_one_line_naming_the_file():
    with recording(strict=True):
        with pytest.raises(StrictRefusal) as caught:
            assume("injection date inferred from the first scan", "2026-01-02", "AcquisitionDate", path="s/1.dcm")
    message = str(caught.value)
    assert isinstance(caught.value, LuDosimetryError)
    assert message.startswith("s/1.dcm: refused in strict mode: injection date inferred") and "\n" not in message


def test_outside_a_run_an_assumption_is_a_warning():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assume("DecayCorrection empty, read as", "START", "DICOM default", path="x.dcm")
    assert len(caught) == 1 and issubclass(caught[0].category, AssumptionWarning)
    assert caught[0].message.assumption.path == "x.dcm"


def test_concurrent_runs_keep_their_own_logs():
    seen = {}

    def worker(name):
        with recording() as log:
            for _ in range(50):
                assume("what", name, "source")
            seen[name] = [a.value for a in log.items]

    threads = [threading.Thread(target=worker, args=(n,)) for n in ("a", "b", "c")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert seen == {"a": ["a"], "b": ["b"], "c": ["c"]}


def test_strict_is_one_declaration_on_every_front_end():
    declared = options.option("strict")
    assert declared.flag == "--strict" and declared.parameter == "strict"
    assert options.RunOptions().strict is False
    assert options.options_from_panel({"strict": True}, "run").strict is True


def test_a_clean_study_assumes_nothing_and_says_so(synthetic_study, tmp_path, capsys):
    out = tmp_path / "out"
    assert cli.main(["run", str(synthetic_study), "--out", str(out), "--dose-method", "ldm", "--quiet"]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["assumptions"] == []
    assert "assumption:" not in capsys.readouterr().out
