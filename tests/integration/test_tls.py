"""DICOM TLS on the receiving side, against pynetdicom and DCMTK clients."""

from __future__ import annotations

import shutil
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from dicomnode.receive.status import Status
from tests.factories import encode, small_ct
from tests.nodeproc import NodeProcess, run_dicomnode
from tests.scu import dcmtk_env, send_file, try_associate
from tests.tls import Certificates, client_context, make_certificates

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl not installed")


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    return make_certificates(tmp_path_factory.mktemp("certs"))


@pytest.fixture(scope="module")
def tls_node(
    tmp_path_factory: pytest.TempPathFactory, certs: Certificates
) -> Iterator[NodeProcess]:
    with NodeProcess(
        tmp_path_factory.mktemp("tls-node"),
        probe_tls=client_context(certs),
        tls_certificate=str(certs.server_certificate),
        tls_private_key=str(certs.server_key),
    ) as running:
        yield running


def _closed_by_the_node(sock: socket.socket) -> bool:
    """Whether the node ends the connection (at once, or with a TLS alert)."""
    try:
        return sock.recv(1) == b""
    except (ssl.SSLError, ConnectionResetError):
        return True


def _logged(node: NodeProcess, text: str) -> bool:
    deadline = time.monotonic() + 10
    while text not in node.log_text() and time.monotonic() < deadline:
        time.sleep(0.1)
    return text in node.log_text()


def _instance(tmp_path: Path) -> tuple[Path, str]:
    ds = small_ct()
    path = tmp_path / "ct.dcm"
    path.write_bytes(encode(ds))
    return path, str(ds.SOPInstanceUID)


def test_instances_arrive_over_tls_and_plain_tcp_is_refused(
    tls_node: NodeProcess, certs: Certificates, tmp_path: Path
) -> None:
    path, uid = _instance(tmp_path)
    assert send_file(tls_node.port, path, tls=client_context(certs)) == Status.SUCCESS
    assert uid in {r.sop_instance_uid for r in tls_node.instances()}
    # A plain DICOM client's first bytes (an A-ASSOCIATE-RQ header) end the connection.
    with socket.create_connection(("127.0.0.1", tls_node.port), timeout=30) as plain:
        plain.sendall(bytes([0x01, 0x00, 0x00, 0x00, 0x00, 0xCD]) + bytes(205))
        assert _closed_by_the_node(plain)
    assert _logged(tls_node, "action=tls_handshake_failed")


def test_a_client_that_connects_and_says_nothing_does_not_hold_up_others(
    tls_node: NodeProcess, certs: Certificates
) -> None:
    # pynetdicom alone would sit in this client's handshake in its accept loop.
    with socket.create_connection(("127.0.0.1", tls_node.port), timeout=60):
        assert try_associate(tls_node.port, "DICOMNODE", "TLSSCU", tls=client_context(certs))


@pytest.mark.dcmtk
@pytest.mark.skipif(shutil.which("storescu") is None, reason="DCMTK not installed")
def test_dcmtk_storescu_sends_over_tls(
    tls_node: NodeProcess, certs: Certificates, tmp_path: Path
) -> None:
    path, uid = _instance(tmp_path)
    done = subprocess.run(
        ["storescu", "+tls", str(certs.client_key), str(certs.client_certificate),
         "+cf", str(certs.ca), "-aec", "DICOMNODE", "127.0.0.1", str(tls_node.port), str(path)],
        capture_output=True, text=True, env=dcmtk_env(), timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert uid in {r.sop_instance_uid for r in tls_node.instances()}


def test_with_a_client_ca_only_certified_clients_get_in(
    tmp_path: Path, certs: Certificates
) -> None:
    with NodeProcess(
        tmp_path / "node",
        probe_tls=client_context(certs, with_certificate=True),
        tls_certificate=str(certs.server_certificate),
        tls_private_key=str(certs.server_key),
        tls_client_ca=str(certs.ca),
    ) as strict:
        with socket.create_connection(("127.0.0.1", strict.port), timeout=30) as raw:
            try:
                with client_context(certs).wrap_socket(raw, server_hostname="localhost") as anon:
                    # TLS 1.3: the refusal arrives as an alert after the client's handshake.
                    anon.sendall(bytes([0x01, 0x00, 0x00, 0x00, 0x00, 0xCD]) + bytes(205))
                    assert _closed_by_the_node(anon)
            except ssl.SSLError:
                pass  # TLS 1.2: refused in the handshake itself
        assert _logged(strict, "action=tls_handshake_failed")
        certified = client_context(certs, with_certificate=True)
        assert try_associate(strict.port, "DICOMNODE", "CERTIFIED", tls=certified) is True


def test_a_certificate_that_cannot_be_loaded_stops_the_start_with_one_line(
    tmp_path: Path, certs: Certificates
) -> None:
    config = tmp_path / "settings.toml"
    config.write_text(
        f'[node]\nport = 0\ndata_dir = "{tmp_path / "var"}"\n'
        f'tls_certificate = "{tmp_path / "missing.pem"}"\n'
        f'tls_private_key = "{certs.server_key}"\n',
        encoding="utf-8",
    )
    done = run_dicomnode("--config", str(config), "serve")
    assert done.returncode != 0
    errors = [line for line in done.stderr.splitlines() if line.startswith("Error:")]
    assert errors == [
        f"Error: [node] tls_certificate / tls_private_key: cannot load {tmp_path / 'missing.pem'}"
        f" and {certs.server_key}: No such file or directory"
    ]


def _sender_config(folder: Path, node: NodeProcess, peer_lines: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    config = folder / "sender.toml"
    config.write_text(
        f'[node]\nae_title = "SENDER"\nport = 0\ndata_dir = "{folder / "var"}"\n'
        f'[[peers]]\nname = "secure"\nae_title = "DICOMNODE"\nhost = "127.0.0.1"\n'
        f"port = {node.port}\n{peer_lines}",
        encoding="utf-8",
    )
    return config


def _dicomnode(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return run_dicomnode("--config", str(config), *args)


def test_dicomnode_sends_to_a_tls_peer_and_checks_its_certificate(
    tls_node: NodeProcess, certs: Certificates, tmp_path: Path
) -> None:
    path, uid = _instance(tmp_path)
    trusted = _sender_config(
        tmp_path / "trusted", tls_node,
        f'tls = true\ntls_ca = "{certs.ca}"\ntls_server_name = "localhost"\n',
    )  # fmt: skip
    assert _dicomnode(trusted, "echo", "secure").returncode == 0
    done = _dicomnode(trusted, "send", str(path), "--to", "secure")
    assert done.returncode == 0, done.stdout + done.stderr
    assert uid in {r.sop_instance_uid for r in tls_node.instances()}
    # Without the CA the node's certificate is not trusted; without TLS no handshake.
    untrusted = _sender_config(tmp_path / "untrusted", tls_node, "tls = true\n")
    assert _dicomnode(untrusted, "echo", "secure").returncode != 0
    plain = _sender_config(tmp_path / "plain", tls_node, "")
    assert _dicomnode(plain, "echo", "secure").returncode != 0
