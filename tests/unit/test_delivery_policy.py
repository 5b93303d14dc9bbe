"""How C-STORE statuses are classified, and which encodings a peer accepts."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from dicomnode.config import PeerSettings, SendSettings
from dicomnode.index.leases import backoff_seconds
from dicomnode.send.scu import StoreOutcome, classify_status


@pytest.mark.parametrize(
    ("status", "outcome"),
    [
        (0x0000, StoreOutcome.SENT),
        (0xB000, StoreOutcome.WARNING),  # coercion of data elements
        (0xB007, StoreOutcome.WARNING),  # data set does not match SOP class
        (0x0001, StoreOutcome.WARNING),
        (0xA700, StoreOutcome.RETRY),  # out of resources
        (0xA7FF, StoreOutcome.RETRY),
        (0xA900, StoreOutcome.FAILED),  # data set does not match SOP class
        (0xC000, StoreOutcome.FAILED),  # cannot understand
        (0xC211, StoreOutcome.FAILED),
        (0x0122, StoreOutcome.FAILED),  # SOP class not supported
        (0x0124, StoreOutcome.FAILED),  # not authorised
    ],
)
def test_statuses_are_classified_by_their_category(status: int, outcome: StoreOutcome) -> None:
    assert classify_status(status) is outcome


def test_peer_takes_seg_and_sr_unless_told_otherwise() -> None:
    peer = PeerSettings(name="p", ae_title="P", host="127.0.0.1", port=104)
    assert peer.accepts == ("seg", "sr")
    viewer = PeerSettings.model_validate(
        {"name": "v", "ae_title": "V", "host": "127.0.0.1", "port": 104, "accepts": ["sc"]}
    )
    assert viewer.accepts == ("sc",)


def test_unknown_encoding_in_accepts_is_refused() -> None:
    with pytest.raises(ValidationError, match="accepts"):
        PeerSettings.model_validate(
            {"name": "v", "ae_title": "V", "host": "h", "port": 104, "accepts": ["png"]}
        )


def test_retry_backoff_is_capped() -> None:
    send = SendSettings()
    waits = [
        backoff_seconds(n, send.retry_backoff_seconds, send.max_backoff_seconds)
        for n in range(1, 40)
    ]
    assert waits[0] <= send.retry_backoff_seconds
    assert max(waits) <= send.max_backoff_seconds
    assert min(waits[-5:]) >= send.max_backoff_seconds / 2
