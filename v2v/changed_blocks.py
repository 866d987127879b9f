"""Changed-block sources: which extents of a source disk changed since the last round of a warm
migration (docs/warm.md).

A source tracks writes from a checkpoint on. Each round rotates it: a new checkpoint starts
tracking, the old one's view is read through NBD, and the old one goes once the round's copy is
done; if the copy fails, the new checkpoint's changes are folded back into the old one, so no write
is ever forgotten. The round reads the disk's current data, not a snapshot: a write made during the
copy is in the new checkpoint too, and copied again by the next round. Only the last round, with the
source stopped, leaves the target equal to the source.

What exists now: dirty bitmaps read through NBD block status on the meta context
`qemu:dirty-bitmap:NAME`, in a qcow2 file (persistent bitmaps, exported by qemu-nbd -B) or in a
running qemu (QMP block-dirty-bitmap-add, exported by qemu's own NBD server). VMware changed block
tracking (VDDK QueryChangedDiskAreas against a snapshot's change ID) and Xen's changed-block
tracking plug in as further ChangedBlockSource subclasses: a checkpoint is whatever names the
point tracking started from (a bitmap, a change ID), `changes()` returns an NBD export to read
from and the meta context of that export that marks the changed extents (the copier copies only
those: copier.proto, DiskCopy.marked_by)."""

from __future__ import annotations

import json
import socket
from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from v2v.errors import V2VError
from v2v.extents import DIRTY_BITMAP
from v2v.nbdserver import QemuNbd
from v2v.process import run
from v2v.v1 import types_pb2 as pb
from v2v.v1 import warm_pb2
from v2v.workdir import WorkDir


@dataclass(frozen=True)
class Changes:
    """One round's view of a disk: copy from `uri` what its meta context `marked_by` marks (every
    block when ""); `checkpoint` tracks writes from now on."""

    uri: str
    marked_by: str
    checkpoint: str


FIRST_CHECKPOINT = "v2v-warm-0"


def next_checkpoint(current: str) -> str:
    """v2v-warm-N -> v2v-warm-N+1: per disk, so a round that failed after rotating some disks but
    not others never reuses a name."""
    prefix, _, number = current.rpartition("-")
    return f"{prefix}-{int(number) + 1}"


class ChangedBlockSource(ABC):
    """One source disk whose writes are tracked between rounds. Methods are context managers where
    an NBD export lives while the round copies from it."""

    what: str  # for messages: "disk 0 (/path/guest.qcow2)"
    # Whether this disk's round view may be open while other disks' are, so that one copy does
    # every disk at once.
    views_at_once = True

    @abstractmethod
    def size(self) -> int:
        """The disk's virtual size in bytes."""

    @abstractmethod
    def begin(self, checkpoint: str) -> AbstractContextManager[Changes]:
        """Starts tracking under `checkpoint` and yields the whole disk as changed (the full copy).
        If the caller fails, tracking is dropped again."""

    @abstractmethod
    def changes(self, since: str, checkpoint: str) -> AbstractContextManager[Changes]:
        """Starts `checkpoint` and yields what changed since `since`, which is removed when the caller
        succeeds; if it fails, `since` keeps every change (the new one's too) and `checkpoint` goes."""

    @abstractmethod
    def end(self, checkpoint: str) -> None:
        """Stops tracking: the migration is over."""

    @abstractmethod
    def checkpoints(self) -> list[str]:
        """The checkpoints that exist on the disk now."""

    @abstractmethod
    def fold(self, since: str, checkpoint: str) -> None:
        """Undoes a round's rotation: `since` takes `checkpoint`'s changes and tracks again, `checkpoint` goes."""

    def recover(self, since: str, checkpoint: str) -> None:
        """Before a round: a round killed half-way (its process gone, no cleanup) left `checkpoint`
        beside a frozen `since`; fold it back, so the round starts from where the state says."""
        existing = self.checkpoints()
        if since not in existing:
            raise V2VError(f"{self.what}: checkpoint {since} is gone (have: {', '.join(existing) or 'none'}): "
                           "the source no longer tracks changes for this migration; start it again",
                           pb.ERROR_CODE_BAD_INPUT)
        if checkpoint in existing:
            self.fold(since, checkpoint)

    @abstractmethod
    def running(self) -> bool:
        """Whether something may still be writing to the disk."""

    def stop(self) -> None:
        """Stops whatever writes to the disk, if it can."""
        raise V2VError(f"{self.what}: cannot stop this source: stop it first", pb.ERROR_CODE_BAD_INPUT)

    def resume(self) -> None:
        """Lets what stop() stopped run on (a rollback)."""
        raise V2VError(f"{self.what}: cannot resume this source: start it yourself", pb.ERROR_CODE_UNSUPPORTED)


