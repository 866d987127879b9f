"""The Output gRPC service: keeps each work directory's target disk servers alive from Setup (or
Serve, which serves the disks a Setup made again) to Release, Finalize (which stops them, then
describes the guest) or Abort (which also removes the disks)."""

from __future__ import annotations

import threading
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import grpc

from v2v.drives import device_name, target_bus
from v2v.errors import V2VError
from v2v.grpcserver import rpc
from v2v.services.output.base import OUTPUTS, OutputPlugin, target_name

# Each import registers an output plugin.
from v2v.steps import Step
from v2v.v1 import output_pb2, output_pb2_grpc
from v2v.v1 import types_pb2 as pb
from v2v.workdir import WorkDir, check_name


@dataclass
class _Output:
    """What Setup made for one work directory, kept until Finalize or Abort."""

    plugin: OutputPlugin
    spec: output_pb2.OutputSpec
    target: pb.TargetMeta
    stack: ExitStack  # the disks' NBD servers


def on_converted_bus(target: pb.TargetMeta) -> None:
    """Each disk's bus and device name from the guest's capabilities as the conversion left them:
    a Setup that ran before the conversion (copy while converting, warm) could not know them."""
    bus = target_bus(target.caps)
    for disk in target.disks:
        disk.bus, disk.device = bus, device_name(bus, disk.index)


def request_target(request: output_pb2.SetupRequest | output_pb2.FinalizeRequest, workdir: WorkDir) -> pb.TargetMeta:
    """The request's target, else the work directory's target.json, with its final name."""
    target = pb.TargetMeta()
    if request.HasField("target"):
        target.CopyFrom(request.target)
    else:
        workdir.read(WorkDir.TARGET, target)
    target.name = target_name(request.output, target)
    return target


