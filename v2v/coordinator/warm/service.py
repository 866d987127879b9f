"""The Warm gRPC service: a running guest migrated in rounds, then converted with a short downtime
(docs/warm.md, protos/v2v/v1/warm.proto).

    Start    tracking on (a checkpoint per disk), full copy to disks the output's Setup creates
    Precopy  the blocks changed since the last round (repeatable), to the disks the output's Serve
             serves again
    Cutover  source stopped: the last changes, in-place conversion of the target's disks (the
             input and convert services, as `v2v --in-place`), the output's Finalize

Every round's data goes through the copier service (whole disks with nbdcopy, then the extents each
source's dirty bitmap marks), all disks at once where the sources allow it. Each call loads
<workdir>/warm.json, does its work under a lock on the work directory and saves the state after
every disk, so the state always names the checkpoints that exist. A client that goes away cancels
the call: its copy stops, its round is undone as a failed one, and the lock is free again."""

from __future__ import annotations

import fcntl
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import duration_pb2

from v2v.changed_blocks import FIRST_CHECKPOINT, ChangedBlockSource, Changes, next_checkpoint, open_source
from v2v.coordinator.bootcheck import VERIFY_SLOTS, boot_verdict, no_verify_service
from v2v.coordinator.phases import OpenedGuest, PhaseServices, convert_guest
from v2v.errors import V2VError, from_rpc_error
from v2v.events import StepReporter
from v2v.grpcserver import channel, rpc, stream_rpc
from v2v.naming import name_from_path
from v2v.steps import Step
from v2v.streaming import stream_events
from v2v.v1 import (
    copier_pb2,
    copier_pb2_grpc,
    input_pb2,
    output_pb2,
    output_pb2_grpc,
    verify_pb2,
    verify_pb2_grpc,
    warm_pb2,
    warm_pb2_grpc,
)
from v2v.v1 import types_pb2 as pb
from v2v.workdir import WorkDir

STATE = "warm.json"
WarmSink = Callable[[warm_pb2.WarmEvent], None]
RoundView = Callable[[warm_pb2.WarmDisk, ChangedBlockSource], AbstractContextManager[Changes]]

INCONSISTENT = ("the target disks were being converted in place and may now be in an inconsistent state: "
                "run `v2v warm start` again for a fresh copy")


def seconds(d: duration_pb2.Duration) -> float:
    return d.seconds + d.nanos / 1e9


def duration(s: float) -> duration_pb2.Duration:
    return duration_pb2.Duration(seconds=int(s), nanos=int((s % 1) * 1e9))


def load(workdir: str, root: Path | None) -> warm_pb2.WarmState:
    if not workdir:
        raise V2VError("no work directory given: pass the one `v2v warm start` printed", pb.ERROR_CODE_BAD_INPUT)
    wd = WorkDir(workdir, root)
    if not (wd.path / STATE).exists():
        raise V2VError(f"{wd.path} holds no warm migration ({STATE} is missing)", pb.ERROR_CODE_BAD_INPUT)
    return wd.read(STATE, warm_pb2.WarmState())


@contextmanager
def locked(workdir: WorkDir) -> Iterator[None]:
    """One call at a time per migration: two rounds at once would rotate the same bitmaps."""
    with open(workdir.path / "warm.lock", "w") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise V2VError(f"another warm command is running on {workdir.path}", pb.ERROR_CODE_BAD_INPUT) from None
        yield


def guest_name(request: warm_pb2.StartRequest) -> str:
    if request.name:
        return request.name
    first = request.disks[0]
    return name_from_path(first.qcow2) if first.WhichOneof("kind") == "qcow2" else first.qmp.node


class Cancellation:
    """Set when the client of a Warm call goes away: the copy running for it is cancelled (the
    copier stops it as for Cancel) and no further step starts."""

    def __init__(self) -> None:
        self._cancelled = threading.Event()
        self._lock = threading.Lock()
        self._calls: list[Any] = []  # streaming calls: grpc.Call and grpc.Future

    def cancel(self) -> None:
        with self._lock:
            self._cancelled.set()
            calls = list(self._calls)
        for call in calls:
            call.cancel()

    def check(self, step: str) -> None:
        if self._cancelled.is_set():
            raise V2VError(f"{step} cancelled: the client went away", pb.ERROR_CODE_CANCELLED, step=step)

    @contextmanager
    def tracking(self, call: Any) -> Iterator[None]:
        """Within: `call` is cancelled by cancel() (at once, if that came first)."""
        with self._lock:
            self._calls.append(call)
            cancelled = self._cancelled.is_set()
        if cancelled:
            call.cancel()
        try:
            yield
        finally:
            with self._lock:
                self._calls.remove(call)


