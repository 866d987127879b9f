"""The Copier gRPC service: copies a guest's disks with nbdcopy, several at once, streaming step
events and progress, and verifies each copy when asked. A disk with DiskCopy.marked_by (or every
disk, with CopyOptions.written_only) is copied only where a meta context of its source marks it:
qemu:allocation-depth (written since the overlay was opened) or qemu:dirty-bitmap:NAME (a warm
round), with libnbd (v2v/delta_copy.py). A failed disk, Cancel, or the client going away stops every
copy."""

from __future__ import annotations

import queue
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, contextmanager, nullcontext
from pathlib import Path

import grpc

from v2v.delta_copy import copy_changes
from v2v.errors import V2VError
from v2v.events import step_event
from v2v.extents import ALLOCATION_DEPTH, Probe, marked_ranges, probe
from v2v.grpcserver import rpc, stream_rpc
from v2v.services.copier.nbdcopy import Nbdcopy
from v2v.services.copier.progress import CopiedBytes, ProgressThrottle, in_flight_bytes, nbdcopy_workers
from v2v.services.copier.verify import verify
from v2v.steps import Step
from v2v.units import human_size
from v2v.v1 import copier_pb2, copier_pb2_grpc
from v2v.v1 import types_pb2 as pb
from v2v.workdir import WorkDir, check_name

STEP = Step.COPY
VERIFY = Step.VERIFY  # a sub-step of each disk's copy


