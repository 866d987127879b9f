"""Copy while converting. At the NBD level (no appliance): a full precopy that races writes made
through the input's overlay, then the written-only copy, leave the target equal to the overlay
while the source file stays as it was. Through the CLI: a phony guest converted with
--copy-while-converting --verify.

Cost: the NBD tests ~8 s; the CLI tests two appliances (plus the `convertible` fixture's one when
test_fleet.py has not made it already): ~1.5 min measured on 2 shared cores."""

import hashlib
import json
import os
import random
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import nbd
import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from tests.conftest import children_mentioning, sha256
from tests.ova_fixtures import RAW_URL, Disk, Spec, make_image, make_ova, make_raw
from tests.test_cli_errors import error_lines
from tests.test_fleet import convertible  # noqa: F401  (a fixture: the phony Debian that converts)
from v2v.coordinator.pipeline import precopy_order
from v2v.errors import V2VError
from v2v.extents import ALLOCATION_DEPTH, marked_ranges, tracks_writes
from v2v.nbdserver import Nbdkit
from v2v.services.copier.service import CopierService
from v2v.services.input.diskfile import serve_overlay, tracking_writes
from v2v.services.input.service import InputService
from v2v.v1 import copier_pb2, input_pb2
from v2v.v1 import types_pb2 as pb
from v2v.workdir import WorkDir

MiB = 1024**2
SIZE = 256 * MiB
CLUSTER = 64 * 1024  # qemu-nbd --snapshot's overlay is qcow2: writes are tracked per cluster


def half_random(path: Path, size: int = SIZE) -> Path:
    """A sparse raw disk with random data in every other 4 MiB."""
    with open(path, "wb") as f:
        f.truncate(size)
        for off in range(0, size, 8 * MiB):
            f.seek(off)
            f.write(os.urandom(4 * MiB))
    return path


def export_sha256(sock: Path, size: int) -> str:
    h = hashlib.sha256()
    handle = nbd.NBD()
    handle.connect_unix(str(sock))
    for off in range(0, size, 4 * MiB):
        h.update(handle.pread(min(4 * MiB, size - off), off))
    handle.shutdown()
    return h.hexdigest()


class Guest:
    """One source disk served as the input serves it when writes are tracked, and a target file."""

    def __init__(self, workdir: WorkDir, source: Path, fmt: str, target: Path, stack: ExitStack) -> None:
        self.workdir = workdir
        disk = pb.SourceDisk(index=0, location=str(source), format=fmt, virtual_size=SIZE)
        with tracking_writes(True):
            stack.enter_context(serve_overlay(disk, workdir.in_sock(0), workdir.log("input-disk0.log")))
        with open(target, "wb") as f:
            f.truncate(SIZE)
        stack.enter_context(Nbdkit(workdir.out_sock(0), workdir.log("output-disk0.log"), "target", "file",
                                   [f"file={target}"]))
        self.target = target

    def request(self, **options: bool) -> copier_pb2.CopyRequest:
        return copier_pb2.CopyRequest(
            workdir=self.workdir.name, guest="g",
            disks=[copier_pb2.DiskCopy(disk=0, source=str(self.workdir.in_sock(0)),
                                       target=str(self.workdir.out_sock(0)), size=SIZE)],
            options=copier_pb2.CopyOptions(flush=True, **options))


@pytest.fixture
def copier() -> Iterator[CopierService]:
    svc = CopierService()
    yield svc
    svc.shutdown()


def conversion_writes(sock: Path, rng: random.Random, until: threading.Event | None = None) -> list[str]:
    """Writes, trims and zeroes through the overlay, as a conversion does, until `until` is set (at
    once when None), then 5 more; returns what it did."""
    done = []
    h = nbd.NBD()
    h.connect_unix(str(sock))
    extra = 5
    while extra:
        off = rng.randrange(0, SIZE - MiB, 4096)
        n = rng.choice([4096, 100_000, MiB])
        kind = rng.choice(["write", "trim", "zero"])
        if kind == "write":
            h.pwrite(os.urandom(n), off)
        elif kind == "trim":
            h.trim(n, off)
        else:
            h.zero(n, off)
        done.append(f"{kind} {n}@{off}")
        time.sleep(0.005)  # a conversion writes now and then, not flat out
        if until is None or until.is_set():
            extra -= 1
    h.flush()
    h.shutdown()
    return done


