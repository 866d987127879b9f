"""Linux conversion: make a guest from another hypervisor boot and run well on KVM.

The foundation covers the Debian family (dpkg + initramfs-tools): remove other hypervisors'
tools, rename block devices for the target bus, put the virtio drivers into the initramfs of the
best kernel. Each part is a timed sub-step of `convert`."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import guestfs

from v2v.errors import V2VError
from v2v.events import StepReporter
from v2v.services.convert.devices import remap
from v2v.v1 import types_pb2 as pb

# Other hypervisors' guest tools: useless or harmful on KVM (they probe for hardware that is gone).
HYPERVISOR_PACKAGES = {
    "open-vm-tools", "open-vm-tools-desktop", "open-vm-tools-sdmp", "open-vm-tools-dev",
    "virtualbox-guest-utils", "virtualbox-guest-x11", "virtualbox-guest-dkms",
    "xe-guest-utilities", "hyperv-daemons",
}

# What the initramfs needs to find its root disk (and network) on virtio hardware.
VIRTIO_INITRAMFS_MODULES = ["virtio_pci", "virtio_blk", "virtio_scsi", "virtio_net"]

# Files that name block devices; the initramfs embeds the ones marked True.
DEVICE_FILES = {
    "/etc/fstab": False,
    "/etc/crypttab": True,
    "/etc/default/grub": False,
    "/boot/grub/grub.cfg": False,
    "/boot/grub/device.map": False,
    "/boot/grub2/grub.cfg": False,
    "/etc/initramfs-tools/conf.d/resume": True,
}


@dataclass(order=True)
class Kernel:
    sort_key: tuple[int, ...]
    version: str = field(compare=False)
    modules: frozenset[str] = field(compare=False, default=frozenset())

    def has(self, module: str) -> bool:
        return module in self.modules


def version_key(version: str) -> tuple[int, ...]:
    """6.1.0-50-amd64 -> (6, 1, 0, 50): numeric parts in order, for choosing the newest."""
    return tuple(int(n) for n in re.findall(r"\d+", version))


def list_kernels(g: guestfs.GuestFS) -> list[Kernel]:
    """Installed kernels (a /boot/vmlinuz-VER with its /lib/modules/VER), best first.
    Debug kernels sort last: nobody wants one as the default after a migration."""
    kernels = []
    for path in g.glob_expand("/boot/vmlinuz-*"):
        version = path.removeprefix("/boot/vmlinuz-")
        moddir = f"/lib/modules/{version}"
        if not g.is_dir(moddir):
            continue
        names = {re.sub(r"\.ko(\.\w+)?$", "", p.rsplit("/", 1)[-1]).replace("-", "_")
                 for p in g.find(moddir) if re.search(r"\.ko(\.\w+)?$", p)}
        if g.is_file(f"{moddir}/modules.builtin"):
            names |= {re.sub(r"\.ko$", "", line.rsplit("/", 1)[-1]).replace("-", "_")
                      for line in g.read_lines(f"{moddir}/modules.builtin")}
        kernels.append(Kernel(version_key(version), version, frozenset(names)))
    return sorted(kernels, key=lambda k: ("debug" in k.version, tuple(-n for n in k.sort_key)))


def guest_caps(kernel: Kernel, arch: str) -> pb.GuestCaps:
    """What the converted guest can use, from what its kernel has."""
    virtio_blk = kernel.has("virtio_blk")
    virtio_1_0 = virtio_blk and kernel.sort_key[:2] >= (4, 0)
    return pb.GuestCaps(
        block_bus=pb.BLOCK_BUS_VIRTIO_BLK if virtio_blk else pb.BLOCK_BUS_IDE,
        net_bus=pb.NET_BUS_VIRTIO_NET if kernel.has("virtio_net") else pb.NET_BUS_E1000,
        machine=pb.MACHINE_Q35 if arch in ("x86_64", "i686") and virtio_1_0 else pb.MACHINE_I440FX,
        arch=arch,
        virtio_1_0=virtio_1_0,
        virtio_rng=kernel.has("virtio_rng"),
        virtio_balloon=kernel.has("virtio_balloon"),
        pvpanic=kernel.has("pvpanic"),
        virtio_socket=kernel.has("vmw_vsock_virtio_transport"),
        rtc_utc=True,
    )


class LinuxConversion:
    """Converts one mounted Linux guest. `run()` returns its GuestCaps."""

    def __init__(self, g: guestfs.GuestFS, insp: pb.Inspection, source: pb.Source, report: StepReporter) -> None:
        self.g = g
        self.insp = insp
        self.source = source
        self.report = report
        self.initramfs_stale = False

    def run(self) -> pb.GuestCaps:
        if self.insp.package_format != "deb":
            raise V2VError(f"converting {self.insp.product_name or self.insp.distro} is not supported yet "
                           f"(package format {self.insp.package_format or 'unknown'}); Debian and Ubuntu are",
                           pb.ERROR_CODE_UNSUPPORTED)
        with self.report.step("kernel"):
            kernel = self.choose_kernel()
            self.report.note(f"kernel {kernel.version}", step="kernel")
        caps = guest_caps(kernel, self.insp.arch)
        with self.report.step("remove-tools"):
            self.remove_hypervisor_tools()
        with self.report.step("devices"):
            self.rename_devices(caps.block_bus)
        with self.report.step("initramfs"):
            self.update_initramfs(kernel)
        return caps

    def choose_kernel(self) -> Kernel:
        kernels = list_kernels(self.g)
        if not kernels:
            raise V2VError("no kernel found in /boot with its modules in /lib/modules",
                           pb.ERROR_CODE_CONVERSION_FAILED)
        with_virtio = [k for k in kernels if k.has("virtio_blk")]
        if not with_virtio:
            self.report.warn(f"no installed kernel has virtio drivers; the guest will use IDE and e1000 "
                             f"(kernels: {', '.join(k.version for k in kernels)})")
        return (with_virtio or kernels)[0]

    def sh(self, command: str, what: str) -> str:
        try:
            return self.g.sh(command)
        except RuntimeError as exc:
            raise V2VError(f"{what} failed in the guest: {exc}", pb.ERROR_CODE_CONVERSION_FAILED,
                           detail=str(exc)) from None

    def remove_hypervisor_tools(self) -> None:
        installed = {app["app2_name"] for app in self.g.inspect_list_applications2(self.insp.root)}
        doomed = sorted(installed & HYPERVISOR_PACKAGES)
        if not doomed:
            return
        self.sh("DEBIAN_FRONTEND=noninteractive dpkg --purge " + " ".join(doomed) + " 2>&1",
                f"removing {', '.join(doomed)}")
        self.report.note(f"removed {', '.join(doomed)}", step="remove-tools")

    def rename_devices(self, bus: int) -> None:
        disks = len(self.source.disks)
        for path, in_initramfs in DEVICE_FILES.items():
            if not self.g.is_file(path):
                continue
            text = self.g.read_file(path).decode()
            new = remap(text, bus, disks)
            if new != text:
                self.g.write(path, new.encode())
                self.initramfs_stale |= in_initramfs
                self.report.note(f"renamed block devices in {path}", step="devices")

    def update_initramfs(self, kernel: Kernel) -> None:
        """Lists the virtio modules in /etc/initramfs-tools/modules (so the guest's own later
        rebuilds keep them) and rebuilds the chosen kernel's initramfs only if it lacks them."""
        if not self.g.is_file("/usr/sbin/update-initramfs"):
            self.report.warn("update-initramfs is missing: the initramfs was not rebuilt")
            return
        wanted = [m for m in VIRTIO_INITRAMFS_MODULES if kernel.has(m)]
        modules_file = "/etc/initramfs-tools/modules"
        listed = set()
        if self.g.is_file(modules_file):
            listed = {line.split()[0] for line in self.g.read_lines(modules_file) if line.strip()
                      and not line.lstrip().startswith("#")}
        missing = [m for m in wanted if m not in listed]
        if missing:
            self.g.write_append(modules_file, ("# added by v2v: drivers for KVM's virtio devices\n"
                                               + "".join(f"{m}\n" for m in missing)).encode())
        initrd = f"/boot/initrd.img-{kernel.version}"
        if self.g.is_file(initrd) and not self.initramfs_stale:
            content = self.sh(f"lsinitramfs {initrd} | grep -E '/virtio_(blk|pci)\\.ko' || true",
                              "listing the initramfs")
            if "virtio_blk" in content and "virtio_pci" in content:
                self.report.note(f"{initrd} already has the virtio drivers: not rebuilt", step="initramfs")
                return
        self.sh(f"update-initramfs -u -k {kernel.version} 2>&1", f"update-initramfs -k {kernel.version}")
        self.report.note(f"rebuilt {initrd} with {', '.join(wanted)}", step="initramfs")
