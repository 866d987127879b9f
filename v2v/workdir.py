"""The per-guest work directory: the contract between the phase services (docs/workdir.md).

    <root>/<guest>.<id>/        mode 0700
        in0.sock, in1.sock ...  NBD sockets of the source overlays (input)
        out0.sock ...           NBD sockets of the target disks (output)
        source.json             v2v.v1.Source, protobuf JSON (input)
        converted.json          v2v.v1.TargetMeta, protobuf JSON (convert)
        target.json             v2v.v1.TargetMeta with the target disks (output)
        <step>.done             phase markers: each service's SUCCEEDED StepEvent of its phase
        logs/                   stderr of every process a service started, one file each

A request names a work directory by a bare name (`<guest>.<id>`), never by a path: each service
resolves it under its own root, so no request can reach a directory outside it (an absolute path or
`..` once let a client tag and then delete any directory). The four services of a worker share that
root, while a coordinator on another host never needs to see it. The input service creates it at Open."""

from __future__ import annotations

import os
import re
import secrets
import shutil
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

from google.protobuf import json_format
from google.protobuf.message import Message

from v2v.errors import V2VError
from v2v.events import step_event
from v2v.v1 import types_pb2 as pb

M = TypeVar("M", bound=Message)

# sockaddr_un.sun_path is 108 bytes with its NUL; a longer socket path cannot be bound.
_MAX_SOCKET_PATH = 107
# A name, not a path: no "/", no leading "." (so neither "." nor ".."), nothing a log line could hide.
_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,79}")


def check_name(name: str) -> str:
    """`name` if it can name a work directory under a root; else a BAD_INPUT error saying why."""
    if not _NAME.fullmatch(name):
        shown = repr(name[:100]) + ("..." if len(name) > 100 else "")
        raise V2VError(f"work directory {shown} is not a name: give the name Open made (letters, digits, "
                       "'_', '.', '-'; at most 80; not a path)", pb.ERROR_CODE_BAD_INPUT)
    return name


def default_root() -> Path:
    """Where work directories go unless told: $V2V_WORKDIR_ROOT, else $TMPDIR/v2v (or /var/tmp/v2v:
    the overlays can grow to gigabytes, and /tmp is often a small tmpfs)."""
    if root := os.environ.get("V2V_WORKDIR_ROOT"):
        return Path(root)
    return Path(os.environ.get("TMPDIR") or "/var/tmp") / "v2v"


