"""-i libvirtxml: the domain XML parser on hand-written XMLs, then the plugin through the input
service against real nbdkit/qemu-nbd: local files and nbd exports are served behind overlays, no
source is ever written, bad input is one line naming the file, nothing is left running."""

import os
import socket
import subprocess
import time
from contextlib import contextmanager
from pathlib import Path

import nbd
import pytest

from tests.conftest import sha256, write_reads_back
from v2v.errors import V2VError
from v2v.services.input.domainxml import DEFAULT_MEMORY, NbdSource, parse_domain
from v2v.services.input.service import InputService
from v2v.v1 import input_pb2
from v2v.v1 import types_pb2 as pb
from v2v.workdir import WorkDir

KiB, MiB, GiB = 1024, 1024**2, 1024**3
WHERE = "/x/guest.xml"


def domain(devices: str = "", head: str = "<name>g</name>", kind: str = "kvm") -> bytes:
    disk = devices or '<disk type="file" device="disk"><source file="/d.img"/><target dev="vda"/></disk>'
    return f'<domain type="{kind}">{head}<devices>{disk}</devices></domain>'.encode()


def parse(devices: str = "", head: str = "<name>g</name>", kind: str = "kvm"):
    return parse_domain(domain(devices, head, kind), WHERE)


def file_disk(path: str, dev: str, bus: str = "", fmt: str = "", extra: str = "") -> str:
    driver = f'<driver name="qemu" type="{fmt}"/>' if fmt else ""
    bus_attr = f' bus="{bus}"' if bus else ""
    return (f'<disk type="file" device="disk">{driver}<source file="{path}"/>'
            f'<target dev="{dev}"{bus_attr}/>{extra}</disk>')


# ---------------------------------------------------------------- the parser


@pytest.mark.parametrize("memory, expect", [
    ("<memory>2097152</memory>", 2 * GiB),  # KiB when no unit
    ('<memory unit="KiB">1024</memory>', MiB),
    ('<memory unit="k">1024</memory>', MiB),
    ('<memory unit="MiB">1536</memory>', 1536 * MiB),
    ('<memory unit="M">512</memory>', 512 * MiB),
    ('<memory unit="GiB">4</memory>', 4 * GiB),
    ('<memory unit="G">4</memory>', 4 * GiB),
    ('<memory unit="bytes">123456</memory>', 123456),
    ('<memory unit="b">4096</memory>', 4096),
    ('<memory unit="KB">1000</memory>', 1000 * 1000),  # libvirt: KB is decimal
    ('<memory unit="GB">2</memory>', 2 * 1000**3),
    ('<memory unit="TiB">1</memory>', 1024**4),
    ('<currentMemory unit="MiB">256</currentMemory>', 256 * MiB),
    ("", DEFAULT_MEMORY),
])
def test_memory_units(memory, expect):
    assert parse(head=f"<name>g</name>{memory}").source.memory == expect


@pytest.mark.parametrize("memory, expect", [
    ('<memory unit="parsecs">1</memory>', "unit 'parsecs'"),
    ("<memory>lots</memory>", "not a whole number"),
    ("<memory>-5</memory>", "negative"),
])
def test_bad_memory_is_bad_input(memory, expect):
    with pytest.raises(V2VError) as info:
        parse(head=f"<name>g</name>{memory}")
    assert info.value.code == pb.ERROR_CODE_BAD_INPUT
    assert expect in info.value.message and WHERE in info.value.message


def test_vcpus_and_topology():
    s = parse(head='<name>g</name><vcpu placement="static">8</vcpu>'
                   '<cpu mode="host-model"><topology sockets="2" cores="2" threads="2"/></cpu>').source
    assert s.vcpus == 8
    assert s.HasField("cpu_topology") and (s.cpu_topology.sockets, s.cpu_topology.cores,
                                           s.cpu_topology.threads) == (2, 2, 2)


def test_topology_alone_gives_vcpus_and_dies_fold_into_sockets():
    s = parse(head='<name>g</name><cpu><topology sockets="1" dies="2" cores="3" threads="1"/></cpu>').source
    assert (s.cpu_topology.sockets, s.cpu_topology.cores, s.cpu_topology.threads) == (2, 3, 1)
    assert s.vcpus == 6


