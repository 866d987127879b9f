"""-o libvirt against a real libvirtd (qemu:///system, started here when none runs): volumes in a
throwaway dir pool, defined domains, and the real converted guest booting from them under TCG."""

import json
import os
import shutil
import subprocess
import tempfile
import time
import xml.etree.ElementTree as ET
from itertools import count
from pathlib import Path

import libvirt
import pytest

from tests.conftest import write_target
from tests.libvirtd import SYSTEM_URI, dir_pool, remove_domain, virsh
from tests.test_output import expected_image, write_through_nbd
from tests.windows_targets import server2022_emulated_q35, win7_32bit, xp_emulated
from v2v.errors import V2VError
from v2v.services.output.base import OUTPUTS
from v2v.services.output.libvirt import DOMAIN_MARK, domain_uri
from v2v.v1 import output_pb2
from v2v.v1 import types_pb2 as pb
from v2v.workdir import WorkDir

MiB = 1024**2
UNREACHABLE = "qemu+unix:///system?socket=/nonexistent/libvirt-sock"
_names = count()


@pytest.fixture(scope="session")
def pool(libvirtd) -> tuple[str, Path]:
    """(name, directory) of a dir pool of this run: concurrent runs must not share one."""
    name = f"v2vtest-{os.getpid()}"
    with dir_pool(name) as directory:
        yield name, directory


@pytest.fixture
def conn(libvirtd):
    c = libvirt.open(SYSTEM_URI)
    yield c
    c.close()


@pytest.fixture
def name(libvirtd) -> str:
    """A guest name no other test (or concurrent run) uses; its domain is removed afterwards."""
    guest = f"v2vt-{os.getpid()}-{next(_names)}"
    yield guest
    remove_domain(guest)



def spec(pool_name: str, fmt: str = "", domain_type: str = "qemu", uri: str = "", name: str = "",
         overwrite: bool = False) -> output_pb2.OutputSpec:
    return output_pb2.OutputSpec(name=name, format=fmt, overwrite=overwrite, libvirt=output_pb2.LibvirtOutput(
        uri=uri, pool=pool_name, domain_type=domain_type))


def make_target(name: str, *sizes: int) -> pb.TargetMeta:
    source = pb.Source(name=name, hypervisor=pb.HYPERVISOR_VMWARE, memory=512 * MiB, vcpus=1,
                       disks=[pb.SourceDisk(index=i, virtual_size=s) for i, s in enumerate(sizes)])
    return pb.TargetMeta(name=name, source=source, caps=pb.GuestCaps(
        block_bus=pb.BLOCK_BUS_VIRTIO_BLK, machine=pb.MACHINE_Q35, arch="x86_64"))


def check(service, output, target) -> None:
    service.check(output_pb2.CheckRequest(guest=target.name, output=output, source=target.source))


def setup(service, workdir, output, target) -> output_pb2.SetupResponse:
    return service.setup(output_pb2.SetupRequest(workdir=workdir.name, guest=target.name, output=output,
                                                 target=target))


def finalize(service, workdir, output) -> list[str]:
    return list(service.finalize(output_pb2.FinalizeRequest(workdir=workdir.name, output=output)).files)


def volumes(conn, pool_name: str) -> set[str]:
    return set(conn.storagePoolLookupByName(pool_name).listVolumes())


def define_dummy(name: str, directory: Path) -> None:
    """A domain of that name, defined by someone else than v2v."""
    xml = directory / f"{name}.dummy.xml"
    xml.write_text(f"<domain type='qemu'><name>{name}</name><memory unit='MiB'>64</memory>"
                   "<os><type arch='x86_64'>hvm</type></os></domain>")
    virsh("define", str(xml))


def test_check_unreachable_uri(service):
    with pytest.raises(V2VError) as exc:
        check(service, spec("default", uri=UNREACHABLE), make_target("g", MiB))
    assert exc.value.code == pb.ERROR_CODE_SERVICE_UNAVAILABLE
    assert UNREACHABLE in exc.value.message and exc.value.step == "check"


def test_check_uri_without_driver(service, libvirtd):
    with pytest.raises(V2VError) as exc:
        check(service, spec("default", uri="nosuchdriver:///x"), make_target("g", MiB))
    assert exc.value.code == pb.ERROR_CODE_BAD_INPUT
    assert "nosuchdriver:///x" in exc.value.message


