"""The tables of the DICOM Conformance Statement, generated from the objects the node uses.

``docs/conformance.md`` is prose written by hand around tables that this module
generates, each between a pair of markers::

    <!-- BEGIN GENERATED scp-sop-classes: python -m dicomnode.conformance --write ... -->
    ...
    <!-- END GENERATED scp-sop-classes -->

so the prose explains and the tables cannot drift from the code. Every table is read
from what the node itself uses, never from a copy:

- the SCP's presentation contexts from the AE that :func:`dicomnode.receive.scp.build_ae`
  builds, its statuses from :class:`dicomnode.receive.status.Status`;
- the SCU's presentation contexts from outputs built by :mod:`dicomnode.outputs`
  (SEG, SR, SC on a small synthetic CT from :mod:`dicomnode.synth`), written as the
  worker writes them and grouped by the same functions :func:`dicomnode.send.scu.store_files`
  uses, and its status handling from :func:`dicomnode.send.scu.classify_status`;
- the modules of each output IOD by comparing the built objects with the IOD tables
  that ship with highdicom, the SR's coded concepts by walking the built report;
- configuration defaults from :mod:`dicomnode.config`.

``python -m dicomnode.conformance`` prints every table; ``--write FILE`` rewrites the
tables of FILE in place; ``--check FILE`` exits 1 naming the tables that are stale.
Nothing here imports torch.
"""

from __future__ import annotations

import argparse
import ast
import inspect
import re
import sys
import tempfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
from highdicom._standard_utils import (
    get_iod_module_map,
    get_module_attribute_map,
    get_sop_class_iod_map,
)
from pydicom._uid_dict import UID_dictionary
from pydicom.datadict import tag_for_keyword
from pydicom.dataset import Dataset
from pydicom.uid import UID
from pynetdicom import DEFAULT_TRANSFER_SYNTAXES, sop_class
from pynetdicom.presentation import PresentationContext
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from pynetdicom.status import code_to_category

from dicomnode import __version__
from dicomnode.config import NodeSettings, PeerSettings, SendSettings, Settings
from dicomnode.models.api import (
    ClassLabel,
    Code,
    Finding,
    ModelResult,
    Region,
    SegmentLabel,
    Volume,
)
from dicomnode.outputs import sr
from dicomnode.outputs.sc import build_overlay_capture
from dicomnode.outputs.seg import build_segmentation, segment_number_map
from dicomnode.outputs.sr import build_measurement_report
from dicomnode.receive import _patches, ingest
from dicomnode.receive import inspect as inspect_module
from dicomnode.receive import status as status_module
from dicomnode.receive.scp import NodeServer, build_ae
from dicomnode.schedule.scheduler import SEND_INTERVAL_SECONDS
from dicomnode.send import scu
from dicomnode.send.deliveries import MAX_PARALLEL_PEERS
from dicomnode.synth.ct import build_ct_series

__all__ = [
    "DOCUMENT",
    "TABLES",
    "Table",
    "generate_tables",
    "main",
    "stale_tables",
    "update_document",
]

#: The document the tables belong to, relative to the repository root.
DOCUMENT = Path("docs/conformance.md")
_COMMAND = f"python -m dicomnode.conformance --write {DOCUMENT}"
_BEGIN = re.compile(r"<!-- BEGIN GENERATED (?P<name>[a-z0-9-]+)(?::[^>]*)? -->\n")
_END = "<!-- END GENERATED {name} -->"


@dataclass(frozen=True, slots=True)
class Table:
    """One generated table: its marker name and its Markdown text."""

    name: str
    text: str

    def block(self) -> str:
        """The table between its markers, as it stands in the document."""
        begin = f"<!-- BEGIN GENERATED {self.name}: {_COMMAND} -->"
        return f"{begin}\n{self.text}\n{_END.format(name=self.name)}"


def _markdown(header: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def _uid_name(uid: str) -> str:
    """A UID's name from pydicom, else from pynetdicom's keyword (newer SOP classes)."""
    name = UID(uid).name
    if name != uid:
        return name
    keyword = next((k for k, v in sop_class._STORAGE_CLASSES.items() if v == uid), None)
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])", " ", keyword) if keyword else "(no name)"


