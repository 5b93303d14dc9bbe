"""Series in the index: the rule attributes the scheduler plans from."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from dicomnode.index.schema import InstanceRecord, SeriesRecord

__all__ = ["SeriesAttributes", "series_rule_attributes"]


@dataclass(frozen=True, slots=True)
class SeriesAttributes:
    """What the index holds for evaluating rules on one series."""

    series_id: int
    series_instance_uid: str
    #: JSON object by DICOM keyword; None for a series not yet backfilled (0004).
    attributes: str | None
    #: The calling AE title that sent the representative instance.
    calling_ae: str | None


def series_rule_attributes(session: Session, study_id: int) -> list[SeriesAttributes]:
    """The recorded rule attributes of every series of a study, by series id.

    Reads only the index (two indexed look-ups per series): cheap enough to run inside
    the transaction that marks the study stable.
    """
    rows = session.execute(
        select(
            SeriesRecord.id,
            SeriesRecord.series_instance_uid,
            SeriesRecord.attributes,
            InstanceRecord.calling_ae,
        )
        .outerjoin(
            InstanceRecord,
            InstanceRecord.sop_instance_uid == SeriesRecord.attributes_sop_instance_uid,
        )
        .where(SeriesRecord.study_id == study_id)
        .order_by(SeriesRecord.id)
    )
    return [SeriesAttributes(*row) for row in rows]
