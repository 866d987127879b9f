"""Network identity: a converted Linux guest keeps each NIC's name and address.

virt-v2v leaves a Linux guest's network configuration alone (its issue #99), so the guest comes up
on virtio-net with a new name (ens192 becomes enp1s0) that nothing configures: no address. Here
each source NIC is matched to the name it had in the guest (by MAC where the guest's configuration
binds one, else by order), the target NIC keeps a known MAC, and the name is pinned to that MAC with
a systemd .link file or a udev rule; a guest with neither has its configuration renamed to the
kernel's ethN instead. `--mac MAC:ip:...` addresses are written in the guest's own network system.

The parsers and writers are pure functions over file texts; `NetworkIdentity` reads and writes
the guest through libguestfs."""

from __future__ import annotations

import configparser
import fnmatch
import hashlib
import ipaddress
import re
import shlex
from dataclasses import dataclass

import guestfs
import yaml

from v2v.events import StepReporter
from v2v.networks import cidr
from v2v.v1 import types_pb2 as pb

STEP = "network"

IFUPDOWN = "ifupdown"
NETWORKMANAGER = "NetworkManager"
NETPLAN = "netplan"
IFCFG = "ifcfg"
IFCFG_SUSE = "ifcfg (SUSE)"
NETWORKD = "systemd-networkd"
UDEV = "udev rule"
LINK = "systemd .link"

# Systems that configure addresses, as opposed to udev rules and .link files that only name NICs.
CONFIGURING = (NETPLAN, NETWORKMANAGER, IFUPDOWN, IFCFG, IFCFG_SUSE, NETWORKD)

# Names that are never a NIC of the source: loopback, and virtual devices by their usual names.
_VIRTUAL_NAME = re.compile(r"^(lo|bond\d*|br\d*|virbr\d*|docker\d*|vlan\d*|tun\d*|tap\d*|wg\d*|veth.*)$|[.:*?\[]")
_MAC = re.compile(r"^([0-9a-f]{2}:){5}[0-9a-f]{2}$")


@dataclass(frozen=True)
class GuestInterface:
    """An Ethernet interface the guest's configuration knows: its name and/or the MAC it is bound to."""

    name: str  # "" when the configuration matches the NIC by MAC only
    mac: str  # lower case; "" when the configuration does not bind one
    system: str
    path: str
    key: str = ""  # netplan: the id of its ethernets entry


@dataclass(frozen=True)
class KeptNic:
    """What one target NIC keeps: its MAC (always known) and the name it had ("" = not known)."""

    mac: str
    name: str
    how: str  # why this name: "by MAC", "by order", ""


def normal_mac(text: str) -> str:
    mac = text.strip().strip('"').strip("'").lower().replace("-", ":")
    return mac if _MAC.match(mac) else ""


def physical(name: str) -> bool:
    return bool(name) and not _VIRTUAL_NAME.search(name)


# ---------------------------------------------------------------- parsers: file text -> interfaces

_IFUPDOWN_TOP = ("iface", "mapping", "auto", "source", "source-directory", "rename", "no-auto-down", "no-scripts")
_IFUPDOWN_VIRTUAL_OPTS = ("bridge_ports", "bridge-ports", "bond-slaves", "bond_slaves", "bond-mode", "bond_mode",
                          "vlan-raw-device", "vlan_raw_device")


def _ifupdown_top(line: str) -> bool:
    word = line.split(maxsplit=1)[0] if line.strip() else ""
    return word in _IFUPDOWN_TOP or word.startswith("allow-")


def parse_ifupdown(path: str, text: str) -> list[GuestInterface]:
    """/etc/network/interfaces(.d): `iface NAME inet|inet6 ...`, auto/allow-* names and bridge/bond ports.
    ifupdown never binds a MAC (`hwaddress` sets one), and bridges and bonds are not NICs."""
    names: list[str] = []
    virtual: set[str] = set()
    current = ""
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        words = line.split()
        if _ifupdown_top(line):
            current = words[1] if words[0] == "iface" and len(words) > 1 else ""
            if words[0] == "iface" or words[0] == "auto" or words[0].startswith("allow-"):
                names += words[1:2] if words[0] == "iface" else words[1:]
        elif current:
            if any(line.startswith(opt) for opt in _IFUPDOWN_VIRTUAL_OPTS):
                virtual.add(current)
            if words[0] in ("bridge_ports", "bridge-ports", "bond-slaves", "bond_slaves"):
                names += [w for w in words[1:] if w not in ("none", "all")]
    return [GuestInterface(n, "", IFUPDOWN, path) for n in dict.fromkeys(names) if physical(n) and n not in virtual]


