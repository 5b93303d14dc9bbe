"""Settings: one TOML file, environment overrides, validated once at start-up.

The file is ``settings.toml`` (the documented default sits at the repository root);
``--config FILE`` names another. Any key can be overridden from the environment as
``DICOMNODE_<SECTION>__<KEY>`` (``DICOMNODE_NODE__PORT=11113``); list values are
given as JSON (``DICOMNODE_NODE__ALLOWED_CALLING_AETS='["CT1","MR2"]'``).

A bad value raises :class:`~dicomnode.errors.ConfigError` with one line naming the
file and the key. Settings objects are frozen and passed explicitly; nothing here is
module-level mutable state.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Callable, Mapping
from ipaddress import IPv4Network, IPv6Network, ip_network
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from dicomnode.errors import ConfigError
from dicomnode.index.layout import DataLayout
from dicomnode.rules import MatchValue, compile_match

__all__ = [
    "AuditSettings",
    "ModelsSettings",
    "NodeSettings",
    "PeerSettings",
    "PipelineSettings",
    "RetentionSettings",
    "RouteSettings",
    "SendSettings",
    "Settings",
    "WebSettings",
    "WorkerSettings",
    "load_settings",
]

_AE_TITLE = re.compile(r"^[\x20-\x5b\x5d-\x7e]{1,16}$")  # PS3.5 AE VR: no backslash
_DEVICE = re.compile(r"^(auto|cpu|cuda|cuda:\d+)$")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _check_ae_title(value: str) -> str:
    if not _AE_TITLE.match(value) or not value.strip():
        raise ValueError(f"{value!r} is not a valid AE title (1-16 printable characters)")
    return value.strip()


class NodeSettings(_Section):
    """The ``[node]`` section: identity, network binding and storage."""

    ae_title: str = "DICOMNODE"
    host: str = "127.0.0.1"
    port: Annotated[int, Field(ge=0, le=65535)] = 11112
    data_dir: Path = Path("var")
    database_url: str = ""
    allowed_calling_aets: tuple[str, ...] = ()
    #: Hosts (addresses or networks, e.g. "10.1.2.0/24") that may connect; empty: any.
    allowed_hosts: tuple[IPv4Network | IPv6Network, ...] = ()
    study_quiet_seconds: Annotated[float, Field(gt=0)] = 10
    #: A study still receiving this long after its first instance is made stable anyway.
    study_force_complete_seconds: Annotated[float, Field(gt=0)] = 3600
    #: The largest PDU we accept (advertised to peers); a longer one is aborted unread.
    maximum_pdu_size: Annotated[int, Field(ge=4096, le=4194304)] = 262144
    maximum_associations: Annotated[int, Field(ge=1)] = 32
    #: A peer that stops mid-PDU, or sends nothing for this long, is aborted.
    network_timeout: Annotated[float, Field(gt=0, le=3600)] = 30
    #: A connection that has not sent a whole A-ASSOCIATE-RQ by then is closed.
    association_request_timeout: Annotated[float, Field(gt=0, le=600)] = 10
    #: Connections (pending and associated) one host may hold in a receiving process.
    max_connections_per_host: Annotated[int, Field(ge=1)] = 32
    #: Connections still waiting for their A-ASSOCIATE-RQ in a receiving process;
    #: when full, the oldest of them is closed to make room.
    max_pending_connections: Annotated[int, Field(ge=1)] = 128
    #: Processes accepting associations on the port (SO_REUSEPORT), so concurrent
    #: associations use more than one core; 0: one per CPU, at most 4.
    receive_processes: Annotated[int, Field(ge=0, le=64)] = 0
    #: DICOM TLS (PS3.15 B.1): PEM certificate (chain) and private key; empty: plain TCP.
    tls_certificate: str = ""
    tls_private_key: str = ""
    #: PEM CA certificates; when set, peers must present a certificate they signed.
    tls_client_ca: str = ""
    #: The largest instance (stored file: File Meta and dataset) accepted; larger: 0xA700.
    max_instance_bytes: Annotated[int, Field(ge=1024)] = 4 * 2**30
    #: The most a deflated dataset may inflate to while it is checked; more: 0xC000.
    max_inflated_bytes: Annotated[int, Field(ge=1024)] = 256 * 2**20
    #: The most data elements (with items and fragments, nested ones included) an
    #: instance may hold; more: 0xC000.
    max_elements: Annotated[int, Field(ge=100)] = 1_000_000

    _ae = field_validator("ae_title")(classmethod(lambda cls, v: _check_ae_title(v)))

    @field_validator("allowed_calling_aets")
    @classmethod
    def _check_aets(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(_check_ae_title(v) for v in value)

    @field_validator("allowed_hosts", mode="before")
    @classmethod
    def _parse_hosts(cls, value: Any) -> Any:
        # "10.1.2.3" means that host; "10.1.2.3/24" is read as its network 10.1.2.0/24.
        if isinstance(value, (list, tuple)):
            try:
                return tuple(ip_network(str(v).strip(), strict=False) for v in value)
            except ValueError as exc:
                raise ValueError(f"not an address or network: {exc}") from exc
        return value


class WorkerSettings(_Section):
    """The ``[worker]`` section."""

    count: Annotated[int, Field(ge=0)] = 1
    device: str = "auto"
    #: A job running longer than this fails (and its worker process is replaced).
    job_timeout_seconds: Annotated[float, Field(gt=0)] = 3600
    #: A worker holds a job for this long between heartbeats (every third of it).
    lease_seconds: Annotated[float, Field(gt=0)] = 30
    #: Attempts before a failing job is dead; retries back off exponentially.
    max_attempts: Annotated[int, Field(ge=1)] = 3
    retry_backoff_seconds: Annotated[float, Field(ge=0)] = 5
    #: How often an idle worker looks for a job.
    poll_seconds: Annotated[float, Field(gt=0)] = 0.1

    @field_validator("device")
    @classmethod
    def _check_device(cls, value: str) -> str:
        if not _DEVICE.match(value):
            raise ValueError(f"{value!r} is not one of auto, cpu, cuda, cuda:N")
        return value


class RetentionSettings(_Section):
    """The ``[retention]`` section: which stable studies to delete, and when."""

    #: Delete studies whose last instance arrived longer ago than this (0: never).
    max_age_days: Annotated[float, Field(ge=0)] = 0
    #: Delete the oldest studies while the data folder's disk is fuller than this
    #: percentage (0: never).
    disk_high_water_percent: Annotated[float, Field(ge=0, le=100)] = 0
    #: How often to check.
    check_seconds: Annotated[float, Field(gt=0)] = 300


class ModelsSettings(_Section):
    """The ``[models]`` section: where model files (TOML manifest + TorchScript/ONNX) live."""

    #: Folders searched for ``*.toml`` model manifests, besides ``data_dir/models``.
    dirs: tuple[Path, ...] = ()


class WebSettings(_Section):
    """The ``[web]`` section: the web server of ``run`` and ``serve`` (``docs/operate.md``)."""

    #: Serve ``/healthz``, ``/readyz`` and ``/metrics``; false: no web server at all.
    enabled: bool = True
    host: str = "127.0.0.1"
    port: Annotated[int, Field(ge=0, le=65535)] = 8080
    #: The bearer token the page's actions need (retry, cancel, force-complete); only
    #: from the environment (``DICOMNODE_WEB__TOKEN``), never the settings file. Empty:
    #: the page is read-only and every action is refused.
    token: SecretStr = SecretStr("")


class SendSettings(_Section):
    """The ``[send]`` section: how deliveries to peers are retried."""

    #: First retry delay after 0xA7xx or a network error; doubles per attempt, with jitter.
    retry_backoff_seconds: Annotated[float, Field(gt=0)] = 2
    #: The longest wait between two attempts: a peer that was down gets everything
    #: within this long of its return.
    max_backoff_seconds: Annotated[float, Field(gt=0)] = 300
    #: Deliveries claimed per run (one association per peer among them).
    batch_size: Annotated[int, Field(ge=1, le=10000)] = 200


class AuditSettings(_Section):
    """The ``[audit]`` section: the audit trail's retention and its syslog collector
    (``docs/operate.md``, "Audit trail")."""

    #: Delete audit events older than this (0: keep them forever); one not yet
    #: forwarded to a configured collector is kept until it is.
    retention_days: Annotated[float, Field(ge=0)] = 365
    #: The syslog collector that gets every event as a DICOM audit message (PS3.15
    #: A.5) over TCP (RFC 5424 with RFC 6587 framing); empty: no forwarding.
    syslog_host: str = ""
    #: Its port; 0: the standard one, 6514 with TLS (RFC 5425), 601 without.
    syslog_port: Annotated[int, Field(ge=0, le=65535)] = 0
    #: Send over TLS 1.2+, checking the collector's certificate (RFC 5425).
    syslog_tls: bool = False
    #: PEM CA file that signed the collector's certificate; empty: the system's CAs.
    syslog_ca: str = ""
    #: APP-NAME of every syslog message (RFC 5424: 1-48 printable ASCII characters).
    syslog_app_name: str = "dicomnode"

    @field_validator("syslog_app_name")
    @classmethod
    def _check_app_name(cls, value: str) -> str:
        if not re.fullmatch(r"[\x21-\x7e]{1,48}", value):
            raise ValueError(f"{value!r} is not 1-48 printable ASCII characters")
        return value

    @field_validator("syslog_ca")
    @classmethod
    def _check_ca(cls, value: str, info: ValidationInfo) -> str:
        if value and not info.data.get("syslog_tls"):
            raise ValueError("needs syslog_tls = true")
        return value

    @property
    def port(self) -> int:
        """The collector's port: ``syslog_port``, or the standard one for the transport."""
        return self.syslog_port or (6514 if self.syslog_tls else 601)


