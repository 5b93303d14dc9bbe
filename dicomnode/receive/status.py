"""Every DIMSE status the node returns, with its PS3.4/PS3.7 reference.

Never return pynetdicom's own codes (0xC001, 0xC002, 0xC210, 0xC211): a peer could
not tell our answer from a failure inside pynetdicom.
"""

from __future__ import annotations

from enum import IntEnum

from dicomnode.errors import (
    DatasetMismatchError,
    DicomnodeError,
    InvalidDatasetError,
)

__all__ = ["RESERVED_BY_PYNETDICOM", "Status", "status_for_error"]


class Status(IntEnum):
    """C-STORE / C-ECHO statuses we answer with."""

    #: PS3.7 C.1.1 Success; for C-STORE: the instance is durable and indexed.
    SUCCESS = 0x0000
    #: PS3.4 B.2.3 Refused: out of resources (disk or database failure).
    OUT_OF_RESOURCES = 0xA700
    #: PS3.4 B.2.3 Error: data set does not match SOP class (here: SOP Instance UID).
    DATASET_MISMATCH = 0xA900
    #: PS3.4 B.2.3 Error: cannot understand (unparseable, truncated, invalid UID).
    CANNOT_UNDERSTAND = 0xC000


#: Codes pynetdicom uses for its own failures; tests assert we never send them.
RESERVED_BY_PYNETDICOM = frozenset({0xC001, 0xC002, 0xC210, 0xC211})


def status_for_error(error: DicomnodeError) -> Status:
    """Map an error raised while storing to the status that reports it."""
    if isinstance(error, DatasetMismatchError):
        return Status.DATASET_MISMATCH
    if isinstance(error, InvalidDatasetError):
        return Status.CANNOT_UNDERSTAND
    # StorageError and anything unforeseen: the node could not keep the instance.
    return Status.OUT_OF_RESOURCES
