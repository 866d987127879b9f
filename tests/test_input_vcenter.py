"""-i libvirt -ic vpx://|esx:// (services/input/vcenter.py). No vSphere here: libvirt's ESX driver,
which speaks vSphere's SOAP API, is the one untested step. Everything after it, from a domain XML
of datastore paths to served disks, runs for real against tests/https_datastore.py (a stand-in
for a datastore's /folder URLs, NOT VMware): with the domain XML as libvirt's ESX driver writes one
(the driver's answer imitated), and through a real libvirt connection to libvirt's test driver
holding a shut-off guest whose disks are datastore paths (-io vpx-server= names the stand-in)."""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.conftest import V2V, child_servers, sha256, write_reads_back
from tests.https_datastore import DATACENTER, DATASTORE, running_datastore
from tests.reliability.test_secrets import files_holding, run_watching_argv
from tests.test_input_vmx import OFFSETS, raw_at, read_at
from v2v.cli.inputs import input_spec
from v2v.errors import V2VError
from v2v.options import Options
from v2v.plugins import InputArgs
from v2v.services.input import vcenter
from v2v.services.input.domainxml import DiskRef
from v2v.services.input.locations import input_location
from v2v.services.input.service import InputService
from v2v.services.input.vmware_https import DsFile
from v2v.v1 import input_pb2
from v2v.v1 import types_pb2 as pb
from v2v.workdir import WorkDir

GiB = 1024**3
SMALL_SIZE = 16 * 1024**2
REAL = f"[{DATASTORE}] guest/debian12-vmware.vmdk"
SMALL = f"[{DATASTORE}] small/small.vmdk"
VCENTER_DC = "Lab/DC1"  # a datacenter inside a folder: dcPath is its whole inventory path


def flat_descriptor(extent: str, size: int, create_type: str = "vmfs") -> str:
    return (f'# Disk DescriptorFile\nversion=1\nCID=12345678\nparentCID=ffffffff\ncreateType="{create_type}"\n\n'
            f'RW {size // 512} VMFS "{extent}"\n')


def lay_out(root: Path, real_guest: Path) -> None:
    """The datastore: the real guest's VM directory as "guest", a small random flat disk (read whole,
    byte for byte), and disks that must be refused."""
    (root / "guest").symlink_to(real_guest.parent / "vmx")
    small = root / "small"
    small.mkdir()
    (small / "small-flat.vmdk").write_bytes(hashlib.shake_256(b"v2v vcenter").digest(SMALL_SIZE))
    (small / "small.vmdk").write_text(flat_descriptor("small-flat.vmdk", SMALL_SIZE))
    (small / "noextent.vmdk").write_text(flat_descriptor("gone-flat.vmdk", SMALL_SIZE))
    (small / "small-000001.vmdk").write_text(  # what ESXi writes for a snapshot
        '# Disk DescriptorFile\nversion=1\nCID=fffffffe\nparentCID=12345678\ncreateType="vmfsSparse"\n'
        'parentFileNameHint="small.vmdk"\nRW 32768 VMFSSPARSE "small-000001-delta.vmdk"\n')


@pytest.fixture(scope="module")
def datastore(real_guest, tmp_path_factory):
    """An ESXi host's datastore1 (datacenter ha-datacenter)."""
    root = tmp_path_factory.mktemp("datastore")
    lay_out(root, real_guest)
    with running_datastore(tmp_path_factory.mktemp("https"), root) as ds:
        yield ds


@pytest.fixture(scope="module")
def vcenter_datastore(datastore, tmp_path_factory):
    """The same files seen through a vCenter, in its datacenter Lab/DC1."""
    with running_datastore(tmp_path_factory.mktemp("vc"), datastore.root, datacenter=VCENTER_DC) as ds:
        yield ds


