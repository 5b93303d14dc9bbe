"""Hypothesis strategies for what a hostile peer sends: PDUs, valid and mutated (PS3.8 9.3).

Mutations start from real PDUs (tests/rawpeer.py) and break them the ways the issue
names: byte flips, truncations, lying PDU lengths, huge item lengths, zero
presentation contexts, unknown PDU types, bytes that are not DICOM at all.
"""

from __future__ import annotations

import struct
from functools import cache

from hypothesis import strategies as st
from pynetdicom.dsutils import encode
from pynetdicom.dul import _PDU_TYPES

from tests.factories import small_ct
from tests.fuzz.support import echo_command, like_the_node
from tests.rawpeer import CT_IMAGE_STORAGE, VERIFICATION, associate_rq, p_data, store_command

__all__ = [
    "ABORT",
    "ACCEPTOR_CONVERTS",
    "RELEASE_RP",
    "RELEASE_RQ",
    "STORED_UID",
    "associate_requests",
    "item_offsets",
    "kills_the_dul",
    "mutated",
    "pdu",
    "peer_bytes",
    "session_pdus",
    "store_pdus",
    "stored_dataset",
]


def pdu(pdu_type: int, body: bytes) -> bytes:
    """A PDU: type, reserved, 4-byte big-endian length, body (PS3.8 9.3.1)."""
    return struct.pack(">BBL", pdu_type, 0, len(body)) + body


RELEASE_RQ = pdu(0x05, b"\0" * 4)
RELEASE_RP = pdu(0x06, b"\0" * 4)
ABORT = pdu(0x07, b"\0\0\0\0")  # A-ABORT from the service user

#: Lengths that sit on a boundary somewhere: the 68 fixed bytes of an A-ASSOCIATE-RQ,
#: the 64 KiB request limit, the default maximum PDU, 256 MiB, 4 GiB - 1.
_LENGTHS = st.sampled_from(
    [0, 1, 3, 4, 5, 67, 68, 69, 0x7FFF, 0xFFFF, 65536, 65537, 262144, 262161, 2**28, 2**32 - 1]
)
_ITEM_LENGTHS = st.sampled_from([0, 1, 2, 3, 4, 0x7FFF, 0xFFFE, 0xFFFF])


def item_offsets(rq: bytes) -> list[int]:
    """Offsets of every item and sub-item header of an encoded A-ASSOCIATE-RQ/AC.

    Items follow the 6-byte header and 68 fixed bytes (PS3.8 9.3.2); a Presentation
    Context item (0x20/0x21) has sub-items after 4 more bytes, User Information
    (0x50) right after its header.
    """
    found = []
    offset = 74
    while offset + 4 <= len(rq):
        item_type = rq[offset]
        (length,) = struct.unpack_from(">H", rq, offset + 2)
        found.append(offset)
        sub_start = {0x20: 8, 0x21: 8, 0x50: 4}.get(item_type)
        if sub_start is not None:
            sub, end = offset + sub_start, min(offset + 4 + length, len(rq))
            while sub + 4 <= end:
                found.append(sub)
                sub += 4 + struct.unpack_from(">H", rq, sub + 2)[0]
        offset += 4 + length
    return found


@st.composite
def mutated(draw: st.DrawFn, base: bytes, max_steps: int = 4) -> bytes:
    """``base`` after 0..``max_steps`` mutations (flip, cut, lie, grow, shrink)."""
    data = bytearray(base)
    items = item_offsets(base) if base[:1] in (b"\x01", b"\x02") else []
    for _ in range(draw(st.integers(0, max_steps))):
        kinds = ["flip", "truncate", "pdu_length", "insert", "delete", "pdu_type"]
        step = draw(st.sampled_from([*kinds, "item_length"] if items else kinds))
        # Flips, cuts and splices spare the 6-byte header (Hypothesis favours offset
        # 0): the pdu_type and pdu_length steps and other strategies break headers.
        if step == "flip" and len(data) > 6:
            at = draw(st.integers(6, len(data) - 1))
            data[at] ^= draw(st.integers(1, 255))
        elif step == "truncate":
            del data[draw(st.integers(min(6, len(data)), len(data))) :]
        elif step == "pdu_length" and len(data) >= 6:
            length = draw(_LENGTHS | st.integers(0, 2**32 - 1))
            data[2:6] = struct.pack(">L", length)
        elif step == "item_length":
            at = draw(st.sampled_from(items))
            if at + 4 <= len(data):
                data[at + 2 : at + 4] = struct.pack(">H", draw(_ITEM_LENGTHS))
        elif step == "insert":
            at = draw(st.integers(min(6, len(data)), len(data)))
            data[at:at] = draw(st.binary(min_size=1, max_size=64))
        elif step == "delete" and len(data) > 6:
            at = draw(st.integers(6, len(data) - 1))
            del data[at : at + draw(st.integers(1, 16))]
        elif step == "pdu_type" and data:
            data[0] = draw(st.integers(0, 255))
    if len(data) >= 6 and draw(st.booleans()):
        # Half the time the length tells the truth again, so the broken body is read.
        data[2:6] = struct.pack(">L", len(data) - 6)
    return bytes(data)


@cache
def _requests(called_ae: str, contexts: tuple[str, ...]) -> bytes:
    return associate_rq(called_ae=called_ae, abstract_syntaxes=contexts)


def associate_requests(max_steps: int = 4) -> st.SearchStrategy[bytes]:
    """A-ASSOCIATE-RQs: valid, to another AE, without contexts, and mutated."""
    contexts = st.sampled_from(
        [(VERIFICATION, CT_IMAGE_STORAGE), (VERIFICATION,), (), (CT_IMAGE_STORAGE,) * 3]
    )
    called = st.sampled_from(["DICOMNODE", "OTHER"])
    return st.builds(_requests, called, contexts).flatmap(lambda rq: mutated(rq, max_steps))


