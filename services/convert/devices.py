"""Block device names in guest configuration: source names (sda, hdb, xvdc, nvme0n1) -> the
names the target bus gives the same disk (vda, ...). Pure text logic, unit-tested."""

from __future__ import annotations

import re

from v2v.v1 import types_pb2 as pb

# /dev/sda3, /dev/hdb, /dev/xvdc1, /dev/nvme0n1p2; not /dev/sdaX-like names inside longer words.
_DEVICE = re.compile(r"(?<![\w/])/dev/(?:(?P<kind>sd|hd|xvd|vd)(?P<letters>[a-z]+)(?P<part>\d*)"
                     r"|nvme(?P<ctrl>\d+)n1(?:p(?P<npart>\d+))?)\b")

_PREFIX = {
    pb.BLOCK_BUS_VIRTIO_BLK: "vd",
    pb.BLOCK_BUS_VIRTIO_SCSI: "sd",
    pb.BLOCK_BUS_SATA: "sd",
    pb.BLOCK_BUS_IDE: "hd",
}


def drive_letters(index: int) -> str:
    """0 -> a, 25 -> z, 26 -> aa: the kernel's naming of the Nth disk."""
    letters = ""
    index += 1
    while index:
        index, rem = divmod(index - 1, 26)
        letters = chr(ord("a") + rem) + letters
    return letters


def drive_index(letters: str) -> int:
    index = 0
    for c in letters:
        index = index * 26 + (ord(c) - ord("a") + 1)
    return index - 1


def target_name(index: int, bus: int) -> str:
    return _PREFIX.get(bus, "vd") + drive_letters(index)


def remap(text: str, bus: int, disks: int) -> str:
    """Rewrites every source device name for disks 0..disks-1 to its target name. Names of
    disks beyond the source's count (a removable /dev/sr0, say) are left alone."""

    def sub(m: re.Match[str]) -> str:
        if m.group("ctrl") is not None:
            index, part = int(m.group("ctrl")), m.group("npart") or ""
        else:
            index, part = drive_index(m.group("letters")), m.group("part")
        if index >= disks:
            return m.group(0)
        return f"/dev/{target_name(index, bus)}{part}"

    return _DEVICE.sub(sub, text)
