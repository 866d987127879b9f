"""Installed kernels and the choice of the one the converted guest boots: the newest non-debug
kernel that has virtio drivers; never a Xen-PV-only kernel (it cannot boot on KVM)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import guestfs

from v2v.errors import V2VError
from v2v.v1 import types_pb2 as pb

MODULE_FILE = re.compile(r"\.ko(\.\w+)?$")
# Where each family keeps the initramfs of kernel VER; the first that exists is the one.
_INITRD_NAMES = ("/boot/initramfs-{v}.img", "/boot/initrd.img-{v}", "/boot/initrd-{v}", "/boot/initrd-{v}.img")
# Options of the "xenified" kernels (2.6.18-xen, SUSE kernel-xen): PV only, no KVM boot.
_XEN_PV_CONFIG = re.compile(r"^CONFIG_X86(_64)?_XEN=y", re.M)


@dataclass
class Kernel:
    version: str  # the /lib/modules directory name: what dracut and update-initramfs call it
    vmlinuz: str
    initrd: str  # the image's path (it may not exist yet)
    modules: frozenset[str] = field(default_factory=frozenset)  # loadable and built in, with _ for -
    builtin: frozenset[str] = field(default_factory=frozenset)
    xen_pv_only: bool = False

    def has(self, module: str) -> bool:
        return module in self.modules

    @property
    def debug(self) -> bool:
        return "debug" in self.version or self.version.endswith("-dbg")

    @property
    def virtio(self) -> bool:
        return self.has("virtio_blk") and self.has("virtio_pci")

    def sort_key(self) -> tuple[bool, bool, tuple[int, ...]]:
        """Best first when sorted in reverse: virtio, then not debug, then the highest version."""
        return self.virtio, not self.debug, version_key(self.version)


def version_key(version: str) -> tuple[int, ...]:
    """6.1.0-50-amd64 -> (6, 1, 0, 50): numeric parts in order, for choosing the newest."""
    return tuple(int(n) for n in re.findall(r"\d+", version))


def module_name(path: str) -> str:
    return MODULE_FILE.sub("", path.rsplit("/", 1)[-1]).replace("-", "_")


def list_kernels(g: guestfs.GuestFS, initrd_default: str) -> list[Kernel]:
    """Installed kernels (a /boot/vmlinuz-VER with its /lib/modules/VER), best first.
    `initrd_default` names the image a kernel without one gets ("/boot/initramfs-{v}.img")."""
    kernels = []
    for vmlinuz in g.glob_expand("/boot/vmlinuz-*"):
        version = vmlinuz.removeprefix("/boot/vmlinuz-")
        moddir = f"/lib/modules/{version}"
        if not g.is_dir(moddir, followsymlinks=True):
            continue
        names = {module_name(p) for p in g.find(moddir) if MODULE_FILE.search(p)}
        builtin: set[str] = set()
        if g.is_file(f"{moddir}/modules.builtin", followsymlinks=True):
            builtin = {module_name(line) for line in g.read_lines(f"{moddir}/modules.builtin") if line}
        config = f"/boot/config-{version}"
        xen = version.endswith("-xen") or (g.is_file(config, followsymlinks=True) and bool(
            _XEN_PV_CONFIG.search(g.read_file(config).decode(errors="replace"))))
        images = [p.format(v=version) for p in _INITRD_NAMES]
        initrd = next((p for p in images if g.is_file(p, followsymlinks=True)), initrd_default.format(v=version))
        kernels.append(Kernel(version, vmlinuz, initrd, frozenset(names | builtin), frozenset(builtin), xen))
    return sorted(kernels, key=Kernel.sort_key, reverse=True)


def choose_kernel(kernels: list[Kernel]) -> Kernel:
    """The best kernel that can boot on KVM. Fails clearly when there is none."""
    if not kernels:
        raise V2VError("no kernel found in /boot with its modules in /lib/modules", pb.ERROR_CODE_CONVERSION_FAILED)
    bootable = [k for k in kernels if not k.xen_pv_only]
    if not bootable:
        raise V2VError("only Xen paravirtualized kernels are installed in this guest "
                       f"({', '.join(k.version for k in kernels)}): they cannot boot on KVM. Install a regular "
                       "kernel in the guest (e.g. 'kernel-default' on SUSE, 'kernel' on RHEL) and convert again",
                       pb.ERROR_CODE_CONVERSION_FAILED)
    return sorted(bootable, key=Kernel.sort_key, reverse=True)[0]