def test_check_missing_pool(service, libvirtd):
    with pytest.raises(V2VError) as exc:
        check(service, spec("v2v-no-such-pool"), make_target("g", MiB))
    assert exc.value.code == pb.ERROR_CODE_BAD_INPUT
    assert "v2v-no-such-pool" in exc.value.message


def test_check_pool_not_dir_or_inactive(service, libvirtd, tmp_path):
    fs_pool, idle_pool = f"v2vtest-fs-{os.getpid()}", f"v2vtest-idle-{os.getpid()}"
    virsh("pool-define-as", fs_pool, "fs", "--source-dev", "/dev/null", "--target", str(tmp_path))
    virsh("pool-define-as", idle_pool, "dir", "--target", str(tmp_path))
    try:
        for pool_name, expected in [(fs_pool, "of type 'fs'"), (idle_pool, "not active")]:
            with pytest.raises(V2VError) as exc:
                check(service, spec(pool_name), make_target("g", MiB))
            assert exc.value.code == pb.ERROR_CODE_BAD_INPUT
            assert pool_name in exc.value.message and expected in exc.value.message
    finally:
        virsh("pool-undefine", fs_pool, check=False)
        virsh("pool-undefine", idle_pool, check=False)


def test_check_bad_domain_type(service, pool):
    with pytest.raises(V2VError) as exc:
        check(service, spec(pool[0], domain_type="xen"), make_target("g", MiB))
    assert exc.value.code == pb.ERROR_CODE_BAD_INPUT and "domain-type=xen" in exc.value.message


def test_check_existing_domain(service, pool, name, tmp_path):
    define_dummy(name, tmp_path)
    with pytest.raises(V2VError) as exc:
        check(service, spec(pool[0]), make_target(name, MiB))
    assert exc.value.code == pb.ERROR_CODE_TARGET_EXISTS
    assert f"domain {name}" in exc.value.message
    check(service, spec(pool[0], overwrite=True), make_target(name, MiB))  # --overwrite replaces it


def test_check_existing_volume(service, pool, name):
    pool_name, directory = pool
    # One the pool lists, and a file it has not been refreshed to see: both are in the way.
    virsh("vol-create-as", pool_name, f"{name}-sda", "1M")
    (directory / f"{name}-sdb").write_text("precious")
    try:
        with pytest.raises(V2VError) as exc:
            check(service, spec(pool_name), make_target(name, MiB, MiB))
        assert exc.value.code == pb.ERROR_CODE_TARGET_EXISTS
        assert str(directory / f"{name}-sda") in exc.value.message
        (directory / f"{name}-sda").unlink()
        virsh("pool-refresh", pool_name)
        with pytest.raises(V2VError) as exc:
            check(service, spec(pool_name), make_target(name, MiB, MiB))
        assert exc.value.code == pb.ERROR_CODE_TARGET_EXISTS
        assert str(directory / f"{name}-sdb") in exc.value.message
        assert (directory / f"{name}-sdb").read_text() == "precious"
    finally:
        for disk in ("sda", "sdb"):
            (directory / f"{name}-{disk}").unlink(missing_ok=True)
        virsh("pool-refresh", pool_name)


WRITES = [(0, 0, b"\x55\xaa" * 256), (0, 40 * MiB + 4096, os.urandom(MiB)), (1, 8 * MiB - 4096, os.urandom(4096))]




