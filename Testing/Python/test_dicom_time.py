from datetime import datetime, timedelta

from pydicom.dataset import Dataset

from LuDosimetryLib.io.dicom_time import acquisition_datetime, injection_from_header, parse_dt, parse_tm


def test_parse_tm_shapes():
    assert parse_tm("0922") == timedelta(hours=9, minutes=22)
    assert parse_tm("092210.5") == timedelta(hours=9, minutes=22, seconds=10.5)
    assert parse_tm("09:22:10") == timedelta(hours=9, minutes=22, seconds=10)
    assert parse_tm("") is None and parse_tm("ab") is None and parse_tm("2599") is None


def test_parse_dt_with_offset():
    assert parse_dt("20181115092200.000000+0100") == datetime(2018, 11, 15, 9, 22)
    assert parse_dt("20181115") == datetime(2018, 11, 15)


def test_acquisition_time_fallbacks():
    ds = Dataset()
    ds.AcquisitionDate = ""
    ds.AcquisitionTime = "131415"
    ds.SeriesDate = "20181116"
    ds.SeriesTime = "120000"
    t, src = acquisition_datetime(ds)
    # empty AcquisitionDate (refused by OpenDose3D): the time is kept, the date comes from the series
    assert t == datetime(2018, 11, 16, 13, 14, 15) and src == "SeriesDate+AcquisitionTime"
    del ds.AcquisitionTime
    t, src = acquisition_datetime(ds)
    assert t == datetime(2018, 11, 16, 12) and src == "SeriesDate/SeriesTime"
    assert acquisition_datetime(Dataset()) == (None, "")


def test_injection_from_start_time_only_takes_the_latest_day_before_acquisition():
    ds = Dataset()
    item = Dataset()
    item.RadionuclideTotalDose = "7210000000"
    item.RadiopharmaceuticalStartTime = "092200"
    ds.RadiopharmaceuticalInformationSequence = [item]
    act, when, _ = injection_from_header(ds, reference=datetime(2018, 11, 15, 8, 0))
    assert act == 7.21e9
    assert when == datetime(2018, 11, 14, 9, 22)  # not after the acquisition
    item.RadiopharmaceuticalStartDateTime = "20181115092200"
    assert injection_from_header(ds)[1] == datetime(2018, 11, 15, 9, 22)