class WorkDir:
    """One guest's work directory. Any service, or a shell script, can pick up from it."""

    SOURCE = "source.json"
    TARGET = "target.json"  # the output's: the target disks Setup made
    CONVERTED = "converted.json"  # the convert service's: the converted guest, before Setup
    OUTPUT = "output.json"  # the output's: the OutputSpec its Setup ran with (for an Abort after a restart)
    DONE = ".done"
    TAG = ".v2v-workdir"  # made with the directory: what may be removed on a client's word

    def __init__(self, name: str, root: Path | None = None) -> None:
        """The work directory `name` under `root` (default: default_root()); `name` is checked."""
        self.name = check_name(name)
        self.root = root or default_root()
        self.path = self.root / name

    @staticmethod
    def new_name(guest: str) -> str:
        """A fresh name for a guest's work directory, made without touching any file system: a
        coordinator names the directory, the worker's input service creates it."""
        safe = "".join(c if c.isascii() and (c.isalnum() or c in "-_.") else "_" for c in guest)[:40]
        safe = safe.lstrip(".-") or "guest"
        return f"{safe}.{secrets.token_hex(4)}"

    @classmethod
    def create(cls, guest: str, root: Path | None = None) -> WorkDir:
        """A new work directory for `guest` under `root` (default: default_root())."""
        while True:
            wd = cls(cls.new_name(guest), root)
            if not wd.path.exists():
                return wd.ensure()

    def ensure(self) -> WorkDir:
        """Creates the directory (0700: only its owner may reach the sockets) unless it exists. One
        that exists must be v2v's (tagged): a request never gets a directory of anyone else's."""
        if len(str(self.in_sock(99))) > _MAX_SOCKET_PATH:
            raise V2VError(f"work directory {self.path} is too long for NBD socket paths; "
                           "set V2V_WORKDIR_ROOT to a shorter path", pb.ERROR_CODE_BAD_INPUT)
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        try:
            self.path.mkdir(mode=0o700)
        except FileExistsError:
            if not self.is_workdir():
                raise V2VError(f"{self.path} exists and is not a v2v work directory (no {self.TAG}): not used",
                               pb.ERROR_CODE_BAD_INPUT) from None
        else:
            (self.path / self.TAG).touch()
        (self.path / "logs").mkdir(mode=0o700, exist_ok=True)
        return self

    def existing(self) -> WorkDir:
        """This work directory, which Open made; a BAD_INPUT error if there is none: the other
        phases write only into a directory of v2v's."""
        if not self.is_workdir():
            raise V2VError(f"no work directory {self.name} under {self.root}: the input's Open makes it",
                           pb.ERROR_CODE_NOT_FOUND)
        return self

    def in_sock(self, disk: int) -> Path:
        return self.path / f"in{disk}.sock"

    def out_sock(self, disk: int) -> Path:
        return self.path / f"out{disk}.sock"

    def log(self, name: str) -> Path:
        logs = self.path / "logs"
        logs.mkdir(mode=0o700, exist_ok=True)
        return logs / name

    def write(self, name: str, msg: Message) -> Path:
        """Writes a message as protobuf JSON, atomically: a reader never sees half a file."""
        p = self.path / name
        tmp = p.with_suffix(p.suffix + ".tmp")
        tmp.write_text(json_format.MessageToJson(msg, preserving_proto_field_name=True) + "\n")
        os.replace(tmp, p)
        return p

    def read(self, name: str, msg: M) -> M:
        p = self.path / name
        try:
            json_format.Parse(p.read_text(), msg)
        except FileNotFoundError:
            raise V2VError(f"{p} is missing: has the phase that writes it run?",
                           pb.ERROR_CODE_BAD_INPUT) from None
        return msg

    @contextmanager
    def phase(self, step: str, guest: str) -> Iterator[None]:
        """A phase a service runs here. Once it succeeded, its marker `<step>.done` (the SUCCEEDED
        StepEvent, timed) tells a script, or a coordinator after a restart, how far the guest got."""
        t0 = time.monotonic()
        yield
        self.write(step + self.DONE, step_event(guest, step, pb.STEP_STATE_SUCCEEDED, seconds=time.monotonic() - t0))

    def undone(self, step: str) -> None:
        """The marker of `step` taken back: what the step made is gone again."""
        (self.path / (step + self.DONE)).unlink(missing_ok=True)

    def done(self) -> list[str]:
        """The phases that left their marker, oldest first."""
        markers = sorted(self.path.glob("*" + self.DONE), key=lambda p: p.stat().st_mtime)
        return [p.name.removesuffix(self.DONE) for p in markers]

    def is_workdir(self) -> bool:
        """Made by ensure(): a request naming any other directory must not get it removed."""
        return (self.path / self.TAG).is_file()

    def remove(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)


def remove_dead_sockets(root: Path | None, kind: str) -> list[Path]:
    """Removes the `kind` sockets ("in": in0.sock ..., "out": out0.sock ...) of the work directories
    under `root` that nothing answers on, and returns them: a service killed outright takes its NBD
    servers with it (their parent-death signal), but a Unix socket's file outlives its server. A
    phase service runs this as it starts, when none of them is its own yet; one that takes a
    connection is another service's, and stays."""
    removed = []
    for sock in sorted((root or default_root()).glob(f"*/{kind}[0-9]*.sock")):
        if not WorkDir(sock.parent.name, sock.parent.parent).is_workdir():
            continue
        with socket.socket(socket.AF_UNIX) as s:
            try:
                s.connect(str(sock))
            except ConnectionRefusedError:
                sock.unlink(missing_ok=True)
                removed.append(sock)
            except OSError:
                pass
    return removed
