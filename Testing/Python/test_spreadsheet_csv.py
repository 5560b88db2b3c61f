"""CSV files as spreadsheets save them (LuDosimetryLib.io.spreadsheet_csv), and the two user files read through it:
blood samples (``--blood-samples``) and a cohort manifest (``ludosimetry batch``). A file saved in a locale that
writes decimal commas, or in another encoding, is read as meant or refused in one line; never read short."""
from __future__ import annotations

import codecs

import pytest

from LuDosimetryLib import cli
from LuDosimetryLib.cohort import CohortError, read_cohort
from LuDosimetryLib.errors import OptionError
from LuDosimetryLib.io.blood_samples import read_blood_samples
from LuDosimetryLib.io.spreadsheet_csv import csv_rows, decoded_text, separator_of

#: One table of blood samples as three spreadsheets save it.
SAVED_AS = {
    "utf-8, commas": "time_h,concentration (kBq/mL)\n1.5,50.25\n24,10\n".encode("utf-8"),
    "windows-1252, semicolons, decimal commas": "Time (h);Aktivität (kBq/mL)\r\n1,5;50,25\r\n24;10\r\n"
                                                .encode("cp1252"),
    "utf-16 'unicode text', tabs": codecs.BOM_UTF16_LE + "time_h\tc (kBq/mL)\r\n1,5\t50,25\r\n24\t10\r\n"
                                   .encode("utf-16-le"),
}


@pytest.mark.parametrize("saved_as", sorted(SAVED_AS))
def test_blood_samples_saved_by_a_spreadsheet_read_the_same(tmp_path, saved_as):
    path = tmp_path / "blood.csv"
    path.write_bytes(SAVED_AS[saved_as])
    samples = read_blood_samples(path)
    assert list(samples.t_h) == [1.5, 24.0]
    assert list(samples.concentration_bq_per_ml) == [50250.0, 10000.0]


def test_decimal_commas_in_a_comma_separated_file_are_refused_not_read_short(tmp_path):
    """``1,5,50,25`` under a two-column header would read as 1 h and 5 kBq/mL: refused, naming the row."""
    path = tmp_path / "blood.csv"
    path.write_text("time_h,concentration_kBq_per_mL\n1,5,50,25\n24,10\n")
    with pytest.raises(OptionError) as err:
        read_blood_samples(path)
    message = str(err.value)
    assert "blood.csv" in message and "row 2" in message and "decimal commas" in message
    # empty cells after the last column (some spreadsheets write them) are not values
    path.write_text("time_h,concentration_kBq_per_mL,\n1.5,50.25,,\n24,10,\n")
    assert list(read_blood_samples(path).t_h) == [1.5, 24.0]


def test_undecodable_text_is_refused_in_one_line(tmp_path):
    path = tmp_path / "blood.csv"
    path.write_bytes(b"time_h,c_kBq_per_mL\n1,\x81\x8d\n")  # bytes undefined in UTF-8 and Windows-1252
    with pytest.raises(OptionError, match="neither UTF-8, UTF-16 nor Windows-1252") as err:
        read_blood_samples(path)
    assert "\n" not in str(err.value)
    assert decoded_text(b"\xff\xfe\x00\xd8") is None  # a UTF-16 byte-order mark, then half a surrogate pair


def test_the_separator_is_the_headers():
    assert separator_of("study;cycle;injected_activity_mbq") == ";"
    assert separator_of("study") == ","
    assert separator_of("time_h\tc (kBq/mL)") == "\t"
    table = csv_rows(b"# a comment\n\nstudy;injected_activity_mbq\n# another\n/a;7400,5\n", comment="#")
    assert table.rows == [["study", "injected_activity_mbq"], ["/a", "7400,5"]]
    assert table.number_text("7400,5") == "7400.5" and table.number_text("C2") == "C2"
    assert csv_rows(b"a,b\n1,2,5\n").number_text("2,5") == "2,5"  # a comma-separated file has no decimal commas


def test_a_manifest_saved_by_a_spreadsheet_in_a_decimal_comma_locale(tmp_path):
    for name in ("pat1", "patiënt2"):
        (tmp_path / name).mkdir()
    manifest = tmp_path / "cohort.csv"
    manifest.write_bytes("study;cycle;injected_activity_mbq\r\n# first cycle\r\npat1;1;7400,5\r\npatiënt2;C2;\r\n"
                         .encode("cp1252"))
    entries = read_cohort(manifest)
    assert [e.study for e in entries] == [str(tmp_path / "pat1"), str(tmp_path / "patiënt2")]
    assert [e.injected_activity_mbq for e in entries] == [7400.5, None]
    assert [e.cycle for e in entries] == ["cycle1", "cycle2"]


def test_a_manifest_row_longer_than_its_header_is_one_line_and_exit_2(tmp_path, capsys):
    """A path holding the separator, unquoted: its second half was dropped without a word."""
    manifest = tmp_path / "cohort.csv"
    manifest.write_text("study,cycle\npatients/smith,john,2\n")
    with pytest.raises(CohortError, match="row 1: 3 values, the header has 2"):
        read_cohort(manifest)
    assert cli.main(["batch", str(manifest), "--out", str(tmp_path / "out"), "--workers", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cohort.csv" in err[0] and "quote it" in err[0]
    assert not (tmp_path / "out").exists()


def test_an_undecodable_manifest_is_one_line_and_exit_2(tmp_path, capsys):
    """It ended in a UnicodeDecodeError traceback."""
    manifest = tmp_path / "cohort.csv"
    manifest.write_bytes(b"study\n/data/\x81\x8d\n")
    assert cli.main(["batch", str(manifest), "--out", str(tmp_path / "out"), "--workers", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cohort.csv" in err[0] and "Traceback" not in err[0]
