"""-i vmx -it https (the real guest from a stand-in HTTPS datastore, tests/https_datastore.py: not
VMware, see its doc), -it vddk (no VDDK exists here: the command line and the clear refusal) and
Xen over ssh (the disks of a Xen-like domain XML read from "the host" = a private sshd on
localhost; libvirt's side where it can be tested without a Xen host)."""

from __future__ import annotations

import re
import socket
import time
from contextlib import ExitStack, contextmanager
from pathlib import Path

import pytest

from tests.conftest import child_servers, write_reads_back
from tests.https_datastore import DATACENTER, DATASTORE, running_datastore
from tests.sshd import running_sshd, usable
from tests.test_input_vmx import OFFSETS, check_real_source, make_chain, raw_at, read_at
from v2v.cli.inputs import input_spec
from v2v.errors import V2VError
from v2v.options import Options
from v2v.plugins import InputArgs
from v2v.services.input import vddk, xen
from v2v.services.input.locations import input_location
from v2v.services.input.service import InputService
from v2v.services.input.vmware_https import CurlNbdkit, DsFile, Https
from v2v.v1 import input_pb2
from v2v.v1 import types_pb2 as pb
from v2v.workdir import WorkDir

GiB = 1024**3
VMX = "guest/debian12-vmware.vmx"
FLAT = "guest/debian12-vmware-flat.vmdk"


@pytest.fixture(scope="module")
def datastore(real_guest, tmp_path_factory):
    """The stand-in datastore; the real guest's VM directory is its folder "guest"."""
    root = tmp_path_factory.mktemp("datastore")
    (root / "guest").symlink_to(real_guest.parent / "vmx")
    with running_datastore(tmp_path_factory.mktemp("https"), root) as ds:
        yield ds


def open_input(workroot, **spec):
    """InputService.open of one InputSpec field; returns (workdir, response)."""
    svc = InputService()
    wd = WorkDir.create("in", workroot)
    resp = svc.open(input_pb2.OpenRequest(workdir=wd.name, guest="in", input=input_pb2.InputSpec(**spec)))
    return svc, wd, resp


@contextmanager
def opened(workroot, **spec):
    svc, wd, resp = open_input(workroot, **spec)
    try:
        yield wd, resp
    finally:
        svc.close(wd.name)
    assert child_servers() == []


def refused(workroot, **spec) -> V2VError:
    with pytest.raises(V2VError) as info:
        open_input(workroot, **spec)
    assert "\n" not in info.value.one_line() and info.value.step == "open"
    assert child_servers() == []
    return info.value


def https(url, password_file="", insecure=True):
    return input_pb2.VmwareHttpsInput(url=url, password_file=str(password_file), insecure=insecure)


def free_port() -> int:
    with socket.socket() as s:  # nothing listens on it once closed
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------- -it https


def test_https_serves_the_real_guest_with_one_login_then_the_cookie(real_guest, datastore, workroot):
    """v2v logs in once; nbdkit once more, through its cookie-script (a HEAD of the extent), and
    then sends that session's cookie. Renewal: tests/reliability/test_session_renewal.py."""
    before = len(datastore.requests())
    with opened(workroot, vmware_https=https(datastore.url(VMX), datastore.password_file)) as (wd, resp):
        check_real_source(resp.source)
        disk = resp.source.disks[0]
        assert disk.format == "raw" and disk.location == datastore.url(FLAT)
        size, got = read_at(resp.sockets[0], OFFSETS)
        assert size == 4 * GiB and got == raw_at(real_guest, OFFSETS)
        write_reads_back(resp.sockets[0])  # lands in the overlay, never in the source
        assert not [f for f in wd.path.rglob("*") if f.is_file() and b"vmware_soap_session" in f.read_bytes()]
    assert raw_at(real_guest.parent / "vmx" / "debian12-vmware-flat.vmdk", [0]) == raw_at(real_guest, [0])
    requests = datastore.requests()[before:]
    assert requests[0].startswith(f"GET /folder/{VMX}?") and requests[0].endswith("auth=basic 206")
    logins = [r for r in requests if " auth=basic " in r]
    assert logins[1:] == [f"HEAD /folder/{FLAT}?dcPath={DATACENTER}&dsName={DATASTORE} auth=basic 200"]
    assert len(requests) > 4 and all(" auth=cookie " in r for r in requests if r not in logins)
    assert any(r.startswith(f"GET /folder/{FLAT}?") and r.endswith(" 206") for r in requests)