def esx_xml(*disks: str, name: str = "web01", datacenter: str | None = DATACENTER) -> bytes:
    """A domain XML as libvirt's ESX driver writes one (libvirt's vmx.c: type vmware, SCSI disks on
    an lsilogic controller, datastore paths, <vmware:datacenterpath>)."""
    devices = "".join(
        f"<disk type='file' device='disk'><source file='{d}'/><target dev='sd{chr(97 + i)}' bus='scsi'/>"
        f"<address type='drive' controller='0' bus='0' target='0' unit='{i}'/></disk>" for i, d in enumerate(disks))
    dc = f"<vmware:datacenterpath>{datacenter}</vmware:datacenterpath>" if datacenter else ""
    return f"""<domain type='vmware' xmlns:vmware='http://libvirt.org/schemas/domain/vmware/1.0'>
  <name>{name}</name>
  <uuid>564d1a2b-3c4d-5e6f-7a8b-9c0d1e2f3a4b</uuid>
  <memory unit='KiB'>2097152</memory>
  <vcpu placement='static'>2</vcpu>
  <os><type arch='x86_64'>hvm</type></os>
  <devices>
    {devices}
    <disk type='file' device='cdrom'><source file='[{DATASTORE}] iso/debian.iso'/>
      <target dev='hda' bus='ide'/></disk>
    <controller type='scsi' index='0' model='lsilogic'/>
    <interface type='bridge'><mac address='00:50:56:a1:b2:c3'/><source bridge='VM Network'/>
      <model type='vmxnet3'/></interface>
  </devices>
  {dc}
  <vmware:moref>vm-42</vmware:moref>
</domain>""".encode()


def esx_uri(ds, query: str = "?no_verify=1") -> str:
    return f"esx://root@127.0.0.1:{ds.port}{query}"


def options(uri: str, password_file, domain: str = "web01", **extra) -> input_pb2.VCenterInput:
    return input_pb2.VCenterInput(uri=uri, domain=domain, password_file=str(password_file), **extra)


@pytest.fixture
def esx_answers(monkeypatch):
    """What libvirt's ESX driver would answer: set `.xml`; `.asked` records (uri, domain, user)."""

    class Answers:
        xml = b""
        asked: list[tuple[str, str, str]] = []

    answers = Answers()

    def domain_xml(uri, domain, server):
        answers.asked.append((uri, domain, server.user))
        return answers.xml

    monkeypatch.setattr(vcenter, "domain_xml", domain_xml)
    return answers


def open_input(workroot, opts: input_pb2.VCenterInput):
    svc = InputService()
    wd = WorkDir.create("vc", workroot)
    resp = svc.open(input_pb2.OpenRequest(workdir=wd.name, guest="vc", input=input_pb2.InputSpec(vcenter=opts)))
    return svc, wd, resp


@contextmanager
def opened(workroot, opts):
    svc, wd, resp = open_input(workroot, opts)
    try:
        yield wd, resp
    finally:
        svc.close(wd.name)
    assert child_servers() == []


def refused(workroot, opts) -> V2VError:
    with pytest.raises(V2VError) as info:
        open_input(workroot, opts)
    assert "\n" not in info.value.one_line() and info.value.step == "open"
    assert child_servers() == []
    return info.value


def copied_sha256(sock: str, tmp_path: Path) -> str:
    out = tmp_path / "copy.raw"
    subprocess.run(["nbdcopy", f"nbd+unix:///?socket={sock}", str(out)], check=True, timeout=120)
    digest = sha256(out)
    out.unlink()
    return digest


# ---------------------------------------------------------------- served for real


