"""Fuzz ingest's structural check, :func:`dicomnode.receive.inspect.inspect_instance`.

Each example is a spool file as a receiving process writes it: the File Meta that
pynetdicom writes for the accepted presentation context (so only the transfer syntax
is the peer's choice, from those the node accepts), then a dataset as the peer sent
it. The datasets start from small valid ones (tests/factories.py and pydicom's
bundled files) and are broken: truncated, flipped, with new bytes in values (text,
UIDs, character sets), with lying element lengths, deep
sequence nesting, thousands of empty elements, undefined lengths, deflated garbage
and deflate bombs, or labelled with a transfer syntax they are not in.

``inspect_instance`` must return (with valid UIDs) or raise a ReceiveError, within
one second and 4 MiB of allocations over the input size (2 MiB, and two of the
1 MiB steps inflating works in), and leave nothing in its scratch folder.

Budgets: the ``ci`` Hypothesis profile (default) keeps all of tests/fuzz under 60 s;
``HYPOTHESIS_PROFILE=long`` runs many more examples by hand (docs/security.md,
"Fuzzing").
"""

from __future__ import annotations

import re
import struct
import warnings
import zlib
from dataclasses import dataclass
from functools import cache
from io import BytesIO
from pathlib import Path

import pytest
from hypothesis import currently_in_test_context, event, given
from hypothesis import strategies as st
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.filereader import data_element_generator
from pydicom.uid import UID, DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian
from pynetdicom import ALL_TRANSFER_SYNTAXES

from dicomnode.errors import ReceiveError
from dicomnode.receive.inspect import InstanceInfo, inspect_instance, is_valid_uid
from dicomnode.receive.spool import file_meta_bytes
from tests.factories import dataset_bytes, encode, small_ct
from tests.fuzz.support import BASE_MEMORY_BYTES, like_the_node, within_budget

pytestmark = pytest.mark.timeout(120)

#: The inflate limit the examples run with (``node.max_inflated_bytes``, lowered so a
#: bomb reaches it in milliseconds; the default is checked by tests/unit).
MAX_INFLATED = 8 * 2**20
#: What inspecting may allocate over the input: the fuzz tests' 2 MiB, plus two of
#: inflate's 1 MiB output steps (inspect.py): the one just written is still held
#: while zlib makes, and grows, the next (measured: 3.2 MB for any bomb size).
MEMORY_BYTES = BASE_MEMORY_BYTES + 2 * 2**20
#: The most empty elements one example adds: enough to cross every per-element
#: buffer, few enough for tracemalloc (which costs ~40 us per element here).
MAX_EMPTY_ELEMENTS = 3000
_BUNDLED = (
    "CT_small.dcm",
    "MR_small.dcm",
    "rtplan.dcm",
    "MR_small_bigendian.dcm",
    "JPEG2000.dcm",
    "image_dfl.dcm",
    "SC_rgb_small_odd.dcm",
)
_DEFLATED = str(DeflatedExplicitVRLittleEndian)


@dataclass(frozen=True)
class Base:
    """A valid dataset to break: its plain encoding and where its elements lie."""

    name: str
    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax: str
    #: The dataset bytes, inflated if the syntax is deflated.
    plain: bytes
    #: Offsets of each top-level element header.
    starts: tuple[int, ...]
    #: (offset, width) of each top-level length field.
    lengths: tuple[tuple[int, int], ...]

    @property
    def explicit(self) -> bool:
        return not UID(self.transfer_syntax).is_implicit_VR

    @property
    def little(self) -> bool:
        return bool(UID(self.transfer_syntax).is_little_endian)


_LONG_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR",
             b"UT", b"UV"}  # fmt: skip


