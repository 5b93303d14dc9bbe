"""The ``dicomnode`` command line; the one place that wires the stages together."""

from __future__ import annotations

import ctypes
import logging
import os
import re
import signal
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from dicomnode import __version__
from dicomnode.config import PeerSettings, Settings, load_settings
from dicomnode.errors import ConfigError, DicomnodeError
from dicomnode.log import configure_logging

if TYPE_CHECKING:
    from dicomnode.worker.supervisor import Lifeline

__all__ = ["main"]

logger = logging.getLogger(__name__)

_PEER = re.compile(r"^(?P<ae>[^@]{1,16})@(?P<host>[^:]+):(?P<port>\d{1,5})$")


def _settings(ctx: click.Context) -> Settings:
    obj: dict[str, Any] = ctx.ensure_object(dict)
    if "settings" not in obj:
        try:
            obj["settings"] = load_settings(obj.get("config"))
        except ConfigError as exc:
            raise click.ClickException(f"bad configuration: {exc}") from exc
    settings: Settings = obj["settings"]
    return settings


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="dicomnode")
@click.option(
    "--config", "-c", type=click.Path(path_type=Path, dir_okay=False),
    help="Settings file (default: $DICOMNODE_CONFIG, else ./settings.toml, else built-in).",
)  # fmt: skip
@click.option("--log-level", default="INFO", show_default=True, help="DEBUG, INFO, WARNING, ERROR.")
@click.option("--log-json", is_flag=True, help="Write log records as JSON lines.")
@click.pass_context
def cli(ctx: click.Context, config: Path | None, log_level: str, log_json: bool) -> None:
    """dicomnode: a DICOM node that receives, indexes, runs models and sends results."""
    ctx.ensure_object(dict)
    ctx.obj["config"] = config
    ctx.obj["log"] = (log_level, "json" if log_json else "text")


def _logging(ctx: click.Context, settings: Settings | None = None, to_file: bool = False) -> None:
    level, style = ctx.obj["log"]
    log_dir = settings.data_dir / "logs" if settings is not None and to_file else None
    configure_logging(level, log_dir, style)


# -- run ------------------------------------------------------------------------------


@cli.command()
@click.pass_context
def run(ctx: click.Context) -> None:
    """Run everything on this machine: SCP, scheduler and supervised workers."""
    settings = _settings(ctx)
    _logging(ctx, settings, to_file=True)
    _serve(settings, ctx, with_workers=True)


@cli.command()
@click.pass_context
def serve(ctx: click.Context) -> None:
    """Run the SCP and the scheduler only; workers run elsewhere (`dicomnode worker`)."""
    settings = _settings(ctx)
    _logging(ctx, settings, to_file=True)
    _serve(settings, ctx, with_workers=False)


def _check_models(settings: Settings) -> None:
    from dicomnode.models.registry import available_models

    installed = available_models(settings.model_dirs)
    for pipeline in settings.pipelines:
        if pipeline.model not in installed:
            raise click.ClickException(
                f"bad configuration: pipeline {pipeline.name!r} names unknown model "
                f"{pipeline.model!r} (installed: {', '.join(installed)})"
            )


def _stop_event() -> threading.Event:
    """An event set by SIGTERM or SIGINT."""
    stop = threading.Event()

    def _set(name: str) -> None:
        logger.info("stopping", extra={"action": "node_stopping", "signal": name})
        stop.set()

    def _on_signal(signum: int, _frame: object) -> None:
        # The handler runs between two bytecodes of the main thread, which may be inside
        # stop.set() or a logging call holding their (non-reentrant) locks already, as
        # when a second SIGTERM arrives during the first: setting the event here would
        # deadlock. A thread takes the locks once the main thread lets go of them.
        name = signal.Signals(signum).name
        threading.Thread(target=_set, args=(name,), name="stop-signal", daemon=True).start()

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    return stop


def _receiving(settings: Settings) -> tuple[Any, Any, Any, Any]:
    """Start one receiving process's part: index writer and SCP."""
    from dicomnode.index.db import make_engine, make_session_factory
    from dicomnode.receive.ingest import Ingest
    from dicomnode.receive.scp import start_scp

    engine = make_engine(settings.database_url)
    session_factory = make_session_factory(engine)
    node = settings.node
    ingest = Ingest(
        settings.data_dir, engine, max_instance_bytes=node.max_instance_bytes,
        max_inflated_bytes=node.max_inflated_bytes, max_elements=node.max_elements,
    )  # fmt: skip
    ingest.start()
    try:
        server = start_scp(settings, ingest, session_factory)
    except DicomnodeError as exc:  # e.g. a TLS file that cannot be loaded
        raise click.ClickException(str(exc)) from exc
    return engine, session_factory, ingest, server


