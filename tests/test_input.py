"""The input service against real nbdkit/qemu-nbd: overlays serve the disks, the source is
never written, bad input is refused with one line naming the file, nothing is left running."""

import subprocess

import nbd
import pytest

from tests.conftest import sha256
from v2v.errors import V2VError
from v2v.services.input.service import InputService
from v2v.v1 import input_pb2
from v2v.v1 import types_pb2 as pb
from v2v.workdir import WorkDir


def open_disks(svc, workroot, *paths, fmt=""):
    wd = WorkDir.create("t", workroot)
    req = input_pb2.OpenRequest(workdir=str(wd.path), guest="t",
                                input=input_pb2.InputSpec(disk=input_pb2.DiskInput(paths=[str(p) for p in paths],
                                                                                   format=fmt)))
    return wd, svc.open(req)


def test_raw_and_qcow2_served_writable_source_untouched(phony, workroot, tmp_path):
    qcow = tmp_path / "single.qcow2"
    subprocess.run(["qemu-img", "convert", "-O", "qcow2", phony / "debian-single.img", qcow], check=True)
    raw = phony / "debian-single.img"
    before = {raw: sha256(raw), qcow: sha256(qcow)}
    svc = InputService()
    wd, resp = open_disks(svc, workroot, raw, qcow)
    try:
        assert [d.format for d in resp.source.disks] == ["raw", "qcow2"]
        assert resp.source.name == "debian-single" and resp.source.memory == 2 * 1024**3
        assert resp.source.vcpus == 1 and resp.source.nics[0].network == "default"
        assert WorkDir(wd.path).read(WorkDir.SOURCE, pb.Source()) == resp.source
        for sock in resp.sockets:
            h = nbd.NBD()
            h.connect_uri(f"nbd+unix:///?socket={sock}")
            assert h.get_size() == raw.stat().st_size
            h.pwrite(b"\xde\xad" * 2048, 0)  # lands in the overlay
            assert h.pread(4, 0) == b"\xde\xad\xde\xad"
            h.shutdown()
    finally:
        svc.close(str(wd.path))
    assert {p: sha256(p) for p in before} == before
    assert not list(wd.path.glob("*.sock"))


@pytest.mark.parametrize("name, expect", [
    ("missing.img", "no such file"),
    ("zero-length.img", "is empty"),
    ("garbage.img", "not a disk image"),
    ("blank.img", "not a disk image"),
])
def test_bad_input_is_one_line_naming_the_file(phony, workroot, name, expect):
    svc = InputService()
    with pytest.raises(V2VError) as info:
        open_disks(svc, workroot, phony / name)
    err = info.value
    assert err.code == pb.ERROR_CODE_BAD_INPUT and err.step == "open"
    assert expect in err.message and name in err.message and "\n" not in err.one_line()


def test_forced_format_overrides_detection(phony, workroot):
    svc = InputService()
    wd, resp = open_disks(svc, workroot, phony / "garbage.img", fmt="raw")  # the user says so: allowed
    svc.close(str(wd.path))
    assert resp.source.disks[0].format == "raw"


def test_second_disk_failing_stops_the_first(phony, workroot):
    svc = InputService()
    with pytest.raises(V2VError, match="no such file"):
        open_disks(svc, workroot, phony / "debian-single.img", phony / "missing.img")
    # the workroot fixture checks that no nbdkit is left
