"""The copier service against real nbdcopy and nbdkit: progress, failures, cancellation."""

import os
import re
import signal
import subprocess
import time
from contextlib import ExitStack
from pathlib import Path

import grpc
import pytest

from v2v import grpcserver
from v2v.errors import V2VError, from_rpc_error
from v2v.nbdserver import Nbdkit, nbd_uri
from v2v.services.copier.nbdcopy import parse_progress
from v2v.services.copier.progress import ProgressThrottle
from v2v.services.copier.service import CopierService
from v2v.units import human_size
from v2v.v1 import copier_pb2, copier_pb2_grpc
from v2v.v1 import types_pb2 as pb
from v2v.workdir import WorkDir

MiB = 1024**2


def nbdcopies() -> list[str]:
    """The nbdcopy processes this test process started and has not reaped."""
    res = subprocess.run(["pgrep", "-a", "-x", "-P", str(os.getpid()), "nbdcopy"], capture_output=True, text=True)
    return res.stdout.splitlines()


def wait_until(condition, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def make_disk(path: Path, size: int, data: list[tuple[int, int]]) -> Path:
    """A sparse raw file with random bytes in the (offset, length) regions."""
    with open(path, "wb") as f:
        f.truncate(size)
        for offset, length in data:
            f.seek(offset)
            f.write(os.urandom(length))
    return path


@pytest.fixture
def service():
    svc = CopierService()
    yield svc
    svc.shutdown()
    assert nbdcopies() == []


class Disks:
    """Source and target files of a guest's disks, each served by its own nbdkit."""

    def __init__(self, workdir: WorkDir, tmp_path: Path, stack: ExitStack) -> None:
        self.workdir = workdir
        self.tmp_path = tmp_path
        self.stack = stack
        self.pairs: list[tuple[Path, Path]] = []

    def serve(self, sock: Path, args: list[str], filters: list[str], readonly: bool) -> None:
        log = self.workdir.log(f"{sock.stem}.log")
        self.stack.enter_context(Nbdkit(sock, log, sock.stem, "file", args, filters=filters, readonly=readonly))

    def add(self, size: int, data: list[tuple[int, int]], read_delay: str = "") -> copier_pb2.DiskCopy:
        """A disk to copy; `read_delay` slows its source down enough to act on the copy midway."""
        n = len(self.pairs)
        src = make_disk(self.tmp_path / f"src{n}.raw", size, data)
        dst = make_disk(self.tmp_path / f"dst{n}.raw", size, [])
        if read_delay:
            self.serve(self.workdir.in_sock(n), [f"file={src}", f"delay-read={read_delay}"], ["delay"], True)
        else:
            self.serve(self.workdir.in_sock(n), [f"file={src}"], [], True)
        self.serve(self.workdir.out_sock(n), [f"file={dst}"], [], False)
        self.pairs.append((src, dst))
        return copier_pb2.DiskCopy(disk=n, source=str(self.workdir.in_sock(n)),
                                   target=nbd_uri(self.workdir.out_sock(n)))


@pytest.fixture
def disks(workdir, tmp_path):
    with ExitStack() as stack:
        yield Disks(workdir, tmp_path, stack)


def request(workdir, copies, **options) -> copier_pb2.CopyRequest:
    return copier_pb2.CopyRequest(workdir=str(workdir.path), guest="guest", disks=copies,
                                  options=copier_pb2.CopyOptions(**options))


SLOW = {"requests": 1, "connections": 1}  # one read at a time: the delay filter then sets the pace


# ---------------------------------------------------------------- pure logic

def test_parse_progress():
    assert [parse_progress(s) for s in ("0/100\n", "37/100\n", "100/100", " 5/100\r\n")] == [0, 37, 100, 5]
    assert [parse_progress(s) for s in ("", "\n", "50%", "3/10", "x/100", "-1/100")] == [None] * 6


def test_human_size():
    assert [human_size(n) for n in (0, 512, 1536, 210 * MiB, 4 * 1024 * MiB, 15 * 1024**5)] == [
        "0 bytes", "512 bytes", "1.5 KiB", "210 MiB", "4.0 GiB", "15360 TiB"]


def test_progress_throttle():
    events, clock = [], [10.0]
    throttle = ProgressThrottle("g", 3, 1000, events.append, interval=0.25, clock=lambda: clock[0])
    for t, done in ((10.1, 0), (10.2, 100), (10.4, 200), (10.5, 1000), (10.6, 1000)):
        clock[0] = t
        throttle.update(done)
    throttle.finish()
    progress = [e.progress for e in events]
    assert [(p.disk, p.bytes_done, p.bytes_total) for p in progress] == [(3, 0, 1000), (3, 200, 1000), (3, 1000, 1000)]
    assert progress[2].rate == pytest.approx(1000 / 0.5)


# ---------------------------------------------------------------- real copies

def test_copy_two_disks_with_progress(service, workdir, disks):
    copies = [disks.add(256 * MiB, [(0, MiB), (100 * MiB, 8 * MiB), (255 * MiB, MiB)]),
              disks.add(200 * MiB, [(3 * MiB, 5 * MiB)])]
    copies[1].source = nbd_uri(Path(copies[1].source))  # a URI works as well as a socket path
    copies[1].size = 200 * MiB  # given: the source is not asked
    events = list(service.copy(request(workdir, copies, flush=True, target_is_zero=True)))

    steps = [e.step for e in events if e.HasField("step")]
    assert {(s.disk, s.state) for s in steps} == {(d, st) for d in (0, 1)
                                                  for st in (pb.STEP_STATE_STARTED, pb.STEP_STATE_SUCCEEDED)}
    assert all(s.step == "copy" and s.guest == "guest" for s in steps)
    done = {s.disk: s for s in steps if s.state == pb.STEP_STATE_SUCCEEDED}
    assert re.fullmatch(r"256 MiB at \d+(\.\d)? [KMG]iB/s", done[0].message)
    assert done[0].duration.ToTimedelta().total_seconds() > 0
    for disk, size in ((0, 256 * MiB), (1, 200 * MiB)):
        progress = [e.progress for e in events if e.HasField("progress") and e.progress.disk == disk]
        assert all(p.bytes_total == size for p in progress)
        assert [p.bytes_done for p in progress] == sorted(p.bytes_done for p in progress)
        assert [p.bytes_done for p in progress].count(size) == 1 and progress[-1].bytes_done == size
        last_progress = max(i for i, e in enumerate(events) if e.HasField("progress") and e.progress.disk == disk)
        assert last_progress < next(i for i, e in enumerate(events) if e.step == done[disk])
    for src, dst in disks.pairs:
        subprocess.run(["cmp", str(src), str(dst)], check=True)


def test_parallel_one_copies_in_turn(service, workdir, disks):
    copies = [disks.add(8 * MiB, [(0, MiB)]) for _ in range(3)]
    steps = [e.step for e in service.copy(request(workdir, copies, parallel=1)) if e.HasField("step")]
    assert [(s.disk, s.state) for s in steps] == [
        (d, st) for d in (0, 1, 2) for st in (pb.STEP_STATE_STARTED, pb.STEP_STATE_SUCCEEDED)]


def test_cancel_stops_every_copy(service, workdir, disks):
    copies = [disks.add(64 * MiB, [(0, 64 * MiB)], read_delay="50ms") for _ in range(2)]
    events, stopped, reporting = [], None, set()
    started = time.monotonic()
    with pytest.raises(V2VError) as exc:
        for event in service.copy(request(workdir, copies, **SLOW)):
            events.append(event)
            if event.HasField("progress"):
                reporting.add(event.progress.disk)
            if reporting == {0, 1} and stopped is None:  # both copies are running
                stopped = service.cancel(str(workdir.path))
    assert time.monotonic() - started < 10
    assert stopped == 2
    assert (exc.value.code, exc.value.step, exc.value.guest) == (pb.ERROR_CODE_CANCELLED, "copy", "guest")
    ends = {e.step.disk: e.step.state for e in events if e.HasField("step") and e.step.state != pb.STEP_STATE_STARTED}
    assert ends == {0: pb.STEP_STATE_CANCELLED, 1: pb.STEP_STATE_CANCELLED}
    assert nbdcopies() == []


def test_closing_the_stream_stops_the_copies(service, workdir, disks):
    copies = [disks.add(64 * MiB, [(0, 64 * MiB)], read_delay="50ms")]
    stream = service.copy(request(workdir, copies, **SLOW))
    next(e for e in stream if e.HasField("progress"))
    assert len(nbdcopies()) == 1
    stream.close()
    assert nbdcopies() == []


def test_killed_nbdcopy_fails_its_disk_and_stops_the_others(service, workdir, disks):
    copies = [disks.add(64 * MiB, [(0, 64 * MiB)], read_delay="50ms") for _ in range(2)]
    events, killed = [], False
    with pytest.raises(V2VError) as exc:
        for event in service.copy(request(workdir, copies, **SLOW)):
            events.append(event)
            if event.HasField("progress") and event.progress.disk == 1 and not killed:
                wait_until(lambda: len(nbdcopies()) == 2)  # disk 0's may not have started yet
                victim = next(p for p in nbdcopies() if "out1.sock" in p)
                os.kill(int(victim.split()[0]), signal.SIGKILL)
                killed = True
    err = exc.value
    assert (err.code, err.step, err.disk, err.guest) == (pb.ERROR_CODE_PROCESS_FAILED, "copy", 1, "guest")
    assert "disk 1" in err.message and "killed by signal 9" in err.message
    ends = {e.step.disk: e.step for e in events if e.HasField("step") and e.step.state != pb.STEP_STATE_STARTED}
    assert ends[1].state == pb.STEP_STATE_FAILED and ends[1].error.code == pb.ERROR_CODE_PROCESS_FAILED
    assert ends[0].state == pb.STEP_STATE_CANCELLED
    assert nbdcopies() == []


def test_unreachable_source_fails_the_disk(service, workdir):
    copy = copier_pb2.DiskCopy(disk=0, source=str(workdir.in_sock(0)), target=str(workdir.out_sock(0)))
    with pytest.raises(V2VError) as exc:
        list(service.copy(request(workdir, [copy])))
    assert (exc.value.code, exc.value.step, exc.value.disk) == (pb.ERROR_CODE_BAD_INPUT, "copy", 0)
    assert str(workdir.in_sock(0)) in exc.value.message


# ---------------------------------------------------------------- over gRPC

@pytest.fixture
def stub(service, tmp_path):
    address = str(tmp_path / "copier.sock")
    server = grpcserver.serve(address, [(service, copier_pb2_grpc.add_CopierServicer_to_server, "v2v.v1.Copier")])
    with grpcserver.channel(address) as ch:
        yield copier_pb2_grpc.CopierStub(ch)
    server.stop(None)


def test_cancel_rpc_ends_the_stream_as_cancelled(stub, workdir, disks):
    copies = [disks.add(64 * MiB, [(0, 64 * MiB)], read_delay="50ms")]
    call = stub.Copy(request(workdir, copies, **SLOW))
    next(e for e in call if e.HasField("progress"))
    assert stub.Cancel(copier_pb2.CancelRequest(workdir=str(workdir.path))).stopped == 1
    with pytest.raises(grpc.RpcError) as exc:
        list(call)
    assert exc.value.code() == grpc.StatusCode.CANCELLED
    assert from_rpc_error(exc.value, step="copy").code == pb.ERROR_CODE_CANCELLED
    assert nbdcopies() == []


def test_client_going_away_stops_the_copies(stub, workdir, disks):
    copies = [disks.add(64 * MiB, [(0, 64 * MiB)], read_delay="50ms")]
    call = stub.Copy(request(workdir, copies, **SLOW))
    next(e for e in call if e.HasField("progress"))
    assert len(nbdcopies()) == 1
    call.cancel()
    wait_until(lambda: nbdcopies() == [])
