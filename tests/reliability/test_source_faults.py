"""Source faults (docs/reliability.md): a disk served through nbdkit's error and delay filters, copied
by the copier service (the service's own code in this process, no work directory). A source that
fails its reads, or that stops answering, fails the copy naming the disk and where it failed; the
copy never reports success; no nbdcopy or nbdkit is left."""

from __future__ import annotations

import os
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
    assert "copying disk 0 from" in err.message and "read at offset 8388608 failed: Input/output error" in \
        err.message, err.message
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
