"""A Windows guest keeps its static IP addresses. Windows binds TCP/IP settings to the adapter
instance, and the virtio NIC is a new one, so after conversion the guest would come up on DHCP
(or not at all). The settings are read offline from the SYSTEM hive, tied to the source NIC
each adapter was, and a first-boot PowerShell script puts them on the new NIC with that MAC.
`--mac MAC:ip:...` overrides what was found for that MAC. virt-v2v only does the explicit form
(upstream issue 99, won't fix).

Tying an adapter ({GUID}) to a source NIC, most certain first: the adapter's NetworkAddress (a MAC
the driver was told to use) equal to a source NIC's MAC; its connection name EthernetN, which
VMware's firmware gives the adapter of ethernetN (the source's NIC N); a single static adapter
on a guest with a single NIC."""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

from v2v.events import StepReporter
from v2v.services.convert.registry import Hive
from v2v.v1 import types_pb2 as pb

NET_CLASS = "{4d36e972-e325-11ce-bfc1-08002be10318}"
STEP = "network"


@dataclass
class Adapter:
    guid: str
    name: str  # connection name, "" = unknown
    mac: str  # NetworkAddress override, "" = none
    addresses: list[tuple[str, int]]  # (address, prefix length)
    gateways: list[str]
    nameservers: list[str]


def _colon_mac(text: str) -> str:
    digits = re.sub(r"[^0-9a-fA-F]", "", text).lower()
    return ":".join(digits[i:i + 2] for i in range(0, 12, 2)) if len(digits) == 12 else ""


def _prefix(mask: str) -> int:
    try:
        return ipaddress.IPv4Network(f"0.0.0.0/{mask}").prefixlen
    except ValueError:
        return 0


def static_adapters(system: Hive, ccs: str) -> list[Adapter]:
    """The adapters with static IPv4 settings (EnableDHCP 0 and an address that is not 0.0.0.0)."""
    interfaces = f"{ccs}\\Services\\Tcpip\\Parameters\\Interfaces"
    class_entries = {}
    for entry in system.children(f"{ccs}\\Control\\Class\\{NET_CLASS}"):
        key = f"{ccs}\\Control\\Class\\{NET_CLASS}\\{entry}"
        guid = (system.string(key, "NetCfgInstanceId") or "").lower()
        if guid:
            class_entries[guid] = key
    found = []
    for guid in system.children(interfaces):
        key = f"{interfaces}\\{guid}"
        if system.dword(key, "EnableDHCP") != 0:
            continue
        ips = system.strings(key, "IPAddress")
        masks = system.strings(key, "SubnetMask")
        addresses = [(ip, _prefix(mask)) for ip, mask in zip(ips, masks, strict=False) if ip != "0.0.0.0"]
        if not addresses:
            continue
        name = system.string(f"{ccs}\\Control\\Network\\{NET_CLASS}\\{guid}\\Connection", "Name") or ""
        override = class_entries.get(guid.lower())
        mac = _colon_mac(system.string(override, "NetworkAddress") or "") if override else ""
        nameservers = re.split(r"[,\s]+", system.string(key, "NameServer") or "")
        found.append(Adapter(guid, name, mac, addresses, [g for g in system.strings(key, "DefaultGateway") if g],
                             [n for n in nameservers if n]))
    return found


def tie(adapters: list[Adapter], macs: list[str]) -> tuple[dict[str, Adapter], list[Adapter]]:
    """(target MAC -> adapter, adapters tied to no NIC). `macs` are the target NICs' MACs in the
    source's order."""
    tied: dict[str, Adapter] = {}
    left = []
    for a in adapters:
        m = re.fullmatch(r"Ethernet(\d+)", a.name)
        if a.mac and a.mac in macs:
            tied.setdefault(a.mac, a)
        elif m and int(m.group(1)) < len(macs):
            tied.setdefault(macs[int(m.group(1))], a)
        else:
            left.append(a)
    if len(left) == 1 and len(adapters) == 1 and len(macs) == 1:
        tied[macs[0]] = left.pop()
    return tied, left