def _layout(plain: bytes, syntax: UID) -> tuple[tuple[int, ...], tuple[tuple[int, int], ...]]:
    """Top-level element offsets (pydicom's parser finds the ends) and length fields."""
    implicit = bool(syntax.is_implicit_VR)
    fp = BytesIO(plain)
    starts = [0]
    with like_the_node():
        for _ in data_element_generator(fp, implicit, syntax.is_little_endian):
            starts.append(fp.tell())  # where the next element begins
    starts = [start for start in starts if start + 8 <= len(plain)]
    lengths = []
    for start in starts:
        if implicit:
            lengths.append((start + 4, 4))
        elif plain[start + 4 : start + 6] in _LONG_VRS:
            lengths.append((start + 8, 4))
        else:
            lengths.append((start + 6, 2))
    return tuple(starts), tuple(lengths)


def _base(name: str, ds: Dataset, data: bytes) -> Base:
    syntax = UID(ds.file_meta.TransferSyntaxUID)
    plain = dataset_bytes(data)
    if syntax == _DEFLATED:
        plain = zlib.decompress(plain, -zlib.MAX_WBITS)
    layout_syntax = UID(ExplicitVRLittleEndian) if syntax == _DEFLATED else syntax
    starts, lengths = _layout(plain, layout_syntax)
    return Base(name, str(ds.SOPClassUID), str(ds.SOPInstanceUID), str(syntax), plain,
                starts, lengths)  # fmt: skip


@cache
def bases() -> tuple[Base, ...]:
    """The valid datasets every example starts from (fixed UIDs: reproducible)."""
    ct = small_ct(
        sop_instance_uid="1.2.826.0.1.3680043.10.1.1",
        study_instance_uid="1.2.826.0.1.3680043.10.1.2",
        series_instance_uid="1.2.826.0.1.3680043.10.1.3",
        rows=8,
        columns=8,
    )
    ct.FrameOfReferenceUID = "1.2.826.0.1.3680043.10.1.4"
    found = [_base("small_ct", ct, encode(ct))]
    for name in _BUNDLED:
        path = get_testdata_file(name, download=False)
        assert path is not None, f"pydicom's bundled {name} is missing"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = dcmread(path)
        found.append(_base(name, ds, Path(path).read_bytes()))
    return tuple(found)


def spool_file(base: Base, syntax: str, dataset: bytes) -> bytes:
    """The file a receiving process writes: preamble, pynetdicom's File Meta, dataset."""
    meta = file_meta_bytes(base.sop_class_uid, base.sop_instance_uid, syntax)
    return b"\0" * 128 + b"DICM" + meta + dataset


def deflate(data: bytes) -> bytes:
    compressor = zlib.compressobj(6, zlib.DEFLATED, -zlib.MAX_WBITS)
    return compressor.compress(data) + compressor.flush()


# -- What gets inserted ----------------------------------------------------------------


def element(tag: int, vr: bytes, value: bytes, base: Base, length: int | None = None) -> bytes:
    """One element in the base's encoding; ``length`` overrides the value's length."""
    size = len(value) if length is None else length
    order = "<" if base.little else ">"
    group_element = struct.pack(order + "HH", tag >> 16, tag & 0xFFFF)
    if not base.explicit or tag >> 16 == 0xFFFE:
        return group_element + struct.pack(order + "I", size) + value
    if vr in (b"OB", b"OW", b"SQ", b"UN", b"UT"):
        return group_element + vr + b"\0\0" + struct.pack(order + "I", size) + value
    return group_element + vr + struct.pack(order + "H", size & 0xFFFF) + value


def nested(base: Base, depth: int, defined: bool) -> bytes:
    """A private sequence nested ``depth`` levels deep (PS3.5 7.5)."""
    inner = b""
    for _ in range(depth):
        if defined:
            item = element(0xFFFEE000, b"", inner, base)
            inner = element(0x00291010, b"SQ", item, base)
        else:
            item = element(0xFFFEE000, b"", inner + element(0xFFFEE00D, b"", b"", base), base,
                           length=0xFFFFFFFF)  # fmt: skip
            inner = element(0x00291010, b"SQ", item + element(0xFFFEE0DD, b"", b"", base), base,
                            length=0xFFFFFFFF)  # fmt: skip
    return inner


