"""The output service with -o local, against real qemu-img, nbdkit and qemu-nbd."""

import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import grpc
import nbd
import pytest

from tests.conftest import child_servers
from v2v import grpcserver
from v2v.drives import device_name, drive_letters
from v2v.errors import V2VError, from_rpc_error
from v2v.services.output.service import OutputService
from v2v.v1 import output_pb2, output_pb2_grpc
from v2v.v1 import types_pb2 as pb
from v2v.workdir import WorkDir

MiB = 1024**2
# (disk, offset, bytes) written through the NBD sockets
WRITES = [(0, 0, b"\x55\xaa" * 256), (0, 40 * MiB + 4096, os.urandom(MiB)), (1, 16 * MiB - 4096, os.urandom(4096))]




def make_target(*sizes: int) -> pb.TargetMeta:
    source = pb.Source(name="guest", hypervisor=pb.HYPERVISOR_VMWARE, memory=1024 * MiB, vcpus=1,
                       disks=[pb.SourceDisk(index=i, virtual_size=s) for i, s in enumerate(sizes)],
                       nics=[pb.Nic(network="default", network_type=pb.NETWORK_TYPE_NETWORK)])
    return pb.TargetMeta(source=source, caps=pb.GuestCaps(block_bus=pb.BLOCK_BUS_VIRTIO_SCSI,
                                                          machine=pb.MACHINE_Q35, arch="x86_64"))


def spec(directory: Path, fmt: str = "", allocation: int = output_pb2.ALLOCATION_UNSPECIFIED,
         name: str = "") -> output_pb2.OutputSpec:
    return output_pb2.OutputSpec(name=name, format=fmt, allocation=allocation,
                                 local=output_pb2.LocalOutput(directory=str(directory)))


def setup(service, workdir, output, target) -> output_pb2.SetupResponse:
    return service.setup(output_pb2.SetupRequest(workdir=workdir.name, guest="guest", output=output,
                                                 target=target))


def finalize(service, workdir, output) -> output_pb2.FinalizeResponse:
    return service.finalize(output_pb2.FinalizeRequest(workdir=workdir.name, guest="guest", output=output))


def write_through_nbd(sockets: list[str], writes: list[tuple[int, int, bytes]] = WRITES) -> None:
    for disk, offset, data in writes:
        h = nbd.NBD()
        h.connect_uri(f"nbd+unix:///?socket={sockets[disk]}")
        assert h.pread(len(data), offset) == bytes(len(data))  # a fresh disk reads as zeros
        h.pwrite(data, offset)
        h.shutdown()


def expected_image(path: Path, disk: int, size: int, writes: list[tuple[int, int, bytes]] = WRITES) -> Path:
    with open(path, "wb") as f:
        f.truncate(size)
        for d, offset, data in writes:
            if d == disk:
                f.seek(offset)
                f.write(data)
    return path


def image_info(path: str) -> dict:
    return json.loads(subprocess.run(["qemu-img", "info", "--output=json", path], capture_output=True,
                                     text=True, check=True).stdout)


def test_drive_and_device_names():
    assert [drive_letters(i) for i in (0, 1, 25, 26, 27, 51, 52, 701, 702)] == [
        "a", "b", "z", "aa", "ab", "az", "ba", "zz", "aaa"]
    assert device_name(pb.BLOCK_BUS_VIRTIO_BLK, 1) == "vdb"
    assert device_name(pb.BLOCK_BUS_SATA, 26) == "sdaa"
    assert device_name(pb.BLOCK_BUS_IDE, 0) == "hda"


