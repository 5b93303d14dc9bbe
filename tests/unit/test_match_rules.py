"""The match rule language: a table of rules against attribute values."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydicom.data import get_testdata_file

from dicomnode.receive.inspect import inspect_instance
from dicomnode.rules import compile_match
from dicomnode.schedule.rules import rule_attributes


@pytest.mark.parametrize(
    ("rule", "attributes", "matched"),
    [
        ({"Modality": "CT"}, {"Modality": "CT"}, True),
        ({"Modality": "ct"}, {"Modality": "CT "}, True),  # case and padding ignored
        ({"Modality": "CT"}, {"Modality": "MR"}, False),
        ({"Modality": ["MG", "CR"]}, {"Modality": "CR"}, True),  # list: any of
        ({"Modality": ["MG", "CR"]}, {"Modality": "CT"}, False),
        ({"Modality": "CT", "BodyPartExamined": "CHEST"}, {"Modality": "CT"}, False),  # AND
        ({"SeriesDescription": "re:^ax"}, {"SeriesDescription": "AX T1 post"}, True),
        ({"SeriesDescription": "re:t1"}, {"SeriesDescription": "AX T2"}, False),
        ({"SeriesDescription": "re:t[12]$"}, {"SeriesDescription": "cor T2"}, True),
        ({"Rows": 512}, {"Rows": 512}, True),
        ({"Rows": 512}, {"Rows": "512"}, True),
        ({"Rows": 512.0}, {"Rows": 256}, False),
        ({"Rows": ">=512"}, {"Rows": 512}, True),
        ({"Rows": ">512"}, {"Rows": 512}, False),
        ({"Rows": "<= 256"}, {"Rows": 256}, True),
        ({"Rows": "<256"}, {"Rows": 255}, True),
        ({"SliceThickness": "<=1.5"}, {"SliceThickness": "1.25"}, True),
        ({"SliceThickness": "!=1"}, {"SliceThickness": "1.0"}, False),
        ({"SliceThickness": "==1"}, {"SliceThickness": "1.0"}, True),
        ({"Rows": ">=512"}, {"Rows": "n/a"}, False),  # not a number: no match
        ({"ImageType": "PRIMARY"}, {"ImageType": ("ORIGINAL", "PRIMARY", "AXIAL")}, True),
        ({"ImageType": "PRIMARY"}, {"ImageType": "ORIGINAL\\PRIMARY\\AXIAL"}, True),
        ({"ImageType": "re:^DERIV"}, {"ImageType": "ORIGINAL\\PRIMARY"}, False),
        ({"ImageLaterality": "L"}, {}, False),  # missing matches nothing
        ({"ImageLaterality": "L"}, {"ImageLaterality": ""}, False),
        ({"ImageLaterality": ""}, {}, True),  # "" matches only missing or empty
        ({"ImageLaterality": ""}, {"ImageLaterality": "R"}, False),
        ({"CallingAETitle": "ct1"}, {"CallingAETitle": "CT1"}, True),
        ({}, {"Modality": "CT"}, True),  # an empty rule matches everything
    ],
)
def test_rule_table(rule: dict[str, object], attributes: dict[str, object], matched: bool) -> None:
    assert compile_match(rule).evaluate(attributes).matched is matched


@pytest.mark.parametrize(
    ("rule", "message"),
    [
        ({"Modalty": "CT"}, "'Modalty' is not a DICOM keyword"),
        ({"SeriesDescription": "re:("}, "bad regular expression"),
        ({"Rows": ">=big"}, "is not a valid comparison"),
        ({"Rows": "=>5"}, "is not a valid comparison"),
        ({"Rows": True}, "is not a string, number or list"),
        ({"Rows": {"a": 1}}, "is not a string, number or list"),
        ({"Modality": []}, "an empty list matches nothing"),
        ({"PatientName": "re:DOE"}, "'PatientName' is patient data"),
        ({"PatientID": "123"}, "'PatientID' is patient data"),
        ({"ReferringPhysicianName": "X"}, "is a person name"),
        ({"ReferencedImageSequence": "X"}, "is a sequence"),
        ({"PixelData": "X"}, "is binary data"),
    ],
)
def test_bad_rules_are_refused_naming_the_key(rule: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message) as excinfo:
        compile_match(rule)
    assert next(iter(rule)) in str(excinfo.value)


def bundled(name: str) -> Path:
    path = get_testdata_file(name, download=False)
    assert path is not None
    return Path(path)


def recorded(name: str, scratch: Path, calling_ae: str | None = None) -> dict[str, object]:
    """The rule attributes ingest would record for a bundled file."""
    info = inspect_instance(bundled(name), scratch)
    return rule_attributes(info.attributes.to_json(), calling_ae)


def test_rules_read_any_keyword_and_derived_keys_from_a_real_header(tmp_path: Path) -> None:
    attrs = recorded("CT_small.dcm", tmp_path, calling_ae="CT_SCANNER")
    rule = compile_match(
        {
            "Modality": "CT",
            "ImagePlane": "AXIAL",
            "Rows": ">=128",
            "ImageType": "ORIGINAL",
            "CallingAETitle": "ct_scanner",
            "Manufacturer": "re:ge",
        }
    )
    result = rule.evaluate(attrs)
    assert result.matched, result.explain()
    mr = recorded("MR_small.dcm", tmp_path)
    assert not rule.evaluate(mr).matched


def test_explain_says_what_was_wanted_and_seen() -> None:
    result = compile_match({"Modality": "MG", "Rows": ">=512"}).evaluate(
        {"Modality": "CT", "Rows": 512}
    )
    assert result.explain().splitlines() == [
        "Modality: wanted 'MG', got 'CT' -> no",
        "Rows: wanted '>=512', got '512' -> yes",
    ]
