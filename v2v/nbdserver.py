"""NBD servers on Unix sockets: nbdkit and qemu-nbd, owned by context managers.

Readiness is a real NBD handshake (libnbd), not the socket file appearing."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

from v2v.errors import V2VError
from v2v.nbdclient import check_cancelled, connect, nbd_uri
from v2v.process import Process, tail
from v2v.v1 import types_pb2 as pb

_UNSERVED_GRACE = 1.0  # seconds a server that never answered a handshake gets to exit


class NbdServer:
    """A server process exporting one disk on `sock`. Subclasses build the command line."""

    def __init__(self, sock: Path, log: Path, what: str) -> None:
        self.sock = sock
        self.what = what  # e.g. "disk 0 (/path/guest.img)", for errors
        self.process = Process(self.command(), log)

    def command(self) -> list[str]:
        raise NotImplementedError

    def start(self, timeout: float = 30.0) -> NbdServer:
        """Starts the server and waits for a handshake; whatever ends the wait (failure, timeout,
        cancellation) stops the server again."""
        self.sock.unlink(missing_ok=True)
        self.process.start()
        try:
            self._await_ready(timeout)
        except BaseException:
            # No client was served, so nothing waits to be flushed; and a server stuck in its own
            # connect (nbdkit nbd in front of a mute endpoint) ignores SIGTERM until killed.
            self.stop(grace=_UNSERVED_GRACE)
            raise
        # nbdkit makes its socket 0755 whatever its umask: 0600 as docs/workdir.md says (the 0700
        # work directory already keeps others out; this keeps a socket moved or linked elsewhere so).
        self.sock.chmod(0o600)
        return self

    def _await_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            check_cancelled(f"starting the server for {self.what}")
            if not self.process.running():
                raise self.process.failure(f"cannot serve {self.what}")
            if self.sock.exists() and self._handshake(deadline - time.monotonic()):
                return
            if time.monotonic() > deadline:
                raise V2VError(f"cannot serve {self.what}: {self.process.name} did not answer on {self.sock} "
                               f"within {timeout:.0f} s", pb.ERROR_CODE_PROCESS_FAILED)
            time.sleep(0.05)

    def _handshake(self, timeout: float) -> bool:
        """Whether the server completes a handshake within `timeout` s; a cancellation propagates."""
        try:
            with connect(str(self.sock), timeout=max(timeout, 0.1)):
                return True
        except V2VError as err:
            if err.code == pb.ERROR_CODE_CANCELLED:
                raise
            return False

    @property
    def uri(self) -> str:
        return nbd_uri(self.sock)

    def stop(self, grace: float = 10.0) -> None:
        """Stops the server, killing it if it has not exited `grace` s after SIGTERM."""
        self.process.stop(grace)
        self.sock.unlink(missing_ok=True)

    def __enter__(self) -> NbdServer:
        return self.start()

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()


class Nbdkit(NbdServer):
    """nbdkit PLUGIN [ARGS] with filters, in the foreground, exiting with its parent."""

    def __init__(self, sock: Path, log: Path, what: str, plugin: str, args: Sequence[str] = (),
                 filters: Sequence[str] = (), readonly: bool = False) -> None:
        self.plugin = plugin
        self.args = list(args)
        self.filters = list(filters)
        self.readonly = readonly
        super().__init__(sock, log, what)

    def command(self) -> list[str]:
        cmd = ["nbdkit", "--foreground", "--exit-with-parent", "--unix", str(self.sock)]
        cmd += [f"--filter={f}" for f in self.filters]
        if self.readonly:
            cmd.append("--readonly")
        return cmd + [self.plugin, *self.args]


class QemuNbd(NbdServer):
    """qemu-nbd on an image file. `snapshot` puts a throw-away qcow2 overlay in front of it, so
    writes never reach the file, and exports the meta context qemu:allocation-depth, which reports
    depth 1 for exactly the blocks written (or trimmed, or zeroed) through the export since it
    started: what copy while converting copies again (docs/copy.md). A context costs nothing until a
    client asks for it."""

    def __init__(self, sock: Path, log: Path, what: str, path: Path | str, fmt: str,
                 snapshot: bool = False, readonly: bool = False, compressed: bool = False, image: str = "") -> None:
        self.path = path
        self.image = image  # a json: image spec opened instead of `path` (e.g. a file inside a tar)
        self.fmt = fmt
        self.snapshot = snapshot
        self.readonly = readonly
        self.compressed = compressed  # qcow2 written through qemu's compress filter
        super().__init__(sock, log, what)

    def command(self) -> list[str]:
        cmd = ["qemu-nbd", "--persistent", "--shared=0", f"--socket={self.sock}",
               "--discard=unmap", "--cache=unsafe" if self.snapshot else "--cache=none", "--aio=threads"]
        if self.snapshot:
            cmd += ["--snapshot", "--allocation-depth"]
        if self.readonly:
            cmd.append("--read-only")
        if self.image:
            return [*cmd, self.image]
        if self.compressed:
            return [*cmd, "--image-opts",
                    f"driver=compress,file.driver={self.fmt},file.file.driver=file,file.file.filename={self.path}"]
        return [*cmd, f"--format={self.fmt}", str(self.path)]


class FailFastNbdkit(Nbdkit):
    """An nbdkit plugin that logs in to a remote host at each NBD connection (curl, vddk). A refused
    login shows only as failed handshakes: give up at the first error it logs rather than retrying
    them until the start timeout. Subclasses say what an error line means."""

    def refusal(self, error: str) -> V2VError:
        return V2VError(f"cannot serve {self.what}: {error}", pb.ERROR_CODE_PROCESS_FAILED,
                        detail=tail(self.process.log, 20))

    def _handshake(self, timeout: float) -> bool:
        if super()._handshake(timeout):
            return True
        errors = [line for line in tail(self.process.log, 20).splitlines() if ": error: " in line]
        if not errors:
            return False
        raise self.refusal(errors[-1])