@pytest.mark.parametrize("fmt", ["raw", "qcow2"])
def test_precopy_racing_writes_then_written_only_leaves_target_equal(workdir: WorkDir, tmp_path: Path,
                                                                     copier: CopierService, fmt: str) -> None:
    source = half_random(tmp_path / "src.raw")
    if fmt == "qcow2":
        qcow2 = tmp_path / "src.qcow2"
        subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(source), str(qcow2)], check=True)
        source = qcow2
    before = sha256(source)
    with ExitStack() as stack:
        guest = Guest(workdir, source, fmt, tmp_path / "target.raw", stack)
        rng = random.Random(6)
        first = conversion_writes(workdir.in_sock(0), rng)  # before the precopy
        precopied = threading.Event()
        writer_log: list[str] = []
        writer = threading.Thread(target=lambda: writer_log.extend(
            conversion_writes(workdir.in_sock(0), rng, precopied)))
        writer.start()
        try:
            precopy = list(copier.copy(guest.request(target_is_zero=True)))
        finally:
            precopied.set()
            writer.join()
        assert first and len(writer_log) > 5, "no write raced the precopy"
        assert any(e.HasField("step") and e.step.state == pb.STEP_STATE_SUCCEEDED for e in precopy)

        events = list(copier.copy(guest.request(written_only=True, verify=True)))
        steps = [(e.step.step, e.step.state) for e in events if e.HasField("step")]
        assert ("verify", pb.STEP_STATE_SUCCEEDED) in steps and ("copy", pb.STEP_STATE_SUCCEEDED) in steps
        progress = [e.progress for e in events if e.HasField("progress")]
        written = marked_ranges(str(workdir.in_sock(0)), ALLOCATION_DEPTH)
        assert progress[-1].bytes_done == progress[-1].bytes_total == written.data
        assert 0 < written.data < SIZE // 2
        assert export_sha256(workdir.in_sock(0), SIZE) == sha256(guest.target)
    assert sha256(source) == before


def test_written_ranges_are_exactly_the_written_clusters(workdir: WorkDir, tmp_path: Path) -> None:
    with ExitStack() as stack:
        Guest(workdir, half_random(tmp_path / "src.raw"), "raw", tmp_path / "target.raw", stack)
        sock = str(workdir.in_sock(0))
        assert tracks_writes(sock) and marked_ranges(sock, ALLOCATION_DEPTH).data == 0
        h = nbd.NBD()
        h.connect_unix(sock)
        h.pwrite(b"x" * 4096, 10 * MiB + 4096)  # within one cluster: the whole cluster is the overlay's
        h.trim(MiB, 20 * MiB)
        h.zero(MiB, 30 * MiB)
        h.shutdown()
        assert marked_ranges(sock, ALLOCATION_DEPTH).ranges == [(10 * MiB, 10 * MiB + CLUSTER), (20 * MiB, 21 * MiB),
                                               (30 * MiB, 31 * MiB)]


def test_open_says_which_disks_track_writes(workroot: Path, tmp_path: Path) -> None:
    """A raw file goes through qemu-nbd when writes are tracked; a raw disk inside an OVA (nbdkit's
    offset and cow filters) cannot be tracked, a qcow2 one in the same OVA can."""
    service = InputService()
    raw = make_raw(tmp_path / "disk.raw", 0)
    disks = {"d0.raw": make_raw(tmp_path / "d0.raw", 0), "d1.qcow2": make_image(tmp_path / "d1.qcow2", 1, "qcow2")}
    ova = make_ova(tmp_path / "g.ova", Spec(disks=[Disk("d0.raw", format_url=RAW_URL), Disk("d1.qcow2")]), disks)
    disk = input_pb2.InputSpec(disk=input_pb2.DiskInput(paths=[str(raw)], format="raw"))
    # (input, track_writes, OpenResponse.writes_tracked, whether each export offers the context)
    cases = [(disk, True, [True], [True]), (disk, False, [], [False]),  # without tracking raw goes through nbdkit
             (input_pb2.InputSpec(ova=input_pb2.OvaInput(path=str(ova))), True, [False, True], [False, True])]
    try:
        for n, (spec, track, tracked, offered) in enumerate(cases):
            resp = service.open(input_pb2.OpenRequest(workdir=f"g{n}", guest="g", input=spec,
                                                      track_writes=track))
            assert list(resp.writes_tracked) == tracked
            assert [tracks_writes(sock) for sock in resp.sockets] == offered
    finally:
        service.shutdown()


def test_written_only_refuses_a_source_that_does_not_track_writes(workdir: WorkDir, tmp_path: Path,
                                                                  copier: CopierService) -> None:
    source = half_random(tmp_path / "src.raw", 16 * MiB)
    disk = pb.SourceDisk(index=0, location=str(source), format="raw", virtual_size=16 * MiB)
    with ExitStack() as stack:
        stack.enter_context(serve_overlay(disk, workdir.in_sock(0), workdir.log("input-disk0.log")))  # nbdkit cow
        assert not tracks_writes(str(workdir.in_sock(0)))
        stack.enter_context(Nbdkit(workdir.out_sock(0), workdir.log("output-disk0.log"), "target", "memory",
                                   [str(16 * MiB)]))
        request = copier_pb2.CopyRequest(
            workdir=workdir.name, guest="g",
            disks=[copier_pb2.DiskCopy(disk=0, source=str(workdir.in_sock(0)), target=str(workdir.out_sock(0)))],
            options=copier_pb2.CopyOptions(written_only=True))
        with pytest.raises(V2VError) as err:
            list(copier.copy(request))
    assert err.value.code == pb.ERROR_CODE_BAD_INPUT and err.value.disk == 0
    assert "does not track writes" in err.value.message


