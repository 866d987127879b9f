"""Serving one source disk file read-only behind a copy-on-write overlay.

raw goes through nbdkit's file plugin with the cow filter (the plugin below the filter is opened
read-only); every other format through qemu-nbd --snapshot (a temporary qcow2 overlay). Writes by
later phases land in the overlay and vanish with the server. When writes are tracked
(OpenRequest.track_writes, for copy while converting: docs/copy.md) raw goes through qemu-nbd
--snapshot too, whose overlay lists what was written (qemu:allocation-depth)."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from contextvars import ContextVar
from pathlib import Path

from v2v.errors import V2VError
from v2v.nbdclient import export_size
from v2v.nbdserver import Nbdkit, NbdServer, QemuNbd
from v2v.process import run
from v2v.v1 import types_pb2 as pb
from v2v.workdir import WorkDir

NBD_SCHEMES = ("nbd://", "nbds://", "nbd+unix://", "nbds+unix://")
FORMATS = ("raw", "qcow2", "vmdk", "vdi", "vhdx", "vpc", "qed", "parallels")

# Signatures of what a disk image starts with: a partition table, a filesystem, LVM, swap.
# A raw "disk" with none of them is almost always the wrong file.
_SIGNATURES: list[tuple[int, bytes]] = [
    (510, b"\x55\xaa"),  # MBR (and the protective MBR of GPT)
    (512, b"EFI PART"),  # GPT header
    (1080, b"\x53\xef"),  # ext2/3/4 superblock magic
    (0, b"XFSB"),
    (65600, b"_BHRfS_M"),  # btrfs
    (512 + 24, b"LVM2 001"),  # LVM PV label in sector 1
    (4086, b"SWAPSPACE2"),
    (3, b"NTFS    "),
    (54, b"FAT"),
    (82, b"FAT32"),
    (32769, b"CD001"),  # ISO 9660
]


def check_readable(path: Path) -> None:
    if not path.exists():
        raise V2VError(f"{path}: no such file", pb.ERROR_CODE_BAD_INPUT)
    if path.is_dir():
        raise V2VError(f"{path}: is a directory, not a disk image", pb.ERROR_CODE_BAD_INPUT)
    if not os.access(path, os.R_OK):
        raise V2VError(f"{path}: cannot read it (permission denied)", pb.ERROR_CODE_BAD_INPUT)
    if path.stat().st_size == 0:
        raise V2VError(f"{path}: is empty (0 bytes), not a disk image", pb.ERROR_CODE_BAD_INPUT)


def image_info(path: Path | str, fmt: str = "") -> tuple[str, int]:
    """(format, virtual size) as qemu sees the file; `fmt` forces the format (-if)."""
    cmd = ["qemu-img", "info", "--output=json", "-U"]
    if fmt:
        cmd += ["-f", fmt]
    try:
        info = json.loads(run([*cmd, str(path)], f"{path}: cannot read the disk image", timeout=60))
    except V2VError as err:
        err.code = pb.ERROR_CODE_BAD_INPUT
        raise
    return info["format"], int(info["virtual-size"])


def check_image(path: Path, fmt: str) -> None:
    """Refuses a damaged image (a truncated VMDK, say) now, with qemu's reason, rather than as a
    read error halfway through the copy. Checks metadata only: seconds even for large images."""
    res = subprocess.run(["qemu-img", "check", "-U", "-q", "-f", fmt, str(path)], capture_output=True, text=True,
                         check=False, timeout=600)
    # 0 clean, 3 leaked clusters (harmless to a reader), 63 no check for this format
    if res.returncode in (1, 2):
        why = (res.stderr.strip() or res.stdout.strip() or "qemu-img check failed").splitlines()[0]
        raise V2VError(f"{path}: the {fmt} image is damaged or truncated ({why})", pb.ERROR_CODE_BAD_INPUT,
                       detail=res.stderr + res.stdout)


def check_raw_looks_like_disk(path: Path) -> None:
    with open(path, "rb") as f:
        head = f.read(70000)
    if not any(head[off:off + len(sig)] == sig for off, sig in _SIGNATURES):
        raise V2VError(f"{path}: not a disk image (no partition table, filesystem or LVM found; "
                       "if it really is a raw disk, declare its format raw: -if raw, <driver type='raw'/>)",
                       pb.ERROR_CODE_BAD_INPUT)


def probe(path: Path, fmt: str = "") -> pb.SourceDisk:
    """Checks a disk file and describes it; raises a one-line error naming the file."""
    check_readable(path)
    if fmt and fmt not in FORMATS:
        raise V2VError(f"-if {fmt}: unknown disk format (known: {', '.join(FORMATS)})",
                       pb.ERROR_CODE_BAD_INPUT)
    detected, size = image_info(path, fmt)
    if detected == "raw" and not fmt:
        check_raw_looks_like_disk(path)
    elif detected != "raw":
        check_image(path, detected)
    return pb.SourceDisk(location=str(path), format=detected, virtual_size=size)


def is_nbd_uri(location: str) -> bool:
    return location.startswith(NBD_SCHEMES)


def probe_nbd(uri: str, fmt: str = "") -> pb.SourceDisk:
    """An existing NBD endpoint as a source disk (warm and in-place flows, or any NBD server). Its
    bytes are raw unless `fmt` says they hold an image (qcow2 exported as is, say). Contacting it
    now fails fast and clearly; a server started on it would only find out at the first client."""
    if fmt in ("", "raw"):
        return pb.SourceDisk(location=uri, format="raw", virtual_size=export_size(uri))
    if fmt not in FORMATS:
        raise V2VError(f"{uri}: unknown disk format {fmt} (known: {', '.join(FORMATS)})", pb.ERROR_CODE_BAD_INPUT)
    detected, size = image_info(uri, fmt)
    return pb.SourceDisk(location=uri, format=detected, virtual_size=size)


# OpenRequest.track_writes for the overlays an input plugin starts within tracking_writes(): set per
# Open (each runs in its own thread, so in its own context), not passed through every plugin.
_TRACK_WRITES: ContextVar[bool] = ContextVar("track_writes", default=False)


@contextmanager
def tracking_writes(track: bool) -> Iterator[None]:
    """Within: the overlays serve_overlay starts list what is written through them (track_writes)."""
    token = _TRACK_WRITES.set(track)
    try:
        yield
    finally:
        _TRACK_WRITES.reset(token)


def serve_overlay(disk: pb.SourceDisk, sock: Path, log: Path, in_place: bool = False) -> NbdServer:
    """An NBD server for the disk (start it with `with`), writable through an overlay; `in_place`
    (--in-place) drops the overlay, so writes land in the disk itself. Within tracking_writes(True),
    every overlay is qemu-nbd's, which lists the blocks written through it."""
    what = f"disk {disk.index} ({disk.location})"
    path = Path(disk.location)
    cow = [] if in_place else ["cow"]
    tracked = _TRACK_WRITES.get() and not in_place
    if is_nbd_uri(disk.location) and disk.format == "raw" and not tracked:
        # nbdkit's nbd plugin relays the export; the cow filter keeps every write away from it.
        server: NbdServer = Nbdkit(sock, log, what, "nbd", [f"uri={disk.location}"], filters=cow)
    elif disk.format == "raw" and not tracked:
        server = Nbdkit(sock, log, what, "file", [f"file={path}"], filters=cow)
    else:
        # qemu-nbd opens files and NBD URIs alike
        server = QemuNbd(sock, log, what, disk.location if is_nbd_uri(disk.location) else path, disk.format,
                         snapshot=not in_place)
    return server


def serve_all(disks: Sequence[pb.SourceDisk], workdir: WorkDir, stack: ExitStack, in_place: bool = False) -> None:
    """Serves disk N on workdir.in_sock(N), each behind its overlay (none when `in_place`), every
    server owned by `stack`; a failure names its disk."""
    for disk in disks:
        try:
            stack.enter_context(serve_overlay(disk, workdir.in_sock(disk.index),
                                              workdir.log(f"input-disk{disk.index}.log"), in_place))
        except V2VError as err:
            err.fill(disk=disk.index)
            raise
