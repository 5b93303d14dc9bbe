"""Exceptions raised by dicomnode.

One root and one subclass per stage, so callers can catch a whole stage::

    DicomnodeError
    ├── ConfigError            bad settings; the message names the file and key
    ├── ReceiveError           an incoming instance cannot be accepted
    │   ├── InvalidDatasetError    unparseable, truncated, bad UID   -> 0xC000
    │   ├── DatasetMismatchError   command and dataset UIDs differ   -> 0xA900
    │   └── StorageError           disk or database failure          -> 0xA700
    ├── IndexSchemaError       no index yet, or at another schema revision than the code's
    ├── ForkedError            start-up work in a forked child failed (in dicomnode.forked)
    ├── VolumeError            a series' files do not make one volume
    └── SendError              a C-STORE to a peer failed

Errors carry the UIDs involved so a log line or a stored error text can name them
without any patient data.
"""

from __future__ import annotations

__all__ = [
    "ConfigError",
    "DatasetMismatchError",
    "DicomnodeError",
    "IndexSchemaError",
    "InvalidDatasetError",
    "ReceiveError",
    "SendError",
    "StorageError",
    "VolumeError",
]


class DicomnodeError(Exception):
    """Root of every error dicomnode raises on purpose."""


class ConfigError(DicomnodeError):
    """The settings are invalid; the message is one line naming file and key."""


class ReceiveError(DicomnodeError):
    """An incoming instance cannot be stored.

    Parameters
    ----------
    message
        What went wrong, without patient data.
    sop_instance_uid
        The instance concerned, when known.
    """

    def __init__(self, message: str, sop_instance_uid: str | None = None) -> None:
        super().__init__(message)
        self.sop_instance_uid = sop_instance_uid


class InvalidDatasetError(ReceiveError):
    """The dataset cannot be parsed, is truncated or carries an invalid UID."""


class DatasetMismatchError(ReceiveError):
    """The dataset does not match the C-STORE command (SOP Instance UID)."""


class StorageError(ReceiveError):
    """The instance could not be made durable (disk full, I/O or database error)."""


class IndexSchemaError(DicomnodeError):
    """The index database is missing or not at the schema revision this code reads.

    Raised where the index is opened without migrating it; the message is one line
    that says what to run.
    """


class SendError(DicomnodeError):
    """A C-STORE to a peer failed."""


class VolumeError(DicomnodeError):
    """The instances of a series cannot make one volume.

    Parameters
    ----------
    message
        Why (mixed orientation, a missing slice, ...), naming UIDs only.
    series_instance_uid
        The series concerned, when known.
    """

    def __init__(self, message: str, series_instance_uid: str | None = None) -> None:
        super().__init__(message)
        self.series_instance_uid = series_instance_uid
