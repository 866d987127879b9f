"""The copier service against real nbdcopy and nbdkit: progress, failures, cancellation."""

import os
import re
import signal
import subprocess
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

import grpc
import pytest

from v2v import grpcserver
from v2v.errors import V2VError, from_rpc_error
from v2v.extents import ExtentMap, probe
from v2v.nbdclient import nbd_uri
from v2v.nbdserver import Nbdkit
from v2v.services.copier.nbdcopy import parse_progress
from v2v.services.copier.progress import (
    WORK_RANGE,
    CopiedBytes,
    ProgressThrottle,
    in_flight_bytes,
    nbdcopy_workers,
    range_index,
)
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

    def serve(self, sock: Path, path: Path, readonly: bool, read_delay: str = "",
              filters: tuple[str, ...] = ()) -> None:
        log = self.workdir.log(f"{sock.stem}.log")
        args = [f"file={path}"] + ([f"delay-read={read_delay}"] if read_delay else [])
        filters = (*filters, "delay") if read_delay else filters
        self.stack.enter_context(Nbdkit(sock, log, sock.stem, "file", args, filters=filters, readonly=readonly))

    def add(self, size: int, data: list[tuple[int, int]], read_delay: str = "", target_read_delay: str = "",
            target_size: int | None = None) -> copier_pb2.DiskCopy:
        """A disk to copy; `read_delay` slows its source down enough to act on the copy midway,
        `target_read_delay` its target's reads (verification's, not the copy's)."""
        n = len(self.pairs)
        src = make_disk(self.tmp_path / f"src{n}.raw", size, data)
        dst = make_disk(self.tmp_path / f"dst{n}.raw", size if target_size is None else target_size, [])
        self.serve(self.workdir.in_sock(n), src, True, read_delay)
        self.serve(self.workdir.out_sock(n), dst, False, target_read_delay)
        self.pairs.append((src, dst))
        return copier_pb2.DiskCopy(disk=n, source=str(self.workdir.in_sock(n)),
                                   target=nbd_uri(self.workdir.out_sock(n)))


@pytest.fixture
def disks(workdir, tmp_path):
    with ExitStack() as stack:
        yield Disks(workdir, tmp_path, stack)