def static_ips(tied: dict[str, Adapter]) -> list[pb.StaticIp]:
    """What was found, as --mac MAC:ip:... would say it: one entry per address."""
    out = []
    for mac, a in tied.items():
        for i, (addr, prefix) in enumerate(a.addresses):
            out.append(pb.StaticIp(mac=mac, address=addr, prefix_length=prefix,
                                   gateway=a.gateways[0] if a.gateways and i == 0 else "",
                                   nameservers=a.nameservers if i == 0 else []))
    return out


def found_addresses(system: Hive, ccs: str, macs: list[str], explicit: list[pb.StaticIp],
                    report: StepReporter) -> list[pb.StaticIp]:
    """The addresses to set at first boot: the explicit ones, and for every other NIC what the
    guest had."""
    tied, left = tie(static_adapters(system, ccs), macs)
    given = {s.mac.lower() for s in explicit}
    for mac, a in tied.items():
        how = "its NetworkAddress" if a.mac == mac else f"connection name {a.name}" if a.name else "the only NIC"
        shown = ", ".join(f"{ip}/{p}" for ip, p in a.addresses)
        if mac in given:
            report.note(f"adapter {a.guid} ({shown}) is NIC {mac} ({how}); --mac gives its addresses instead",
                        step=STEP)
        else:
            report.note(f"adapter {a.guid} ({a.name or 'unnamed'}): {shown} kept for NIC {mac} ({how})", step=STEP)
    for a in left:
        report.warn(f"static address {', '.join(ip for ip, _ in a.addresses)} of adapter {a.guid} "
                    f"({a.name or 'unnamed'}) is not kept: nothing ties it to a source NIC; give it with "
                    "--mac MAC:ip:ADDRESS,GATEWAY,PREFIX,DNS", step=STEP)
    return list(explicit) + static_ips({m: a for m, a in tied.items() if m not in given})


def _quote(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def powershell(ips: list[pb.StaticIp], virtio: bool) -> str:
    """Sets each address on the adapter with its MAC, waiting (5 min at most) for the virtio NIC's
    driver, which pnputil or PnP installs at this same first boot."""
    lines = ["$ErrorActionPreference = 'Continue'"]
    if virtio:
        lines += ["$deadline = (Get-Date).AddMinutes(5)",
                  "while (-not (Get-NetAdapter -Physical | Where-Object DriverFileName -eq 'netkvm.sys')) {",
                  "  if ((Get-Date) -gt $deadline) { Write-Output 'no virtio NIC after 5 minutes'; break }",
                  "  Start-Sleep -Seconds 5",
                  "}"]
    for mac in dict.fromkeys(s.mac for s in ips):
        entries = [s for s in ips if s.mac == mac]
        lines += [f"$mac = {_quote(mac.upper().replace(':', '-'))}",
                  "$if = (Get-NetAdapter -Physical | Where-Object MacAddress -eq $mac).ifIndex",
                  "if ($if) {",
                  "  Set-NetIPInterface -InterfaceIndex $if -Dhcp Disabled"]
        for s in entries:
            args = f"-InterfaceIndex $if -IPAddress {_quote(s.address)}"
            if s.prefix_length:
                args += f" -PrefixLength {s.prefix_length}"
            if s.gateway:
                args += f" -DefaultGateway {_quote(s.gateway)}"
            lines.append(f"  New-NetIPAddress {args}")
        servers = [n for s in entries for n in s.nameservers]
        if servers:
            lines.append(f"  Set-DnsClientServerAddress -InterfaceIndex $if -ServerAddresses "
                         f"({', '.join(_quote(n) for n in servers)})")
        lines += ["} else {", "  Write-Output \"no adapter with MAC $mac\"", "}"]
    return "\n".join(lines) + "\n"
