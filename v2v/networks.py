"""Network mapping (-n, -b, --mac): where each source NIC goes on the target. Pure logic."""

from __future__ import annotations

from v2v.errors import V2VError
from v2v.v1 import types_pb2 as pb

_KINDS = {"network": pb.NETWORK_TYPE_NETWORK, "bridge": pb.NETWORK_TYPE_BRIDGE}


def parse_network(text: str, kind: pb.NetworkType) -> pb.NetworkMapping:
    """-n OUT / -n IN:OUT (kind NETWORK), -b OUT / -b IN:OUT (kind BRIDGE)."""
    source, _, target = text.rpartition(":")
    if not target:
        raise V2VError(f"{text!r}: expected [IN:]OUT", pb.ERROR_CODE_BAD_INPUT)
    return pb.NetworkMapping(source_network=source, type=kind, target=target)


def parse_mac(text: str) -> pb.NetworkMapping | pb.StaticIp:
    """--mac MAC:network:OUT, --mac MAC:bridge:OUT, --mac MAC:ip:ADDR[,GATEWAY[,PREFIXLEN[,NAMESERVER...]]]"""
    parts = text.split(":")
    if len(parts) < 8 or len(parts[0:6]) != 6 or not all(len(p) == 2 for p in parts[0:6]):
        raise V2VError(f"--mac {text}: expected MAC:network:OUT, MAC:bridge:OUT or MAC:ip:ADDR,...",
                       pb.ERROR_CODE_BAD_INPUT)
    mac, what, rest = ":".join(parts[0:6]).lower(), parts[6], ":".join(parts[7:])
    if what in _KINDS:
        return pb.NetworkMapping(mac=mac, type=_KINDS[what], target=rest)
    if what == "ip":
        fields = rest.split(",")
        ip = pb.StaticIp(mac=mac, address=fields[0], gateway=fields[1] if len(fields) > 1 else "")
        if len(fields) > 2 and fields[2]:
            if not fields[2].isdigit():
                raise V2VError(f"--mac {text}: prefix length {fields[2]!r} is not a number", pb.ERROR_CODE_BAD_INPUT)
            ip.prefix_length = int(fields[2])
        ip.nameservers.extend(f for f in fields[3:] if f)
        return ip
    raise V2VError(f"--mac {text}: {what!r} is not network, bridge or ip", pb.ERROR_CODE_BAD_INPUT)


def cidr(s: pb.StaticIp) -> str:
    """ADDR/PREFIX of a kept address; with no prefix length given, what virt-v2v assumes: /24 for
    IPv4, /64 for IPv6."""
    return f"{s.address}/{s.prefix_length or (64 if ':' in s.address else 24)}"


def _mapping_for(nic: pb.Nic, mappings: list[pb.NetworkMapping]) -> pb.NetworkMapping | None:
    """The most specific mapping: this MAC, then this source network, then a default of the NIC's
    own type (-n for a network, -b for a bridge), then any default."""
    by_mac = [m for m in mappings if m.mac and nic.mac and m.mac == nic.mac.lower()]
    by_name = [m for m in mappings if not m.mac and m.source_network and m.source_network == nic.network]
    defaults = [m for m in mappings if not m.mac and not m.source_network]
    same_type = [m for m in defaults if m.type == nic.network_type]
    for candidates in (by_mac, by_name, same_type, defaults):
        if candidates:
            return candidates[-1]  # the last one given wins, as on a command line
    return None


def map_nics(nics: list[pb.Nic], networks: pb.NetworkMap, model: pb.NicModel) -> list[pb.Nic]:
    """The target NICs: each source NIC mapped, with the model the converted guest drives."""
    out = []
    for nic in nics:
        n = pb.Nic()
        n.CopyFrom(nic)
        n.model = model
        if (m := _mapping_for(nic, list(networks.mappings))) is not None:
            n.network, n.network_type = m.target, m.type
        out.append(n)
    return out
