"""The File Meta header written before a received dataset equals pydicom's encoding."""

from __future__ import annotations

from io import BytesIO

import pytest
from pydicom.filewriter import write_file_meta_info
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, JPEG2000Lossless
from pynetdicom.dsutils import create_file_meta

from dicomnode.receive.spool import (
    IMPLEMENTATION_CLASS_UID,
    IMPLEMENTATION_VERSION_NAME,
    file_meta_bytes,
)


def _pydicom(sop_class: str, sop_instance: str, syntax: str) -> bytes:
    out = BytesIO()
    meta = create_file_meta(
        sop_class_uid=sop_class, sop_instance_uid=sop_instance, transfer_syntax=syntax,
        implementation_uid=IMPLEMENTATION_CLASS_UID,
        implementation_version=IMPLEMENTATION_VERSION_NAME,
    )  # fmt: skip
    write_file_meta_info(out, meta)  # type: ignore[arg-type]
    return out.getvalue()


@pytest.mark.parametrize(
    ("sop_class", "sop_instance", "syntax"),
    [
        (CTImageStorage, "1.2.3.4", ExplicitVRLittleEndian),  # even lengths
        (CTImageStorage, "1.2.3.45", JPEG2000Lossless),  # odd instance UID
        ("1.2.840.10008.5.1.4.1.1.66.4", "2.25." + "9" * 59, "1.2.840.10008.1.2"),
    ],
)
def test_file_meta_bytes_equal_what_pydicom_writes(
    sop_class: str, sop_instance: str, syntax: str
) -> None:
    assert file_meta_bytes(sop_class, sop_instance, syntax) == _pydicom(
        sop_class, sop_instance, syntax
    )


def test_file_meta_bytes_stay_encodable_for_an_oversized_uid() -> None:
    # The handler refuses such a command; until then the header must not fail.
    header = file_meta_bytes(CTImageStorage, "1." * 40_000, ExplicitVRLittleEndian)
    assert len(header) < 400