@pytest.mark.parametrize("fmt", ["raw", "qcow2"])
def test_setup_finalize_abort(service, workdir, pool, conn, name, tmp_path, fmt):
    pool_name, directory = pool
    sizes = (64 * MiB, 8 * MiB)
    output = spec(pool_name, fmt)
    target = make_target(name, *sizes)
    resp = setup(service, workdir, output, target)
    paths = [str(directory / f"{name}-sda"), str(directory / f"{name}-sdb")]
    assert resp.target_is_zero
    assert [(d.path, d.format, d.virtual_size, d.device) for d in resp.disks] == [
        (paths[0], fmt, sizes[0], "vda"), (paths[1], fmt, sizes[1], "vdb")]
    assert {f"{name}-sda", f"{name}-sdb"} <= volumes(conn, pool_name)  # setup refreshed the pool
    write_through_nbd(list(resp.sockets), WRITES)

    files = finalize(service, workdir, output)
    assert files == [*paths, domain_uri(SYSTEM_URI, name)] == [*paths, f"libvirt:qemu:///system/domain/{name}"]
    assert not workdir.out_sock(0).exists()
    for disk, size in enumerate(sizes):
        vol = ET.fromstring(conn.storagePoolLookupByName(pool_name).storageVolLookupByName(
            f"{name}-sd{'ab'[disk]}").XMLDesc(0))
        assert (vol.findtext("target/path"), vol.find("target/format").get("type")) == (paths[disk], fmt)
        assert int(vol.findtext("capacity")) == size
        subprocess.run(["qemu-img", "compare", "-f", fmt, "-F", "raw", paths[disk],
                        str(expected_image(tmp_path / f"expected{disk}.raw", disk, size, WRITES))], check=True)

    dom = conn.lookupByName(name)
    assert not dom.isActive() and dom.isPersistent()
    assert dom.UUIDString() == (workdir.path / DOMAIN_MARK).read_text().strip()
    xml = ET.fromstring(virsh("dumpxml", name).stdout)
    assert xml.get("type") == "qemu"
    assert [(d.find("source").get("file"), d.find("driver").get("type"), d.find("target").get("dev"))
            for d in xml.findall("devices/disk[@device='disk']")] == [
        (paths[0], fmt, "vda"), (paths[1], fmt, "vdb")]

    # Abort after finalize (the coordinator failing later on): everything goes.
    plugin, _ = OUTPUTS.lookup(output)
    finalized = workdir.read(WorkDir.TARGET, pb.TargetMeta())
    plugin.abort(output, finalized, workdir)
    assert not any(Path(p).exists() for p in paths)
    assert not {f"{name}-sda", f"{name}-sdb"} & volumes(conn, pool_name)
    assert virsh("domstate", name, check=False).returncode != 0
    assert not (workdir.path / DOMAIN_MARK).exists()
    plugin.abort(output, finalized, workdir)  # what is gone stays gone, without errors


def test_abort_after_setup(service, workdir, pool, conn, name):
    pool_name, directory = pool
    output = spec(pool_name, "qcow2")
    setup(service, workdir, output, make_target(name, MiB, MiB))
    assert {f"{name}-sda", f"{name}-sdb"} <= volumes(conn, pool_name)
    service.abort(workdir.name)
    assert not (directory / f"{name}-sda").exists() and not (directory / f"{name}-sdb").exists()
    assert not {f"{name}-sda", f"{name}-sdb"} & volumes(conn, pool_name)
    assert virsh("domstate", name, check=False).returncode != 0


def test_overwrite_replaces_volumes_and_domain(service, workroot, pool, conn, name):
    pool_name, directory = pool
    first = WorkDir.create(name, workroot)
    setup(service, first, spec(pool_name), make_target(name, MiB))
    finalize(service, first, spec(pool_name))
    old_uuid = conn.lookupByName(name).UUIDString()

    again = WorkDir.create(name, workroot)
    with pytest.raises(V2VError) as exc:
        setup(service, again, spec(pool_name), make_target(name, 2 * MiB))
    assert exc.value.code == pb.ERROR_CODE_TARGET_EXISTS
    assert (directory / f"{name}-sda").exists(), "a refused setup must leave the existing volume alone"

    # Overwriting, with the domain type left to the host: kvm where the capabilities and /dev/kvm say so.
    output = spec(pool_name, "qcow2", domain_type="", overwrite=True)
    setup(service, again, output, make_target(name, 2 * MiB))
    finalize(service, again, output)
    dom = conn.lookupByName(name)
    assert dom.UUIDString() != old_uuid
    assert ET.fromstring(dom.XMLDesc(0)).get("type") in ("kvm", "qemu")
    info = json.loads(subprocess.run(["qemu-img", "info", "--output=json", str(directory / f"{name}-sda")],
                                     capture_output=True, text=True, check=True).stdout)
    assert (info["format"], info["virtual-size"]) == ("qcow2", 2 * MiB)
    OUTPUTS.lookup(output)[0].abort(output, again.read(WorkDir.TARGET, pb.TargetMeta()), again)
    assert not (directory / f"{name}-sda").exists()