def _ini(text: str) -> configparser.ConfigParser:
    ini = configparser.ConfigParser(interpolation=None, strict=False, delimiters=("=",))
    ini.optionxform = str  # type: ignore[assignment,method-assign]  # keys are case-sensitive
    try:
        ini.read_string(text)
    except configparser.Error:
        pass  # what was read before the bad line still counts
    return ini


def parse_nm_keyfile(path: str, text: str) -> list[GuestInterface]:
    """A NetworkManager keyfile of an Ethernet connection: interface-name and/or [ethernet] mac-address."""
    ini = _ini(text)
    if ini.get("connection", "type", fallback="") not in ("ethernet", "802-3-ethernet"):
        return []
    name = ini.get("connection", "interface-name", fallback="")
    mac = normal_mac(ini.get("ethernet", "mac-address", fallback="")
                     or ini.get("802-3-ethernet", "mac-address", fallback=""))
    return [GuestInterface(name, mac, NETWORKMANAGER, path)] if (name or mac) else []


def parse_netplan(path: str, text: str) -> list[GuestInterface]:
    """netplan's `ethernets:`: each id, its match (macaddress, name) and set-name."""
    try:
        doc = yaml.safe_load(text) or {}
    except yaml.YAMLError:
        return []
    ethernets = (doc.get("network") or {}).get("ethernets") or {} if isinstance(doc, dict) else {}
    found = []
    for key, conf in ethernets.items() if isinstance(ethernets, dict) else ():
        conf = conf if isinstance(conf, dict) else {}
        match = conf.get("match") if isinstance(conf.get("match"), dict) else None
        mac = normal_mac(str(match.get("macaddress", ""))) if match else ""
        name = str(conf.get("set-name") or (match.get("name", "") if match else key))
        found.append(GuestInterface(name if physical(name) else "", mac, NETPLAN, path, str(key)))
    return [i for i in found if i.name or i.mac]


def shell_vars(text: str) -> dict[str, str]:
    """KEY=VALUE lines of a shell-sourced file (ifcfg, SUSE sysconfig), unquoted."""
    out = {}
    for line in text.splitlines():
        m = re.match(r"\s*([A-Za-z_][A-Za-z0-9_]*)=(.*)$", line)
        if m:
            try:
                words = shlex.split(m.group(2), comments=True)
            except ValueError:
                words = [m.group(2)]
            out[m.group(1)] = words[0] if words else ""
    return out


def parse_ifcfg(path: str, text: str) -> list[GuestInterface]:
    """ifcfg-NAME (RHEL network-scripts, SUSE sysconfig): DEVICE (else the file's name), HWADDR."""
    v = shell_vars(text)
    suse = path.startswith("/etc/sysconfig/network/")
    name = v.get("DEVICE") or path.rsplit("/", 1)[-1].removeprefix("ifcfg-")
    kind = v.get("TYPE", "Ethernet").lower()
    if kind not in ("ethernet", "") or v.get("BONDING_MASTER", "").lower() == "yes" or \
            v.get("BRIDGE", "").lower() == "yes" or v.get("VLAN", "").lower() == "yes" or v.get("ETHERDEVICE"):
        return []
    mac = normal_mac(v.get("HWADDR", ""))
    name = name if physical(name) else ""
    return [GuestInterface(name, mac, IFCFG_SUSE if suse else IFCFG, path)] if name or mac else []


def parse_networkd(path: str, text: str) -> list[GuestInterface]:
    """A systemd .network (or .link) file: [Match] Name= without globs, MACAddress=/PermanentMACAddress=;
    a .link's [Link] Name= is the name it gives."""
    ini = _ini(text)
    names = ini.get("Match", "Name", fallback="").split()
    macs = (ini.get("Match", "PermanentMACAddress", fallback="") + " "
            + ini.get("Match", "MACAddress", fallback="")).split()
    system = NETWORKD
    if path.endswith(".link"):
        system, names = LINK, ini.get("Link", "Name", fallback="").split()[:1]
        if not names:
            return []
    name = names[0] if len(names) == 1 and physical(names[0]) else ""
    mac = normal_mac(macs[0]) if len(macs) == 1 else ""
    return [GuestInterface(name, mac, system, path)] if name or mac else []


