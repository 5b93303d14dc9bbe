"""The rule attributes ingest records: pydicom's values, minus what the index never keeps."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.datadict import keyword_for_tag, tag_for_keyword
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

from dicomnode.errors import InvalidDatasetError
from dicomnode.index.attributes import MAX_RECORDED_BYTES, recorded_tag, unrecorded_reason
from dicomnode.receive.inspect import inspect_instance
from tests.factories import encode, small_ct
from tests.unit.test_inspect import readable_bundled_files


def texts(value: object) -> list[str]:
    """A value as the rule language sees it: its non-empty values as text."""
    if value is None:
        return []
    items = list(value) if isinstance(value, list | tuple | MultiValue) else [value]
    out: list[str] = []
    for item in items:
        out.extend(t.strip() for t in str(item).split("\\") if t.strip())
    return out


def same(recorded: object, read: object) -> bool:
    """Equal as text, or as numbers (``"1.0"`` from the file is ``1.0`` from pydicom)."""
    ours, theirs = texts(recorded), texts(read)
    if ours == theirs:
        return True
    try:
        return [float(v) for v in ours] == [float(v) for v in theirs]
    except ValueError:
        return False


def read(path: Path) -> tuple[Dataset, Dataset]:
    """The file's dataset with every value decoded, and again with raw values."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns about odd values in some files
        ds = dcmread(path, stop_before_pixels=True)
        for element in ds:
            _ = element.value
        return ds, dcmread(path, stop_before_pixels=True)


def test_every_bundled_file_records_the_values_pydicom_reads(tmp_path: Path) -> None:
    checked = 0
    for path in readable_bundled_files():
        try:
            info = inspect_instance(path, tmp_path)
        except InvalidDatasetError:
            continue  # refused at ingest, so never recorded (test_inspect covers which)
        recorded = json.loads(info.attributes.to_json())
        ds, undecoded = read(path)
        for tag in undecoded.keys():
            raw = undecoded.get_item(tag)
            element = ds[tag]
            keyword = keyword_for_tag(tag)
            known = recorded_tag(tag)
            too_long = isinstance(raw.value, bytes) and len(raw.value) > MAX_RECORDED_BYTES
            ambiguous_implicit = known is not None and not known[1] and not raw.VR
            if known is None or too_long or ambiguous_implicit or element.VR in ("SQ", "PN"):
                if keyword and tag_for_keyword(keyword) == tag:
                    assert keyword not in recorded, (path.name, keyword)
                continue
            if not texts(element.value):
                continue
            assert keyword in recorded, (path.name, keyword)
            assert same(recorded[keyword], element.value), (path.name, keyword)
            checked += 1
    assert checked > 2000


def test_patient_identifiers_are_never_recorded(tmp_path: Path) -> None:
    ds = small_ct(patient_name="Doe^Jane")
    ds.PatientID = "MRN-123"
    ds.PatientBirthDate = "19700101"
    ds.OtherPatientIDs = "X-9"
    ds.ReferringPhysicianName = "House^Gregory"
    ds.PatientSex = "F"
    ds.PatientAge = "055Y"
    path = tmp_path / "ct.dcm"
    path.write_bytes(encode(ds))

    text = inspect_instance(path, tmp_path).attributes.to_json()

    for value in ("Doe", "MRN-123", "19700101", "X-9", "House"):
        assert value not in text
    assert json.loads(text)["PatientSex"] == "F"
    assert json.loads(text)["PatientAge"] == "055Y"


@pytest.mark.parametrize(
    ("keyword", "reason"),
    [
        ("Modality", None),
        ("PatientSex", None),
        ("PatientWeight", None),
        ("PatientName", "patient data"),
        ("PatientBirthDate", "patient data"),
        ("OperatorsName", "a person name"),
        ("ReferencedSeriesSequence", "a sequence"),
        ("PixelData", "binary data"),
        ("SmallestImagePixelValue", None),  # US or SS: kept from explicit VR data
    ],
)
def test_unrecorded_reason_names_why_a_keyword_is_not_kept(
    keyword: str, reason: str | None
) -> None:
    assert unrecorded_reason(keyword) == reason
