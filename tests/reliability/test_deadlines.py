"""Issue "One road" point 8: the coordinator's unary calls to the phase services have deadlines. An
output service that hangs in Check used to hold its guest for ever; now the guest fails at step
check, naming the service and its address, and is cleaned up (its input closed)."""

from __future__ import annotations

import threading
import time

import grpc

from tests.reliability.conftest import coordinator_over
from v2v.coordinator.clients import PhaseClients
from v2v.grpcserver import RunningService, rpc
from v2v.services.servicers import phase_servicer
from v2v.v1 import coordinator_pb2, coordinator_pb2_grpc, input_pb2, output_pb2, output_pb2_grpc
from v2v.v1 import types_pb2 as pb

GS = coordinator_pb2


class HungOutput(output_pb2_grpc.OutputServicer):
    """An output service whose Check never answers (until its caller gives up)."""

    def __init__(self) -> None:
        self.gave_up = threading.Event()

    @rpc
    def Check(self, request: output_pb2.CheckRequest, context: grpc.ServicerContext) -> output_pb2.CheckResponse:
        while context.is_active():
            time.sleep(0.05)
        self.gave_up.set()
        return output_pb2.CheckResponse()


def test_a_hung_output_fails_the_guest_at_check_naming_the_service(phony, tmp_path, monkeypatch):
    monkeypatch.setattr(PhaseClients, "quick", 2.0)
    root = tmp_path / "root"
    hung = HungOutput()
    inp = RunningService(f"unix:{tmp_path}/input.sock", phase_servicer("input", root))
    out = RunningService(f"unix:{tmp_path}/output.sock", (hung, output_pb2_grpc.add_OutputServicer_to_server,
                                                          "v2v.v1.Output"))
    try:
        with coordinator_over(tmp_path, input=inp, output=out) as ch:
            stub = coordinator_pb2_grpc.CoordinatorStub(ch)
            job = GS.GuestJob(name="g", input=input_pb2.InputSpec(disk=input_pb2.DiskInput(
                paths=[str(phony / "debian-single.img")])))
            gid = stub.Submit(GS.SubmitRequest(job=job), timeout=10).id
            deadline = time.monotonic() + 60
            while (status := stub.Status(GS.GuestRef(id=gid), timeout=5)).state == GS.GUEST_STATE_RUNNING or \
                    status.state == GS.GUEST_STATE_QUEUED:
                assert time.monotonic() < deadline, "the hung Check held the guest"
                time.sleep(0.2)
        assert status.state == GS.GUEST_STATE_FAILED
        assert (status.error.step, status.error.code) == ("check", pb.ERROR_CODE_SERVICE_UNAVAILABLE)
        # the service and its address (where to look), and the step (what it was asked)
        assert f"the output service at unix:{tmp_path}/output.sock did not answer in time in step check" \
            in status.error.message, status.error.message
        assert hung.gave_up.wait(10)  # the service saw its caller leave
        assert not any(p.is_socket() for p in root.rglob("*.sock"))  # the input was closed
    finally:
        out.stop()
        inp.stop()
