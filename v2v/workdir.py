"""The per-guest work directory: the contract between the phase services (docs/workdir.md).

    <root>/<guest>.<id>/        mode 0700
        in0.sock, in1.sock ...  NBD sockets of the source overlays (input)
        out0.sock ...           NBD sockets of the target disks (output)
        source.json             v2v.v1.Source, protobuf JSON (input)
        target.json             v2v.v1.TargetMeta, protobuf JSON (convert, then output)
        <step>.done             phase markers: the StepEvent JSON of each finished phase
        logs/                   stderr of every process a service started, one file each
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import TypeVar

from google.protobuf import json_format
from google.protobuf.message import Message

from v2v.errors import V2VError
from v2v.v1 import types_pb2 as pb

M = TypeVar("M", bound=Message)

# sockaddr_un.sun_path is 108 bytes with its NUL; a longer socket path cannot be bound.
_MAX_SOCKET_PATH = 107


def default_root() -> Path:
    """Where work directories go unless told: $V2V_WORKDIR_ROOT, else $TMPDIR/v2v (or /var/tmp/v2v:
    the overlays can grow to gigabytes, and /tmp is often a small tmpfs)."""
    if root := os.environ.get("V2V_WORKDIR_ROOT"):
        return Path(root)
    return Path(os.environ.get("TMPDIR") or "/var/tmp") / "v2v"


class WorkDir:
    """One guest's work directory. Any service, or a shell script, can pick up from it."""

    SOURCE = "source.json"
    TARGET = "target.json"

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)

    @classmethod
    def create(cls, guest: str, root: Path | None = None) -> WorkDir:
        root = root or default_root()
        root.mkdir(parents=True, exist_ok=True)
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in guest)[:40] or "guest"
        path = Path(tempfile.mkdtemp(prefix=f"{safe}.", dir=root))
        os.chmod(path, 0o700)
        wd = cls(path)
        if len(str(wd.in_sock(99))) > _MAX_SOCKET_PATH:
            shutil.rmtree(path)
            raise V2VError(f"work directory root {root} is too long for NBD socket paths; "
                           "set V2V_WORKDIR_ROOT to a shorter path", pb.ERROR_CODE_BAD_INPUT)
        (path / "logs").mkdir(mode=0o700)
        return wd

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

    def mark_done(self, event: pb.StepEvent) -> None:
        self.write(f"{event.step}.done", event)

    def remove(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)