def parse_udev_rules(path: str, text: str) -> list[GuestInterface]:
    """udev rules that name a NIC by MAC: 70-persistent-net.rules' ATTR{address}=="MAC" ... NAME="eth0"."""
    found = []
    for line in text.splitlines():
        if line.lstrip().startswith("#"):
            continue
        mac = re.search(r'ATTRS?\{address\}==\s*"([^"]+)"', line)
        name = re.search(r'\bNAME:?=\s*"([^"$%]+)"', line)
        if mac and name and normal_mac(mac.group(1)) and physical(name.group(1)):
            found.append(GuestInterface(name.group(1), normal_mac(mac.group(1)), UDEV, path))
    return found


# Where each system keeps its files, and how to read them.
CONFIG_FILES = (
    ("/etc/network/interfaces", parse_ifupdown),
    ("/etc/network/interfaces.d/*", parse_ifupdown),
    ("/etc/NetworkManager/system-connections/*", parse_nm_keyfile),
    ("/etc/netplan/*.yaml", parse_netplan),
    ("/etc/sysconfig/network-scripts/ifcfg-*", parse_ifcfg),
    ("/etc/sysconfig/network/ifcfg-*", parse_ifcfg),
    ("/etc/systemd/network/*.network", parse_networkd),
    ("/etc/systemd/network/*.link", parse_networkd),
    ("/etc/udev/rules.d/*.rules", parse_udev_rules),
)


def find_interfaces(files: dict[str, str]) -> list[GuestInterface]:
    """Every interface the guest's files (path -> text) configure or name, in CONFIG_FILES order."""
    found = []
    for pattern, parser in CONFIG_FILES:
        for path in sorted(p for p in files if fnmatch.fnmatch(p, pattern)):
            if path.endswith(("~", ".bak", ".orig", ".dpkg-old", ".rpmsave")) or path.endswith("/ifcfg-lo"):
                continue
            found += parser(path, files[path])
    return found


# ---------------------------------------------------------------- mapping source NICs to names


def _natural(name: str) -> list[object]:
    return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", name)]


def generated_mac(guest: str, index: int) -> str:
    """A stable MAC in QEMU's locally administered 52:54:00 range for NIC `index` of `guest`."""
    digest = hashlib.sha256(f"{guest}/{index}".encode()).hexdigest()
    return "52:54:00:" + ":".join(digest[i:i + 2] for i in (0, 2, 4))


def keep_identity(source_macs: list[str], found: list[GuestInterface], guest: str) -> list[KeptNic]:
    """Each source NIC's name in the guest and the MAC its target NIC gets. By MAC first; then, when
    as many names remain as NICs, in order (ens192 < ens224, eth0 < eth1: the source's slot order;
    configurations that match a MAC but name nothing come last). A NIC whose source has no MAC takes
    the one the guest bound to it, else a generated one."""
    macs = [normal_mac(m) for m in source_macs]
    by_mac: dict[str, str] = {}
    for iface in found:
        if iface.mac and (iface.name or iface.mac not in by_mac):
            by_mac[iface.mac] = iface.name
    names: dict[str, str] = {}  # name -> the MAC the guest binds to it ("" = none)
    for iface in found:
        if iface.name:
            names[iface.name] = names.get(iface.name) or iface.mac
    kept: list[KeptNic | None] = [KeptNic(m, by_mac[m], "by MAC") if m and m in by_mac else None for m in macs]
    taken = {k.name for k in kept if k}
    known = set(macs)
    free = sorted(((n, m) for n, m in names.items() if n not in taken and not (m and m in known)),
                  key=lambda nm: _natural(nm[0]))
    free += [("", m) for m, n in by_mac.items() if not n and m not in known]
    unmatched = [i for i, k in enumerate(kept) if k is None]
    if free and len(free) == len(unmatched):
        for i, (name, bound) in zip(unmatched, free, strict=True):
            if macs[i] and bound and bound != macs[i]:
                continue  # the guest bound this configuration to another NIC's MAC
            kept[i] = KeptNic(macs[i] or bound or generated_mac(guest, i), name, "by order")
    return [k or KeptNic(macs[i] or generated_mac(guest, i), "", "") for i, k in enumerate(kept)]


