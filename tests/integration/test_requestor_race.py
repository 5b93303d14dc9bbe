"""A pynetdicom requestor's reactor thread must not take the sender's responses.

pynetdicom 3.0.4's requestor reactor takes DIMSE messages off the association's queue
whenever its pause (``send_c_store``'s checkpoint) races open; the sender then waits
its DIMSE timeout for a response the peer sent at once (``dicomnode/send/_requestor.py``).
These tests hold that window open on purpose: the request is sent without pausing the
reactor, as happens when the reactor thread is descheduled at the wrong moment.
"""

from __future__ import annotations

from io import BytesIO
from pathlib import Path

from pydicom.uid import ImplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.association import Association
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.dsutils import encode
from pynetdicom.sop_class import CTImageStorage  # type: ignore[attr-defined]

from dicomnode.send._requestor import guard_responses
from tests.factories import small_ct
from tests.nodeproc import NodeProcess

REQUESTS = 20


def _store_without_pausing_the_reactor(assoc: Association, message_id: int) -> object:
    """Send one C-STORE-RQ and wait for its response, leaving the reactor running."""
    ds = small_ct()
    request = C_STORE()
    request.MessageID = message_id
    request.AffectedSOPClassUID = ds.SOPClassUID
    request.AffectedSOPInstanceUID = ds.SOPInstanceUID
    request.Priority = 2
    request.DataSet = BytesIO(encode(ds, True, True))
    context = assoc._get_valid_context(CTImageStorage, ImplicitVRLittleEndian, "scu")
    assoc.dimse.send_msg(request, context.context_id)
    _, response = assoc.dimse.get_msg(block=True)
    return response


def _answered(port: int, guarded: bool) -> int:
    ae = AE(ae_title="RACESCU")
    ae.add_requested_context(CTImageStorage, ImplicitVRLittleEndian)
    ae.dimse_timeout = 2  # a stolen response never comes: do not wait 30 s for it
    assoc = ae.associate("127.0.0.1", port, ae_title="DICOMNODE")
    assert assoc.is_established
    if guarded:
        guard_responses(assoc)
    answered = 0
    for message_id in range(1, REQUESTS + 1):
        response = _store_without_pausing_the_reactor(assoc, message_id)
        if response is not None:
            assert response.MessageIDBeingRespondedTo == message_id
            answered += 1
    assoc.abort()
    return answered


def test_guarded_requestor_keeps_every_response_for_the_sender(tmp_path: Path) -> None:
    with NodeProcess(tmp_path, receive_processes=1) as node:
        assert _answered(node.port, guarded=True) == REQUESTS
        # The same exchange on a stock requestor: its reactor, polling every
        # millisecond, takes responses meant for the sender.
        assert _answered(node.port, guarded=False) < REQUESTS


def test_guarded_reactor_takes_requests_and_leaves_responses() -> None:
    assoc = Association(AE(ae_title="UNIT"), mode="requestor")
    guard_responses(assoc)
    response, request = C_STORE(), C_STORE()
    response.MessageIDBeingRespondedTo = 7
    request.MessageID = 8
    assoc.dimse.msg_queue.put((1, response))
    assoc.dimse.msg_queue.put((1, request))
    assert assoc.dimse.get_msg(block=False) == (None, None)  # the head is a response
    assert assoc.dimse.get_msg(block=True) == (1, response)  # the sender's own call
    assert assoc.dimse.get_msg(block=False) == (1, request)  # requests are served
    assert assoc.dimse.get_msg(block=False) == (None, None)  # and an empty queue is fine
