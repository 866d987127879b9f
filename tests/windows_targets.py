"""Windows targets as convert leaves them (v2v/services/convert/windows*.py), built by hand so the
outputs' tests need no guest: Server 2022 BIOS on virtio, Windows 11 UEFI with secure boot, XP on
the emulated fallback (i440fx, IDE, rtl8139), 7 32-bit on virtio."""

from __future__ import annotations

from v2v.drives import device_name, drive_letters, target_bus
from v2v.v1 import types_pb2 as pb

MiB = 1024**2
GiB = 1024**3
MAC = "52:54:00:12:34:56"


def windows_target(osinfo: str, *, major: int, minor: int, arch: str = "x86_64", firmware: int = pb.FIRMWARE_BIOS,
                   secure_boot: bool = False, emulated: bool = False, machine: int = pb.MACHINE_Q35,
                   directory: str = "/var/tmp/out", ndisks: int = 1, name: str = "guest") -> pb.TargetMeta:
    """A Windows target with the devices convert gives a guest with virtio-win drivers (all of them),
    or without any (`emulated`); its disks at `directory`/NAME-sdX (not created)."""
    inspection = pb.Inspection(type="windows", distro="windows", product_name=f"Windows {osinfo}",
                               major_version=major, minor_version=minor, arch=arch,
                               windows=pb.WindowsInfo(product_variant="Server" if "2k" in osinfo else "Client",
                                                      osinfo=osinfo, systemroot="/Windows",
                                                      current_control_set="ControlSet001"))
    caps = pb.GuestCaps(block_bus=pb.BLOCK_BUS_IDE if emulated else pb.BLOCK_BUS_VIRTIO_BLK,
                        net_bus=pb.NET_BUS_RTL8139 if emulated else pb.NET_BUS_VIRTIO_NET,
                        machine=machine, arch=arch, virtio_1_0=True, virtio_rng=not emulated,
                        virtio_balloon=not emulated, pvpanic=not emulated, virtio_socket=not emulated,
                        rtc_utc=False, secure_boot=secure_boot, hyperv=True, emulated_devices=emulated)
    source = pb.Source(name=name, hypervisor=pb.HYPERVISOR_VMWARE, memory=2 * GiB, vcpus=2, firmware=firmware,
                       disks=[pb.SourceDisk(index=i, virtual_size=16 * MiB) for i in range(ndisks)],
                       nics=[pb.Nic(mac=MAC, network="default", network_type=pb.NETWORK_TYPE_NETWORK)])
    bus = target_bus(caps)
    disks = [pb.TargetDisk(index=i, path=f"{directory}/{name}-sd{drive_letters(i)}", format="raw",
                           virtual_size=16 * MiB, device=device_name(bus, i), bus=bus) for i in range(ndisks)]
    return pb.TargetMeta(name=name, source=source, inspection=inspection, caps=caps, firmware=firmware,
                         disks=disks, nics=[pb.Nic(mac=MAC, network="default", network_type=pb.NETWORK_TYPE_NETWORK)])


def server2022_bios(directory: str = "/var/tmp/out", name: str = "guest") -> pb.TargetMeta:
    return windows_target("win2k22", major=10, minor=0, directory=directory, name=name)


def win11_uefi_secure_boot(directory: str = "/var/tmp/out", name: str = "guest") -> pb.TargetMeta:
    return windows_target("win11", major=10, minor=0, firmware=pb.FIRMWARE_UEFI, secure_boot=True,
                          directory=directory, name=name)


def xp_emulated(directory: str = "/var/tmp/out", name: str = "guest") -> pb.TargetMeta:
    # Windows major < 6 gets i440fx; no virtio-win driver exists for XP any more: IDE and rtl8139.
    return windows_target("winxp", major=5, minor=1, arch="i386", machine=pb.MACHINE_I440FX, emulated=True,
                          directory=directory, ndisks=2, name=name)


def win7_32bit(directory: str = "/var/tmp/out", name: str = "guest") -> pb.TargetMeta:
    return windows_target("win7", major=6, minor=1, arch="i386", directory=directory, name=name)


def server2022_emulated_q35(directory: str = "/var/tmp/out", name: str = "guest") -> pb.TargetMeta:
    """No drivers on a q35 guest (§2.7 of the spec): IDE, which the target puts on SATA."""
    return windows_target("win2k22", major=10, minor=0, emulated=True, directory=directory, ndisks=2, name=name)
