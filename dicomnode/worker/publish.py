"""Turn a model result into DICOM outputs, check each one, keep it and queue its deliveries.

For every view with masks: a DICOM SEG; for the study: one TID 1500 SR referencing the
SEGs that passed the gate and naming at most the pipeline's ``max_findings`` findings
(option, default :data:`~dicomnode.outputs.sr.MAX_FINDINGS`); and Secondary Capture
overlays when a destination peer accepts ``sc``. Each output is written durably under
the job's folder (:func:`~dicomnode.index.durable.atomic_write`: temporary name, fsync,
rename, fsync of the folder), checked by the validation gate
(:mod:`dicomnode.outputs.validate`: dciodvfy, dsrdump for SR, highdicom read-back) and
recorded in the index. A valid output is queued for every peer of the pipeline that
accepts its kind; an invalid one is kept and flagged with the validator's message, and
never sent.

UIDs derive from the job's key (study, pipeline, study version), so another attempt
of the same job rewrites the same outputs: the index row is replaced and its
deliveries queued again, never duplicated.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path

import highdicom as hd
import numpy as np
import numpy.typing as npt
from pydicom import dcmread
from pydicom.dataset import Dataset
from sqlalchemy.orm import Session, sessionmaker

from dicomnode.config import PeerSettings, PipelineSettings, Settings
from dicomnode.index.deliveries import queue_output_deliveries, record_output
from dicomnode.index.durable import atomic_write
from dicomnode.index.jobs import ClaimedJob
from dicomnode.index.layout import DataLayout
from dicomnode.models.api import Model, ModelResult, StudyViews
from dicomnode.outputs.identity import SERIES_NUMBERS
from dicomnode.outputs.sc import build_overlay_capture
from dicomnode.outputs.seg import build_segmentation, segment_number_map
from dicomnode.outputs.sr import MAX_FINDINGS, build_measurement_report
from dicomnode.outputs.validate import ValidationReport, validate_output
from dicomnode.worker.views import Candidate

__all__ = ["PublishedOutput", "publish_result"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class PublishedOutput:
    """One output as the job result records it."""

    kind: str
    sop_instance_uid: str
    path: str
    valid: bool
    errors: tuple[str, ...]
    queued: int

    def to_json(self) -> dict[str, object]:
        """JSON values for the job row."""
        return {
            "kind": self.kind,
            "sop_instance_uid": self.sop_instance_uid,
            "path": self.path,
            "valid": self.valid,
            "errors": list(self.errors),
            "queued": self.queued,
        }


@dataclass(frozen=True, slots=True)
class _Context:
    settings: Settings
    session_factory: sessionmaker[Session]
    job: ClaimedJob
    model: Model
    peers: tuple[PeerSettings, ...]
    #: Seconds spent per stage: "validate" (the gate) and "record" (files and index).
    timings: dict[str, float]

    def spent(self, stage: str, since: float) -> None:
        self.timings[stage] = self.timings.get(stage, 0.0) + time.perf_counter() - since


def _write(ds: Dataset, path: Path, layout: DataLayout) -> bytes:
    """Write ``ds`` durably at ``path`` and return the bytes written."""
    # Encoded in memory first: the bytes are hashed and counted for the index row
    # without reading the file back.
    buffer = BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    data = buffer.getvalue()
    atomic_write(path, data, layout.root)
    return data


def _keep(
    context: _Context,
    kind: str,
    ds: Dataset,
    masks: npt.NDArray[np.bool_] | None = None,
    volume: object = None,
) -> tuple[PublishedOutput, ValidationReport]:
    """Write, validate, record and (if valid) queue one output."""
    started = time.perf_counter()
    layout = DataLayout(context.settings.data_dir)
    path = layout.output_path(context.job.id, kind, str(ds.SOPInstanceUID))
    data = _write(ds, path, layout)
    context.spent("record", started)
    started = time.perf_counter()
    report = validate_output(ds, path, masks=masks, volume=volume)  # type: ignore[arg-type]
    context.spent("validate", started)
    started = time.perf_counter()
    relative = layout.relative(path)
    with context.session_factory() as session:
        output_id = record_output(
            session, context.job.id, kind,
            sop_class_uid=str(ds.SOPClassUID), sop_instance_uid=str(ds.SOPInstanceUID),
            series_instance_uid=str(ds.SeriesInstanceUID), path=relative,
            size_bytes=len(data), sha256=hashlib.sha256(data).hexdigest(),
            valid=report.ok, validation="; ".join(report.errors)[:4000] or None,
        )  # fmt: skip
        queued = queue_output_deliveries(session, output_id, context.peers) if report.ok else 0
        session.commit()
    context.spent("record", started)
    extra = {"job_id": context.job.id, "kind": kind, "sop_instance_uid": str(ds.SOPInstanceUID)}
    if report.ok:
        logger.info("output kept", extra={"action": "output_kept", "queued": queued, **extra})
    else:
        logger.warning(
            "output invalid, not sent",
            extra={"action": "output_invalid", "error": report.errors[:3], **extra},
        )
    output = PublishedOutput(
        kind, str(ds.SOPInstanceUID), relative, report.ok, tuple(report.errors), queued
    )
    return output, report


def _sources(settings: Settings, candidates: Mapping[str, Candidate]) -> dict[str, list[Dataset]]:
    """Headers of every view's source images (pixels are in the volumes already)."""
    layout = DataLayout(settings.data_dir)
    return {
        name: [dcmread(layout.path(p), stop_before_pixels=True) for p in c.paths]
        for name, c in candidates.items()
    }