def _stop_receiving(engine: Any, ingest: Any, server: Any, grace: float = 30.0) -> None:
    # Stop accepting, let running associations finish (bounded), then drain the writer.
    server.shutdown()
    _wait_for_associations(server, grace)
    ingest.stop()
    engine.dispose()


def _preflight(settings: Settings, node_pid: int) -> None:
    """What the serving process checks once at start (run in a forked child)."""
    from dicomnode.index.db import upgrade_database
    from dicomnode.worker.supervisor import die_with_node

    die_with_node(node_pid)  # a node killed mid-start leaves no migration running

    _check_models(settings)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    upgrade_database(settings.database_url)
    _backfill(settings)
    _reconcile(settings)


def _reconcile(settings: Settings) -> None:
    """Index or quarantine instance files a crash left unindexed (reads files)."""
    from dicomnode.receive.reconcile import reconcile_instances

    reconcile_instances(settings.database_url, settings.data_dir)


def _backfill(settings: Settings) -> None:
    """Record rule attributes of series indexed before revision 0004 (reads files)."""
    from dicomnode.receive.backfill import backfill_database

    node = settings.node
    backfill_database(
        settings.database_url, settings.data_dir,
        max_inflated_bytes=node.max_inflated_bytes, max_elements=node.max_elements,
    )  # fmt: skip


def _without_pixel_libraries() -> None:
    """Keep numpy (and so pydicom's pixel plugins) out of this serving process.

    Receiving, indexing, scheduling and sending never decode pixels (SPEC §4), yet
    ``import pydicom`` loads numpy and every pixel plugin it finds: ~14 MB in each
    serving process. Marking numpy unavailable before pydicom is imported leaves
    pydicom without pixel support here, as it is designed to run. Workers, which
    decode pixels, are separate processes and unaffected.
    """
    if "numpy" not in sys.modules:
        sys.modules["numpy"] = None  # type: ignore[assignment]  # "import numpy" fails


def _serve(settings: Settings, ctx: click.Context, with_workers: bool) -> None:
    from dicomnode.forked import run_forked

    try:
        run_forked(_preflight, settings, os.getpid())  # keeps numpy, models, Alembic out
    except DicomnodeError as exc:
        raise click.ClickException(str(exc)) from exc
    _without_pixel_libraries()
    from dicomnode.schedule.scheduler import build_scheduler
    from dicomnode.worker.supervisor import Supervisor

    stop = _stop_event()
    engine, session_factory, ingest, server = _receiving(settings)
    scheduler = build_scheduler(settings, session_factory, _sender(settings, session_factory))
    scheduler.start()
    roles = ["receive"] * (settings.receive_processes - 1)
    roles += ["worker"] * (settings.worker.count if with_workers else 0)
    level, style = ctx.obj["log"]
    log_args = ["--log-level", level, *(["--log-json"] if style == "json" else [])]
    supervisor = Supervisor(roles, ctx.obj.get("config"), log_args)
    supervisor.start()
    logger.info(
        "node ready",
        extra={"action": "node_ready", "data_dir": str(settings.data_dir),
               "receivers": settings.receive_processes, "workers": roles.count("worker"),
               "version": __version__},
    )  # fmt: skip
    stop.wait()
    scheduler.shutdown(wait=True)
    supervisor.stop()
    _stop_receiving(engine, ingest, server)
    logger.info("node stopped", extra={"action": "node_stopped"})


@cli.command(hidden=True)
@click.option("--supervised", is_flag=True, help="Started by `run`/`serve`.")
@click.pass_context
def receive(ctx: click.Context, supervised: bool) -> None:
    """An extra receiving process (SCP + index writer) sharing the node's port."""
    settings = _settings(ctx)
    _logging(ctx, settings, to_file=not supervised)
    _without_pixel_libraries()
    engine, _, ingest, server = _receiving(settings)
    # Until here SIGTERM, also the one the kernel sends when the node dies, ends us at
    # once: nothing has been received yet.
    stop = _stop_event()
    lifeline = _stop_with_parent(stop, supervised, exit_after=_ORPHAN_RECEIVER_EXIT_S)
    stop.wait()
    # An orphan frees the port at once and aborts what it is receiving: nothing it
    # acknowledged is lost (success means committed) and the peer sends the rest again.
    orphaned = lifeline is not None and not lifeline.node_alive()
    _stop_receiving(engine, ingest, server, grace=0.0 if orphaned else 30.0)