class OutputService(output_pb2_grpc.OutputServicer):
    """`root`: where the work directories of its requests are (default_root())."""

    def __init__(self, root: Path | None = None) -> None:
        self.root = root
        self._open: dict[str, _Output] = {}
        self._lock = threading.Lock()

    def check(self, request: output_pb2.CheckRequest) -> None:
        """Check without gRPC: the same code the RPC runs."""
        try:
            plugin, _ = OUTPUTS.lookup(request.output)
            target = pb.TargetMeta(source=request.source)
            target.name = target_name(request.output, target)
            plugin.check(request.output, target)
        except V2VError as err:
            err.fill(step=Step.CHECK, guest=request.guest)
            raise

    def setup(self, request: output_pb2.SetupRequest) -> output_pb2.SetupResponse:
        """Setup without gRPC: the same code the RPC runs."""
        try:
            return self._setup(request)
        except V2VError as err:
            err.fill(step=Step.SETUP, guest=request.guest)
            raise

    def _setup(self, request: output_pb2.SetupRequest) -> output_pb2.SetupResponse:
        if not request.workdir:
            raise V2VError("no work directory given", pb.ERROR_CODE_BAD_INPUT)
        workdir = WorkDir(request.workdir, self.root).existing()
        plugin, _ = OUTPUTS.lookup(request.output)
        if not request.HasField("target"):
            raise V2VError("SetupRequest.target is required: the guest to make target disks for (its source "
                           "disks, and the conversion's caps when it ran first)", pb.ERROR_CODE_BAD_INPUT)
        target = request_target(request, workdir)
        if not target.source.disks:
            raise V2VError(f"guest {target.name} has no disks to create", pb.ERROR_CODE_BAD_INPUT)
        del target.disks[:]  # from here on: the disks this setup created
        with self._lock:
            if request.workdir in self._open:
                raise V2VError(f"the output of {request.workdir} is already set up: finalize or abort it first",
                               pb.ERROR_CODE_BAD_INPUT)
        stack = ExitStack()
        try:
            workdir.write(WorkDir.OUTPUT, request.output)
            with workdir.phase(Step.SETUP, request.guest):
                plugin.setup(request.output, target, workdir, stack)
                workdir.write(WorkDir.TARGET, target)
        except BaseException:
            stack.close()  # the servers stop before their files go
            plugin.abort(request.output, target, workdir)
            raise
        with self._lock:
            self._open[request.workdir] = _Output(plugin, request.output, target, stack)
        return output_pb2.SetupResponse(disks=target.disks,
                                        sockets=[str(workdir.out_sock(d.index)) for d in target.disks],
                                        target_is_zero=plugin.target_is_zero,
                                        preallocated=request.output.allocation == output_pb2.ALLOCATION_PREALLOCATED)

    def serve(self, request: output_pb2.ServeRequest) -> output_pb2.ServeResponse:
        """Serve without gRPC: the same code the RPC runs."""
        try:
            return self._serve(request)
        except V2VError as err:
            err.fill(step=Step.SERVE, guest=request.guest)
            raise

    def _serve(self, request: output_pb2.ServeRequest) -> output_pb2.ServeResponse:
        workdir = WorkDir(request.workdir, self.root).existing()
        done = workdir.done()
        if Step.SETUP not in done or Step.FINALIZE in done:
            raise V2VError(f"no target disks to serve in {workdir.name}: "
                           + ("they were finalized" if Step.FINALIZE in done else "Setup has not made them"),
                           pb.ERROR_CODE_NOT_FOUND)
        spec = workdir.read(WorkDir.OUTPUT, output_pb2.OutputSpec())  # this service's own journal of its Setup
        target = workdir.read(WorkDir.TARGET, pb.TargetMeta())
        plugin, _ = OUTPUTS.lookup(spec)
        with self._lock:
            if workdir.name in self._open:
                raise V2VError(f"the target disks of {workdir.name} are served already: release them first",
                               pb.ERROR_CODE_BAD_INPUT)
            # Claimed under the lock, so that two Serve calls never start two servers on one socket.
            self._open[workdir.name] = opened = _Output(plugin, spec, target, ExitStack())
        try:
            plugin.serve(spec, target, workdir, opened.stack)
        except BaseException:
            self.release(workdir.name)
            raise
        return output_pb2.ServeResponse(disks=target.disks,
                                        sockets=[str(workdir.out_sock(d.index)) for d in target.disks],
                                        preallocated=spec.allocation == output_pb2.ALLOCATION_PREALLOCATED)

    def finalize(self, request: output_pb2.FinalizeRequest) -> output_pb2.FinalizeResponse:
        try:
            return self._finalize(request)
        except V2VError as err:
            err.fill(step=Step.FINALIZE, guest=request.guest)
            raise

    def _finalize(self, request: output_pb2.FinalizeRequest) -> output_pb2.FinalizeResponse:
        workdir = WorkDir(request.workdir, self.root).existing()
        opened = self.release(request.workdir)  # the servers flush as they stop: describe only complete data
        if opened is None and "setup" not in workdir.done():  # a Setup before a restart left its marker
            raise V2VError(f"nothing to finalize in {workdir.name}: Setup has not made its target disks",
                           pb.ERROR_CODE_BAD_INPUT)
        try:
            plugin, _ = OUTPUTS.lookup(request.output)
            target = request_target(request, workdir)
            if not target.disks:  # the request did not list them: those Setup created
                target.disks.extend(workdir.read(WorkDir.TARGET, pb.TargetMeta()).disks)
            on_converted_bus(target)
            with workdir.phase(Step.FINALIZE, request.guest):
                files = plugin.finalize(request.output, target, workdir)
        except BaseException:
            if opened:  # Abort can still remove the disks
                with self._lock:
                    self._open.setdefault(request.workdir, opened)
            raise
        return output_pb2.FinalizeResponse(files=files)

    def release(self, workdir: str) -> _Output | None:
        """Stops the servers of a work directory's output (they flush the disks as they stop)."""
        with self._lock:
            opened = self._open.pop(check_name(workdir), None)
        if opened:
            opened.stack.close()
        return opened

    def abort(self, workdir: str) -> bool:
        """Stops the servers and removes the disks of a work directory's output: the one this
        service set up, or, after a restart (the service that set it up was killed), the one the
        work directory's journal says a Setup made and no Finalize finished."""
        opened = self.release(workdir)
        wd = WorkDir(workdir, self.root)
        if opened:
            opened.plugin.abort(opened.spec, opened.target, wd)
        elif not self._abort_journalled(wd):
            return False
        wd.undone(Step.SETUP)
        return True

    @staticmethod
    def _abort_journalled(wd: WorkDir) -> bool:
        done = wd.done() if wd.is_workdir() else []
        if Step.SETUP not in done or Step.FINALIZE in done:
            return False
        spec = wd.read(WorkDir.OUTPUT, output_pb2.OutputSpec())
        plugin, _ = OUTPUTS.lookup(spec)
        plugin.abort(spec, wd.read(WorkDir.TARGET, pb.TargetMeta()), wd)
        return True

    def shutdown(self) -> None:
        for workdir in list(self._open):
            self.abort(workdir)

    @rpc
    def Check(self, request: output_pb2.CheckRequest, context: grpc.ServicerContext) -> output_pb2.CheckResponse:
        self.check(request)
        return output_pb2.CheckResponse()

    @rpc
    def Setup(self, request: output_pb2.SetupRequest, context: grpc.ServicerContext) -> output_pb2.SetupResponse:
        return self.setup(request)

    @rpc
    def Finalize(self, request: output_pb2.FinalizeRequest,
                 context: grpc.ServicerContext) -> output_pb2.FinalizeResponse:
        return self.finalize(request)

    @rpc
    def Abort(self, request: output_pb2.AbortRequest, context: grpc.ServicerContext) -> output_pb2.AbortResponse:
        return output_pb2.AbortResponse(removed=self.abort(request.workdir))

    @rpc
    def Serve(self, request: output_pb2.ServeRequest, context: grpc.ServicerContext) -> output_pb2.ServeResponse:
        return self.serve(request)

    @rpc
    def Release(self, request: output_pb2.ReleaseRequest,
                context: grpc.ServicerContext) -> output_pb2.ReleaseResponse:
        self.release(request.workdir)
        return output_pb2.ReleaseResponse()
