"""LVM filters after the disks move bus: the guest's own LVM must still accept its physical volumes.

An admin's `filter`/`global_filter` in /etc/lvm/lvm.conf that accepts only the source's device names
by pattern (`a|^/dev/sd[a-z]+[0-9]*$|`, `r|.*|`) rejects every /dev/vdX: the initramfs, which carries
a copy of /etc/lvm, then never activates the root volume. Exact names (/dev/sda3) are renamed with
the other files that name devices (linux.DEVICE_FILES); this module renames the patterns' prefixes
and drops the persistent cache of the old device names (LVM rebuilds it)."""

from __future__ import annotations

import re

import guestfs

from v2v.drives import device_prefix
from v2v.events import StepReporter
from v2v.v1 import types_pb2 as pb

LVM_CONF = "/etc/lvm/lvm.conf"
LVM_CACHE = "/etc/lvm/cache/.cache"

# `filter = [ ... ]` and `global_filter = [ ... ]` settings, possibly spanning lines, not commented out.
_FILTER = re.compile(r"^(?P<head>[ \t]*(?:global_)?filter[ \t]*=[ \t]*\[)(?P<body>[^\]]*)\]", re.M)
# A source disk name prefix as a pattern uses it: /dev/sd[a-z], /dev/sd.*, /dev/xvd+ (not /dev/sda3,
# an exact name, nor /dev/sdz: disks beyond the source's are not ours to rename).
_PREFIX = re.compile(r"/dev/(?:sd|hd|xvd)(?![a-z])")


def retarget_filters(text: str, bus: pb.BlockBus) -> str:
    """lvm.conf with its filters' device-name patterns for the target bus (/dev/sd[a-z] ->
    /dev/vd[a-z]); the rest of the file untouched."""
    prefix = f"/dev/{device_prefix(bus)}"

    def sub(m: re.Match[str]) -> str:
        return f"{m.group('head')}{_PREFIX.sub(prefix, m.group('body'))}]"

    return _FILTER.sub(sub, text)


def retarget_lvm_filters(g: guestfs.GuestFS, bus: pb.BlockBus, report: StepReporter, step: str) -> bool:
    """Returns whether it changed a file the initramfs carries (all of /etc/lvm), so that the
    initramfs is rebuilt."""
    changed = False
    if g.is_file(LVM_CONF):
        text = g.read_file(LVM_CONF).decode(errors="replace")
        new = retarget_filters(text, bus)
        if new != text:
            g.write(LVM_CONF, new.encode())
            report.note(f"LVM filters in {LVM_CONF} now accept /dev/{device_prefix(bus)}* devices", step=step)
            changed = True
    if g.is_file(LVM_CACHE):
        g.rm(LVM_CACHE)
        report.note(f"removed {LVM_CACHE}: it names the source's devices", step=step)
        changed = True
    return changed