def empty_elements(base: Base, count: int, group: int, same_tag: bool) -> bytes:
    """``count`` zero-length LO elements in ``group``."""
    return b"".join(
        element((group << 16) | (0x1000 if same_tag else 0x1000 + n), b"LO", b"", base)
        for n in range(count)
    )


_STEPS = ("flip", "truncate", "length", "value", "insert", "delete", "nest", "empty", "huge")


@st.composite
def broken_dataset(draw: st.DrawFn, base: Base) -> bytes:
    """``base.plain`` after 1..4 mutations."""
    data = bytearray(base.plain)
    for _ in range(draw(st.integers(1, 4))):
        step = draw(st.sampled_from(_STEPS))
        at = draw(st.sampled_from(base.starts)) if base.starts else 0
        at = min(at, len(data))
        if step == "flip" and data:
            spot = draw(st.integers(0, len(data) - 1))
            data[spot] ^= draw(st.integers(1, 255))
        elif step == "truncate":
            del data[draw(st.integers(0, len(data))) :]
        elif step == "length" and base.lengths:
            spot, width = draw(st.sampled_from(base.lengths))
            if spot + width <= len(data):
                values = [0, 1, 2, 0xFFFF, 0xFFFFFFF0, 0xFFFFFFFF, 0x7FFFFFFF]
                value = draw(st.sampled_from(values) | st.integers(0, 2**32 - 1))
                order = "<" if base.little else ">"
                fmt = order + ("I" if width == 4 else "H")
                data[spot : spot + width] = struct.pack(fmt, value & (0xFFFF if width == 2 else ~0))
        elif step == "value" and base.lengths:
            # New bytes in a value, its length kept: text, UIDs, numbers, charsets.
            spot, width = draw(st.sampled_from(base.lengths))
            order = "<" if base.little else ">"
            if spot + width <= len(data):
                fmt = order + ("I" if width == 4 else "H")
                (length,) = struct.unpack_from(fmt, data, spot)
                start = spot + width
                size = min(length, 64, max(0, len(data) - start))
                data[start : start + size] = draw(st.binary(min_size=size, max_size=size))
        elif step == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=64))
        elif step == "delete" and data:
            del data[at : at + draw(st.integers(1, 64))]
        elif step == "nest":
            data[at:at] = nested(base, draw(st.integers(1, 80)), draw(st.booleans()))
        elif step == "empty":
            count = draw(st.integers(1, MAX_EMPTY_ELEMENTS))
            group = draw(st.sampled_from([0x0008, 0x0018, 0x0019, 0x0029, 0x6000]))
            data[at:at] = empty_elements(base, count, group, draw(st.booleans()))
        elif step == "huge":
            vr = draw(st.sampled_from([b"OB", b"UN", b"SQ", b"LO", b"UT"]))
            length = draw(st.sampled_from([0xFFFFFFF0, 0xFFFFFFFF, 0x7FFFFFFF]))
            data[at:at] = element(0x00291020, vr, b"\0" * 4, base, length=length)
    return bytes(data)


@cache
def bomb(inflated_mib: int) -> bytes:
    """The small CT deflated with ``inflated_mib`` MiB of zeros in a private OB."""
    ct = bases()[0]
    header = struct.pack("<HH2s2xI", 0x0009, 0x1010, b"OB", inflated_mib * 2**20)
    creator = struct.pack("<HH2sH", 0x0009, 0x0010, b"LO", 14) + b"DICOMNODE TEST"
    compressor = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    zeros = bytes(2**20)
    parts = [compressor.compress(creator + header)]
    parts += [compressor.compress(zeros) for _ in range(inflated_mib)]
    return b"".join([*parts, compressor.compress(ct.plain), compressor.flush()])


# -- The check -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(where the example's file goes, the scratch folder inspect_instance may use)."""
    root = tmp_path_factory.mktemp("fuzz_inspect")
    (root / "scratch").mkdir()
    return root / "in.dcm", root / "scratch"


def label(outcome: str) -> None:
    """Count the outcome in Hypothesis' statistics (--hypothesis-show-statistics)."""
    if currently_in_test_context():
        event(re.sub(r"\(.*?\)|[0-9]+", "#", outcome))