@pytest.mark.parametrize("fmt", ["raw", "qcow2"])
@pytest.mark.parametrize("allocation", [output_pb2.ALLOCATION_SPARSE, output_pb2.ALLOCATION_PREALLOCATED])
def test_setup_write_finalize(service, workdir, tmp_path, fmt, allocation):
    out = tmp_path / "out"
    out.mkdir()
    sizes = (64 * MiB, 16 * MiB)
    output = spec(out, fmt, allocation)
    resp = setup(service, workdir, output, make_target(*sizes))

    assert resp.target_is_zero
    assert resp.sockets == [str(workdir.out_sock(0)), str(workdir.out_sock(1))]
    assert [(d.index, d.path, d.format, d.virtual_size, d.device, d.bus) for d in resp.disks] == [
        (0, str(out / "guest-sda"), fmt, sizes[0], "sda", pb.BLOCK_BUS_VIRTIO_SCSI),
        (1, str(out / "guest-sdb"), fmt, sizes[1], "sdb", pb.BLOCK_BUS_VIRTIO_SCSI)]
    saved = workdir.read(WorkDir.TARGET, pb.TargetMeta())
    assert saved.name == "guest" and list(saved.disks) == list(resp.disks)
    write_through_nbd(list(resp.sockets))

    files = finalize(service, workdir, output).files
    assert list(files) == [str(out / "guest-sda"), str(out / "guest-sdb"), str(out / "guest.xml")]
    assert child_servers() == []
    assert not workdir.out_sock(0).exists() and not workdir.out_sock(1).exists()
    for disk, size in enumerate(sizes):
        info = image_info(files[disk])
        assert (info["format"], info["virtual-size"]) == (fmt, size)
        if allocation == output_pb2.ALLOCATION_PREALLOCATED:
            assert info["actual-size"] >= size
        else:
            assert info["actual-size"] < size // 2
        expected = expected_image(tmp_path / f"expected{disk}.raw", disk, size)
        subprocess.run(["qemu-img", "compare", "-f", fmt, "-F", "raw", files[disk], str(expected)], check=True)
    if shutil.which("xmllint"):
        subprocess.run(["virt-xml-validate", files[2], "domain"], check=True, capture_output=True)
    assert f"<source file=\"{files[0]}\" />" in Path(files[2]).read_text()


def test_name_from_spec_and_finalize_with_listed_disks(service, workdir, tmp_path):
    output = spec(tmp_path, name="renamed")
    resp = setup(service, workdir, output, make_target(MiB))
    assert resp.disks[0].path == str(tmp_path / "renamed-sda")
    target = make_target(MiB)
    target.disks.extend(resp.disks)
    files = service.finalize(output_pb2.FinalizeRequest(workdir=workdir.name, output=output, target=target))
    assert list(files.files) == [str(tmp_path / "renamed-sda"), str(tmp_path / "renamed.xml")]
    assert "<name>renamed</name>" in (tmp_path / "renamed.xml").read_text()


def test_disks_set_up_before_the_conversion_get_its_bus(service, workdir, tmp_path):
    """Setup before the conversion (copy while converting, warm) gives the disks the default bus;
    Finalize gives them the one the conversion chose, from the caps it receives: no caller patches
    bus and device names."""
    output = spec(tmp_path)
    before = make_target(MiB, MiB)
    before.ClearField("caps")
    resp = setup(service, workdir, output, before)
    assert all((Path(sock).stat().st_mode & 0o777) == 0o600 for sock in resp.sockets)  # finding 8
    blk = pb.BLOCK_BUS_VIRTIO_BLK
    assert [(d.device, d.bus) for d in resp.disks] == [("vda", blk), ("vdb", blk)]
    target = make_target(MiB, MiB)  # converted: virtio-scsi
    target.disks.extend(resp.disks)
    files = service.finalize(output_pb2.FinalizeRequest(workdir=workdir.name, output=output, target=target)).files
    xml = Path(files[-1]).read_text().replace('"', "'")
    assert "<target dev='sda' bus='scsi'" in xml and "<target dev='sdb' bus='scsi'" in xml


def test_finalize_without_setup_is_refused(service, workdir, tmp_path):
    """Finding 6 of the reliability probe: Finalize succeeded without Setup, describing disks that
    were never made."""
    target = make_target(MiB)
    target.disks.append(pb.TargetDisk(index=0, path=str(tmp_path / "guest-sda")))
    with pytest.raises(V2VError, match=f"nothing to finalize in {workdir.name}: Setup has not made"):
        service.finalize(output_pb2.FinalizeRequest(workdir=workdir.name, output=spec(tmp_path), target=target))
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("existing", ["guest-sdb", "guest.xml"])
def test_refuses_existing_target(service, workdir, tmp_path, existing):
    (tmp_path / existing).write_text("precious")
    with pytest.raises(V2VError) as exc:
        setup(service, workdir, spec(tmp_path), make_target(MiB, MiB))
    assert exc.value.code == pb.ERROR_CODE_TARGET_EXISTS
    assert exc.value.step == "setup" and exc.value.guest == "guest"
    assert str(tmp_path / existing) in exc.value.message
    assert sorted(p.name for p in tmp_path.iterdir()) == [existing]
    assert (tmp_path / existing).read_text() == "precious"
    assert not workdir.out_sock(0).exists()


