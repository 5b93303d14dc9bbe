"""Rules as the scheduler evaluates them: on what the index recorded for each series.

The language itself (keys, lists, ``re:``, comparisons, multi-valued attributes) is
:mod:`dicomnode.rules`, shared with the settings and the models; this module only
says which attributes a rule sees.

Rules are evaluated on the attributes the index recorded for each series at ingest
(:mod:`dicomnode.index.attributes`: the top-level attributes of the series'
representative instance), never on files, plus the derived keys: ``CallingAETitle``
(the AE that sent the series) and ``ImagePlane`` (from ImageOrientationPatient).
"""

from __future__ import annotations

import json

from dicomnode.index.attributes import image_plane

__all__ = ["rule_attributes"]


def rule_attributes(recorded: str | None, calling_ae: str | None = None) -> dict[str, object]:
    """The attributes a rule is evaluated on: the recorded ones plus the derived keys.

    Parameters
    ----------
    recorded
        A series' rule attributes as the index stores them (JSON text, see
        :mod:`dicomnode.index.attributes`); None: nothing recorded.
    calling_ae
        The AE title that sent the series (``CallingAETitle``).
    """
    attributes: dict[str, object] = json.loads(recorded) if recorded else {}
    attributes["CallingAETitle"] = calling_ae
    attributes["ImagePlane"] = image_plane(attributes.get("ImageOrientationPatient"))
    return attributes
