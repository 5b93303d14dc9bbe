"""A worker: claim a job, run its pipeline (load → views → model → outputs), record it.

Models are built once per process and stay loaded between jobs. A heartbeat thread
extends the lease while a job runs; if the job outlives ``worker.job_timeout_seconds``
the heartbeat thread records the timeout and ends the process (the supervisor starts a
fresh one), since a Python thread stuck in a model cannot be interrupted. On SIGTERM
the worker stops claiming, lets the running job finish for a grace period, then
releases it for another worker.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time

from sqlalchemy.orm import Session, sessionmaker

from dicomnode.config import PipelineSettings, Settings
from dicomnode.errors import VolumeError
from dicomnode.index.instances import study_images
from dicomnode.index.jobs import ClaimedJob, claim_job, fail_job, finish_job, heartbeat, release_job
from dicomnode.index.layout import DataLayout
from dicomnode.index.schema import JobState, utc_now
from dicomnode.log import describe_error
from dicomnode.metrics import JOB_STAGE_SECONDS, JOBS_FINISHED
from dicomnode.models.api import Model, NotApplicable, StudyViews, View
from dicomnode.models.device import resolve_device
from dicomnode.models.registry import available_models, load_model
from dicomnode.volumes import load_volume
from dicomnode.worker import SHUTDOWN_GRACE_S
from dicomnode.worker.publish import publish_result
from dicomnode.worker.results import save_masks
from dicomnode.worker.views import Candidate, find_candidates, group_views

__all__ = ["Worker", "job_error"]

logger = logging.getLogger(__name__)


class Worker:
    """One worker process's loop over the job queue."""

    def __init__(self, settings: Settings, session_factory: sessionmaker[Session]) -> None:
        self.settings = settings
        self.session_factory = session_factory
        self.owner = f"{socket.gethostname()}:{os.getpid()}"
        self.pipelines = {p.name: p for p in settings.pipelines}
        self.models: dict[str, Model] = {}
        #: Only jobs for models installed here are claimed (GPU hosts may run more).
        self.model_names = available_models(settings.model_dirs)
        self.stop = threading.Event()
        self.jobs_run = 0
        self.device = "cpu"
        #: The stage the running job is in, named in its error text if it fails.
        self.stage = "start"

    def run(self, max_jobs: int | None = None) -> None:
        """Claim and run jobs until stopped (or ``max_jobs`` have run)."""
        self.device = resolve_device(self.settings.worker.device)
        logger.info(
            "worker loaded",
            extra={"action": "worker_loaded", "owner": self.owner, "device": self.device},
        )
        while not self.stop.is_set():
            with self.session_factory() as session:
                job = claim_job(
                    session, self.owner, self.settings.worker.lease_seconds, self.model_names
                )
            if job is None:
                self.stop.wait(self.settings.worker.poll_seconds)
                continue
            self.run_job(job)
            self.jobs_run += 1
            if max_jobs is not None and self.jobs_run >= max_jobs:
                break
        logger.info("worker stopped", extra={"action": "worker_stopped", "owner": self.owner})

    def run_job(self, job: ClaimedJob) -> None:
        """Run one claimed job under a heartbeat, and record how it ended."""
        done = threading.Event()
        guard = threading.Thread(target=self._guard, args=(job, done), daemon=True)
        guard.start()
        try:
            self._execute(job)
        finally:
            done.set()
            guard.join()

    def _execute(self, job: ClaimedJob) -> None:
        timings = {"queue": round((utc_now() - job.created_at).total_seconds(), 3)}
        extra = {
            "job_id": job.id,
            "pipeline": job.pipeline,
            "study_instance_uid": job.study_instance_uid,
        }
        logger.info(
            "job started", extra={"action": "job_started", "attempt": job.attempts, **extra}
        )
        self.stage = "start"
        try:
            result = self._pipeline(job, timings)
        except NotApplicable as exc:
            with self.session_factory() as session:
                kept = finish_job(
                    session,
                    job.id,
                    self.owner,
                    JobState.NOT_APPLICABLE,
                    {"reason": str(exc)},
                    timings,
                )
            _measure(job.pipeline, JobState.NOT_APPLICABLE if kept else None, timings)
            logger.info(
                "job not applicable",
                extra={"action": "job_not_applicable", "reason": str(exc), **extra},
            )
            return
        except Exception as exc:
            error = job_error(exc, self.stage)
            with self.session_factory() as session:
                state = fail_job(
                    session,
                    job.id,
                    self.owner,
                    error,
                    timings,
                    self.settings.worker.retry_backoff_seconds,
                )
            _measure(job.pipeline, state, timings)
            logger.warning(
                "job failed",
                extra={"action": "job_failed", "state": str(state), "error": error, **extra},
            )
            return
        with self.session_factory() as session:
            kept = finish_job(session, job.id, self.owner, JobState.DONE, result, timings)
        _measure(job.pipeline, JobState.DONE if kept else None, timings)
        logger.info(
            "job done",
            extra={"action": "job_done", "seconds": round(sum(timings.values()), 3), **extra},
        )

    def _pipeline(self, job: ClaimedJob, timings: dict[str, float]) -> dict[str, object]:
        """Load the study's views, run the model, keep its masks; return the job result."""
        pipeline = self._pipeline_settings(job)
        self.stage = "model_load"
        started = time.perf_counter()
        model = self._model(job.model)
        timings["model_load"] = round(time.perf_counter() - started, 3)
        self.stage = "load"
        started = time.perf_counter()
        with self.session_factory() as session:
            images = study_images(session, job.study_id)
        groups = group_views(model.views, find_candidates(images))
        study = StudyViews(
            study_instance_uid=job.study_instance_uid,
            views={name: self._view(name, c) for name, c in groups.chosen.items()},
            missing=groups.missing,
            options=dict(pipeline.options) if pipeline is not None else {},
        )
        timings["load"] = round(time.perf_counter() - started, 3)
        self.stage = "model"
        started = time.perf_counter()
        result = model.predict(study)
        timings["model"] = round(time.perf_counter() - started, 3)
        self.stage = "outputs"
        views = {
            name: {
                "series_instance_uid": c.series_instance_uid,
                "frames": c.frames,
                "candidates": groups.matches[name],
            }
            for name, c in groups.chosen.items()
        }
        out: dict[str, object] = {
            "model": model.name,
            "model_version": model.version,
            "views": views,
            "missing_views": list(groups.missing),
            **result.to_json(),
        }
        if result.masks:
            out["masks_file"] = save_masks(self.settings.data_dir, job.id, result.masks)
        published = publish_result(
            self.settings, self.session_factory, job, model, study, groups.chosen, result, timings
        )
        out["outputs"] = [p.to_json() for p in published]
        return out

    def _view(self, name: str, candidate: Candidate) -> View:
        """Build one view's volume; a series that cannot be one volume is not applicable."""
        layout = DataLayout(self.settings.data_dir)
        paths = [layout.path(p) for p in candidate.paths]
        try:
            volume = load_volume(paths)
        except VolumeError as exc:
            # Our words only: the error may quote a pydicom message (element values).
            raise NotApplicable(f"view {name!r}: {describe_error(exc)}") from exc
        return View(
            name=name,
            volume=volume,
            modality=candidate.modality,
            laterality=candidate.laterality,
            view_position=candidate.view_position,
            series_description=candidate.series_description,
        )

    def _pipeline_settings(self, job: ClaimedJob) -> PipelineSettings | None:
        return self.pipelines.get(job.pipeline)

    def _model(self, name: str) -> Model:
        if name not in self.models:
            self.models[name] = load_model(name, self.device, self.settings.model_dirs)
        return self.models[name]

    def _guard(self, job: ClaimedJob, done: threading.Event) -> None:
        """Heartbeat; enforce the job timeout; release the job on shutdown."""
        lease = self.settings.worker.lease_seconds
        started = time.monotonic()
        stop_seen: float | None = None
        while not done.wait(min(lease / 3, 1.0)):
            elapsed = time.monotonic() - started
            with self.session_factory() as session:
                if elapsed > self.settings.worker.job_timeout_seconds:
                    limit = self.settings.worker.job_timeout_seconds
                    state = fail_job(session, job.id, self.owner, f"timed out after {limit:g} s",
                                     None, self.settings.worker.retry_backoff_seconds)  # fmt: skip
                    _measure(job.pipeline, state, {})
                    logger.error(
                        "job timed out", extra={"action": "job_timed_out", "job_id": job.id}
                    )
                    os._exit(3)  # the stuck thread cannot be stopped; the supervisor restarts us
                if self.stop.is_set():
                    stop_seen = stop_seen or time.monotonic()
                    if time.monotonic() - stop_seen > SHUTDOWN_GRACE_S:
                        release_job(session, job.id, self.owner)
                        logger.warning(
                            "job released", extra={"action": "job_released", "job_id": job.id}
                        )
                        os._exit(0)
                if not heartbeat(session, job.id, self.owner, lease):
                    logger.warning("lease lost", extra={"action": "lease_lost", "job_id": job.id})


def _measure(pipeline: str, state: JobState | None, timings: dict[str, float]) -> None:
    """Count a job attempt that ended in ``state`` (None: not recorded, the lease was
    lost) and observe the seconds of each stage it ran."""
    if state is not None:
        JOBS_FINISHED.labels(pipeline, state.value).inc()
    for stage, seconds in timings.items():
        JOB_STAGE_SECONDS.labels(pipeline, stage).observe(seconds)


def job_error(exc: Exception, stage: str) -> str:
    """The error text a failed job records and logs, in our words.

    The stage, the exception's type and where it was raised, our own error's message
    and the series it names (:func:`~dicomnode.log.describe_error`); never a library's
    message, which can quote element values such as a patient's name (PITFALLS.md).
    """
    text = f"{stage}: {describe_error(exc)}"
    series = getattr(exc, "series_instance_uid", None)
    if series and str(series) not in text:
        text += f" (series {series})"
    return text
