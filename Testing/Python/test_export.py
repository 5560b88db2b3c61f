import json
import math

import pytest

from LuDosimetryLib import options
from LuDosimetryLib.errors import OutputError
from LuDosimetryLib.io.export import atomic_output_dir, check_output_dir, write_json


def test_atomic_dir_success_and_failure(tmp_path):
    out = tmp_path / "out"
    with atomic_output_dir(out) as tmp:
        (tmp / "a.txt").write_text("x")
        assert not out.exists()  # nothing under the final name while writing
    assert (out / "a.txt").read_text() == "x"
    with pytest.raises(RuntimeError):
        with atomic_output_dir(out, overwrite=True) as tmp:
            (tmp / "b.txt").write_text("y")
            raise RuntimeError("boom")
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == ["a.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # temporary folder removed


def test_refuses_existing_without_overwrite(tmp_path):
    out = tmp_path / "out"
    with atomic_output_dir(out):
        pass
    with pytest.raises(OutputError) as refused:
        check_output_dir(out, overwrite=False)
    # the library names the option; the command line shows it as its flag, the panel as its label
    assert refused.value.option == "overwrite"
    assert "--overwrite" in refused.value.describe(options.cli_flag)
    check_output_dir(out, overwrite=True)


def test_never_overwrites_user_folder(tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "thesis.docx").write_text("precious")
    with pytest.raises(OutputError, match="did not write"):
        with atomic_output_dir(out, overwrite=True):
            pass
    assert (out / "thesis.docx").read_text() == "precious"


def test_json_nan_is_null(tmp_path):
    write_json(tmp_path / "r.json", {"a": float("nan"), "b": [1.0, math.inf]})
    assert json.loads((tmp_path / "r.json").read_text()) == {"a": None, "b": [1.0, None]}