#: How long a receiving process whose node died may take to stop before it exits.
_ORPHAN_RECEIVER_EXIT_S = 5.0


def _stop_with_parent(
    stop: threading.Event, supervised: bool, exit_after: float
) -> Lifeline | None:
    """Set ``stop`` when a supervised child's node is gone, even by SIGKILL.

    The node's lifeline (see :mod:`dicomnode.worker.supervisor`) was armed as this
    process started; here a thread starts watching it, and the process exits
    ``exit_after`` seconds after the node died if it has not stopped by then.
    Returns the lifeline (``None`` when not started by a node).
    """
    from dicomnode.worker.supervisor import arm_lifeline

    if not supervised:
        return None
    lifeline = arm_lifeline()  # again: `dicomnode` (not `python -m`) skipped __main__
    if lifeline is not None:
        lifeline.watch(stop.set, exit_after)
        return lifeline
    try:  # `--supervised` by hand, without a lifeline: watch whoever is our parent
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass  # elsewhere, the polling below notices within a second
    parent = os.getppid()

    def _watch() -> None:
        while not stop.wait(1.0):
            if os.getppid() != parent:
                logger.warning("node gone; stopping", extra={"action": "orphan_stopping"})
                stop.set()

    threading.Thread(target=_watch, daemon=True).start()
    return None


def _wait_for_associations(server: Any, grace: float = 30.0) -> None:
    deadline = time.monotonic() + grace
    # Rejected or never-negotiated sockets linger until pynetdicom's ARTIM timer;
    # only established associations are worth waiting for.
    while time.monotonic() < deadline and any(
        assoc.is_established for assoc in server.active_associations
    ):
        time.sleep(0.1)
    for assoc in server.active_associations:
        assoc.abort()


@cli.command()
@click.option("--max-jobs", type=int, default=None, help="Exit after this many jobs.")
@click.option(
    "--supervised", is_flag=True, hidden=True, help="Started by `run`: log to stderr only."
)
@click.pass_context
def worker(ctx: click.Context, max_jobs: int | None, supervised: bool) -> None:
    """Run one worker: claim jobs from the shared database and run their pipelines."""
    settings = _settings(ctx)
    # Under `run` the node's stderr (and its log file) carries our records.
    _logging(ctx, settings, to_file=not supervised)
    from dicomnode.index.db import make_engine, make_session_factory, upgrade_database
    from dicomnode.models.device import resolve_device
    from dicomnode.worker.runner import SHUTDOWN_GRACE_S, Worker

    _check_models(settings)
    upgrade_database(settings.database_url)
    engine = make_engine(settings.database_url)
    runner = Worker(settings, make_session_factory(engine))
    resolve_device(settings.worker.device)  # imports torch: seconds, still start-up
    stop = _stop_event()

    # Until here SIGTERM, also the one the kernel sends when the node dies, ends us at
    # once: we hold no job yet. From here it stops us in order, and a supervised worker
    # also stops when its node dies (even by SIGKILL), so a restarted node never finds
    # an orphan working beside it.
    _stop_with_parent(stop, supervised, exit_after=SHUTDOWN_GRACE_S + 10.0)

    def _relay() -> None:
        stop.wait()
        runner.stop.set()

    threading.Thread(target=_relay, daemon=True).start()
    runner.run(max_jobs)
    engine.dispose()


# -- db -------------------------------------------------------------------------------


@cli.group()
def db() -> None:
    """Database maintenance."""


@db.command("upgrade")
@click.pass_context
def db_upgrade(ctx: click.Context) -> None:
    """Create or upgrade the index schema to the latest revision."""
    settings = _settings(ctx.find_root())
    _logging(ctx.find_root())
    from dicomnode.index.db import upgrade_database

    settings.data_dir.mkdir(parents=True, exist_ok=True)
    upgrade_database(settings.database_url)
    _backfill(settings)
    click.echo("database is at the latest revision")


# -- echo / send -----------------------------------------------------------------------


