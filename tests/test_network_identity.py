"""Network identity on a guest filesystem: the phony Debian guest (ifupdown, ens192, DHCP) in a real
libguestfs appliance, its network files laid out as each kind of guest has them, then the files the
network step writes read back. One appliance launch for the module (~30-60 s under TCG)."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import guestfs
import pytest
import yaml

from v2v.events import StepReporter
from v2v.services.convert.netconfig import NetworkIdentity, generated_mac, parse_ifupdown
from v2v.v1 import types_pb2 as pb

pytestmark = pytest.mark.appliance

MAC = "00:50:56:a1:b2:c3"
STATIC = pb.StaticIp(mac=MAC, address="192.0.2.10", gateway="192.0.2.1", prefix_length=24, nameservers=["192.0.2.53"])
# Every place a test lays out: emptied before each layout, so each test sees only its own files.
NETWORK_DIRS = ("/etc/network", "/etc/netplan", "/etc/NetworkManager", "/etc/systemd/network", "/etc/udev",
                "/etc/sysconfig", "/usr/lib/systemd", "/usr/lib/x86_64-linux-gnu/systemd", "/usr/lib/udev",
                "/usr/sbin/NetworkManager")
SYSTEMD_252 = {"/usr/lib/systemd/network/99-default.link": "[Link]\nNamePolicy=keep kernel database slot path\n",
               "/usr/lib/x86_64-linux-gnu/systemd/libsystemd-shared-252.so": ""}
IFUPDOWN = {"/etc/network/interfaces": "auto lo\niface lo inet loopback\n\nallow-hotplug ens192\n"
                                       "iface ens192 inet dhcp\n"}


@pytest.fixture(scope="module")
def g(phony: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[guestfs.GuestFS]:
    overlay = tmp_path_factory.mktemp("netid") / "overlay.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw", "-b", phony / "debian-single.img",
                    overlay], check=True)
    h = guestfs.GuestFS(python_return_dict=True)
    try:
        h.add_drive_opts(str(overlay), format="qcow2")
        h.launch()
        h.mount(h.inspect_os()[0], "/")
        yield h
    finally:
        h.close()


def layout(g: guestfs.GuestFS, files: dict[str, str]) -> None:
    for d in NETWORK_DIRS:
        g.rm_rf(d)
    for path, text in files.items():
        g.mkdir_p(path.rsplit("/", 1)[0])
        g.write(path, text.encode())


def keep(g: guestfs.GuestFS, nics: list[pb.Nic], static: list[pb.StaticIp] = ()) -> tuple[list[str], list[str]]:
    """Runs the network step: (the target MACs, its notes)."""
    macs, _, notes = kept(g, nics, static)
    return macs, notes


def kept(g: guestfs.GuestFS, nics: list[pb.Nic], static: list[pb.StaticIp] = ()) \
        -> tuple[list[str], list[str], list[str]]:
    """Runs the network step: (the target MACs, the names the guest gives them, its notes)."""
    events: list[pb.StepEvent] = []
    nic_ids = NetworkIdentity(g, pb.Source(name="web1", nics=nics), list(static), "web1",
                              StepReporter("web1", events.append, parent="convert")).run()
    return [k.mac for k in nic_ids], [k.name for k in nic_ids], [e.message for e in events]


def read(g: guestfs.GuestFS, path: str) -> str:
    return g.read_file(path).decode()


def test_debian_keeps_ens192_with_a_link_file_and_a_static_address(g):
    layout(g, IFUPDOWN | SYSTEMD_252)
    macs, names, notes = kept(g, [pb.Nic(mac=MAC.upper())], [STATIC])
    assert macs == [MAC] and names == ["ens192"]
    link = read(g, "/etc/systemd/network/10-v2v-ens192.link")
    assert f"[Match]\nPermanentMACAddress={MAC}\n\n[Link]\nName=ens192\n" in link
    interfaces = read(g, "/etc/network/interfaces")
    assert "allow-hotplug ens192\niface ens192 inet static\n    address 192.0.2.10/24\n    gateway 192.0.2.1\n" \
           "    dns-nameservers 192.0.2.53\n" in interfaces and "dhcp" not in interfaces
    assert [i.name for i in parse_ifupdown("/i", interfaces)] == ["ens192"]
    assert f"NIC 0 ({MAC}) was ens192 in the guest (by order)" in notes
    assert f"wrote /etc/systemd/network/10-v2v-ens192.link: {MAC} is named ens192" in notes
    assert any(n.startswith("ens192 gets 192.0.2.10/24 via 192.0.2.1") for n in notes)


def test_no_source_mac_and_old_udev_gets_a_generated_mac_and_a_rule(g):
    layout(g, IFUPDOWN | {"/usr/lib/udev/rules.d/80-drivers.rules": ""})
    macs, notes = keep(g, [pb.Nic()])
    assert macs == [generated_mac("web1", 0)]
    rule = read(g, "/etc/udev/rules.d/70-v2v-persistent-net.rules")
    assert f'ATTR{{address}}=="{macs[0]}"' in rule and 'NAME="ens192"' in rule
    assert f"NIC 0 ({macs[0]}, the source gives none) was ens192 in the guest (by order)" in notes


def test_a_binding_the_guest_already_has_is_kept_as_it_is(g):
    rules = f'SUBSYSTEM=="net", ACTION=="add", ATTR{{address}}=="{MAC}", NAME="eth0"\n'
    layout(g, {"/etc/network/interfaces": "auto eth0\niface eth0 inet dhcp\n",
               "/etc/udev/rules.d/70-persistent-net.rules": rules} | SYSTEMD_252)
    macs, notes = keep(g, [pb.Nic()])
    assert macs == [MAC]  # the guest's own rule names the NIC with the MAC the target keeps
    assert g.glob_expand("/etc/systemd/network/*.link") == []
    assert f"eth0 is already bound to {MAC} by the guest's own rules" in notes


def test_no_udev_renames_the_configuration_to_the_kernels_name(g):
    layout(g, IFUPDOWN)
    keep(g, [pb.Nic(mac=MAC)], [STATIC])
    interfaces = read(g, "/etc/network/interfaces")
    assert "allow-hotplug eth0\niface eth0 inet static\n    address 192.0.2.10/24\n" in interfaces
    assert "ens192" not in interfaces


def test_netplan_guest_gets_an_override_file(g):
    layout(g, {"/etc/netplan/01-netcfg.yaml": "network:\n  version: 2\n  ethernets:\n    ens160:\n      dhcp4: true\n"}
           | SYSTEMD_252)
    keep(g, [pb.Nic(mac=MAC)], [STATIC])
    assert g.is_file("/etc/systemd/network/10-v2v-ens160.link")
    override = yaml.safe_load(read(g, "/etc/netplan/90-v2v-ens160.yaml"))["network"]["ethernets"]["ens160"]
    assert override["dhcp4"] is False and override["addresses"] == ["192.0.2.10/24"]
    assert g.statns("/etc/netplan/90-v2v-ens160.yaml")["st_mode"] & 0o777 == 0o600


def test_networkmanager_keyfile_is_rewritten(g):
    keyfile = "/etc/NetworkManager/system-connections/Wired.nmconnection"
    layout(g, {keyfile: f"[connection]\nid=Wired\ntype=ethernet\n\n[ethernet]\nmac-address={MAC.upper()}\n\n"
                        "[ipv4]\nmethod=auto\n"} | SYSTEMD_252)
    macs, notes = keep(g, [pb.Nic()], [pb.StaticIp(mac="", address="192.0.2.10")])
    assert macs == [MAC]  # by MAC only: no name to pin, but the keyfile keeps matching
    assert g.glob_expand("/etc/systemd/network/*.link") == []
    assert any("the source has no NIC with that MAC" in n for n in notes)
    keep(g, [pb.Nic(mac=MAC)], [STATIC])
    text = read(g, keyfile)
    assert "method=manual\naddress1=192.0.2.10/24,192.0.2.1\ndns=192.0.2.53;\n" in text and "id=Wired" in text
    assert g.statns(keyfile)["st_mode"] & 0o777 == 0o600
