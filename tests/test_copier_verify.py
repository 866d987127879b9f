"""Verification of copies: verify() on two nbdkit servers, and the copier's "verify" sub-step."""
# The copier tests' fixtures are imported, and pytest hands them back as same-named parameters.
# ruff: noqa: F811

import subprocess
import threading
import time
from pathlib import Path

import grpc
import nbd
import pytest

from tests.test_copier import MiB, disks, request, service, stub  # noqa: F401
from v2v.errors import V2VError, from_rpc_error
from v2v.extents import ExtentMap
from v2v.nbdclient import location_uri
from v2v.services.copier import service as service_module
from v2v.services.copier.verify import BLOCK, blocks_to_check, first_difference, verify
from v2v.v1 import types_pb2 as pb

SIZE = 64 * MiB
DATA = [(MiB, 2 * MiB), (40 * MiB, MiB)]  # blocks 0 and 10 hold data; the rest is holes


def corrupt(path: Path, offset: int) -> None:
    """Flips every bit of one byte of a file (an nbdkit file export reads it as it is now)."""
    with open(path, "r+b") as f:
        f.seek(offset)
        old = f.read(1) or b"\0"
        f.seek(offset)
        f.write(bytes([old[0] ^ 0xFF]))


def write_through_nbd(location: str, offset: int, data: bytes) -> None:
    h = nbd.NBD()
    h.connect_uri(location_uri(location))
    h.pwrite(data, offset)
    h.flush()
    h.shutdown()


def add_copied(disks, data, **kwargs):
    """A source and a target server with the same contents (the target as sparse as the source)."""
    copy = disks.add(SIZE, data, **kwargs)
    src, dst = disks.pairs[-1]
    subprocess.run(["cp", "--sparse=always", str(src), str(dst)], check=True)
    return copy, dst


@pytest.fixture
def same(disks):
    return add_copied(disks, DATA)


# ---------------------------------------------------------------- pure logic

def test_first_difference():
    a = bytes(range(256)) * 1024
    assert first_difference(a, a) is None and first_difference(b"", b"") is None
    for at in (0, 1, 65535, 65536, 100_000, len(a) - 1):
        b = bytearray(a)
        b[at] ^= 1
        assert first_difference(a, bytes(b)) == at


def test_blocks_to_check_skips_what_both_read_as_zeroes():
    src = ExtentMap(10 * BLOCK + 5, [(BLOCK + 1, BLOCK + 2), (9 * BLOCK, 10 * BLOCK + 5)])
    dst = ExtentMap(10 * BLOCK + 5, [(3 * BLOCK, 3 * BLOCK + 1)])  # data the source has not: still checked
    assert blocks_to_check(src.size, BLOCK, src, dst) == [
        (BLOCK, 2 * BLOCK), (3 * BLOCK, 4 * BLOCK), (9 * BLOCK, 10 * BLOCK), (10 * BLOCK, 10 * BLOCK + 5)]
    assert blocks_to_check(src.size, BLOCK, ExtentMap(src.size, []), ExtentMap(src.size, [])) == []


# ---------------------------------------------------------------- verify() on two servers

def test_equal_disks_verify(same):
    copy, _ = same
    assert verify(copy.source, copy.target, SIZE, threading.Event()) == 2 * BLOCK  # only the data blocks read


@pytest.mark.parametrize("offsets", [
    [40 * MiB + 12345, MiB + 7],  # two differences: the first is named
    [20 * MiB + 5],  # in a hole of the source: the target's block status says data there
    [SIZE - 1],  # the last byte
    [0],
], ids=["first-of-two", "in-a-source-hole", "last-byte", "first-byte"])
def test_a_changed_byte_is_found_at_its_offset(same, offsets):
    copy, dst = same
    for offset in offsets:
        corrupt(dst, offset)
    with pytest.raises(V2VError) as exc:
        verify(copy.source, copy.target, SIZE, threading.Event())
    assert exc.value.code == pb.ERROR_CODE_VERIFY_FAILED
    assert exc.value.message == f"target differs from source at offset {min(offsets)}"
    assert "in the source" in exc.value.detail and "in the target" in exc.value.detail


def test_a_smaller_target_fails(disks):
    copy = disks.add(SIZE, DATA, target_size=SIZE - MiB)
    with pytest.raises(V2VError) as exc:
        verify(copy.source, copy.target, SIZE, threading.Event())
    assert exc.value.code == pb.ERROR_CODE_VERIFY_FAILED and "smaller" in exc.value.message


def test_verify_stops_when_cancelled(disks):
    copy, _ = add_copied(disks, [(0, SIZE)], target_read_delay="200ms")
    cancel = threading.Event()
    threading.Timer(0.3, cancel.set).start()
    started = time.monotonic()
    with pytest.raises(V2VError) as exc:
        verify(copy.source, copy.target, SIZE, cancel)
    assert exc.value.code == pb.ERROR_CODE_CANCELLED
    assert time.monotonic() - started < 2  # 16 blocks at 200 ms each would take over 3 s


