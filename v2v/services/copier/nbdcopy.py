"""One nbdcopy process copying one disk between two NBD servers, reporting its progress."""

from __future__ import annotations

import errno
import os
import re
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

from v2v.errors import V2VError
from v2v.nbdclient import location_uri
from v2v.process import Process, tail
from v2v.v1 import copier_pb2
from v2v.v1 import types_pb2 as pb

# nbdcopy --progress=FD writes "N/100\n", N the integer percentage. It writes a line only when it
# hands out another 128 MiB work range (and "100/100" at the end), so small disks jump 0 -> 100.
_PROGRESS_LINE = re.compile(r"(\d+)/100")
DEFAULT_STALL_SECONDS = 600


def parse_progress(line: str) -> int | None:
    """The percentage of one line of nbdcopy --progress=FD, or None for anything else."""
    m = _PROGRESS_LINE.fullmatch(line.strip())
    return min(int(m.group(1)), 100) if m else None


# libnbd's words for a connection whose server is gone.
_DISCONNECTED = (os.strerror(errno.ENOTCONN), os.strerror(errno.EPIPE), os.strerror(errno.ECONNRESET),
                 "not in a connected state")

class Nbdcopy:
    """nbdcopy SOURCE TARGET for one disk. `on_progress(percent)` is called from a reader thread with
    each percentage nbdcopy prints (what it means: progress.py)."""

    def __init__(self, copy: copier_pb2.DiskCopy, options: copier_pb2.CopyOptions, log: Path,
                 on_progress: Callable[[int], None]) -> None:
        self.copy = copy
        self.options = options
        self.log = log
        self.on_progress = on_progress
        self.process: Process | None = None
        self.killed = False  # stopped on purpose (cancel, another disk failed), not failed
        self._reader: threading.Thread | None = None
        self._moved_at = time.monotonic()  # the last progress line (or the start)

    def command(self, progress_fd: int) -> list[str]:
        opts = self.options
        cmd = ["nbdcopy", f"--progress={progress_fd}"]
        if opts.flush:
            cmd.append("--flush")
        if opts.target_is_zero:
            cmd.append("--target-is-zero")
        if opts.allocated:
            cmd.append("--allocated")
        for flag, value in (("requests", opts.requests), ("request-size", opts.request_size),
                            ("connections", opts.connections)):
            if value:
                cmd.append(f"--{flag}={value}")
        return [*cmd, location_uri(self.copy.source), location_uri(self.copy.target)]

    def start(self) -> None:
        read_fd, write_fd = os.pipe()
        try:
            self.process = Process(self.command(write_fd), self.log).start(pass_fds=[write_fd])
        except BaseException:
            os.close(read_fd)
            raise
        finally:
            os.close(write_fd)  # nbdcopy holds the only write end: its exit ends the reader
        self._reader = threading.Thread(target=self._read_progress, args=(read_fd,),
                                        name=f"nbdcopy-progress-{self.copy.disk}", daemon=True)
        self._reader.start()

    def _read_progress(self, read_fd: int) -> None:
        with open(read_fd, errors="replace") as pipe:
            for line in pipe:
                pct = parse_progress(line)
                if pct is not None:
                    self._moved_at = time.monotonic()
                    self.on_progress(pct)

    def running(self) -> bool:
        return self.process is not None and self.process.running()

    def wait(self) -> None:
        """Waits for the copy to end and for its last progress report; raises if nbdcopy failed."""
        assert self.process is not None and self._reader is not None
        stall = self.options.stall_seconds or DEFAULT_STALL_SECONDS
        self._moved_at = time.monotonic()
        while True:
            try:
                rc = self.process.wait(timeout=1.0)
                break
            except subprocess.TimeoutExpired:
                if time.monotonic() - self._moved_at > stall:
                    self.process.stop()
                    self._reader.join()
                    raise V2VError(f"copying disk {self.copy.disk} from {self.copy.source}: no data moved for "
                                   f"{stall} s: the source or the target stopped answering; the copy was stopped",
                                   pb.ERROR_CODE_PROCESS_FAILED, detail=tail(self.log, 20)) from None
        self._reader.join()
        if rc != 0:
            err = self.process.failure(f"copying disk {self.copy.disk} from {self.copy.source} to {self.copy.target}")
            if os.strerror(errno.ENOSPC) in err.detail:  # the output's storage filled up (libnbd's ENOSPC)
                err.code = pb.ERROR_CODE_NO_SPACE
                err.message = (f"the target of disk {self.copy.disk} ({self.copy.target}) is full (No space left "
                               "on device): make room on the output storage, or choose another, and run again")
            elif (end := self._gone(err.detail)) is not None:
                what, uri = end
                err.message = (f"copying disk {self.copy.disk}: its {what} ({uri}) stopped serving during the copy "
                               f"(its NBD server closed the connection): {err.detail.strip().splitlines()[-1]}")
            raise err

    def _gone(self, detail: str) -> tuple[str, str] | None:
        """("source" or "target", its URI) when nbdcopy failed because that end's NBD server went
        away (it died, or the service owning it did), else None. nbdcopy says "read at offset" for
        the source and names the target's URI for failures on the target."""
        if not any(sign in detail for sign in _DISCONNECTED):
            return None
        if self.copy.target in detail and "read at offset" not in detail:
            return "target", self.copy.target
        return "source", self.copy.source

    def kill(self) -> None:
        self.killed = True
        if self.process is not None:
            self.process.stop()
