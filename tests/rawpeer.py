"""A DICOM peer made of raw bytes on a socket: for tests that misbehave on purpose.

pynetdicom's SCU always sends well-formed PDUs; to send half a PDU, a length that
lies, or a transfer cut off mid-dataset, tests write the bytes themselves (PS3.8
9.3) with the helpers here.
"""

from __future__ import annotations

import socket
import struct
import time

from pydicom.dataset import Dataset
from pynetdicom.dsutils import encode
from pynetdicom.pdu import A_ASSOCIATE_RQ
from pynetdicom.pdu_primitives import A_ASSOCIATE, MaximumLengthNotification
from pynetdicom.presentation import build_context
from pynetdicom.transport import AddressInformation

__all__ = [
    "IMPLICIT_LE",
    "associate",
    "associate_rq",
    "connect",
    "p_data",
    "read_pdu",
    "store_command",
    "wait_closed",
]

IMPLICIT_LE = "1.2.840.10008.1.2"
VERIFICATION = "1.2.840.10008.1.1"
CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"


def associate_rq(
    called_ae: str = "DICOMNODE",
    calling_ae: str = "RAWPEER",
    abstract_syntaxes: tuple[str, ...] = (VERIFICATION, CT_IMAGE_STORAGE),
) -> bytes:
    """An encoded A-ASSOCIATE-RQ proposing ``abstract_syntaxes`` in implicit VR LE."""
    primitive = A_ASSOCIATE()
    primitive.application_context_name = "1.2.840.10008.3.1.1.1"
    primitive.calling_ae_title = calling_ae
    primitive.called_ae_title = called_ae
    primitive.calling_presentation_address = AddressInformation("127.0.0.1", 0)
    primitive.called_presentation_address = AddressInformation("127.0.0.1", 0)
    contexts = []
    for number, uid in enumerate(abstract_syntaxes):
        context = build_context(uid, [IMPLICIT_LE])
        context.context_id = 2 * number + 1
        contexts.append(context)
    primitive.presentation_context_definition_list = contexts
    length = MaximumLengthNotification()
    length.maximum_length_received = 16382
    primitive.user_information = [length]
    pdu = A_ASSOCIATE_RQ()
    pdu.from_primitive(primitive)
    return bytes(pdu.encode())


def connect(port: int, source: str = "127.0.0.1", timeout: float = 10) -> socket.socket:
    """A TCP connection to the node on 127.0.0.1, from ``source`` (any 127.x address)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout)
        sock.bind((source, 0))
        sock.connect(("127.0.0.1", port))
    except BaseException:
        # A refused or reset connection (the per-host cap at work) must not leave
        # its socket to the garbage collector: the ResourceWarning would fail
        # whichever test happens to run next.
        sock.close()
        raise
    return sock


def read_pdu(sock: socket.socket) -> tuple[int, bytes]:
    """One PDU from ``sock``: (type, body); (0, b"") if the connection closed first."""
    header = _read(sock, 6)
    if len(header) < 6:
        return 0, b""
    pdu_type, _, length = struct.unpack(">BBL", header)
    return pdu_type, _read(sock, length)


def _read(sock: socket.socket, count: int) -> bytes:
    data = b""
    while len(data) < count:
        try:
            chunk = sock.recv(count - len(data))
        except ConnectionResetError:
            return data
        if not chunk:
            break
        data += chunk
    return data


def associate(port: int, called_ae: str = "DICOMNODE", source: str = "127.0.0.1") -> socket.socket:
    """A connection with an accepted association (context 1: Verification, 3: CT)."""
    sock = connect(port, source)
    try:
        sock.sendall(associate_rq(called_ae))
        pdu_type, body = read_pdu(sock)
        assert pdu_type == 0x02, (
            f"association not accepted (PDU type 0x{pdu_type:02X}, {body.hex()})"
        )
    except BaseException:
        sock.close()
        raise
    return sock


def p_data(context_id: int, control: int, value: bytes) -> bytes:
    """A P-DATA-TF PDU with one PDV item (control: bit 0 command, bit 1 last fragment)."""
    item = struct.pack(">LBB", len(value) + 2, context_id, control) + value
    return struct.pack(">BBL", 0x04, 0, len(item)) + item


def store_command(sop_instance_uid: str, message_id: int = 1) -> bytes:
    """An encoded C-STORE-RQ command set for a CT image (implicit VR LE, PS3.7 9.3.1)."""
    command = Dataset()
    command.AffectedSOPClassUID = CT_IMAGE_STORAGE
    command.CommandField = 0x0001
    command.MessageID = message_id
    command.Priority = 0
    command.CommandDataSetType = 0x0000
    command.AffectedSOPInstanceUID = sop_instance_uid
    body = encode(command, True, True)
    assert body is not None
    command.CommandGroupLength = len(body)
    encoded = encode(command, True, True)
    assert encoded is not None
    return bytes(encoded)


def wait_closed(sock: socket.socket, timeout: float) -> tuple[float, bytes]:
    """Read until the node closes ``sock``: (seconds it took, every byte received)."""
    started = time.monotonic()
    sock.settimeout(timeout)
    received = b""
    try:
        while chunk := sock.recv(65536):
            received += chunk
    except ConnectionResetError:
        pass
    return time.monotonic() - started, received
