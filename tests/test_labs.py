"""Lab value parsing, positivity and nearest-lab pairing."""

import math
from datetime import datetime

import pandas as pd
import pytest

from bnp_cxr.data import labs
from bnp_cxr.data.labs import LEFT_CENSORED, NEGATIVE, POSITIVE, RIGHT_CENSORED, UNCENSORED, UNKNOWN


@pytest.mark.parametrize("text, value, flag", [
    ("120", 120.0, UNCENSORED),
    (" 35.5 ", 35.5, UNCENSORED),
    ("1,234", 1234.0, UNCENSORED),
    ("<50", 50.0, LEFT_CENSORED),
    ("< 5", 5.0, LEFT_CENSORED),
    ("<=10", 10.0, LEFT_CENSORED),
    (">35000", 35000.0, RIGHT_CENSORED),
    (">=70000", 70000.0, RIGHT_CENSORED),
    ("1e3", 1000.0, UNCENSORED),
])
def test_parse_lab_value(text, value, flag):
    assert labs.parse_lab_value(text) == (value, flag)


def test_parse_lab_value_empty_is_missing():
    value, flag = labs.parse_lab_value("  ")
    assert math.isnan(value) and flag == UNCENSORED


@pytest.mark.parametrize("text, message", [
    ("high", "not a number"),
    ("12 pg/mL", "not a number"),
    ("-5", "> 0"),
    ("0", "> 0"),
    ("<-1", "> 0"),
    ("inf", "not a number"),
])
def test_parse_lab_value_rejects(text, message):
    with pytest.raises(labs.LabValueError, match=message):
        labs.parse_lab_value(text)


@pytest.mark.parametrize("text, expected", [
    ("2019-03-04T10:22:00", datetime(2019, 3, 4, 10, 22)),
    ("2019-03-04 10:22", datetime(2019, 3, 4, 10, 22)),
    ("2019-03-04", datetime(2019, 3, 4)),
    ("20190304102200", datetime(2019, 3, 4, 10, 22)),
    ("20190304", datetime(2019, 3, 4)),
    ("2019-03-04T10:22:00+02:00", datetime(2019, 3, 4, 8, 22)),
])
def test_parse_datetime(text, expected):
    assert labs.parse_datetime(text) == expected


@pytest.mark.parametrize("text", ["", "yesterday", "04/03/2019", "2019-13-40"])
def test_parse_datetime_rejects(text):
    with pytest.raises(labs.LabValueError):
        labs.parse_datetime(text)


T = labs.PositivityThresholds()
NAN = (math.nan, UNCENSORED)


@pytest.mark.parametrize("bnp, bnpp, expected", [
    (NAN, (401.0, UNCENSORED), POSITIVE),
    (NAN, (400.0, UNCENSORED), NEGATIVE),  # strictly greater than the threshold
    ((101.0, UNCENSORED), NAN, POSITIVE),
    ((100.0, UNCENSORED), NAN, NEGATIVE),
    ((50.0, UNCENSORED), (900.0, UNCENSORED), POSITIVE),  # either test positive
    ((500.0, UNCENSORED), (100.0, UNCENSORED), POSITIVE),
    ((50.0, UNCENSORED), (100.0, UNCENSORED), NEGATIVE),
    (NAN, NAN, UNKNOWN),
    (NAN, (50.0, LEFT_CENSORED), NEGATIVE),  # <50: certainly below 400
    (NAN, (500.0, LEFT_CENSORED), UNKNOWN),  # <500 straddles 400
    (NAN, (35000.0, RIGHT_CENSORED), POSITIVE),
    ((50.0, RIGHT_CENSORED), NAN, UNKNOWN),  # >50 straddles 100
    ((50.0, RIGHT_CENSORED), (100.0, UNCENSORED), UNKNOWN),
])
def test_combined_positivity(bnp, bnpp, expected):
    assert labs.combined_positivity(bnp, bnpp, T) == expected


def test_pair_nearest_labs_within_window(tmp_path):
    table = tmp_path / "labs.csv"
    table.write_text(
        "patient_id,lab_datetime,test,value\n"
        "A,2020-01-01T08:00,BNPP,900\n"      # 4 h before study 1
        "A,2020-01-01T20:00,BNPP,1200\n"     # 8 h after study 1: farther
        "A,2020-01-01T13:00,BNP,<10\n"       # 1 h after study 1
        "A,2020-01-05T12:00,BNPP,300\n"      # 48 h after study 2: outside 24 h
        "B,2020-01-01T12:00,BNPP,77\n"       # other patient, same time
        "B,not a date,BNPP,77\n"
        "B,2020-01-01T12:00,troponin,5\n"
        "B,2020-01-01T12:00,NT-proBNP,abc\n"
    )
    table_read = labs.load_labs(str(table))
    assert table_read.n_rows == 8
    assert [(row, column) for row, column, _ in table_read.invalid] == [(7, "lab_datetime"), (8, "test"), (9, "value")]
    studies = pd.DataFrame({"patient_id": ["A", "A", "C"],
                            "study_datetime": pd.to_datetime(["2020-01-01T12:00", "2020-01-03T12:00",
                                                              "2020-01-01T12:00"])})
    paired = labs.pair_nearest_labs(studies, table_read, window_hours=24)
    assert paired["BNPP"]["value"].tolist()[0] == 900.0
    assert paired["BNPP"]["hours_from_study"].tolist()[0] == pytest.approx(-4.0)
    assert paired["BNP"]["value"].tolist()[0] == 10.0 and paired["BNP"]["censored"].tolist()[0] == LEFT_CENSORED
    assert paired["BNPP"]["value"].isna().tolist() == [False, True, True]
    wide = labs.pair_nearest_labs(studies, table_read, window_hours=49)
    assert wide["BNPP"]["value"].tolist()[1] == 1200.0  # 40 h before beats 48 h after
    assert wide["BNPP"]["hours_from_study"].tolist()[1] == pytest.approx(-40.0)
