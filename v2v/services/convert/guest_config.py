"""Small configuration fixes for the new virtual hardware: serial console, X video driver,
kernel module aliases, SELinux relabelling, and whether the hardware clock is UTC. Each edit is
text in, text out (unit-tested); `GuestConfig` applies them to the files that exist."""

from __future__ import annotations

import re
from collections.abc import Callable

import guestfs

from v2v.events import StepReporter
from v2v.v1 import types_pb2 as pb

STEP = "config"
VIDEO_DRIVER = "modesetting"  # drives QXL, virtio-gpu and VGA alike (what virt-v2v sets)
MODPROBE_FILES = ("/etc/modprobe.conf", "/etc/modprobe.conf.local", "/etc/modules.conf", "/etc/conf.modules")
XEN_MODULES = ("xennet", "xen-vnif", "xenblk", "xen-vbd")
_BLOCK_MODULE = {pb.BLOCK_BUS_VIRTIO_BLK: "virtio_blk", pb.BLOCK_BUS_VIRTIO_SCSI: "virtio_scsi"}
_NET_MODULE = {pb.NET_BUS_VIRTIO_NET: "virtio_net", pb.NET_BUS_E1000: "e1000", pb.NET_BUS_RTL8139: "8139cp"}


def serial_getty(text: str) -> str:
    """inittab gettys and securetty entries on Xen's xvc0/hvc0 move to ttyS0."""
    return re.sub(r"\b(xvc0|hvc0)\b", "ttyS0", text)


def xorg_driver(text: str) -> str:
    """Every Device section's Driver becomes modesetting; vendor and board names (of the old
    virtual card) go."""

    def device(m: re.Match[str]) -> str:
        body = re.sub(r'^(\s*Driver\s+)"[^"]*"', rf'\1"{VIDEO_DRIVER}"', m.group(0), flags=re.M | re.I)
        return re.sub(r'^\s*(VendorName|BoardName)\s+"[^"]*"[ \t]*\n', "", body, flags=re.M | re.I)

    return re.sub(r'^\s*Section\s+"Device".*?^\s*EndSection', device, text, flags=re.M | re.S | re.I)


def module_aliases(text: str, block_bus: pb.BlockBus, net_bus: pb.NetBus, first_scsi: bool = True) -> tuple[str, bool]:
    """`alias ethN M` -> the NIC's driver; the first `alias scsi_hostadapter* M` -> the disk
    driver, further ones (and all on IDE) removed. Returns the text and whether a
    scsi_hostadapter alias was seen (only one may survive across all files)."""
    block = _BLOCK_MODULE.get(block_bus)
    seen = not first_scsi
    out = []
    for line in text.split("\n"):
        m = re.match(r"^(\s*alias\s+)(\S+)(\s+)(\S+)(.*)$", line)
        if m and re.fullmatch(r"eth\d+", m.group(2)):
            line = f"{m.group(1)}{m.group(2)}{m.group(3)}{_NET_MODULE[net_bus]}{m.group(5)}"
        elif m and m.group(2).startswith("scsi_hostadapter"):
            if seen or block is None:
                continue
            seen = True
            line = f"{m.group(1)}{m.group(2)}{m.group(3)}{block}{m.group(5)}"
        out.append(line)
    return "\n".join(out), seen


def selinux_active(config: str) -> bool:
    m = re.search(r"^\s*SELINUX\s*=\s*(\w+)", config, re.M)
    return m is not None and m.group(1).lower() in ("enforcing", "permissive")


def clock_is_utc(adjtime: str) -> bool:
    """/etc/adjtime's third line is UTC or LOCAL (UTC when absent)."""
    lines = adjtime.split("\n")
    return not (len(lines) > 2 and lines[2].strip().upper() == "LOCAL")


class GuestConfig:
    def __init__(self, g: guestfs.GuestFS, report: StepReporter) -> None:
        self.g, self.report = g, report

    def edit(self, path: str, change: Callable[[str], str]) -> bool:
        """Applies `change` (text -> text) to `path` if it exists; True if the file changed."""
        if not self.g.is_file(path, followsymlinks=True):
            return False
        text = self.g.read_file(path).decode(errors="replace")
        new = change(text)
        if new == text:
            return False
        self.g.write(path, new.encode())
        self.report.note(f"edited {path}", step=STEP)
        return True

    def consoles(self) -> None:
        for path in ("/etc/inittab", "/etc/securetty"):
            self.edit(path, serial_getty)

    def video(self) -> None:
        conf = "/etc/X11/xorg.conf"
        if not self.g.is_file(conf) and self.g.is_file("/etc/X11/XF86Config"):
            conf = "/etc/X11/XF86Config"
        if self.edit(conf, xorg_driver) and not any(self.g.is_file(x, followsymlinks=True)
                                                    for x in ("/usr/bin/X", "/usr/bin/X11/X", "/usr/bin/Xorg")):
            self.report.warn(f"the X video driver was set to {VIDEO_DRIVER}, but X does not seem to be installed",
                             step=STEP)

    def modules(self, block_bus: pb.BlockBus, net_bus: pb.NetBus) -> bool:
        """Rewrites module aliases; True if a file the initramfs embeds changed."""
        changed, seen = False, False
        for path in [*MODPROBE_FILES, *self.g.glob_expand("/etc/modprobe.d/*.conf")]:
            if not self.g.is_file(path, followsymlinks=True):
                continue
            text = self.g.read_file(path).decode(errors="replace")
            new, seen_here = module_aliases(text, block_bus, net_bus, first_scsi=not seen)
            seen |= seen_here
            for xen in re.findall(rf"^\s*alias\s+(\S+)\s+({'|'.join(XEN_MODULES)})\b", new, re.M):
                self.report.warn(f"{path}: {xen[0]} still loads the Xen module {xen[1]}; fix it by hand", step=STEP)
            if new != text:
                self.g.write(path, new.encode())
                self.report.note(f"edited module aliases in {path}", step=STEP)
                changed = True
        return changed

    def selinux(self) -> None:
        """A relabel at first boot: files the conversion wrote have no SELinux labels."""
        path = "/etc/selinux/config"
        if self.g.is_file(path, followsymlinks=True) and selinux_active(self.read(path)):
            self.g.touch("/.autorelabel")
            self.report.note("SELinux: /.autorelabel created (relabel at first boot)", step=STEP)

    def rtc_utc(self) -> bool:
        path = "/etc/adjtime"
        return not self.g.is_file(path, followsymlinks=True) or clock_is_utc(self.read(path))

    def read(self, path: str) -> str:
        data: bytes = self.g.read_file(path)
        return data.decode(errors="replace")