def test_bad_directory_format_and_name(service, workdir, tmp_path):
    missing = tmp_path / "missing"
    a_file = tmp_path / "file"
    a_file.write_text("")
    for output, named in [(spec(missing), str(missing)), (spec(a_file), str(a_file)),
                          (spec(tmp_path, "vmdk"), "vmdk"), (spec(tmp_path, name="a/b"), "a/b"),
                          (output_pb2.OutputSpec(), "output type")]:
        with pytest.raises(V2VError) as exc:
            setup(service, workdir, output, make_target(MiB))
        assert exc.value.code == pb.ERROR_CODE_BAD_INPUT and exc.value.step == "setup"
        assert named in exc.value.message
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


def serve(service, workdir) -> output_pb2.ServeResponse:
    return service.serve(output_pb2.ServeRequest(workdir=workdir.name, guest="guest"))


def read_through_nbd(sock: str, offset: int, length: int) -> bytes:
    h = nbd.NBD()
    h.connect_uri(f"nbd+unix:///?socket={sock}")
    try:
        return h.pread(length, offset)
    finally:
        h.shutdown()


@pytest.mark.parametrize("fmt", ["raw", "qcow2"])
def test_serve_reopens_the_disks_setup_made(service, workdir, tmp_path, fmt):
    """Serve (warm rounds): the same disks on the same sockets again, with what the last writer left."""
    out = tmp_path / "out"
    out.mkdir()
    output = spec(out, fmt)
    with pytest.raises(V2VError) as exc:
        serve(service, workdir)
    assert (exc.value.code, exc.value.step) == (pb.ERROR_CODE_NOT_FOUND, "serve")
    made = setup(service, workdir, output, make_target(64 * MiB, 16 * MiB))
    write_through_nbd(list(made.sockets))
    with pytest.raises(V2VError, match="served already"):
        serve(service, workdir)
    service.release(workdir.name)
    assert child_servers() == []

    served = serve(service, workdir)
    assert list(served.disks) == list(made.disks) and list(served.sockets) == list(made.sockets)
    assert not served.preallocated and len(child_servers()) == 2
    for disk, offset, data in WRITES:
        assert read_through_nbd(served.sockets[disk], offset, len(data)) == data
    later = [(1, 8 * MiB, os.urandom(64 * 1024))]
    write_through_nbd(list(served.sockets), later)
    service.release(workdir.name)
    assert child_servers() == [] and not workdir.out_sock(0).exists()

    again = serve(service, workdir)
    assert read_through_nbd(again.sockets[1], 8 * MiB, 64 * 1024) == later[0][2]
    files = finalize(service, workdir, output).files  # a served target finalizes as a set-up one
    assert child_servers() == []
    for disk, size in ((0, 64 * MiB), (1, 16 * MiB)):
        expected = expected_image(tmp_path / f"expected{disk}.raw", disk, size, WRITES + later)
        subprocess.run(["qemu-img", "compare", "-f", fmt, "-F", "raw", files[disk], str(expected)], check=True)
    with pytest.raises(V2VError, match="finalized") as exc:
        serve(service, workdir)
    assert exc.value.code == pb.ERROR_CODE_NOT_FOUND


def test_serve_refuses_a_missing_disk_and_an_output_without_disks(service, workdir, tmp_path):
    made = setup(service, workdir, spec(tmp_path), make_target(MiB, MiB))
    service.release(workdir.name)
    Path(made.disks[1].path).unlink()
    with pytest.raises(V2VError, match="is gone") as exc:
        serve(service, workdir)
    assert (exc.value.code, exc.value.disk) == (pb.ERROR_CODE_NOT_FOUND, 1)
    assert child_servers() == []  # disk 0's server stopped again
    service.abort(workdir.name)
    null = WorkDir.create("null", workdir.root)
    setup(service, null, output_pb2.OutputSpec(null=output_pb2.NullOutput()), make_target(MiB))
    service.release(null.name)
    with pytest.raises(V2VError, match="no disks that can be served again") as exc:
        serve(service, null)
    assert exc.value.code == pb.ERROR_CODE_UNSUPPORTED


def test_abort_removes_disks_sockets_and_servers(service, workdir, tmp_path):
    resp = setup(service, workdir, spec(tmp_path, "qcow2"), make_target(MiB, MiB))
    assert len(child_servers()) == 2
    with pytest.raises(V2VError, match="already set up"):
        setup(service, workdir, spec(tmp_path, "qcow2", name="other"), make_target(MiB))
    service.abort(workdir.name)
    assert child_servers() == []
    assert list(tmp_path.iterdir()) == []
    assert not any(Path(s).exists() for s in resp.sockets)
    service.abort(workdir.name)  # nothing left to abort: no error