def test_esx_guest_disks_are_served_from_the_datastore(real_guest, datastore, esx_answers, workroot, tmp_path):
    esx_answers.xml = esx_xml(REAL, SMALL)
    small_flat = datastore.root / "small" / "small-flat.vmdk"
    before = len(datastore.requests())
    with opened(workroot, options(esx_uri(datastore), datastore.password_file)) as (wd, resp):
        src = resp.source
        assert (src.name, src.hypervisor, src.memory, src.vcpus) == ("web01", pb.HYPERVISOR_VMWARE, 2 * GiB, 2)
        assert [(d.index, d.location, d.format, d.virtual_size, d.controller) for d in src.disks] == [
            (0, datastore.url("guest/debian12-vmware-flat.vmdk"), "raw", 4 * GiB, pb.CONTROLLER_SCSI),
            (1, datastore.url("small/small-flat.vmdk"), "raw", SMALL_SIZE, pb.CONTROLLER_SCSI)]
        assert [r.type for r in src.removables] == [pb.REMOVABLE_TYPE_CDROM]
        assert src.nics[0].mac == "00:50:56:a1:b2:c3"
        assert read_at(resp.sockets[0], OFFSETS) == (4 * GiB, raw_at(real_guest, OFFSETS))
        assert copied_sha256(resp.sockets[1], tmp_path) == sha256(small_flat)
        write_reads_back(resp.sockets[1])  # lands in the overlay, never on the datastore
        assert not [f for f in wd.path.rglob("*") if f.is_file() and b"vmware_soap_session" in f.read_bytes()]
    assert esx_answers.asked == [(esx_uri(datastore), "web01", "root")]
    assert sha256(small_flat) == hashlib.sha256(hashlib.shake_256(b"v2v vcenter").digest(SMALL_SIZE)).hexdigest()
    requests = datastore.requests()[before:]
    assert requests[0].startswith("GET /folder/guest/debian12-vmware.vmdk?dcPath=ha-datacenter&dsName=datastore1 ")
    assert requests[0].endswith("auth=basic 206")  # the login: basic auth once, then the session cookie
    # and each disk's nbdkit logs in once more, through its cookie-script (a HEAD of its extent)
    logins = [r for r in requests if " auth=basic " in r]
    assert sorted(logins[1:]) == [f"HEAD /folder/{flat}?dcPath={DATACENTER}&dsName={DATASTORE} auth=basic 200"
                                  for flat in ("guest/debian12-vmware-flat.vmdk", "small/small-flat.vmdk")]
    assert len(requests) > 4 and all(" auth=cookie " in r for r in requests if r not in logins)  # nbdkit's reads too


def test_vpx_datacenter_path_comes_from_the_xml(vcenter_datastore, esx_answers, workroot):
    """vCenter: libvirt's ESX driver writes the datacenter's inventory path (folders included) as
    <vmware:datacenterpath>; it is the dcPath, whatever the -ic path says."""
    ds = vcenter_datastore
    esx_answers.xml = esx_xml(SMALL, datacenter=VCENTER_DC)
    uri = f"vpx://root@127.0.0.1:{ds.port}/Lab/DC1/Cluster1/esxi1.lab?no_verify=1"
    with opened(workroot, options(uri, ds.password_file)) as (_wd, resp):
        assert resp.source.disks[0].location == ds.url("small/small-flat.vmdk")
        assert "dcPath=Lab%2FDC1&dsName=datastore1" in resp.source.disks[0].location
        assert read_at(resp.sockets[0], [0, SMALL_SIZE - 4096]) == (SMALL_SIZE, raw_at(
            ds.root / "small" / "small-flat.vmdk", [0, SMALL_SIZE - 4096]))
    # without the element (libvirt < 1.2.20): -io vpx-dcpath= names it, else a clear refusal
    esx_answers.xml = esx_xml(SMALL, datacenter=None)
    err = refused(workroot, options(uri, ds.password_file))
    assert err.code == pb.ERROR_CODE_BAD_INPUT
    assert err.message.startswith(f"{uri} guest web01: the domain XML has no <vmware:datacenterpath>")
    assert "-io vpx-dcpath=DATACENTER" in err.message
    with opened(workroot, options(uri, ds.password_file, datacenter=VCENTER_DC)) as (_wd, resp):
        assert read_at(resp.sockets[0], [0])[0] == SMALL_SIZE


@pytest.fixture
def test_driver_node(datastore, tmp_path) -> Path:
    """A libvirt test-driver node holding a shut-off VMware guest whose disks are datastore paths;
    like the ESX driver, it asks for root's password (the datastore's) through the auth callback."""
    xml = esx_xml(REAL, SMALL, name="vmguest", datacenter=None).decode()
    xml = xml.replace("xmlns:vmware=", "xmlns:test='http://libvirt.org/schemas/domain/test/1.0' xmlns:vmware=")
    xml = re.sub(r"<vmware:moref>.*</vmware:moref>", "<test:runstate>5</test:runstate>", xml)  # 5: shut off
    password = datastore.password_file.read_text().strip()
    node = tmp_path / "node.xml"
    node.write_text(f"<node><auth><user password='{password}'>root</user></auth>{xml}</node>")
    return node


