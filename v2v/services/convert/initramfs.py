"""The chosen kernel's initramfs must load the virtio drivers before it looks for the root disk.
Each family's own tool rebuilds it: update-initramfs (Debian), dracut (RHEL, Fedora, SUSE 12+),
mkinitrd (SUSE 11 and older). The old image stays beside the new one as IMAGE.pre-v2v, and an
image that already has the drivers (and embeds nothing the conversion changed) is not rebuilt."""

from __future__ import annotations

import re
import shlex

import guestfs

from v2v.errors import V2VError
from v2v.events import StepReporter
from v2v.services.convert.family import Family
from v2v.services.convert.kernels import MODULE_FILE, Kernel, module_name
from v2v.v1 import types_pb2 as pb

STEP = "initramfs"
# virt-v2v's order (the probing order once decided vdX numbering on old kernels).
VIRTIO_MODULES = ["virtio", "virtio_ring", "virtio_blk", "virtio_scsi", "virtio_net", "virtio_pci"]
# Debian's initramfs-tools pulls virtio and virtio_ring in as dependencies: the historical list.
DEBIAN_MODULES = ["virtio_pci", "virtio_blk", "virtio_scsi", "virtio_net"]
DRACUT_CONF = "/etc/dracut.conf.d/v2v-virtio.conf"
SUSE_SYSCONFIG = "/etc/sysconfig/kernel"
XEN_PV_MODULES = {"xennet", "xen-vnif", "xenblk", "xen-vbd"}


def first_file(g: guestfs.GuestFS, paths: list[str]) -> str | None:
    return next((p for p in paths if g.is_file(p, followsymlinks=True)), None)


