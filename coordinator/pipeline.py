"""One guest through the phases: open -> convert -> setup -> copy -> finalize -> close.

Every phase is a gRPC call to its service; every step is timed and reported; whatever fails,
the output is aborted, the source closed, and no process or socket is left."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import grpc

from v2v.coordinator.clients import PhaseClients
from v2v.coordinator.inputs import input_location
from v2v.errors import V2VError, from_rpc_error
from v2v.events import StepReporter
from v2v.naming import name_from_path
from v2v.units import human_size
from v2v.v1 import convert_pb2, coordinator_pb2, copier_pb2, input_pb2, output_pb2
from v2v.v1 import types_pb2 as pb
from v2v.workdir import WorkDir

EventSink = Callable[[pb.Event], None]


def guest_name(job: coordinator_pb2.GuestJob) -> str:
    if job.name:
        return job.name
    location = input_location(job.input)
    return name_from_path(location.rstrip("/")) if location else "guest"


class GuestRun:
    """Drives one guest. `run()` returns normally on success and raises V2VError on failure."""

    def __init__(self, job: coordinator_pb2.GuestJob, clients: PhaseClients, sink: EventSink,
                 workdir_root: Path | None = None) -> None:
        self.job = job
        self.clients = clients
        self.name = guest_name(job)
        self.sink = sink
        self.report = StepReporter(self.name, self._on_step)
        self.workdir_root = workdir_root
        self.source: pb.Source | None = None
        self.files: list[str] = []
        self._calls: list[Any] = []  # in-flight streaming calls, cancelled by cancel()
        self._cancelled = threading.Event()
        self._workdir: WorkDir | None = None

    def _on_step(self, ev: pb.StepEvent) -> None:
        """Relays a phase's event; a finished phase also leaves its marker in the work directory."""
        if ev.state == pb.STEP_STATE_SUCCEEDED and not ev.parent and self._workdir is not None:
            self._workdir.mark_done(ev)
        self.sink(pb.Event(step=ev))

    @contextmanager
    def phase(self, step: str) -> Iterator[None]:
        """A timed step whose RPC failures come back as the service's own structured error."""
        with self.report.step(step):
            if self._cancelled.is_set():
                raise V2VError("cancelled", pb.ERROR_CODE_CANCELLED)
            try:
                yield
            except grpc.RpcError as exc:
                if self._cancelled.is_set():
                    raise V2VError("cancelled", pb.ERROR_CODE_CANCELLED) from None
                raise from_rpc_error(exc, step=step, guest=self.name) from None

    def run(self) -> None:
        wd = self._workdir = WorkDir.create(self.name, self.workdir_root)
        opened = set_up = False
        ok = False
        try:
            with self.phase("open"):
                opened = True
                resp = self.clients.input.Open(input_pb2.OpenRequest(workdir=str(wd.path), guest=self.name,
                                                                      input=self.job.input))
                self.source = resp.source
                size = sum(d.virtual_size for d in resp.source.disks)
                self.report.note(f"{resp.source.name}: {len(resp.source.disks)} disk(s), {human_size(size)} "
                                 f"({', '.join(d.format for d in resp.source.disks)})", step="open")
            if self.job.print_source:
                ok = True
                return
            with self.phase("check"):
                self.clients.output.Check(output_pb2.CheckRequest(guest=self.name, output=self.job.output,
                                                                  source=self.source))
            with self.phase("convert"):
                result = self._convert(wd)
            with self.phase("setup"):
                set_up = True
                setup = self.clients.output.Setup(output_pb2.SetupRequest(
                    workdir=str(wd.path), guest=self.name, output=self.job.output, target=result.target))
            target = result.target
            del target.disks[:]
            target.disks.extend(setup.disks)
            with self.phase("copy"):
                self._copy(wd, setup)
            with self.phase("finalize"):
                fin = self.clients.output.Finalize(output_pb2.FinalizeRequest(
                    workdir=str(wd.path), guest=self.name, output=self.job.output, target=target))
                self.files = list(fin.files)
                set_up = False
            ok = True
        finally:
            self._cleanup(wd, opened, set_up, ok)

    def _convert(self, wd: WorkDir) -> convert_pb2.ConvertResult:
        call = self.clients.convert.Convert(convert_pb2.ConvertRequest(
            workdir=str(wd.path), guest=self.name, options=self.job.convert, target_name=self.job.output.name,
            networks=self.job.networks))
        self._calls.append(call)
        result = None
        for ev in call:
            if ev.HasField("step"):
                self.sink(pb.Event(step=ev.step))
            else:
                result = ev.result
        if result is None:
            raise V2VError("the convert service ended without a result", pb.ERROR_CODE_INTERNAL)
        return result

    def _copy(self, wd: WorkDir, setup: output_pb2.SetupResponse) -> None:
        assert self.source is not None
        opts = copier_pb2.CopyOptions()
        opts.CopyFrom(self.job.copy)
        opts.target_is_zero = setup.target_is_zero
        opts.flush = True
        disks = [copier_pb2.DiskCopy(disk=d.index, source=str(wd.in_sock(d.index)), target=setup.sockets[d.index],
                                     size=d.virtual_size) for d in self.source.disks]
        call = self.clients.copier.Copy(copier_pb2.CopyRequest(workdir=str(wd.path), guest=self.name,
                                                               disks=disks, options=opts))
        self._calls.append(call)
        pending = {d.disk for d in disks}
        try:
            for ev in call:
                if ev.HasField("step"):
                    ev.step.parent = "copy"
                    if ev.step.step == "copy" and ev.step.state == pb.STEP_STATE_SUCCEEDED:
                        pending.discard(ev.step.disk)
                self.sink(ev)
        except grpc.RpcError as exc:
            # A copier that died cannot say which disk it was on; the disks not yet done can.
            err = from_rpc_error(exc, step="copy", guest=self.name)
            if err.disk is None and len(pending) == 1:
                err.disk = pending.pop()
            elif err.disk is None and pending:
                err.message += f" (disks not copied: {', '.join(map(str, sorted(pending)))})"
            raise err from None

    def _cleanup(self, wd: WorkDir, opened: bool, set_up: bool, ok: bool) -> None:
        """Best effort, in reverse order; each failure is reported but does not hide the first.
        A failed guest's logs stay (its sockets and processes do not)."""
        if set_up:
            self._quietly("abort", lambda: self.clients.output.Abort(output_pb2.AbortRequest(workdir=str(wd.path))))
        if opened:
            self._quietly("close", lambda: self.clients.input.Close(input_pb2.CloseRequest(workdir=str(wd.path))))
        if ok:
            wd.remove()
        else:
            self.report.note(f"logs of the failed run kept in {wd.path / 'logs'}", step="close")

    def _quietly(self, what: str, fn: Callable[[], object]) -> None:
        try:
            fn()
        except grpc.RpcError as exc:
            self.report.warn(f"{what}: {from_rpc_error(exc, step=what).message}", step=what)

    def cancel(self) -> None:
        """Stops the guest wherever it is: in-flight calls are cancelled, copies killed."""
        self._cancelled.set()
        for call in self._calls:
            call.cancel()
        if self._workdir is not None:
            try:
                self.clients.copier.Cancel(copier_pb2.CancelRequest(workdir=str(self._workdir.path)))
            except grpc.RpcError:
                pass
