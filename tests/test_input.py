"""The input service against real nbdkit/qemu-nbd: overlays serve the disks, the source is
never written, bad input is refused with one line naming the file, nothing is left running."""

import socket
import subprocess
import time

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
    req = input_pb2.OpenRequest(workdir=wd.name, guest="t",
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
        assert wd.read(WorkDir.SOURCE, pb.Source()) == resp.source
        for sock in resp.sockets:
            h = nbd.NBD()
            h.connect_uri(f"nbd+unix:///?socket={sock}")
            assert h.get_size() == raw.stat().st_size
            h.pwrite(b"\xde\xad" * 2048, 0)  # lands in the overlay
            assert h.pread(4, 0) == b"\xde\xad\xde\xad"
            h.shutdown()
    finally:
        svc.close(wd.name)
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
    svc.close(wd.name)
    assert resp.source.disks[0].format == "raw"


def test_second_disk_failing_stops_the_first(phony, workroot):
    svc = InputService()
    with pytest.raises(V2VError, match="no such file"):
        open_disks(svc, workroot, phony / "debian-single.img", phony / "missing.img")
    # the workroot fixture checks that no nbdkit is left


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tcp_answers(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def test_existing_nbd_endpoints_are_sources(phony, workroot, tmp_path):
    """nbd+unix:// and nbd:// URIs: served through an overlay too, so even a writable export is
    never written."""
    disk = phony / "debian-single.img"
    before = sha256(disk)
    sock = tmp_path / "exp.sock"
    server = subprocess.Popen(["nbdkit", "--foreground", "--exit-with-parent", "--unix", str(sock), "file",
                               f"file={disk}"])
    port = free_port()
    tcp = subprocess.Popen(["nbdkit", "--foreground", "--exit-with-parent", "--ipv4-only", "--port", str(port),
                            "file", f"file={disk}", "--readonly"])
    tcp_uri = f"nbd://127.0.0.1:{port}"
    try:
        for _ in range(100):
            if sock.exists() and tcp_answers(port):
                break
            time.sleep(0.05)
        svc = InputService()
        wd, resp = open_disks(svc, workroot, f"nbd+unix:///?socket={sock}", tcp_uri)
        try:
            assert [d.format for d in resp.source.disks] == ["raw", "raw"]
            assert [d.virtual_size for d in resp.source.disks] == [disk.stat().st_size] * 2
            assert resp.source.name == "exp"
            for served in resp.sockets:
                h = nbd.NBD()
                h.connect_uri(f"nbd+unix:///?socket={served}")
                with open(disk, "rb") as f:
                    assert h.pread(65536, 0) == f.read(65536)
                h.pwrite(b"\xff" * 4096, 0)
                h.shutdown()
        finally:
            svc.close(wd.name)
    finally:
        server.terminate()
        tcp.terminate()
        server.wait()
        tcp.wait()
    assert sha256(disk) == before


def test_nbd_endpoint_that_does_not_answer(workroot, tmp_path):
    svc = InputService()
    with pytest.raises(V2VError, match="cannot connect to nbd\\+unix"):
        open_disks(svc, workroot, f"nbd+unix:///?socket={tmp_path}/nobody.sock")


@pytest.mark.parametrize("fmt, options", [("vdi", []), ("vpc", []), ("vhdx", []), ("qcow2", []),
                                          ("vmdk", ["-o", "subformat=monolithicSparse"]),
                                          ("vmdk", ["-o", "subformat=monolithicFlat"]),
                                          ("vmdk", ["-o", "subformat=streamOptimized"])])
def test_every_format_qemu_reads(phony, workroot, tmp_path, fmt, options):
    image = tmp_path / f"guest.{fmt}"
    subprocess.run(["qemu-img", "convert", "-O", fmt, *options, phony / "debian-single.img", image], check=True)
    svc = InputService()
    wd, resp = open_disks(svc, workroot, image)
    try:
        assert resp.source.disks[0].format == fmt
        h = nbd.NBD()
        h.connect_uri(f"nbd+unix:///?socket={resp.sockets[0]}")
        with open(phony / "debian-single.img", "rb") as f:
            f.seek(1024 * 1024)
            assert h.pread(65536, 1024 * 1024) == f.read(65536)
        h.shutdown()
    finally:
        svc.close(wd.name)


def test_truncated_vmdk_is_refused(phony, workroot, tmp_path):
    image = tmp_path / "cut.vmdk"
    subprocess.run(["qemu-img", "convert", "-O", "vmdk", "-o", "subformat=streamOptimized",
                    phony / "debian-single.img", image], check=True)
    with open(image, "r+b") as f:
        f.truncate(image.stat().st_size // 3)
    svc = InputService()
    with pytest.raises(V2VError) as info:
        wd, resp = open_disks(svc, workroot, image)
        svc.close(wd.name)
    assert info.value.code in (pb.ERROR_CODE_BAD_INPUT, pb.ERROR_CODE_PROCESS_FAILED)
    assert "cut.vmdk" in info.value.one_line() and "\n" not in info.value.one_line()


def test_open_creates_a_named_work_directory_that_describe_reports_and_close_removes(phony, workroot,
                                                                                    monkeypatch):
    """A bare work-directory name lands under the service's own root, so a coordinator elsewhere
    only names it; Describe tells it what is there, Close(remove) takes it away."""
    monkeypatch.setenv("V2V_WORKDIR_ROOT", str(workroot))
    svc = InputService()
    name = WorkDir.new_name("named guest")
    assert "/" not in name and name.startswith("named_guest.")
    resp = svc.open(input_pb2.OpenRequest(workdir=name, guest="g", input=input_pb2.InputSpec(
        disk=input_pb2.DiskInput(paths=[str(phony / "debian-single.img")]))))
    wd = workroot / name
    try:
        assert (resp.workdir, resp.path, list(resp.sockets)) == (name, str(wd), [str(wd / "in0.sock")])
        assert (wd.stat().st_mode & 0o777) == 0o700
        assert ((wd / "in0.sock").stat().st_mode & 0o777) == 0o600  # finding 8: they were 0755
        described = svc.describe(name)
        assert (described.workdir, described.path, described.exists, described.open) == (name, str(wd), True, True)
        assert list(described.sockets) == list(resp.sockets)
        assert list(described.done) == ["open"] and described.source == resp.source
        assert not described.HasField("target")
        marker = WorkDir(name).read("open.done", pb.StepEvent())
        assert (marker.guest, marker.state) == ("g", pb.STEP_STATE_SUCCEEDED) and marker.HasField("duration")
    finally:
        svc.close(name)
    assert wd.is_dir() and not svc.describe(name).open  # closed, kept for its logs
    svc.close(name, remove=True)
    assert not wd.exists() and not svc.describe(name).exists


def test_close_removes_only_work_directories(tmp_path):
    """Close(remove) deletes a tree on a client's word: never one v2v did not make, and never one
    named by a path."""
    other = tmp_path / "precious"
    (other / "logs").mkdir(parents=True)
    with pytest.raises(V2VError, match="not a v2v work directory"):
        InputService(tmp_path).close("precious", remove=True)
    with pytest.raises(V2VError, match="is not a name"):
        InputService(tmp_path).close(str(other), remove=True)
    assert (other / "logs").is_dir()