class CopyJob:
    """The disks of one Copy request. Worker threads copy one disk each (nbdcopy, or libnbd for the
    extents a context marks), `options.parallel` at once, and put their events on a queue that
    `events()` yields from."""

    def __init__(self, request: copier_pb2.CopyRequest, root: Path | None = None) -> None:
        self.request = request
        self.guest = request.guest
        self.workdir: WorkDir | None = None  # none: the logs go to a directory of the call's own
        self._scratch: tempfile.TemporaryDirectory[str] | None = None
        try:
            if request.workdir:
                self.workdir = WorkDir(request.workdir, root).existing()
            else:
                self._scratch = tempfile.TemporaryDirectory(prefix="v2v-copy.")
        except V2VError as err:
            raise err.fill(step=STEP, guest=request.guest) from None
        opts = request.options
        # The whole copy that runs beside a conversion is not the guest's copy yet: its marker says so.
        self.marker_step = Step.PRECOPY if opts.while_converting and not opts.written_only else STEP
        self._events: queue.Queue[pb.Event | None] = queue.Queue()  # None: a worker has ended
        self._lock = threading.Lock()
        self._copies: list[Nbdcopy] = []
        self._in_libnbd = 0  # disks being verified or copied where marked: they watch _stopping
        self._stopping = threading.Event()  # set: no copy may start any more, libnbd work ends
        self._succeeded = 0
        self._failure: V2VError | None = None

    def log(self, name: str) -> Path:
        return self.workdir.log(name) if self.workdir else Path(self._scratch.name) / name  # type: ignore[union-attr]

    def marker(self) -> AbstractContextManager[None]:
        """The copy's phase marker in the work directory, if there is one."""
        return self.workdir.phase(self.marker_step, self.guest) if self.workdir else nullcontext()

    def close(self) -> None:
        if self._scratch is not None:
            self._scratch.cleanup()

    def events(self) -> Iterator[pb.Event]:
        """Runs the copies; once every worker ended, raises the first disk's failure, or CANCELLED if
        copies were stopped without one (Cancel)."""
        disks = self.request.disks
        if not disks:
            return
        pool = ThreadPoolExecutor(max_workers=self.request.options.parallel or len(disks),
                                  thread_name_prefix=f"copy-{self.guest}")
        try:
            for disk in disks:
                pool.submit(self._run_worker, disk)
            for _ in disks:
                while (event := self._events.get()) is not None:
                    yield event
        finally:
            self.stop()  # on any exit, the client's included: no nbdcopy outlives the stream
            pool.shutdown(wait=True, cancel_futures=True)
        if self._failure is not None:
            raise self._failure
        if self._succeeded < len(disks):
            raise V2VError(f"copy cancelled with {self._succeeded} of {len(disks)} disks copied",
                           pb.ERROR_CODE_CANCELLED, step=STEP, guest=self.guest)

    def stop(self) -> int:
        """Stops every copy (Cancel); returns how many were running."""
        with self._lock:
            self._stopping.set()
            running = [c for c in self._copies if c.running()]
            in_libnbd = self._in_libnbd
        for copy in running:
            copy.kill()
        return len(running) + in_libnbd

    def _step(self, disk: int, state: pb.StepState, seconds: float | None = None, message: str = "",
              error: V2VError | None = None, step: str = STEP, copied: pb.CopyStats | None = None) -> None:
        ev = step_event(self.guest, step, state, message=message, disk=disk, seconds=seconds, error=error,
                        parent=STEP if step != STEP else "")
        if copied is not None:
            ev.copied.CopyFrom(copied)
        self._events.put(pb.Event(step=ev))

    def _run_worker(self, disk: copier_pb2.DiskCopy) -> None:
        try:
            if not self._stopping.is_set():
                self._copy_disk(disk)
        finally:
            self._events.put(None)

    def _error(self, exc: Exception, disk: int) -> V2VError:
        err = exc if isinstance(exc, V2VError) else V2VError(f"{type(exc).__name__}: {exc}")
        return err.fill(step=STEP, guest=self.guest, disk=disk)

    def _copy_disk(self, disk: copier_pb2.DiskCopy) -> None:
        """The disk's "copy" step: probe the source, copy it (nbdcopy, or the extents a context marks:
        marked_by, written_only), then the "verify" sub-step if asked."""
        self._step(disk.disk, pb.STEP_STATE_STARTED, message=f"{disk.source} to {disk.target}")
        started = time.monotonic()
        opts = self.request.options
        context = disk.marked_by or (ALLOCATION_DEPTH if opts.written_only else "")
        try:
            source = probe(disk.source, disk.size)
            message, stats = self._copy_marked(disk, source, context) if context else self._nbdcopy(disk, source)
            if opts.verify:
                self._verify(disk, source)
        except Exception as exc:
            err = self._error(exc, disk.disk)
            # Stopped on purpose (nbdcopy killed, libnbd work cancelled): the cause is elsewhere.
            self._failed(disk.disk, err, stopped=err.code == pb.ERROR_CODE_CANCELLED,
                         seconds=time.monotonic() - started)
            return
        with self._lock:
            self._succeeded += 1
        self._step(disk.disk, pb.STEP_STATE_SUCCEEDED, seconds=time.monotonic() - started,
                   message=message + (", verified" if opts.verify else ""), copied=stats)

    def _nbdcopy(self, disk: copier_pb2.DiskCopy, source: Probe) -> tuple[str, pb.CopyStats]:
        """The whole disk with nbdcopy; returns what it copied, as the step's message and stats."""
        opts = self.request.options
        copied = CopiedBytes(source.extents, nbdcopy_workers(opts, source.multi_conn), in_flight_bytes(opts))
        progress = ProgressThrottle(self.guest, disk.disk, copied.total, source.size, self._events.put)
        copy = Nbdcopy(disk, opts, self.log(f"copy-disk{disk.disk}.log"),
                       lambda percent: progress.update(copied.at(percent)))
        if not self._start(copy):
            raise V2VError("copy cancelled before it started", pb.ERROR_CODE_CANCELLED)
        try:
            copy.wait()
        except V2VError as err:
            if copy.killed:
                err.code = pb.ERROR_CODE_CANCELLED
            raise
        progress.finish()
        seconds = time.monotonic() - progress.started
        data = source.extents.data
        return (f"{human_size(data)} of data in {human_size(source.size)} at "
                f"{human_size(data / seconds if seconds else 0)}/s",
                pb.CopyStats(bytes_marked=source.size, bytes_copied=data, bytes_zeroed=source.size - data))

    def _copy_marked(self, disk: copier_pb2.DiskCopy, source: Probe, context: str) -> tuple[str, pb.CopyStats]:
        """Only the extents `context` marks on the source, over a target holding a copy of the rest;
        returns what it copied, as the step's message and stats."""
        marked = marked_ranges(disk.source, context)
        progress = ProgressThrottle(self.guest, disk.disk, marked.data, source.size, self._events.put)
        with self._libnbd_work(Step.COPY):
            stats = copy_changes(disk.source, disk.target, marked, stop=self._stopping,
                                 allocated=self.request.options.allocated,
                                 progress=lambda done, _total: progress.update(done))
        progress.finish()
        seconds = time.monotonic() - progress.started
        what = "written since open" if context == ALLOCATION_DEPTH else f"marked by {context}"
        return (f"{human_size(marked.data)} {what}: {human_size(stats.copied)} copied, "
                f"{human_size(stats.zeroed)} zeroed, in {seconds:.1f} s",
                pb.CopyStats(bytes_marked=stats.changed, bytes_copied=stats.copied, bytes_zeroed=stats.zeroed))

    @contextmanager
    def _libnbd_work(self, what: str) -> Iterator[None]:
        """Work in this thread that ends when _stopping is set (verify, copy_changes): counted as
        running by stop() from here on, or, if the job is stopping already, not started at all."""
        with self._lock:
            if self._stopping.is_set():
                raise V2VError(f"{what} cancelled", pb.ERROR_CODE_CANCELLED)
            self._in_libnbd += 1
        try:
            yield
        finally:
            with self._lock:
                self._in_libnbd -= 1

    def _verify(self, disk: copier_pb2.DiskCopy, source: Probe) -> None:
        """The "verify" sub-step: the target read back and compared with the source; raises on a
        difference (VERIFY_FAILED) or when the job stops (CANCELLED)."""
        with self._libnbd_work("verification"):
            self._step(disk.disk, pb.STEP_STATE_STARTED, step=VERIFY)
            started = time.monotonic()
            try:
                compared = verify(disk.source, disk.target, source.size, self._stopping, source.extents)
            except Exception as exc:
                err = self._error(exc, disk.disk)
                cancelled = err.code == pb.ERROR_CODE_CANCELLED
                self._step(disk.disk, pb.STEP_STATE_CANCELLED if cancelled else pb.STEP_STATE_FAILED, step=VERIFY,
                           seconds=time.monotonic() - started, message=err.message, error=None if cancelled else err)
                raise err from exc
        seconds = time.monotonic() - started
        self._step(disk.disk, pb.STEP_STATE_SUCCEEDED, step=VERIFY, seconds=seconds,
                   message=f"{human_size(compared)} compared at {human_size(compared / seconds if seconds else 0)}/s")

    def _start(self, copy: Nbdcopy) -> bool:
        """Starts the copy unless the job is stopping. Under the lock stop() takes, so that every copy
        is either started before a stop, and killed by it, or never started."""
        with self._lock:
            if self._stopping.is_set():
                return False
            self._copies.append(copy)
            copy.start()
            return True

    def _failed(self, disk: int, err: V2VError, stopped: bool, seconds: float) -> None:
        if stopped:  # killed by stop(): the cause is elsewhere
            self._step(disk, pb.STEP_STATE_CANCELLED, seconds=seconds)
            return
        self._step(disk, pb.STEP_STATE_FAILED, seconds=seconds, message=err.message, error=err)
        with self._lock:
            self._failure = self._failure or err
        self.stop()