def request(workdir, copies, **options) -> copier_pb2.CopyRequest:
    return copier_pb2.CopyRequest(workdir=workdir.name, guest="guest", disks=copies,
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
    throttle = ProgressThrottle("g", 3, 1000, 4000, events.append, interval=0.25, clock=lambda: clock[0])
    for t, done in ((10.1, 0), (10.2, 100), (10.5, 250), (10.6, 300), (10.8, 1000)):
        clock[0] = t
        throttle.update(done)
    clock[0] = 11.0
    throttle.finish()
    throttle.finish()
    throttle.update(1000)
    progress = [e.progress for e in events]
    assert [(p.disk, p.bytes_done, p.bytes_total, p.virtual_size) for p in progress] == [
        (3, 0, 1000, 4000), (3, 250, 1000, 4000), (3, 1000, 1000, 4000), (3, 1000, 1000, 4000)]
    assert not progress[0].HasField("eta_seconds")  # no rate yet, no ETA
    assert progress[1].rate == pytest.approx(250 / 0.5) and progress[1].eta_seconds == pytest.approx(750 / 500)
    # Only finish() ends the disk's progress: an update claiming every byte does not (nbdcopy still runs).
    assert progress[3].rate == pytest.approx(1000 / 1.0) and progress[3].eta_seconds == 0


def test_extent_map_data_below():
    m = ExtentMap(100, [(50, 60), (10, 20), (15, 30), (30, 35), (90, 120), (-5, 2)])
    assert m.ranges == [(0, 2), (10, 35), (50, 60), (90, 100)]  # merged, clipped to the disk
    assert m.data == 2 + 25 + 10 + 10
    assert [m.data_below(o) for o in (0, 1, 2, 10, 11, 35, 50, 55, 60, 89, 95, 100, 200)] == [
        0, 1, 2, 2, 3, 27, 27, 32, 37, 37, 42, 47, 47]
    assert m.data_in(20, 55) == 20 and m.is_zero(35, 50) and not m.is_zero(34, 50)
    assert ExtentMap.full(7).data_below(5) == 5 and ExtentMap(7, []).data == 0


def test_range_index_inverts_nbdcopy_percentages():
    """nbdcopy prints int(100 * range start / size); decoding never names a later range than it meant."""
    for size in (WORK_RANGE // 3, 5 * WORK_RANGE + 12345, 250 * WORK_RANGE):
        n = -(-size // WORK_RANGE)
        for k in range(n):
            printed = int(100 * (k * WORK_RANGE / size))
            decoded = range_index(printed, size)
            assert decoded <= k and (size > 100 * WORK_RANGE or decoded == k)
        assert range_index(100, size) == n


def test_copied_bytes_is_a_lower_bound():
    W = WORK_RANGE
    # Ranges 0..3 hold 100 bytes, nothing, a full range, 10 MiB of data; range 4 is half a range, all data.
    m = ExtentMap(4 * W + W // 2, [(0, 100), (2 * W, 3 * W), (3 * W, 3 * W + 10 * MiB), (4 * W, 4 * W + W // 2)])
    size, total = m.size, m.data
    printed = [int(100 * (k * W / size)) for k in range(5)]  # what nbdcopy prints as it hands range k out
    one = CopiedBytes(m, workers=1, in_flight=0)
    # One worker, nothing in flight: when it takes range k, the ranges before k are written.
    assert [one.at(p) for p in printed] == [0, 100, 100, 100 + W, 100 + W + 10 * MiB]
    assert one.at(100) == total
    two = CopiedBytes(m, workers=2, in_flight=1000)
    # Two workers: the other may still hold any one earlier range (the fullest is assumed), and each
    # may have 1000 bytes in flight.
    at = [two.at(p) for p in printed] + [two.at(100)]
    assert at == [0, 0, 0, 0, 100 + 10 * MiB - 2000, total - W - 2000]
    assert at == sorted(at) and all(b < total for b in at)
    assert CopiedBytes(ExtentMap(size, []), 4, 10).at(50) == 0


def test_nbdcopy_workers():
    assert nbdcopy_workers(copier_pb2.CopyOptions(connections=8), multi_conn=False) == 1
    assert nbdcopy_workers(copier_pb2.CopyOptions(connections=1), multi_conn=True) == 1
    assert nbdcopy_workers(copier_pb2.CopyOptions(), multi_conn=True) == min(4, os.cpu_count() or 1)
    assert in_flight_bytes(copier_pb2.CopyOptions()) == 16 * MiB
    assert in_flight_bytes(copier_pb2.CopyOptions(requests=2, request_size=MiB)) == 2 * MiB


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
    assert re.fullmatch(r"10 MiB of data in 256 MiB at \d+(\.\d)? [KMG]iB/s", done[0].message)
    assert done[0].duration.ToTimedelta().total_seconds() > 0
    for disk, size, data in ((0, 256 * MiB, 10 * MiB), (1, 200 * MiB, 5 * MiB)):
        progress = [e.progress for e in events if e.HasField("progress") and e.progress.disk == disk]
        assert all((p.bytes_total, p.virtual_size) == (data, size) for p in progress)  # data, not holes
        assert [p.bytes_done for p in progress] == sorted(p.bytes_done for p in progress)
        assert [p.bytes_done for p in progress].count(data) == 1 and progress[-1].bytes_done == data
        assert progress[-1].eta_seconds == 0
        last_progress = max(i for i, e in enumerate(events) if e.HasField("progress") and e.progress.disk == disk)
        assert last_progress < next(i for i, e in enumerate(events) if e.step == done[disk])
    for src, dst in disks.pairs:
        subprocess.run(["cmp", str(src), str(dst)], check=True)


@pytest.mark.parametrize("connections", [1, 2])
def test_progress_never_claims_more_than_written(service, workdir, disks, connections):
    """Every Progress, when it arrives, is at most what the target holds already (random data: each
    byte nbdcopy wrote is allocated in the sparse target file), and below the total until the end."""
    W = WORK_RANGE
    # 2 MiB of data at the start of each of 5 work ranges, read one request at a time, slowly.
    copies = [disks.add(5 * W, [(k * W, 2 * MiB) for k in range(5)], read_delay="50ms")]
    dst = disks.pairs[0][1]
    seen = []
    for event in service.copy(request(workdir, copies, target_is_zero=True, requests=1, connections=connections)):
        if event.HasField("progress"):
            seen.append((event.progress, os.stat(dst).st_blocks * 512))
    *running, (last, _) = seen
    assert last.bytes_done == last.bytes_total == 10 * MiB
    assert len(running) >= 2 and any(p.bytes_done > 0 for p, _ in running)  # it did move before the end
    for p, written in running:
        assert p.bytes_done <= written and p.bytes_done < p.bytes_total
        assert p.virtual_size == 5 * W and (p.rate == 0 or p.eta_seconds > 0)


def test_probe_reads_the_data_map(disks, workdir, tmp_path):
    copies = disks.add(64 * MiB, [(MiB, MiB), (10 * MiB, 3 * MiB)])
    found = probe(copies.source)
    assert (found.size, found.extents.ranges) == (64 * MiB, [(MiB, 2 * MiB), (10 * MiB, 13 * MiB)])
    # A server without block status: every byte counts as data.
    sock = tmp_path / "noext.sock"
    disks.serve(sock, disks.pairs[0][0], True, filters=("noextents",))
    assert probe(str(sock), size=32 * MiB).extents.ranges == [(0, 32 * MiB)]


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
                stopped = service.cancel(workdir.name)
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
    assert stub.Cancel(copier_pb2.CancelRequest(workdir=workdir.name)).stopped == 1
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


@pytest.mark.parametrize("allocated", [False, True])
def test_allocated_keeps_a_preallocated_target_allocated(service, workdir, tmp_path, allocated):
    """-oa preallocated: zeroes in the source must not punch holes into the target (nbdcopy
    --allocated), which nbdkit's file plugin, as the outputs serve raw disks, would otherwise do."""
    size = 64 * MiB
    src = make_disk(tmp_path / "src.raw", size, [(0, MiB)])
    dst = tmp_path / "dst.raw"
    subprocess.run(["qemu-img", "create", "-q", "-f", "raw", "-o", "preallocation=falloc", str(dst), str(size)],
                   check=True)
    with open(dst, "r+b") as f:  # old contents where the source has zeroes: the copy must write them
        f.write(os.urandom(size))
    with ExitStack() as stack:
        stack.enter_context(Nbdkit(workdir.in_sock(0), workdir.log("in.log"), "in", "file", [f"file={src}"],
                                   readonly=True))
        stack.enter_context(Nbdkit(workdir.out_sock(0), workdir.log("out.log"), "out", "file", [f"file={dst}"]))
        copy = copier_pb2.DiskCopy(disk=0, source=str(workdir.in_sock(0)), target=nbd_uri(workdir.out_sock(0)))
        list(service.copy(request(workdir, [copy], allocated=allocated, flush=True)))
    assert dst.read_bytes() == src.read_bytes()
    allocated_bytes = os.stat(dst).st_blocks * 512
    assert (allocated_bytes >= size) if allocated else (allocated_bytes < size // 2), allocated_bytes


def test_the_copier_alone_copies_nbd_exports_without_a_work_directory(stub, workdir, disks):
    """Useful alone: any NBD exports, no work directory, no file of another service; nothing of
    the call is left behind (its logs lived as long as the call)."""
    copies = [disks.add(32 * MiB, [(0, MiB), (20 * MiB, 3 * MiB)])]
    copies[0].source = nbd_uri(Path(copies[0].source))
    scratch = set(Path(tempfile.gettempdir()).glob("v2v-copy.*"))  # another run's, not this call's
    events = list(stub.Copy(copier_pb2.CopyRequest(guest="alone", disks=copies,
                                                   options=copier_pb2.CopyOptions(flush=True))))
    done = [e.step for e in events if e.HasField("step") and e.step.state == pb.STEP_STATE_SUCCEEDED]
    assert [(s.disk, s.guest) for s in done] == [(0, "alone")]
    subprocess.run(["cmp", *map(str, disks.pairs[0])], check=True)
    assert not (workdir.path / "copy.done").exists()
    assert not set(Path(tempfile.gettempdir()).glob("v2v-copy.*")) - scratch