def _default_settings() -> Settings:
    # The built-in defaults, without the environment overrides Settings() would read:
    # the document describes the node as shipped.
    return Settings.model_construct()


# -- the SCP -------------------------------------------------------------------------


def _scp_contexts() -> list[PresentationContext]:
    """The presentation contexts the SCP's AE supports, as the node builds it."""
    contexts: list[PresentationContext] = build_ae(_default_settings()).supported_contexts
    return contexts


def _syntax_sets(contexts: Sequence[PresentationContext]) -> dict[tuple[str, ...], str]:
    """Each distinct transfer syntax list -> its label (A, B, ...), in first-seen order."""
    labels: dict[tuple[str, ...], str] = {}
    for context in contexts:
        labels.setdefault(tuple(context.transfer_syntax), chr(ord("A") + len(labels)))
    return labels


def _scp_sop_classes() -> str:
    contexts = _scp_contexts()
    labels = _syntax_sets(contexts)
    # Verification first, then storage classes by name: how a reader looks them up.
    ordered = sorted(contexts, key=lambda c: (c.abstract_syntax != Verification,
                                              _uid_name(str(c.abstract_syntax))))  # fmt: skip
    rows = [
        (_uid_name(str(c.abstract_syntax)), f"`{c.abstract_syntax}`", "SCP",
         labels[tuple(c.transfer_syntax)])
        for c in ordered
    ]  # fmt: skip
    return _markdown(("SOP class", "UID", "role", "transfer syntax set"), rows)


def _scp_transfer_syntaxes() -> str:
    labels = _syntax_sets(_scp_contexts())
    every = list(dict.fromkeys(uid for syntaxes in labels for uid in syntaxes))
    rows = [
        (_uid_name(uid), f"`{uid}`", ", ".join(lb for s, lb in labels.items() if uid in s))
        for uid in every
    ]
    return _markdown(("transfer syntax", "UID", "in set"), rows)


#: Services a peer commonly asks a node beside a PACS for, none of which it offers.
_NOT_OFFERED = (
    "1.2.840.10008.5.1.4.1.2.2.1",  # Study Root Query/Retrieve - FIND
    "1.2.840.10008.5.1.4.1.2.2.2",  # Study Root Query/Retrieve - MOVE
    "1.2.840.10008.5.1.4.1.2.2.3",  # Study Root Query/Retrieve - GET
    "1.2.840.10008.5.1.4.31",  # Modality Worklist Information Model - FIND
    "1.2.840.10008.3.1.2.3.3",  # Modality Performed Procedure Step
)


def _scp_not_accepted() -> str:
    """Storage SOP classes and transfer syntaxes pydicom knows that the SCP refuses."""
    contexts = _scp_contexts()
    classes = {str(c.abstract_syntax) for c in contexts}
    syntaxes = {str(t) for c in contexts for t in c.transfer_syntax}
    rows: list[tuple[str, str, str, str]] = []
    for uid, (name, kind, _, retired, _) in UID_dictionary.items():
        storage = kind == "SOP Class" and "Storage" in name and uid not in classes
        if storage or (kind == "SOP Class" and uid in _NOT_OFFERED):
            rows.append(("SOP class", name, f"`{uid}`", retired or "no"))
        elif kind == "Transfer Syntax" and uid not in syntaxes:
            rows.append(("transfer syntax", name, f"`{uid}`", retired or "no"))
    offered = classes.intersection(_NOT_OFFERED)
    if offered:
        raise RuntimeError(f"the SCP now accepts {sorted(offered)}: update _NOT_OFFERED")
    rows.sort(key=lambda row: row[0])  # SOP classes, then transfer syntaxes
    return _markdown(("what", "name", "UID", "retired"), rows)


def _member_comments(cls: type) -> dict[str, str]:
    """The ``#:`` comment above each member of a class, read from its source."""
    source = inspect.getsource(cls)
    lines = source.splitlines()
    comments: dict[str, str] = {}
    for node in ast.parse(source).body[0].body:  # type: ignore[attr-defined]
        if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name):
            above: list[str] = []
            for line in reversed(lines[: node.lineno - 1]):
                if not line.strip().startswith("#:"):
                    break
                above.insert(0, line.strip()[2:].strip())
            comments[node.targets[0].id] = " ".join(above)
    return comments


