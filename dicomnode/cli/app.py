"""The root ``dicomnode`` group and what every command shares.

Settings are loaded once per invocation and kept in the click context's ``obj``, as
are the options every command takes (:class:`NodeCommand`): ``--config``,
``--log-level`` and ``--log-json`` are accepted before the command and after it
(docs/configuration.md: ``dicomnode run --config FILE`` is
``dicomnode --config FILE run``); one
given after the command wins.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from dicomnode import __version__
from dicomnode.config import Settings, load_settings
from dicomnode.errors import ConfigError, IndexSchemaError
from dicomnode.index.layout import DataLayout
from dicomnode.log import configure_logging, take_channel

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

__all__ = [
    "NodeCommand",
    "NodeGroup",
    "cli",
    "index_session",
    "log_args",
    "print_table",
    "progress_bar",
    "settings_of",
    "start_logging",
]


def _remember(ctx: click.Context, param: click.Parameter, value: object) -> None:
    # Every context shares the root's ``obj``; the command's options are parsed after
    # the root's, so a value given after the command replaces one given before it.
    if value is not None and value is not False and param.name is not None:
        ctx.ensure_object(dict)[param.name] = value


def _shared_options(root: bool) -> list[click.Parameter]:
    """``--config``, ``--log-level`` and ``--log-json``; defaults live on the root only."""
    return [
        click.Option(
            ["--config", "-c"], type=click.Path(path_type=Path, dir_okay=False),
            expose_value=False, callback=_remember,
            help="Settings file (default: $DICOMNODE_CONFIG, else ./settings.toml, else built-in).",
        ),
        click.Option(
            ["--log-level"], default="INFO" if root else None, show_default=root,
            expose_value=False, callback=_remember, help="DEBUG, INFO, WARNING, ERROR.",
        ),
        click.Option(
            ["--log-json"], is_flag=True, expose_value=False, callback=_remember,
            help="Write log records as JSON lines.",
        ),
    ]  # fmt: skip


class NodeCommand(click.Command):
    """A ``dicomnode`` command: it also takes the root's shared options."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.params.extend(_shared_options(root=False))


class NodeGroup(click.Group):
    """A ``dicomnode`` command group: its commands and groups take the shared options."""

    command_class = NodeCommand
    group_class = type  # subgroups are NodeGroups too

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.params.extend(_shared_options(root=False))


class _RootGroup(click.Group):
    command_class = NodeCommand
    group_class = NodeGroup


@click.group(cls=_RootGroup, context_settings={"help_option_names": ["-h", "--help"]},
             params=_shared_options(root=True))  # fmt: skip
@click.version_option(__version__, prog_name="dicomnode")
def cli() -> None:
    """dicomnode: a DICOM node that receives, indexes, runs models and sends results."""


def settings_of(ctx: click.Context) -> Settings:
    """The settings of this invocation, loaded on first use.

    Raises
    ------
    click.ClickException
        When the settings are invalid (one line naming the file and key).
    """
    obj: dict[str, Any] = ctx.ensure_object(dict)
    if "settings" not in obj:
        try:
            obj["settings"] = load_settings(obj.get("config"))
        except ConfigError as exc:
            raise click.ClickException(f"bad configuration: {exc}") from exc
    settings: Settings = obj["settings"]
    return settings


#: The role on the records of a long-running command's process; a process the node
#: started is told its own (``receiver-2``, ``worker-1``) with its log channel.
_ROLES = {"run": "main", "serve": "main", "receive": "receiver", "worker": "worker"}


def start_logging(
    ctx: click.Context, settings: Settings | None = None, to_file: bool = False
) -> None:
    """Install the log handlers: stderr, and the node's log file when ``to_file``.

    A process started by the node (``--supervised``) finds its channel to the node's
    file in the environment and sends its records there instead; the serving process
    writes them, so the file has one writer (see :mod:`dicomnode.log`).
    """
    obj: dict[str, Any] = ctx.ensure_object(dict)
    role = _ROLES.get(ctx.info_name or "")
    log_dir = DataLayout(settings.data_dir).logs if settings is not None and to_file else None
    channel = take_channel()
    if channel is not None:
        log_dir = None
        role = channel[1]
    configure_logging(
        obj.get("log_level", "INFO"), log_dir, _log_style(obj), role,
        channel[0] if channel is not None else None,
    )  # fmt: skip


def _log_style(obj: dict[str, Any]) -> Literal["text", "json"]:
    return "json" if obj.get("log_json") else "text"


def log_args(ctx: click.Context) -> list[str]:
    """The logging options of this invocation, for the processes it starts."""
    obj: dict[str, Any] = ctx.ensure_object(dict)
    json_flag = ["--log-json"] if _log_style(obj) == "json" else []
    return ["--log-level", obj.get("log_level", "INFO"), *json_flag]


@contextmanager
def index_session(settings: Settings) -> Iterator[Session]:
    """A session on the index as it is: never migrated (only the node and `db upgrade` do).

    Raises
    ------
    click.ClickException
        When there is no index yet or it is at another schema revision; the one-line
        message says to run ``dicomnode db upgrade``.
    """
    from dicomnode.index.db import make_session_factory, open_database

    try:
        engine = open_database(settings.database_url)
    except IndexSchemaError as exc:
        raise click.ClickException(str(exc)) from exc
    try:
        with make_session_factory(engine)() as session:
            yield session
    finally:
        engine.dispose()


def print_table(columns: Sequence[str], rows: Iterable[Sequence[str]], width: int) -> None:
    """Print rows under the column titles, ``width`` characters wide, to stdout."""
    table = Table(*columns)
    for row in rows:
        table.add_row(*row)
    Console(width=width).print(table)


def progress_bar() -> Progress:
    """A progress bar on stderr: description, bar, done/total, time left."""
    columns = (
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
        TimeRemainingColumn(),
    )  # fmt: skip
    return Progress(*columns, console=Console(stderr=True), transient=False)
