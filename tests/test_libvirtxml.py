"""The libvirt domain XML of -o local: every variant must pass libvirt's own schema."""

import shutil
import subprocess
import xml.etree.ElementTree as ET

import pytest

from tests.windows_targets import (
    server2022_bios,
    server2022_emulated_q35,
    win7_32bit,
    win11_uefi_secure_boot,
    xp_emulated,
)
from v2v.drives import device_name, drive_letters
from v2v.services.output.libvirtxml import LIBOSINFO_NAMESPACE, V2V_NAMESPACE, domain_xml
from v2v.v1 import types_pb2 as pb

GiB = 1024**3

pytestmark = pytest.mark.skipif(not shutil.which("xmllint"),
                                reason="virt-xml-validate needs xmllint (Debian package libxml2-utils)")


def make_target(bus=pb.BLOCK_BUS_VIRTIO_BLK, machine=pb.MACHINE_Q35, firmware=pb.FIRMWARE_BIOS,
                ndisks=1, **source_fields):
    source = pb.Source(name="guest", hypervisor=pb.HYPERVISOR_VMWARE, memory=2 * GiB, vcpus=2,
                       nics=[pb.Nic(network="default", network_type=pb.NETWORK_TYPE_NETWORK)], **source_fields)
    caps = pb.GuestCaps(block_bus=bus, net_bus=pb.NET_BUS_VIRTIO_NET, machine=machine, arch="x86_64",
                        virtio_rng=True, virtio_balloon=True, pvpanic=True, rtc_utc=True, virtio_socket=True)
    target = pb.TargetMeta(name="guest", source=source, caps=caps, firmware=firmware)
    disks = [pb.TargetDisk(index=i, path=f"/var/tmp/out/guest-sd{drive_letters(i)}", format="raw",
                           virtual_size=GiB, device=device_name(bus, i), bus=bus) for i in range(ndisks)]
    return target, disks