class BitmapQemuNbd(QemuNbd):
    """qemu-nbd serving a qcow2 file read-only, with one of its bitmaps as a dirty-bitmap context."""

    def __init__(self, sock: Path, log: Path, what: str, path: Path, bitmap: str = "") -> None:
        self.bitmap = bitmap
        super().__init__(sock, log, what, path, "qcow2", readonly=True)

    def command(self) -> list[str]:
        cmd = super().command()
        return [cmd[0], f"--bitmap={self.bitmap}", *cmd[1:]] if self.bitmap else cmd


class Qcow2Bitmaps(ChangedBlockSource):
    """A qcow2 file whose writers are stopped while a round runs (qemu-img bitmap needs the file to
    itself): the checkpoints are persistent bitmaps in the file, read through qemu-nbd -B."""

    def __init__(self, path: Path, index: int, workdir: WorkDir) -> None:
        self.path = path
        self.index = index
        self.workdir = workdir
        self.what = f"disk {index} ({path})"

    def _bitmap(self, *ops: str, name: str) -> None:
        run(["qemu-img", "bitmap", *ops, "-f", "qcow2", str(self.path), name],
            f"{self.what}: cannot change dirty bitmap {name}", timeout=120)

    def _info(self) -> dict[str, Any]:
        return dict(json.loads(run(["qemu-img", "info", "--output=json", "-U", "-f", "qcow2", str(self.path)],
                                   f"{self.what}: cannot read the image", timeout=60)))

    def size(self) -> int:
        return int(self._info()["virtual-size"])

    @contextmanager
    def _export(self, bitmap: str = "") -> Iterator[str]:
        with BitmapQemuNbd(self.workdir.path / f"warm{self.index}.sock",
                           self.workdir.log(f"warm-source{self.index}.log"), self.what, self.path, bitmap) as server:
            yield server.uri

    @contextmanager
    def begin(self, checkpoint: str) -> Iterator[Changes]:
        self._bitmap("--add", name=checkpoint)
        try:
            with self._export() as uri:
                yield Changes(uri, "", checkpoint)
        except BaseException:
            self._bitmap("--remove", name=checkpoint)
            raise

    @contextmanager
    def changes(self, since: str, checkpoint: str) -> Iterator[Changes]:
        self.recover(since, checkpoint)
        self._bitmap("--add", name=checkpoint)
        try:
            self._bitmap("--disable", name=since)
            with self._export(since) as uri:
                yield Changes(uri, DIRTY_BITMAP + since, checkpoint)
        except BaseException:
            self.fold(since, checkpoint)
            raise
        self._bitmap("--remove", name=since)

    def checkpoints(self) -> list[str]:
        return [b["name"] for b in self._info().get("format-specific", {}).get("data", {}).get("bitmaps", [])]

    def fold(self, since: str, checkpoint: str) -> None:
        self._bitmap("--merge", checkpoint, "--enable", name=since)
        self._bitmap("--remove", name=checkpoint)

    def end(self, checkpoint: str) -> None:
        self._bitmap("--remove", name=checkpoint)

    def running(self) -> bool:
        return False  # whoever writes it between rounds cannot while qemu-img or qemu-nbd holds its lock


