"""The libguestfs appliance on NBD exports (the input's overlays, or any), owned by a context manager."""

from __future__ import annotations

import os
import signal
import threading
import uuid
from pathlib import Path
from types import TracebackType
from typing import IO
from urllib.parse import parse_qs, unquote, urlsplit

import guestfs

from v2v.errors import V2VError
from v2v.process import descendants
from v2v.v1 import convert_pb2
from v2v.v1 import types_pb2 as pb

DEFAULT_MEMORY_MIB = 2048
DEFAULT_VCPUS = 2

_LOGGED_EVENTS = (guestfs.EVENT_APPLIANCE | guestfs.EVENT_LIBRARY | guestfs.EVENT_WARNING
                  | guestfs.EVENT_TRACE)
# How often a cancelled launch looks for its qemu: the launch starts it only after checking (or
# building) the supermin appliance and probing qemu's features.
_WATCH_SECONDS = 0.2


def backend_settings(accel: int) -> list[str] | None:
    """libguestfs backend settings for the accelerator; None keeps libguestfs' own choice
    (which honours LIBGUESTFS_BACKEND_SETTINGS)."""
    if accel == convert_pb2.ACCELERATOR_TCG:
        return ["force_tcg"]
    if accel == convert_pb2.ACCELERATOR_KVM:
        return []
    return None


def nbd_drive(location: str) -> tuple[str, str]:
    """(libguestfs server string, export name) of an NBD endpoint: a Unix socket path,
    nbd+unix:///EXPORT?socket=PATH or nbd://HOST[:PORT]/EXPORT. TLS (nbds) the appliance cannot do."""
    if "://" not in location:
        return f"unix:{location}", ""
    uri = urlsplit(location)
    export = unquote(uri.path.lstrip("/"))
    if uri.scheme == "nbd+unix":
        sock = parse_qs(uri.query).get("socket", [""])[0]
        if sock:
            return f"unix:{sock}", export
    elif uri.scheme == "nbd" and uri.hostname:
        return f"tcp:{uri.hostname}:{uri.port or 10809}", export
    raise V2VError(f"{location}: not an NBD endpoint the appliance can open (a socket path, nbd+unix:///?socket=PATH "
                   "or nbd://HOST:PORT/EXPORT)", pb.ERROR_CODE_BAD_INPUT)


class Appliance:
    """A launched libguestfs handle with one drive per NBD endpoint. Closing it always shuts the
    appliance down, and `kill()` stops it from another thread (cancellation)."""

    def __init__(self, disks: list[str], options: convert_pb2.ConvertOptions, log: Path,
                 images: dict[str, str] | None = None) -> None:
        """`images`: label -> a file added read-only after the disks (/dev/disk/guestfs/LABEL)."""
        drives = [nbd_drive(location) for location in disks]  # refused before anything is made
        self.g = guestfs.GuestFS(python_return_dict=True)
        self._log: IO[str] = open(log, "a", buffering=1)  # noqa: SIM115  (closed in close())
        self.g.set_event_callback(self._on_event, _LOGGED_EVENTS)
        self.g.set_verbose(options.verbose)
        self.g.set_trace(options.trace)
        self.g.set_memsize(options.appliance_memory_mib or DEFAULT_MEMORY_MIB)
        self.g.set_smp(options.appliance_vcpus or DEFAULT_VCPUS)
        # Our qemu is the descendant (the direct backend runs it as our child) whose kernel command
        # line carries this mark: the sockets would not tell it from the next conversion's appliance
        # on the same guest, launched right after a cancel. The kernel ignores the parameter.
        self._mark = f"v2v.appliance={uuid.uuid4().hex}"
        self.g.set_append(self._mark)
        self._cancelled = threading.Event()  # set by kill(), from any thread
        settings = backend_settings(options.accelerator)
        if settings is not None:
            self.g.set_backend_settings(settings)
        for server, export in drives:
            # cachemode=unsafe: the overlay is thrown away or copied whole, never crash-recovered.
            self.g.add_drive_opts(export, format="raw", protocol="nbd", server=[server],
                                  cachemode="unsafe", discard="besteffort")
        for label, path in (images or {}).items():
            self.g.add_drive_opts(path, readonly=True, format="raw", label=label)

    def _on_event(self, event: int, event_handle: int, buf: bytes | str, array: list[int]) -> None:
        text = buf.decode(errors="replace") if isinstance(buf, bytes) else buf
        self._log.write(text if text.endswith("\n") else text + "\n")

    def launch(self) -> Appliance:
        """Starts the appliance; fails CANCELLED without starting it after a kill(), and when a
        kill() stops it midway."""
        if self._cancelled.is_set():
            raise _cancelled()
        launched = threading.Event()
        watcher = threading.Thread(target=self._kill_when_cancelled, args=(launched,), daemon=True,
                                   name="appliance-launch-watcher")
        watcher.start()
        try:
            self.g.launch()
        except RuntimeError as exc:
            if self._cancelled.is_set():
                raise _cancelled() from None
            raise V2VError(f"cannot start the libguestfs appliance: {exc}", pb.ERROR_CODE_PROCESS_FAILED,
                           detail=str(exc)) from None
        finally:
            launched.set()
            watcher.join()
        if self._cancelled.is_set():  # kill() came as the launch ended; it killed qemu itself
            raise _cancelled()
        return self

    def kill(self) -> None:
        """Stops the appliance, from any thread, at any time. It never calls into the handle:
        every guestfs call takes the handle's lock, which a running call (the launch, above all)
        holds while its event callbacks wait for the GIL such a waiting caller would hold. Before
        or during the launch, qemu may not exist yet: the launch is then stopped as soon as it
        starts one."""
        self._cancelled.set()
        self._kill_qemu()

    def _kill_when_cancelled(self, launched: threading.Event) -> None:
        while not launched.wait(_WATCH_SECONDS):
            if self._cancelled.is_set():
                self._kill_qemu()

    def _kill_qemu(self) -> None:
        for pid, argv in descendants().items():
            if os.path.basename(argv[0]).startswith(("qemu-system-", "qemu-kvm")) and \
                    any(self._mark in arg for arg in argv):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass  # it ended meanwhile

    def close(self) -> None:
        try:
            self.g.shutdown()
        except RuntimeError:
            pass  # already dead (killed or crashed): close() below still cleans up
        self.g.close()
        self._log.close()

    def __enter__(self) -> Appliance:
        return self.launch()

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        self.close()


def _cancelled() -> V2VError:
    return V2VError("cancelled during the appliance launch", pb.ERROR_CODE_CANCELLED)