def _peer(settings: Settings, name: str) -> PeerSettings:
    for peer in settings.peers:
        if peer.name == name:
            return peer
    match = _PEER.match(name)
    if match:
        return PeerSettings(
            name=name, ae_title=match["ae"], host=match["host"], port=int(match["port"])
        )
    known = ", ".join(p.name for p in settings.peers) or "none configured"
    raise click.BadParameter(f"unknown peer {name!r} (known: {known}; or use AE@host:port)")


@cli.command()
@click.argument("peer")
@click.pass_context
def echo(ctx: click.Context, peer: str) -> None:
    """C-ECHO a PEER (a name from settings, or AE@host:port)."""
    settings = _settings(ctx)
    _logging(ctx)
    from dicomnode.send.scu import echo_peer

    target = _peer(settings, peer)
    try:
        status = echo_peer(target, settings.node.ae_title)
    except DicomnodeError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"C-ECHO {target.ae_title}@{target.host}:{target.port}: status 0x{status:04X}")
    if status != 0:
        sys.exit(1)


@cli.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=Path, exists=True))
@click.option("--to", "to", required=True, help="Peer name from settings, or AE@host:port.")
@click.pass_context
def send(ctx: click.Context, paths: tuple[Path, ...], to: str) -> None:
    """C-STORE files and folders (recursively) to a peer, with a progress bar."""
    settings = _settings(ctx)
    _logging(ctx)
    from dicomnode.send.scu import collect_files, send_files

    target = _peer(settings, to)
    try:
        files = collect_files(paths)
    except DicomnodeError as exc:
        raise click.ClickException(str(exc)) from exc
    console = Console(stderr=True)
    with _progress() as progress:
        task = progress.add_task("sending", total=len(files))
        report = send_files(
            files, target, settings.node.ae_title, lambda n: progress.advance(task, n)
        )
    for path, reason in report.failed[:20]:
        console.print(f"[red]failed[/red] {path}: {reason}")
    click.echo(
        f"sent {report.sent} of {len(files)} to {target.name}"
        f" ({report.warnings} with warnings, {len(report.failed)} failed)"
    )
    if report.failed:
        sys.exit(1)


def _progress() -> Progress:
    """A progress bar on stderr: description, bar, done/total, time left."""
    columns = (
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
        TimeRemainingColumn(),
    )  # fmt: skip
    return Progress(*columns, console=Console(stderr=True), transient=False)


# -- studies ---------------------------------------------------------------------------


@cli.command()
@click.option("--limit", default=50, show_default=True, help="Most recent studies to show.")
@click.pass_context
def studies(ctx: click.Context, limit: int) -> None:
    """List the studies in the index (most recent first)."""
    settings = _settings(ctx)
    _logging(ctx)
    from dicomnode.index.db import make_engine, make_session_factory, upgrade_database
    from dicomnode.index.queries import list_studies

    upgrade_database(settings.database_url)
    engine = make_engine(settings.database_url)
    with make_session_factory(engine)() as session:
        rows = list_studies(session, limit)
    engine.dispose()
    table = Table(
        "Study Instance UID",
        "Date",
        "Modality",
        "Series",
        "Instances",
        "MB",
        "State",
        "Last received",
    )
    for row in rows:
        table.add_row(
            row.study_instance_uid,
            row.study_date or "",
            row.modalities,
            str(row.series),
            str(row.instances),
            f"{row.size_bytes / 1e6:.1f}",
            row.state,
            row.last_received_at.strftime("%Y-%m-%d %H:%M:%S"),
        )
    Console(width=200).print(table)


# -- jobs, models, rules ---------------------------------------------------------------


def _session_factory(settings: Settings) -> Any:
    from dicomnode.index.db import make_engine, make_session_factory, upgrade_database

    upgrade_database(settings.database_url)
    return make_session_factory(make_engine(settings.database_url))


def _state(kind: Any, state: str | None) -> Any:
    """The ``--state`` option as a member of the enum ``kind`` (None: every state)."""
    try:
        return kind(state) if state else None
    except ValueError:
        raise click.BadParameter(f"unknown state {state!r}", param_hint="--state") from None


