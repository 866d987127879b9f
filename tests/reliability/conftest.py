"""Stand-ins shared by the reliability tests."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import grpc
import pytest

from v2v.coordinator.clients import ServiceAddresses
from v2v.coordinator.scheduler import Limits, Worker
from v2v.coordinator.servers import CoordinatorConfig, coordinator_servicer
from v2v.grpcserver import RunningService, rpc
from v2v.services.servicers import PHASES
from v2v.v1 import coordinator_pb2, input_pb2, input_pb2_grpc


class HeldOpen(input_pb2_grpc.InputServicer):
    """An input service whose Open waits until the test lets go, or its caller gives up: a guest
    that stays in "open" as long as a test needs. Its failure then ends the guest."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.entered = threading.Event()  # an Open call is being held
        self.caller_left = threading.Event()  # the Open call was cancelled (or timed out) by its client

    @rpc
    def Open(self, request: input_pb2.OpenRequest, context: grpc.ServicerContext) -> input_pb2.OpenResponse:
        if not context.add_callback(self.caller_left.set):  # it ended before this handler ran
            self.caller_left.set()
        self.entered.set()
        while not self.release.wait(0.1) and context.is_active():
            pass
        context.abort(grpc.StatusCode.UNAVAILABLE, "held open by the test, now let go")

    @rpc
    def Close(self, request: input_pb2.CloseRequest, context: grpc.ServicerContext) -> input_pb2.CloseResponse:
        return input_pb2.CloseResponse()


# A job whose input is whatever the worker's input service makes of it: HeldOpen holds it.
HELD_JOB = coordinator_pb2.GuestJob(name="held", input=input_pb2.InputSpec(
    disk=input_pb2.DiskInput(paths=["/nonexistent"])))


@contextmanager
def coordinator_over(directory: Path, limits: Limits | None = None, conversions: int = 1000,
                     **services: RunningService) -> Iterator[grpc.Channel]:
    """A real coordinator with one worker made of the given phase services (input=, output=, ...);
    the others are addresses nothing answers on. Yields a channel to it. By default the worker
    runs any number of guests at once; `conversions` sets it its conversions (and with them how
    many guests it runs at once, Worker.running)."""
    nowhere = f"unix:{directory}/none.sock"
    addresses = {s: str(services[s].address) if s in services else nowhere for s in PHASES}
    worker = Worker("w", ServiceAddresses(**addresses), workdir_root=directory / "root",
                    conversions=conversions)
    coord = RunningService(f"unix:{directory}/coordinator.sock",
                           coordinator_servicer(CoordinatorConfig([worker], limits or Limits(),
                                                                     state=directory / "state.db")))
    ch = grpc.insecure_channel(str(coord.address))
    try:
        yield ch
    finally:
        ch.close()
        coord.stop()


@pytest.fixture
def held_coordinator(tmp_path: Path) -> Iterator[tuple[grpc.Channel, HeldOpen]]:
    """A real coordinator whose one worker's input is HeldOpen (its other services are never reached)."""
    held = HeldOpen()
    inp = RunningService(f"unix:{tmp_path}/input.sock", (held, input_pb2_grpc.add_InputServicer_to_server,
                                                          "v2v.v1.Input"))
    try:
        with coordinator_over(tmp_path, input=inp) as ch:
            try:
                yield ch, held
            finally:
                held.release.set()  # before the coordinator stops: its guests' Opens end
    finally:
        inp.stop()
