"""Stubs for the four phase services, from their addresses."""

from __future__ import annotations

import os
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from v2v.errors import V2VError, from_rpc_error
from v2v.grpcserver import channel
from v2v.services.servicers import PHASES
from v2v.steps import Step
from v2v.v1 import convert_pb2_grpc, copier_pb2_grpc, input_pb2_grpc, output_pb2_grpc, verify_pb2_grpc

SERVICES = PHASES
# Besides the phases, each worker may have a boot-check service: needed only by jobs with verify_boot.
OPTIONAL_SERVICES = ("verify",)

# The phase service that answers the coordinator's call in each of its steps: an error about the
# call itself (a deadline passed, the service gone) names that service and its address, which a
# person can go and look at, and not only the step.
STEP_SERVICE: dict[str, str] = {
    Step.OPEN: "input", Step.CLOSE: "input",
    Step.CHECK: "output", Step.SETUP: "output", Step.FINALIZE: "output", Step.ABORT: "output",
    Step.CONVERT: "convert",
    Step.PRECOPY: "copier", Step.COPY: "copier",
    Step.VERIFY: "verify",
}


@dataclass(frozen=True)
class ServiceAddresses:
    input: str
    convert: str
    output: str
    copier: str
    verify: str = ""  # "" = none: a job with verify_boot fails at step verify, saying so

    @classmethod
    def from_env(cls, **given: str | None) -> ServiceAddresses:
        """Each address from the argument, else $V2V_<SERVICE> (e.g. V2V_INPUT=unix:/run/v2v/input.sock)."""
        values = {s: given.get(s) or os.environ.get(f"V2V_{s.upper()}", "") for s in SERVICES}
        missing = [s for s, v in values.items() if not v]
        if missing:
            raise ValueError(f"no address for the {', '.join(missing)} service(s): "
                             f"give --{missing[0]} or set V2V_{missing[0].upper()}")
        values.update({s: given.get(s) or os.environ.get(f"V2V_{s.upper()}", "") for s in OPTIONAL_SERVICES})
        return cls(**values)


class PhaseClients:
    """One channel per service, shared by every guest the coordinator drives, and the deadlines of
    its unary calls: a service that hangs fails the guest's step naming it, instead of holding the
    guest for ever. (Open and the streams have none: an OVA can take long to open, a copy or a
    conversion longer; those are cancelled, not timed.)"""

    quick = 120.0  # seconds: Check, Abort, Close, Describe, ReadLogs, Cancel
    disk_work = 3600.0  # Setup and Finalize, which create and flush the target disks
    reconnect = 20.0  # seconds a step waits for its service to take connections: one restarting

    def __init__(self, addresses: ServiceAddresses) -> None:
        self.addresses = addresses
        self._channels: dict[str, grpc.Channel] = {}
        self.input = input_pb2_grpc.InputStub(self._open("input", addresses.input))
        self.convert = convert_pb2_grpc.ConvertStub(self._open("convert", addresses.convert))
        self.output = output_pb2_grpc.OutputStub(self._open("output", addresses.output))
        self.copier = copier_pb2_grpc.CopierStub(self._open("copier", addresses.copier))
        self.verify = verify_pb2_grpc.VerifyStub(self._open("verify", addresses.verify)) if addresses.verify else None

    def _open(self, service: str, address: str) -> grpc.Channel:
        ch = channel(address)
        self._channels[service] = ch
        return ch

    def ready(self, step: str) -> None:
        """Waits, up to `reconnect` seconds, until the service of `step` answers a health check.
        After its service was restarted, a channel fails calls at once for a while: on the
        connection to the dead process, which it has not noticed is closed ("Socket closed"), or
        with the refused connect it tried meanwhile ("Connection refused"), while the new service
        listens. A guest reaching a service restarted a second before failed there (tests/
        reliability/test_kill_matrix.py). The first check may be lost on the dead connection; the
        second waits for a new one. A service still down after the wait fails the step with the
        call's own error, as before."""
        service = STEP_SERVICE.get(step, "")
        if service not in self._channels:
            return
        health = health_pb2_grpc.HealthStub(self._channels[service])
        for _ in range(2):
            try:
                health.Check(health_pb2.HealthCheckRequest(), timeout=self.reconnect, wait_for_ready=True)
                return
            except grpc.RpcError as exc:
                if exc.code() != grpc.StatusCode.UNAVAILABLE:
                    return

    def rpc_error(self, exc: grpc.RpcError, *, step: str, guest: str = "") -> V2VError:
        """from_rpc_error for a call made in `step`, naming the service called and its address."""
        service = STEP_SERVICE.get(step)
        who = f"{service} service at {getattr(self.addresses, service)}" if service else ""
        return from_rpc_error(exc, step=step, guest=guest, service=who)

    def close(self) -> None:
        for ch in self._channels.values():
            ch.close()