def test_no_vcpu_no_topology():
    s = parse().source
    assert s.vcpus == 1 and not s.HasField("cpu_topology")
    assert s.name == "g"


def test_incomplete_topology_is_unset():
    s = parse(head='<name>g</name><vcpu>2</vcpu><cpu><topology sockets="1"/></cpu>').source
    assert s.vcpus == 2 and not s.HasField("cpu_topology")


@pytest.mark.parametrize("os_el, expect", [
    ("", pb.FIRMWARE_UNSPECIFIED),
    ("<os><type>hvm</type></os>", pb.FIRMWARE_UNSPECIFIED),
    ('<os firmware="efi"><type>hvm</type></os>', pb.FIRMWARE_UEFI),
    ('<os firmware="bios"><type>hvm</type></os>', pb.FIRMWARE_BIOS),
    ('<os><type>hvm</type><loader readonly="yes" type="pflash">/usr/share/x/code.fd</loader></os>',
     pb.FIRMWARE_UEFI),
    ('<os><loader type="rom">/usr/share/OVMF/OVMF.fd</loader></os>', pb.FIRMWARE_UEFI),
    ('<os><loader type="rom">/usr/share/seabios/bios-256k.bin</loader></os>', pb.FIRMWARE_UNSPECIFIED),
])
def test_firmware(os_el, expect):
    assert parse(head=f"<name>g</name>{os_el}").source.firmware == expect


@pytest.mark.parametrize("kind, expect", [
    ("kvm", pb.HYPERVISOR_KVM), ("qemu", pb.HYPERVISOR_KVM), ("xen", pb.HYPERVISOR_XEN),
    ("vmware", pb.HYPERVISOR_VMWARE), ("hyperv", pb.HYPERVISOR_HYPERV), ("vbox", pb.HYPERVISOR_VIRTUALBOX),
    ("lxc", pb.HYPERVISOR_UNSPECIFIED),
])
def test_hypervisor(kind, expect):
    assert parse(kind=kind).source.hypervisor == expect


def test_disks_in_order_with_buses_and_formats():
    d = parse(
        '<controller type="scsi" index="0" model="virtio-scsi"/>'
        '<controller type="scsi" index="1" model="lsilogic"/>'
        + file_disk("/a.qcow2", "vda", "virtio", "qcow2")
        + '<disk type="file" device="cdrom"><target dev="hdc" bus="ide"/></disk>'
        + file_disk("b.img", "sda", "scsi", "raw")
        + file_disk("/c.img", "sdb", "scsi", extra='<address type="drive" controller="1" bus="0" unit="0"/>')
        + file_disk("/d.img", "sdc", "sata")
        + file_disk("/e.img", "hda", "ide")
        + file_disk("/f.img", "vdb")  # no bus: libvirt takes it from the name
        + '<disk type="block" device="lun"><source dev="/dev/sdz"/><target dev="sdd" bus="scsi"/></disk>'
        + file_disk("/g.img", "xvda", "xen")
    )
    assert [(r.index, r.path, r.kind) for r in d.disks] == [
        (0, "/a.qcow2", "file"), (1, "b.img", "file"), (2, "/c.img", "file"), (3, "/d.img", "file"),
        (4, "/e.img", "file"), (5, "/f.img", "file"), (6, "/dev/sdz", "block"), (7, "/g.img", "file")]
    assert [r.format for r in d.disks] == ["qcow2", "raw", "", "", "", "", "", ""]
    assert [r.controller for r in d.disks] == [
        pb.CONTROLLER_VIRTIO_BLK, pb.CONTROLLER_VIRTIO_SCSI, pb.CONTROLLER_SCSI, pb.CONTROLLER_SATA,
        pb.CONTROLLER_IDE, pb.CONTROLLER_VIRTIO_BLK, pb.CONTROLLER_VIRTIO_SCSI, pb.CONTROLLER_UNSPECIFIED]
    assert not d.source.disks  # the plugin fills them once it probed the files