class CopierService(copier_pb2_grpc.CopierServicer):
    """`root`: where the work directories of its requests are (default_root())."""

    def __init__(self, root: Path | None = None) -> None:
        self.root = root
        self._jobs: dict[str, list[CopyJob]] = {}
        self._lock = threading.Lock()

    def copy(self, request: copier_pb2.CopyRequest) -> Iterator[pb.Event]:
        """Copy without gRPC: the same code the RPC runs. Closing the iterator stops the copies."""
        return self._run(CopyJob(request, self.root))

    def _run(self, job: CopyJob) -> Iterator[pb.Event]:
        workdir = job.request.workdir
        with self._lock:
            self._jobs.setdefault(workdir, []).append(job)
        try:
            with job.marker():
                yield from job.events()
        finally:
            job.close()
            with self._lock:
                self._jobs[workdir].remove(job)
                if not self._jobs[workdir]:
                    del self._jobs[workdir]

    def cancel(self, workdir: str) -> int:
        """Stops every copy of a work directory; returns how many were running."""
        with self._lock:
            jobs = list(self._jobs.get(check_name(workdir), ()))
        return sum(job.stop() for job in jobs)

    def shutdown(self) -> None:
        with self._lock:
            jobs = [job for jobs in self._jobs.values() for job in jobs]
        for job in jobs:
            job.stop()

    @stream_rpc
    def Copy(self, request: copier_pb2.CopyRequest, context: grpc.ServicerContext) -> Iterator[pb.Event]:
        job = CopyJob(request, self.root)
        # Runs when the RPC ends: a client gone mid-copy stops its copies. grpc drops the callback's
        # result; grpc-stubs asks for a None-returning one.
        context.add_callback(job.stop)  # type: ignore[arg-type]
        yield from self._run(job)

    @rpc
    def Cancel(self, request: copier_pb2.CancelRequest, context: grpc.ServicerContext) -> copier_pb2.CancelResponse:
        return copier_pb2.CancelResponse(stopped=self.cancel(request.workdir))
