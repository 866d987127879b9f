"""Child processes owned by context managers: whatever happens, they are stopped on exit."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import TracebackType

from v2v.errors import V2VError
from v2v.v1 import types_pb2 as pb

# If the service that started a child dies (even by SIGKILL), the kernel kills the child too, so a
# crashed service leaves no nbdcopy or qemu-nbd behind: setpriv sets the child's parent-death
# signal before it execs the command. That signal fires when the *thread* that forked the child
# ends, not the process, so every child is forked by one thread that lives as long as the process
# (a gRPC handler thread, or a short-lived helper thread, would take its children with it). And no
# preexec_fn: Python's subprocess docs call it unsafe in a process with threads.
_DIE_WITH_PARENT = ["setpriv", "--pdeathsig", "KILL", "--"]
_SPAWNER = ThreadPoolExecutor(max_workers=1, thread_name_prefix="v2v-spawner")


def tail(path: Path | None, lines: int = 8) -> str:
    """The last lines of a log file: the usual cause of a tool's failure."""
    if path is None or not path.exists():
        return ""
    return "\n".join(path.read_text(errors="replace").strip().splitlines()[-lines:])


def descendants(ancestor: int | None = None) -> dict[int, list[str]]:
    """The living processes below `ancestor` (this process by default), from /proc: pid -> argv.
    For children a library started, which no Popen of ours knows about."""
    root = os.getpid() if ancestor is None else ancestor
    parents: dict[int, int] = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                stat = Path(entry.path, "stat").read_text()
            except OSError:
                continue  # gone meanwhile
            # "pid (comm) state ppid ...": comm may hold spaces and parentheses, so split after the last ")"
            parents[int(entry.name)] = int(stat.rpartition(")")[2].split()[1])
    found: dict[int, list[str]] = {}
    for pid in parents:
        up = parents[pid]
        while up not in (root, 0) and up in parents:
            up = parents[up]
        if up != root:
            continue
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[:-1]
        except OSError:
            continue
        if argv:  # a zombie has none: it is dead already
            found[pid] = [a.decode(errors="replace") for a in argv]
    return found


def run(cmd: Sequence[str], what: str, timeout: float | None = None) -> str:
    """Runs a short tool to completion; a failure names the tool and carries its stderr."""
    try:
        res = subprocess.run(list(cmd), capture_output=True, text=True, timeout=timeout, check=False)
    except FileNotFoundError:
        raise V2VError(f"{what}: {cmd[0]} is not installed", pb.ERROR_CODE_PROCESS_FAILED) from None
    if res.returncode != 0:
        err = res.stderr.strip().splitlines()
        raise V2VError(f"{what}: {err[-1] if err else f'{cmd[0]} exited {res.returncode}'}",
                       pb.ERROR_CODE_PROCESS_FAILED, detail=res.stderr.strip())
    return res.stdout


class Process:
    """A long-running child with its stderr in a log file. Leaving the `with` block stops it
    (SIGTERM, then SIGKILL) so no process outlives its owner, even on errors."""

    def __init__(self, cmd: Sequence[str], log: Path, name: str = "") -> None:
        self.cmd = list(cmd)
        self.log = log
        self.name = name or Path(cmd[0]).name
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, pass_fds: Sequence[int] = ()) -> Process:
        if shutil.which(self.cmd[0]) is None:
            raise V2VError(f"{self.cmd[0]} is not installed", pb.ERROR_CODE_PROCESS_FAILED)
        with open(self.log, "ab") as logf:
            self.proc = _SPAWNER.submit(
                subprocess.Popen, [*_DIE_WITH_PARENT, *self.cmd], stdin=subprocess.DEVNULL, stdout=logf,
                stderr=logf, pass_fds=tuple(pass_fds), start_new_session=True).result()
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def returncode(self) -> int | None:
        return None if self.proc is None else self.proc.poll()

    def wait(self, timeout: float | None = None) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    def failure(self, what: str) -> V2VError:
        """An error for this process having failed, with the tail of its log as the cause."""
        rc = self.returncode()
        why = f"killed by signal {-rc}" if rc is not None and rc < 0 else f"exited with status {rc}"
        last = tail(self.log, 1)
        return V2VError(f"{what}: {self.name} {why}" + (f": {last}" if last else ""),
                        pb.ERROR_CODE_PROCESS_FAILED, detail=tail(self.log, 20))

    def stop(self, timeout: float = 10.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def __enter__(self) -> Process:
        if self.proc is None:
            self.start()
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()