def test_https_without_a_session_cookie_logs_in_every_time(real_guest, workroot, tmp_path):
    """A host that gives out no cookie: nbdkit's curl gets the user and the password file instead."""
    (tmp_path / "root").mkdir()
    (tmp_path / "root" / "guest").symlink_to(real_guest.parent / "vmx")
    with running_datastore(tmp_path / "https", tmp_path / "root", cookies=False) as ds:
        with opened(workroot, vmware_https=https(ds.url(VMX), ds.password_file)) as (wd, resp):
            assert read_at(resp.sockets[0], OFFSETS[:2])[1] == raw_at(real_guest, OFFSETS[:2])
            log = (wd.path / "logs" / "input-disk0.log").read_text()
        requests = ds.requests()
    assert requests and all(" auth=basic " in r for r in requests)
    assert ds.password_file.read_text().strip() not in log


def test_https_self_signed_certificate_is_refused_unless_sslverify_false(datastore, workroot):
    before = len(datastore.requests())
    err = refused(workroot, vmware_https=https(datastore.url(VMX), datastore.password_file, insecure=False))
    assert err.code == pb.ERROR_CODE_BAD_INPUT
    assert err.message.startswith(f"{datastore.url(VMX)}: certificate verify failed: self-signed certificate")
    assert "-io sslverify=false" in err.message
    assert datastore.requests()[before:] == []  # refused before any request was sent


def test_https_wrong_password_is_an_authentication_error(datastore, workroot, tmp_path):
    pw = tmp_path / "password"
    pw.write_text("certainly-not-the-password\n")
    err = refused(workroot, vmware_https=https(datastore.url(VMX), pw))
    assert err.code == pb.ERROR_CODE_BAD_INPUT and err.message == f"{datastore.url(VMX)}: authentication failed"
    err = refused(workroot, vmware_https=https(datastore.url(VMX)))
    assert err.message.endswith("authentication failed (no password given: -ip FILE)")


def test_https_unreachable_host(workroot, tmp_path):
    pw = tmp_path / "password"
    pw.write_text("x\n")
    url = f"https://root@127.0.0.1:{free_port()}/folder/{VMX}?dcPath=dc&dsName=ds"
    err = refused(workroot, vmware_https=https(url, pw))
    assert err.code == pb.ERROR_CODE_BAD_INPUT
    assert err.message == f"{url}: cannot connect to 127.0.0.1: Connection refused"


def test_https_missing_files_name_the_url(datastore, workroot, tmp_path):
    pw = datastore.password_file
    err = refused(workroot, vmware_https=https(datastore.url("guest/nowhere.vmx"), pw))
    assert err.code == pb.ERROR_CODE_BAD_INPUT
    assert err.message == f"{datastore.url('guest/nowhere.vmx')}: cannot read it: no such file on the datastore " \
                          "(HTTP 404)"
    err = refused(workroot, vmware_https=https(datastore.url(VMX, ds="datastore2"), pw))
    assert "HTTP 404" in err.message
    noflat = datastore.root / "noflat"
    noflat.mkdir()
    for name in ("debian12-vmware.vmx", "debian12-vmware.vmdk"):
        (noflat / name).write_text((datastore.root / "guest" / name).read_text())
    err = refused(workroot, vmware_https=https(datastore.url("noflat/debian12-vmware.vmx"), pw))
    assert err.code == pb.ERROR_CODE_BAD_INPUT
    assert err.message.endswith(f"its extent {datastore.url('noflat/debian12-vmware-flat.vmdk')} does not exist")


def test_https_sparse_and_snapshot_disks_are_unsupported(datastore, workroot):
    vmx = make_chain(datastore.root / "chain")  # qemu's VMDKs are hosted sparse ones
    url = datastore.url("chain/chain.vmx")
    err = refused(workroot, vmware_https=https(url, datastore.password_file))
    assert err.code == pb.ERROR_CODE_UNSUPPORTED
    assert err.message.startswith(f"{url}: disk child.vmdk: a sparse VMDK; over HTTPS only flat VMDKs")
    (vmx.parent / "child.vmdk").write_text(  # what ESXi writes for a snapshot
        '# Disk DescriptorFile\nversion=1\nCID=fffffffe\nparentCID=ffffffff\ncreateType="vmfsSparse"\n'
        'parentFileNameHint="base.vmdk"\nRW 131072 VMFSSPARSE "child-delta.vmdk"\n')
    err = refused(workroot, vmware_https=https(url, datastore.password_file))
    assert err.code == pb.ERROR_CODE_UNSUPPORTED and "a snapshot (delta) disk" in err.message


