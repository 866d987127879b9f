"""Finding 7 of the reliability probe, over the wire: hostile values in any field are
INVALID_ARGUMENT naming the field, never UNKNOWN "Exception calling application", and never
accepted. (The rules themselves: tests/unit/test_requests.py.)"""

from __future__ import annotations

import grpc
import pytest

from v2v.grpcserver import RunningService
from v2v.services.servicers import phase_servicer
from v2v.v1 import input_pb2, input_pb2_grpc, output_pb2, output_pb2_grpc


@pytest.mark.parametrize("service", ["input", "output"])
def test_hostile_values_are_invalid_argument_naming_the_field(service, tmp_path, phony):
    running = RunningService(f"unix:{tmp_path}/{service}.sock", phase_servicer(service, tmp_path / "root"))
    try:
        with grpc.insecure_channel(str(running.address)) as ch:
            disk = input_pb2.InputSpec(disk=input_pb2.DiskInput(paths=[str(phony / "debian-single.img")]))
            if service == "input":
                stub = input_pb2_grpc.InputStub(ch)
                calls = [(stub.Open, input_pb2.OpenRequest(workdir="g.1", guest="g\0", input=disk), "guest"),
                         (stub.Open, input_pb2.OpenRequest(workdir="g.1", guest="a\nb", input=disk), "guest"),
                         (stub.Open, input_pb2.OpenRequest(workdir="g.1", guest="g" * 300, input=disk), "guest"),
                         (stub.Open, input_pb2.OpenRequest(workdir="g.1", guest="g", input=input_pb2.InputSpec(
                             disk=input_pb2.DiskInput(paths=["/x\0y"]))), "input.disk.paths[0]")]
            else:
                stub = output_pb2_grpc.OutputStub(ch)
                calls = [(stub.Setup, output_pb2.SetupRequest(workdir="g.1", output=output_pb2.OutputSpec(
                    allocation=42)), "output.allocation")]  # type: ignore[arg-type]
            for call, request, field in calls:
                with pytest.raises(grpc.RpcError) as exc:
                    call(request, timeout=30)
                assert exc.value.code() == grpc.StatusCode.INVALID_ARGUMENT
                assert exc.value.details().startswith(field), exc.value.details()
        assert not (tmp_path / "root" / "g.1").exists()  # refused before any file was touched
    finally:
        running.stop()
