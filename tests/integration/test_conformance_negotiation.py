"""The running node negotiates exactly what docs/conformance.md claims.

The claims are read from the document's generated tables, not from the code, so this
fails when the document and ``dicomnode run`` disagree: every (SOP class, transfer
syntax) pair the SCP tables claim is proposed in a context of its own and must be
accepted with that syntax, and every SOP class and transfer syntax the document lists
as not accepted must be refused.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from pynetdicom import AE
from pynetdicom.association import Association
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from dicomnode.conformance import DOCUMENT
from tests.nodeproc import NodeProcess

ROOT = Path(__file__).resolve().parents[2]
#: PS3.8 9.3.2: at most 128 presentation contexts in one A-ASSOCIATE-RQ.
MAX_CONTEXTS = 128
# Presentation context results (PS3.8 Table 9-18).
ACCEPTED, ABSTRACT_SYNTAX_NOT_SUPPORTED, TRANSFER_SYNTAXES_NOT_SUPPORTED = 0, 3, 4
EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1"
CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"

Pair = tuple[str, str]  # abstract syntax, transfer syntax


def _rows(name: str, pattern: str) -> list[re.Match[str]]:
    """The rows of one generated table of the document that match ``pattern``."""
    text = (ROOT / DOCUMENT).read_text(encoding="utf-8")
    begin = re.search(rf"<!-- BEGIN GENERATED {name}\b[^>]*-->\n", text)
    end = text.find(f"<!-- END GENERATED {name} -->")
    assert begin is not None and end > begin.end(), f"{DOCUMENT} has no table {name}"
    rows = [re.fullmatch(pattern, line) for line in text[begin.end() : end].splitlines()[2:]]
    assert rows and all(rows), f"{DOCUMENT}: table {name} is not in the format this test reads"
    return [row for row in rows if row is not None]


def claimed_scp_pairs() -> list[Pair]:
    """Every (SOP class, transfer syntax) the document says the SCP accepts."""
    sets: dict[str, list[str]] = {}
    for row in _rows("scp-transfer-syntaxes", r"\| [^|]+ \| `([0-9.]+)` \| ([A-Z, ]+) \|"):
        for label in row[2].split(", "):
            sets.setdefault(label, []).append(row[1])
    classes = _rows("scp-sop-classes", r"\| [^|]+ \| `([0-9.]+)` \| SCP \| ([A-Z]) \|")
    return [(row[1], syntax) for row in classes for syntax in sets[row[2]]]


def claimed_refusals() -> tuple[list[str], list[str]]:
    """SOP classes and transfer syntaxes the document says the SCP does not accept."""
    rows = _rows(
        "scp-not-accepted", r"\| (SOP class|transfer syntax) \| [^|]+ \| `([0-9.]+)` \| \w+ \|"
    )
    return [r[2] for r in rows if r[1] == "SOP class"], [r[2] for r in rows if r[1] != "SOP class"]


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeProcess]:
    """The node as a user runs it (default receiving processes), without workers."""
    with NodeProcess(
        tmp_path_factory.mktemp("conformance"), extra_toml="[worker]\ncount = 0\n"
    ) as running:
        yield running


def _associate(node: NodeProcess, contexts: list[tuple[str, list[str]]]) -> Association:
    ae = AE(ae_title="CONFORMANCE")
    ae.acse_timeout = ae.network_timeout = 30
    for abstract_syntax, syntaxes in contexts:
        ae.add_requested_context(abstract_syntax, syntaxes)
    assoc = ae.associate("127.0.0.1", node.port, ae_title=node.ae_title)
    assert assoc.is_established, "association with the node failed"
    return assoc


def _negotiate(node: NodeProcess, pairs: list[Pair]) -> tuple[set[Pair], dict[Pair, int]]:
    """Propose each pair in its own context; the accepted pairs and the others' results."""
    assoc = _associate(node, [(abstract, [syntax]) for abstract, syntax in pairs])
    try:
        accepted = {
            (str(c.abstract_syntax), str(c.transfer_syntax[0])) for c in assoc.accepted_contexts
        }
        # A rejected context keeps the syntax proposed: each proposed one only.
        refused = {
            (str(c.abstract_syntax), str(c.transfer_syntax[0])): int(c.result or 0)
            for c in assoc.rejected_contexts
        }
    finally:
        assoc.release()
    return accepted, refused


def test_document_claims_a_plausible_number_of_contexts() -> None:
    pairs = claimed_scp_pairs()

    # Guards the parsing: Verification and the storage classes, each with many syntaxes.
    assert (Verification, EXPLICIT_VR_LITTLE_ENDIAN) in pairs
    assert (CT_IMAGE_STORAGE, EXPLICIT_VR_LITTLE_ENDIAN) in pairs
    assert len({abstract for abstract, _ in pairs}) > 100
    assert len(pairs) == len(set(pairs))


def test_node_accepts_every_claimed_context_with_the_claimed_transfer_syntax(
    node: NodeProcess,
) -> None:
    pairs = claimed_scp_pairs()
    missing: list[Pair] = []
    for start in range(0, len(pairs), MAX_CONTEXTS):
        batch = pairs[start : start + MAX_CONTEXTS]
        accepted, _ = _negotiate(node, batch)
        missing += [pair for pair in batch if pair not in accepted]

    assert not missing, f"{len(missing)} claimed contexts refused, first {missing[:5]}"


def test_node_refuses_what_the_document_says_it_does_not_accept(node: NodeProcess) -> None:
    classes, syntaxes = claimed_refusals()
    pairs = [(uid, EXPLICIT_VR_LITTLE_ENDIAN) for uid in classes]
    pairs += [(CT_IMAGE_STORAGE, uid) for uid in syntaxes]
    assert classes and syntaxes
    # Verification keeps the association up when everything else is refused.
    pairs.append((Verification, EXPLICIT_VR_LITTLE_ENDIAN))
    assert len(pairs) <= MAX_CONTEXTS

    accepted, refused = _negotiate(node, pairs)

    assert accepted == {(Verification, EXPLICIT_VR_LITTLE_ENDIAN)}
    assert {refused[(uid, EXPLICIT_VR_LITTLE_ENDIAN)] for uid in classes} == {
        ABSTRACT_SYNTAX_NOT_SUPPORTED
    }
    assert {refused[(CT_IMAGE_STORAGE, uid)] for uid in syntaxes} == {
        TRANSFER_SYNTAXES_NOT_SUPPORTED
    }


def test_node_picks_the_transfer_syntax_in_its_own_order_of_preference(
    node: NodeProcess,
) -> None:
    ct_syntaxes = [
        syntax for abstract, syntax in claimed_scp_pairs() if abstract == CT_IMAGE_STORAGE
    ]

    # Proposed in the reverse of the document's order, all in one context.
    assoc = _associate(node, [(CT_IMAGE_STORAGE, ct_syntaxes[::-1])])
    try:
        [context] = assoc.accepted_contexts
    finally:
        assoc.release()

    assert context.transfer_syntax[0] == ct_syntaxes[0]


def test_association_to_another_called_ae_title_is_rejected_as_documented(
    node: NodeProcess,
) -> None:
    ae = AE(ae_title="CONFORMANCE")
    ae.add_requested_context(Verification)

    assoc = ae.associate("127.0.0.1", node.port, ae_title="NOT-THE-NODE")

    assert assoc.is_rejected
    rejection = assoc.acceptor.primitive
    # Section 4.2.1.4: rejected-permanent, service-user, called AE title not recognized.
    assert (rejection.result, rejection.result_source, rejection.diagnostic) == (1, 1, 7)
