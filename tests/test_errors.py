"""Structured errors cross gRPC intact: code, guest, step, disk, cause."""

import grpc
import pytest

from v2v.errors import V2VError, from_rpc_error
from v2v.grpcserver import channel, rpc, serve
from v2v.v1 import input_pb2, input_pb2_grpc
from v2v.v1 import types_pb2 as pb


class Failing(input_pb2_grpc.InputServicer):
    @rpc
    def Open(self, request, context):
        raise V2VError("/x.img: no such file", pb.ERROR_CODE_BAD_INPUT, step="open", guest=request.guest,
                       disk=3, detail="ENOENT")


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
    finally:
        server.stop(None)


def test_a_missing_service_is_named(tmp_path):
    stub = input_pb2_grpc.InputStub(channel(f"unix:{tmp_path}/nobody.sock"))
    with pytest.raises(grpc.RpcError) as info:
        stub.Open(input_pb2.OpenRequest(), timeout=2)
    err = from_rpc_error(info.value, step="open", guest="g")
    assert err.code == pb.ERROR_CODE_SERVICE_UNAVAILABLE and "open service" in err.message