def test_removables():
    s = parse(
        file_disk("/a.img", "vda", "virtio")
        + '<disk type="file" device="cdrom"><source file="/x.iso"/><target dev="hdc" bus="ide"/></disk>'
        + '<disk type="file" device="cdrom"><target dev="sdb" bus="sata"/></disk>'
        + '<disk type="file" device="floppy"><target dev="fda" bus="fdc"/></disk>'
        + '<disk type="file" device="cdrom"><target bus="ide"/></disk>'
    ).source
    assert [(r.type, r.controller, r.slot) for r in s.removables] == [
        (pb.REMOVABLE_TYPE_CDROM, pb.CONTROLLER_IDE, 2),
        (pb.REMOVABLE_TYPE_CDROM, pb.CONTROLLER_SATA, 1),
        (pb.REMOVABLE_TYPE_FLOPPY, pb.CONTROLLER_UNSPECIFIED, 0),
        (pb.REMOVABLE_TYPE_CDROM, pb.CONTROLLER_IDE, 3),  # no name: the next free slot
    ]


def test_nics():
    s = parse(
        '<interface type="network"><mac address="52:54:00:AA:bb:01"/><source network="default"/>'
        '<model type="virtio"/></interface>'
        '<interface type="bridge"><mac address="52:54:00:aa:bb:02"/><source bridge="br0"/>'
        '<model type="e1000"/></interface>'
        '<interface type="user"><model type="rtl8139"/></interface>'
        '<interface type="network"><source network="lan"/><model type="vmxnet3"/></interface>'
        '<interface type="bridge"><source bridge="br1"/><model type="ne2k_pci"/></interface>'
        '<interface type="network"><source network="bare"/></interface>'
        + file_disk("/a.img", "vda")
    ).source
    assert [(n.mac, n.network, n.network_type, n.model) for n in s.nics] == [
        ("52:54:00:aa:bb:01", "default", pb.NETWORK_TYPE_NETWORK, pb.NIC_MODEL_VIRTIO),
        ("52:54:00:aa:bb:02", "br0", pb.NETWORK_TYPE_BRIDGE, pb.NIC_MODEL_E1000),
        ("", "", pb.NETWORK_TYPE_UNSPECIFIED, pb.NIC_MODEL_RTL8139),
        ("", "lan", pb.NETWORK_TYPE_NETWORK, pb.NIC_MODEL_VMXNET3),
        ("", "br1", pb.NETWORK_TYPE_BRIDGE, pb.NIC_MODEL_UNSPECIFIED),
        ("", "bare", pb.NETWORK_TYPE_NETWORK, pb.NIC_MODEL_UNSPECIFIED),
    ]


def test_nbd_disks():
    d = parse(
        '<disk type="network" device="disk"><driver name="qemu" type="raw"/>'
        '<source protocol="nbd" name="exp one"><host name="nbd.example" port="10900"/></source>'
        '<target dev="vda" bus="virtio"/></disk>'
        '<disk type="network" device="disk"><source protocol="nbd"><host name="::1"/></source>'
        '<target dev="vdb"/></disk>'
        '<disk type="network" device="disk"><driver type="qcow2"/>'
        '<source protocol="nbd" name="e"><host transport="unix" socket="/run/n.sock"/></source>'
        '<target dev="sda" bus="sata"/></disk>'
    )
    assert [r.nbd for r in d.disks] == [NbdSource("exp one", "nbd.example", 10900),
                                        NbdSource("", "::1", 10809), NbdSource("e", socket="/run/n.sock")]
    assert [r.nbd.uri() for r in d.disks] == [
        "nbd://nbd.example:10900/exp%20one", "nbd://[::1]:10809/", "nbd+unix:///e?socket=/run/n.sock"]
    assert [(r.kind, r.format, r.controller) for r in d.disks] == [
        ("nbd", "raw", pb.CONTROLLER_VIRTIO_BLK), ("nbd", "", pb.CONTROLLER_VIRTIO_BLK),
        ("nbd", "qcow2", pb.CONTROLLER_SATA)]