def check(file: bytes, folders: tuple[Path, Path]) -> InstanceInfo | None:
    """Inspect ``file`` within budget; only a ReceiveError may come out."""
    path, scratch = folders
    path.write_bytes(file)
    info: InstanceInfo | None = None
    with within_budget(len(file), base_bytes=MEMORY_BYTES), warnings.catch_warnings():
        # pydicom warns (a bad Specific Character Set); in a receiving process that
        # is a warning, here filterwarnings = error would make it an exception.
        warnings.simplefilter("ignore")
        try:
            info = inspect_instance(path, scratch, max_inflated=MAX_INFLATED)
        except ReceiveError as exc:
            label(f"refused: {exc}")
    assert list(scratch.iterdir()) == [], "inspect_instance left files in its scratch folder"
    if info is not None:
        label("read")
        uids = (info.sop_class_uid, info.sop_instance_uid, info.study_instance_uid,
                info.series_instance_uid)  # fmt: skip
        assert all(is_valid_uid(uid) for uid in uids)
        assert info.number_of_frames >= 1
    return info


def bases_and_syntaxes() -> st.SearchStrategy[tuple[Base, str]]:
    """A base, and the transfer syntax the peer negotiated: mostly the base's own."""
    # Deferred: the bases are built when the first example runs, not at collection.
    return st.deferred(
        lambda: st.sampled_from(bases()).flatmap(
            lambda base: st.tuples(
                st.just(base),
                st.sampled_from([base.transfer_syntax]) | st.sampled_from(ALL_TRANSFER_SYNTAXES),
            )
        )
    )


@given(pair=bases_and_syntaxes(), data=st.data())
def test_broken_datasets_are_read_or_refused_within_budget(
    pair: tuple[Base, str], data: st.DataObject, folders: tuple[Path, Path]
) -> None:
    base, syntax = pair
    dataset = data.draw(broken_dataset(base))
    if syntax == _DEFLATED:
        dataset = deflate(dataset)
    check(spool_file(base, syntax, dataset), folders)


def test_the_unbroken_bases_are_read(folders: tuple[Path, Path]) -> None:
    for base in bases():
        payload = deflate(base.plain) if base.transfer_syntax == _DEFLATED else base.plain
        info = check(spool_file(base, base.transfer_syntax, payload), folders)
        assert info is not None, base.name
        assert info.sop_instance_uid == base.sop_instance_uid


@st.composite
def deflated_payloads(draw: st.DrawFn) -> bytes:
    """Garbage, cut or flipped deflate streams, and bombs of up to 64 MiB."""
    kind = draw(st.sampled_from(["garbage", "cut", "flipped", "bomb", "bomb_cut", "trailing"]))
    if kind == "garbage":
        return draw(st.binary(max_size=2048))
    if kind in ("bomb", "bomb_cut"):
        stream = bomb(draw(st.sampled_from([1, 4, 7, 9, 16, 64])))
    else:
        stream = deflate(draw(st.sampled_from(bases())).plain)
    if kind in ("cut", "bomb_cut"):
        return stream[: draw(st.integers(0, len(stream)))]
    if kind == "flipped":
        spot = draw(st.integers(0, len(stream) - 1))
        flipped = bytearray(stream)
        flipped[spot] ^= draw(st.integers(1, 255))
        return bytes(flipped)
    if kind == "trailing":
        return stream + draw(st.binary(min_size=1, max_size=256))
    return stream


@given(payload=deflated_payloads())
def test_deflated_garbage_and_bombs_are_refused_within_budget(
    payload: bytes, folders: tuple[Path, Path]
) -> None:
    check(spool_file(bases()[0], _DEFLATED, payload), folders)


def test_a_bomb_over_the_inflate_limit_is_refused(folders: tuple[Path, Path]) -> None:
    path, scratch = folders
    path.write_bytes(spool_file(bases()[0], _DEFLATED, bomb(16)))
    with pytest.raises(ReceiveError, match="inflates past"):
        inspect_instance(path, scratch, max_inflated=MAX_INFLATED)
