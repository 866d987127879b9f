"""Block device names in guest configuration: source names (sda, hdb, xvdc, nvme0n1) -> the
names the target bus gives the same disk (vda, ...). Pure text logic, unit-tested."""

from __future__ import annotations

import re

from v2v.drives import device_name, drive_index
from v2v.v1 import types_pb2 as pb

# /dev/sda3, /dev/hdb, /dev/xvdc1, /dev/nvme0n1p2; not /dev/sdaX-like names inside longer words.
_DEVICE = re.compile(r"(?<![\w/])/dev/(?:(?P<kind>sd|hd|xvd|vd)(?P<letters>[a-z]+)(?P<part>\d*)"
                     r"|nvme(?P<ctrl>\d+)n1(?:p(?P<npart>\d+))?)\b")


def remap(text: str, bus: pb.BlockBus, disks: int) -> str:
    """Rewrites every source device name for disks 0..disks-1 to its target name. Names of
    disks beyond the source's count (a removable /dev/sr0, say) are left alone."""

    def sub(m: re.Match[str]) -> str:
        if m.group("ctrl") is not None:
            index, part = int(m.group("ctrl")), m.group("npart") or ""
        else:
            index, part = drive_index(m.group("letters")), m.group("part")
        if index >= disks:
            return m.group(0)
        return f"/dev/{device_name(bus, index)}{part}"

    return _DEVICE.sub(sub, text)
