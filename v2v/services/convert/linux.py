"""Linux conversion: make a guest from another hypervisor boot and run well on KVM.

Families: Debian (dpkg, initramfs-tools), RHEL/Fedora (rpm, dnf/yum, dracut, grubby) and SUSE
(rpm, zypper, dracut or mkinitrd). Each part is a timed sub-step of `convert`; the parts live in
their own modules (kernels, hypervisor_tools, devices, guest_config, initramfs, bootloader,
guest_agent)."""

from __future__ import annotations

import guestfs

from v2v.drives import target_bus
from v2v.events import StepReporter
from v2v.services.convert.bootloader import Bootloader, config_files, kvm_console
from v2v.services.convert.caps import guest_caps
from v2v.services.convert.checks import check_free_space
from v2v.services.convert.devices import remap
from v2v.services.convert.family import Family, family_of
from v2v.services.convert.guest_agent import GuestAgent
from v2v.services.convert.guest_config import GuestConfig
from v2v.services.convert.guest_os import Converted, register
from v2v.services.convert.hypervisor_tools import HypervisorTools
from v2v.services.convert.initramfs import Initramfs
from v2v.services.convert.kernels import Kernel, choose_kernel, list_kernels
from v2v.services.convert.lvm import retarget_lvm_filters
from v2v.services.convert.netconfig import NetworkIdentity
from v2v.services.convert.packages import installed_packages, package_manager
from v2v.services.convert.secure_boot import wants_secure_boot
from v2v.v1 import convert_pb2
from v2v.v1 import types_pb2 as pb

# Files that name block devices besides the bootloader's; True: the initramfs embeds it.
DEVICE_FILES = {
    "/etc/fstab": False,
    "/etc/crypttab": True,
    "/etc/initramfs-tools/conf.d/resume": True,
    "/etc/lvm/lvm.conf": True,
    "/etc/sysconfig/kernel": False,
}
# RHEL 9's LVM devices file names PVs by their disks' serial numbers, which the new disks do not
# have: LVM would ignore the root PV. Without the file LVM scans every disk, as before RHEL 9.
LVM_DEVICES_FILE = "/etc/lvm/devices/system.devices"
_INITRD_NAME = {Family.DEBIAN: "/boot/initrd.img-{v}", Family.RHEL: "/boot/initramfs-{v}.img",
                Family.SUSE: "/boot/initrd-{v}"}


class LinuxConversion:
    """Converts one mounted Linux guest. `run()` returns its GuestCaps."""

    def __init__(self, g: guestfs.GuestFS, insp: pb.Inspection, source: pb.Source, report: StepReporter,
                 mounted: list[str] | None = None, block_driver: int = pb.BLOCK_BUS_UNSPECIFIED) -> None:
        self.g = g
        self.insp = insp
        self.source = source
        self.report = report
        self.mounted = mounted if mounted is not None else ["/"]
        self.block_driver = block_driver
        self.family = family_of(insp)
        self.manager = package_manager(insp)
        self.initramfs_stale = False
        self.boot_config_changed: list[str] = []

    def run(self) -> pb.GuestCaps:
        with self.report.step("free-space"):
            check_free_space(self.g, self.mounted, self.report)
        with self.report.step("kernel"):
            for lock in self.g.glob_expand("/var/lib/rpm/__db.00?"):
                self.g.rm_f(lock)  # stale Berkeley DB environment files hang old rpm (RHBZ#1143866)
            kernels = list_kernels(self.g, _INITRD_NAME[self.family])
            kernel = choose_kernel(kernels)
            if not kernel.virtio:
                self.report.warn(f"no installed kernel has virtio drivers; the guest will use IDE and e1000 "
                                 f"(kernels: {', '.join(k.version for k in kernels)})", step="kernel")
            self.report.note(f"kernel {kernel.version}", step="kernel")
        with self.report.step("secure-boot"):
            secure_boot = wants_secure_boot(self.g, self.source, self.insp, kernel, self.report)
        config = GuestConfig(self.g, self.report)
        caps = guest_caps(kernel, self.family, self.insp, self.block_driver, rtc_utc=config.rtc_utc(),
                          secure_boot=secure_boot)
        installed = installed_packages(self.g, self.insp.root)
        with self.report.step("remove-tools"):
            HypervisorTools(self.g, self.family, self.insp, self.manager, self.report).run(installed)
        with self.report.step("devices"):
            # The names the target gives the disks: IDE on q35 is SATA (sdX), as the outputs make it.
            self.rename_devices(target_bus(caps))
            self.initramfs_stale |= retarget_lvm_filters(self.g, target_bus(caps), self.report, "devices")
        with self.report.step("config"):
            config.consoles()
            config.video()
            self.initramfs_stale |= config.modules(caps.block_bus, caps.net_bus)
            config.selinux()
        with self.report.step("initramfs"):
            Initramfs(self.g, self.family, self.insp, self.report).run(kernel, self.initramfs_stale)
        with self.report.step("bootloader"):
            self.bootloader(kernel, kernels)
        with self.report.step("guest-agent"):
            GuestAgent(self.g, self.manager, self.report).run(installed)
        return caps

    def bootloader(self, kernel: Kernel, kernels: list[Kernel]) -> None:
        bootloader = Bootloader(self.g, self.family, self.insp, self.report)
        bootloader.set_default(kernel, kernels)
        bootloader.regenerate(self.boot_config_changed)
        bootloader.repair_uefi_fallback()

    def rename_devices(self, bus: pb.BlockBus) -> None:
        """Device names for the target bus in every file that names them, and the Xen console
        on the kernel command line, in one pass over each file."""
        disks = len(self.source.disks)
        boot_files = config_files(self.g)
        for path in [*DEVICE_FILES, *boot_files]:
            if not self.g.is_file(path, followsymlinks=True):
                continue
            text = self.g.read_file(path).decode(errors="replace")
            new = remap(text, bus, disks)
            if path in boot_files:
                new = kvm_console(new)
            if new != text:
                self.g.write(path, new.encode())
                self.initramfs_stale |= DEVICE_FILES.get(path, False)
                if path in boot_files:
                    self.boot_config_changed.append(path)
                self.report.note(f"renamed block devices in {path}", step="devices")
        if self.g.is_file(LVM_DEVICES_FILE):
            self.g.mv(LVM_DEVICES_FILE, f"{LVM_DEVICES_FILE}.pre-v2v")
            self.initramfs_stale = True
            self.report.note(f"moved {LVM_DEVICES_FILE} aside (it names the source's disks)", step="devices")


@register("linux")
def convert_linux(g: guestfs.GuestFS, insp: pb.Inspection, request: convert_pb2.ConvertRequest,
                  report: StepReporter, mounted: list[str]) -> Converted:
    source = request.source
    # Before the conversion, so an initramfs it rebuilds already holds the NIC names pinned.
    with report.step("network"):
        kept = NetworkIdentity(g, source, list(request.networks.static_ips), request.target_name or source.name,
                               report).run()
    caps = LinuxConversion(g, insp, source, report, mounted, request.options.block_driver).run()
    return Converted(caps, [k.mac for k in kept], list(request.networks.static_ips), [k.name for k in kept])
