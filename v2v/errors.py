"""The one exception type of v2v, and its travel across gRPC as a google.rpc.Status with details:
the v2v.v1.Error itself, and a google.rpc.ErrorInfo (reason = the code's name, domain v2v.v1,
metadata guest/step/disk) for clients that know only the standard details. An unexpected exception
is INTERNAL with a google.rpc.DebugInfo holding its traceback, never UNKNOWN."""

from __future__ import annotations

import traceback

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from v2v.v1 import types_pb2 as pb

Code = pb.ErrorCode

# How each error code maps onto the gRPC status a client sees first.
_GRPC_CODES = {
    pb.ERROR_CODE_BAD_INPUT: code_pb2.INVALID_ARGUMENT,
    pb.ERROR_CODE_NO_OS: code_pb2.FAILED_PRECONDITION,
    pb.ERROR_CODE_UNSUPPORTED: code_pb2.FAILED_PRECONDITION,  # the guest cannot be converted as it is
    pb.ERROR_CODE_NOT_FOUND: code_pb2.NOT_FOUND,
    pb.ERROR_CODE_MULTIPLE_ROOTS: code_pb2.FAILED_PRECONDITION,
    pb.ERROR_CODE_TARGET_EXISTS: code_pb2.ALREADY_EXISTS,
    pb.ERROR_CODE_NO_SPACE: code_pb2.RESOURCE_EXHAUSTED,
    pb.ERROR_CODE_CANCELLED: code_pb2.CANCELLED,
    pb.ERROR_CODE_SERVICE_UNAVAILABLE: code_pb2.UNAVAILABLE,
    pb.ERROR_CODE_VERIFY_FAILED: code_pb2.DATA_LOSS,
}


class V2VError(Exception):
    """A failure that names what failed: guest, step, disk, a stable code and the cause."""

    def __init__(
        self,
        message: str,
        code: pb.ErrorCode = pb.ERROR_CODE_INTERNAL,
        *,
        step: str = "",
        guest: str = "",
        disk: int | None = None,
        detail: str = "",
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.step = step
        self.guest = guest
        self.disk = disk
        self.detail = detail

    def to_proto(self) -> pb.Error:
        err = pb.Error(
            guest=self.guest, step=self.step, code=self.code, message=self.message, detail=self.detail
        )
        if self.disk is not None:
            err.disk = self.disk
        return err

    @classmethod
    def from_proto(cls, err: pb.Error) -> V2VError:
        return cls(
            err.message,
            err.code,
            step=err.step,
            guest=err.guest,
            disk=err.disk if err.HasField("disk") else None,
            detail=err.detail,
        )

    def fill(self, *, step: str = "", guest: str = "", disk: int | None = None) -> V2VError:
        """Adds context the raiser did not know, keeping what it did say."""
        self.step = self.step or step
        self.guest = self.guest or guest
        if self.disk is None:
            self.disk = disk
        return self

    def one_line(self) -> str:
        """The line a person reads: 'guest GUEST: step STEP: disk N: message'."""
        parts = []
        if self.guest:
            parts.append(f"guest {self.guest}")
        if self.step:
            parts.append(f"step {self.step}")
        if self.disk is not None:
            parts.append(f"disk {self.disk}")
        parts.append(self.message)
        return ": ".join(parts)

    def __str__(self) -> str:
        return self.one_line()


ERROR_DOMAIN = "v2v.v1"


def error_info(err: V2VError) -> error_details_pb2.ErrorInfo:
    metadata = {k: v for k, v in (("guest", err.guest), ("step", err.step)) if v}
    if err.disk is not None:
        metadata["disk"] = str(err.disk)
    return error_details_pb2.ErrorInfo(reason=pb.ErrorCode.Name(err.code).removeprefix("ERROR_CODE_"),
                                       domain=ERROR_DOMAIN, metadata=metadata)


def to_status(err: V2VError, debug: error_details_pb2.DebugInfo | None = None) -> grpc.Status:
    """The gRPC status for an error: code, one-line message, the Error and an ErrorInfo (and, for a
    bug, DebugInfo) as details."""
    details = []
    for message in (err.to_proto(), error_info(err), *([debug] if debug else [])):
        detail = any_pb2.Any()
        detail.Pack(message)
        details.append(detail)
    status = status_pb2.Status(code=_GRPC_CODES.get(err.code, code_pb2.INTERNAL), message=err.one_line(),
                               details=details)
    return rpc_status.to_status(status)


def internal_status(exc: BaseException) -> grpc.Status:
    """INTERNAL for an exception no code expected (a bug): its type and text as the message, its
    traceback as DebugInfo, so the client's line says what broke rather than "Exception calling
    application"."""
    stack = traceback.format_exception(type(exc), exc, exc.__traceback__)
    return to_status(V2VError(f"internal error: {exc!r}", pb.ERROR_CODE_INTERNAL),
                     error_details_pb2.DebugInfo(stack_entries=[line.rstrip() for line in stack], detail=repr(exc)))


def from_rpc_error(exc: grpc.RpcError, *, step: str, guest: str = "", disk: int | None = None,
                   service: str = "") -> V2VError:
    """Turns a failed call back into the V2VError the service raised, or names the transport failure.
    service: who was called, as a person needs it to go and look ("output service at unix:/run/v2v/
    output.sock"); without it, the step's name stands in ("coordinator service")."""
    status = rpc_status.from_call(exc)  # type: ignore[arg-type]
    if status is not None:
        for any_detail in status.details:
            err = pb.Error()
            if any_detail.Unpack(err):
                return V2VError.from_proto(err).fill(step=step, guest=guest, disk=disk)
    code = exc.code() if hasattr(exc, "code") else None
    text = exc.details() if hasattr(exc, "details") else str(exc)
    who = service or f"{step} service"
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return V2VError(f"the {who} did not answer in time in step {step} ({text})",
                        pb.ERROR_CODE_SERVICE_UNAVAILABLE, step=step, guest=guest, disk=disk)
    if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED):
        return V2VError(
            f"the {who} went away: {text}",
            pb.ERROR_CODE_SERVICE_UNAVAILABLE,
            step=step,
            guest=guest,
            disk=disk,
        )
    return V2VError(f"{text}", pb.ERROR_CODE_INTERNAL, step=step, guest=guest, disk=disk)