def _scp_statuses() -> str:
    comments = _member_comments(status_module.Status)
    rows: list[tuple[str, ...]] = [
        (f"`0x{member:04X}`", member.name, comments.get(member.name, ""))
        for member in status_module.Status
    ]
    rows += [
        (f"`0x{code:04X}`", "never sent", "kept for pynetdicom's own failures")
        for code in sorted(status_module.RESERVED_BY_PYNETDICOM)
    ]
    return _markdown(("status", "name", "meaning"), rows)


# -- the SCU -------------------------------------------------------------------------


def _scu_contexts() -> str:
    rows = [
        (kind, _uid_name(sop), f"`{sop}`", _uid_name(syntax), f"`{syntax}`")
        for kind, sop, syntax in _samples().proposed
    ]
    verification = _verification_syntaxes()
    rows += [
        ("C-ECHO (`dicomnode echo`)", _uid_name(Verification),
         f"`{Verification}`", _uid_name(s), f"`{s}`")
        for s in verification
    ]  # fmt: skip
    rows.append(
        ("routed instance", "the SOP class it was received as", "(any in the SCP table)",
         "the transfer syntax it was received in", "(any in the SCP table)")
    )  # fmt: skip
    return _markdown(("what", "SOP class", "UID", "transfer syntax", "UID"), rows)


def _verification_syntaxes() -> list[str]:
    # echo_peer adds Verification with pynetdicom's default transfer syntaxes.
    ae = scu._ae("DICOMNODE")
    ae.add_requested_context(Verification)
    syntaxes = [str(t) for t in ae.requested_contexts[0].transfer_syntax]
    if syntaxes != [str(t) for t in DEFAULT_TRANSFER_SYNTAXES]:
        raise RuntimeError("pynetdicom's default transfer syntaxes changed")
    return syntaxes


#: Responses whose handling the table shows: one of each PS3.4 B.2.3 / PS3.7 C kind.
_SAMPLE_RESPONSES = (0x0000, 0x0001, 0xB000, 0xB006, 0xB007, 0xA700, 0xA7FF, 0xA900,
                     0xA9FF, 0xC000, 0xCFFF, 0x0117, 0x0122, 0x0124, 0x0211, 0x0212)  # fmt: skip


def _scu_status_handling() -> str:
    rows = [
        (f"`0x{code:04X}`", code_to_category(code), scu.classify_status(code).value)
        for code in _SAMPLE_RESPONSES
    ]
    return _markdown(("C-STORE response status", "category", "delivery outcome"), rows)


def _implementation() -> str:
    settings = _default_settings()
    scp_ae = build_ae(settings)
    scu_ae = scu._ae(settings.node.ae_title)
    rows = [
        ("AE title", f"`{scp_ae.ae_title}` (`node.ae_title`)",
         f"`{settings.node.ae_title}` (`node.ae_title`), as calling AE"),
        ("Implementation Class UID", f"`{scp_ae.implementation_class_uid}`",
         f"`{scu_ae.implementation_class_uid}`"),
        ("Implementation Version Name", f"`{scp_ae.implementation_version_name}`",
         f"`{scu_ae.implementation_version_name}`"),
        ("Maximum PDU length received", f"{scp_ae.maximum_pdu_size} (`node.maximum_pdu_size`)",
         f"{scu_ae.maximum_pdu_size}"),
        ("Associations at once", f"{scp_ae.maximum_associations} per receiving process"
         " (`node.maximum_associations`)", f"one per peer, {MAX_PARALLEL_PEERS} peers at once"),
        ("Presentation contexts per association", "up to 128 (PS3.8)",
         f"at most {scu._MAX_CONTEXTS}, exactly the pairs being sent"),
        ("Connection timeout", "-", f"{scu.CONNECT_TIMEOUT:g} s"),
        ("Due deliveries looked for", "-", f"every {SEND_INTERVAL_SECONDS:g} s"),
        ("ACSE timeout", f"{scp_ae.acse_timeout:g} s", f"{scu_ae.acse_timeout:g} s"),
        ("DIMSE timeout", f"{scp_ae.dimse_timeout:g} s", f"{scu_ae.dimse_timeout:g} s"),
        ("Network (idle) timeout", f"{scp_ae.network_timeout:g} s (`node.network_timeout`)",
         f"{scu_ae.network_timeout:g} s"),
    ]  # fmt: skip
    return _markdown(("", "SCP (receiving)", "SCU (sending)"), rows)