@cli.group(invoke_without_command=True)
@click.option("--limit", default=50, show_default=True, help="Most recent jobs to show.")
@click.option("--state", default=None, help="Only jobs in this state (queued, running, ...).")
@click.pass_context
def jobs(ctx: click.Context, limit: int, state: str | None) -> None:
    """List jobs with their state, timings and errors."""
    if ctx.invoked_subcommand is not None:
        return
    settings = _settings(ctx.find_root())
    _logging(ctx.find_root())
    from dicomnode.index.jobs import list_jobs
    from dicomnode.index.schema import JobState

    wanted = _state(JobState, state)
    with _session_factory(settings)() as session:
        rows = list_jobs(session, limit, wanted)
    table = Table(
        "ID",
        "Study Instance UID",
        "Pipeline",
        "State",
        "Tries",
        "Created",
        "Seconds",
        "Error / result",
    )
    for row in rows:
        seconds = " ".join(f"{k}={v:g}" for k, v in row.timings.items())
        detail = row.error or row.result or ""
        table.add_row(
            str(row.id), row.study_instance_uid, row.pipeline, row.state,
            f"{row.attempts}/{row.max_attempts}", row.created_at.strftime("%Y-%m-%d %H:%M:%S"),
            seconds, detail[:80],
        )  # fmt: skip
    Console(width=220).print(table)


@jobs.command("retry")
@click.argument("job_id", type=int)
@click.pass_context
def jobs_retry(ctx: click.Context, job_id: int) -> None:
    """Queue JOB_ID again now (a failed, dead, done or not-applicable job)."""
    settings = _settings(ctx.find_root())
    _logging(ctx.find_root())
    from dicomnode.index.jobs import retry_job

    with _session_factory(settings)() as session:
        if not retry_job(session, job_id):
            raise click.ClickException(f"job {job_id} does not exist or is running")
    click.echo(f"job {job_id} queued")


@cli.command()
@click.pass_context
def models(ctx: click.Context) -> None:
    """List the models this installation can run, with their views."""
    from dicomnode.models.registry import load_model, model_sources

    settings = _settings(ctx)
    table = Table("model", "version", "views (* required)", "labels / classes", "from", "about")
    for name, source in sorted(model_sources(settings.model_dirs).items()):
        try:
            model = load_model(name, "cpu", settings.model_dirs)
        except Exception as exc:  # a broken third-party model must not hide the others
            table.add_row(name, "?", "", "", source, f"cannot load: {exc}")
            continue
        views = " ".join(f"{v.name}{'*' if v.required else ''}" for v in model.views)
        outputs = ", ".join([lb.name for lb in model.labels] + [c.name for c in model.classes])
        table.add_row(name, model.version, views, outputs, source, model.description)
    Console(width=200).print(table)


def _trainable(name: str, settings: Settings) -> Any:
    from dicomnode.models.device import resolve_device
    from dicomnode.models.registry import load_model
    from dicomnode.models.training import Trainable

    model = load_model(name, resolve_device(settings.worker.device), settings.model_dirs)
    if not isinstance(model, Trainable):
        raise click.ClickException(f"model {name!r} cannot be trained or evaluated here")
    return model


def _labelled(data: Path, model: Any) -> list[Any]:
    from dicomnode.worker.training_data import load_labelled_studies

    with _progress() as bar:
        task = bar.add_task("reading studies", total=None)
        studies, report = load_labelled_studies(
            data, model, lambda done, total: bar.update(task, completed=done, total=total)
        )
    for reason, count in sorted(report.not_applicable.items()):
        click.echo(f"skipped {count} studies: {reason}")
    click.echo(f"{report.studies} studies, {report.segments} ground-truth segments")
    if not studies:
        raise click.ClickException(f"no study under {data} fits model {model.name!r}")
    return studies


@cli.command()
@click.argument("model_name", metavar="MODEL")
@click.option(
    "--data",
    required=True,
    type=click.Path(path_type=Path, exists=True),
    help="Folder of DICOM images and DICOM SEG labels.",
)
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    default=Path("trained"),
    show_default=True,
    help="Folder for the weights, metrics and model card.",
)
@click.option("--seed", default=0, show_default=True, help="Seed of the split and training.")
@click.option("--max-epochs", type=click.IntRange(min=1), default=None,
              help="Cap the model's epoch limit (default: the model's own).")  # fmt: skip