def test_curl_nbdkit_refused_cookie_fails_fast(datastore, workroot):
    """If nbdkit's curl is refused where v2v's own login worked (an expired session, say), the
    start fails at the first error nbdkit logs, not after the start timeout."""
    h = Https.from_options(https(datastore.url(VMX), datastore.password_file))
    wd = WorkDir.create("curl", workroot)
    cookie = wd.path / "cookie"
    cookie.write_text('vmware_soap_session="expired"')
    server = CurlNbdkit(h, wd.in_sock(0), wd.log("in0.log"), "disk 0", [
        f"url={h.url(DsFile(DATASTORE, FLAT), user=False)}", f"cookie=+{cookie}", "sslverify=false"])
    t = time.monotonic()
    with pytest.raises(V2VError) as info:
        server.start(timeout=25)
    assert time.monotonic() - t < 20
    assert info.value.code == pb.ERROR_CODE_BAD_INPUT and "authentication failed (nbdkit curl)" in info.value.message
    assert not server.process.running() and child_servers() == []


@pytest.mark.parametrize("url, expect", [
    ("https://host/folder/g/g.vmx", "expected https://"),  # no dsName
    ("https://host/g/g.vmx?dcPath=dc&dsName=ds", "expected https://"),  # not under /folder/
    ("https://host/folder/g/g.vmdk?dcPath=dc&dsName=ds", "expected https://"),
    ("http://host/folder/g/g.vmx?dcPath=dc&dsName=ds", "not an https://"),
    ("https://host:port/folder/g/g.vmx?dcPath=dc&dsName=ds", "not an https://"),
    ("https:///folder/g/g.vmx?dcPath=dc&dsName=ds", "no host"),
    ("https://root:secret@host/folder/g/g.vmx?dcPath=dc&dsName=ds", "carries a password"),
])
def test_https_bad_url(workroot, url, expect):
    err = refused(workroot, vmware_https=https(url))
    assert err.code == pb.ERROR_CODE_BAD_INPUT and expect in err.message and "secret" not in err.message


def test_https_password_needs_a_user(workroot, tmp_path):
    pw = tmp_path / "password"
    pw.write_text("x\n")
    err = refused(workroot, vmware_https=https("https://host/folder/g/g.vmx?dsName=ds", pw))
    assert "names no user" in err.message


def test_https_datastore_paths_and_urls():
    h = Https.from_options(https("https://admin%40vsphere.local@vc.example.com:8443/folder/My%20VM/My%20VM.vmx"
                                 "?dcPath=DC%2FEast&dsName=ds%201"))
    assert (h.host, h.port, h.user, h.datacenter) == ("vc.example.com", 8443, "admin@vsphere.local", "DC/East")
    assert h.vmx == DsFile("ds 1", "My VM/My VM.vmx")
    assert h.resolve("My VM.vmdk") == DsFile("ds 1", "My VM/My VM.vmdk")
    assert h.resolve("../other/x.vmdk") == DsFile("ds 1", "other/x.vmdk")
    assert h.resolve("/vmfs/volumes/ds2/big/big.vmdk") == DsFile("ds2", "big/big.vmdk")
    assert h.url(DsFile("ds 1", "My VM/My VM.vmdk")) == \
        "https://admin%40vsphere.local@vc.example.com:8443/folder/My%20VM/My%20VM.vmdk?dcPath=DC%2FEast&dsName=ds%201"
    assert h.url(DsFile("ds2", "a.vmdk"), user=False).startswith("https://vc.example.com:8443/folder/a.vmdk?")
    with pytest.raises(V2VError, match="not on a datastore"):
        h.resolve("/home/x.vmdk")


# ---------------------------------------------------------------- command line


def spec_of(kind, files, uri="", transport="", password="", io=()):
    return input_spec(InputArgs(kind, list(files), "", uri, transport, password, Options("-io", "", list(io))))