def _fixed_limits() -> str:
    """Limits built into the receiver (not settings), from the constants it uses."""
    rows = [
        ("A-ASSOCIATE-RQ size", f"{_patches.MAX_ASSOCIATE_RQ_BYTES} bytes",
         "A-ABORT (invalid PDU parameter); the body is never read"),
        ("a PDU over `node.maximum_pdu_size`", f"{_patches.PDV_HEADER_SLACK} bytes"
         " of slack for PDV headers", "A-ABORT; the body is never read"),
        ("listen backlog", f"{NodeServer.request_queue_size} (capped by `net.core.somaxconn`)",
         "the kernel refuses further connections"),
        ("sequence nesting in a data set", f"{inspect_module._MAX_DEPTH} levels", "0xC000"),
        ("index commit of one C-STORE", f"{ingest.COMMIT_TIMEOUT_S:g} s", "0xA700 (retry later)"),
        ("Error Comment (0000,0902)", "64 characters (LO)", "cut to 64"),
    ]  # fmt: skip
    return _markdown(("what", "limit", "past it"), rows)


# -- configuration -------------------------------------------------------------------

#: The keys that change what a peer sees, per section, with what they mean for it.
_KEYS: tuple[tuple[str, type[Any], dict[str, str]], ...] = (
    ("node", NodeSettings, {
        "ae_title": "our AE title: the called AE we require, the calling AE we send as",
        "host": "address the SCP binds",
        "port": "TCP port of the SCP (plain or TLS, never both)",
        "allowed_calling_aets": "calling AE titles accepted; empty: any",
        "allowed_hosts": "addresses or networks that may connect; empty: any",
        "maximum_pdu_size": "maximum PDU length we receive (4096 to 4194304)",
        "maximum_associations": "associations per receiving process",
        "receive_processes": "receiving processes sharing the port; 0: one per CPU, at most 4",
        "max_connections_per_host": "connections one host may hold per receiving process",
        "max_pending_connections": "connections not yet associated, per receiving process",
        "association_request_timeout": "seconds to complete TLS and send the A-ASSOCIATE-RQ",
        "network_timeout": "seconds a PDU may take to arrive, or an association stay idle",
        "tls_certificate": "PEM certificate: with the key, the SCP speaks DICOM TLS only",
        "tls_private_key": "PEM private key of that certificate",
        "tls_client_ca": "PEM CAs; when set, peers must present a certificate they signed",
        "max_instance_bytes": "largest instance stored; larger: 0xA700",
        "max_inflated_bytes": "most a deflated data set may inflate to; more: 0xC000",
        "max_elements": "most data elements an instance may hold; more: 0xC000",
    }),
    ("peers", PeerSettings, {
        "name": "the name routes and pipelines send to",
        "ae_title": "the peer's AE title (our called AE)",
        "host": "the peer's address",
        "port": "the peer's port",
        "accepts": "result objects sent to this peer: seg, sr, sc",
        "tls": "send over DICOM TLS (TLS 1.2 or later, certificate checked)",
        "tls_ca": "PEM CA the peer's certificate must chain to; empty: the system's",
        "tls_server_name": "name the peer's certificate must carry; empty: host",
        "tls_certificate": "our client certificate for this peer (PEM)",
        "tls_private_key": "its private key (PEM)",
    }),
    ("send", SendSettings, {
        "retry_backoff_seconds": "first wait before resending after 0xA7xx or a network error",
        "max_backoff_seconds": "longest wait between two attempts",
    }),
)  # fmt: skip


def _default(model: type[Any], key: str) -> str:
    field = model.model_fields[key]  # a KeyError here: the key was renamed, update _KEYS
    if field.is_required():
        return "required"
    value = field.get_default(call_default_factory=True)
    if isinstance(value, tuple):
        return "`[" + ", ".join(f'"{v}"' for v in value) + "]`"
    if isinstance(value, str | Path):
        return f'`"{value}"`'
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    return f"`{value:g}`" if isinstance(value, float) else f"`{value}`"