class Initramfs:
    """Rebuilds one kernel's initramfs with the guest's tool. `stale` says the image embeds a
    file the conversion changed (crypttab, resume device, modprobe options)."""

    def __init__(self, g: guestfs.GuestFS, family: Family, insp: pb.Inspection, report: StepReporter) -> None:
        self.g, self.family, self.insp, self.report = g, family, insp, report

    def run(self, kernel: Kernel, stale: bool) -> None:
        if self.family is Family.SUSE:
            self.drop_xen_modules()
        if not stale and self.has_virtio(kernel):
            self.report.note(f"{kernel.initrd} already has the virtio drivers: not rebuilt", step=STEP)
            return
        if self.family is Family.DEBIAN and self.g.is_file("/usr/sbin/update-initramfs", followsymlinks=True):
            self.list_in_initramfs_tools(kernel)
            self.rebuild(kernel, ["update-initramfs", "-u" if self.g.is_file(kernel.initrd) else "-c",
                                  "-k", kernel.version], keep=True)
            return
        modules = [m for m in VIRTIO_MODULES if kernel.has(m) and m not in kernel.builtin]
        dracut = first_file(self.g, ["/sbin/dracut", "/usr/sbin/dracut", "/usr/bin/dracut"])
        mkinitrd = first_file(self.g, ["/sbin/mkinitrd", "/usr/sbin/mkinitrd"])
        if dracut:
            self.write_dracut_conf(modules)
            add = ["--add-drivers", " ".join(modules)] if modules else []
            self.rebuild(kernel, [dracut, *add, kernel.initrd, kernel.version])
        elif mkinitrd and self.family is Family.SUSE:
            # SUSE's mkinitrd finds the root device itself unless told: in the appliance it would
            # find the appliance's own. rootdev= is how virt-v2v tells it.
            self.rebuild(kernel, ["/usr/bin/env", f"rootdev={self.insp.root}", mkinitrd, "-m", " ".join(modules),
                                  "-i", kernel.initrd, "-k", kernel.vmlinuz, "-d", self.insp.root])
        elif mkinitrd:
            self.rebuild(kernel, [mkinitrd, *(f"--with={m}" for m in modules), kernel.initrd, kernel.version])
        else:
            raise V2VError(f"cannot rebuild {kernel.initrd}: the guest has no update-initramfs, dracut or mkinitrd",
                           pb.ERROR_CODE_CONVERSION_FAILED)

    def has_virtio(self, kernel: Kernel) -> bool:
        """The image holds virtio_blk and virtio_pci (unless built into the kernel). An image that
        cannot be listed (zstd, early-microcode prefix without lsinitramfs) counts as lacking them."""
        if not self.g.is_file(kernel.initrd, followsymlinks=True):
            return False
        wanted = {m for m in ("virtio_blk", "virtio_pci") if m not in kernel.builtin}
        try:
            if self.g.is_file("/usr/bin/lsinitramfs", followsymlinks=True):
                files = self.g.sh(f"lsinitramfs {shlex.quote(kernel.initrd)}").splitlines()
            else:
                files = self.g.initrd_list(kernel.initrd)
        except RuntimeError:
            return False
        return wanted <= {module_name(f) for f in files if MODULE_FILE.search(f)}

    def rebuild(self, kernel: Kernel, command: list[str], keep: bool = False) -> None:
        """Moves the old image aside as .pre-v2v (dracut and mkinitrd refuse to overwrite it; with
        `keep` it is copied, for update-initramfs -u which updates in place), runs `command`, and
        puts the old image back if the tool fails."""
        old = f"{kernel.initrd}.pre-v2v"
        had = self.g.is_file(kernel.initrd, followsymlinks=True)
        if had:
            (self.g.cp if keep else self.g.mv)(kernel.initrd, old)
        try:
            self.g.sh(" ".join(shlex.quote(a) for a in command) + " 2>&1")
        except RuntimeError as exc:
            if had:
                self.g.mv(old, kernel.initrd)
            raise V2VError(f"rebuilding {kernel.initrd} failed in the guest ({command[0]}): {exc}",
                           pb.ERROR_CODE_CONVERSION_FAILED, detail=str(exc)) from None
        kept = f" (old image kept as {old})" if had else ""
        self.report.note(f"rebuilt {kernel.initrd}: {' '.join(command)}{kept}", step=STEP)

    def list_in_initramfs_tools(self, kernel: Kernel) -> None:
        """Lists the drivers in /etc/initramfs-tools/modules so the guest's own later rebuilds keep them."""
        path = "/etc/initramfs-tools/modules"
        listed = set()
        if self.g.is_file(path):
            listed = {line.split()[0] for line in self.g.read_lines(path)
                      if line.strip() and not line.lstrip().startswith("#")}
        missing = [m for m in DEBIAN_MODULES if kernel.has(m) and m not in listed]
        if missing:
            self.g.write_append(path, ("# added by v2v: drivers for KVM's virtio devices\n"
                                       + "".join(f"{m}\n" for m in missing)).encode())

    def write_dracut_conf(self, modules: list[str]) -> None:
        """The same drivers for every later dracut run (kernel updates), not just this one."""
        self.g.mkdir_p("/etc/dracut.conf.d")
        text = f'# added by v2v: drivers for KVM\'s virtio devices\nadd_drivers+=" {" ".join(modules)} "\n'
        self.g.write(DRACUT_CONF, text.encode())

    def drop_xen_modules(self) -> None:
        """SUSE lists the drivers of its initrd in /etc/sysconfig/kernel; Xen PV drivers there
        break mkinitrd on a non-Xen kernel."""
        if not self.g.is_file(SUSE_SYSCONFIG, followsymlinks=True):
            return
        text = self.g.read_file(SUSE_SYSCONFIG).decode()

        def keep_non_xen(m: re.Match[str]) -> str:
            kept = [mod for mod in m.group(3).split() if mod not in XEN_PV_MODULES]
            return f'{m.group(1)}{m.group(2)}{" ".join(kept)}{m.group(2)}'

        new = re.sub(r'^((?:DOMU_)?INITRD_MODULES=)(["\']?)(.*?)\2$', keep_non_xen, text, flags=re.M)
        if new != text:
            self.g.write(SUSE_SYSCONFIG, new.encode())
            self.report.note(f"removed Xen PV drivers from {SUSE_SYSCONFIG}", step=STEP)
