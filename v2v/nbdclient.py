"""The one way v2v opens an NBD connection: libnbd handles whose connect and handshake are bounded in
time and can be cancelled.

libnbd's blocking connect waits for ever on a server that accepts and never speaks (a user's NBD
endpoint, a wedged nbdkit plugin), and nothing can interrupt it. Here the handshake is driven with
libnbd's asynchronous calls in short polls, between which the deadline and cancellation are checked.

Cancellation comes from an event the caller passes, or from the one set by `cancellable()` around a
whole operation (an input's Open), so every connect inside it stops without the event being passed
through every plugin."""

from __future__ import annotations

import threading
import time
import traceback
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path

import nbd

from v2v.errors import V2VError
from v2v.v1 import types_pb2 as pb

DEFAULT_TIMEOUT = 30.0
# How long one poll may block: how late a cancellation or the deadline is noticed.
_POLL_MS = 50

# Set per operation (each RPC runs in its own thread, so in its own context).
_CANCEL: ContextVar[threading.Event | None] = ContextVar("nbd_cancel", default=None)


def nbd_uri(sock: Path) -> str:
    return f"nbd+unix:///?socket={sock}"


def location_uri(location: str) -> str:
    """Where an export is, as an NBD URI: given a URI or a Unix socket path."""
    return location if "://" in location else nbd_uri(Path(location))


@contextmanager
def cancellable(event: threading.Event) -> Iterator[None]:
    """Within: every connect (and check_cancelled) stops with CANCELLED once `event` is set."""
    token = _CANCEL.set(event)
    try:
        yield
    finally:
        _CANCEL.reset(token)


def check_cancelled(what: str, cancel: threading.Event | None = None) -> None:
    """Raises CANCELLED if `cancel` or the ambient event of cancellable() is set; `what` was going on."""
    ambient = _CANCEL.get()
    if (cancel is not None and cancel.is_set()) or (ambient is not None and ambient.is_set()):
        raise V2VError(f"cancelled while {what}", pb.ERROR_CODE_CANCELLED)


def _timed_out(h: nbd.NBD, uri: str, timeout: float) -> V2VError:
    # While connect(2) is pending libnbd waits to write; once the server accepted, it waits to read
    # the server's greeting and option replies.
    if h.aio_get_direction() & nbd.AIO_DIRECTION_READ:
        what = "the server accepted the connection but did not complete the NBD handshake"
    else:
        what = "the server did not accept the connection"
    return V2VError(f"cannot connect to {uri}: {what} within {timeout:g} s", pb.ERROR_CODE_BAD_INPUT)


def _handshake(h: nbd.NBD, uri: str, timeout: float, cancel: threading.Event | None) -> None:
    check_cancelled(f"connecting to {uri}", cancel)
    deadline = time.monotonic() + timeout
    h.aio_connect_uri(uri)
    while h.aio_is_connecting():
        check_cancelled(f"connecting to {uri}", cancel)
        left = deadline - time.monotonic()
        if left <= 0:
            raise _timed_out(h, uri, timeout)
        h.poll(max(1, min(_POLL_MS, int(left * 1000))))
    if not h.aio_is_ready():
        raise V2VError(f"cannot connect to {uri}: the server ended the NBD handshake", pb.ERROR_CODE_BAD_INPUT)


@contextmanager
def connect(location: str, contexts: Sequence[str] = (), timeout: float = DEFAULT_TIMEOUT,
            cancel: threading.Event | None = None) -> Iterator[nbd.NBD]:
    """A libnbd handle on an NBD URI or Unix socket path, asking for the meta `contexts`, connected
    within `timeout` seconds unless cancelled (`cancel`, or cancellable()'s event), shut down on exit."""
    uri = location_uri(location)
    h = nbd.NBD()
    for context in contexts:
        h.add_meta_context(context)
    try:
        _handshake(h, uri, timeout, cancel)
    except BaseException as exc:
        # The handle is closed (its socket too) only when the last reference goes, and the error's
        # traceback holds frames that refer to it, for as long as someone keeps the error.
        traceback.clear_frames(exc.__traceback__)
        del h
        if isinstance(exc, nbd.Error):
            raise V2VError(f"cannot connect to {uri}: {exc}", pb.ERROR_CODE_BAD_INPUT) from exc
        raise
    try:
        yield h
    finally:
        try:
            h.shutdown()
        except nbd.Error:
            pass  # the server went away: nothing left to close cleanly


def export_size(location: str) -> int:
    """The size of the export at an NBD URI or Unix socket path."""
    uri = location_uri(location)
    try:
        with connect(location) as h:
            return int(h.get_size())
    except nbd.Error as exc:
        raise V2VError(f"cannot read the size of {uri}: {exc}", pb.ERROR_CODE_BAD_INPUT) from exc
