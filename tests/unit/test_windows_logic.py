"""The pure parts of the Windows conversion: osinfo ids, virtio-win matching, registry encoding,
static IP tying and the scripts' text (docs/conversion.md, ../shared/docs/windows-conversion.md)."""

from __future__ import annotations

import pytest

from v2v.services.convert.registry import REG_DWORD, REG_MULTI_SZ, REG_SZ, decode_multi, decode_string, encode
from v2v.services.convert.virtio_win import fits, qemu_ga_msi, select
from v2v.services.convert.windows import antivirus
from v2v.services.convert.windows_drivers import block_driver, ddb_label
from v2v.services.convert.windows_firstboot import script_name
from v2v.services.convert.windows_inspection import osinfo_id
from v2v.services.convert.windows_network import Adapter, powershell, static_ips, tie
from v2v.v1 import types_pb2 as pb


@pytest.mark.parametrize(("major", "minor", "variant", "name", "build", "expected"), [
    (5, 1, "Client", "Microsoft Windows XP", 2600, "winxp"),
    (5, 2, "Server", "Windows Server 2003 R2", 3790, "win2k3r2"),
    (6, 1, "Client", "Windows 7 Professional", 7601, "win7"),
    (6, 1, "Server", "Windows Server 2008 R2 Standard", 7601, "win2k8r2"),
    (6, 3, "Server", "Windows Server 2012 R2", 9600, "win2k12r2"),
    (10, 0, "Client", "Windows 10 Pro", 19045, "win10"),
    (10, 0, "Client", "Windows 10 Pro", 22631, "win11"),  # Windows 11 still says "Windows 10" in ProductName
    (10, 0, "Server", "Windows Server 2016 Standard", 14393, "win2k16"),
    (10, 0, "Server", "Windows Server 2019 Datacenter", 17763, "win2k19"),
    (10, 0, "Server", "Windows Server 2022 Standard", 20348, "win2k22"),  # 2.2's libvirt XML says 2k16
    (10, 0, "Server Core", "Windows Server 2025 Datacenter", 26100, "win2k25"),
])
def test_osinfo_ids_follow_upstream_current_rules(major: int, minor: int, variant: str, name: str, build: int,
                                                   expected: str) -> None:
    assert osinfo_id(major, minor, variant, name, build) == expected


TREE = [
    # the ISO: Driver/os/arch
    "viostor/2k22/amd64/viostor.sys", "viostor/2k22/amd64/viostor.inf", "viostor/2k22/amd64/viostor.cat",
    "viostor/2k22/amd64/viostor.pdb", "viostor/w7/x86/viostor.sys", "viostor/2k8r2/amd64/viostor.sys",
    "NetKVM/2k22/amd64/netkvm.inf", "NetKVM/2k22/amd64/netkvm.sys", "vioscsi/2k22/amd64/vioscsi.sys",
    "sriov/2k22/amd64/vioprot.inf", "NetKVM/2k22/amd64/vioprot.inf",
    "fwcfg/2k22/amd64/fwcfg.inf", "qemufwcfg/2k22/amd64/qemufwcfg.inf",
    "Balloon/2k22/amd64/blnsvr.exe", "Balloon/2k22/amd64/balloon.inf",
    # the RPM's by-os tree and its legacy names
    "drivers/by-os/amd64/2k22/viorng.inf", "drivers/amd64/Win2022/pvpanic.inf",
    "drivers/by-os/i386/w7/netkvm.inf",
    # the agent, by arch, anywhere
    "guest-agent/qemu-ga-x86_64.msi", "guest-agent/qemu-ga-i386.msi",
    "virtio-win_license.txt",
]


def test_the_2022_guest_gets_its_drivers_from_every_layout_and_nothing_else() -> None:
    sel = select(TREE, "win2k22", "x86_64")
    assert sorted(sel.drivers) == ["balloon.inf", "blnsvr.exe", "fwcfg.inf", "netkvm.inf", "netkvm.sys", "pvpanic.inf",
                                   "viorng.inf", "vioscsi.sys", "viostor.cat", "viostor.inf", "viostor.sys"]
    assert sel.drivers["viostor.sys"] == "viostor/2k22/amd64/viostor.sys"
    assert sel.qemu_ga == "guest-agent/qemu-ga-x86_64.msi"


def test_arch_and_version_must_both_match() -> None:
    sel = select(TREE, "win7", "i386")
    assert sorted(sel.drivers) == ["netkvm.inf", "viostor.sys"]
    assert sel.drivers["viostor.sys"] == "viostor/w7/x86/viostor.sys"
    assert sel.qemu_ga == "guest-agent/qemu-ga-i386.msi"
    assert not fits("viostor/2k8r2/amd64/viostor.sys", "win2k8", "x86_64")  # "2k8" is not "2k8r2"
    assert fits("viostor/2k8r2/amd64/viostor.sys", "win2k8r2", "x86_64")
    assert select(TREE, "winxp", "i386").drivers == {}