def _segmentations(
    context: _Context,
    study: StudyViews,
    sources: Mapping[str, Sequence[Dataset]],
    result: ModelResult,
    published: list[PublishedOutput],
) -> tuple[dict[str, hd.seg.Segmentation], dict[str, dict[int, int]]]:
    """One SEG per view with masks; return those that passed the gate."""
    segs: dict[str, hd.seg.Segmentation] = {}
    numbers: dict[str, dict[int, int]] = {}
    model = context.model
    # The n-th view's series is numbered first + n (SERIES_NUMBERS): a 4-view study's
    # SEG series are 9101-9104, not four series that all say 9101.
    for number, (view, masks) in enumerate(result.masks.items(), start=1):
        volume = study.views[view].volume
        seg = build_segmentation(
            sources[view], volume, masks, model.labels,
            model_name=model.name, model_version=model.version, job_key=context.job.key,
            series_number=SERIES_NUMBERS["seg"] + number,
        )  # fmt: skip
        if seg is None:
            continue  # nothing found on this view
        output, report = _keep(context, "seg", seg, masks, volume)
        published.append(output)
        if report.ok:
            segs[view] = seg
            numbers[view] = segment_number_map(masks, model.labels)
    return segs, numbers


def _captures(
    context: _Context,
    study: StudyViews,
    sources: Mapping[str, Sequence[Dataset]],
    result: ModelResult,
    published: list[PublishedOutput],
) -> None:
    model = context.model
    for number, (view, masks) in enumerate(result.masks.items(), start=1):
        for ds in build_overlay_capture(
            sources[view], study.views[view].volume, masks, model.labels,
            model_name=model.name, model_version=model.version, job_key=context.job.key,
            series_number=SERIES_NUMBERS["sc"] + number,
        ):  # fmt: skip
            published.append(_keep(context, "sc", ds)[0])


def _max_findings(pipeline: PipelineSettings | None) -> int:
    """The pipeline's ``max_findings`` option (``config`` checked it at start), or the default."""
    value = pipeline.options.get("max_findings", MAX_FINDINGS) if pipeline else MAX_FINDINGS
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"pipeline option max_findings must be a whole number, got {value!r}")
    return value


def publish_result(
    settings: Settings,
    session_factory: sessionmaker[Session],
    job: ClaimedJob,
    model: Model,
    study: StudyViews,
    candidates: Mapping[str, Candidate],
    result: ModelResult,
    timings: dict[str, float] | None = None,
) -> list[PublishedOutput]:
    """Build, check, keep and queue the outputs of one job; return what was kept.

    Models without labels or classes (the test models) have nothing to encode.
    ``timings`` receives the seconds spent building (``outputs_build``), validating
    (``outputs_validate``) and writing + recording (``outputs_record``).
    """
    if not model.labels and not model.classes:
        return []
    started = time.perf_counter()
    spent: dict[str, float] = {}
    pipeline = next((p for p in settings.pipelines if p.name == job.pipeline), None)
    send_to = set(pipeline.send_to) if pipeline is not None else set()
    peers = tuple(p for p in settings.peers if p.name in send_to)
    context = _Context(settings, session_factory, job, model, peers, spent)
    sources = _sources(settings, candidates)
    published: list[PublishedOutput] = []
    segs, numbers = _segmentations(context, study, sources, result, published)
    report = build_measurement_report(
        sources, result, model, volumes={n: v.volume for n, v in study.views.items()},
        job_key=job.key, segmentations=segs, segment_numbers=numbers,
        max_findings=_max_findings(pipeline),
    )  # fmt: skip
    published.append(_keep(context, "sr", report)[0])
    if result.masks and any("sc" in p.accepts for p in peers):
        _captures(context, study, sources, result, published)
    if timings is not None:
        total = time.perf_counter() - started
        timings["outputs_validate"] = round(spent.get("validate", 0.0), 3)
        timings["outputs_record"] = round(spent.get("record", 0.0), 3)
        timings["outputs_build"] = round(total - sum(spent.values()), 3)
    return published
