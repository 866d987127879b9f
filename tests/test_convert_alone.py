"""One road (issue 14 point 3): the Convert service is useful alone, on any NBD export, as its proto
promises. Its request carries the source and each disk's endpoint; no work directory, no file of
another service. One appliance launch, on a phony guest behind an nbdkit overlay."""

from __future__ import annotations

import tempfile
from pathlib import Path

import grpc
import pytest

from tests.conftest import sha256
from v2v.errors import from_rpc_error
from v2v.grpcserver import RunningService
from v2v.nbdserver import Nbdkit, nbd_uri
from v2v.services.servicers import phase_servicer
from v2v.v1 import convert_pb2, convert_pb2_grpc
from v2v.v1 import types_pb2 as pb


@pytest.mark.appliance
def test_convert_inspects_a_bare_nbd_export_without_a_work_directory(phony, tmp_path):
    disk = phony / "debian-single.img"
    before = sha256(disk)
    sock = tmp_path / "disk.sock"
    source = pb.Source(name="bare", disks=[pb.SourceDisk(index=0, location=str(disk), format="raw",
                                                         virtual_size=disk.stat().st_size)])
    root = tmp_path / "root"  # the service's root: it must stay empty
    svc = RunningService(f"unix:{tmp_path}/convert.sock", phase_servicer("convert", root))
    try:
        with Nbdkit(sock, tmp_path / "nbdkit.log", "disk 0", "file", [f"file={disk}"], filters=["cow"]), \
                grpc.insecure_channel(str(svc.address)) as ch:
            stub = convert_pb2_grpc.ConvertStub(ch)
            with pytest.raises(grpc.RpcError) as refused:  # the endpoints are part of the request
                list(stub.Convert(convert_pb2.ConvertRequest(guest="bare", source=source)))
            assert "one NBD endpoint per disk" in from_rpc_error(refused.value, step="convert").message
            events = list(stub.Convert(convert_pb2.ConvertRequest(
                guest="bare", source=source, disks=[nbd_uri(sock)],
                options=convert_pb2.ConvertOptions(inspect_only=True))))
    finally:
        svc.stop()
    result = next(e.result for e in events if e.HasField("result"))
    assert result.inspection.distro == "debian" and result.report.disks[0].virtual_size == disk.stat().st_size
    steps = {e.step.step for e in events if e.HasField("step")}
    assert {"launch", "inspect", "mount", "fstrim", "measure"} <= steps
    assert sha256(disk) == before  # the overlay took the trim
    assert not root.exists() and not list(Path(tempfile.gettempdir()).glob("v2v-convert.*"))
