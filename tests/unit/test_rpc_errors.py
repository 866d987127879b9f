"""An error about a call itself (no answer in time, nobody there) names the service called and its
address, and the step it was called for: a person knows which process on which socket to look at."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest

from v2v.coordinator.clients import PhaseClients, ServiceAddresses
from v2v.steps import Step
from v2v.v1 import copier_pb2
from v2v.v1 import types_pb2 as pb


def test_a_service_nobody_serves_is_named_with_its_address(tmp_path: Path) -> None:
    addresses = ServiceAddresses(**{s: f"unix:{tmp_path}/{s}.sock" for s in ("input", "convert", "output", "copier")})
    clients = PhaseClients(addresses)
    try:
        with pytest.raises(grpc.RpcError) as caught:
            clients.copier.Cancel(copier_pb2.CancelRequest(workdir="w"), timeout=5)
        err = clients.rpc_error(caught.value, step=Step.COPY, guest="g")
        assert err.code == pb.ERROR_CODE_SERVICE_UNAVAILABLE and err.step == "copy"
        assert err.message.startswith(f"the copier service at unix:{tmp_path}/copier.sock went away"), err.message
        # a step no phase service answers keeps the step's name
        other = clients.rpc_error(caught.value, step=Step.COORDINATOR)
        assert other.message.startswith("the coordinator service went away"), other.message
    finally:
        clients.close()