def _configuration() -> str:
    rows = [
        (f"`[[{section}]]` `{key}`" if section == "peers" else f"`[{section}]` `{key}`",
         _default(model, key), meaning)
        for section, model, keys in _KEYS
        for key, meaning in keys.items()
    ]  # fmt: skip
    return _markdown(("key", "default", "what it does"), rows)


# -- the objects we create -------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Samples:
    """Outputs built from a small synthetic CT, the way the worker builds them."""

    #: Output kind -> the object (the first SC image for ``sc``).
    objects: dict[str, Dataset]
    #: (kind, SOP class UID, transfer syntax UID) as the SCU proposes them.
    proposed: list[tuple[str, str, str]]
    #: Source Specific Character Set (None: absent) -> kind -> what the output has.
    charsets: dict[str | None, dict[str, str | None]]
    #: Codes of the sample model; the report shows them as "the model's".
    model_codes: frozenset[tuple[str, str]]
    #: The report of a result with no finding.
    empty_sr: Dataset


_SAMPLE_SCHEME = "99DNSAMPLE"
_SAMPLE_SIZE = (3, 32, 32)  # slices, rows, columns: small, so building takes a second


def _code(value: str, meaning: str) -> Code:
    return Code(value, _SAMPLE_SCHEME, meaning)


#: A stand-in model: one segment label and one class, coded in a private scheme.
_LABEL = SegmentLabel(1, "lesion", _code("C1", "Sample category"), _code("T1", "Sample lesion"))
_CLASS = ClassLabel("abnormal", _code("K1", "Sample class"))


@dataclass(frozen=True, slots=True)
class _SampleModel:
    # Placeholders, so the tables show where the model's name and version go.
    name: str = "{model}"
    version: str = "{version}"
    labels: tuple[SegmentLabel, ...] = (_LABEL,)
    classes: tuple[ClassLabel, ...] = (_CLASS,)


def _ct(charset: str | None) -> tuple[list[Dataset], Volume]:
    """A small synthetic CT series with the given Specific Character Set, and its volume."""
    slices, rows, columns = _SAMPLE_SIZE
    sources = list(build_ct_series(slices=slices, rows=rows, columns=columns, seed=7))
    for ds in sources:
        if charset is None:
            del ds.SpecificCharacterSet
        else:
            ds.SpecificCharacterSet = charset
    first = sources[0]
    array = np.stack([ds.pixel_array for ds in sources]).astype(np.float32)
    volume = Volume(
        array=array * float(first.RescaleSlope) + float(first.RescaleIntercept),
        spacing=(float(first.SliceThickness), *(float(v) for v in first.PixelSpacing)),  # type: ignore[arg-type]
        origin=tuple(float(v) for v in first.ImagePositionPatient),  # type: ignore[arg-type]
        orientation=tuple(float(v) for v in first.ImageOrientationPatient),  # type: ignore[arg-type]
        sop_instance_uids=tuple(str(ds.SOPInstanceUID) for ds in sources),
        frame_numbers=(1,) * slices,
        series_instance_uid=str(first.SeriesInstanceUID),
        frame_of_reference_uid=str(first.FrameOfReferenceUID),
    )
    return sources, volume


def _result(masks: np.ndarray[Any, Any], full: bool) -> ModelResult:
    """A result that uses every kind of group the report has (``full``), or nothing."""
    if not full:
        return ModelResult(masks={"ct": masks})
    box = Region("ct", 1, 10, 10, 14, 14)
    findings = (
        # A finding with a segment: TID 1411 referencing the SEG, TID 1410 for its box.
        Finding(_LABEL.type, 0.9, views=("ct",), segment_number=_LABEL.number,
                measurements={"volume": (16.0, "mm3"), "longest_diameter": (4.0, "mm")},
                regions=(box,)),
        # One without: TID 1501 with the box as a SCOORD on the image.
        Finding(_CLASS.code, 0.4, laterality="L", views=("ct",), regions=(box,)),
    )  # fmt: skip
    return ModelResult(masks={"ct": masks}, probabilities={"abnormal": 0.7}, findings=findings)


