"""One guest through the phases: open -> convert -> setup -> copy -> finalize -> close; with
CopyOptions.while_converting (docs/copy.md): open -> setup -> convert and, at the same time, a
whole copy ("precopy") -> a copy of what the conversion wrote ("copy") -> finalize -> close.

Every phase is a gRPC call to its service; every step is timed and reported; whatever fails,
the output is aborted, the source closed, and no process or socket is left. The one exception: a
guest that fails after its conversion may keep its converted overlays (`keep_converted`), so a
retry from "setup" does not convert again; `release()` closes them."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import grpc

from v2v.coordinator.bootcheck import VERIFY_SLOTS, boot_verdict, no_verify_service
from v2v.coordinator.clients import PhaseClients
from v2v.errors import V2VError
from v2v.events import StepReporter
from v2v.naming import name_from_path
from v2v.services.input.locations import input_location
from v2v.steps import Step
from v2v.units import human_size
from v2v.v1 import convert_pb2, coordinator_pb2, copier_pb2, input_pb2, output_pb2, verify_pb2
from v2v.v1 import types_pb2 as pb
from v2v.workdir import WorkDir

# Boot checks running at once in this coordinator: each boots a guest (a CPU, its memory).
# $V2V_VERIFY_BOOTS, default 1.

EventSink = Callable[[pb.Event], None]
RESUMABLE_STEPS = (Step.OPEN, Step.SETUP)  # where a run may start: from scratch, or from a kept conversion


class Gates(Protocol):
    """What a phase must hold before it runs: the scheduler's limits (scheduler.TicketGates)."""

    def converting(self) -> AbstractContextManager[None]: ...

    def copying(self, disks: int) -> AbstractContextManager[int]: ...


class NoGates:
    """One guest alone (the plain CLI): nothing to wait for; every disk copied at once."""

    def converting(self) -> AbstractContextManager[None]:
        return nullcontext()

    def copying(self, disks: int) -> AbstractContextManager[int]:
        return nullcontext(0)


@dataclass(frozen=True)
class Converted:
    """A conversion that outlived its run (keep_converted, or a coordinator restart): the worker's
    input still serves the converted overlays, so a later run starts from setup with it."""

    workdir: str  # its name on the worker
    source: pb.Source
    target: pb.TargetMeta
    sockets: list[str]  # the input's NBD sockets of the converted overlays, index = disk index


def precopy_order(source: pb.Source) -> list[set[int]]:
    """The disks of a precopy in turns: the others together, then disk 0, the usual boot disk. The
    appliance reads the boot disk hardest while it launches and inspects; a copy of it beside them,
    over a source link they share (an ESXi host's), slowed the conversion by more than it saved
    (bench/copy_while_converting.py --link-rate). Copied last, it runs while the conversion computes."""
    others = {d.index for d in source.disks if d.index != 0}
    boot = {d.index for d in source.disks if d.index == 0}
    return [turn for turn in (others, boot) if turn]


def guest_name(job: coordinator_pb2.GuestJob) -> str:
    if job.name:
        return job.name
    location = input_location(job.input)
    return name_from_path(location.rstrip("/")) if location else "guest"