# ---------------------------------------------------------------- the copier's verify step

def steps_of(events, disk):
    return [(e.step.step, e.step.state) for e in events if e.HasField("step") and e.step.disk == disk]


def test_copy_with_verify(service, workdir, disks):
    copies = [disks.add(SIZE, DATA), disks.add(32 * MiB, [(0, 32 * MiB)])]
    events = list(service.copy(request(workdir, copies, verify=True, target_is_zero=True)))
    for disk in (0, 1):
        assert steps_of(events, disk) == [("copy", pb.STEP_STATE_STARTED), ("verify", pb.STEP_STATE_STARTED),
                                          ("verify", pb.STEP_STATE_SUCCEEDED), ("copy", pb.STEP_STATE_SUCCEEDED)]
        verified = next(e.step for e in events if e.step.step == "verify" and e.step.state == pb.STEP_STATE_SUCCEEDED
                        and e.step.disk == disk)
        assert verified.parent == "copy" and verified.guest == "guest"
        assert verified.duration.ToTimedelta().total_seconds() > 0
        last_progress = max(i for i, e in enumerate(events) if e.HasField("progress") and e.progress.disk == disk)
        verify_started = next(i for i, e in enumerate(events) if e.step.step == "verify" and e.step.disk == disk)
        assert last_progress < verify_started  # the copy is done (100%) before it is checked
    done = next(e.step for e in events if e.step.step == "copy" and e.step.state == pb.STEP_STATE_SUCCEEDED
                and e.step.disk == 0)
    assert done.message.endswith(", verified")
    assert next(e.step.message for e in events if e.step.step == "verify" and e.step.disk == 0
                and e.step.state == pb.STEP_STATE_SUCCEEDED).startswith("8.0 MiB compared at ")


@pytest.fixture
def corrupting(monkeypatch):
    """Writes a byte into each target through its NBD socket after the copy, before it is verified."""
    offset = 40 * MiB + 4321

    def corrupt_then_verify(source, target, *args, **kwargs):
        write_through_nbd(target, offset, b"\xa5")  # the source's data is random: 1 chance in 256 to match
        h = nbd.NBD()
        h.connect_uri(location_uri(source))
        same_byte = h.pread(1, offset) == b"\xa5"
        h.shutdown()
        if same_byte:
            write_through_nbd(target, offset, b"\x5a")
        return real_verify(source, target, *args, **kwargs)

    real_verify = service_module.verify
    monkeypatch.setattr(service_module, "verify", corrupt_then_verify)
    return offset


def test_corrupted_target_fails_its_disk(service, workdir, disks, corrupting):
    events = []
    with pytest.raises(V2VError) as exc:
        for event in service.copy(request(workdir, [disks.add(SIZE, DATA)], verify=True)):
            events.append(event)
    err = exc.value
    assert (err.code, err.step, err.disk, err.guest) == (pb.ERROR_CODE_VERIFY_FAILED, "copy", 0, "guest")
    assert str(err) == f"guest guest: step copy: disk 0: target differs from source at offset {corrupting}"
    assert steps_of(events, 0) == [("copy", pb.STEP_STATE_STARTED), ("verify", pb.STEP_STATE_STARTED),
                                   ("verify", pb.STEP_STATE_FAILED), ("copy", pb.STEP_STATE_FAILED)]
    failed = [e.step for e in events if e.step.state == pb.STEP_STATE_FAILED]
    assert all(f.error.code == pb.ERROR_CODE_VERIFY_FAILED and f.error.disk == 0 for f in failed)
    assert failed[0].parent == "copy" and failed[0].duration.ToTimedelta().total_seconds() > 0


def test_corrupted_target_over_grpc(stub, workdir, disks, corrupting):
    with pytest.raises(grpc.RpcError) as exc:
        list(stub.Copy(request(workdir, [disks.add(SIZE, DATA)], verify=True)))
    err = from_rpc_error(exc.value, step="copy")
    assert (err.code, err.disk) == (pb.ERROR_CODE_VERIFY_FAILED, 0)
    assert err.message == f"target differs from source at offset {corrupting}"


def test_cancel_during_verify(service, workdir, disks):
    copies = [disks.add(SIZE, [(0, SIZE)], target_read_delay="200ms")]
    events, stopped = [], None
    with pytest.raises(V2VError) as exc:
        for event in service.copy(request(workdir, copies, verify=True)):
            events.append(event)
            if event.step.step == "verify" and event.step.state == pb.STEP_STATE_STARTED:
                stopped = service.cancel(workdir.name)
    assert stopped == 1 and exc.value.code == pb.ERROR_CODE_CANCELLED
    assert steps_of(events, 0)[-2:] == [("verify", pb.STEP_STATE_CANCELLED), ("copy", pb.STEP_STATE_CANCELLED)]