class Migration:
    """One warm migration's state and the services it uses; every change is saved at once."""

    def __init__(self, state: warm_pb2.WarmState, addresses: dict[str, str], sink: WarmSink,
                 root: Path | None = None, cancellation: Cancellation | None = None) -> None:
        self.state = state
        self.workdir = WorkDir(state.workdir, root)
        self.addresses = addresses
        self.sink = sink
        self.cancellation = cancellation or Cancellation()
        self.report = StepReporter(state.guest, lambda ev: sink(warm_pb2.WarmEvent(step=ev)))
        self.sources: list[ChangedBlockSource] = [open_source(d.source, d.index, self.workdir) for d in state.disks]
        self._channels: list[grpc.Channel] = []

    def save(self) -> None:
        self.workdir.write(STATE, self.state)

    @contextmanager
    def phase(self, step: str) -> Iterator[None]:
        """A timed step whose RPC failure comes back as the service's own structured error; none
        starts once the client went away."""
        self.cancellation.check(step)
        with self.report.step(step):
            try:
                yield
            except grpc.RpcError as exc:
                raise from_rpc_error(exc, step=step, guest=self.state.guest) from None

    def output(self) -> output_pb2_grpc.OutputStub:
        return output_pb2_grpc.OutputStub(self._channel("output"))

    def copier(self) -> copier_pb2_grpc.CopierStub:
        return copier_pb2_grpc.CopierStub(self._channel("copier"))

    def _channel(self, name: str) -> grpc.Channel:
        ch = channel(self.addresses[name])
        self._channels.append(ch)
        return ch

    @contextmanager
    def rotated(self, disk: warm_pb2.WarmDisk, view: AbstractContextManager[Changes]) -> Iterator[Changes]:
        """One disk's view of a round; the new checkpoint is saved once the view closed after a
        successful copy (the old checkpoint is gone then)."""
        with view as changes:
            yield changes
        disk.checkpoint = changes.checkpoint
        self.save()

    def copy_round(self, kind: str, view: RoundView, sockets: list[str], target_is_zero: bool,
                   preallocated: bool) -> list[warm_pb2.DiskRound]:
        """Copies one round of every disk through the copier: all at once where the sources let
        their views be open together, else one disk after the other."""
        pairs = list(zip(self.state.disks, self.sources, strict=True))
        batches = [pairs] if all(source.views_at_once for source in self.sources) else [[p] for p in pairs]
        options = copier_pb2.CopyOptions(target_is_zero=target_is_zero, allocated=preallocated, flush=True)
        rounds: list[warm_pb2.DiskRound] = []
        for batch in batches:
            self.cancellation.check(kind)
            with ExitStack() as stack:
                views = [(disk, stack.enter_context(self.rotated(disk, view(disk, source)))) for disk, source in batch]
                rounds += self.copy(kind, views, sockets, options)
        return rounds

    def copy(self, kind: str, views: list[tuple[warm_pb2.WarmDisk, Changes]], sockets: list[str],
             options: copier_pb2.CopyOptions) -> list[warm_pb2.DiskRound]:
        """One Copier.Copy of these disks' views; its events are relayed, its "copy" steps under `kind`."""
        st = self.state
        disks = [copier_pb2.DiskCopy(disk=disk.index, source=changes.uri, target=sockets[disk.index],
                                     size=disk.virtual_size, marked_by=changes.marked_by) for disk, changes in views]
        call = self.copier().Copy(copier_pb2.CopyRequest(workdir=st.workdir, guest=st.guest, disks=disks,
                                                         options=options))
        copied: dict[int, pb.CopyStats] = {}
        with self.cancellation.tracking(call):
            try:
                for ev in call:
                    if ev.HasField("progress"):
                        self.sink(warm_pb2.WarmEvent(progress=ev.progress))
                        continue
                    ev.step.parent = ev.step.parent or kind
                    if ev.step.HasField("copied"):
                        copied[ev.step.disk] = ev.step.copied
                    self.sink(warm_pb2.WarmEvent(step=ev.step))
            except grpc.RpcError as exc:
                raise from_rpc_error(exc, step=kind, guest=st.guest) from None
        return [warm_pb2.DiskRound(disk=d.disk, bytes_changed=copied[d.disk].bytes_marked,
                                   bytes_copied=copied[d.disk].bytes_copied, bytes_zeroed=copied[d.disk].bytes_zeroed)
                for d in disks]

    def finish_round(self, kind: str, disks: list[warm_pb2.DiskRound], started: float) -> warm_pb2.Round:
        r = warm_pb2.Round(number=len(self.state.rounds), kind=kind, disks=disks,
                           duration=duration(time.monotonic() - started))
        self.state.rounds.append(r)
        self.save()
        self.sink(warm_pb2.WarmEvent(round=r))
        return r

    def delta_round(self, kind: str) -> warm_pb2.Round:
        """The blocks changed since the last round, written to the target disks the output serves again."""
        st = self.state
        started = time.monotonic()
        output = self.output()
        with self.phase(kind):
            served = output.Serve(output_pb2.ServeRequest(workdir=st.workdir, guest=st.guest))
            try:
                disks = self.copy_round(kind, lambda d, s: s.changes(d.checkpoint, next_checkpoint(d.checkpoint)),
                                        list(served.sockets), target_is_zero=False, preallocated=served.preallocated)
            finally:
                output.Release(output_pb2.ReleaseRequest(workdir=st.workdir))  # the servers flush as they stop
        return self.finish_round(kind, disks, started)

    # ------------------------------------------------------------------ start

    def start(self) -> None:
        st = self.state
        for disk, source in zip(st.disks, self.sources, strict=True):
            disk.virtual_size = source.size()
            st.source.disks.append(pb.SourceDisk(index=disk.index, location=source.what, format="raw",
                                                 virtual_size=disk.virtual_size))
        st.phase = warm_pb2.WARM_PHASE_STARTING
        self.save()
        output = self.output()
        target = pb.TargetMeta(name=st.output.name or st.guest, source=st.source)
        with self.phase(Step.SETUP):
            setup = output.Setup(output_pb2.SetupRequest(workdir=st.workdir, guest=st.guest, output=st.output,
                                                         target=target))
        try:
            for disk, created in zip(st.disks, setup.disks, strict=True):
                disk.target.CopyFrom(created)
            self.save()
            started = time.monotonic()
            with self.phase(Step.FULL):
                disks = self.copy_round(Step.FULL, lambda _, s: s.begin(FIRST_CHECKPOINT), list(setup.sockets),
                                        target_is_zero=setup.target_is_zero, preallocated=setup.preallocated)
            # The rounds have the disks served again; cutover describes the guest.
            with self.phase(Step.RELEASE):
                output.Release(output_pb2.ReleaseRequest(workdir=st.workdir))
        except BaseException:
            self.abandon(output)
            raise
        st.phase = warm_pb2.WARM_PHASE_PRECOPY
        self.finish_round(Step.FULL, disks, started)

    def abandon(self, output: output_pb2_grpc.OutputStub) -> None:
        """A failed start: no checkpoint and no target disk stays behind."""
        for disk, source in zip(self.state.disks, self.sources, strict=True):
            if disk.checkpoint:
                source.end(disk.checkpoint)
                disk.checkpoint = ""
        try:
            output.Abort(output_pb2.AbortRequest(workdir=self.state.workdir))
        except grpc.RpcError as exc:
            self.report.warn(f"abort: {from_rpc_error(exc, step=Step.ABORT).message}", step=Step.ABORT)
        self.save()

    # ------------------------------------------------------------------ cutover

    def stop_sources(self, stop: bool) -> list[ChangedBlockSource]:
        """The sources still running, stopped (with `stop`), or refused; returns those it stopped."""
        stopped = []
        for source in self.sources:
            if not source.running():
                continue
            if not stop:
                raise V2VError(f"{source.what} is still running: shut the guest down (or pass --stop-source to "
                               "pause it) before cutover", pb.ERROR_CODE_BAD_INPUT)
            source.stop()
            stopped.append(source)
        return stopped

    def cutover(self, request: warm_pb2.CutoverRequest) -> None:
        st = self.state
        started = time.monotonic()
        with self.phase(Step.STOP_SOURCE):
            stopped = self.stop_sources(request.stop_source)
        self.delta_round(Step.CUTOVER)
        for disk, source in zip(st.disks, self.sources, strict=True):
            source.end(disk.checkpoint)
            disk.checkpoint = ""
        st.phase = warm_pb2.WARM_PHASE_CUTOVER
        self.save()
        paths = [d.target.path for d in st.disks]
        spec = input_pb2.InputSpec(disk=input_pb2.DiskInput(paths=paths, format=st.disks[0].target.format))
        afterwards: list[str] = []

        def relay(ev: pb.Event) -> None:
            self.sink(warm_pb2.WarmEvent(step=ev.step) if ev.HasField("step") else
                      warm_pb2.WarmEvent(progress=ev.progress))

        try:
            with PhaseServices({"input": self.addresses["input"], "convert": self.addresses["convert"]}) as addrs, \
                    OpenedGuest(addrs["input"], spec, relay, afterwards, in_place=True) as guest:
                result = convert_guest(guest, addrs["convert"], st.convert)
        except V2VError as err:
            err.message = f"{err.message}\n{INCONSISTENT}"
            err.detail = "\n".join([*afterwards, err.detail])
            raise
        target = result.target
        target.name = st.output.name or st.guest
        target.source.name = st.guest
        target.disks.extend(disk.target for disk in st.disks)  # Finalize gives them the converted bus
        with self.phase(Step.FINALIZE):
            files = self.output().Finalize(output_pb2.FinalizeRequest(workdir=st.workdir, guest=st.guest,
                                                                      output=st.output, target=target)).files
        st.files[:] = files
        if request.verify_boot:
            try:
                self.verify(target, request.verify_boot)
            except V2VError as err:
                if err.code == pb.ERROR_CODE_CANCELLED:
                    raise
                # The check failed, or could not run: either way nothing proved the target boots.
                st.phase = warm_pb2.WARM_PHASE_VERIFY_FAILED
                self.save()
                err.message += "; the converted target is kept for inspection"
                if request.rollback == warm_pb2.ROLLBACK_ON_VERIFY_FAILURE:
                    err.message += f"; rollback: {self.roll_back(stopped)}"
                raise
        st.downtime.CopyFrom(duration(time.monotonic() - started))
        st.phase = warm_pb2.WARM_PHASE_DONE
        self.save()

    def verify(self, target: pb.TargetMeta, mode: verify_pb2.VerifyMode) -> None:
        """The cutover's boot check (docs/verify.md), while the source is still stopped."""
        with self.phase(Step.VERIFY):
            if not self.addresses.get("verify"):
                raise no_verify_service("this Warm service ($V2V_VERIFY)")
            request = verify_pb2.VerifyRequest(guest=self.state.guest, target=target, mode=mode,
                                               accelerator=self.state.convert.accelerator)
            with VERIFY_SLOTS:
                call = verify_pb2_grpc.VerifyStub(self._channel("verify")).VerifyBoot(request)
                with self.cancellation.tracking(call):
                    boot_verdict(call, lambda step: self.sink(warm_pb2.WarmEvent(step=step)), self.report)

    def roll_back(self, stopped: list[ChangedBlockSource]) -> str:
        """The sources this cutover paused, resumed; says what it did, for the guest's error."""
        if not stopped:
            return "cutover stopped no source (it was shut down before): start the source guest yourself"
        failed = []
        with self.report.step(Step.ROLLBACK):
            for source in stopped:
                try:
                    source.resume()
                except (V2VError, OSError) as exc:  # the verify failure stays the error; this one is said
                    failed.append(source.what)
                    self.report.warn(f"{source.what} could not be resumed: {exc}", step=Step.ROLLBACK)
                    continue
                self.report.note(f"{source.what} resumed: the source guest runs on", step=Step.ROLLBACK)
        if failed:
            return f"{', '.join(failed)} could not be resumed: start the source guest yourself"
        return "the source guest was resumed and runs on"

    def close(self) -> None:
        for ch in self._channels:
            ch.close()