# ---------------------------------------------------------------- pinning a name to a MAC

_HEADER = "# Written by v2v: the name this NIC had before conversion, kept on the new hypervisor.\n"


def link_file(name: str, mac: str, permanent: bool) -> str:
    """A systemd .link file naming the NIC with this MAC. PermanentMACAddress (systemd >= 245) keeps
    bridges and VLANs, which inherit the MAC, from matching too."""
    key = "PermanentMACAddress" if permanent else "MACAddress"
    return f"{_HEADER}[Match]\n{key}={mac}\n\n[Link]\nName={name}\n"


def udev_rule(name: str, mac: str) -> str:
    """A 70-persistent-net.rules line; DRIVERS=="?*" keeps it to real NICs, not virtual ones with that MAC."""
    return (f'SUBSYSTEM=="net", ACTION=="add", DRIVERS=="?*", ATTR{{address}}=="{mac}", ATTR{{type}}=="1", '
            f'NAME="{name}"\n')


def rename_in_config(text: str, old: str, new: str) -> str:
    """The interface `old` called `new` in a configuration file (VLANs such as old.100 follow)."""
    return re.sub(rf"(?<![\w-]){re.escape(old)}(?![\w-])", new, text)


# ---------------------------------------------------------------- static addresses (--mac MAC:ip:...)


@dataclass(frozen=True)
class Address:
    """A --mac MAC:ip: address in the forms the writers need."""

    ip: str
    prefix: int
    gateway: str
    nameservers: tuple[str, ...]
    version: int

    @classmethod
    def of(cls, s: pb.StaticIp) -> Address:
        ip, prefix = cidr(s).rsplit("/", 1)
        return cls(ip, int(prefix), s.gateway, tuple(s.nameservers), ipaddress.ip_address(ip).version)

    @property
    def cidr(self) -> str:
        return f"{self.ip}/{self.prefix}"


def ifupdown_static(text: str, name: str, addr: Address) -> str | None:
    """`iface NAME inet METHOD` and its options replaced by a static stanza; None if the text has none."""
    family = "inet" if addr.version == 4 else "inet6"
    lines = text.splitlines(keepends=True)
    start = next((n for n, line in enumerate(lines) if line.split()[:3] == ["iface", name, family]), None)
    if start is None:
        return None
    end = start + 1
    while end < len(lines) and not _ifupdown_top(lines[end]):
        end += 1
    kept = [line for line in lines[start + 1:end] if not line.strip() or line.lstrip().startswith("#")]
    return "".join(lines[:start]) + ifupdown_stanza(name, addr) + "".join(kept) + "".join(lines[end:])


def ifupdown_stanza(name: str, addr: Address) -> str:
    family = "inet" if addr.version == 4 else "inet6"
    out = f"iface {name} {family} static\n    address {addr.cidr}\n"
    if addr.gateway:
        out += f"    gateway {addr.gateway}\n"
    if addr.nameservers:
        out += f"    dns-nameservers {' '.join(addr.nameservers)}\n"
    return out


def _without_section(text: str, section: str) -> str:
    return re.sub(rf"(?ms)^\[{re.escape(section)}\]\s*\n.*?(?=^\[|\Z)", "", text).rstrip("\n") + "\n"


def nm_keyfile_static(text: str, name: str, mac: str, addr: Address) -> str:
    """A keyfile (the guest's own for this NIC, or a new one when `text` is "") with a manual address."""
    family = "ipv4" if addr.version == 4 else "ipv6"
    if not text:
        text = f"[connection]\nid=v2v-{name or mac}\ntype=ethernet\n"
        text += f"interface-name={name}\n" if name else ""
        text += f"\n[ethernet]\nmac-address={mac.upper()}\n"
    out = _without_section(text, family)
    out += f"\n[{family}]\nmethod=manual\naddress1={addr.cidr}" + (f",{addr.gateway}" if addr.gateway else "") + "\n"
    if addr.nameservers:
        out += "dns=" + "".join(f"{n};" for n in addr.nameservers) + "\n"
    return out


