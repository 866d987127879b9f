"""A Convert whose client leaves during the appliance launch (cancel, Ctrl-C of an embedded run, a
deadline) stops that launch: no qemu survives and the service stays free for the next call. The
cancel used to ask the busy guestfs handle for qemu's pid from the gRPC callback and deadlock the
service (the handle lock against the GIL the launch's event callback needed)."""

from __future__ import annotations

import os
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.conftest import V2V
from v2v.errors import V2VError
from v2v.grpcserver import RunningService, channel
from v2v.process import descendants
from v2v.services.convert.appliance import Appliance
from v2v.services.servicers import phase_servicer
from v2v.v1 import convert_pb2, convert_pb2_grpc, input_pb2, input_pb2_grpc
from v2v.v1 import types_pb2 as pb

QEMU_APPEARS = 120.0  # a launch builds (or checks) the supermin appliance before it starts qemu
GONE_WITHIN = 30.0
STILL_GONE_AFTER = 10.0


def qemus_of(text: str) -> list[str]:
    """qemu-system processes descended from this test process whose command line mentions `text`
    (read with ps, independent of how the service finds them)."""
    rows = [line.split(None, 2) for line in subprocess.run(
        ["ps", "-ww", "-e", "-o", "pid=,ppid=,args="], capture_output=True, text=True, check=True).stdout.splitlines()]
    parent = {int(r[0]): int(r[1]) for r in rows}
    found = []
    for pid_text, _, args in (r for r in rows if len(r) == 3):
        pid = int(pid_text)
        ancestor = parent.get(pid)
        while ancestor not in (None, 0, 1) and ancestor != os.getpid():
            ancestor = parent.get(ancestor)
        if ancestor == os.getpid() and args.split()[0].rsplit("/", 1)[-1].startswith("qemu-system") \
                and text in args:
            found.append(f"{pid}: {args}")
    return found


def wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"{what} (after {timeout:.0f} s)"
        time.sleep(0.2)


class Services:
    """The input and convert services behind real gRPC servers, on unix sockets."""

    def __init__(self, root: Path) -> None:
        self.opened = input_pb2.OpenResponse()
        self.input = RunningService(f"unix:{root}/input.sock", phase_servicer("input"))
        self.convert = RunningService(f"unix:{root}/convert.sock", phase_servicer("convert"))
        self.input_ch = channel(f"unix:{root}/input.sock")
        self.convert_ch = channel(f"unix:{root}/convert.sock")

    def open(self, workdir: str, disk: Path) -> None:
        self.opened = input_pb2_grpc.InputStub(self.input_ch).Open(input_pb2.OpenRequest(
            workdir=workdir, guest="g", input=input_pb2.InputSpec(disk=input_pb2.DiskInput(paths=[str(disk)]))),
            timeout=60)

    def close(self, workdir: str) -> None:
        input_pb2_grpc.InputStub(self.input_ch).Close(input_pb2.CloseRequest(workdir=workdir), timeout=60)

    def request(self, workdir: str) -> convert_pb2.ConvertRequest:
        return convert_pb2.ConvertRequest(workdir=workdir, guest="g", source=self.opened.source,
                                          disks=self.opened.sockets,
                                          options=convert_pb2.ConvertOptions(inspect_only=True))

    def start_convert(self, workdir: str, timeout: float | None = None) -> tuple[grpc.Future, threading.Thread,
                                                                              list[grpc.RpcError]]:
        call = convert_pb2_grpc.ConvertStub(self.convert_ch).Convert(self.request(workdir), timeout=timeout)
        ended: list[grpc.RpcError] = []

        def drain() -> None:
            try:
                for _ in call:
                    pass
            except grpc.RpcError as exc:
                ended.append(exc)

        reader = threading.Thread(target=drain, daemon=True)
        reader.start()
        return call, reader, ended

    def convert_to_the_end(self, workdir: str) -> convert_pb2.ConvertResult:
        events = convert_pb2_grpc.ConvertStub(self.convert_ch).Convert(self.request(workdir), timeout=600)
        return [ev.result for ev in events if ev.HasField("result")][0]

    def healthy(self) -> bool:
        resp = health_pb2_grpc.HealthStub(self.convert_ch).Check(
            health_pb2.HealthCheckRequest(service="v2v.v1.Convert"), timeout=10)
        return resp.status == health_pb2.HealthCheckResponse.SERVING

    def stop(self) -> None:
        self.input_ch.close()
        self.convert_ch.close()
        self.convert.stop()
        self.input.stop()


@pytest.fixture
def services() -> Iterator[Services]:
    sockdir = Path(tempfile.mkdtemp(prefix="v2v-s.", dir="/tmp"))
    svc = Services(sockdir)
    try:
        yield svc
    finally:
        svc.stop()
        for p in sockdir.iterdir():
            p.unlink()
        sockdir.rmdir()