def test_pdb_vioprot_and_qemufwcfg_beside_fwcfg_are_left_out() -> None:
    sel = select(TREE, "win2k22", "x86_64")
    assert not [n for n in sel.drivers if n.endswith(".pdb") or n.startswith(("vioprot", "qemufwcfg"))]
    assert "qemufwcfg.inf" in select([p for p in TREE if "/fwcfg/" not in p and not p.startswith("fwcfg")],
                                     "win2k22", "x86_64").drivers


def test_boot_driver_choice_and_label() -> None:
    sel = select(TREE, "win2k22", "x86_64")
    assert block_driver(sel, pb.BLOCK_BUS_UNSPECIFIED) == "viostor"
    assert block_driver(sel, pb.BLOCK_BUS_VIRTIO_SCSI) == "vioscsi"
    assert block_driver(select(TREE, "winxp", "i386"), pb.BLOCK_BUS_VIRTIO_BLK) == ""
    assert ddb_label("x86_64") == "guestor.inf_amd64_0000000000000000"  # not 2.2's guestor.inf_tmp
    assert ddb_label("i386") == "guestor.inf_x86_0000000000000000"
    assert qemu_ga_msi(["a/RHEV-QGA64.MSI"], "x86_64") == "a/RHEV-QGA64.MSI"


def test_registry_values_encode_as_windows_stores_them() -> None:
    assert encode(REG_SZ, "ab") == b"a\0b\0\0\0"
    assert encode(REG_MULTI_SZ, ["a", "b"]) == b"a\0\0\0b\0\0\0\0\0"
    assert encode(REG_DWORD, 4) == b"\x04\0\0\0"
    # The Xen PV UninstallString as a real hive holds it: its terminating NUL is not part of the text.
    assert decode_string("C:\\x\\uninst.exe".encode("utf-16-le") + b"\0\0") == "C:\\x\\uninst.exe"
    assert decode_multi(encode(REG_MULTI_SZ, ["prl_strg", "EhStorClass"])) == ["prl_strg", "EhStorClass"]


def test_antivirus_by_display_name_and_publisher_not_key_name() -> None:
    apps = [pb.Application(key="KES", display_name="Kaspersky Endpoint Security", publisher="AO Kaspersky Lab"),
            pb.Application(key="{1234}", display_name="Some Tool", publisher="AVG Technologies"),
            pb.Application(key="7-Zip", display_name="7-Zip 19.00", publisher="Igor Pavlov")]
    assert antivirus(apps) == ["Kaspersky Endpoint Security", "Some Tool"]


MACS = ["00:50:56:aa:00:01", "00:50:56:aa:00:02", "00:50:56:aa:00:03"]


def adapter(guid: str, name: str = "", mac: str = "") -> Adapter:
    return Adapter(guid, name, mac, [("10.0.0.5", 24)], ["10.0.0.1"], ["10.0.0.2", "10.0.0.3"])


def test_adapters_tie_by_network_address_then_vmware_connection_name() -> None:
    tied, left = tie([adapter("{A}", "Ethernet0", mac=MACS[2]), adapter("{B}", "Ethernet1"),
                      adapter("{C}", "Ethernet 7"), adapter("{D}", "Ethernet9")], MACS)
    assert {m: a.guid for m, a in tied.items()} == {MACS[2]: "{A}", MACS[1]: "{B}"}
    assert [a.guid for a in left] == ["{C}", "{D}"]  # "Ethernet 7" is Windows' own naming; 9 has no NIC
    tied, left = tie([adapter("{only}", "LAN")], MACS[:1])
    assert list(tied) == [MACS[0]] and not left


def test_found_addresses_read_as_static_ips_and_the_script_sets_them() -> None:
    a = Adapter("{A}", "Ethernet0", "", [("192.168.10.5", 24), ("192.168.10.6", 24)], ["192.168.10.1"],
                ["192.168.10.2"])
    ips = static_ips({MACS[0]: a})
    assert [(s.address, s.prefix_length, s.gateway, list(s.nameservers)) for s in ips] == [
        ("192.168.10.5", 24, "192.168.10.1", ["192.168.10.2"]), ("192.168.10.6", 24, "", [])]
    script = powershell(ips, virtio=True)
    assert "$mac = '00-50-56-AA-00-01'" in script
    assert "New-NetIPAddress -InterfaceIndex $if -IPAddress '192.168.10.5' -PrefixLength 24 " \
           "-DefaultGateway '192.168.10.1'" in script
    assert "New-NetIPAddress -InterfaceIndex $if -IPAddress '192.168.10.6' -PrefixLength 24\n" in script
    assert "Set-DnsClientServerAddress -InterfaceIndex $if -ServerAddresses ('192.168.10.2')" in script
    assert "netkvm.sys" in script and "AddMinutes(5)" in script  # waits for the virtio NIC, not for ever
    assert "netkvm.sys" not in powershell(ips, virtio=False)


def test_script_names_sort_by_priority_then_order() -> None:
    assert script_name(2500, 1, "network-configure") == "2500-0001-network-configure.bat"
    assert script_name(5000, 12, "uninstall VMware Tools") == "5000-0012-uninstall-VMware-Tools.bat"
    assert len(script_name(5000, 1, "x" * 100)) == len("5000-0001-") + 60 + len(".bat")
