"""The phase calls every orchestrator makes: the coordinator's pipeline, the standalone commands
(`v2v open`, `v2v inspect`, `v2v --in-place`) and warm migrations. Services a caller did not get
are started in this process; a guest opened through the Input service is closed whatever happens;
an RPC failure comes back as the service's own structured error, with the step named."""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType

import grpc

from v2v.coordinator.pipeline import guest_name
from v2v.errors import V2VError, from_rpc_error
from v2v.events import StepReporter
from v2v.grpcserver import RunningService, channel
from v2v.nbdclient import nbd_uri
from v2v.services.servicers import phase_servicer
from v2v.steps import Step
from v2v.v1 import convert_pb2, convert_pb2_grpc, coordinator_pb2, input_pb2, input_pb2_grpc
from v2v.v1 import types_pb2 as pb
from v2v.workdir import WorkDir


class PhaseServices:
    """The phase services a command uses, by name -> given address ("" = none given). A service not
    given is started in this process on a private Unix socket, over the same gRPC path as `v2v serve`.
    Entering gives every address; leaving stops what was started and with it every NBD server and
    appliance it still owns, so nothing outlives the command."""

    def __init__(self, given: dict[str, str], root: Path | None = None) -> None:
        self.given = given
        self.root = root  # the work-directory root of the services started here
        self._dir: tempfile.TemporaryDirectory[str] | None = None
        self._started: list[RunningService] = []

    def __enter__(self) -> dict[str, str]:
        addresses = dict(self.given)
        try:
            for name, address in self.given.items():
                if address:
                    continue
                if self._dir is None:
                    self._dir = tempfile.TemporaryDirectory(prefix="v2v-svc.")
                addresses[name] = f"unix:{Path(self._dir.name) / name}.sock"
                self._started.append(RunningService(addresses[name], phase_servicer(name, self.root)))
        except BaseException:
            self.stop()
            raise
        return addresses

    def stop(self) -> None:
        for svc in reversed(self._started):
            svc.stop()
        self._started.clear()
        if self._dir is not None:
            self._dir.cleanup()
            self._dir = None

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()


class OpenedGuest:
    """One guest opened through the Input service, in a work directory of its own; its steps go to
    `sink` as the coordinator's do. Leaving the `with` block closes it whatever happened; a failed
    run's logs stay, and `afterwards` gets a line saying where."""

    def __init__(self, input_address: str, spec: input_pb2.InputSpec, sink: Callable[[pb.Event], None],
                 afterwards: list[str], in_place: bool = False) -> None:
        self.spec = spec
        self.in_place = in_place
        self.name = guest_name(coordinator_pb2.GuestJob(input=spec))
        self.sink = sink
        self.report = StepReporter(self.name, lambda ev: sink(pb.Event(step=ev)))
        self.afterwards = afterwards
        self._channel = channel(input_address)
        self._input = input_pb2_grpc.InputStub(self._channel)
        self.workdir = WorkDir(WorkDir.new_name(self.name))  # the input's Open makes it
        self.opened = input_pb2.OpenResponse()

    @contextmanager
    def phase(self, step: str) -> Iterator[None]:
        """A timed step whose RPC failure comes back as the service's own structured error."""
        with self.report.step(step):
            try:
                yield
            except grpc.RpcError as exc:
                raise from_rpc_error(exc, step=step, guest=self.name) from None

    @property
    def uris(self) -> list[str]:
        """The NBD URI of each disk, index = disk index."""
        return [nbd_uri(Path(s)) for s in self.opened.sockets]

    def __enter__(self) -> OpenedGuest:
        try:
            with self.phase(Step.OPEN):
                self.opened = self._input.Open(input_pb2.OpenRequest(
                    workdir=self.workdir.name, guest=self.name, input=self.spec, in_place=self.in_place))
        except BaseException as exc:
            self.__exit__(type(exc), exc, exc.__traceback__)
            raise
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        # Close even after a failed Open: the service may have started servers before failing. A
        # refused request leaves no log worth keeping (seen where the service's root is visible here).
        logs = Path(self.opened.path or self.workdir.path) / "logs"
        remove = et is None or (logs.is_dir() and not any(logs.iterdir()))
        try:
            self._input.Close(input_pb2.CloseRequest(workdir=self.workdir.name, remove=remove))
        except grpc.RpcError as exc:
            self.report.warn(f"close: {from_rpc_error(exc, step=Step.CLOSE).message}", step=Step.CLOSE)
        finally:
            self._channel.close()
        if not remove:
            self.afterwards.append(f"logs of the failed run kept in {logs}")


def convert_guest(guest: OpenedGuest, address: str, options: convert_pb2.ConvertOptions) -> convert_pb2.ConvertResult:
    """One Convert call on the opened guest, its sub-steps relayed; Ctrl-C / SIGTERM cancel the call,
    which makes the service kill its appliance."""
    ch = channel(address)
    try:
        with guest.phase(Step.CONVERT):
            call = convert_pb2_grpc.ConvertStub(ch).Convert(convert_pb2.ConvertRequest(
                workdir=guest.workdir.name, guest=guest.name, options=options, source=guest.opened.source,
                disks=guest.opened.sockets))
            result: convert_pb2.ConvertResult | None = None
            try:
                for ev in call:
                    if ev.HasField("step"):
                        guest.sink(pb.Event(step=ev.step))
                    else:
                        result = ev.result
            except KeyboardInterrupt:
                call.cancel()
                raise
            if result is None:
                raise V2VError("the convert service ended without a result", pb.ERROR_CODE_INTERNAL)
            return result
    finally:
        ch.close()
