"""The libvirt domain XML of a converted guest: what -o local writes next to the disks, and what
-o libvirt would define."""

from __future__ import annotations

import xml.etree.ElementTree as ET

from v2v.drives import device_prefix, drive_letters
from v2v.osinfo import os_id
from v2v.v1 import types_pb2 as pb

V2V_NAMESPACE = "https://v2v.dev/ns/v1"
# Where virt-manager, virt-install and virt-v2v put the guest's OS, for management tools' defaults.
LIBOSINFO_NAMESPACE = "http://libosinfo.org/xmlns/libvirt/domain/1.0"

# The Hyper-V enlightenments virt-manager enables for Windows (and libvirt's docs recommend): each
# is a paravirtual interface Windows uses when it finds it, instead of slower emulated hardware.
HYPERV_FEATURES = ("relaxed", "vapic", "spinlocks", "vpindex", "runtime", "synic", "stimer", "reset",
                   "frequencies", "tlbflush", "ipi")
# Windows' own default: retry a spinlock 8191 times before telling the hypervisor it waits.
HYPERV_SPINLOCK_RETRIES = 8191
# The ISA port of Windows' pvpanic driver (pvpanic.inf), qemu's default one.
PVPANIC_IOBASE = "0x505"

_MACHINE = {pb.MACHINE_I440FX: "pc", pb.MACHINE_Q35: "q35", pb.MACHINE_VIRT: "virt"}
_DISK_BUS = {
    pb.BLOCK_BUS_VIRTIO_BLK: "virtio",
    pb.BLOCK_BUS_VIRTIO_SCSI: "scsi",
    pb.BLOCK_BUS_SATA: "sata",
    pb.BLOCK_BUS_IDE: "ide",
}
# A guest convert did not describe gets virtio, like its disks (v2v.drives.DEFAULT_BLOCK_BUS).
_NIC_MODEL = {pb.NET_BUS_E1000: "e1000", pb.NET_BUS_RTL8139: "rtl8139"}
# libguestfs says i386 for 32-bit x86 (every 32-bit Windows), which libvirt's schema refuses: its
# one name for that architecture is i686.
_LIBVIRT_ARCH = {"i386": "i686", "i486": "i686", "i586": "i686"}


def _hypervisor_name(hypervisor: pb.Hypervisor) -> str:
    if hypervisor == pb.HYPERVISOR_UNSPECIFIED:
        return "unknown"
    return pb.Hypervisor.Name(hypervisor).removeprefix("HYPERVISOR_").lower()


def _sub(parent: ET.Element, tag: str, text: str = "", **attrs: str) -> ET.Element:
    el = ET.SubElement(parent, tag, attrs)
    if text:
        el.text = text
    return el


def libvirt_arch(arch: str) -> str:
    """libvirt's name of an architecture as inspection or convert name it."""
    return _LIBVIRT_ARCH.get(arch, arch)


def _os(domain: ET.Element, target: pb.TargetMeta) -> None:
    os_el = _sub(domain, "os")
    if target.firmware == pb.FIRMWARE_UEFI:
        os_el.set("firmware", "efi")
    arch = target.caps.arch or target.inspection.arch or "x86_64"
    type_el = _sub(os_el, "type", "hvm", arch=libvirt_arch(arch))
    if target.caps.machine in _MACHINE:
        type_el.set("machine", _MACHINE[target.caps.machine])
    if target.firmware == pb.FIRMWARE_UEFI:
        _secure_boot(os_el, target.caps.secure_boot)


def _secure_boot(os_el: ET.Element, on: bool) -> None:
    """Said either way: given only firmware='efi', libvirt picks the first firmware descriptor, which
    on Debian is OVMF with secure boot and Microsoft's keys, and an unsigned guest would not boot.
    The firmware features are how libvirt 8.6+ asks; <loader secure='yes'/>, how 7.2-8.5 did
    (libvirt 9 refuses secure='no' beside autoselection, so off is said by the feature alone)."""
    if on:
        _sub(os_el, "loader", secure="yes")
    firmware = _sub(os_el, "firmware")
    _sub(firmware, "feature", enabled="yes" if on else "no", name="secure-boot")
    if on:
        _sub(firmware, "feature", enabled="yes", name="enrolled-keys")


def _cpu(domain: ET.Element, source: pb.Source) -> None:
    _sub(domain, "vcpu", str(max(source.vcpus, 1)))
    if source.HasField("cpu_topology"):
        topo = source.cpu_topology
        cpu = _sub(domain, "cpu")
        _sub(cpu, "topology", sockets=str(max(topo.sockets, 1)), cores=str(max(topo.cores, 1)),
             threads=str(max(topo.threads, 1)))


def _disks(devices: ET.Element, target: pb.TargetMeta, disks: list[pb.TargetDisk]) -> None:
    used: set[str] = set()
    for disk in disks:
        el = _sub(devices, "disk", type="file", device="disk")
        _sub(el, "driver", name="qemu", type=disk.format)
        _sub(el, "source", file=disk.path)
        _sub(el, "target", dev=disk.device, bus=_DISK_BUS[disk.bus])
        used.add(disk.device)
    if any(disk.bus == pb.BLOCK_BUS_VIRTIO_SCSI for disk in disks):
        _sub(devices, "controller", type="scsi", index="0", model="virtio-scsi")
    _removables(devices, target, used)