class Qmp:
    """A QMP connection to a running qemu (the protocol is JSON lines on a Unix socket)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self.sock.connect(path)
        except OSError as exc:
            raise V2VError(f"cannot connect to the QMP socket {path}: {exc.strerror}", pb.ERROR_CODE_BAD_INPUT) from exc
        self.reader = self.sock.makefile("r")
        self._reply()  # the greeting
        self.execute("qmp_capabilities")

    def _reply(self) -> dict[str, Any]:
        while line := self.reader.readline():
            msg: dict[str, Any] = json.loads(line)
            if "event" not in msg:  # events are for other clients
                return msg
        raise V2VError(f"qemu closed its QMP socket {self.path}", pb.ERROR_CODE_PROCESS_FAILED)

    def execute(self, command: str, **arguments: Any) -> Any:
        self.sock.sendall(json.dumps({"execute": command, "arguments": arguments}).encode() + b"\n")
        reply = self._reply()
        if "error" in reply:
            raise V2VError(f"qemu refused {command}: {reply['error'].get('desc', reply['error'])}",
                           pb.ERROR_CODE_PROCESS_FAILED, detail=json.dumps(arguments))
        return reply.get("return")

    def close(self) -> None:
        self.reader.close()
        self.sock.close()


class QmpBitmaps(ChangedBlockSource):
    """A block node of a running qemu: checkpoints are its dirty bitmaps (not persistent: they live
    as long as the qemu process), read through qemu's NBD server, which a round starts and stops."""

    # A view holds the qemu's QMP socket, which serves one client at a time, and its one NBD server.
    views_at_once = False

    def __init__(self, qmp_socket: str, node: str, index: int, workdir: WorkDir) -> None:
        self.qmp_socket = qmp_socket
        self.node = node
        self.index = index
        self.workdir = workdir
        self.what = f"disk {index} (node {node} of qemu at {qmp_socket})"

    @contextmanager
    def _qmp(self) -> Iterator[Qmp]:
        q = Qmp(self.qmp_socket)
        try:
            yield q
        except V2VError as err:
            err.message = f"node {self.node} of the qemu at {self.qmp_socket}: {err.message}"
            raise
        finally:
            q.close()

    def _bitmap_action(self, kind: str, name: str, **extra: Any) -> dict[str, Any]:
        return {"type": f"block-dirty-bitmap-{kind}", "data": {"node": self.node, "name": name, **extra}}

    def size(self) -> int:
        with self._qmp() as q:
            return int(self._node(q)["image"]["virtual-size"])

    @contextmanager
    def _export(self, q: Qmp, bitmap: str = "") -> Iterator[str]:
        sock = self.workdir.path / f"warm{self.index}.sock"
        sock.unlink(missing_ok=True)
        export = f"v2v-warm-{self.index}"
        q.execute("nbd-server-start", addr={"type": "unix", "data": {"path": str(sock)}})
        try:
            q.execute("block-export-add", type="nbd", id=export, **{"node-name": self.node}, name=export,
                      writable=False, bitmaps=[bitmap] if bitmap else [])
            try:
                yield f"nbd+unix:///{export}?socket={sock}"
            finally:
                q.execute("block-export-del", id=export)
        finally:
            q.execute("nbd-server-stop")
            sock.unlink(missing_ok=True)

    @contextmanager
    def begin(self, checkpoint: str) -> Iterator[Changes]:
        with self._qmp() as q:
            q.execute("block-dirty-bitmap-add", node=self.node, name=checkpoint)
            try:
                with self._export(q) as uri:
                    yield Changes(uri, "", checkpoint)
            except BaseException:
                q.execute("block-dirty-bitmap-remove", node=self.node, name=checkpoint)
                raise

    @contextmanager
    def changes(self, since: str, checkpoint: str) -> Iterator[Changes]:
        self.recover(since, checkpoint)
        with self._qmp() as q:
            # One transaction: not a write falls between the old bitmap's view and the new one's start.
            q.execute("transaction", actions=[self._bitmap_action("add", checkpoint),
                                              self._bitmap_action("disable", since)])
            try:
                with self._export(q, since) as uri:
                    yield Changes(uri, DIRTY_BITMAP + since, checkpoint)
            except BaseException:
                self._fold(q, since, checkpoint)  # on this connection: qemu's QMP socket takes one at a time
                raise
            q.execute("block-dirty-bitmap-remove", node=self.node, name=since)

    def _node(self, q: Qmp) -> dict[str, Any]:
        for node in q.execute("query-named-block-nodes", flat=True):
            if node.get("node-name") == self.node:
                return dict(node)
        raise V2VError(f"{self.what}: qemu has no block node {self.node}", pb.ERROR_CODE_BAD_INPUT)

    def checkpoints(self) -> list[str]:
        with self._qmp() as q:
            return [b["name"] for b in self._node(q).get("dirty-bitmaps", [])]

    def fold(self, since: str, checkpoint: str) -> None:
        with self._qmp() as q:
            self._fold(q, since, checkpoint)

    def _fold(self, q: Qmp, since: str, checkpoint: str) -> None:
        q.execute("transaction", actions=[
            {"type": "block-dirty-bitmap-merge", "data": {"node": self.node, "target": since, "bitmaps": [checkpoint]}},
            self._bitmap_action("enable", since), self._bitmap_action("remove", checkpoint)])

    def end(self, checkpoint: str) -> None:
        with self._qmp() as q:
            q.execute("block-dirty-bitmap-remove", node=self.node, name=checkpoint)

    def running(self) -> bool:
        with self._qmp() as q:
            return bool(q.execute("query-status")["running"])

    def stop(self) -> None:
        with self._qmp() as q:
            q.execute("stop")

    def resume(self) -> None:
        with self._qmp() as q:
            q.execute("cont")


def open_source(source: warm_pb2.WarmSource, index: int, workdir: WorkDir) -> ChangedBlockSource:
    """The changed-block source a WarmSource names."""
    kind = source.WhichOneof("kind")
    if kind == "qcow2":
        return Qcow2Bitmaps(Path(source.qcow2), index, workdir)
    if kind == "qmp":
        return QmpBitmaps(source.qmp.socket, source.qmp.node, index, workdir)
    raise V2VError(f"disk {index}: no source given", pb.ERROR_CODE_BAD_INPUT)