class PeerSettings(_Section):
    """One ``[[peers]]`` entry: a remote AE."""

    name: Annotated[str, Field(min_length=1)]
    ae_title: str
    host: str
    port: Annotated[int, Field(ge=1, le=65535)]
    #: The output encodings this peer takes (SC: for viewers that cannot show SEG).
    accepts: tuple[Literal["seg", "sr", "sc"], ...] = ("seg", "sr")
    #: Send over DICOM TLS (TLS 1.2+), checking the peer's certificate.
    tls: bool = False
    #: PEM CA file that signed the peer's certificate; empty: the system's trusted CAs.
    tls_ca: str = ""
    #: The name the peer's certificate must carry; empty: ``host``.
    tls_server_name: str = ""
    #: Our client certificate and key (PEM), for peers that require one.
    tls_certificate: str = ""
    tls_private_key: str = ""

    _ae = field_validator("ae_title")(classmethod(lambda cls, v: _check_ae_title(v)))

    @model_validator(mode="after")
    def _check_tls(self) -> PeerSettings:
        if bool(self.tls_certificate) != bool(self.tls_private_key):
            raise ValueError(f"{self.name}: tls_certificate and tls_private_key go together")
        if (self.tls_ca or self.tls_certificate or self.tls_server_name) and not self.tls:
            raise ValueError(f"{self.name}: tls_* settings need tls = true")
        return self