def _build(charset: str | None, full: bool) -> dict[str, Dataset]:
    """SEG, SR and the first SC image, built by :mod:`dicomnode.outputs` as the worker does."""
    sources, volume = _ct(charset)
    masks = np.zeros((1, *_SAMPLE_SIZE), dtype=np.bool_)
    masks[0, 1, 10:14, 10:14] = True
    model = _SampleModel()
    name, version = model.name, model.version
    seg = build_segmentation(
        sources,
        volume,
        masks,
        model.labels,
        model_name=name,
        model_version=version,
        job_key="sample",
    )
    assert seg is not None  # the mask is not empty
    sr = build_measurement_report(
        {"ct": sources}, _result(masks, full), model, volumes={"ct": volume},
        job_key="sample", segmentations={"ct": seg},
        segment_numbers={"ct": segment_number_map(masks, model.labels)},
    )  # fmt: skip
    sc = build_overlay_capture(
        sources,
        volume,
        masks,
        model.labels,
        model_name=name,
        model_version=version,
        job_key="sample",
    )
    return {"seg": seg, "sr": sr, "sc": sc[0]}


def _proposed(objects: dict[str, Dataset]) -> list[tuple[str, str, str]]:
    """The (kind, SOP class, transfer syntax) contexts the SCU proposes for the objects.

    Each object is written as the worker writes it, then read back and grouped by the
    functions :func:`dicomnode.send.scu.store_files` uses.
    """
    with tempfile.TemporaryDirectory() as folder:
        kinds = {}
        for kind, ds in objects.items():
            path = Path(folder) / f"{kind}.dcm"
            ds.save_as(path, enforce_file_format=True)
            kinds[path] = kind
        items = [item for item in scu._metas(list(kinds)) if isinstance(item, tuple)]
        if len(items) != len(kinds):
            raise RuntimeError("an output could not be read back as the SCU reads it")
        proposed = []
        for batch, contexts in scu._groups(items):
            for path, sop, syntax in batch:
                if (sop, syntax) in contexts:
                    proposed.append((kinds[path], sop, syntax))
    return proposed


@cache
def _samples() -> _Samples:
    full = _build("ISO_IR 100", full=True)
    charsets: dict[str | None, dict[str, str | None]] = {}
    empty: dict[str, Dataset] = {}
    for charset in (None, "ISO_IR 100", "ISO_IR 192"):
        objects = full if charset == "ISO_IR 100" else _build(charset, full=False)
        empty = objects if charset is None else empty
        charsets[charset] = {
            kind: "\\".join(ds.get("SpecificCharacterSet") or []) or None
            if isinstance(ds.get("SpecificCharacterSet"), list)
            else ds.get("SpecificCharacterSet")
            for kind, ds in objects.items()
        }
    codes = frozenset((c.value, c.scheme) for c in (_LABEL.category, _LABEL.type, _CLASS.code))
    return _Samples(full, _proposed(full), charsets, codes, empty["sr"])


def _charset(ds: Dataset) -> str | None:
    value = ds.get("SpecificCharacterSet")
    if not value:
        return None
    return value if isinstance(value, str) else "\\".join(value)


def _character_sets() -> str:
    kinds = ("seg", "sr", "sc")
    rows = [
        (f"`{charset}`" if charset else "absent",
         *(f"`{found[k]}`" if found[k] else "absent" for k in kinds))
        for charset, found in _samples().charsets.items()
    ]  # fmt: skip
    return _markdown(("source image", "SEG", "SR", "SC"), rows)


def _modules(kind: str) -> Callable[[], str]:
    """The table of the modules of one output's IOD and what we write of each."""

    def table() -> str:
        ds = _samples().objects[kind]
        iod = get_sop_class_iod_map()[str(ds.SOPClassUID)]
        attributes = get_module_attribute_map()
        rows = []
        for module in get_iod_module_map()[iod]:
            top = [a for a in attributes[module["key"]] if not a["path"]]
            # Repeating-group keywords (overlays) have no single tag: never written here.
            written = [
                a["keyword"]
                for a in top
                if tag_for_keyword(a["keyword"]) is not None and a["keyword"] in ds
            ]
            if written:
                what = ", ".join(written)
            elif top and all(a["type"] == "3" for a in top):
                what = "not written (every attribute Type 3)"
            else:
                what = "not written"
            rows.append((module["ie"], _title(module["key"]), module["usage"], what))
        return _markdown(("IE", "module", "usage", "attributes written"), rows)

    return table