def test_libvirt_test_driver_guest_read_through_vpx_server(real_guest, datastore, test_driver_node, workroot,
                                                           tmp_path):
    """The libvirt step for real (test driver: the same API calls the ESX driver answers, the login
    included), the datastores named by -io vpx-server= and -io vpx-dcpath=, as the docs show."""
    uri = f"test://{test_driver_node}"
    opts = options(uri, datastore.password_file, domain="vmguest", server=f"root@127.0.0.1:{datastore.port}",
                   datacenter=DATACENTER, insecure=True)
    with opened(workroot, opts) as (_wd, resp):
        assert resp.source.name == "vmguest" and resp.source.hypervisor == pb.HYPERVISOR_VMWARE
        assert [d.location for d in resp.source.disks] == [datastore.url("guest/debian12-vmware-flat.vmdk"),
                                                            datastore.url("small/small-flat.vmdk")]
        assert read_at(resp.sockets[0], OFFSETS[:3])[1] == raw_at(real_guest, OFFSETS[:3])
    err = refused(workroot, options(uri, datastore.password_file, domain="nobody", server="root@127.0.0.1:1",
                                    datacenter=DATACENTER))
    assert err.code == pb.ERROR_CODE_BAD_INPUT and err.message.startswith(f"-i libvirt: no guest 'nobody' at {uri}")
    pw = tmp_path / "pw"
    pw.write_text("not-the-password\n")
    err = refused(workroot, options(uri, pw, domain="vmguest", server="root@127.0.0.1:1", datacenter=DATACENTER))
    assert err.code == pb.ERROR_CODE_BAD_INPUT
    assert err.message.startswith(f"libvirt cannot connect to {uri}: authentication failed")


def test_the_password_of_a_libvirt_login_is_nowhere(datastore, test_driver_node, workroot):
    """Matrix item 7 for -i libvirt with VMware datastores: the password file serves libvirt's
    login (the test driver asks for it as ESX does) and the datastores'; the password is in no
    process's arguments while the guest is opened, not in the output, and in no work-directory file."""
    password = datastore.password_file.read_text().strip()
    cmd = [str(V2V), "-i", "libvirt", "-ic", f"test://{test_driver_node}", "-io",
           f"vpx-server=root@127.0.0.1:{datastore.port}", "-io", f"vpx-dcpath={DATACENTER}", "-io", "sslverify=false",
           "-ip", str(datastore.password_file), "vmguest", "--print-source", "--machine-readable"]
    result, argvs = run_watching_argv(cmd, {**os.environ, "V2V_WORKDIR_ROOT": str(workroot)})
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr
    assert datastore.url("guest/debian12-vmware-flat.vmdk") in result.stdout
    assert argvs and not any(password in argv for argv in argvs)
    assert password not in result.stdout and password not in result.stderr
    assert files_holding(workroot, password) == []


# ---------------------------------------------------------------- refused


def test_wrong_password_is_one_line_naming_the_file(datastore, esx_answers, workroot, tmp_path):
    esx_answers.xml = esx_xml(REAL)
    pw = tmp_path / "pw"
    pw.write_text("not-the-password\n")
    err = refused(workroot, options(esx_uri(datastore), pw))
    assert err.code == pb.ERROR_CODE_BAD_INPUT
    assert err.message == f"{esx_uri(datastore)} guest web01: {datastore.url('guest/debian12-vmware.vmdk')}: " \
                          "authentication failed"
    assert err.disk == 0


def test_self_signed_certificate_refused_unless_no_verify(datastore, esx_answers, workroot):
    esx_answers.xml = esx_xml(REAL)
    before = len(datastore.requests())
    err = refused(workroot, options(esx_uri(datastore, query=""), datastore.password_file))
    assert err.code == pb.ERROR_CODE_BAD_INPUT
    assert err.message.startswith(f"{esx_uri(datastore, query='')} guest web01: "
                                  f"{datastore.url('guest/debian12-vmware.vmdk')}: certificate verify failed: "
                                  "self-signed certificate")
    assert datastore.requests()[before:] == []  # refused before any request was sent
    # -io sslverify=false does what ?no_verify=1 does
    with opened(workroot, options(esx_uri(datastore, query=""), datastore.password_file, insecure=True)) as (_, resp):
        assert len(resp.sockets) == 1