class WarmService(warm_pb2_grpc.WarmServicer):
    """`addresses`: the input, convert, output and copier services (name -> address); `root`: where the
    work directories are, the same as theirs (default: default_root())."""

    def __init__(self, addresses: dict[str, str], root: Path | None = None) -> None:
        self.addresses = addresses
        self.root = root

    @contextmanager
    def _migration(self, state: warm_pb2.WarmState, sink: WarmSink,
                   cancellation: Cancellation | None) -> Iterator[Migration]:
        m = Migration(state, self.addresses, sink, self.root, cancellation)
        try:
            with locked(m.workdir):
                yield m
        finally:
            m.close()

    def start(self, request: warm_pb2.StartRequest, sink: WarmSink,
              cancellation: Cancellation | None = None) -> warm_pb2.WarmState:
        """Start without gRPC: the same code the RPC runs."""
        if not request.disks:
            raise V2VError("no source disks given", pb.ERROR_CODE_BAD_INPUT, step=Step.START)
        if request.output.WhichOneof("kind") in (None, "null"):
            raise V2VError("a warm migration needs an output whose disks can be reopened between rounds "
                           "(-o local, qemu, json, kubevirt, libvirt)", pb.ERROR_CODE_BAD_INPUT, step=Step.START)
        name = guest_name(request)
        workdir = WorkDir.create(name, self.root)
        state = warm_pb2.WarmState(guest=name, workdir=workdir.name, path=str(workdir.path),
                                   source=pb.Source(name=name), output=request.output, convert=request.convert,
                                   disks=[warm_pb2.WarmDisk(index=i, source=d) for i, d in enumerate(request.disks)])
        try:
            with self._migration(state, sink, cancellation) as m:
                m.start()
        except BaseException:
            workdir.remove()
            raise
        return state

    def precopy(self, request: warm_pb2.PrecopyRequest, sink: WarmSink,
                cancellation: Cancellation | None = None) -> warm_pb2.WarmState:
        state = self.expect(load(request.workdir, self.root), warm_pb2.WARM_PHASE_PRECOPY, Step.PRECOPY)
        with self._migration(state, sink, cancellation) as m:
            m.delta_round(Step.PRECOPY)
        return state

    def cutover(self, request: warm_pb2.CutoverRequest, sink: WarmSink,
                cancellation: Cancellation | None = None) -> warm_pb2.WarmState:
        state = self.expect(load(request.workdir, self.root), warm_pb2.WARM_PHASE_PRECOPY, Step.CUTOVER)
        with self._migration(state, sink, cancellation) as m:
            m.cutover(request)
        return state

    @staticmethod
    def expect(state: warm_pb2.WarmState, phase: int, step: str) -> warm_pb2.WarmState:
        if state.phase != phase:
            raise V2VError(f"the migration in {state.path or state.workdir} is in phase "
                           f"{warm_pb2.WarmPhase.Name(state.phase)}, not {warm_pb2.WarmPhase.Name(phase)}",
                           pb.ERROR_CODE_BAD_INPUT, step=step, guest=state.guest)
        return state

    @staticmethod
    def _stream(work: Callable[[WarmSink, Cancellation], warm_pb2.WarmState],
                context: grpc.ServicerContext) -> Iterator[warm_pb2.WarmEvent]:
        """The call's events; the call ending before its work (the client went away) cancels the work."""
        cancellation = Cancellation()
        context.add_callback(cancellation.cancel)
        for item in stream_events(lambda sink: work(sink, cancellation)):
            yield item if isinstance(item, warm_pb2.WarmEvent) else warm_pb2.WarmEvent(state=item)

    @stream_rpc
    def Start(self, request: warm_pb2.StartRequest, context: grpc.ServicerContext) -> Iterator[Any]:
        yield from self._stream(lambda sink, c: self.start(request, sink, c), context)

    @stream_rpc
    def Precopy(self, request: warm_pb2.PrecopyRequest, context: grpc.ServicerContext) -> Iterator[Any]:
        yield from self._stream(lambda sink, c: self.precopy(request, sink, c), context)

    @stream_rpc
    def Cutover(self, request: warm_pb2.CutoverRequest, context: grpc.ServicerContext) -> Iterator[Any]:
        yield from self._stream(lambda sink, c: self.cutover(request, sink, c), context)

    @rpc
    def Status(self, request: warm_pb2.StatusRequest, context: grpc.ServicerContext) -> warm_pb2.WarmState:
        return load(request.workdir, self.root)


WARM_PHASES = ("input", "convert", "output", "copier")


def warm_servicer(addresses: dict[str, str], root: Path | None = None) -> tuple[WarmService, Callable[..., None], str]:
    """The Warm service as RunningService takes it, using the phase services at `addresses`."""
    return WarmService(addresses, root), warm_pb2_grpc.add_WarmServicer_to_server, "v2v.v1.Warm"


def serve_warm(root: Path | None = None) -> tuple[WarmService, Callable[..., None], str]:
    """`v2v serve warm`: the phase services from $V2V_INPUT, $V2V_CONVERT, $V2V_OUTPUT, $V2V_COPIER."""
    addresses = {s: os.environ.get(f"V2V_{s.upper()}", "") for s in WARM_PHASES}
    if missing := [s for s, a in addresses.items() if not a]:
        raise ValueError(f"v2v serve warm: set {', '.join(f'V2V_{s.upper()}' for s in missing)}")
    return warm_servicer(addresses | {"verify": os.environ.get("V2V_VERIFY", "")}, root)
