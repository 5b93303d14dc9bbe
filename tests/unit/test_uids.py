"""Deterministic UIDs: the same names give the same valid UID, different names never."""

from __future__ import annotations

from dicomnode.receive.inspect import is_valid_uid
from dicomnode.uids import derive_uid


def test_the_same_namespace_and_parts_give_the_same_valid_uid() -> None:
    uid = derive_uid("dicomnode.test", "study", "7")
    assert uid == derive_uid("dicomnode.test", "study", "7")
    assert uid.startswith("2.25.") and is_valid_uid(uid)


def test_parts_are_kept_apart_and_namespaces_do_not_collide() -> None:
    assert derive_uid("n", "ab", "c") != derive_uid("n", "a", "bc")
    assert derive_uid("n", "x") != derive_uid("m", "x")
