"""The Input gRPC service: keeps each work directory's NBD servers alive from Open to Close."""

from __future__ import annotations

import threading
from collections.abc import Mapping
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import grpc
from google.protobuf.message import Message

from v2v.errors import V2VError
from v2v.extents import tracks_writes
from v2v.grpcserver import rpc
from v2v.nbdclient import cancellable
from v2v.services.input.base import INPUTS, InPlaceInput, InputPlugin
from v2v.services.input.diskfile import tracking_writes
from v2v.steps import Step
from v2v.v1 import input_pb2, input_pb2_grpc
from v2v.v1 import types_pb2 as pb
from v2v.workdir import WorkDir


def open_in_place(plugin: InputPlugin[Any], options: Message, request: input_pb2.OpenRequest, workdir: WorkDir,
                  stack: ExitStack) -> pb.Source:
    """OpenRequest.in_place: the disks served writable, no overlay; refused, before anything is read,
    by inputs that cannot write their disks where they lie."""
    if not isinstance(plugin, InPlaceInput):
        kind = request.input.WhichOneof("kind")
        raise V2VError(f"--in-place: the {kind} input cannot write its disks where they are, so its guests cannot "
                       "be converted in place (in place takes -i disk or -i libvirtxml; convert a copy instead)",
                       pb.ERROR_CODE_BAD_INPUT)
    return plugin.open_in_place(options, request.guest, workdir, stack)


_LOGS_PER_ANSWER = 1 << 20  # bytes of lines in one ReadLogsResponse: well under gRPC's 4 MiB message limit


def read_process_logs(wd: WorkDir, offsets: Mapping[str, int]) -> input_pb2.ReadLogsResponse:
    """The complete lines each file of the work directory's logs/ gained after its offset, up to
    about _LOGS_PER_ANSWER bytes in all (`more` says there is more)."""
    resp = input_pb2.ReadLogsResponse()
    logs = wd.path / "logs"
    if not wd.is_workdir() or not logs.is_dir():
        return resp
    budget = _LOGS_PER_ANSWER
    for log in sorted(logs.iterdir()):
        start = offsets.get(log.name, 0)
        try:
            with open(log, "rb") as f:
                f.seek(start)
                data = f.read(budget + 1)
        except OSError:
            continue
        complete = data[:data.rfind(b"\n") + 1]  # a line still being written waits for the next call
        if len(data) > budget:
            resp.more = True
            if not complete:  # one line longer than an answer: sent cut, rather than never
                complete = data[:budget]
        if complete:
            resp.logs.add(name=log.name, offset=start + len(complete),
                          lines=complete.decode(errors="replace").splitlines())
            budget -= len(complete)
        if budget <= 0:
            resp.more = True
            break
    return resp


class InputService(input_pb2_grpc.InputServicer):
    """`root`: where the work directories this service creates and serves go (default_root())."""

    def __init__(self, root: Path | None = None) -> None:
        self.root = root
        self._open: dict[str, tuple[ExitStack, list[str]]] = {}  # name -> what Close stops, the sockets
        self._lock = threading.Lock()

    def open(self, request: input_pb2.OpenRequest) -> input_pb2.OpenResponse:
        """Open without gRPC: the same code the RPC runs."""
        if not request.workdir:
            raise V2VError("no work directory given", pb.ERROR_CODE_BAD_INPUT, step=Step.OPEN, guest=request.guest)
        stack = ExitStack()
        try:
            plugin, options = INPUTS.lookup(request.input)
            workdir = WorkDir(request.workdir, self.root).ensure()
            with workdir.phase(Step.OPEN, request.guest):
                if request.in_place:
                    source = open_in_place(plugin, options, request, workdir, stack)
                else:
                    with tracking_writes(request.track_writes):
                        source = plugin.open(options, request.guest, workdir, stack)
                workdir.write(WorkDir.SOURCE, source)
                # Asked of each export rather than of the plugins: what a server offers is the truth.
                tracked = [tracks_writes(str(workdir.in_sock(d.index))) for d in source.disks] \
                    if request.track_writes else []
        except V2VError as err:
            stack.close()
            err.fill(step=Step.OPEN, guest=request.guest)
            raise
        except BaseException:
            stack.close()
            raise
        sockets = [str(workdir.in_sock(d.index)) for d in source.disks]
        with self._lock:
            old = self._open.pop(workdir.name, None)
            self._open[workdir.name] = (stack, sockets)
        if old:
            old[0].close()
        return input_pb2.OpenResponse(source=source, workdir=workdir.name, writes_tracked=tracked,
                                      sockets=sockets, path=str(workdir.path))

    def close(self, workdir: str, remove: bool = False) -> None:
        wd = WorkDir(workdir, self.root)
        with self._lock:
            opened = self._open.pop(wd.name, None)
        if opened:
            opened[0].close()
        if remove and wd.path.exists():
            if not wd.is_workdir():
                raise V2VError(f"{wd.path} is not a v2v work directory (no {WorkDir.TAG}): not removed",
                               pb.ERROR_CODE_BAD_INPUT)
            wd.remove()

    def describe(self, workdir: str) -> input_pb2.DescribeResponse:
        wd = WorkDir(workdir, self.root)
        resp = input_pb2.DescribeResponse(workdir=wd.name, path=str(wd.path), exists=wd.is_workdir())
        if not resp.exists:
            return resp
        with self._lock:
            opened = self._open.get(wd.name)
        resp.open = opened is not None
        resp.sockets.extend(opened[1] if opened else [])
        resp.done.extend(wd.done())
        for name, field in ((WorkDir.SOURCE, resp.source), (WorkDir.TARGET, resp.target),
                            (WorkDir.CONVERTED, resp.converted)):
            if (wd.path / name).exists():
                wd.read(name, field)
        return resp

    def shutdown(self) -> None:
        for wd in list(self._open):
            self.close(wd)

    @rpc
    def Open(self, request: input_pb2.OpenRequest, context: grpc.ServicerContext) -> input_pb2.OpenResponse:
        """A client that cancels, or whose deadline passes, stops the connects and server starts of
        the open (nbdclient.cancellable); whatever it had started is closed again."""
        cancel = threading.Event()
        context.add_callback(cancel.set)
        with cancellable(cancel):
            response = self.open(request)
        self._drop_if_cancelled(response, cancel, request.guest)
        return response

    def _drop_if_cancelled(self, response: input_pb2.OpenResponse, cancel: threading.Event, guest: str) -> None:
        """An open cancelled after its last connect: nobody will read the answer, nor close what it keeps open."""
        if cancel.is_set():
            self.close(response.workdir)
            raise V2VError("cancelled while opening the source", pb.ERROR_CODE_CANCELLED, step=Step.OPEN, guest=guest)

    @rpc
    def Close(self, request: input_pb2.CloseRequest, context: grpc.ServicerContext) -> input_pb2.CloseResponse:
        self.close(request.workdir, request.remove)
        return input_pb2.CloseResponse()

    @rpc
    def Describe(self, request: input_pb2.DescribeRequest,
                 context: grpc.ServicerContext) -> input_pb2.DescribeResponse:
        return self.describe(request.workdir)

    @rpc
    def ReadLogs(self, request: input_pb2.ReadLogsRequest,
                 context: grpc.ServicerContext) -> input_pb2.ReadLogsResponse:
        return read_process_logs(WorkDir(request.workdir, self.root), request.offsets)
