"""An empty regf hive, written from the format (hivex cannot create a hive from nothing and no
Debian package ships an empty one), and the hivexregedit merge that fills it from our .reg files.

Layout: a 4 KiB base block, then one 4 KiB hbin holding the root key (nk `$$$PROTO.HIV`, no
subkeys, no values), the security cell (sk) it points at, and one free cell for the rest. hivex
refuses a base block whose XOR checksum is wrong, and fails `node_add_child` ("Bad address") when the
root's sk offset is not a real sk cell: new keys inherit the parent's security cell."""

from __future__ import annotations

import struct
import subprocess
from pathlib import Path

BASE_BLOCK = 0x1000
HBIN_SIZE = 0x1000
ROOT_NAME = b"$$$PROTO.HIV"
NO_CELL = 0xFFFFFFFF
# 2026-01-01 as a FILETIME: a fixed stamp keeps the bytes (and the build cache) reproducible.
FILETIME = 134116128000000000
_KEY_HIVE_ENTRY, _KEY_NO_DELETE, _KEY_COMP_NAME = 0x4, 0x8, 0x20


def _sid(authority: int, *subauthorities: int) -> bytes:
    return struct.pack(">BB6s", 1, len(subauthorities), authority.to_bytes(6, "big")) + \
        struct.pack(f"<{len(subauthorities)}I", *subauthorities)


def _security_descriptor() -> bytes:
    """Self-relative: owner BUILTIN\\Administrators, group SYSTEM, a DACL giving Everyone KEY_ALL_ACCESS
    (inherited by subkeys), as a fresh hive's root would have."""
    everyone = _sid(1, 0)
    ace = struct.pack("<BBHI", 0, 0x02, 8 + len(everyone), 0x000F003F) + everyone  # ALLOWED, CONTAINER_INHERIT
    dacl = struct.pack("<BBHHH", 2, 0, 8 + len(ace), 1, 0) + ace
    owner, group = _sid(5, 32, 544), _sid(5, 18)
    header = 20
    control = 0x8000 | 0x0004  # SE_SELF_RELATIVE | SE_DACL_PRESENT
    return struct.pack("<BBHIIII", 1, 0, control, header, header + len(owner), 0,
                       header + len(owner) + len(group)) + owner + group + dacl


def _cell(data: bytes) -> bytes:
    """An allocated cell: negative size (header included), padded to 8 bytes."""
    size = (4 + len(data) + 7) & ~7
    return struct.pack("<i", -size) + data.ljust(size - 4, b"\0")


def _root_key(sk_offset: int) -> bytes:
    flags = _KEY_HIVE_ENTRY | _KEY_NO_DELETE | _KEY_COMP_NAME
    return struct.pack("<2sHQIIIIIIIIIIIIIIIHH", b"nk", flags, FILETIME, 0, NO_CELL, 0, 0, NO_CELL, NO_CELL, 0,
                       NO_CELL, sk_offset, NO_CELL, 0, 0, 0, 0, 0, len(ROOT_NAME), 0) + ROOT_NAME


def _security_cell(own_offset: int) -> bytes:
    sd = _security_descriptor()
    # A lone sk is its own list neighbour both ways; the root references it once.
    return struct.pack("<2sHIIII", b"sk", 0, own_offset, own_offset, 1, len(sd)) + sd


def empty_hive() -> bytes:
    """The 8 KiB empty hive."""
    first = 0x20  # cells start after the 32-byte hbin header; offsets count from the first hbin
    root_size = len(_cell(_root_key(0)))
    sk_offset = first + root_size
    cells = _cell(_root_key(sk_offset)) + _cell(_security_cell(sk_offset))
    free = HBIN_SIZE - first - len(cells)
    hbin = struct.pack("<4sIIQQI", b"hbin", 0, HBIN_SIZE, 0, FILETIME, 0) + cells + \
        struct.pack("<i", free) + bytes(free - 4)
    name = "SYSTEM".encode("utf-16-le").ljust(64, b"\0")
    base = struct.pack("<4sIIQIIIIIII", b"regf", 1, 1, FILETIME, 1, 3, 0, 1, first, HBIN_SIZE, 1) + name
    base = base.ljust(0x1FC, b"\0")
    checksum = 0
    for (dword,) in struct.iter_unpack("<I", base[:0x1FC]):
        checksum ^= dword
    base = (base + struct.pack("<I", checksum)).ljust(BASE_BLOCK, b"\0")
    assert len(hbin) == HBIN_SIZE
    return base + hbin


def build_hive(path: Path, prefix: str, reg_files: list[Path]) -> Path:
    """Writes the empty hive to `path` and merges `reg_files` into it, in order (later files may add
    to or override earlier ones). `prefix` is the registry path the files' keys start with, for
    example 'HKEY_LOCAL_MACHINE\\SYSTEM'; '' for a BCD, whose .reg uses bare '\\Objects' paths."""
    path.write_bytes(empty_hive())
    for reg in reg_files:
        args = ["hivexregedit", "--merge", str(path)] + (["--prefix", prefix] if prefix else []) + [str(reg)]
        res = subprocess.run(args, capture_output=True, text=True, check=False)
        if res.returncode != 0:
            raise RuntimeError(f"hivexregedit --merge {path.name} {reg.name}: {res.stderr.strip()}")
    return path
