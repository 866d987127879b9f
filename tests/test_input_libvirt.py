"""-i libvirt: a guest defined in a real libvirtd, read through the libvirt API; and refusals."""

import os

import nbd
import pytest

from tests.conftest import sha256
from tests.libvirtd import remove_domain, virsh
from v2v.errors import V2VError
from v2v.services.input.service import InputService
from v2v.v1 import input_pb2
from v2v.v1 import types_pb2 as pb
from v2v.workdir import WorkDir


def open_guest(workroot, uri, domain):
    svc = InputService()
    wd = WorkDir.create("t", workroot)
    resp = svc.open(input_pb2.OpenRequest(workdir=wd.name, guest="t", input=input_pb2.InputSpec(
        libvirt=input_pb2.LibvirtInput(uri=uri, domain=domain))))
    return svc, wd, resp


@pytest.fixture
def defined(libvirtd, phony, tmp_path):
    name = f"v2vin-{os.getpid()}"
    xml = tmp_path / "dom.xml"
    xml.write_text(f"""<domain type="qemu">
  <name>{name}</name>
  <memory unit="MiB">1536</memory>
  <vcpu>2</vcpu>
  <os><type arch="x86_64" machine="pc">hvm</type></os>
  <devices>
    <disk type="file" device="disk">
      <driver name="qemu" type="raw"/>
      <source file="{phony / 'debian-single.img'}"/>
      <target dev="sda" bus="sata"/>
    </disk>
    <interface type="user"><mac address="52:54:00:aa:bb:cc"/><model type="e1000"/></interface>
  </devices>
</domain>
""")
    virsh("define", str(xml))
    yield name
    remove_domain(name)


def test_a_defined_guest_opens(defined, phony, workroot):
    disk = phony / "debian-single.img"
    before = sha256(disk)
    svc, wd, resp = open_guest(workroot, "qemu:///system", defined)
    try:
        s = resp.source
        assert (s.name, s.memory, s.vcpus) == (defined, 1536 * 1024**2, 2)
        assert [(d.location, d.format, d.controller) for d in s.disks] == [(str(disk), "raw", pb.CONTROLLER_SATA)]
        assert s.nics[0].mac == "52:54:00:aa:bb:cc"
        h = nbd.NBD()
        h.connect_uri(f"nbd+unix:///?socket={resp.sockets[0]}")
        h.pwrite(b"\0" * 512, 0)
        h.shutdown()
    finally:
        svc.close(wd.name)
    assert sha256(disk) == before


def test_unknown_guest(libvirtd, workroot):
    with pytest.raises(V2VError, match="no guest 'nobody-here' at qemu:///system") as info:
        open_guest(workroot, "qemu:///system", "nobody-here")
    assert info.value.code == pb.ERROR_CODE_BAD_INPUT


def test_running_guest_is_refused(workroot):
    # libvirt's test driver: in-process, no daemon, and its guest "test" is running.
    with pytest.raises(V2VError, match="is running: shut it down first"):
        open_guest(workroot, "test:///default", "test")


def test_unreachable_libvirt(workroot):
    with pytest.raises(V2VError, match="is not reachable") as info:
        open_guest(workroot, "qemu+unix:///system?socket=/nonexistent/sock", "g")
    assert info.value.code == pb.ERROR_CODE_SERVICE_UNAVAILABLE
