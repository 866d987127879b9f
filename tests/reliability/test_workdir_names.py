"""Finding 1 of the reliability probe (critical): Open accepted any absolute or `../` path as its
work directory and tagged it, even when it then failed, and Close(remove) deleted whatever carried
the tag: `Open{workdir: "."}` then `Close{workdir: "", remove: true}` deleted the whole root with two
guests open in it, and `Open{workdir: "/"}` tagged the host's `/`. Setup and Copy wrote into any
existing directory the same way. Now every service takes a name under its own root, and refuses
anything else with INVALID_ARGUMENT before it touches a file."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from google.protobuf.message import Message

from v2v.grpcserver import RunningService
from v2v.services.servicers import PHASES, phase_servicer
from v2v.v1 import copier_pb2, copier_pb2_grpc, input_pb2, input_pb2_grpc, output_pb2, output_pb2_grpc
from v2v.v1 import types_pb2 as pb
from v2v.workdir import WorkDir

HOSTILE = [".", "..", "/", "/tmp", "../escape", "a/b", "a/../b", "-rf", ".hidden", "x\n", "x\t", "x\0y",
           "n" * 81, "", " ", "é"]


@pytest.fixture
def services(tmp_path: Path) -> Iterator[tuple[Path, dict[str, grpc.Channel]]]:
    """The input, output and copier services over gRPC, sharing the root tmp_path/root."""
    root = tmp_path / "root"
    running = [RunningService(f"unix:{tmp_path}/{s}.sock", phase_servicer(s, root)) for s in PHASES if s != "convert"]
    channels = {svc.address.split("/")[-1].removesuffix(".sock"): grpc.insecure_channel(str(svc.address))
                for svc in running}
    try:
        yield root, channels
    finally:
        for ch in channels.values():
            ch.close()
        for svc in running:
            svc.stop()


def refused(call: object, request: object, code: grpc.StatusCode = grpc.StatusCode.INVALID_ARGUMENT) -> str:
    with pytest.raises(grpc.RpcError) as exc:
        result = call(request, timeout=30)  # type: ignore[operator]
        if not isinstance(result, Message):  # a stream fails as it is read
            list(result)
    assert exc.value.code() == code, exc.value.details()
    return str(exc.value.details())


def test_no_request_reaches_a_directory_outside_the_root(services, phony, tmp_path):
    root, ch = services
    inp = input_pb2_grpc.InputStub(ch["input"])
    disk = input_pb2.InputSpec(disk=input_pb2.DiskInput(paths=[str(phony / "debian-single.img")]))
    # Two guests open under the root: what the probe's two calls deleted.
    for name in ("g1.aaaa", "g2.bbbb"):
        assert inp.Open(input_pb2.OpenRequest(workdir=name, guest=name, input=disk), timeout=60).workdir == name
    outside = tmp_path / "precious"
    outside.mkdir()
    (outside / "data").write_text("keep")

    for name in [*HOSTILE, str(outside), str(root / "g1.aaaa")]:
        message = refused(inp.Open, input_pb2.OpenRequest(workdir=name, guest="evil", input=disk))
        expected = "no work directory given" if not name else "contains a NUL" if "\0" in name else "is not a name"
        assert expected in message, (name, message)
        refused(inp.Close, input_pb2.CloseRequest(workdir=name, remove=True))
        refused(inp.Describe, input_pb2.DescribeRequest(workdir=name))
        refused(inp.ReadLogs, input_pb2.ReadLogsRequest(workdir=name))  # reads no logs/ of a directory outside
    assert not Path("/.v2v-workdir").exists() and not (root / WorkDir.TAG).exists()
    assert not (outside / WorkDir.TAG).exists() and (outside / "data").read_text() == "keep"
    assert sorted(p.name for p in root.iterdir()) == ["g1.aaaa", "g2.bbbb"]

    # Setup and Copy neither write into a path nor make a directory for a name Open never made.
    target = pb.TargetMeta(source=pb.Source(name="t", disks=[pb.SourceDisk(index=0, virtual_size=1 << 20)]))
    local = output_pb2.OutputSpec(local=output_pb2.LocalOutput(directory=str(tmp_path)))
    out = output_pb2_grpc.OutputStub(ch["output"])
    copier = copier_pb2_grpc.CopierStub(ch["copier"])
    for name in (str(outside), "../precious", "never-opened"):
        code = grpc.StatusCode.NOT_FOUND if name == "never-opened" else grpc.StatusCode.INVALID_ARGUMENT
        setup = refused(out.Setup, output_pb2.SetupRequest(workdir=name, guest="evil", output=local, target=target),
                        code)
        refused(out.Finalize, output_pb2.FinalizeRequest(workdir=name, guest="evil", output=local, target=target),
                code)
        if name != "never-opened":
            refused(out.Abort, output_pb2.AbortRequest(workdir=name))
        refused(copier.Copy, copier_pb2.CopyRequest(workdir=name, guest="evil", disks=[copier_pb2.DiskCopy(
            disk=0, source=str(root / "g1.aaaa" / "in0.sock"), target=str(tmp_path / "t.sock"))]), code)
        if name == "never-opened":
            assert "no work directory never-opened under" in setup
    assert sorted(p.name for p in outside.iterdir()) == ["data"]
    assert sorted(p.name for p in root.iterdir()) == ["g1.aaaa", "g2.bbbb"]
    assert not (tmp_path / "t-sda").exists()

    # The open guests were never touched: each still serves its disk, and closes cleanly.
    for name in ("g1.aaaa", "g2.bbbb"):
        described = inp.Describe(input_pb2.DescribeRequest(workdir=name), timeout=10)
        assert described.open and Path(described.sockets[0]).is_socket()
        inp.Close(input_pb2.CloseRequest(workdir=name, remove=True), timeout=30)
    assert list(root.iterdir()) == []


def test_an_existing_directory_v2v_did_not_make_is_not_taken(services, phony):
    root, ch = services
    root.mkdir(parents=True, exist_ok=True)
    (root / "theirs").mkdir()
    inp = input_pb2_grpc.InputStub(ch["input"])
    disk = input_pb2.InputSpec(disk=input_pb2.DiskInput(paths=[str(phony / "debian-single.img")]))
    assert "is not a v2v work directory" in refused(inp.Open, input_pb2.OpenRequest(workdir="theirs", input=disk))
    assert "is not a v2v work directory" in refused(inp.Close, input_pb2.CloseRequest(workdir="theirs", remove=True))
    assert list((root / "theirs").iterdir()) == []
