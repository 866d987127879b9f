"""Connections to libvirt for the inputs and outputs that use it (-i libvirt, -o libvirt)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from v2v.errors import V2VError
from v2v.v1 import types_pb2 as pb

# libvirt is exported: its users take it from here, where a host without the bindings leaves it None.
__all__ = ["connect", "failed", "libvirt"]

try:
    import libvirt
except ImportError:  # everything else must keep working on a host without the bindings
    libvirt = None
else:
    # libvirt's default handler prints every error to stderr, even the ones handled here (a missing
    # domain is what a check hopes for); each one that matters becomes a V2VError instead.
    libvirt.registerErrorHandler(lambda _ctx, _err: None, None)


def failed(what: str, exc: libvirt.libvirtError, code: pb.ErrorCode = pb.ERROR_CODE_INTERNAL) -> V2VError:
    return V2VError(f"{what}: {exc.get_error_message()}", code, detail=str(exc))


@contextmanager
def connect(uri: str, readonly: bool = False) -> Iterator[libvirt.virConnect]:
    """An open libvirt connection for the length of one call: gRPC runs calls on many threads, and a
    connection kept between calls would outlive a libvirtd restart."""
    if libvirt is None:
        raise V2VError("libvirt's Python bindings are not installed (Debian: python3-libvirt)",
                       pb.ERROR_CODE_UNSUPPORTED)
    try:
        conn = libvirt.openReadOnly(uri) if readonly else libvirt.open(uri)
    except libvirt.libvirtError as exc:
        # A socket or transport failure means the daemon is not there (yet); anything else (no
        # driver for the scheme, a bad path, refused authentication) is the URI's fault.
        unreachable = exc.get_error_code() in (libvirt.VIR_ERR_SYSTEM_ERROR, libvirt.VIR_ERR_RPC,
                                           libvirt.VIR_ERR_OPERATION_TIMEOUT)
        raise V2VError(f"libvirt at {uri} is not reachable{' (is libvirtd running?)' if unreachable else ''}: "
                       f"{exc.get_error_message()}",
                       pb.ERROR_CODE_SERVICE_UNAVAILABLE if unreachable else pb.ERROR_CODE_BAD_INPUT,
                       detail=str(exc)) from None
    try:
        yield conn
    finally:
        conn.close()