class GuestRun:
    """Drives one guest. `run()` returns normally on success and raises V2VError on failure."""

    def __init__(self, job: coordinator_pb2.GuestJob, clients: PhaseClients, sink: EventSink,
                 workdir_root: Path | None = None, gates: Gates | None = None, keep_converted: bool = False) -> None:
        self.job = job
        self.gates = gates or NoGates()
        self.keep_converted = keep_converted
        self.kept = False  # the input is still open after a failure: its overlays hold the conversion
        self.clients = clients
        self.name = guest_name(job)
        self._sink = sink
        self._sink_lock = threading.Lock()
        self.report = StepReporter(self.name, self._on_step)
        self.workdir_root = workdir_root
        self.source: pb.Source | None = None
        self.files: list[str] = []
        self._calls: list[Any] = []  # in-flight streaming calls, cancelled by cancel()
        self._calls_lock = threading.Lock()  # a precopy's thread adds calls too
        self._calls_cancelled = False  # calls made from now on are cancelled at once
        self._cancelled = threading.Event()
        self._workdir: WorkDir | None = None  # once the worker created it: its name (and its path if local)
        self._path = ""  # the work directory's path on its worker, for people: where its logs are
        self._sockets: list[str] = []  # the input's NBD sockets, index = disk index, as Open said
        self._converted: Converted | None = None
        self._writes_tracked: list[bool] = []  # per disk, from Open with track_writes

    def sink(self, ev: pb.Event) -> None:
        """Every event of the guest, one at a time: a precopy's come from another thread."""
        with self._sink_lock:
            self._sink(ev)

    def _on_step(self, ev: pb.StepEvent) -> None:
        self.sink(pb.Event(step=ev))

    @contextmanager
    def phase(self, step: str) -> Iterator[None]:
        """A timed step whose RPC failures come back as the service's own structured error."""
        with self.report.step(step):
            if self._cancelled.is_set():
                raise V2VError("cancelled", pb.ERROR_CODE_CANCELLED)
            self.clients.ready(step)
            try:
                yield
            except grpc.RpcError as exc:
                if self._cancelled.is_set():
                    raise V2VError("cancelled", pb.ERROR_CODE_CANCELLED) from None
                raise self.clients.rpc_error(exc, step=step, guest=self.name) from None

    @property
    def workdir(self) -> WorkDir | None:
        """The guest's work directory on its worker, once the worker's input service created it: its
        name is what the services take; its path is of use only where the worker's root is visible."""
        return self._workdir

    @property
    def converted(self) -> Converted | None:
        """What a retry from setup needs, while the failed run keeps its conversion (`kept`)."""
        return self._converted if self.kept else None

    def run(self, resume: Converted | None = None) -> None:
        """From the start, or (`resume`) from setup, reusing a conversion whose input is still open.
        The work directory is named here and created by the worker's input service: the services
        resolve a bare name under their own root, so the coordinator never touches the worker's files.
        What was started is undone by one ExitStack, in reverse: Abort once Setup was asked for (unless
        Finalize succeeded), Close once Open was (unless a failed run keeps its conversion)."""
        self.kept = False
        self._calls_cancelled = False
        self._converted = resume
        workdir = resume.workdir if resume else WorkDir.new_name(self.name)
        with ExitStack() as undo:
            undo.push(lambda et, ev, tb: self._close(workdir, ok=et is None))
            if resume is None:
                if not self._open(workdir):
                    return
                with self.phase(Step.CHECK):
                    self.clients.output.Check(output_pb2.CheckRequest(guest=self.name, output=self.job.output,
                                                                      source=self.source), timeout=self.clients.quick)
            else:
                self._workdir = WorkDir(resume.workdir, self.workdir_root)
                self.source = resume.source
                self._sockets = list(resume.sockets)
            with ExitStack() as target:
                precopied = resume is None and self._copies_while_converting()
                if precopied:
                    setup = self._setup(target, pb.TargetMeta(source=self.source))
                    converted = self._convert_and_precopy(setup)
                else:
                    if resume is None:
                        with self.gates.converting(), self.phase(Step.CONVERT):
                            resume = self._converted_by(self._convert())
                    converted = resume
                    setup = self._setup(target, converted.target)
                with self.gates.copying(len(setup.disks)) as streams, self.phase(Step.COPY):
                    self._copy(setup, streams, written_only=precopied)
                final = self._finalize(converted.target, setup)
                target.pop_all()  # finalized: nothing of the target to take back
            if self.job.verify_boot:
                self._verify(final)

    def _open(self, workdir: str) -> bool:
        """The open step; False when only the source was asked for (--print-source)."""
        with self.phase(Step.OPEN):
            # A future, so that Cancel can stop an open that waits on a source (the input stops its
            # connects when the call is cancelled).
            call = self.clients.input.Open.future(input_pb2.OpenRequest(
                workdir=workdir, guest=self.name, input=self.job.input, track_writes=self.job.copy.while_converting))
            self._track(call)
            try:
                resp = call.result()
            except grpc.FutureCancelledError:
                raise V2VError("cancelled", pb.ERROR_CODE_CANCELLED) from None
            self._workdir = WorkDir(resp.workdir, self.workdir_root)
            self._path = resp.path
            self._sockets = list(resp.sockets)
            self.source = resp.source
            self._writes_tracked = list(resp.writes_tracked)
            size = sum(d.virtual_size for d in resp.source.disks)
            self.report.note(f"{resp.source.name}: {len(resp.source.disks)} disk(s), {human_size(size)} "
                             f"({', '.join(d.format for d in resp.source.disks)}); work directory {resp.path}",
                             step=Step.OPEN)
        return not self.job.print_source

    def _copies_while_converting(self) -> bool:
        """CopyOptions.while_converting, when the input tracks the writes to every disk; otherwise
        the guest is converted first, and a note says why."""
        if not self.job.copy.while_converting:
            return False
        untracked = [str(i) for i, tracked in enumerate(self._writes_tracked) if not tracked]
        if untracked or not self._writes_tracked:
            self.report.note(f"copy while converting: the input cannot track writes to disk(s) "
                             f"{', '.join(untracked) or 'all'}; converting first, then copying", step=Step.OPEN)
            return False
        return True

    def _setup(self, undo: ExitStack, target: pb.TargetMeta) -> output_pb2.SetupResponse:
        """The setup step; from its start on, a failure aborts the output (Abort takes back whatever
        part of the target Setup made)."""
        assert self._workdir is not None
        name = self._workdir.name
        undo.push(lambda et, ev, tb: self._abort(name, failed=et is not None))
        with self.phase(Step.SETUP):
            setup: output_pb2.SetupResponse = self.clients.output.Setup(output_pb2.SetupRequest(
                workdir=name, guest=self.name, output=self.job.output, target=target), timeout=self.clients.disk_work)
            return setup

    def _abort(self, workdir: str, failed: bool) -> bool:
        """A failed run's target taken back; False: the run's exception goes on."""
        if failed:
            self._quietly(Step.ABORT, lambda: self.clients.output.Abort(output_pb2.AbortRequest(workdir=workdir),
                                                                     timeout=self.clients.quick))
        return False

    def _finalize(self, converted: pb.TargetMeta, setup: output_pb2.SetupResponse) -> pb.TargetMeta:
        """The finalize step: the converted guest with the disks Setup made (Finalize gives them the
        bus the caps say); returns that target."""
        assert self._workdir is not None
        target = pb.TargetMeta()
        target.CopyFrom(converted)
        del target.disks[:]
        target.disks.extend(setup.disks)
        with self.phase(Step.FINALIZE):
            fin = self.clients.output.Finalize(output_pb2.FinalizeRequest(
                workdir=self._workdir.name, guest=self.name, output=self.job.output, target=target),
                timeout=self.clients.disk_work)
            self.files = list(fin.files)
        return target

    def _verify(self, target: pb.TargetMeta) -> None:
        """The boot check (docs/verify.md): the finalized target booted once on overlays, at most
        VERIFY_BOOTS at a time in this coordinator (each costs a CPU). A failed boot fails the guest
        at step verify with its cause; the disks stay for inspection (Finalize has run). A guest
        nothing could check (Windows without an agent) is a warning, never a pass."""
        with self.phase(Step.VERIFY):
            if self.clients.verify is None:
                raise no_verify_service("this worker (verify@ADDR in --worker)")
            request = verify_pb2.VerifyRequest(guest=self.name, target=target, mode=self.job.verify_boot,
                                               accelerator=self.job.convert.accelerator)
            with VERIFY_SLOTS:
                call = self.clients.verify.VerifyBoot(request)
                self._track(call)
                boot_verdict(call, lambda step: self.sink(pb.Event(step=step)), self.report)

    def _converted_by(self, result: convert_pb2.ConvertResult) -> Converted:
        assert self._workdir is not None and self.source is not None
        self._converted = Converted(self._workdir.name, self.source, result.target, self._sockets)
        return self._converted

    def _convert_and_precopy(self, setup: output_pb2.SetupResponse) -> Converted:
        """The conversion, and meanwhile the "precopy": every disk copied whole to the target. The
        precopy reads blocks that the conversion may be writing at that moment, so what it copies of
        them may be old or torn. That is fine: every block written through the input's overlay since
        open (trimmed and zeroed ones too) is copied again afterwards from the overlay's final state
        (the written-only "copy"); every other block never changed, so the precopy read it right. A
        failure of either stops the other; the first one is raised."""
        failures: list[BaseException] = []
        source = self.source
        assert source is not None

        def precopy() -> None:
            try:
                with self.gates.copying(len(setup.disks)) as streams, self.phase(Step.PRECOPY):
                    for disks in precopy_order(source):
                        self._copy(setup, streams, precopy=True, only=disks)
            except BaseException as exc:  # raised by the run's thread, once the conversion has stopped
                failures.append(exc)
                self._cancel_calls()

        copier = threading.Thread(target=precopy, name=f"precopy-{self.name}")
        with self.gates.converting():
            copier.start()
            try:
                with self.phase(Step.CONVERT):
                    result = self._convert()
            except BaseException as exc:
                failures.append(exc)
                self._cancel_calls()
            finally:
                copier.join()
        if failures:
            raise failures[0]
        return self._converted_by(result)

    def _convert(self) -> convert_pb2.ConvertResult:
        assert self._workdir is not None
        call = self.clients.convert.Convert(convert_pb2.ConvertRequest(
            workdir=self._workdir.name, guest=self.name, options=self.job.convert, source=self.source,
            disks=self._sockets,
            target_name=self.job.output.name, networks=self.job.networks))
        self._track(call)
        result: convert_pb2.ConvertResult | None = None
        for ev in call:
            if ev.HasField("step"):
                self.sink(pb.Event(step=ev.step))
            else:
                result = ev.result
        if result is None:
            raise V2VError("the convert service ended without a result", pb.ERROR_CODE_INTERNAL)
        return result

    def _copy(self, setup: output_pb2.SetupResponse, streams: int, precopy: bool = False,
              written_only: bool = False, only: set[int] | None = None) -> None:
        """The copier's disk events under the step "copy", or "precopy". streams: disks copied at once
        as the scheduler granted (0 = as the job says); written_only: what was written since open
        (precopied before); only: these disks (default all)."""
        assert self.source is not None and self._workdir is not None
        wd = self._workdir
        step = Step.PRECOPY if precopy else Step.COPY
        opts = copier_pb2.CopyOptions()
        opts.CopyFrom(self.job.copy)
        opts.target_is_zero = setup.target_is_zero
        opts.allocated = setup.preallocated
        opts.flush = True
        opts.written_only = written_only
        opts.verify = opts.verify and not precopy  # a precopy's target is not final: it would race the conversion
        if streams:
            opts.parallel = min(opts.parallel or streams, streams)
        disks = [copier_pb2.DiskCopy(disk=d.index, source=self._sockets[d.index], target=setup.sockets[d.index],
                                     size=d.virtual_size) for d in self.source.disks if only is None or d.index in only]
        call = self.clients.copier.Copy(copier_pb2.CopyRequest(workdir=wd.name, guest=self.name,
                                                               disks=disks, options=opts))
        self._track(call)
        pending = {d.disk for d in disks}
        try:
            for ev in call:
                if ev.HasField("step"):
                    ev.step.parent = step
                    if ev.step.step == Step.COPY and ev.step.state == pb.STEP_STATE_SUCCEEDED:
                        pending.discard(ev.step.disk)
                self.sink(ev)
        except grpc.RpcError as exc:
            # A copier that died cannot say which disk it was on; the disks not yet done can.
            err = self.clients.rpc_error(exc, step=step, guest=self.name)
            if err.disk is None and len(pending) == 1:
                err.disk = pending.pop()
            elif err.disk is None and pending:
                err.message += f" (disks not copied: {', '.join(map(str, sorted(pending)))})"
            raise err from None

    def _close(self, workdir: str, ok: bool) -> bool:
        """The run's last word, success or not: the input closed (and on success the work directory
        removed), unless a failed run keeps its converted overlays for a retry from setup; a note says
        where a failed run's logs are. Best effort: a failure here is reported, never raised over the
        run's own. False: the run's exception, if any, goes on."""
        self.kept = self._converted is not None and not ok and self.keep_converted and not self._cancelled.is_set()
        name = self._workdir.name if self._workdir else workdir
        if not self.kept:
            self._quietly(Step.CLOSE, lambda: self.clients.input.Close(input_pb2.CloseRequest(workdir=name, remove=ok),
                                                                    timeout=self.clients.quick))
        if not ok:
            where = self._path or name
            if self.kept:
                self.report.note(f"the conversion is kept in {where} for a retry from setup", step=Step.CLOSE)
            else:
                self.report.note(f"logs of the failed run kept in {where}/logs on its worker", step=Step.CLOSE)
        return False

    def release(self) -> None:
        """Closes the input a failed run kept open (its converted overlays go with it)."""
        if self.kept and self._workdir is not None:
            self.kept = False
            name = self._workdir.name
            self._quietly(Step.CLOSE, lambda: self.clients.input.Close(input_pb2.CloseRequest(workdir=name),
                                                                    timeout=self.clients.quick))

    def _quietly(self, what: str, fn: Callable[[], object]) -> None:
        try:
            fn()
        except grpc.RpcError as exc:
            self.report.warn(f"{what}: {self.clients.rpc_error(exc, step=what).message}", step=what)

    def _track(self, call: Any) -> None:
        """An in-flight streaming call, for _cancel_calls; cancelled at once if they were already."""
        with self._calls_lock:
            self._calls.append(call)
            cancelled = self._calls_cancelled
        if cancelled:
            call.cancel()

    def _cancel_calls(self) -> None:
        with self._calls_lock:
            self._calls_cancelled = True
            calls = list(self._calls)
        for call in calls:
            call.cancel()

    def cancel(self) -> None:
        """Stops the guest wherever it is: in-flight calls are cancelled, copies killed."""
        self._cancelled.set()
        self._cancel_calls()
        if self._workdir is not None:
            try:
                self.clients.copier.Cancel(copier_pb2.CancelRequest(workdir=self._workdir.name),
                                           timeout=self.clients.quick)
            except grpc.RpcError:
                pass
