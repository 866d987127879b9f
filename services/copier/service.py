"""The Copier gRPC service: copies a guest's disks with nbdcopy, several at once, streaming step
events and progress. A failed disk, Cancel, or the client going away stops every copy."""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import grpc

from v2v.errors import V2VError
from v2v.events import step_event
from v2v.grpcserver import rpc, stream_rpc
from v2v.nbdserver import export_size
from v2v.services.copier.nbdcopy import Nbdcopy
from v2v.services.copier.progress import ProgressThrottle
from v2v.units import human_size
from v2v.v1 import copier_pb2, copier_pb2_grpc
from v2v.v1 import types_pb2 as pb
from v2v.workdir import WorkDir

STEP = "copy"


class CopyJob:
    """The disks of one Copy request. Worker threads run one nbdcopy each, `options.parallel` at
    once, and put their events on a queue that `events()` yields from."""

    def __init__(self, request: copier_pb2.CopyRequest) -> None:
        if not request.workdir:
            raise V2VError("no work directory given", pb.ERROR_CODE_BAD_INPUT, step=STEP, guest=request.guest)
        self.request = request
        self.guest = request.guest
        self.workdir = WorkDir(request.workdir)
        self._events: queue.Queue[pb.Event | None] = queue.Queue()  # None: a worker has ended
        self._lock = threading.Lock()
        self._copies: list[Nbdcopy] = []
        self._stopping = False  # no copy may start any more
        self._succeeded = 0
        self._failure: V2VError | None = None

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
            self._stopping = True
            running = [c for c in self._copies if c.running()]
        for copy in running:
            copy.kill()
        return len(running)

    def _step(self, disk: int, state: int, seconds: float | None = None, message: str = "",
              error: V2VError | None = None) -> None:
        self._events.put(pb.Event(step=step_event(self.guest, STEP, state, message=message, disk=disk,
                                                  seconds=seconds, error=error)))

    def _run_worker(self, disk: copier_pb2.DiskCopy) -> None:
        try:
            if not self._stopping:
                self._copy_disk(disk)
        finally:
            self._events.put(None)

    def _copy_disk(self, disk: copier_pb2.DiskCopy) -> None:
        self._step(disk.disk, pb.STEP_STATE_STARTED, message=f"{disk.source} to {disk.target}")
        started = time.monotonic()
        copy: Nbdcopy | None = None
        try:
            size = disk.size or export_size(disk.source)
            progress = ProgressThrottle(self.guest, disk.disk, size, self._events.put)
            copy = Nbdcopy(disk, self.request.options, size, self.workdir.log(f"copy-disk{disk.disk}.log"),
                           progress.update)
            if not self._start(copy):
                self._step(disk.disk, pb.STEP_STATE_CANCELLED, seconds=time.monotonic() - started)
                return
            copy.wait()
        except Exception as exc:
            err = exc if isinstance(exc, V2VError) else V2VError(f"{type(exc).__name__}: {exc}")
            self._failed(disk.disk, err.fill(step=STEP, guest=self.guest, disk=disk.disk),
                         stopped=copy is not None and copy.killed, seconds=time.monotonic() - started)
            return
        progress.finish()
        seconds = time.monotonic() - started
        with self._lock:
            self._succeeded += 1
        self._step(disk.disk, pb.STEP_STATE_SUCCEEDED, seconds=seconds,
                   message=f"{human_size(size)} at {human_size(size / seconds if seconds else 0)}/s")

    def _start(self, copy: Nbdcopy) -> bool:
        """Starts the copy unless the job is stopping. Under the lock stop() takes, so that every copy
        is either started before a stop, and killed by it, or never started."""
        with self._lock:
            if self._stopping:
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
    def __init__(self) -> None:
        self._jobs: dict[str, list[CopyJob]] = {}
        self._lock = threading.Lock()

    def copy(self, request: copier_pb2.CopyRequest) -> Iterator[pb.Event]:
        """Copy without gRPC: the same code the RPC runs. Closing the iterator stops the copies."""
        return self._run(CopyJob(request))

    def _run(self, job: CopyJob) -> Iterator[pb.Event]:
        workdir = job.request.workdir
        with self._lock:
            self._jobs.setdefault(workdir, []).append(job)
        try:
            yield from job.events()
        finally:
            with self._lock:
                self._jobs[workdir].remove(job)
                if not self._jobs[workdir]:
                    del self._jobs[workdir]

    def cancel(self, workdir: str) -> int:
        """Stops every copy of a work directory; returns how many were running."""
        with self._lock:
            jobs = list(self._jobs.get(workdir, ()))
        return sum(job.stop() for job in jobs)

    def shutdown(self) -> None:
        for workdir in list(self._jobs):
            self.cancel(workdir)

    @stream_rpc
    def Copy(self, request: copier_pb2.CopyRequest, context: grpc.ServicerContext) -> Iterator[pb.Event]:
        job = CopyJob(request)
        context.add_callback(job.stop)  # runs when the RPC ends: a client gone mid-copy stops its copies
        yield from self._run(job)

    @rpc
    def Cancel(self, request: copier_pb2.CancelRequest, context: grpc.ServicerContext) -> copier_pb2.CancelResponse:
        return copier_pb2.CancelResponse(stopped=self.cancel(request.workdir))
