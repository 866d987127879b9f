"""An NBD endpoint that accepts and never speaks: every connect to it ends, on its timeout or at once
when cancelled, and a cancelled Open of a user's nbd+unix:// disk (-i disk) frees what it held."""

from __future__ import annotations

import shutil
import socket
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from tests.conftest import children_mentioning
from v2v.errors import V2VError
from v2v.grpcserver import RunningService, channel
from v2v.nbdclient import cancellable, connect, nbd_uri
from v2v.nbdserver import Nbdkit
from v2v.services.servicers import phase_servicer
from v2v.v1 import input_pb2, input_pb2_grpc
from v2v.v1 import types_pb2 as pb
from v2v.workdir import WorkDir


class MuteServer:
    """Accepts on a Unix socket and never sends a byte: a wedged or hostile NBD server."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.listener = socket.socket(socket.AF_UNIX)
        self.listener.bind(str(path))
        self.listener.listen(16)
        self.accepted: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return  # closed
            self.accepted.append(conn)

    def wait_accepted(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not self.accepted:
            assert time.monotonic() < deadline, "nobody connected"
            time.sleep(0.02)

    def all_hung_up(self, timeout: float) -> bool:
        """Whether every client that connected closed its end within `timeout` s."""
        deadline = time.monotonic() + timeout
        for conn in self.accepted:
            conn.settimeout(max(deadline - time.monotonic(), 0.01))
            try:
                if conn.recv(1) != b"":
                    return False
            except TimeoutError:
                return False
        return True

    def close(self) -> None:
        self.listener.close()
        for conn in self.accepted:
            conn.close()


@pytest.fixture
def mute() -> Iterator[MuteServer]:
    directory = Path(tempfile.mkdtemp(prefix="v2v-mute.", dir="/tmp"))  # short: socket paths are limited
    server = MuteServer(directory / "mute.sock")
    yield server
    server.close()
    shutil.rmtree(directory)


def cancel_after(seconds: float) -> threading.Event:
    event = threading.Event()
    threading.Timer(seconds, event.set).start()
    return event


def test_handshake_times_out_with_a_clear_message(mute):
    start = time.monotonic()
    with pytest.raises(V2VError) as info, connect(str(mute.path), timeout=1.0):
        pass
    assert time.monotonic() - start < 5
    err = info.value
    assert err.code == pb.ERROR_CODE_BAD_INPUT
    assert err.message == (f"cannot connect to {nbd_uri(mute.path)}: the server accepted the connection but "
                           "did not complete the NBD handshake within 1 s")
    assert mute.all_hung_up(timeout=1)  # while the error is still held


def test_cancel_from_another_thread_interrupts_the_handshake(mute):
    cancel = cancel_after(0.5)
    start = time.monotonic()
    with pytest.raises(V2VError) as info, connect(str(mute.path), timeout=60, cancel=cancel):
        pass
    assert time.monotonic() - start < 3
    assert info.value.code == pb.ERROR_CODE_CANCELLED
    assert mute.path.name in info.value.message
    assert mute.all_hung_up(timeout=1)


def test_cancelled_server_start_stops_the_server(mute, tmp_path):
    # nbdkit's nbd plugin relays to the mute server: its own handshake never completes, so neither
    # does ours with it, until the ambient cancel of the operation is set.
    sock = Path(tempfile.mkdtemp(prefix="v2v-relay.", dir="/tmp")) / "relay.sock"
    server = Nbdkit(sock, tmp_path / "nbdkit.log", "the relay", "nbd", [f"socket={mute.path}"])
    start = time.monotonic()
    try:
        with pytest.raises(V2VError) as info, cancellable(cancel_after(1.0)), server:
            pass
        assert info.value.code == pb.ERROR_CODE_CANCELLED
        assert time.monotonic() - start < 6
        assert not server.process.running()
        assert children_mentioning(str(mute.path)) == []
    finally:
        server.stop()
        shutil.rmtree(sock.parent)


@pytest.fixture
def input_stub() -> Iterator[tuple[input_pb2_grpc.InputStub, RunningService]]:
    directory = Path(tempfile.mkdtemp(prefix="v2v-svc.", dir="/tmp"))
    service = RunningService(f"unix:{directory}/input.sock", phase_servicer("input"))
    ch = channel(f"unix:{directory}/input.sock")
    try:
        yield input_pb2_grpc.InputStub(ch), service
    finally:
        ch.close()
        service.stop()
        shutil.rmtree(directory)


def mute_disk_input(kind: str, mute: MuteServer, tmp_path: Path) -> input_pb2.InputSpec:
    """The two ways a user's Open names an NBD endpoint: a URI to -i disk, an nbd network disk to -i libvirtxml."""
    if kind == "disk":
        return input_pb2.InputSpec(disk=input_pb2.DiskInput(paths=[nbd_uri(mute.path)]))
    xml = tmp_path / "mute.xml"
    xml.write_text(f"""<domain type="kvm"><name>mute</name><memory>1048576</memory><devices>
        <disk type="network" device="disk"><driver name="qemu" type="raw"/>
        <source protocol="nbd"><host transport="unix" socket="{mute.path}"/></source><target dev="vda"/></disk>
        </devices></domain>""")
    return input_pb2.InputSpec(libvirtxml=input_pb2.LibvirtXmlInput(path=str(xml)))


@pytest.mark.parametrize("kind", ["disk", "libvirtxml"])
@pytest.mark.parametrize("how", ["cancel", "deadline"])
def test_open_of_a_mute_nbd_disk_ends_when_the_client_gives_up(mute, input_stub, workroot, tmp_path, how, kind):
    stub, _ = input_stub
    wd = WorkDir.create("mute", workroot)
    request = input_pb2.OpenRequest(workdir=wd.name, guest="mute", input=mute_disk_input(kind, mute, tmp_path))
    start = time.monotonic()
    call = stub.Open.future(request, timeout=1.0 if how == "deadline" else None)
    mute.wait_accepted(10)
    if how == "cancel":
        time.sleep(1)
        call.cancel()
    with pytest.raises((grpc.RpcError, grpc.FutureCancelledError)):
        call.result(timeout=10)
    assert call.code() == (grpc.StatusCode.CANCELLED if how == "cancel" else grpc.StatusCode.DEADLINE_EXCEEDED)
    # The service's connect to the endpoint was interrupted, far before its 30 s handshake timeout.
    assert mute.all_hung_up(timeout=5)
    assert time.monotonic() - start < 10
    described = stub.Describe(input_pb2.DescribeRequest(workdir=wd.name), timeout=5)
    assert described.exists and not described.open
    assert children_mentioning(str(mute.path)) == [] and children_mentioning(str(workroot)) == []


@pytest.mark.parametrize("kind", ["disk", "libvirtxml"])
def test_cancelled_open_answers_cancelled(mute, workroot, tmp_path, kind):
    svc, _, _ = phase_servicer("input")
    wd = WorkDir.create("mute", workroot)
    request = input_pb2.OpenRequest(workdir=wd.name, guest="mute", input=mute_disk_input(kind, mute, tmp_path))
    with pytest.raises(V2VError) as info, cancellable(cancel_after(1.0)):
        svc.open(request)
    assert info.value.code == pb.ERROR_CODE_CANCELLED and info.value.step == "open"
    assert mute.all_hung_up(timeout=5)
    assert not svc.describe(wd.name).open