@pytest.mark.parametrize("disk, code, expect", [
    ('<disk type="network" device="disk"><source protocol="rbd" name="p/i"/><target dev="vda"/></disk>',
     pb.ERROR_CODE_UNSUPPORTED, "protocol 'rbd'"),
    ('<disk type="volume" device="disk"><source pool="p" volume="v"/><target dev="vda"/></disk>',
     pb.ERROR_CODE_UNSUPPORTED, "disk type 'volume'"),
    ('<disk type="network" device="disk"><source protocol="nbd"/><target dev="vda"/></disk>',
     pb.ERROR_CODE_BAD_INPUT, "no <host>"),
    ('<disk type="network" device="disk"><source protocol="nbd"><host transport="unix"/></source>'
     '<target dev="vda"/></disk>', pb.ERROR_CODE_BAD_INPUT, "names no socket"),
    ('<disk type="network" device="disk"><source protocol="nbd"><host name="h" port="x"/></source>'
     '<target dev="vda"/></disk>', pb.ERROR_CODE_BAD_INPUT, "port 'x'"),
    ('<disk type="file" device="disk"><target dev="vda"/></disk>', pb.ERROR_CODE_BAD_INPUT,
     "disk 0 (vda) has no source"),
    ('<disk type="block" device="disk"><source/><target dev="vdb"/></disk>', pb.ERROR_CODE_BAD_INPUT,
     "disk 0 (vdb) has no source"),
    ('<disk type="file" device="cdrom"><target dev="hdc"/></disk>', pb.ERROR_CODE_BAD_INPUT, "no disks"),
])
def test_parser_refuses(disk, code, expect):
    with pytest.raises(V2VError) as info:
        parse(disk)
    assert info.value.code == code and expect in info.value.message and WHERE in info.value.message


@pytest.mark.parametrize("data, expect", [
    (b"this is not xml", "not XML"),
    (b"<domain><name>g</name>", "not XML"),
    (b'<network><name>default</name></network>', "root element is <network>"),
    (domain(head=""), "no <name>"),
])
def test_parser_bad_documents(data, expect):
    with pytest.raises(V2VError) as info:
        parse_domain(data, WHERE)
    assert info.value.code == pb.ERROR_CODE_BAD_INPUT and expect in info.value.message


BILLION_LAUGHS = b"""<?xml version="1.0"?>
<!DOCTYPE domain [
 <!ENTITY a "aaaaaaaaaa">
 <!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;">
 <!ENTITY c "&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;">
]>
<domain type="kvm"><name>&c;</name><devices>
<disk type="file" device="disk"><source file="/d.img"/><target dev="vda"/></disk></devices></domain>"""

XXE = b"""<?xml version="1.0"?>
<!DOCTYPE domain [<!ENTITY x SYSTEM "file:///etc/passwd">]>
<domain type="kvm"><name>&x;</name><devices>
<disk type="file" device="disk"><source file="/d.img"/><target dev="vda"/></disk></devices></domain>"""


@pytest.mark.parametrize("data", [BILLION_LAUGHS, XXE], ids=["billion-laughs", "xxe"])
def test_entities_refused(data):
    with pytest.raises(V2VError) as info:
        parse_domain(data, WHERE)
    assert info.value.code == pb.ERROR_CODE_BAD_INPUT
    assert "refused" in info.value.message and WHERE in info.value.message
    assert "root:" not in info.value.message


# ---------------------------------------------------------------- the plugin, through the service


def open_xml(svc, workroot, xml):
    wd = WorkDir.create("t", workroot)
    req = input_pb2.OpenRequest(workdir=wd.name, guest="t", input=input_pb2.InputSpec(
        libvirtxml=input_pb2.LibvirtXmlInput(path=str(xml))))
    return wd, svc.open(req)


def write_domain(path: Path, devices: str, name: str = "lx") -> Path:
    path.write_text(f"""<domain type="kvm">
  <name>{name}</name>
  <memory unit="MiB">1536</memory>
  <vcpu>2</vcpu>
  <os firmware="bios"><type arch="x86_64" machine="q35">hvm</type></os>
  <devices>
    {devices}
    <disk type="file" device="cdrom"><target dev="sdc" bus="sata"/><readonly/></disk>
    <interface type="bridge"><mac address="52:54:00:12:34:56"/><source bridge="br0"/><model type="e1000"/>
    </interface>
  </devices>
</domain>
""")
    return path


def read_at(sock: str, offsets: list[int], length: int = 4096) -> list[bytes]:
    h = nbd.NBD()
    h.connect_uri(f"nbd+unix:///?socket={sock}")
    try:
        return [h.pread(length, off) for off in offsets]
    finally:
        h.shutdown()


