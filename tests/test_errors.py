"""Structured errors cross gRPC intact: code, guest, step, disk, cause."""

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from v2v.errors import V2VError, from_rpc_error
from v2v.grpcserver import channel, rpc, serve
from v2v.v1 import input_pb2, input_pb2_grpc
from v2v.v1 import types_pb2 as pb


class Failing(input_pb2_grpc.InputServicer):
    @rpc
    def Open(self, request, context):
        raise V2VError("/x.img: no such file", pb.ERROR_CODE_BAD_INPUT, step="open", guest=request.guest,
                       disk=3, detail="ENOENT")

    @rpc
    def Close(self, request, context):
        return {}["a bug"]  # what no code expected

    @rpc
    def Describe(self, request, context):
        context.abort(grpc.StatusCode.PERMISSION_DENIED, "a handler's own abort")


def details(exc: grpc.RpcError) -> dict[str, object]:
    """The status details by type: what a client knowing only google.rpc reads."""
    found: dict[str, object] = {}
    for any_detail in rpc_status.from_call(exc).details:
        for kind in (error_details_pb2.ErrorInfo, error_details_pb2.DebugInfo, pb.Error):
            msg = kind()
            if any_detail.Unpack(msg):
                found[kind.DESCRIPTOR.name] = msg
    return found


def test_error_travels_as_status_detail(tmp_path):
    addr = f"unix:{tmp_path}/s.sock"
    server = serve(addr, [(Failing(), input_pb2_grpc.add_InputServicer_to_server, "v2v.v1.Input")])
    try:
        stub = input_pb2_grpc.InputStub(channel(addr))
        with pytest.raises(grpc.RpcError) as info:
            stub.Open(input_pb2.OpenRequest(guest="g1"))
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        err = from_rpc_error(info.value, step="ignored")
        assert (err.guest, err.step, err.disk, err.code, err.detail) == ("g1", "open", 3, pb.ERROR_CODE_BAD_INPUT,
                                                                        "ENOENT")
        assert err.one_line() == "guest g1: step open: disk 3: /x.img: no such file"
        info_detail = details(info.value)["ErrorInfo"]
        assert (info_detail.reason, info_detail.domain, dict(info_detail.metadata)) == (
            "BAD_INPUT", "v2v.v1", {"guest": "g1", "step": "open", "disk": "3"})

        with pytest.raises(grpc.RpcError) as bug:
            stub.Close(input_pb2.CloseRequest())
        assert bug.value.code() == grpc.StatusCode.INTERNAL  # not UNKNOWN "Exception calling application"
        assert "internal error: KeyError('a bug')" in bug.value.details()
        assert any("return {}[\"a bug\"]" in line for line in details(bug.value)["DebugInfo"].stack_entries)
        assert details(bug.value)["ErrorInfo"].reason == "INTERNAL"

        with pytest.raises(grpc.RpcError) as aborted:
            stub.Describe(input_pb2.DescribeRequest())
        assert (aborted.value.code(), aborted.value.details()) == (grpc.StatusCode.PERMISSION_DENIED,
                                                                   "a handler's own abort")
    finally:
        server.stop(None)


def test_a_missing_service_is_named(tmp_path):
    stub = input_pb2_grpc.InputStub(channel(f"unix:{tmp_path}/nobody.sock"))
    with pytest.raises(grpc.RpcError) as info:
        stub.Open(input_pb2.OpenRequest(), timeout=2)
    err = from_rpc_error(info.value, step="open", guest="g")
    assert err.code == pb.ERROR_CODE_SERVICE_UNAVAILABLE and "open service" in err.message
