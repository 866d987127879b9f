"""Network mapping: -n, -b, --mac (pure logic)."""

import pytest

from v2v.errors import V2VError
from v2v.networks import map_nics, parse_mac, parse_network
from v2v.v1 import types_pb2 as pb

NET, BRIDGE = pb.NETWORK_TYPE_NETWORK, pb.NETWORK_TYPE_BRIDGE
NICS = [pb.Nic(mac="00:50:56:AA:00:01", network="VM Network", network_type=NET),
        pb.Nic(mac="00:50:56:aa:00:02", network="backup", network_type=NET),
        pb.Nic(mac="00:50:56:aa:00:03", network="br-lan", network_type=BRIDGE)]


def mapped(*mappings):
    nets = pb.NetworkMap(mappings=list(mappings))
    return [(n.network, n.network_type, n.model) for n in map_nics(NICS, nets, pb.NIC_MODEL_VIRTIO)]


def test_no_mapping_keeps_names_and_sets_the_model():
    assert mapped() == [("VM Network", NET, pb.NIC_MODEL_VIRTIO), ("backup", NET, pb.NIC_MODEL_VIRTIO),
                        ("br-lan", BRIDGE, pb.NIC_MODEL_VIRTIO)]


def test_most_specific_wins():
    result = mapped(parse_network("default", NET), parse_network("backup:storage", NET),
                    parse_network("virbr0", BRIDGE), parse_mac("00:50:56:aa:00:01:bridge:br0"))
    assert [r[:2] for r in result] == [("br0", BRIDGE), ("storage", NET), ("virbr0", BRIDGE)]


def test_a_default_of_the_other_type_applies_when_alone():
    assert [r[:2] for r in mapped(parse_network("br9", BRIDGE))] == [("br9", BRIDGE)] * 3


def test_parse_mac_ip():
    ip = parse_mac("00:50:56:A1:B2:C3:ip:192.0.2.10,192.0.2.1,24,192.0.2.53,192.0.2.54")
    assert (ip.mac, ip.address, ip.gateway, ip.prefix_length, list(ip.nameservers)) == (
        "00:50:56:a1:b2:c3", "192.0.2.10", "192.0.2.1", 24, ["192.0.2.53", "192.0.2.54"])
    assert parse_mac("00:50:56:a1:b2:c3:ip:fd00::10,,64").address == "fd00::10"


@pytest.mark.parametrize("bad", ["00:50:56:a1:b2:network:x", "00:50:56:a1:b2:c3:wifi:x",
                                 "00:50:56:a1:b2:c3:ip:10.0.0.1,10.0.0.254,abc"])
def test_parse_mac_errors(bad):
    with pytest.raises(V2VError):
        parse_mac(bad)
