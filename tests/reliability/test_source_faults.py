"""Source faults (docs/reliability.md): a disk served through nbdkit's error and delay filters, copied
by the copier service (the service's own code in this process, no work directory). A source that
fails its reads, that stops answering, or whose server (or the target's) dies mid-copy fails the
copy naming the disk and where it failed; the copy never reports success; no nbdcopy or nbdkit is
left."""

from __future__ import annotations

import os
import re
import signal
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import child_servers
from v2v.errors import V2VError
from v2v.nbdserver import Nbdkit
from v2v.services.copier.service import CopierService
from v2v.v1 import copier_pb2
from v2v.v1 import types_pb2 as pb

MiB = 1 << 20


@pytest.fixture
def sockets() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="v2v-sf.", dir="/tmp") as d:  # short: AF_UNIX paths
        yield Path(d)


def disk(path: Path) -> Path:
    """64 MiB with 16 MiB of data from 8 MiB on."""
    with open(path, "wb") as f:
        f.truncate(64 * MiB)
        f.seek(8 * MiB)
        f.write(os.urandom(16 * MiB))
    return path


def copy(source: Nbdkit, target: Nbdkit, **options: int) -> list[pb.Event]:
    events: list[pb.Event] = []
    for ev in CopierService().copy(copier_pb2.CopyRequest(
            guest="g", options=copier_pb2.CopyOptions(target_is_zero=True, **options),
            disks=[copier_pb2.DiskCopy(disk=0, source=source.uri, target=target.uri)])):
        events.append(ev)
    return events


def test_read_errors_fail_the_copy_naming_the_disk_and_the_offset(tmp_path: Path, sockets: Path) -> None:
    src, dst = disk(tmp_path / "src.img"), tmp_path / "dst.img"
    dst.write_bytes(b"")
    os.truncate(dst, 64 * MiB)
    with Nbdkit(sockets / "src.sock", tmp_path / "src.log", "source", "file", [f"file={src}", "error-pread=EIO",
                                                                              "error-pread-rate=100%"],
                filters=["error"]) as source, \
            Nbdkit(sockets / "dst.sock", tmp_path / "dst.log", "target", "file", [f"file={dst}"]) as target:
        with pytest.raises(V2VError) as exc:
            copy(source, target)
    err = exc.value
    assert (err.step, err.disk) == ("copy", 0), err
    # nbdcopy reads in parallel: the first read to fail is one of the data's, not always the first.
    failed = re.search(r"read at offset (\d+) failed: Input/output error", err.message)
    assert err.message.startswith("copying disk 0 from") and failed, err.message
    assert 8 * MiB <= int(failed[1]) < 24 * MiB, err.message
    assert child_servers() == []


def test_a_source_that_stops_answering_fails_the_copy_after_the_stall_limit(tmp_path: Path, sockets: Path) -> None:
    """Every read takes 60 s; with stall_seconds=3 the copy stops after about 3 s of no progress."""
    src, dst = disk(tmp_path / "src.img"), tmp_path / "dst.img"
    dst.write_bytes(b"")
    os.truncate(dst, 64 * MiB)
    with Nbdkit(sockets / "src.sock", tmp_path / "src.log", "source", "file", [f"file={src}", "delay-read=60"],
                filters=["delay"]) as source, \
            Nbdkit(sockets / "dst.sock", tmp_path / "dst.log", "target", "file", [f"file={dst}"]) as target:
        with pytest.raises(V2VError) as exc:
            copy(source, target, stall_seconds=3)
    err = exc.value
    assert (err.step, err.disk) == ("copy", 0), err
    assert "no data moved for 3 s: the source or the target stopped answering" in err.message, err.message
    assert child_servers() == []


def copy_killing(victim: str, tmp_path: Path, sockets: Path) -> V2VError:
    """Copies a slowed source (every read 2 s) and SIGKILLs the source's or the target's nbdkit at
    the copy's first progress event, while nbdcopy waits for its first reads: the copy's error."""
    src, dst = disk(tmp_path / "src.img"), tmp_path / "dst.img"
    dst.write_bytes(b"")
    os.truncate(dst, 64 * MiB)
    with Nbdkit(sockets / "src.sock", tmp_path / "src.log", "source", "file", [f"file={src}", "delay-read=2"],
                filters=["delay"]) as source, \
            Nbdkit(sockets / "dst.sock", tmp_path / "dst.log", "target", "file", [f"file={dst}"]) as target:
        server = {"source": source, "target": target}[victim]
        with pytest.raises(V2VError) as exc:
            for ev in CopierService().copy(copier_pb2.CopyRequest(
                    guest="g", options=copier_pb2.CopyOptions(target_is_zero=True),
                    disks=[copier_pb2.DiskCopy(disk=0, source=source.uri, target=target.uri)])):
                if ev.HasField("progress") and server.process.running():
                    os.kill(server.process.pid, signal.SIGKILL)
    assert child_servers() == []
    return exc.value


@pytest.mark.parametrize("victim", ["source", "target"])
def test_an_export_that_vanishes_mid_copy_fails_the_copy_naming_the_disk(tmp_path: Path, sockets: Path,
                                                                         victim: str) -> None:
    err = copy_killing(victim, tmp_path, sockets)
    assert (err.step, err.disk, err.code) == ("copy", 0, pb.ERROR_CODE_PROCESS_FAILED), err
    sock = sockets / {"source": "src.sock", "target": "dst.sock"}[victim]
    assert err.message.startswith(f"copying disk 0: its {victim} (nbd+unix:///?socket={sock}) stopped serving "
                                  "during the copy (its NBD server closed the connection): "), err.message