def netplan_static(key: str, name: str, mac: str, new_key: bool, addr: Address) -> str:
    """A netplan file that overrides (netplan merges files in name order) entry `key` with the address;
    a new entry matches the NIC by MAC and sets its name."""
    conf: dict[str, object] = {}
    if new_key:
        conf["match"] = {"macaddress": mac}
        if name:
            conf["set-name"] = name
    conf[f"dhcp{addr.version}"] = False
    conf["addresses"] = [addr.cidr]
    if addr.gateway:
        conf["routes"] = [{"to": "0.0.0.0/0" if addr.version == 4 else "::/0", "via": addr.gateway}]
    if addr.nameservers:
        conf["nameservers"] = {"addresses": list(addr.nameservers)}
    doc = {"network": {"version": 2, "ethernets": {key: conf}}}
    return _HEADER + yaml.safe_dump(doc, default_flow_style=False, sort_keys=False)


def networkd_static(name: str, mac: str, addr: Address) -> str:
    match = f"Name={name}" if name else f"MACAddress={mac}"
    out = f"{_HEADER}[Match]\n{match}\n\n[Network]\nAddress={addr.cidr}\n"
    out += f"Gateway={addr.gateway}\n" if addr.gateway else ""
    out += "".join(f"DNS={n}\n" for n in addr.nameservers)
    return out


_IFCFG_ADDRESS_KEYS = re.compile(r"^\s*(BOOTPROTO|IPADDR\w*|PREFIX\w*|NETMASK\w*|GATEWAY\w*|DNS\d+|IPV6ADDR|"
                                 r"IPV6_DEFAULTGW|IPV6INIT|IPV6_AUTOCONF|DHCPV6C)=.*\n?", re.MULTILINE)


def ifcfg_static(text: str, name: str, mac: str, addr: Address, suse: bool) -> str:
    """ifcfg-NAME (the guest's own, or new when `text` is "") with the address instead of DHCP. SUSE
    takes IPADDR=ADDR/LEN and its gateway in ifroute-NAME (see `suse_route`)."""
    out = _IFCFG_ADDRESS_KEYS.sub("", text) if text else (
        "STARTMODE='auto'\n" if suse else f"DEVICE={name}\nTYPE=Ethernet\nONBOOT=yes\nHWADDR={mac}\n")
    if suse:
        return out + f"BOOTPROTO='static'\nIPADDR='{addr.cidr}'\n"
    if addr.version == 4:
        out += f"BOOTPROTO=none\nIPADDR={addr.ip}\nPREFIX={addr.prefix}\n"
        out += f"GATEWAY={addr.gateway}\n" if addr.gateway else ""
    else:
        out += f"BOOTPROTO=none\nIPV6INIT=yes\nIPV6_AUTOCONF=no\nIPV6ADDR={addr.cidr}\n"
        out += f"IPV6_DEFAULTGW={addr.gateway}\n" if addr.gateway else ""
    return out + "".join(f"DNS{n}={ns}\n" for n, ns in enumerate(addr.nameservers, 1))


def suse_route(name: str, addr: Address) -> str:
    return f"default {addr.gateway} - {name}\n"


# ---------------------------------------------------------------- the guest


