"""Settings: defaults, overrides and one clear line for every bad value."""

from __future__ import annotations

from pathlib import Path

import pytest

from dicomnode.config import Settings, load_settings
from dicomnode.errors import ConfigError
from dicomnode.index.layout import DataLayout

ROOT = Path(__file__).resolve().parents[2]


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "settings.toml"
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture(autouse=True)
def _no_env_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for key in list(os.environ):
        if key.startswith("DICOMNODE_"):
            monkeypatch.delenv(key)


def test_documented_settings_file_equals_the_built_in_defaults() -> None:
    documented = load_settings(ROOT / "settings.toml")
    assert documented.model_dump(exclude={"source"}) == Settings().model_dump(exclude={"source"})


def test_environment_overrides_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path, "[node]\nport = 4000\nae_title = 'FILEAE'\n")
    monkeypatch.setenv("DICOMNODE_NODE__PORT", "11113")
    monkeypatch.setenv("DICOMNODE_NODE__ALLOWED_CALLING_AETS", '["CT1", "MR2"]')
    settings = load_settings(path)
    assert settings.node.port == 11113
    assert settings.node.ae_title == "FILEAE"
    assert settings.node.allowed_calling_aets == ("CT1", "MR2")


def test_data_dir_is_relative_to_the_settings_file(tmp_path: Path) -> None:
    settings = load_settings(write(tmp_path, "[node]\ndata_dir = 'store'\n"))
    assert settings.data_dir == (tmp_path / "store").resolve()
    assert settings.database_url == f"sqlite:///{(tmp_path / 'store').resolve()}/dicomnode.sqlite"


def test_the_database_file_and_models_folder_come_from_the_layout(tmp_path: Path) -> None:
    settings = load_settings(write(tmp_path, "[node]\ndata_dir = 'store'\n"))
    layout = DataLayout(settings.data_dir)
    assert settings.database_url == f"sqlite:///{layout.database}"
    assert settings.model_dirs == (layout.models,)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[node]\nport = 70000\n", "[node] port: Input should be less than or equal to 65535"),
        ("[node]\nport = 'x'\n", "[node] port:"),
        ("[node]\nae_title = 'WAY_TOO_LONG_AE_TITLE'\n", "[node] ae_title:"),
        ("[node]\nstudy_quiet_seconds = 0\n", "[node] study_quiet_seconds:"),
        ("[node]\nbogus = 1\n", "[node] bogus: Extra inputs are not permitted"),
        ("[worker]\ndevice = 'tpu'\n", "[worker] device:"),
        ("[nodes]\nport = 1\n", "nodes: Extra inputs are not permitted"),
        ("[node]\nallowed_hosts = ['10.0.0.300']\n", "allowed_hosts: Value error, not an address"),
        ("[node]\ntls_certificate = 'c.pem'\n", "tls_certificate and tls_private_key go together"),
        (
            "[[peers]]\nname = 'a'\nae_title = 'A'\nhost = 'h'\nport = 1\ntls_ca = 'ca.pem'\n",
            "a: tls_* settings need tls = true",
        ),
        ("[node\n", "not valid TOML"),
        (
            "[[routes]]\nname = 'r'\nmatch = { Modalty = 'MG' }\nsend_to = []\n",
            "'Modalty' is not a DICOM keyword",
        ),
        (
            "[[routes]]\nname = 'r'\nmatch = { Modality = 're:(' }\nsend_to = []\n",
            "bad regular expression",
        ),
        (
            "[[pipelines]]\nname = 'p'\nmodel = 'm'\nsend_to = ['nowhere']\n",
            "send_to names unknown peer 'nowhere'",
        ),
        (
            "[[peers]]\nname = 'a'\nae_title = 'A'\nhost = 'h'\nport = 1\n"
            "[[peers]]\nname = 'a'\nae_title = 'B'\nhost = 'h'\nport = 2\n",
            "duplicate name 'a'",
        ),
    ],
)
def test_bad_value_stops_with_one_line_naming_file_and_key(
    tmp_path: Path, text: str, message: str
) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as excinfo:
        load_settings(path)
    text_out = str(excinfo.value)
    assert "\n" not in text_out
    assert text_out.startswith(str(path))
    assert message in text_out


def test_bad_environment_value_names_the_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DICOMNODE_NODE__PORT", "not-a-port")
    with pytest.raises(ConfigError, match=r"\[node\] port"):
        load_settings(write(tmp_path, ""))


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="file not found"):
        load_settings(tmp_path / "absent.toml")


def test_routes_and_pipelines_are_parsed(tmp_path: Path) -> None:
    settings = load_settings(
        write(
            tmp_path,
            "[[peers]]\nname = 'pacs'\nae_title = 'ORTHANC'\nhost = '127.0.0.1'\nport = 4242\n"
            "[[routes]]\nname = 'mg'\nmatch = { Modality = ['MG', 're:^M'], Rows = 512 }\n"
            "send_to = ['pacs']\n"
            "[[pipelines]]\nname = 'ct'\nmatch = { Modality = 'CT', CallingAETitle = 'CT1' }\n"
            "model = 'ct-lesion-seg'\nsend_to = ['pacs']\n",
        )
    )
    assert settings.routes[0].match == {"Modality": ["MG", "re:^M"], "Rows": 512}
    assert settings.pipelines[0].model == "ct-lesion-seg"
    assert settings.peers[0].port == 4242


def test_receive_processes_default_to_one_per_cpu_and_one_for_port_zero(
    tmp_path: Path,
) -> None:
    import os

    auto = load_settings(write(tmp_path, "[node]\nport = 11112\n"))
    assert auto.receive_processes == max(1, min(4, os.cpu_count() or 1))
    assert load_settings(write(tmp_path, "[node]\nreceive_processes = 3\n")).receive_processes == 3
    # a port the OS picks cannot be shared between processes
    assert load_settings(write(tmp_path, "[node]\nport = 0\n")).receive_processes == 1