@pytest.mark.parametrize("disks, code, expect", [
    ((REAL, f"[{DATASTORE}] guest/nowhere.vmdk"), pb.ERROR_CODE_BAD_INPUT,
     "{url[guest/nowhere.vmdk]}: cannot read it: no such file on the datastore (HTTP 404)"),
    (("[datastore2] guest/debian12-vmware.vmdk",), pb.ERROR_CODE_BAD_INPUT, "HTTP 404"),
    ((REAL, f"[{DATASTORE}] small/noextent.vmdk"), pb.ERROR_CODE_BAD_INPUT,
     f"disk [{DATASTORE}] small/noextent.vmdk: its extent {{url[small/gone-flat.vmdk]}} does not exist"),
    ((f"[{DATASTORE}] small/small-000001.vmdk",), pb.ERROR_CODE_UNSUPPORTED,
     f"disk [{DATASTORE}] small/small-000001.vmdk: a snapshot (delta) disk; over HTTPS only flat VMDKs"),
    ((REAL, "/vmfs/volumes/datastore1/guest/x.vmdk"), pb.ERROR_CODE_BAD_INPUT,
     "sdb: '/vmfs/volumes/datastore1/guest/x.vmdk' is not a datastore path ([DATASTORE] DIR/NAME.vmdk)"),
])
def test_bad_disks_are_refused_before_any_server_starts(datastore, esx_answers, workroot, disks, code, expect):
    esx_answers.xml = esx_xml(*disks)
    err = refused(workroot, options(esx_uri(datastore), datastore.password_file))
    urls = {p: datastore.url(p) for p in ("guest/nowhere.vmdk", "small/gone-flat.vmdk")}
    assert err.code == code and err.disk == len(disks) - 1
    assert err.message.startswith(f"{esx_uri(datastore)} guest web01: ")
    assert expect.format(url=urls) in err.message


@pytest.mark.parametrize("uri, extra, expect", [
    ("esx://root:secret@esx1", {}, "the URI carries a password"),
    ("esx://esx1?no_verify=1", {}, "-ic esx://esx1?no_verify=1: name the user: USER@esx1"),
    ("test:///default", {"server": "10.0.0.5"}, "-io vpx-server=10.0.0.5: name the user: USER@10.0.0.5"),
    ("vpx:///DC/esx1", {}, "no server in the URI"),
    ("esx://root@esx1:port", {}, "not a URI"),
    ("qemu:///system", {}, "not a vpx:// or esx:// URI, and no -io vpx-server="),
    ("test:///default", {"server": "root:pw@host"}, "-io vpx-server=root:pw@host: not USER@HOST[:PORT]"),
    ("esx://root@esx1", {"password_file": ""}, "the password of root is needed in a file (-ip FILE)"),
    ("esx://root@esx1", {"password_file": "/nonexistent/pw"}, "/nonexistent/pw: password file: no such readable"),
])
def test_bad_uris_and_options(tmp_path, uri, extra, expect):
    pw = tmp_path / "pw"
    pw.write_text("x\n")
    opts = options(uri, pw)
    for key, value in extra.items():
        setattr(opts, key, value)
    with pytest.raises(V2VError) as info:
        vcenter.datastore_server(opts)
    assert info.value.code == pb.ERROR_CODE_BAD_INPUT and expect in info.value.message
    assert "secret" not in info.value.message


def test_no_guest_name(workroot):
    err = refused(workroot, options("esx://root@esx1", "/nonexistent", domain=""))
    assert err.message.startswith("-i libvirt: name the guest to convert")


def test_libvirt_input_points_vmware_uris_at_the_vcenter_input(workroot):
    svc = InputService()
    wd = WorkDir.create("lv", workroot)
    with pytest.raises(V2VError, match=r"a VMware URI: its guests are read by the vcenter input") as info:
        svc.open(input_pb2.OpenRequest(workdir=wd.name, guest="lv", input=input_pb2.InputSpec(
            libvirt=input_pb2.LibvirtInput(uri="vpx://root@vc/DC/esx1", domain="g"))))
    assert info.value.code == pb.ERROR_CODE_BAD_INPUT


# ---------------------------------------------------------------- pure rules