def console_to_file(xml: str, log: Path) -> str:
    """The test's own change to the defined domain: its serial console goes to a file to read the
    marker from, and its NICs to user networking, since this machine's 'default' network is not
    started. The product's XML stays as it is."""
    domain = ET.fromstring(xml)
    devices = domain.find("devices")
    for el in devices.findall("serial") + devices.findall("console"):
        devices.remove(el)
    serial = ET.SubElement(devices, "serial", type="file")
    ET.SubElement(serial, "source", path=str(log))
    ET.SubElement(serial, "target", port="0")
    for nic in devices.findall("interface"):
        nic.set("type", "user")
        for source in nic.findall("source"):
            nic.remove(source)
    return ET.tostring(domain, encoding="unicode")


@pytest.mark.e2e
def test_converted_guest_boots(converted, workroot, pool, conn, name):
    pool_name, directory = pool
    target, disk = converted
    guest = pb.TargetMeta()
    guest.CopyFrom(target)
    guest.name = name
    output = spec(pool_name, "qcow2", domain_type="qemu")
    files = write_target(guest, [disk], output, workroot)
    assert files == [str(directory / f"{name}-sda"), f"libvirt:qemu:///system/domain/{name}"]

    consoles = Path(tempfile.mkdtemp(prefix="v2v-console.", dir="/var/tmp"))
    os.chmod(consoles, 0o755)
    log = consoles / f"{name}.log"
    qemu_log = Path(f"/var/log/libvirt/qemu/{name}.log")
    try:
        xml = virsh("dumpxml", name).stdout
        assert ET.fromstring(xml).get("type") == "qemu"
        (consoles / "domain.xml").write_text(console_to_file(xml, log))
        virsh("define", str(consoles / "domain.xml"))
        virsh("start", name)
        dom = conn.lookupByName(name)
        deadline = time.monotonic() + 400
        while dom.isActive() and time.monotonic() < deadline:
            time.sleep(2)
        text = log.read_text(errors="replace") if log.exists() else ""
        marker = [line for line in text.splitlines() if "GUEST-BOOTED-OK" in line]
        why = f"console:\n{text[-3000:]}\nqemu log:\n{qemu_log.read_text()[-2000:] if qemu_log.exists() else ''}"
        assert marker, f"no marker line ({'still running' if dom.isActive() else 'shut off'})\n{why}"
        assert "root=/dev/vda3" in marker[0], marker[0]
        assert not dom.isActive(), "the guest did not power off after its marker"
    finally:
        remove_domain(name)
        shutil.rmtree(consoles, ignore_errors=True)
        qemu_log.unlink(missing_ok=True)
        (directory / f"{name}-sda").unlink(missing_ok=True)
        virsh("pool-refresh", pool_name, check=False)


@pytest.mark.parametrize("make", [win7_32bit, server2022_emulated_q35, xp_emulated],
                         ids=["windows-7-32bit", "windows-2022-emulated-q35", "windows-xp-pc"])
def test_libvirt_defines_windows_guests(service, workdir, pool, conn, name, make):
    """What libvirt's schema cannot tell: that libvirtd takes the architecture (i686, not
    libguestfs's i386), the SATA disks of an IDE guest on q35, and the Hyper-V features."""
    pool_name, _ = pool
    output = spec(pool_name)
    target = make(name=name)
    target.ClearField("disks")  # setup makes them
    setup(service, workdir, output, target)
    finalize(service, workdir, output)  # the disks stay zero: libvirt only defines the guest
    xml = ET.fromstring(virsh("dumpxml", name).stdout)
    assert xml.find("os/type").get("arch") == ("i686" if target.caps.arch == "i386" else "x86_64")
    assert xml.find("features/hyperv/spinlocks").get("retries") == "8191"
    assert xml.find("clock").get("offset") == "localtime"
    buses = {d.find("target").get("bus") for d in xml.findall("devices/disk[@device='disk']")}
    assert buses == ({"ide"} if target.caps.machine == pb.MACHINE_I440FX else
                     {"sata"} if target.caps.emulated_devices else {"virtio"})