def _title(key: str) -> str:
    """highdicom's module key as PS3.3 names it: ``sr-document-series`` -> SR Document Series."""
    upper = {"sr", "sc", "sop", "lut", "voi", "icc", "rt", "ct", "mr", "pet"}
    lower = {"of", "and", "for"}
    words = [
        w.upper() if w in upper else w if w in lower else w.capitalize() for w in key.split("-")
    ]
    title = " ".join(words)
    return title.replace("Multi Frame", "Multi-frame").replace(
        "Multi Resolution", "Multi-Resolution"
    )


def _walk(items: Iterable[Dataset]) -> Iterable[Dataset]:
    for item in items:
        yield item
        yield from _walk(item.get("ContentSequence", []))


def _sr_concepts() -> str:
    """Every concept name the reports carry, with its value type and the values seen."""
    samples = _samples()
    found: dict[tuple[str, str, str], tuple[set[str], list[str]]] = {}
    for report in (samples.objects["sr"], samples.empty_sr):
        for item in _walk([report]):
            name = item.ConceptNameCodeSequence[0]
            key = (str(name.CodingSchemeDesignator), str(name.CodeValue), str(name.CodeMeaning))
            types, values = found.setdefault(key, (set(), []))
            types.add(str(item.ValueType))
            value = _content_value(item, samples.model_codes)
            if value and value not in values:
                values.append(value)
    rows = [
        (f"{scheme} {value}", meaning, ", ".join(sorted(types)), "; ".join(values))
        for (scheme, value, meaning), (types, values) in found.items()
    ]
    return _markdown(("concept name", "meaning", "value type", "values written"), rows)


def _content_value(item: Dataset, model_codes: frozenset[tuple[str, str]]) -> str:
    """A content item's coded value or unit, as the concept table shows it."""
    if item.ValueType == "CODE":
        code = item.ConceptCodeSequence[0]
        if (str(code.CodeValue), str(code.CodingSchemeDesignator)) in model_codes:
            return "the model's code"
        return f"{code.CodingSchemeDesignator} {code.CodeValue} {code.CodeMeaning!s}"
    if item.ValueType == "NUM":
        unit = item.MeasuredValueSequence[0].MeasurementUnitsCodeSequence[0]
        return f"unit {unit.CodeValue}"
    if item.ValueType == "TEXT":
        return f'"{item.TextValue}"'
    return ""


def _sr_vocabulary() -> str:
    """Procedure Reported per source Modality, and the measurement names a model may use."""
    rows = [
        ("Procedure reported", f"Modality {modality}", _code_text(sr._procedure(_image(modality))))
        for modality in sr._PROCEDURES
    ]
    other = sr._procedure(_image(None))
    rows.append(("Procedure reported", "any other Modality", _code_text(other)))
    rows += [
        ("measurement", f"`{key}`", _code_text(code))
        for key, code in sr.MEASUREMENT_CONCEPTS.items()
    ]
    return _markdown(("concept", "when", "code"), rows)


def _image(modality: str | None) -> Dataset:
    ds = Dataset()
    if modality is not None:
        ds.Modality = modality
    return ds


def _code_text(code: Any) -> str:
    return f"{code.scheme_designator} {code.value} {code.meaning}"


#: Attributes that identify an output and say what it is, shown per kind.
_IDENTITY = (
    "Modality", "SeriesNumber", "SeriesDescription", "InstanceNumber", "Manufacturer",
    "ManufacturerModelName", "SoftwareVersions", "ContentLabel", "ContentDescription",
    "ImageType", "SegmentationType", "SegmentsOverlap", "PhotometricInterpretation",
    "BitsAllocated", "LossyImageCompression", "BurnedInAnnotation", "ConversionType",
    "ImageComments", "CompletionFlag", "VerificationFlag", "PreliminaryFlag",
)  # fmt: skip


def _output_attributes() -> str:
    objects = _samples().objects
    rows = [
        (keyword, *(_shown(objects[kind].get(keyword)) for kind in ("seg", "sr", "sc")))
        for keyword in _IDENTITY
    ]
    return _markdown(("attribute", "SEG", "SR", "SC"), rows)