def assert_stopped(services: Services, reader: threading.Thread, ended: list[grpc.RpcError],
                   code: grpc.StatusCode) -> None:
    """The stream ended with `code`, the appliance's qemu went and stays gone, the service answers."""
    reader.join(GONE_WITHIN)
    assert not reader.is_alive() and [e.code() for e in ended] == [code]
    marker = services.opened.sockets[0]
    wait_for(lambda: qemus_of(marker) == [], GONE_WITHIN, "the appliance's qemu still runs")
    time.sleep(STILL_GONE_AFTER)
    assert qemus_of(marker) == []
    assert services.healthy()


def test_descendants_are_found_through_the_parent_chain():
    """A grandchild (a shell's child) is found with its argv; an exited, reaped child is not."""
    with subprocess.Popen(["sh", "-c", "sleep 61 & wait"], start_new_session=True) as shell:
        try:
            wait_for(lambda: ["sleep", "61"] in descendants().values(), 10, "the shell's sleep never showed")
            assert descendants()[shell.pid][0] == "sh"
        finally:
            os.killpg(shell.pid, signal.SIGKILL)
            shell.wait()
    assert shell.pid not in descendants()


def test_a_kill_before_the_launch_stops_it_from_starting(tmp_path):
    """The cancel came first (the appliance exists, its launch has not begun): the launch fails
    CANCELLED at once, with no qemu started."""
    appliance = Appliance([str(tmp_path / "in0.sock")], convert_pb2.ConvertOptions(), tmp_path / "appliance.log")
    try:
        appliance.kill()
        t0 = time.monotonic()
        with pytest.raises(V2VError) as err:
            appliance.launch()
        assert err.value.code == pb.ERROR_CODE_CANCELLED and time.monotonic() - t0 < 1
        assert qemus_of(str(tmp_path)) == []
    finally:
        appliance.close()


@pytest.mark.appliance
def test_cancel_during_launch_kills_the_appliance_and_frees_the_service(services, phony, workroot):
    """Cancel once qemu runs (the launch goes on for ~20-40 s under TCG); a second Convert on the
    same guest launches again and its deadline, passing during that launch, stops it too; a third
    one's deadline passes before its qemu exists (so the cancel must be kept for it); the fourth,
    started right away, converts: no cancel leaked into it, no late kill hit its appliance."""
    wd = "g"
    services.open(wd, phony / "debian-single.img")
    sock = services.opened.sockets[0]
    try:
        call, reader, ended = services.start_convert(wd)
        wait_for(lambda: qemus_of(sock) != [], QEMU_APPEARS, "the appliance's qemu never started")
        time.sleep(2)
        call.cancel()
        assert_stopped(services, reader, ended, grpc.StatusCode.CANCELLED)

        _, reader, ended = services.start_convert(wd, timeout=8)
        wait_for(lambda: qemus_of(sock) != [] or not reader.is_alive(), QEMU_APPEARS,
                 "the second launch never started qemu")
        assert_stopped(services, reader, ended, grpc.StatusCode.DEADLINE_EXCEEDED)

        _, reader, ended = services.start_convert(wd, timeout=0.5)
        reader.join(GONE_WITHIN)
        assert [e.code() for e in ended] == [grpc.StatusCode.DEADLINE_EXCEEDED]
        assert services.convert_to_the_end(wd).inspection.distro == "debian"
        assert qemus_of(sock) == []
    finally:
        services.close(wd)


@pytest.mark.appliance
def test_ctrl_c_of_an_embedded_run_during_launch(phony, workroot, tmp_path):
    """`v2v` with its services in-process, interrupted while its appliance starts: it exits soon,
    its qemu with it."""
    env = dict(os.environ, V2V_WORKDIR_ROOT=str(workroot))
    log = tmp_path / "v2v.stderr"
    with open(log, "w") as stderr, subprocess.Popen(
            [str(V2V), "-i", "disk", str(phony / "debian-single.img"), "-o", "local", "-os", str(tmp_path),
             "--accel", "tcg"], env=env, stdout=subprocess.DEVNULL, stderr=stderr, start_new_session=True) as run:
        try:
            wait_for(lambda: qemus_of(str(workroot)) != [] or run.poll() is not None, QEMU_APPEARS,
                     "the appliance's qemu never started")
            assert run.poll() is None, log.read_text()
            run.send_signal(signal.SIGINT)  # to v2v alone: a terminal's Ctrl-C would also reach qemu
            assert run.wait(GONE_WITHIN) != 0
        finally:
            if run.poll() is None:
                os.killpg(run.pid, signal.SIGKILL)  # its appliance too, which shares its group
    time.sleep(STILL_GONE_AFTER)
    # Not qemus_of(): a qemu that outlived v2v is no descendant of ours any more.
    survivors = subprocess.run(["pgrep", "-a", "-f", str(workroot)], capture_output=True, text=True, check=False)
    assert [p for p in survivors.stdout.splitlines() if "qemu-system" in p] == []