class NetworkIdentity:
    """Keeps the mounted guest's NIC names (and --mac addresses) for its target NICs. `run()` returns
    the MAC of each target NIC, in the source's order."""

    def __init__(self, g: guestfs.GuestFS, source: pb.Source, static_ips: list[pb.StaticIp], guest: str,
                 report: StepReporter) -> None:
        self.g = g
        self.source = source
        self.static_ips = static_ips
        self.guest = guest
        self.report = report

    def note(self, message: str) -> None:
        self.report.note(message, step=STEP)

    def run(self) -> list[KeptNic]:
        """Each target NIC's MAC and the name the guest will give it, in the source's order."""
        files = self.read_files()
        found = find_interfaces(files)
        kept = keep_identity([n.mac for n in self.source.nics], found, self.guest)
        for index, (nic, k) in enumerate(zip(self.source.nics, kept, strict=True)):
            origin = "" if nic.mac else ", the source gives none"
            if k.name:
                self.note(f"NIC {index} ({k.mac}{origin}) was {k.name} in the guest ({k.how})")
            elif k.how:
                self.note(f"NIC {index} ({k.mac}{origin}): the guest's configuration matches its MAC ({k.how})")
            else:
                self.note(f"NIC {index} ({k.mac}{origin}): its name in the guest is unknown, left to the guest")
        named = [(k, i) for i, k in enumerate(kept) if k.name]
        if named and not self.pin(named, found):
            renames = {k.name: f"eth{i}" for k, i in named}
            self.rename_configs(renames, files)
            kept = [KeptNic(k.mac, renames.get(k.name, k.name), k.how) for k in kept]
            files = self.read_files()
            found = find_interfaces(files)
        for s in self.static_ips:
            self.write_static(s, kept, found, files)
        return kept

    def read_files(self) -> dict[str, str]:
        files = {}
        for pattern, _ in CONFIG_FILES:
            for path in self.g.glob_expand(pattern):
                if self.g.is_file(path, followsymlinks=True):
                    files[path] = self.g.read_file(path).decode(errors="replace")
        return files

    def exists(self, *paths: str) -> bool:
        return any(self.g.exists(p) for p in paths)

    def systemd_version(self) -> int:
        """systemd's version from its shared library's name (systemd >= 231); 0 if not found."""
        for pattern in ("/usr/lib/systemd/libsystemd-shared-*.so", "/usr/lib/*/systemd/libsystemd-shared-*.so",
                        "/usr/lib64/systemd/libsystemd-shared-*.so", "/lib/systemd/libsystemd-shared-*.so"):
            for path in self.g.glob_expand(pattern):
                if m := re.search(r"libsystemd-shared-(\d+)", path):
                    return int(m.group(1))
        return 0

    def pin(self, named: list[tuple[KeptNic, int]], found: list[GuestInterface]) -> bool:
        """Each name to its MAC: already pinned, else a .link file (systemd-udevd) or a udev rule
        (older udev). False when the guest has no udev to pin with."""
        pinned = {(i.name, i.mac) for i in found if i.system in (UDEV, LINK)}
        todo = [k for k, _ in named if (k.name, k.mac) not in pinned]
        for k, _ in named:
            if (k.name, k.mac) in pinned:
                self.note(f"{k.name} is already bound to {k.mac} by the guest's own rules")
        if not todo:
            return True
        if self.exists("/usr/lib/systemd/network/99-default.link", "/lib/systemd/network/99-default.link"):
            permanent = self.systemd_version() >= 245
            self.g.mkdir_p("/etc/systemd/network")
            for k in todo:
                path = f"/etc/systemd/network/10-v2v-{k.name}.link"
                self.g.write(path, link_file(k.name, k.mac, permanent).encode())
                self.note(f"wrote {path}: {k.mac} is named {k.name}")
            return True
        if self.exists("/etc/udev", "/lib/udev/rules.d", "/usr/lib/udev/rules.d"):
            path = "/etc/udev/rules.d/70-v2v-persistent-net.rules"
            self.g.mkdir_p("/etc/udev/rules.d")
            self.g.write(path, (_HEADER + "".join(udev_rule(k.name, k.mac) for k in todo)).encode())
            self.note(f"wrote {path}: " + ", ".join(f"{k.mac} is named {k.name}" for k in todo))
            return True
        return False

    def rename_configs(self, renames: dict[str, str], files: dict[str, str]) -> None:
        """No udev to rename NICs: the kernel calls them eth0, eth1... in slot order; the configuration follows."""
        for path, text in files.items():
            new = text
            for old, name in renames.items():
                new = rename_in_config(new, old, name)
            if new != text:
                self.g.write(path, new.encode())
                self.note(f"no udev to keep the names: {path} now names " + ", ".join(renames.values()))
            base = path.rsplit("/", 1)[-1]
            for old, name in renames.items():
                if base == f"ifcfg-{old}":
                    self.g.mv(path, path.removesuffix(base) + f"ifcfg-{name}")

    def network_system(self, name: str, mac: str, found: list[GuestInterface]) -> GuestInterface | None:
        """The configuring system's entry for this NIC, by name or MAC, preferring what manages it at boot."""
        mine = [i for i in found if i.system in CONFIGURING and ((name and i.name == name) or (mac and i.mac == mac))]
        return min(mine, key=lambda i: CONFIGURING.index(i.system), default=None)

    def default_system(self) -> str:
        """The guest's network system when nothing configures the NIC yet."""
        if self.g.glob_expand("/etc/netplan/*.yaml"):
            return NETPLAN
        if self.exists("/usr/sbin/NetworkManager", "/usr/bin/NetworkManager"):
            return NETWORKMANAGER
        if self.exists("/etc/network/interfaces", "/sbin/ifup", "/usr/sbin/ifup") and \
                not self.exists("/etc/sysconfig/network-scripts", "/etc/sysconfig/network/config"):
            return IFUPDOWN
        if self.exists("/etc/sysconfig/network-scripts"):
            return IFCFG
        if self.exists("/etc/sysconfig/network/config"):
            return IFCFG_SUSE
        return NETWORKD

    def write_static(self, s: pb.StaticIp, kept: list[KeptNic], found: list[GuestInterface],
                     files: dict[str, str]) -> None:
        index = next((i for i, n in enumerate(self.source.nics) if n.mac and normal_mac(n.mac) == normal_mac(s.mac)),
                     None)
        if index is None:
            self.report.warn(f"--mac {s.mac}:ip:{s.address}: the source has no NIC with that MAC", step=STEP)
            return
        name, mac, addr = kept[index].name, kept[index].mac, Address.of(s)
        entry = self.network_system(name, mac, found)
        system = entry.system if entry else self.default_system()
        if not name and system in (IFUPDOWN, IFCFG, IFCFG_SUSE):
            self.report.warn(f"--mac {s.mac}:ip:{s.address}: {system} needs the NIC's name, which the guest "
                             f"does not show: address not written", step=STEP)
            return
        path, text = self.static_file(system, entry, name, mac, addr, files)
        self.g.mkdir_p(path.rsplit("/", 1)[0])
        self.g.write(path, text.encode())
        if system in (NETWORKMANAGER, NETPLAN):
            self.g.chmod(0o600, path)  # both ignore or complain about world-readable files
        if system == IFCFG_SUSE and addr.gateway:
            route = f"/etc/sysconfig/network/ifroute-{name}"
            self.g.write(route, suse_route(name, addr).encode())
            self.note(f"wrote {route}: default route via {addr.gateway}")
        self.note(f"{name or mac} gets {addr.cidr}" + (f" via {addr.gateway}" if addr.gateway else "")
                  + (f", DNS {' '.join(addr.nameservers)}" if addr.nameservers else "") + f" ({system}, {path})")

    def static_file(self, system: str, entry: GuestInterface | None, name: str, mac: str, addr: Address,
                    files: dict[str, str]) -> tuple[str, str]:
        """The file to write for the address in `system`, and its new text."""
        own = entry.path if entry else ""
        if system == IFUPDOWN:
            candidates = ([own] if own else []) + [p for p in files if fnmatch.fnmatch(p, "/etc/network/interfaces*")]
            for path in candidates:
                if (new := ifupdown_static(files[path], name, addr)) is not None:
                    return path, new
            path = "/etc/network/interfaces"
            return path, files.get(path, "") + f"\nallow-hotplug {name}\n" + ifupdown_stanza(name, addr)
        if system == NETWORKMANAGER:
            return (own or f"/etc/NetworkManager/system-connections/v2v-{name or mac.replace(':', '')}.nmconnection",
                    nm_keyfile_static(files.get(own, ""), name, mac, addr))
        if system == NETPLAN:
            key = entry.key if entry else (name or "v2v-" + mac.replace(":", ""))
            return f"/etc/netplan/90-v2v-{key}.yaml", netplan_static(key, name, mac, entry is None, addr)
        if system in (IFCFG, IFCFG_SUSE):
            directory = "/etc/sysconfig/network" if system == IFCFG_SUSE else "/etc/sysconfig/network-scripts"
            path = own or f"{directory}/ifcfg-{name}"
            return path, ifcfg_static(files.get(path, ""), name, mac, addr, system == IFCFG_SUSE)
        return f"/etc/systemd/network/05-v2v-{name or mac.replace(':', '')}.network", networkd_static(name, mac, addr)