def test_failed_finalize_leaves_the_disks_to_abort(service, workdir, tmp_path):
    setup(service, workdir, spec(tmp_path), make_target(MiB))
    with pytest.raises(V2VError) as exc:
        finalize(service, workdir, spec(tmp_path / "gone"))
    assert (exc.value.code, exc.value.step) == (pb.ERROR_CODE_BAD_INPUT, "finalize")
    assert child_servers() == [] and [p.name for p in tmp_path.iterdir()] == ["guest-sda"]
    service.abort(workdir.name)
    assert list(tmp_path.iterdir()) == []


def test_shutdown_aborts_open_outputs(workdir, tmp_path):
    service = OutputService()
    setup(service, workdir, spec(tmp_path), make_target(MiB))
    service.shutdown()
    assert child_servers() == [] and list(tmp_path.iterdir()) == []


def test_full_disk_is_no_space_and_removes_created_disks(service, workdir):
    if subprocess.run(["stat", "-f", "-c", "%T", "/dev/shm"], capture_output=True, text=True).stdout.strip() != "tmpfs":
        pytest.skip("needs a tmpfs on /dev/shm: it refuses an impossible preallocation at once")
    out = Path(tempfile.mkdtemp(dir="/dev/shm"))
    try:
        with pytest.raises(V2VError) as exc:
            setup(service, workdir, spec(out, "raw", output_pb2.ALLOCATION_PREALLOCATED),
                  make_target(MiB, 1024**5))
        assert exc.value.code == pb.ERROR_CODE_NO_SPACE
        assert (exc.value.step, exc.value.disk) == ("setup", 1)
        assert str(out / "guest-sdb") in exc.value.message
        assert list(out.iterdir()) == []  # disk 0 was created and served, then removed
        assert child_servers() == []
    finally:
        shutil.rmtree(out)


def test_over_grpc(service, workdir, tmp_path):
    server = grpcserver.serve(str(tmp_path / "output.sock"),
                              [(service, output_pb2_grpc.add_OutputServicer_to_server, "v2v.v1.Output")])
    try:
        with grpcserver.channel(str(tmp_path / "output.sock")) as ch:
            stub = output_pb2_grpc.OutputStub(ch)
            output = spec(tmp_path, "raw")
            request = output_pb2.SetupRequest(workdir=workdir.name, guest="guest", output=output,
                                              target=make_target(MiB))
            assert stub.Setup(request).disks[0].path == str(tmp_path / "guest-sda")
            stub.Abort(output_pb2.AbortRequest(workdir=workdir.name))
            (tmp_path / "guest-sda").write_text("")
            with pytest.raises(grpc.RpcError) as exc:
                stub.Setup(request)
            assert exc.value.code() == grpc.StatusCode.ALREADY_EXISTS
            err = from_rpc_error(exc.value, step="setup")
            assert (err.code, err.step, err.guest) == (pb.ERROR_CODE_TARGET_EXISTS, "setup", "guest")
    finally:
        server.stop(None)


def test_setup_needs_its_target_in_the_request(service, workdir, tmp_path):
    """One road: Setup does not go looking for another service's file."""
    with pytest.raises(V2VError, match="SetupRequest.target is required"):
        service.setup(output_pb2.SetupRequest(workdir=workdir.name, guest="guest", output=spec(tmp_path)))
    assert list(tmp_path.iterdir()) == []


def test_a_restarted_output_service_aborts_what_the_killed_one_set_up(workdir, tmp_path):
    """Finding 6 of the reliability probe: a killed output service left its partial target, and
    the restarted one could not remove it. Setup journals its spec and disks; Abort reads them."""
    first = OutputService()
    disk = Path(setup(first, workdir, spec(tmp_path), make_target(MiB)).disks[0].path)
    first.release(workdir.name)  # its servers gone, as with a killed service; its disks stay
    assert disk.exists()
    restarted = OutputService()
    assert restarted.abort(workdir.name) is True
    assert list(tmp_path.iterdir()) == []
    assert restarted.abort(workdir.name) is False  # nothing left to take back
    with pytest.raises(V2VError, match="nothing to finalize"):
        restarted.finalize(output_pb2.FinalizeRequest(workdir=workdir.name, output=spec(tmp_path)))


def test_a_finalized_output_is_never_aborted_from_the_journal(workdir, tmp_path):
    first = OutputService()
    setup(first, workdir, spec(tmp_path), make_target(MiB))
    files = finalize(first, workdir, spec(tmp_path)).files
    assert OutputService().abort(workdir.name) is False
    assert all(Path(f).exists() for f in files)
