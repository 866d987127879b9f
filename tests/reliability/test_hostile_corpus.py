"""The reliability suite's hostile-request corpus: every RPC of every service, given empty messages,
work directories outside the root, NUL bytes, forged lines, over-long names, unknown enum values and
unknown ids. Each is refused with INVALID_ARGUMENT, NOT_FOUND or FAILED_PRECONDITION carrying v2v's
Error detail (never UNKNOWN, never a traceback), and nothing appears outside the services' roots."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf.message import Message
from grpc_status import rpc_status

from v2v.grpcserver import RunningService
from v2v.services.servicers import PHASES, phase_servicer
from v2v.v1 import (
    convert_pb2,
    convert_pb2_grpc,
    coordinator_pb2,
    coordinator_pb2_grpc,
    copier_pb2,
    copier_pb2_grpc,
    input_pb2,
    input_pb2_grpc,
    output_pb2,
    output_pb2_grpc,
)
from v2v.v1 import types_pb2 as pb

REFUSED = {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND, grpc.StatusCode.FAILED_PRECONDITION}
WORKDIRS = ["../escape", "/etc", ".", "a/b", "x\0y", "line\nbreak", "n" * 200]
GUESTS = ["g\0", "g\nstep open: forged", "g\tx", "g" * 300]

# (service, stub class, method, request class): every RPC but Coordinator.List, whose empty request
# is a valid question.
RPCS: list[tuple[str, Any, str, type[Message]]] = [
    ("input", input_pb2_grpc.InputStub, "Open", input_pb2.OpenRequest),
    ("input", input_pb2_grpc.InputStub, "Close", input_pb2.CloseRequest),
    ("input", input_pb2_grpc.InputStub, "Describe", input_pb2.DescribeRequest),
    ("convert", convert_pb2_grpc.ConvertStub, "Convert", convert_pb2.ConvertRequest),
    ("output", output_pb2_grpc.OutputStub, "Check", output_pb2.CheckRequest),
    ("output", output_pb2_grpc.OutputStub, "Setup", output_pb2.SetupRequest),
    ("output", output_pb2_grpc.OutputStub, "Finalize", output_pb2.FinalizeRequest),
    ("output", output_pb2_grpc.OutputStub, "Abort", output_pb2.AbortRequest),
    ("output", output_pb2_grpc.OutputStub, "Release", output_pb2.ReleaseRequest),
    ("copier", copier_pb2_grpc.CopierStub, "Copy", copier_pb2.CopyRequest),
    ("copier", copier_pb2_grpc.CopierStub, "Cancel", copier_pb2.CancelRequest),
    ("coordinator", coordinator_pb2_grpc.CoordinatorStub, "Submit", coordinator_pb2.SubmitRequest),
    ("coordinator", coordinator_pb2_grpc.CoordinatorStub, "Watch", coordinator_pb2.GuestRef),
    ("coordinator", coordinator_pb2_grpc.CoordinatorStub, "Follow", coordinator_pb2.GuestRef),
    ("coordinator", coordinator_pb2_grpc.CoordinatorStub, "Status", coordinator_pb2.GuestRef),
    ("coordinator", coordinator_pb2_grpc.CoordinatorStub, "Cancel", coordinator_pb2.GuestRef),
    ("coordinator", coordinator_pb2_grpc.CoordinatorStub, "Retry", coordinator_pb2.RetryRequest),
]


def hostile(request_class: type[Message]) -> Iterator[tuple[str, Message]]:
    """The hostile variants a request type admits, each with a label."""
    fields = request_class.DESCRIPTOR.fields_by_name
    if request_class is not copier_pb2.CopyRequest:  # an empty Copy copies nothing, rightly
        yield "empty", request_class()
    for value in WORKDIRS if "workdir" in fields else []:
        yield f"workdir={value[:12]!r}", request_class(workdir=value)  # type: ignore[call-arg]
    for value in GUESTS if "guest" in fields else []:
        named = request_class(guest=value)  # type: ignore[call-arg]
        if "workdir" in fields:
            named.workdir = "g.1"  # type: ignore[attr-defined]
        yield f"guest={value[:12]!r}", named
    if "id" in fields:
        for value in ("no-such-guest", "x\0y", "../../etc"):
            yield f"id={value!r}", request_class(id=value)  # type: ignore[call-arg]
    if request_class is coordinator_pb2.SubmitRequest:
        disk = input_pb2.InputSpec(disk=input_pb2.DiskInput(paths=["/nonexistent.img"]))
        yield "job.name=newline", request_class(job=coordinator_pb2.GuestJob(name="a\nb", input=disk))
        yield "job.output.allocation=99", request_class(job=coordinator_pb2.GuestJob(
            input=disk, output=output_pb2.OutputSpec(allocation=99)))  # type: ignore[arg-type]
        yield "job.convert.accelerator=9", request_class(job=coordinator_pb2.GuestJob(
            input=disk, convert=convert_pb2.ConvertOptions(accelerator=9)))  # type: ignore[arg-type]
    if request_class is output_pb2.SetupRequest:
        yield "output.allocation=77", request_class(workdir="g.1", output=output_pb2.OutputSpec(
            allocation=77))  # type: ignore[arg-type]
    if request_class is copier_pb2.CopyRequest:
        yield "disk source NUL", request_class(disks=[copier_pb2.DiskCopy(source="/x\0", target="/y")])


CASES = [(svc, stub, method, label, request) for svc, stub, method, cls in RPCS for label, request in hostile(cls)
         if not (method in ("Watch", "Follow") and label == "empty")]  # "" there means every guest


@pytest.fixture(scope="module")
def channels(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, dict[str, grpc.Channel]]]:
    from v2v.coordinator.clients import ServiceAddresses
    from v2v.coordinator.scheduler import Worker
    from v2v.coordinator.servers import CoordinatorConfig, coordinator_servicer

    base = tmp_path_factory.mktemp("corpus")
    root = base / "root"
    running = {s: RunningService(f"unix:{base}/{s}.sock", phase_servicer(s, root)) for s in PHASES}
    worker = Worker("w", ServiceAddresses(**{s: str(running[s].address) for s in PHASES}), workdir_root=root)
    running["coordinator"] = RunningService(f"unix:{base}/coordinator.sock", coordinator_servicer(
        CoordinatorConfig([worker], state=base / "state.db")))
    chans = {name: grpc.insecure_channel(str(svc.address)) for name, svc in running.items()}
    try:
        yield root, chans
    finally:
        for ch in chans.values():
            ch.close()
        for svc in reversed(list(running.values())):
            svc.stop()


def test_the_corpus_is_big_enough():
    assert len(CASES) >= 60 and {svc for svc, *_ in CASES} == {*PHASES, "coordinator"}


@pytest.mark.parametrize(("service", "stub", "method", "label", "request_"), CASES,
                         ids=[f"{c[0]}.{c[2]}-{c[3]}" for c in CASES])
def test_a_hostile_request_is_refused_cleanly(channels, service, stub, method, label, request_):
    root, chans = channels
    call = getattr(stub(chans[service]), method)
    with pytest.raises(grpc.RpcError) as exc:
        result = call(request_, timeout=30)
        if not isinstance(result, Message):  # a stream fails as it is read
            list(result)
    assert exc.value.code() in REFUSED, (exc.value.code(), exc.value.details())
    assert "Traceback" not in exc.value.details() and "Exception calling application" not in exc.value.details()
    status = rpc_status.from_call(exc.value)
    if service != "coordinator" or method not in ("Watch", "Follow"):
        assert status is not None and any(d.Is(pb.Error.DESCRIPTOR) for d in status.details), status
    # Nothing made outside the root; inside it, nothing but what a valid name may make.
    assert not Path("/.v2v-workdir").exists() and not Path("/etc/.v2v-workdir").exists()
    assert all(p.name in ("g.1",) for p in root.iterdir()) if root.exists() else True
