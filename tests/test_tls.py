"""Mutual TLS on TCP listeners (`v2v certs`, `--tls-dir`) and the modes of Unix sockets: a service
accepts a client with a certificate from its CA and refuses every other one."""

import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.conftest import V2V
from v2v.errors import V2VError
from v2v.grpcserver import channel, serve
from v2v.tls import TLSFiles

GRPCURL = Path(sys.executable).parent / "grpcurl"


def make_certs(directory: Path) -> Path:
    subprocess.run([V2V, "certs", str(directory)], check=True, capture_output=True, timeout=60)
    return directory


@pytest.fixture(scope="module")
def certs(tmp_path_factory) -> Path:
    return make_certs(tmp_path_factory.mktemp("tls") / "certs")


@pytest.fixture(scope="module")
def stranger_certs(tmp_path_factory) -> Path:
    """A second, unrelated CA with its own client certificate."""
    return make_certs(tmp_path_factory.mktemp("tls") / "stranger")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def tls_service(certs):
    """`v2v serve copier` on TCP with mutual TLS, as a deployment runs it."""
    address = f"127.0.0.1:{free_port()}"
    proc = subprocess.Popen([V2V, "serve", "copier", "--listen", address, "--tls-dir", str(certs)],
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 30
    while subprocess.run(["ss", "-Hltn", f"sport = :{address.rsplit(':', 1)[1]}"], capture_output=True,
                         text=True, check=True).stdout.strip() == "":
        assert proc.poll() is None, proc.stderr.read()
        assert time.monotonic() < deadline, "v2v serve copier did not listen"
        time.sleep(0.1)
    yield address
    proc.terminate()
    assert proc.wait(timeout=30) == 0


def health_check(ch: grpc.Channel) -> int:
    with ch:
        return health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service="v2v.v1.Copier"),
                                                    timeout=10).status


def refused(ch: grpc.Channel) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as exc:
        health_check(ch)
    return exc.value.code()


def test_certs_make_a_ca_and_private_keys(certs):
    assert stat.S_IMODE(certs.stat().st_mode) == 0o700
    for key in ("ca.key", "server.key", "client.key"):
        assert stat.S_IMODE((certs / key).stat().st_mode) == 0o600
    verify = subprocess.run(["openssl", "verify", "-CAfile", certs / "ca.pem", certs / "server.pem",
                             certs / "client.pem"], capture_output=True, text=True, check=False)
    assert verify.returncode == 0, verify.stderr


def test_client_with_a_certificate_from_the_ca_is_served(tls_service, certs):
    assert health_check(channel(tls_service, TLSFiles.from_dir(certs, "client"))) == \
        health_pb2.HealthCheckResponse.SERVING


def test_standard_tools_connect_with_the_same_files(tls_service, certs):
    p = subprocess.run([GRPCURL, "-cacert", certs / "ca.pem", "-cert", certs / "client.pem", "-key",
                        certs / "client.key", tls_service, "list"], capture_output=True, text=True, timeout=60,
                       check=False)
    assert p.returncode == 0, p.stderr
    assert "v2v.v1.Copier" in p.stdout.split()


def test_client_without_a_certificate_is_refused(tls_service, certs):
    creds = grpc.ssl_channel_credentials(root_certificates=(certs / "ca.pem").read_bytes())
    assert refused(grpc.secure_channel(tls_service, creds)) == grpc.StatusCode.UNAVAILABLE


def test_client_of_another_ca_is_refused(tls_service, certs, stranger_certs):
    # It trusts the server (our CA), but presents a certificate our CA never signed.
    theirs = TLSFiles(ca=certs / "ca.pem", cert=stranger_certs / "client.pem", key=stranger_certs / "client.key")
    assert refused(channel(tls_service, theirs)) == grpc.StatusCode.UNAVAILABLE


def test_plaintext_client_is_refused(tls_service):
    assert refused(grpc.insecure_channel(tls_service)) == grpc.StatusCode.UNAVAILABLE


def test_missing_tls_files_stop_serve_at_once(tmp_path):
    p = subprocess.run([V2V, "serve", "copier", "--listen", "127.0.0.1:1", "--tls-dir", str(tmp_path)],
                       capture_output=True, text=True, timeout=60, check=False)
    assert p.returncode == 2
    assert f"TLS directory {tmp_path}: missing" in p.stderr and "v2v certs" in p.stderr


def test_plaintext_tcp_is_refused_unless_asked_for(monkeypatch):
    # A TCP port without TLS lets anyone who reaches it submit guests or remove their work.
    monkeypatch.delenv("V2V_TLS_DIR", raising=False)
    p = subprocess.run([V2V, "serve", "copier", "--listen", f"127.0.0.1:{free_port()}"],
                       capture_output=True, text=True, timeout=60, check=False)
    assert p.returncode == 2
    assert "without TLS" in p.stderr and "--tls-dir" in p.stderr and "--insecure" in p.stderr
    with pytest.raises(V2VError, match="without TLS"):
        serve(f"127.0.0.1:{free_port()}", [])


def test_insecure_serves_plaintext_tcp_and_says_so(monkeypatch):
    monkeypatch.delenv("V2V_TLS_DIR", raising=False)
    address = f"127.0.0.1:{free_port()}"
    proc = subprocess.Popen([V2V, "serve", "copier", "--listen", address, "--insecure"],
                            stderr=subprocess.PIPE, text=True)
    try:
        warning = proc.stderr.readline()
        assert "WARNING: plaintext TCP on " + address in warning and "--insecure" in warning
        assert "listening on" in proc.stderr.readline()
        assert health_check(grpc.insecure_channel(address)) == health_pb2.HealthCheckResponse.SERVING
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_unix_socket_is_private_in_a_private_directory(tmp_path):
    made = tmp_path / "run" / "svc.sock"
    # An existing directory (a shared volume, /tmp) keeps its own mode.
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o755)
    server = serve([f"unix:{made}", f"unix:{shared}/svc.sock"], [])
    try:
        assert stat.S_IMODE(made.stat().st_mode) == stat.S_IMODE((shared / "svc.sock").stat().st_mode) == 0o600
        assert stat.S_IMODE(made.parent.stat().st_mode) == 0o700
        assert stat.S_IMODE(shared.stat().st_mode) == 0o755
    finally:
        server.stop(None)
