"""The command line as a user runs it: python -m dicomnode ..."""

from __future__ import annotations

import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom.data import get_testdata_file

from dicomnode import __version__
from dicomnode.index.db import upgrade_database
from tests.factories import encode, small_ct
from tests.nodeproc import NodeProcess, free_port, run_dicomnode


def dicomnode(
    *args: str, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return run_dicomnode(*args, cwd=cwd, env=env)


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeProcess]:
    with NodeProcess(tmp_path_factory.mktemp("clinode")) as running:
        yield running


def test_version_is_printed(tmp_path: Path) -> None:
    done = dicomnode("--version", cwd=tmp_path)
    assert done.returncode == 0
    assert __version__ in done.stdout


def test_echo_reports_success(node: NodeProcess, tmp_path: Path) -> None:
    done = dicomnode("echo", f"DICOMNODE@127.0.0.1:{node.port}", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "status 0x0000" in done.stdout


def test_echo_to_a_closed_port_fails(tmp_path: Path) -> None:
    done = dicomnode("echo", f"NOBODY@127.0.0.1:{free_port()}", cwd=tmp_path)
    assert done.returncode == 1
    assert "cannot associate" in done.stderr


def test_send_folder_stores_everything_and_exits_zero(node: NodeProcess, tmp_path: Path) -> None:
    folder = tmp_path / "study"
    (folder / "nested").mkdir(parents=True)
    uids = []
    for i in range(5):
        ds = small_ct()
        uids.append(ds.SOPInstanceUID)
        (folder / ("nested" if i % 2 else ".") / f"{i}.dcm").write_bytes(encode(ds))
    done = dicomnode("send", str(folder), "--to", f"DICOMNODE@127.0.0.1:{node.port}", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "sent 5 of 5" in done.stdout
    assert set(uids) <= {r.sop_instance_uid for r in node.instances()}


def test_send_exits_non_zero_with_the_count_of_failures(node: NodeProcess, tmp_path: Path) -> None:
    (tmp_path / "good.dcm").write_bytes(encode(small_ct()))
    (tmp_path / "notdicom.txt").write_text("hello")
    truncated = encode(small_ct(rows=64, columns=64))
    (tmp_path / "truncated.dcm").write_bytes(truncated[:-500])
    done = dicomnode(
        "send", "good.dcm", "notdicom.txt", "truncated.dcm",
        "--to", f"DICOMNODE@127.0.0.1:{node.port}", cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 1
    assert "sent 1 of 3" in done.stdout and "2 failed" in done.stdout
    assert "0xC000" in done.stderr


def test_send_uses_a_peer_named_in_settings(node: NodeProcess, tmp_path: Path) -> None:
    (tmp_path / "settings.toml").write_text(
        "[[peers]]\nname = 'here'\nae_title = 'DICOMNODE'\n"
        f"host = '127.0.0.1'\nport = {node.port}\n"
    )
    ct = get_testdata_file("CT_small.dcm", download=False)
    assert ct is not None
    done = dicomnode("send", ct, "--to", "here", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    unknown = dicomnode("send", ct, "--to", "elsewhere", cwd=tmp_path)
    assert unknown.returncode == 2
    assert "unknown peer 'elsewhere'" in unknown.stderr


def test_studies_lists_what_the_index_holds(node: NodeProcess, tmp_path: Path) -> None:
    ds = small_ct()
    (tmp_path / "one.dcm").write_bytes(encode(ds))
    dicomnode("send", "one.dcm", "--to", f"DICOMNODE@127.0.0.1:{node.port}", cwd=tmp_path)
    done = dicomnode("--config", str(node.config), "studies", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert ds.StudyInstanceUID in done.stdout
    assert "CT" in done.stdout


def test_db_upgrade_creates_the_database(tmp_path: Path) -> None:
    done = dicomnode("db", "upgrade", cwd=tmp_path, env={"DICOMNODE_NODE__DATA_DIR": "store"})
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "store" / "dicomnode.sqlite").is_file()


def _settings_file(folder: Path, data_dir: str = "store") -> Path:
    config = folder / f"{data_dir}.toml"
    config.write_text(f'[node]\ndata_dir = "{folder / data_dir}"\n')
    return config


def _revision(database: Path) -> str:
    with sqlite3.connect(database) as connection:
        (row,) = connection.execute("SELECT version_num FROM alembic_version").fetchall()
    return str(row[0])


def _error_lines(done: subprocess.CompletedProcess[str]) -> list[str]:
    return [line for line in done.stderr.splitlines() if line.strip()]


@pytest.mark.parametrize(
    "command", [("studies",), ("jobs",), ("deliveries",), ("jobs", "retry", "1")]
)
def test_read_only_commands_leave_an_old_index_alone_and_say_to_upgrade(
    command: tuple[str, ...], tmp_path: Path
) -> None:
    config = _settings_file(tmp_path)
    database = tmp_path / "store" / "dicomnode.sqlite"
    upgrade_database(f"sqlite:///{database}", "0003")
    done = dicomnode(*command, "--config", str(config), cwd=tmp_path)
    assert done.returncode == 1
    (line,) = _error_lines(done)
    assert "revision 0003" in line and "run `dicomnode db upgrade`" in line
    assert _revision(database) == "0003"  # not migrated behind the node's back


def test_read_only_commands_on_a_missing_index_say_so_in_one_line(tmp_path: Path) -> None:
    config = _settings_file(tmp_path)
    done = dicomnode("--config", str(config), "deliveries", "retry", "--failed", cwd=tmp_path)
    assert done.returncode == 1
    (line,) = _error_lines(done)
    assert f"no index at {tmp_path / 'store' / 'dicomnode.sqlite'}" in line
    assert not (tmp_path / "store").exists()  # nothing created


def test_read_only_commands_read_an_index_at_the_latest_revision(tmp_path: Path) -> None:
    config = _settings_file(tmp_path)
    assert dicomnode("--config", str(config), "db", "upgrade", cwd=tmp_path).returncode == 0
    done = dicomnode("--config", str(config), "studies", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "Study Instance UID" in done.stdout


def test_shared_options_are_accepted_after_the_command_and_win(tmp_path: Path) -> None:
    before, after = _settings_file(tmp_path, "before"), _settings_file(tmp_path, "after")
    done = dicomnode(
        "--config", str(before), "--log-level", "INFO",
        "db", "upgrade", "--config", str(after), "--log-level", "WARNING", "--log-json",
        cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "after" / "dicomnode.sqlite").is_file()
    assert not (tmp_path / "before").exists()
    assert "db_upgraded" not in done.stderr  # an INFO record: --log-level WARNING won


def test_log_json_after_the_command_writes_json_records(tmp_path: Path) -> None:
    config = _settings_file(tmp_path)
    done = dicomnode("db", "upgrade", "--config", str(config), "--log-json", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    records = [line for line in done.stderr.splitlines() if '"db_upgraded"' in line]
    assert records and records[0].startswith("{")


def test_bad_configuration_stops_the_start_with_one_line(tmp_path: Path) -> None:
    (tmp_path / "settings.toml").write_text("[node]\nport = 99999\n")
    done = dicomnode("run", cwd=tmp_path)
    assert done.returncode == 1
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1
    assert "settings.toml: [node] port" in lines[0]


def test_sigterm_stops_the_node_cleanly(tmp_path: Path) -> None:
    node = NodeProcess(tmp_path).start()
    assert node.stop() == 0
    assert "action=node_stopped" in node.log_text()


@pytest.mark.postgres
def test_node_indexes_into_postgresql(postgres_url: str, tmp_path: Path) -> None:
    with NodeProcess(tmp_path, database_url=postgres_url) as node:
        ds = small_ct()
        (tmp_path / "pg.dcm").write_bytes(encode(ds))
        done = dicomnode("send", "pg.dcm", "--to", f"DICOMNODE@127.0.0.1:{node.port}", cwd=tmp_path)
        assert done.returncode == 0, done.stderr
        from sqlalchemy import create_engine, text

        engine = create_engine(postgres_url)
        with engine.connect() as conn:
            uids = conn.execute(text("SELECT sop_instance_uid FROM instances")).scalars().all()
        engine.dispose()
        assert uids == [ds.SOPInstanceUID]
        assert not (tmp_path / "var" / "dicomnode.sqlite").exists()


@pytest.mark.parametrize("command", ["train", "evaluate"])
def test_train_and_evaluate_take_data_or_a_generator_and_name_the_known_ones(
    command: str, tmp_path: Path
) -> None:
    neither = dicomnode(command, "ct-lesion-seg", cwd=tmp_path)
    both = dicomnode(command, "ct-lesion-seg", "--data", ".", "--generator", "x", cwd=tmp_path)
    unknown = dicomnode(command, "ct-lesion-seg", "--generator", "mri", cwd=tmp_path)
    none_here = dicomnode(command, "mg-4view", "--generator", "anatomical", cwd=tmp_path)

    for done in (neither, both):
        assert done.returncode == 2 and "either --data or --generator" in done.stderr
    assert unknown.returncode == 1
    assert "no generator 'mri'; it has: anatomical" in unknown.stderr
    assert none_here.returncode == 1 and "no generator 'anatomical'" in none_here.stderr
    assert "it has" not in none_here.stderr


def test_evaluate_refuses_an_option_that_is_not_key_equals_value(tmp_path: Path) -> None:
    done = dicomnode(
        "evaluate", "ct-lesion-seg", "--generator", "anatomical", "--option", "weights",
        cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 2 and "'weights' is not KEY=VALUE" in done.stderr
