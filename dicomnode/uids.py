"""Deterministic UIDs: name-based UUIDs written as "2.25." UIDs (PS3.5 B.2).

The same namespace and parts always give the same UID, so a rerun of a job or of a
synthetic-data generator with the same inputs recreates the same objects instead of
adding copies. Each producer (outputs, each generator) has its own namespace, so no
choice of parts in one can make a UID of another.
"""

from __future__ import annotations

import uuid
from functools import lru_cache

from pydicom.uid import UID

__all__ = ["derive_uid", "implementation_identity"]


@lru_cache(maxsize=64)
def _namespace(name: str) -> uuid.UUID:
    return uuid.uuid5(uuid.NAMESPACE_OID, name)


def derive_uid(namespace: str, *parts: str) -> UID:
    """Return the "2.25." UID that `parts` name within `namespace`.

    Parameters
    ----------
    namespace
        Who makes the UID, e.g. ``"dicomnode.outputs"``.
    *parts
        Strings that identify the object.

    Returns
    -------
    pydicom.uid.UID
        A valid UID of at most 64 characters (a 128-bit integer after "2.25.").
    """
    # The unit separator keeps ("ab", "c") and ("a", "bc") apart.
    return UID(f"2.25.{uuid.uuid5(_namespace(namespace), chr(0x1F).join(parts)).int}")


def implementation_identity(version: str) -> tuple[UID, str]:
    """This node's Implementation Class UID and Version Name (PS3.7 D.3.3.2).

    Sent in every association and written in the File Meta of every stored instance
    (PS3.10 7.1), so a peer or a file names dicomnode, not the library underneath.
    One UID per release: the class of implementation changes with the version.
    """
    return derive_uid("dicomnode.implementation", version), f"DICOMNODE_{version}"[:16]