def _removables(devices: ET.Element, target: pb.TargetMeta, used: set[str]) -> None:
    """Empty CD-ROM and floppy drives, on the first names their bus's disks left free. q35 has no
    IDE controller, so its CD-ROMs go on SATA."""
    cdrom_bus = pb.BLOCK_BUS_SATA if target.caps.machine == pb.MACHINE_Q35 else pb.BLOCK_BUS_IDE

    def free_name(prefix: str) -> str:
        index = 0
        while prefix + drive_letters(index) in used:
            index += 1
        used.add(prefix + drive_letters(index))
        return prefix + drive_letters(index)

    for removable in target.source.removables:
        if removable.type == pb.REMOVABLE_TYPE_FLOPPY:
            el = _sub(devices, "disk", type="file", device="floppy")
            _sub(el, "target", dev=free_name("fd"), bus="fdc")
        else:
            el = _sub(devices, "disk", type="file", device="cdrom")
            _sub(el, "driver", name="qemu", type="raw")
            _sub(el, "target", dev=free_name(device_prefix(cdrom_bus)), bus=_DISK_BUS[cdrom_bus])
            _sub(el, "readonly")


def _nics(devices: ET.Element, target: pb.TargetMeta) -> None:
    model = _NIC_MODEL.get(target.caps.net_bus, "virtio")
    for nic in target.nics or target.source.nics:
        kind = "bridge" if nic.network_type == pb.NETWORK_TYPE_BRIDGE else "network"
        el = _sub(devices, "interface", type=kind)
        _sub(el, "source", **{kind: nic.network or "default"})
        _sub(el, "model", type=model)
        if nic.mac:
            _sub(el, "mac", address=nic.mac)


def _devices(domain: ET.Element, target: pb.TargetMeta, disks: list[pb.TargetDisk]) -> None:
    caps = target.caps
    devices = _sub(domain, "devices")
    _disks(devices, target, disks)
    _nics(devices, target)
    _sub(devices, "input", type="tablet", bus="usb")
    _sub(devices, "graphics", type="vnc", autoport="yes")
    _sub(_sub(devices, "video"), "model", type="vga")
    if caps.virtio_rng:
        _sub(_sub(devices, "rng", model="virtio"), "backend", "/dev/urandom", model="random")
    _sub(devices, "memballoon", model="virtio" if caps.virtio_balloon else "none")
    if caps.pvpanic:
        _sub(_sub(devices, "panic", model="isa"), "address", type="isa", iobase=PVPANIC_IOBASE)
    # The conversion installs qemu-guest-agent (or has it installed at first boot): give it its
    # channel, so management can reach the guest (shutdown, fsfreeze, addresses) as virt-v2v's does.
    _sub(_sub(devices, "channel", type="unix"), "target", type="virtio", name="org.qemu.guest_agent.0")
    _sub(devices, "serial", type="pty")
    _sub(devices, "console", type="pty")


def _metadata(domain: ET.Element, target: pb.TargetMeta) -> None:
    # The prefixes are spelled out rather than registered with ElementTree, which would hoist the
    # declarations to <domain> and change a process-wide table.
    source = target.source
    metadata = _sub(domain, "metadata")
    _sub(metadata, "v2v:source", **{"xmlns:v2v": V2V_NAMESPACE, "name": source.name,
                                    "hypervisor": _hypervisor_name(source.hypervisor)})
    if osinfo := os_id(target.inspection):
        _sub(_sub(metadata, "libosinfo:libosinfo", **{"xmlns:libosinfo": LIBOSINFO_NAMESPACE}),
             "libosinfo:os", id=osinfo)


def _features(domain: ET.Element, target: pb.TargetMeta) -> None:
    features = _sub(domain, "features")
    _sub(features, "acpi")
    _sub(features, "apic")
    if target.caps.hyperv:
        # mode='custom': exactly these, not 'passthrough' (whatever this host has, which a host
        # the guest migrates to may not).
        hyperv = _sub(features, "hyperv", mode="custom")
        for name in HYPERV_FEATURES:
            el = _sub(hyperv, name, state="on")
            if name == "spinlocks":
                el.set("retries", str(HYPERV_SPINLOCK_RETRIES))
    if target.caps.secure_boot and target.firmware == pb.FIRMWARE_UEFI:
        _sub(features, "smm", state="on")  # secure boot's firmware keeps its variables in SMM


def _clock(domain: ET.Element, caps: pb.GuestCaps) -> None:
    clock = _sub(domain, "clock", offset="utc" if caps.rtc_utc else "localtime")
    if caps.hyperv:
        # virt-manager's timers for Windows: ticks lost while the VM was descheduled are caught up
        # (rtc) or delayed (pit) rather than dropped, so the guest's clock does not drift; no HPET,
        # an emulated timer that costs exits, as Hyper-V's clock (hypervclock) is there instead.
        _sub(clock, "timer", name="rtc", tickpolicy="catchup")
        _sub(clock, "timer", name="pit", tickpolicy="delay")
        _sub(clock, "timer", name="hpet", present="no")
        _sub(clock, "timer", name="hypervclock", present="yes")


def domain_xml(target: pb.TargetMeta, disks: list[pb.TargetDisk], domain_type: str = "kvm",
               uuid: str = "") -> str:
    """The domain of the converted guest, with `disks` as its disks (in that order). `domain_type`
    "qemu" is software emulation, for hosts where KVM cannot run guests; `uuid` "" lets libvirt pick."""
    source = target.source
    domain = ET.Element("domain", type=domain_type)
    _sub(domain, "name", target.name or source.name)
    if uuid:
        _sub(domain, "uuid", uuid)
    _metadata(domain, target)
    _sub(domain, "memory", str(source.memory // 1024), unit="KiB")
    _cpu(domain, source)
    _os(domain, target)
    _features(domain, target)
    _clock(domain, target.caps)
    _sub(domain, "on_poweroff", "destroy")
    _sub(domain, "on_reboot", "restart")
    _sub(domain, "on_crash", "restart")
    _devices(domain, target, disks)
    ET.indent(domain)
    return ET.tostring(domain, encoding="unicode") + "\n"
