"""The command line as a user runs it: python -m dicomnode ..."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom.data import get_testdata_file

from dicomnode import __version__
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