@click.pass_context
def train(
    ctx: click.Context, model_name: str, data: Path, out: Path, seed: int, max_epochs: int | None
) -> None:
    """Train MODEL from scratch on DICOM + SEG data; write weights and a model card."""
    import datetime
    import json

    from dicomnode.models.training import model_card, split_by_patient

    settings = _settings(ctx)
    _logging(ctx, settings)
    model = _trainable(model_name, settings)
    split = split_by_patient(_labelled(data, model), seed=seed)
    click.echo(f"split by patient: {split.counts()}")
    cap = {} if max_epochs is None else {"max_epochs": max_epochs}
    record = model.fit(split.train, split.validation, seed=seed, progress=click.echo, **cap)
    metrics = model.evaluate(split.test)
    out.mkdir(parents=True, exist_ok=True)
    model.save(out / f"{model.name}.pt")
    today = datetime.date.today().isoformat()
    (out / f"{model.name}.json").write_text(json.dumps(
        {"model": model.name, "version": model.version, "date": today, "seed": seed,
         "split": split.counts(), "training": record, "test_metrics": metrics},
        indent=2, default=str) + "\n")  # fmt: skip
    (out / f"{model.name}.md").write_text(model_card(
        model, description=model.description, data=f"DICOM images and SEG labels from `{data}`.",
        split=split, seed=seed, record=record, metrics=metrics, date=today))  # fmt: skip
    _print_metrics(metrics, "test split")
    click.echo(f"weights, metrics and model card written to {out}/")


def _print_metrics(metrics: dict[str, float], title: str) -> None:
    table = Table("metric", "value", title=title)
    for key, value in sorted(metrics.items()):
        table.add_row(key, f"{value:.4f}")
    Console().print(table)


@cli.command()
@click.argument("model_name", metavar="MODEL")
@click.option(
    "--data",
    required=True,
    type=click.Path(path_type=Path, exists=True),
    help="Folder of DICOM images and DICOM SEG labels.",
)
@click.option(
    "--all",
    "every",
    is_flag=True,
    help="Evaluate every study (a held-out folder), not only the test split.",
)
@click.option("--seed", default=0, show_default=True, help="Seed of the split.")
@click.pass_context
def evaluate(ctx: click.Context, model_name: str, data: Path, every: bool, seed: int) -> None:
    """Print MODEL's metrics on the test split of DATA (or on all of it)."""
    from dicomnode.models.training import split_by_patient

    settings = _settings(ctx)
    _logging(ctx, settings)
    model = _trainable(model_name, settings)
    studies = _labelled(data, model)
    chosen = studies if every else list(split_by_patient(studies, seed=seed).test)
    _print_metrics(model.evaluate(chosen), f"{len(chosen)} studies")


@cli.command("demo-data")
@click.argument("out", type=click.Path(path_type=Path))
@click.option("--ct", default=2, show_default=True, help="CT studies (lesions, body).")
@click.option("--mg", default=2, show_default=True, help="4-view mammography studies.")
@click.option("--cxr", default=2, show_default=True, help="Chest PA + lateral studies.")
@click.option("--seed", default=0, show_default=True, help="First seed; study i uses seed+i.")
@click.option("--ct-slices", default=120, show_default=True, help="Slices per CT series.")
@click.option("--ct-size", default=512, show_default=True, help="Rows and columns of a CT slice.")
@click.option("--ct-thickness", default=1.0, show_default=True, help="CT slice spacing, mm.")
@click.option("--mg-rows", default=512, show_default=True, help="Rows of a mammogram.")
@click.option(
    "--cxr-size", default=512, show_default=True, help="Rows and columns of a chest image."
)
@click.pass_context
def demo_data(ctx: click.Context, /, out: Path, **counts: Any) -> None:
    """Write synthetic studies with DICOM SEG ground truth to OUT (to try or train the node)."""
    from dicomnode.synth.studies import DemoOptions, write_demo_data

    _logging(ctx)
    options = DemoOptions(**counts)
    with _progress() as bar:
        task = bar.add_task("writing studies", total=options.total)
        written = write_demo_data(out, options, lambda: bar.advance(task))
    click.echo(f"{written} studies written to {out}/ (ground truth as DICOM SEG in each study)")


@cli.group()
def rules() -> None:
    """Check routing and pipeline rules."""