def validate(tmp_path, xml: str) -> ET.Element:
    path = tmp_path / "guest.xml"
    path.write_text(xml)
    res = subprocess.run(["virt-xml-validate", str(path), "domain"], capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr + xml
    return ET.fromstring(xml)


def test_bios_q35(tmp_path):
    target, disks = make_target()
    dom = validate(tmp_path, domain_xml(target, disks))
    assert dom.get("type") == "kvm"
    assert dom.findtext("name") == "guest"
    assert dom.findtext("memory") == str(2 * GiB // 1024) and dom.find("memory").get("unit") == "KiB"
    assert dom.findtext("vcpu") == "2"
    assert dom.find("cpu") is None
    assert dom.find("os").get("firmware") is None
    assert dom.find("os/type").attrib == {"arch": "x86_64", "machine": "q35"}
    assert dom.find("clock").get("offset") == "utc"
    disk = dom.find("devices/disk")
    assert disk.find("source").get("file") == "/var/tmp/out/guest-sda"
    assert disk.find("target").attrib == {"dev": "vda", "bus": "virtio"}
    assert disk.find("driver").get("type") == "raw"
    nic = dom.find("devices/interface")
    assert nic.get("type") == "network" and nic.find("source").get("network") == "default"
    assert nic.find("model").get("type") == "virtio" and nic.find("mac") is None
    assert dom.find("devices/rng/backend").text == "/dev/urandom"
    assert dom.find("devices/memballoon").get("model") == "virtio"
    assert dom.find("devices/panic").get("model") == "isa"
    # No vsock even when the kernel has it: a domain with one fails to start on a host without
    # /dev/vhost-vsock ("unable to open vhost-vsock device"), which virt-v2v's output risks.
    assert dom.find("devices/vsock") is None
    assert dom.find("devices/channel/target").attrib == {"type": "virtio", "name": "org.qemu.guest_agent.0"}
    meta = dom.find(f"metadata/{{{V2V_NAMESPACE}}}source")
    assert meta.attrib == {"name": "guest", "hypervisor": "vmware"}


def test_uefi_with_cpu_topology(tmp_path):
    target, disks = make_target(firmware=pb.FIRMWARE_UEFI,
                                cpu_topology=pb.CpuTopology(sockets=1, cores=2, threads=1))
    dom = validate(tmp_path, domain_xml(target, disks))
    assert dom.find("os").get("firmware") == "efi"
    assert dom.find("cpu/topology").attrib == {"sockets": "1", "cores": "2", "threads": "1"}


def test_virtio_scsi_has_its_controller(tmp_path):
    target, disks = make_target(bus=pb.BLOCK_BUS_VIRTIO_SCSI, ndisks=2)
    dom = validate(tmp_path, domain_xml(target, disks))
    assert [d.find("target").attrib for d in dom.findall("devices/disk")] == [
        {"dev": "sda", "bus": "scsi"}, {"dev": "sdb", "bus": "scsi"}]
    assert dom.find("devices/controller").attrib == {"type": "scsi", "index": "0", "model": "virtio-scsi"}


def test_ide_on_pc_with_old_devices(tmp_path):
    target, disks = make_target(bus=pb.BLOCK_BUS_IDE, machine=pb.MACHINE_I440FX,
                                removables=[pb.Removable(type=pb.REMOVABLE_TYPE_CDROM)])
    target.caps.net_bus = pb.NET_BUS_RTL8139
    target.caps.rtc_utc = target.caps.virtio_rng = target.caps.virtio_balloon = target.caps.pvpanic = False
    dom = validate(tmp_path, domain_xml(target, disks))
    assert dom.find("os/type").get("machine") == "pc"
    assert [d.find("target").attrib for d in dom.findall("devices/disk")] == [
        {"dev": "hda", "bus": "ide"}, {"dev": "hdb", "bus": "ide"}]
    assert dom.find("devices/interface/model").get("type") == "rtl8139"
    assert dom.find("clock").get("offset") == "localtime"
    assert dom.find("devices/memballoon").get("model") == "none"
    assert dom.find("devices/rng") is None and dom.find("devices/panic") is None


def test_many_disks_and_removables_do_not_share_names(tmp_path):
    target, disks = make_target(bus=pb.BLOCK_BUS_SATA, ndisks=28, removables=[
        pb.Removable(type=pb.REMOVABLE_TYPE_CDROM), pb.Removable(type=pb.REMOVABLE_TYPE_CDROM),
        pb.Removable(type=pb.REMOVABLE_TYPE_FLOPPY)])
    dom = validate(tmp_path, domain_xml(target, disks))
    devs = [d.find("target").get("dev") for d in dom.findall("devices/disk")]
    assert devs[25:28] == ["sdz", "sdaa", "sdab"]
    assert devs[28:] == ["sdac", "sdad", "fda"]
    cdroms = [d for d in dom.findall("devices/disk") if d.get("device") == "cdrom"]
    assert all(c.find("source") is None and c.find("target").get("bus") == "sata" for c in cdroms)


def test_bridge_and_mapped_nics(tmp_path):
    target, disks = make_target()
    target.nics.extend([pb.Nic(mac="52:54:00:12:34:56", network="br0", network_type=pb.NETWORK_TYPE_BRIDGE),
                        pb.Nic(network="lan", network_type=pb.NETWORK_TYPE_NETWORK)])
    target.caps.net_bus = pb.NET_BUS_E1000
    dom = validate(tmp_path, domain_xml(target, disks))
    nics = dom.findall("devices/interface")
    assert len(nics) == 2  # target.nics replace the source's
    assert nics[0].get("type") == "bridge" and nics[0].find("source").attrib == {"bridge": "br0"}
    assert nics[0].find("mac").get("address") == "52:54:00:12:34:56"
    assert nics[1].find("source").attrib == {"network": "lan"}
    assert {n.find("model").get("type") for n in nics} == {"e1000"}


def test_qcow2_disk_and_unknown_machine(tmp_path):
    target, disks = make_target(machine=pb.MACHINE_UNSPECIFIED)
    disks[0].format = "qcow2"
    target.source.hypervisor = pb.HYPERVISOR_UNSPECIFIED
    dom = validate(tmp_path, domain_xml(target, disks))
    assert dom.find("devices/disk/driver").get("type") == "qcow2"
    assert dom.find("os/type").get("machine") is None  # libvirt picks its default
    assert dom.find(f"metadata/{{{V2V_NAMESPACE}}}source").get("hypervisor") == "unknown"


# ---------------------------------------------------------------- Windows (tests/windows_targets.py)

def windows_domain(tmp_path, target: pb.TargetMeta) -> ET.Element:
    return validate(tmp_path, domain_xml(target, list(target.disks)))


def libosinfo_id(dom: ET.Element) -> str | None:
    os_el = dom.find(f"metadata/{{{LIBOSINFO_NAMESPACE}}}libosinfo/{{{LIBOSINFO_NAMESPACE}}}os")
    return None if os_el is None else os_el.get("id")


def assert_windows_preset(dom: ET.Element) -> None:
    hyperv = dom.find("features/hyperv")
    assert hyperv.get("mode") == "custom"
    assert [(el.tag, el.attrib) for el in hyperv] == [
        ("relaxed", {"state": "on"}), ("vapic", {"state": "on"}), ("spinlocks", {"state": "on", "retries": "8191"}),
        ("vpindex", {"state": "on"}), ("runtime", {"state": "on"}), ("synic", {"state": "on"}),
        ("stimer", {"state": "on"}), ("reset", {"state": "on"}), ("frequencies", {"state": "on"}),
        ("tlbflush", {"state": "on"}), ("ipi", {"state": "on"})]
    clock = dom.find("clock")
    assert clock.get("offset") == "localtime"  # rtc_utc False: RealTimeIsUniversal unset
    assert [t.attrib for t in clock.findall("timer")] == [
        {"name": "rtc", "tickpolicy": "catchup"}, {"name": "pit", "tickpolicy": "delay"},
        {"name": "hpet", "present": "no"}, {"name": "hypervclock", "present": "yes"}]
    assert dom.find("devices/input").attrib == {"type": "tablet", "bus": "usb"}  # an absolute pointer


def test_windows_server_2022_bios_virtio(tmp_path):
    dom = windows_domain(tmp_path, server2022_bios())
    assert_windows_preset(dom)
    # virt-v2v 2.2 writes http://microsoft.com/win/2k16 here.
    assert libosinfo_id(dom) == "http://microsoft.com/win/2k22"
    assert dom.find("os/type").attrib == {"arch": "x86_64", "machine": "q35"}
    assert dom.find("os").get("firmware") is None
    assert dom.find("devices/disk/target").attrib == {"dev": "vda", "bus": "virtio"}
    assert dom.find("devices/interface/model").get("type") == "virtio"
    panic = dom.find("devices/panic")
    assert panic.get("model") == "isa" and panic.find("address").attrib == {"type": "isa", "iobase": "0x505"}
    assert dom.find("devices/rng") is not None and dom.find("devices/memballoon").get("model") == "virtio"


def test_windows_11_uefi_secure_boot(tmp_path):
    dom = windows_domain(tmp_path, win11_uefi_secure_boot())
    assert_windows_preset(dom)
    assert libosinfo_id(dom) == "http://microsoft.com/win/11"
    assert dom.find("os").get("firmware") == "efi"
    assert dom.find("os/loader").get("secure") == "yes"
    assert dom.find("features/smm").get("state") == "on"


def test_windows_xp_emulated_on_i440fx(tmp_path):
    dom = windows_domain(tmp_path, xp_emulated())
    assert_windows_preset(dom)
    assert libosinfo_id(dom) == "http://microsoft.com/win/xp"
    assert dom.find("os/type").attrib == {"arch": "i686", "machine": "pc"}
    assert [d.find("target").attrib for d in dom.findall("devices/disk")] == [
        {"dev": "hda", "bus": "ide"}, {"dev": "hdb", "bus": "ide"}]
    assert dom.find("devices/interface/model").get("type") == "rtl8139"
    assert dom.find("devices/rng") is None and dom.find("devices/panic") is None
    assert dom.find("devices/memballoon").get("model") == "none"


def test_windows_without_drivers_on_q35_is_on_sata(tmp_path):
    dom = windows_domain(tmp_path, server2022_emulated_q35())
    # q35 has no IDE: the disks IDE-driving Windows boots from are on its AHCI, named as SATA ones.
    assert [d.find("target").attrib for d in dom.findall("devices/disk")] == [
        {"dev": "sda", "bus": "sata"}, {"dev": "sdb", "bus": "sata"}]
    assert dom.find("devices/interface/model").get("type") == "rtl8139"


def test_windows_7_32bit(tmp_path):
    dom = windows_domain(tmp_path, win7_32bit())
    assert_windows_preset(dom)
    assert libosinfo_id(dom) == "http://microsoft.com/win/7"
    # libguestfs's i386 is libvirt's i686.
    assert dom.find("os/type").attrib == {"arch": "i686", "machine": "q35"}


def test_linux_has_no_windows_preset_nor_osinfo(tmp_path):
    target, disks = make_target()
    dom = validate(tmp_path, domain_xml(target, disks))
    assert dom.find("features/hyperv") is None and dom.find("clock/timer") is None
    assert libosinfo_id(dom) is None