def test_cli_maps_https_vddk_and_xen(tmp_path):
    url = f"https://root@esx1/folder/{VMX}?dcPath={DATACENTER}&dsName={DATASTORE}"
    spec = spec_of("vmx", [url], transport="https", password="pw", io=["sslverify=false"])
    assert spec.vmware_https == input_pb2.VmwareHttpsInput(url=url, password_file=str(Path("pw").absolute()),
                                                           insecure=True)
    assert input_location(spec) == f"/folder/{VMX}"
    assert spec_of("vmx", [url]).vmware_https.insecure is False  # an https:// location needs no -it
    assert spec_of("vmx", [url], io=["session-renew=600"]).vmware_https.session_renew_seconds == 600
    for bad in ("0", "25m", ""):
        with pytest.raises(V2VError, match=f"-io session-renew={bad}: expected a number of seconds|needs a value"):
            spec_of("vmx", [url], io=[f"session-renew={bad}"])
    spec = spec_of("vmx", [url], transport="vddk", password="pw", io=[
        f"vddk-libdir={tmp_path}", "vddk-thumbprint=AA:BB", "vddk-moref=vm-42", "vddk-transports=nbdssl:nbd",
        "vddk-port=902"])
    assert (spec.vddk.https.url, spec.vddk.libdir, spec.vddk.thumbprint, spec.vddk.moref, spec.vddk.transports,
            spec.vddk.port) == (url, str(tmp_path), "AA:BB", "vm-42", "nbdssl:nbd", 902)
    spec = spec_of("libvirt", ["xenguest"], uri="xen+ssh://root@xen1", password="pw")
    assert spec.xen == input_pb2.XenSshInput(uri="xen+ssh://root@xen1", domain="xenguest",
                                             password_file=str(Path("pw").absolute()))
    assert input_location(spec) == "xenguest"
    assert spec_of("libvirt", ["g"], uri="qemu:///system").WhichOneof("kind") == "libvirt"
    with pytest.raises(V2VError, match="-it nfs: -i vmx knows ssh, https, vddk"):
        spec_of("vmx", ["x.vmx"], transport="nfs")
    with pytest.raises(V2VError, match="expected https://"):
        spec_of("vmx", ["/local/x.vmx"], transport="https")
    with pytest.raises(V2VError, match="unknown -io option"):
        spec_of("vmx", [url], transport="https", io=["vddk-libdir=/x"])
    with pytest.raises(V2VError, match="unknown -io option"):  # VDDK logs in itself
        spec_of("vmx", [url], transport="vddk", io=[f"vddk-libdir={tmp_path}", "session-renew=600"])


# ---------------------------------------------------------------- -it vddk


def vddk_options(libdir="/opt/vmware-vix-disklib-distrib", **extra):
    return input_pb2.VddkInput(
        https=https(f"https://root@esx1.example.com/folder/{VMX}?dcPath=ha-datacenter&dsName=datastore1",
                    "/etc/v2v/esx-password"),
        libdir=libdir, thumbprint="12:34:56:78:9A:BC:DE:F0:12:34:56:78:9A:BC:DE:F0:12:34:56:78", moref="vm-42", **extra)


def test_vddk_command_line(workroot, monkeypatch):
    monkeypatch.setattr("v2v.services.input.vmware_https.check_local_file", lambda path, what: path)
    options = vddk_options(transports="nbdssl:nbd", port=902, snapshot="snapshot-7")
    h = Https.from_options(options.https)
    vmdk = vddk.vmdk_path(h.resolve("debian12-vmware.vmdk"))
    assert vmdk == "[datastore1] guest/debian12-vmware.vmdk"
    wd = WorkDir.create("vddk", workroot)
    server = vddk.VddkNbdkit(wd.in_sock(0), wd.log("in0.log"), "disk 0", vddk.vddk_args(options, h, vmdk))
    assert server.command() == [
        "nbdkit", "--foreground", "--exit-with-parent", "--unix", str(wd.in_sock(0)),
        "--filter=cow", "--filter=cacheextents", "--filter=retry", "vddk",
        "libdir=/opt/vmware-vix-disklib-distrib", "server=esx1.example.com", "user=root",
        "password=+/etc/v2v/esx-password", f"thumbprint={options.thumbprint}", "vm=moref=vm-42",
        "file=[datastore1] guest/debian12-vmware.vmdk", "port=902", "transports=nbdssl:nbd", "snapshot=snapshot-7"]
    assert not server.process.running()