@rules.command("test")
@click.argument("files", nargs=-1, required=True, type=click.Path(path_type=Path, exists=True))
@click.option("--calling-ae", default=None, help="Calling AE title to assume (CallingAETitle).")
@click.pass_context
def rules_test(ctx: click.Context, files: tuple[Path, ...], calling_ae: str | None) -> None:
    """Show which pipelines and routes these files would trigger, and why."""
    settings = _settings(ctx.find_root())
    import tempfile

    from dicomnode.receive.inspect import inspect_instance
    from dicomnode.schedule.plan import compile_plan
    from dicomnode.schedule.rules import rule_attributes
    from dicomnode.send.scu import collect_files

    plan = compile_plan(settings)
    entries = [("pipeline", p.name, m) for p, m in plan.pipelines]
    entries += [("route", r.name, m) for r, m in plan.routes]
    if not entries:
        click.echo("no pipelines or routes configured")
        return
    unreadable = 0
    limits = (settings.node.max_inflated_bytes, settings.node.max_elements)
    for path in collect_files(files):
        # The header walk of ingest, so a rule means here what it means in the scheduler.
        with tempfile.TemporaryDirectory() as scratch:
            try:
                info = inspect_instance(path, Path(scratch), *limits)
            except (OSError, DicomnodeError) as exc:
                click.echo(f"{path}: the node would refuse it: {exc}")
                unreadable += 1
                continue
        attrs = rule_attributes(info.attributes.to_json(), calling_ae)
        click.echo(f"{path}:")
        for kind, name, match in entries:
            result = match.evaluate(attrs)
            verdict = "MATCH" if result.matched else "no match"
            click.echo(f"  {kind} {name}: {verdict}")
            for line in result.explain().splitlines():
                click.echo(f"    {line}")
    if unreadable:
        ctx.exit(1)


# -- deliveries ------------------------------------------------------------------------


def _sender(settings: Settings, session_factory: Any) -> Any:
    """The scheduler's sending job: send the due deliveries of this node."""
    from dicomnode.send.deliveries import default_owner, send_due_deliveries

    owner = default_owner()
    return lambda: send_due_deliveries(settings, session_factory, owner)


@cli.group(invoke_without_command=True)
@click.option("--limit", default=50, show_default=True, help="Most recent deliveries to show.")
@click.option("--state", default=None, help="Only deliveries in this state (pending, sent, ...).")
@click.pass_context
def deliveries(ctx: click.Context, limit: int, state: str | None) -> None:
    """List deliveries to peers with their state, attempts and last status."""
    if ctx.invoked_subcommand is not None:
        return
    settings = _settings(ctx.find_root())
    _logging(ctx.find_root())
    from dicomnode.index.deliveries import list_deliveries
    from dicomnode.index.schema import DeliveryState

    wanted = _state(DeliveryState, state)
    with _session_factory(settings)() as session:
        rows = list_deliveries(session, limit, wanted)
    table = Table("ID", "What", "SOP Instance UID", "Peer", "State", "Tries", "Status", "Error",
                  "Sent at")  # fmt: skip
    for row in rows:
        status = "" if row.last_status is None else f"0x{row.last_status:04X}"
        sent = row.sent_at.strftime("%Y-%m-%d %H:%M:%S") if row.sent_at else ""
        what = row.what if row.route is None else f"{row.what} ({row.route})"
        table.add_row(
            str(row.id), what, row.sop_instance_uid, row.peer, row.state, str(row.attempts),
            status, (row.error or "")[:80], sent,
        )  # fmt: skip
    Console(width=220).print(table)


@deliveries.command("retry")
@click.argument("delivery_ids", nargs=-1, type=int, metavar="[ID]...")
@click.option("--failed", is_flag=True, help="Retry every failed delivery.")
@click.pass_context
def deliveries_retry(ctx: click.Context, delivery_ids: tuple[int, ...], failed: bool) -> None:
    """Send deliveries ID... (or every failed one) again now."""
    if not delivery_ids and not failed:
        raise click.UsageError("name delivery IDs or pass --failed")
    settings = _settings(ctx.find_root())
    _logging(ctx.find_root())
    from dicomnode.index.deliveries import retry_deliveries

    with _session_factory(settings)() as session:
        queued = retry_deliveries(session, delivery_ids, failed=failed)
    missing = sorted(set(delivery_ids) - set(queued))
    click.echo(f"{len(queued)} deliveries queued")
    if missing:
        listed = ", ".join(map(str, missing))
        raise click.ClickException(f"not queued (unknown, being sent, or invalid): {listed}")


def main() -> None:
    """Entry point of the ``dicomnode`` command."""
    cli(obj={})