def _resolve_peer_files(peer: PeerSettings, resolve: Callable[[str], Path]) -> PeerSettings:
    """The peer with its TLS file paths made absolute by ``resolve``."""
    keys = ("tls_ca", "tls_certificate", "tls_private_key")
    update = {key: str(resolve(value)) for key in keys if (value := getattr(peer, key))}
    return peer.model_copy(update=update) if update else peer


def _check_match(match: dict[str, MatchValue]) -> dict[str, MatchValue]:
    # Compiling the rule here stops a bad rule at start, naming the file and the key.
    compile_match(match)
    return match


class RouteSettings(_Section):
    """One ``[[routes]]`` entry: forward matching instances unchanged."""

    name: Annotated[str, Field(min_length=1)]
    match: dict[str, MatchValue] = Field(default_factory=dict)
    send_to: tuple[str, ...]

    _match = field_validator("match")(classmethod(lambda cls, v: _check_match(v)))


def _check_options(
    options: dict[str, str | int | float | bool],
) -> dict[str, str | int | float | bool]:
    # The node itself reads max_findings (the SR's cap, worker/publish.py); the model
    # reads the rest.
    value = options.get("max_findings")
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise ValueError(f"max_findings must be a whole number of at least 1, got {value!r}")
    return options


class PipelineSettings(_Section):
    """One ``[[pipelines]]`` entry: run a model on matching stable studies."""

    name: Annotated[str, Field(min_length=1)]
    match: dict[str, MatchValue] = Field(default_factory=dict)
    model: Annotated[str, Field(min_length=1)]
    send_to: tuple[str, ...] = ()
    #: Higher runs first.
    priority: int = 0
    #: Passed to the model as keyword options; ``max_findings`` also caps the SR.
    options: dict[str, str | int | float | bool] = Field(default_factory=dict)

    _match = field_validator("match")(classmethod(lambda cls, v: _check_match(v)))
    _options = field_validator("options")(classmethod(lambda cls, v: _check_options(v)))