def test_vddk_missing_here_is_unsupported(workroot, tmp_path):
    assert vddk._plugin_missing(), "this test expects a host without nbdkit's vddk plugin"
    err = refused(workroot, vddk=vddk_options(libdir=str(tmp_path)))
    assert err.code == pb.ERROR_CODE_UNSUPPORTED
    assert err.message.startswith("-it vddk needs nbdkit's vddk plugin and VMware's VDDK library (libvixDiskLib.so "
                                  f"in -io vddk-libdir={tmp_path}): not found here: nbdkit has no vddk plugin")
    assert f"no libvixDiskLib.so in {tmp_path}/lib64" in err.message
    (tmp_path / "lib64").mkdir()
    (tmp_path / "lib64" / "libvixDiskLib.so.8").write_bytes(b"")  # the library, but still no plugin
    err = refused(workroot, vddk=vddk_options(libdir=str(tmp_path)))
    assert err.code == pb.ERROR_CODE_UNSUPPORTED and "no vddk plugin" in err.message and "lib64" not in err.message
    assert "no -io vddk-libdir= given" in refused(workroot, vddk=vddk_options(libdir="")).message


def test_vddk_with_plugin_and_library_checks_its_options(workroot, tmp_path, monkeypatch):
    """Where both exist, the options come next (checked before any connection)."""
    monkeypatch.setattr(vddk, "_plugin_missing", lambda: "")
    (tmp_path / "lib64").mkdir()
    (tmp_path / "lib64" / "libvixDiskLib.so.8").write_bytes(b"")
    assert vddk._library_missing(str(tmp_path)) == ""
    options = vddk_options(libdir=str(tmp_path))
    options.moref = ""
    err = refused(workroot, vddk=options)
    assert err.code == pb.ERROR_CODE_BAD_INPUT and "-io vddk-moref=" in err.message
    options = vddk_options(libdir=str(tmp_path))
    options.https.password_file = ""
    assert "-ip FILE" in refused(workroot, vddk=options).message


# ---------------------------------------------------------------- Xen over ssh


@pytest.fixture(scope="module")
def sshd(tmp_path_factory):
    why = usable()
    if why:
        pytest.skip(why)
    with running_sshd(tmp_path_factory.mktemp("sshd")) as server:
        yield server


def xen_uri(sshd) -> str:
    return f"xen+ssh://root@127.0.0.1:{sshd.port}/system?keyfile={sshd.key}&no_verify=1"


def xen_xml(*disks: str) -> bytes:
    return f"""<domain type='xen'>
  <name>xenguest</name><memory unit='MiB'>1024</memory><vcpu>2</vcpu>
  <os><type arch='x86_64' machine='xenfv'>hvm</type></os>
  <devices>{''.join(disks)}
    <interface type='bridge'><mac address='00:16:3E:12:34:56'/><source bridge='xenbr0'/></interface>
  </devices>
</domain>""".encode()


def file_disk(path, dev, fmt="") -> str:
    driver = f"<driver name='qemu' type='{fmt}'/>" if fmt else ""
    return f"<disk type='file' device='disk'>{driver}<source file='{path}'/><target dev='{dev}' bus='xen'/></disk>"


def test_xen_uri_gives_the_disks_ssh_login(tmp_path):
    key = tmp_path / "key"
    key.write_text("k")
    ssh = xen.ssh_source(f"xen+ssh://admin@xen1.example.com:2222/system?keyfile={key}&no_verify=1", "")
    assert (ssh.host, ssh.port, ssh.user, ssh.identity, ssh.insecure) == (
        "xen1.example.com", 2222, "admin", str(key), True)
    ssh = xen.ssh_source("xen+ssh://xen1", "")
    assert (ssh.host, ssh.port, ssh.user, ssh.identity, ssh.insecure) == ("xen1", None, "", "", False)
    for uri, expect in [("xen:///system", "over ssh only"), ("xen+ssh://root:pw@xen1", "carries a password"),
                        ("xen+ssh:///system", "no host"), ("xen+ssh://xen1:port", "not a xen+ssh://"),
                        ("xen+ssh://xen1/?keyfile=/nonexistent", "no such readable file")]:
        with pytest.raises(V2VError, match=re.escape(expect)):
            xen.ssh_source(uri, "")