def _other_pdus() -> st.SearchStrategy[bytes]:
    """Everything but an A-ASSOCIATE-RQ: P-DATA, release, abort, AC/RJ, unknown types."""
    commands = st.sampled_from([echo_command(), store_command("1.2.3.4"), b""])
    values = commands | st.binary(max_size=256)
    contexts = st.sampled_from([1, 3]) | st.integers(0, 255)
    controls = st.sampled_from([0, 1, 2, 3]) | st.integers(0, 255)
    pdata = st.builds(p_data, contexts, controls, values)
    unknown = st.builds(
        pdu, st.integers(0, 255).filter(lambda t: not 1 <= t <= 7), st.binary(max_size=64)
    )
    fixed = st.sampled_from(
        [RELEASE_RQ, RELEASE_RP, ABORT, pdu(0x02, b"\0" * 68), pdu(0x03, b"\0\x01\x01\x01")]
    )
    return (pdata | fixed | unknown).flatmap(lambda raw: mutated(raw, 2))


def peer_bytes() -> st.SearchStrategy[bytes]:
    """The first bytes a connection sends: a request (mostly), another PDU, or noise."""
    headers = st.builds(
        lambda t, n, tail: struct.pack(">BBL", t, 0, n) + tail,
        st.integers(0, 255),
        _LENGTHS | st.integers(0, 2**32 - 1),
        st.binary(max_size=128),
    )
    http = st.just(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
    requests = associate_requests()
    # Requests three times over: most of what the gate admits comes from them.
    return st.one_of(
        requests, requests, requests, _other_pdus(), headers, http, st.binary(max_size=512)
    )


#: The SOP Instance UID of the instance the store sequences send.
STORED_UID = "1.2.826.0.1.3680043.10.2.1"


@cache
def stored_dataset() -> bytes:
    """A small CT dataset in implicit VR LE (context 3 of the request), no File Meta."""
    ds = small_ct(
        sop_instance_uid=STORED_UID,
        study_instance_uid="1.2.826.0.1.3680043.10.2.2",
        series_instance_uid="1.2.826.0.1.3680043.10.2.3",
        rows=4,
        columns=4,
    )
    ds.FrameOfReferenceUID = "1.2.826.0.1.3680043.10.2.4"
    encoded = encode(ds, True, True)
    assert encoded is not None
    return bytes(encoded)


@st.composite
def store_pdus(draw: st.DrawFn) -> list[bytes]:
    """A C-STORE after a valid request: its command, then its dataset in fragments,
    any of them mutated, control bytes at times wrong, the end at times missing."""
    command = draw(mutated(p_data(3, 0x03, store_command(STORED_UID)), 1))
    dataset = draw(mutated(stored_dataset(), 2) | st.just(stored_dataset()))
    cuts = sorted(draw(st.lists(st.integers(0, len(dataset)), max_size=3)))
    pieces = [dataset[a:b] for a, b in zip([0, *cuts], [*cuts, len(dataset)], strict=True)]
    controls = [0x00] * (len(pieces) - 1) + [0x02]  # the last fragment of a dataset
    if draw(st.booleans()):
        at = draw(st.integers(0, len(controls) - 1))
        controls[at] = draw(st.integers(0, 255))
    fragments = [p_data(3, control, piece) for control, piece in zip(controls, pieces, strict=True)]
    if draw(st.booleans()):
        fragments = fragments[: draw(st.integers(0, len(fragments)))]  # cut off mid-transfer
    return [associate_rq(), command, *fragments, *draw(st.lists(_other_pdus(), max_size=2))]


def session_pdus() -> st.SearchStrategy[list[bytes]]:
    """What a peer sends on one connection: a request first (mostly valid, at times
    mutated, or something else), then 0-5 PDUs; or a C-STORE cut up and broken."""
    valid = st.just(associate_rq())
    first = st.one_of(valid, valid, associate_requests(max_steps=1), peer_bytes())
    later = st.lists(_other_pdus() | associate_requests(2), max_size=5)
    generic = st.tuples(first, later).map(lambda pair: [pair[0], *pair[1]])
    return generic | store_pdus()


#: PDU types an acceptor's state machine turns into primitives (AE-6, DT-2, AR-2,
#: AR-3, AA-3 and others, PS3.8 9.2); an A-ASSOCIATE-AC/RJ from a requestor is
#: answered with an A-ABORT undecoded (AA-8).
ACCEPTOR_CONVERTS = frozenset({0x01, 0x04, 0x05, 0x06, 0x07})


def kills_the_dul(data: bytes) -> bool:
    """Whether pynetdicom decodes the PDU ``data`` starts with but cannot convert it.

    pynetdicom's state machine turns a received PDU into a primitive outside any
    error handling, so a PDU that decodes but fails there (an A-ASSOCIATE-RQ with an
    even presentation context ID or a bad user identity type; an A-ABORT with an
    undefined source or reason) raises in the association's DUL thread and ends it:
    a pynetdicom bug that ``dicomnode.receive._patches.do_action_or_abort`` turns
    into an A-ABORT (pinned by tests/fuzz/test_corpus.py).
    """
    if len(data) < 6 or data[0] not in ACCEPTOR_CONVERTS:
        return False
    (length,) = struct.unpack_from(">L", data, 2)
    if len(data) < 6 + length:
        return False  # never handed on whole
    decoded = _PDU_TYPES[data[:1]][0]()
    with like_the_node():
        try:
            decoded.decode(data[: 6 + length])
        except Exception:  # not decodable: pynetdicom answers it safely (Evt19)
            return False
        try:
            decoded.to_primitive()
        except Exception:
            return True
    return False