class Settings(BaseSettings):
    """All settings of one node."""

    model_config = SettingsConfigDict(
        env_prefix="DICOMNODE_",
        env_nested_delimiter="__",
        extra="forbid",
        frozen=True,
    )

    node: NodeSettings = NodeSettings()
    worker: WorkerSettings = WorkerSettings()
    web: WebSettings = WebSettings()
    retention: RetentionSettings = RetentionSettings()
    models: ModelsSettings = ModelsSettings()
    send: SendSettings = SendSettings()
    audit: AuditSettings = AuditSettings()
    peers: tuple[PeerSettings, ...] = ()
    routes: tuple[RouteSettings, ...] = ()
    pipelines: tuple[PipelineSettings, ...] = ()
    #: The file these settings came from (None: built-in defaults).
    source: Path | None = None

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Environment first: it overrides the file, which arrives as init kwargs.
        return (env_settings, init_settings)

    @model_validator(mode="after")
    def _check_references(self) -> Settings:
        peer_names = [p.name for p in self.peers]
        for kind, names in (
            ("peers", peer_names),
            ("routes", [r.name for r in self.routes]),
            ("pipelines", [p.name for p in self.pipelines]),
        ):
            dupes = sorted({n for n in names if names.count(n) > 1})
            if dupes:
                raise ValueError(f"{kind}: duplicate name {dupes[0]!r}")
        peers = tuple(_resolve_peer_files(peer, self.resolve) for peer in self.peers)
        if peers != self.peers:
            object.__setattr__(self, "peers", peers)
        node = self.node
        if bool(node.tls_certificate) != bool(node.tls_private_key):
            raise ValueError("node: tls_certificate and tls_private_key go together")
        if node.tls_client_ca and not node.tls_certificate:
            raise ValueError("node: tls_client_ca needs tls_certificate and tls_private_key")
        entries: list[RouteSettings | PipelineSettings] = [*self.routes, *self.pipelines]
        for entry in entries:
            for target in entry.send_to:
                if target not in peer_names:
                    raise ValueError(f"{entry.name}: send_to names unknown peer {target!r}")
        return self

    def resolve(self, path: Path | str) -> Path:
        """An absolute path: a relative one is taken from the settings file's folder (the
        working directory for built-in defaults)."""
        path = Path(path)
        if not path.is_absolute() and self.source is not None:
            path = self.source.parent / path
        return path.resolve()

    @property
    def data_dir(self) -> Path:
        """The data folder, resolved against the settings file's folder."""
        return self.resolve(self.node.data_dir)

    @property
    def model_dirs(self) -> tuple[Path, ...]:
        """Folders with model manifests: ``[models] dirs`` (resolved like data_dir), then
        ``data_dir/models``."""
        return (*(self.resolve(p) for p in self.models.dirs), DataLayout(self.data_dir).models)

    def tls_file(self, key: str) -> Path | None:
        """A ``[node] tls_*`` file resolved like ``data_dir``; None when not set."""
        value = str(getattr(self.node, key))
        return self.resolve(value) if value else None

    @property
    def receive_processes(self) -> int:
        """How many processes accept associations (1 when the port is chosen by the OS)."""
        if self.node.port == 0:
            return 1
        if self.node.receive_processes:
            return self.node.receive_processes
        return max(1, min(4, os.cpu_count() or 1))

    @property
    def database_url(self) -> str:
        """The SQLAlchemy URL; an SQLite file in ``data_dir`` when none is set."""
        if self.node.database_url:
            return self.node.database_url
        return f"sqlite:///{DataLayout(self.data_dir).database}"


def _describe(error: Mapping[str, Any]) -> str:
    loc = [str(part) for part in error["loc"]]
    key = ""
    if loc:
        head = loc[0]
        rest = ".".join(loc[1:])
        key = f"[{head}] {rest}" if rest else head
    return f"{key}: {error['msg']}" if key else str(error["msg"])


def load_settings(path: Path | None = None) -> Settings:
    """Load, merge and validate the settings.

    Parameters
    ----------
    path
        The TOML file. ``None`` uses ``$DICOMNODE_CONFIG``, else ``./settings.toml``
        when present, else the built-in defaults.

    Raises
    ------
    ConfigError
        With one line naming the file and the first bad key.
    """
    if path is None:
        if os.environ.get("DICOMNODE_CONFIG"):
            path = Path(os.environ["DICOMNODE_CONFIG"])
        elif Path("settings.toml").is_file():
            path = Path("settings.toml")
    data: dict[str, Any] = {}
    where = "built-in defaults"
    if path is not None:
        where = str(path)
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError as exc:
            raise ConfigError(f"{where}: file not found") from exc
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{where}: not valid TOML: {exc}") from exc
        if "source" in data:
            raise ConfigError(f"{where}: source: unknown key")
        web = data.get("web")
        if isinstance(web, dict) and "token" in web:
            raise ConfigError(
                f"{where}: [web] token: secrets are not read from the settings file; "
                "set DICOMNODE_WEB__TOKEN in the environment"
            )
        data["source"] = path.resolve()
    try:
        return Settings(**data)
    except ValidationError as exc:
        first = exc.errors()[0]
        raise ConfigError(f"{where}: {_describe(first)}") from exc