def test_xen_without_libvirt_xen_driver_is_unsupported(workroot, monkeypatch):
    """What the Xen host's libvirt says when it has no Xen driver (as libvirtconn.connect reports it)."""
    @contextmanager
    def no_driver(uri, readonly=False):
        raise V2VError(f"libvirt at {uri} is not reachable: no connection driver available for xen:///system",
                       pb.ERROR_CODE_BAD_INPUT, detail="virError(Code=5, Domain=0, Message='no connection driver')")
        yield

    monkeypatch.setattr(xen, "connect", no_driver)
    err = refused(workroot, xen=input_pb2.XenSshInput(uri="xen+ssh://root@xen1", domain="g"))
    assert err.code == pb.ERROR_CODE_UNSUPPORTED
    assert err.message.startswith("libvirt's Xen driver is not available here (xen+ssh://root@xen1: ")


def test_xen_running_guest_is_refused(workroot, monkeypatch):
    class Dom:
        def isActive(self):
            return True

    class Conn:
        def lookupByName(self, name):
            return Dom()

    @contextmanager
    def conn(uri, readonly=False):
        yield Conn()

    monkeypatch.setattr(xen, "connect", conn)
    err = refused(workroot, xen=input_pb2.XenSshInput(uri="xen+ssh://root@xen1", domain="g"))
    assert err.code == pb.ERROR_CODE_BAD_INPUT and "is running: shut it down first" in err.message


def test_xen_serves_raw_and_qcow2_files_over_ssh(real_guest, sshd, workroot, monkeypatch):
    qcow2 = real_guest.with_suffix(".qcow2")
    xml = xen_xml(file_disk(real_guest, "xvda", "raw"), file_disk(qcow2, "xvdb", "qcow2"), file_disk(qcow2, "xvdc"))
    monkeypatch.setattr(xen, "domain_xml", lambda uri, domain: xml)
    with opened(workroot, xen=input_pb2.XenSshInput(uri=xen_uri(sshd), domain="xenguest")) as (wd, resp):
        src = resp.source
        assert (src.name, src.hypervisor, src.memory, src.vcpus) == ("xenguest", pb.HYPERVISOR_XEN, GiB, 2)
        assert [(d.index, d.format, d.virtual_size, d.location) for d in src.disks] == [
            (0, "raw", 4 * GiB, f"ssh://root@127.0.0.1:{sshd.port}{real_guest}"),
            (1, "qcow2", 4 * GiB, f"ssh://root@127.0.0.1:{sshd.port}{qcow2}"),
            (2, "qcow2", 4 * GiB, f"ssh://root@127.0.0.1:{sshd.port}{qcow2}"),  # found by its magic
        ]
        want = raw_at(real_guest, OFFSETS)
        for sock in resp.sockets[:2]:
            assert read_at(sock, OFFSETS)[1] == want
        write_reads_back(resp.sockets[1])  # lands in the overlay, never in the source
    assert raw_at(real_guest, [0]) == want[:1]


def test_xen_block_devices_and_missing_files_are_refused_before_serving(real_guest, sshd, workroot, monkeypatch):
    block = "<disk type='block' device='disk'><driver name='phy'/><source dev='/dev/vg/xen'/>" \
            "<target dev='xvdb' bus='xen'/></disk>"
    for disks, code, expect in [
        ((file_disk(real_guest, "xvda"), block), pb.ERROR_CODE_UNSUPPORTED, "/dev/vg/xen is a block device"),
        ((file_disk(real_guest, "xvda"), file_disk("/nonexistent/x.img", "xvdb")), pb.ERROR_CODE_BAD_INPUT,
         "cannot read it"),
        ((file_disk(real_guest, "xvda", "qed2"),), pb.ERROR_CODE_BAD_INPUT, "not a disk format"),
    ]:
        monkeypatch.setattr(xen, "domain_xml", lambda uri, domain, d=disks: xen_xml(*d))
        err = refused(workroot, xen=input_pb2.XenSshInput(uri=xen_uri(sshd), domain="xenguest"))
        assert err.code == code and expect in err.message
        assert err.message.startswith(f"{xen_uri(sshd)} guest xenguest: ")


def test_xen_aio_is_raw(real_guest, sshd, workroot):
    """Old Xen's tap:aio driver type names a raw file."""
    ssh = xen.ssh_source(xen_uri(sshd), "")
    wd = WorkDir.create("xen", workroot)
    with ExitStack() as stack:
        src = xen.open_xen_domain(xen_xml(file_disk(real_guest, "xvda", "aio")), "x", ssh, wd, stack)
        assert src.disks[0].format == "raw" and src.disks[0].virtual_size == 4 * GiB
    assert child_servers() == []