def step_times(events: list[dict], step: str) -> tuple[int, int]:
    """(started, ended) of a top-level step, in nanoseconds."""
    mine = [e["step"] for e in events if e.get("step", {}).get("step") == step and not e["step"].get("parent")]

    def at(state: str) -> int:
        t = Timestamp()
        t.FromJsonString(next(s["timestamp"] for s in mine if s["state"] == state))
        return t.ToNanoseconds()

    return at("STEP_STATE_STARTED"), at("STEP_STATE_SUCCEEDED")


@pytest.mark.appliance
def test_cli_copies_while_converting(v2v, convertible, tmp_path: Path) -> None:  # noqa: F811
    before = sha256(convertible)
    out = tmp_path / "out"
    out.mkdir()
    r = v2v("-i", "disk", str(convertible), "-o", "local", "-os", str(out), "-on", "cwc", "--copy-while-converting",
            "--verify", "--machine-readable", "--accel", "tcg")
    assert r.rc == 0, r.stderr
    events = [json.loads(line) for line in r.stdout.splitlines() if line.startswith("{")]
    assert events[-1]["status"]["state"] == "GUEST_STATE_SUCCEEDED"
    done = [e["step"]["step"] for e in events if "step" in e and not e["step"].get("parent")
            and e["step"]["state"] == "STEP_STATE_SUCCEEDED"]
    assert done[:3] == ["open", "check", "setup"] and done[-2:] == ["copy", "finalize"]
    assert set(done[3:5]) == {"precopy", "convert"}
    precopy, convert = step_times(events, "precopy"), step_times(events, "convert")
    assert precopy[0] < convert[1] and convert[0] < precopy[1], "the precopy did not overlap the conversion"
    # The last copy moved only what the conversion wrote, then verified the whole disk against the overlay.
    disk_steps = [e["step"] for e in events if e.get("step", {}).get("parent") == "copy"]
    copied = next(s for s in disk_steps if s["step"] == "copy" and s["state"] == "STEP_STATE_SUCCEEDED")
    assert "written since open" in copied["message"] and copied["message"].endswith("verified")
    assert any(s["step"] == "verify" and s["state"] == "STEP_STATE_SUCCEEDED" for s in disk_steps)
    assert not [e for e in events if e.get("step", {}).get("parent") == "precopy" and e["step"]["step"] == "verify"]
    assert "<target dev='vda' bus='virtio'" in (out / "cwc.xml").read_text().replace('"', "'")
    assert sha256(convertible) == before


def test_cancel_stops_a_written_only_copy(workdir: WorkDir, tmp_path: Path, copier: CopierService) -> None:
    source = half_random(tmp_path / "src.raw", 64 * MiB)
    disk = pb.SourceDisk(index=0, location=str(source), format="raw", virtual_size=64 * MiB)
    with ExitStack() as stack:
        with tracking_writes(True):
            stack.enter_context(serve_overlay(disk, workdir.in_sock(0), workdir.log("input-disk0.log")))
        h = nbd.NBD()
        h.connect_unix(str(workdir.in_sock(0)))
        h.pwrite(os.urandom(32 * MiB), 0)
        h.shutdown()
        # A target taking 0.2 s per write: the copy of 32 MiB in 4 MiB requests lasts well over a second.
        stack.enter_context(Nbdkit(workdir.out_sock(0), workdir.log("output-disk0.log"), "target", "memory",
                                   [str(64 * MiB), "delay-write=200ms"], filters=["delay"]))
        request = copier_pb2.CopyRequest(
            workdir=workdir.name, guest="g",
            disks=[copier_pb2.DiskCopy(disk=0, source=str(workdir.in_sock(0)), target=str(workdir.out_sock(0)))],
            options=copier_pb2.CopyOptions(written_only=True))
        events = copier.copy(request)
        assert next(events).step.state == pb.STEP_STATE_STARTED
        time.sleep(0.5)
        started = time.monotonic()
        assert copier.cancel(workdir.name) == 1
        with pytest.raises(V2VError) as err:
            list(events)
        assert time.monotonic() - started < 1.0
    assert err.value.code == pb.ERROR_CODE_CANCELLED


@pytest.mark.appliance
def test_cli_failed_conversion_aborts_a_precopied_target(v2v, phony, tmp_path: Path, workroot: Path) -> None:
    r = v2v("-i", "disk", str(phony / "data-nofs-os.img"), "-o", "local", "-os", str(tmp_path),
            "--copy-while-converting", "--accel", "tcg")
    assert r.rc == 1
    assert error_lines(r.stderr) == ["v2v: error: guest data-nofs-os: step convert: no operating system was found "
                                     "on the disks (is this a guest's system disk?)"], r.stderr
    assert list(tmp_path.glob("data-nofs-os*")) == []  # set up before the conversion, removed by the abort
    assert children_mentioning(str(workroot)) == []


def test_precopy_takes_the_boot_disk_last():
    def source(n: int) -> pb.Source:
        return pb.Source(disks=[pb.SourceDisk(index=i) for i in range(n)])

    assert precopy_order(source(3)) == [{1, 2}, {0}]
    assert precopy_order(source(1)) == [{0}]