def _shown(value: object) -> str:
    """A value as the identity table shows it; the dicomnode version as a placeholder."""
    if value is None:
        return "-"
    values = [value] if isinstance(value, str | int) else list(value)  # type: ignore[call-overload]
    # The version changes every release; the document says where it goes.
    text = "\\".join("{dicomnode version}" if str(v) == __version__ else str(v) for v in values)
    return f"`{text}`"


# -- the document --------------------------------------------------------------------

#: Every generated table: marker name -> the function that makes its Markdown.
TABLES: dict[str, Callable[[], str]] = {
    "implementation": _implementation,
    "scp-sop-classes": _scp_sop_classes,
    "scp-transfer-syntaxes": _scp_transfer_syntaxes,
    "scp-statuses": _scp_statuses,
    "scp-not-accepted": _scp_not_accepted,
    "scu-contexts": _scu_contexts,
    "scu-status-handling": _scu_status_handling,
    "configuration": _configuration,
    "fixed-limits": _fixed_limits,
    "character-sets": _character_sets,
    "iod-seg": _modules("seg"),
    "iod-sr": _modules("sr"),
    "iod-sc": _modules("sc"),
    "sr-concepts": _sr_concepts,
    "sr-vocabulary": _sr_vocabulary,
    "output-attributes": _output_attributes,
}


def generate_tables() -> list[Table]:
    """Generate every table of the conformance statement from the code as it is now.

    Returns
    -------
    list of Table
        In :data:`TABLES` order.
    """
    return [Table(name, make()) for name, make in TABLES.items()]


def _blocks(text: str) -> dict[str, tuple[int, int]]:
    """Marker name -> (start, end) of its generated block in ``text``, markers included."""
    blocks = {}
    for begin in _BEGIN.finditer(text):
        name = begin["name"]
        end = text.find(_END.format(name=name), begin.end())
        if end < 0:
            raise ValueError(f"{DOCUMENT}: no end marker for generated table {name!r}")
        blocks[name] = (begin.start(), end + len(_END.format(name=name)))
    return blocks


def update_document(text: str, tables: Sequence[Table]) -> str:
    """Return ``text`` with each generated block replaced by its table.

    Parameters
    ----------
    text
        The document.
    tables
        The tables to put in (:func:`generate_tables`).

    Returns
    -------
    str
        The document with fresh tables; the prose around them unchanged.

    Raises
    ------
    ValueError
        If the document has no block for a table, or a block for an unknown table.
    """
    blocks = _blocks(text)
    names = {table.name for table in tables}
    if set(blocks) != names:
        missing, unknown = sorted(names - set(blocks)), sorted(set(blocks) - names)
        raise ValueError(f"{DOCUMENT}: tables without a block {missing}, unknown blocks {unknown}")
    # Replace from the end so earlier offsets stay valid.
    for table in sorted(tables, key=lambda t: blocks[t.name][0], reverse=True):
        start, end = blocks[table.name]
        text = text[:start] + table.block() + text[end:]
    return text


def stale_tables(text: str, tables: Sequence[Table]) -> list[str]:
    """Names of the tables whose block in ``text`` differs from ``tables`` (or is missing)."""
    blocks = _blocks(text)
    return [
        table.name
        for table in tables
        if table.name not in blocks or text[slice(*blocks[table.name])] != table.block()
    ]


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m dicomnode.conformance [--write FILE | --check FILE]``.

    Parameters
    ----------
    argv
        The arguments (``sys.argv[1:]`` when None).

    Returns
    -------
    int
        0; 1 when ``--check`` finds a stale table.
    """
    parser = argparse.ArgumentParser(
        prog="python -m dicomnode.conformance",
        description="Print the conformance statement's tables, generated from the code.",
    )
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--write", type=Path, metavar="FILE", help="rewrite the tables in FILE")
    group.add_argument("--check", type=Path, metavar="FILE", help="exit 1 if FILE is stale")
    args = parser.parse_args(argv)
    tables = generate_tables()
    if args.write:
        args.write.write_text(update_document(args.write.read_text("utf-8"), tables), "utf-8")
    elif args.check:
        stale = stale_tables(args.check.read_text("utf-8"), tables)
        if stale:
            print(f"stale tables {stale} in {args.check}; run: {_COMMAND}", file=sys.stderr)
            return 1
    else:
        print("\n\n".join(table.block() for table in tables))
    return 0


if __name__ == "__main__":
    sys.exit(main())
