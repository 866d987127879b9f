"""A Windows registry hive of the guest, edited with hivex: downloaded from the appliance once,
changed in memory, uploaded once by `commit()`. Until then the guest's file is untouched, so a
conversion that fails half-way leaves no half-edited hive behind (and the overlay keeps the
source untouched in any case). Every change is reported as a structured RegistryEdit event."""

from __future__ import annotations

import struct
from pathlib import Path

import guestfs
import hivex

from v2v.errors import V2VError
from v2v.events import StepReporter
from v2v.v1 import types_pb2 as pb

REG_NONE = 0
REG_SZ = 1
REG_EXPAND_SZ = 2
REG_BINARY = 3
REG_DWORD = 4
REG_MULTI_SZ = 7
REG_QWORD = 11
_TYPE_NAMES = {REG_NONE: "REG_NONE", REG_SZ: "REG_SZ", REG_EXPAND_SZ: "REG_EXPAND_SZ", REG_BINARY: "REG_BINARY",
               REG_DWORD: "REG_DWORD", REG_MULTI_SZ: "REG_MULTI_SZ", REG_QWORD: "REG_QWORD"}

Data = str | int | bytes | list[str]


def encode(kind: int, data: Data) -> bytes:
    """Registry bytes of a value, as Windows stores them (strings UTF-16LE with their NUL)."""
    if kind in (REG_SZ, REG_EXPAND_SZ) and isinstance(data, str):
        return data.encode("utf-16-le") + b"\0\0"
    if kind == REG_MULTI_SZ and isinstance(data, list):
        return b"".join(s.encode("utf-16-le") + b"\0\0" for s in data) + b"\0\0"
    if kind == REG_DWORD and isinstance(data, int):
        return struct.pack("<I", data)
    if kind == REG_QWORD and isinstance(data, int):
        return struct.pack("<Q", data)
    if isinstance(data, bytes):
        return data
    raise TypeError(f"cannot store {type(data).__name__} as {_TYPE_NAMES.get(kind, kind)}")


def decode_string(raw: bytes) -> str:
    """A REG_SZ's text without its terminating NULs (virt-v2v 2.2 keeps them, so a rewrite of the
    string's end never matches: the spec's bug 1.9.1)."""
    if len(raw) % 2:
        raw = raw[:-1]
    return raw.decode("utf-16-le", errors="replace").rstrip("\0")


def decode_multi(raw: bytes) -> list[str]:
    text = raw.decode("utf-16-le", errors="replace") if len(raw) % 2 == 0 else raw[:-1].decode("utf-16-le")
    return [s for s in text.split("\0") if s]


def shown(kind: int, data: Data) -> str:
    if isinstance(data, bytes):
        return data.hex(" ")
    if isinstance(data, list):
        return ", ".join(data)
    return str(data)


class Hive:
    """One hive file of the guest. `name` (SYSTEM, SOFTWARE, BCD) is for messages and events."""

    def __init__(self, g: guestfs.GuestFS, guest_path: str, name: str, scratch: Path, report: StepReporter,
                 step: str = "registry") -> None:
        self.g = g
        self.guest_path = guest_path
        self.name = name
        self.report = report
        self.step = step
        self.local = scratch / name
        self.changed = False
        try:
            g.download(guest_path, str(self.local))
            self.h = hivex.Hivex(str(self.local), write=True)
        except RuntimeError as exc:
            raise V2VError(f"the {name} hive {guest_path} cannot be read: {exc} (is the file damaged or "
                           "truncated?)", pb.ERROR_CODE_CONVERSION_FAILED) from None

    def node(self, path: str) -> int | None:
        """The key at a backslash-separated path (case-insensitive, as Windows), or None."""
        node = self.h.root()
        for part in filter(None, path.split("\\")):
            child = self.h.node_get_child(node, part)
            if not child:
                return None
            node = child
        return int(node)

    def children(self, path: str) -> list[str]:
        node = self.node(path)
        return [] if node is None else [self.h.node_name(c) for c in self.h.node_children(node)]

    def value(self, path: str, key: str) -> tuple[int, bytes] | None:
        node = self.node(path)
        if node is None:
            return None
        try:
            val = self.h.node_get_value(node, key)
        except RuntimeError:  # python3-hivex raises (errno 0, "Success") for a value that is not there
            return None
        if not val:
            return None
        kind, raw = self.h.value_value(val)
        return int(kind), bytes(raw)

    def string(self, path: str, key: str) -> str | None:
        val = self.value(path, key)
        if val is None:
            return None
        kind, raw = val
        if kind == REG_MULTI_SZ:
            return ",".join(decode_multi(raw))
        return decode_string(raw)

    def strings(self, path: str, key: str) -> list[str]:
        """A REG_MULTI_SZ as a list (a REG_SZ as a list of one)."""
        val = self.value(path, key)
        if val is None:
            return []
        kind, raw = val
        return decode_multi(raw) if kind == REG_MULTI_SZ else [s for s in [decode_string(raw)] if s]

    def dword(self, path: str, key: str) -> int | None:
        val = self.value(path, key)
        if val is None:
            return None
        kind, raw = val
        if kind in (REG_DWORD, REG_QWORD) and len(raw) in (4, 8):
            return int.from_bytes(raw, "little")
        return None

    def ensure(self, path: str) -> int:
        """The key at `path`, made with its missing parents."""
        node = self.h.root()
        for part in filter(None, path.split("\\")):
            child = self.h.node_get_child(node, part)
            node = child if child else self.h.node_add_child(node, part)
        return int(node)

    def set(self, path: str, key: str, kind: int, data: Data, why: str = "") -> None:
        """Sets one value, making the key if needed; reported as a RegistryEdit."""
        try:
            self.h.node_set_value(self.ensure(path), {"key": key, "t": kind, "value": encode(kind, data)})
        except RuntimeError as exc:  # the hive on disk is untouched: it is written by commit() only
            raise V2VError(f"cannot set {self.name}\\{path}\\{key or '(default)'}: {exc}",
                           pb.ERROR_CODE_CONVERSION_FAILED) from None
        self.changed = True
        edit = pb.RegistryEdit(hive=self.name, key=path, value=key, action=pb.RegistryEdit.ACTION_SET,
                               type=_TYPE_NAMES.get(kind, str(kind)), data=shown(kind, data))
        self.report.note(f"{self.name}\\{path}\\{key or '(default)'} = {edit.data}" + (f" ({why})" if why else ""),
                         step=self.step, registry_edit=edit)

    def delete(self, path: str, why: str = "") -> bool:
        """Deletes a key and its subkeys; False when it is not there."""
        node = self.node(path)
        if node is None:
            return False
        self.h.node_delete_child(node)
        self.changed = True
        edit = pb.RegistryEdit(hive=self.name, key=path, action=pb.RegistryEdit.ACTION_DELETE_KEY)
        self.report.note(f"deleted {self.name}\\{path}" + (f" ({why})" if why else ""), step=self.step,
                         registry_edit=edit)
        return True

    def commit(self) -> None:
        """Writes the changes into the guest (nothing when nothing changed)."""
        if not self.changed:
            return
        self.h.commit(None)
        self.g.upload(str(self.local), self.guest_path)
        self.changed = False