def file_at(path: Path, offsets: list[int], length: int = 4096) -> list[bytes]:
    with open(path, "rb") as f:
        out = []
        for off in offsets:
            f.seek(off)
            out.append(f.read(length))
        return out


def write_through(sock: str) -> None:
    write_reads_back(sock)  # lands in the overlay, never in the source


def test_real_guest_raw_and_qcow2(real_guest, workroot, tmp_path):
    raw, qcow = real_guest, real_guest.with_suffix(".qcow2")
    before = {raw: sha256(raw), qcow: sha256(qcow)}
    # One path relative to the XML, one absolute: libvirt wants absolute, a relative one is
    # taken from the XML's directory.
    xml = write_domain(tmp_path / "lx.xml",
                       file_disk(os.path.relpath(raw, tmp_path), "sda", "sata", "raw")
                       + file_disk(str(qcow), "vdb", "virtio", "qcow2"))
    svc = InputService()
    wd, resp = open_xml(svc, workroot, xml)
    try:
        s = resp.source
        assert (s.name, s.memory, s.vcpus, s.hypervisor, s.firmware) == (
            "lx", 1536 * MiB, 2, pb.HYPERVISOR_KVM, pb.FIRMWARE_BIOS)
        assert [(d.index, d.location, d.format, d.virtual_size, d.controller) for d in s.disks] == [
            (0, str(raw), "raw", raw.stat().st_size, pb.CONTROLLER_SATA),
            (1, str(qcow), "qcow2", raw.stat().st_size, pb.CONTROLLER_VIRTIO_BLK)]
        assert [(n.mac, n.network, n.network_type, n.model) for n in s.nics] == [
            ("52:54:00:12:34:56", "br0", pb.NETWORK_TYPE_BRIDGE, pb.NIC_MODEL_E1000)]
        assert [(r.type, r.controller, r.slot) for r in s.removables] == [
            (pb.REMOVABLE_TYPE_CDROM, pb.CONTROLLER_SATA, 2)]
        assert wd.read(WorkDir.SOURCE, pb.Source()) == s
        assert resp.sockets == [str(wd.in_sock(0)), str(wd.in_sock(1))]
        size = raw.stat().st_size
        offsets = [0, 512, MiB + 7, 300 * MiB, size // 2 + 12345, size - 4096]
        expect = file_at(raw, offsets)
        assert any(b.strip(b"\0") for b in expect[1:])  # the offsets see data, not just zeroes
        for sock in resp.sockets:
            assert read_at(sock, offsets) == expect
            write_through(sock)
    finally:
        svc.close(wd.name)
    assert {p: sha256(p) for p in before} == before
    assert not list(wd.path.glob("*.sock"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def remote_nbd(path: Path, *, sock: Path | None = None, port: int = 0, export: str = ""):
    """A read-only qemu-nbd standing in for a remote NBD source, serving `path`'s bytes as they are."""
    where = [f"--socket={sock}"] if sock else ["--bind=127.0.0.1", f"--port={port}"]
    p = subprocess.Popen(["qemu-nbd", "--read-only", "--persistent", "--shared=0", "--format=raw",
                          f"--export-name={export}", *where, str(path)], stderr=subprocess.PIPE)
    uri = f"nbd+unix:///{export}?socket={sock}" if sock else f"nbd://127.0.0.1:{port}/{export}"
    try:
        deadline = time.monotonic() + 20
        while True:
            assert p.poll() is None, p.stderr.read().decode() if p.stderr else "qemu-nbd died"
            h = nbd.NBD()
            try:
                h.connect_uri(uri)
                h.shutdown()
                break
            except nbd.Error:
                assert time.monotonic() < deadline, "qemu-nbd did not start"
                time.sleep(0.05)
        yield uri
    finally:
        p.terminate()
        p.wait(timeout=10)


def nbd_disk(dev: str, host: str, fmt: str = "raw", export: str = "") -> str:
    return (f'<disk type="network" device="disk"><driver name="qemu" type="{fmt}"/>'
            f'<source protocol="nbd" name="{export}">{host}</source><target dev="{dev}" bus="virtio"/></disk>')


def test_nbd_disks_served_through_overlays(workroot, tmp_path):
    data = os.urandom(4 * MiB)
    small = tmp_path / "small.raw"
    small.write_bytes(data)
    qcow = tmp_path / "small.qcow2"
    subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", small, qcow], check=True)
    before = {small: sha256(small), qcow: sha256(qcow)}
    port = free_port()
    # the sockets of the stand-in servers live under workroot: its leak check covers them too
    raw_sock, qcow_sock = workroot / "r.sock", workroot / "q.sock"
    with remote_nbd(small, sock=raw_sock, export="disk0"), remote_nbd(small, port=port), \
            remote_nbd(qcow, sock=qcow_sock):
        xml = write_domain(tmp_path / "n.xml",
                           nbd_disk("vda", f'<host transport="unix" socket="{raw_sock}"/>', export="disk0")
                           + nbd_disk("vdb", f'<host name="127.0.0.1" port="{port}"/>')
                           # the export carries qcow2 bytes: the XML says so, and the guest sees raw data
                           + nbd_disk("vdc", f'<host transport="unix" socket="{qcow_sock}"/>', fmt="qcow2"))
        svc = InputService()
        wd, resp = open_xml(svc, workroot, xml)
        try:
            assert [(d.location, d.format, d.virtual_size) for d in resp.source.disks] == [
                (f"nbd+unix:///disk0?socket={raw_sock}", "raw", 4 * MiB),
                (f"nbd://127.0.0.1:{port}/", "raw", 4 * MiB),
                (f"nbd+unix:///?socket={qcow_sock}", "qcow2", 4 * MiB)]
            offsets = [0, 4095, MiB + 3, 4 * MiB - 4096]
            expect = [data[o:o + 4096] for o in offsets]
            for sock in resp.sockets:
                assert read_at(sock, offsets) == expect
                write_through(sock)
                assert read_at(sock, [4096]) == [data[4096:8192]]
        finally:
            svc.close(wd.name)
    assert {p: sha256(p) for p in before} == before


def test_nbd_source_that_does_not_answer(workroot, tmp_path):
    xml = write_domain(tmp_path / "n.xml", nbd_disk("vda", f'<host transport="unix" socket="{workroot}/none"/>'))
    svc = InputService()
    started = time.monotonic()
    with pytest.raises(V2VError) as info:
        open_xml(svc, workroot, xml)
    assert time.monotonic() - started < 10  # no wait for a server's readiness timeout
    err = info.value
    assert err.code == pb.ERROR_CODE_BAD_INPUT and err.disk == 0
    assert str(xml) in err.message and "cannot reach the nbd source" in err.message


@contextmanager
def loop_device(path: Path):
    """A read-only loop device over `path`, or a skip where this machine has none to give."""
    res = subprocess.run(["losetup", "--find", "--show", "--read-only", str(path)], capture_output=True,
                         text=True, check=False)
    if res.returncode != 0:
        pytest.skip(f"no loop device: {res.stderr.strip()}")
    dev = res.stdout.strip()
    try:
        yield Path(dev)
    finally:
        subprocess.run(["losetup", "--detach", dev], check=False)


def test_block_device_disk(workroot, tmp_path):
    # An MBR signature, so the raw-looks-like-a-disk check passes with no <driver type>.
    data = bytearray(os.urandom(2 * MiB))
    data[510:512] = b"\x55\xaa"
    img = tmp_path / "blk.img"
    img.write_bytes(bytes(data))
    before = sha256(img)
    with loop_device(img) as dev:
        xml = write_domain(tmp_path / "b.xml", f'<disk type="block" device="disk"><source dev="{dev}"/>'
                                              '<target dev="sda" bus="scsi"/></disk>')
        svc = InputService()
        wd, resp = open_xml(svc, workroot, xml)
        try:
            assert [(d.location, d.format, d.virtual_size, d.controller) for d in resp.source.disks] == [
                (str(dev), "raw", 2 * MiB, pb.CONTROLLER_SCSI)]
            assert read_at(resp.sockets[0], [0, MiB + 1]) == [bytes(data[0:4096]), bytes(data[MiB + 1:MiB + 4097])]
            write_through(resp.sockets[0])
        finally:
            svc.close(wd.name)
    assert sha256(img) == before


# ---------------------------------------------------------------- bad input


def _bad(tmp_path: Path, case: str, real: Path) -> Path:
    xml = tmp_path / "bad.xml"
    ok = file_disk(str(real), "vda", fmt="raw")
    if case == "missing":
        return xml
    if case == "directory":
        xml.mkdir()
        return xml
    xml.write_bytes({
        "not-xml": b"\x00\x01 not xml at all",
        "not-domain": b"<pool type='dir'><name>p</name></pool>",
        "no-disks": b"<domain type='kvm'><name>g</name><devices></devices></domain>",
        "no-source": domain('<disk type="file" device="disk"><target dev="vda"/></disk>'),
        "missing-source-file": domain(ok + file_disk("gone.img", "vdb")),
        "unknown-driver-type": domain(file_disk(str(real), "vda", fmt="floppyfs")),
        "entities": BILLION_LAUGHS,
        "xxe": XXE,
    }[case])
    return xml


@pytest.mark.parametrize("case, expect", [
    ("missing", "no such file"),
    ("directory", "is a directory"),
    ("not-xml", "not XML"),
    ("not-domain", "not a libvirt domain XML"),
    ("no-disks", "has no disks"),
    ("no-source", "has no source"),
    ("missing-source-file", "gone.img: no such file"),
    ("unknown-driver-type", "<driver type='floppyfs'> is not a disk format"),
    ("entities", "refused"),
    ("xxe", "refused"),
])
def test_bad_input_is_one_line_naming_the_file(real_guest, workroot, tmp_path, case, expect):
    xml = _bad(tmp_path, case, real_guest)
    svc = InputService()
    with pytest.raises(V2VError) as info:
        open_xml(svc, workroot, xml)
    err = info.value
    assert err.code == pb.ERROR_CODE_BAD_INPUT and err.step == "open"
    assert expect in err.message and str(xml) in err.message and "\n" not in err.one_line()
    if case == "missing-source-file":
        assert err.disk == 1 and str(tmp_path / "gone.img") in err.message
    # the workroot fixture checks that no server of the good first disk is left


def test_raw_file_that_is_no_disk_names_the_xml_fix(workroot, tmp_path):
    junk = tmp_path / "junk.img"
    junk.write_bytes(b"just text\n" * 10000)
    xml = tmp_path / "j.xml"
    xml.write_bytes(domain(file_disk("junk.img", "vda")))
    with pytest.raises(V2VError) as info:
        open_xml(InputService(), workroot, xml)
    assert "not a disk image" in info.value.message and "<driver type='raw'/>" in info.value.message
    xml.write_bytes(domain(file_disk("junk.img", "vda", fmt="raw")))  # the XML says raw: served
    svc = InputService()
    wd, resp = open_xml(svc, workroot, xml)
    try:
        assert read_at(resp.sockets[0], [0], 10) == [b"just text\n"]
    finally:
        svc.close(wd.name)


def test_no_path_given(workroot):
    with pytest.raises(V2VError, match="no domain XML file given"):
        open_xml(InputService(), workroot, "")


def test_cpu_model_graphics_sound_and_secure_boot():
    xml = b"""<domain type="kvm"><name>g</name><memory>1048576</memory>
  <os firmware="efi"><type>hvm</type><loader secure="yes"/></os>
  <cpu mode="custom"><model>Skylake-Server</model><vendor>Intel</vendor></cpu>
  <devices>
    <disk type="file" device="disk"><source file="/x.img"/><target dev="vda" bus="virtio"/></disk>
    <graphics type="spice" port="5901" listen="127.0.0.1"/>
    <sound model="ich9"/><sound model="ac97"/>
  </devices></domain>"""
    s = parse_domain(xml, "g.xml").source
    assert (s.cpu_model, s.cpu_vendor, s.secure_boot) == ("Skylake-Server", "Intel", True)
    assert (s.graphics.type, s.graphics.listen, s.graphics.port) == ("spice", "127.0.0.1", 5901)
    assert list(s.sound) == ["ich9", "ac97"]
    passthrough = xml.replace(b'mode="custom"', b'mode="host-passthrough"')
    assert parse_domain(passthrough, "g.xml").source.cpu_model == "host-passthrough"