def test_server_login_and_datacenter_from_the_uri(tmp_path):
    pw = tmp_path / "pw"
    pw.write_text("x\n")
    s = vcenter.datastore_server(options("vpx://administrator%40vsphere.local@vc.lab:8443/Lab/DC1/esxi1?no_verify=1",
                                         pw))
    assert (s.host, s.port, s.user, s.password_file, s.verify) == ("vc.lab", 8443, "administrator@vsphere.local",
                                                                   str(pw), False)
    s = vcenter.datastore_server(options("esx://root@esxi1.lab", pw))
    assert (s.host, s.port, s.user, s.verify) == ("esxi1.lab", None, "root", True)
    assert vcenter.datastore_server(options("esx://root@esxi1.lab", pw, insecure=True)).verify is False
    s = vcenter.datastore_server(options("test:///default", pw, server="admin@10.0.0.5:4443"))
    assert (s.host, s.port, s.user, s.verify) == ("10.0.0.5", 4443, "admin", True)
    where = "w"
    xml = esx_xml(SMALL, datacenter=VCENTER_DC)
    assert vcenter.datacenter(options("vpx://u@vc/Lab/DC1/h", pw), xml, where) == VCENTER_DC
    assert vcenter.datacenter(options("vpx://u@vc/Lab/DC1/h", pw, datacenter="Other"), xml, where) == "Other"
    assert vcenter.datacenter(options("esx://u@h", pw), esx_xml(SMALL, datacenter=None), where) == "ha-datacenter"


def test_datastore_paths():
    def ref(path, kind="file"):
        return DiskRef(index=0, kind=kind, target="sda", path=path)

    assert vcenter.descriptor(ref("[datastore1] web01/web01.vmdk")) == DsFile("datastore1", "web01/web01.vmdk")
    assert vcenter.descriptor(ref("[SAN LUN 7 (ssd)] My VM/My VM_1.vmdk")) == DsFile("SAN LUN 7 (ssd)",
                                                                                     "My VM/My VM_1.vmdk")
    for path in ("web01.vmdk", "[datastore1]web01.vmdk", "[] x.vmdk", "[ds] /abs/x.vmdk"):
        with pytest.raises(V2VError, match="is not a datastore path"):
            vcenter.descriptor(ref(path))
    with pytest.raises(V2VError, match="a block disk is not a datastore path"):
        vcenter.descriptor(ref("/dev/sdb", kind="block"))


# ---------------------------------------------------------------- command line


def spec_of(files, uri, password="", io=()):
    return input_spec(InputArgs("libvirt", list(files), "", uri, "", password, Options("-io", "", list(io))))


def test_cli_routes_vmware_uris_and_vpx_server_to_the_vcenter_input():
    uri = "vpx://administrator%40vsphere.local@vc.lab/Lab/DC1/esxi1?no_verify=1"
    spec = spec_of(["web01"], uri, password="vc.pw")
    assert spec.vcenter == input_pb2.VCenterInput(uri=uri, domain="web01",
                                                  password_file=str(Path("vc.pw").absolute()))
    assert input_location(spec) == "web01"
    assert spec_of(["g"], "esx://root@esxi1", io=["sslverify=false"]).vcenter.insecure is True
    assert spec_of(["g"], "esx://root@esxi1", io=["session-renew=600"]).vcenter.session_renew_seconds == 600
    spec = spec_of(["g"], "test:///node.xml", io=["vpx-server=root@127.0.0.1:8443", "vpx-dcpath=ha-datacenter"])
    assert (spec.vcenter.server, spec.vcenter.datacenter) == ("root@127.0.0.1:8443", "ha-datacenter")
    assert spec_of(["g"], "qemu:///system").WhichOneof("kind") == "libvirt"
    with pytest.raises(V2VError, match="unknown -io option"):
        spec_of(["g"], "qemu:///system", io=["sslverify=false"])


def test_print_source_through_the_cli(datastore, test_driver_node, v2v):
    res = v2v("-i", "libvirt", "-ic", f"test://{test_driver_node}", "-ip", str(datastore.password_file),
              "-io", f"vpx-server=root@127.0.0.1:{datastore.port}", "-io", "vpx-dcpath=ha-datacenter",
              "-io", "sslverify=false", "vmguest", "--print-source", timeout=180)
    assert res.rc == 0, res.stderr
    assert "source name: vmguest" in res.stdout and "hypervisor type: vmware" in res.stdout
    assert f"0: {datastore.url('guest/debian12-vmware-flat.vmdk')} (raw, 4.0 GiB) [scsi]" in res.stdout
    assert f"1: {datastore.url('small/small-flat.vmdk')} (raw, 16 MiB) [scsi]" in res.stdout
