"""-i vmx: the .vmx parser on hand-written files, then the real VMware-looking guest opened from
its .vmx locally and over ssh (a private sshd), with real qemu-nbd/nbdkit: the served disks are the
guest's bytes, writes stay in the overlay, bad input is one line naming what is wrong."""

import os
import signal
import subprocess
from pathlib import Path

import nbd
import pytest

from tests.conftest import child_servers, sha256, write_reads_back
from tests.sshd import running_sshd, usable
from v2v.errors import V2VError
from v2v.services.input.service import InputService
from v2v.services.input.vmx import SshNbdkit, SshSource
from v2v.services.input.vmxfile import VmxError, parse, parse_descriptor, parse_vmx
from v2v.v1 import input_pb2
from v2v.v1 import types_pb2 as pb
from v2v.workdir import WorkDir

MiB = 1024**2
GiB = 1024**3
# MBR, /boot's superblock, the root filesystem's superblock, swap, somewhere in /, the last block
OFFSETS = [0, MiB + 1024, 513 * MiB + 1024, 257 * MiB + 4096 - 10, 2 * GiB + 12345, 4 * GiB - 4096]


# ---------------------------------------------------------------- parser


ORDERING = """\
# disks on every bus, written out of order
ide0:0.present = "TRUE"
ide0:0.deviceType = "ata-hardDisk"
ide0:0.fileName = "ide.vmdk"
ide1:0.present = "TRUE"
ide1:0.deviceType = "atapi-cdrom"
ide1:0.fileName = "/dev/sr0"
sata0.present = "TRUE"
sata0:1.present = "TRUE"
sata0:1.fileName = "sata.vmdk"
sata0:0.present = "TRUE"
sata0:0.deviceType = "cdrom-image"
sata0:0.fileName = "install.iso"
nvme0.present = "TRUE"
nvme0:0.present = "TRUE"
nvme0:0.fileName = "nvme.vmdk"
SCSI1.virtualDev = "lsilogic"
scsi1.present = "TRUE"
scsi1:0.present = "TRUE"
scsi1:0.fileName = "scsi1-0.vmdk"
scsi0.virtualDev = "pvscsi"
scsi0.present = "TRUE"
scsi0:2.present = "TRUE"
scsi0:2.deviceType = "scsi-hardDisk"
scsi0:2.fileName = "scsi0-2.vmdk"
scsi0:0.present = "TRUE"
scsi0:0.fileName = "scsi0-0.vmdk"
scsi0:1.present = "TRUE"
scsi0:1.deviceType = "cdrom-image"
scsi0:1.fileName = "tools.iso"
scsi0:3.present = "FALSE"
scsi0:3.fileName = "absent.vmdk"
scsi2.present = "FALSE"
scsi2:0.present = "TRUE"
scsi2:0.fileName = "on-absent-controller.vmdk"
scsi0:10.present = "TRUE"
scsi0:10.fileName = "scsi0-10.vmdk"
floppy0.present = "TRUE"
"""


def test_disks_in_virt_v2v_order_scsi_nvme_sata_ide():
    vmx = parse_vmx(ORDERING, "fallback")
    assert [d.file_name for d in vmx.disks] == [
        "scsi0-0.vmdk", "scsi0-2.vmdk", "scsi0-10.vmdk", "scsi1-0.vmdk", "nvme.vmdk", "sata.vmdk", "ide.vmdk"]
    assert [d.controller for d in vmx.disks] == [pb.CONTROLLER_SCSI] * 4 + [
        pb.CONTROLLER_NVME, pb.CONTROLLER_SATA, pb.CONTROLLER_IDE]
    assert [d.adapter for d in vmx.disks[:4]] == ["pvscsi", "pvscsi", "pvscsi", "lsilogic"]
    assert (vmx.disks[2].bus, vmx.disks[2].unit) == (0, 10)


def test_cdroms_and_floppy_are_removables():
    vmx = parse_vmx(ORDERING, "fallback")
    assert [(r.type, r.controller, r.slot) for r in vmx.removables] == [
        (pb.REMOVABLE_TYPE_CDROM, pb.CONTROLLER_SCSI, 1),
        (pb.REMOVABLE_TYPE_CDROM, pb.CONTROLLER_SATA, 0),
        (pb.REMOVABLE_TYPE_CDROM, pb.CONTROLLER_IDE, 2),  # ide1:0: secondary master
        (pb.REMOVABLE_TYPE_FLOPPY, pb.CONTROLLER_UNSPECIFIED, 0),
    ]


NICS = """\
ethernet10.present = "TRUE"
ethernet10.virtualDev = "e1000"
ethernet10.connectionType = "bridged"
ethernet0.present = "TRUE"
ethernet0.virtualDev = "vmxnet3"
ethernet0.networkName = "VM Network"
ethernet0.addressType = "vpx"
ethernet0.generatedAddress = "00:50:56:AB:CD:EF"
ethernet1.present = "TRUE"
ethernet1.virtualDev = "e1000e"
ethernet1.networkName = "Lab"
ethernet1.addressType = "static"
ethernet1.address = "00:50:56:00:00:01"
ethernet1.generatedAddress = "00:0c:29:ff:ff:ff"
ethernet2.present = "FALSE"
ethernet2.virtualDev = "vmxnet3"
ethernet3.present = "TRUE"
ethernet3.virtualDev = "vlance"
ethernet3.networkName = "Old"
"""


def test_nics_generated_and_static_macs_models_networks():
    nics = parse_vmx(NICS, "x").nics
    assert [(n.mac, n.model, n.network, n.network_type) for n in nics] == [
        ("00:50:56:ab:cd:ef", pb.NIC_MODEL_VMXNET3, "VM Network", pb.NETWORK_TYPE_NETWORK),
        ("00:50:56:00:00:01", pb.NIC_MODEL_E1000, "Lab", pb.NETWORK_TYPE_NETWORK),  # static wins
        ("", pb.NIC_MODEL_UNSPECIFIED, "Old", pb.NETWORK_TYPE_NETWORK),
        ("", pb.NIC_MODEL_E1000, "ethernet10", pb.NETWORK_TYPE_BRIDGE),  # no networkName: the port
    ]


def test_efi_secure_boot_topology_memory():
    vmx = parse_vmx('displayName = "win"\nfirmware = "efi"\nuefi.secureBoot.enabled = "TRUE"\n'
                    'memsize = "4096"\nnumvcpus = "8"\ncpuid.coresPerSocket = "4"\nguestOS = "windows9-64"\n', "x")
    assert vmx.firmware == pb.FIRMWARE_UEFI and vmx.secure_boot
    assert vmx.memory == 4 * GiB and vmx.vcpus == 8 and vmx.guest_os == "windows9-64"
    assert (vmx.topology.sockets, vmx.topology.cores, vmx.topology.threads) == (2, 4, 1)
    src = vmx.source()
    assert src.hypervisor == pb.HYPERVISOR_VMWARE and src.cpu_topology.sockets == 2 and src.name == "win"


def test_vmware_defaults_and_odd_topology():
    vmx = parse_vmx("", "from-file")
    assert (vmx.name, vmx.memory, vmx.vcpus, vmx.firmware, vmx.topology) == (
        "from-file", 32 * MiB, 1, pb.FIRMWARE_BIOS, None)
    assert not vmx.source().HasField("cpu_topology")
    assert parse_vmx('numvcpus = "2"\ncpuid.coresPerSocket = "4"\n', "x").topology is None
    assert parse_vmx('firmware = "bios"\nuefi.secureBoot.enabled = "TRUE"\n', "x").secure_boot is False


def test_syntax_case_comments_escapes_unquoted():
    values = parse('  # comment\n\nDisplayName = "a |22quoted|22 name # not a comment" # trailing\n'
                   'memSize = 2048\nMEMSIZE = "512"\n')
    assert values == {"displayname": 'a "quoted" name # not a comment', "memsize": "512"}
    with pytest.raises(VmxError, match="line 1"):
        parse("this is not a vmx\n")
    with pytest.raises(VmxError, match="unterminated"):
        parse('displayName = "oops\n')
    with pytest.raises(VmxError, match="memsize"):
        parse_vmx('memsize = "lots"\n', "x")


def test_vmdk_descriptors():
    flat = parse_descriptor('# Disk DescriptorFile\ncreateType="monolithicFlat"\nRW 2048 FLAT "d-flat.vmdk" 0\n')
    assert flat.flat_extent().file_name == "d-flat.vmdk" and flat.size == MiB
    vmfs = parse_descriptor('createType="vmfs"\nRW 8388608 VMFS "x-flat.vmdk"\n')
    assert vmfs.flat_extent().kind == "VMFS" and vmfs.size == 4 * GiB
    delta = parse_descriptor('createType="vmfsSparse"\nparentFileNameHint="x.vmdk"\n'
                             'RW 8388608 VMFSSPARSE "x-000001-delta.vmdk"\n')
    assert delta.parent == "x.vmdk" and delta.flat_extent() is None
    split = parse_descriptor('createType="twoGbMaxExtentFlat"\nRW 100 FLAT "a.vmdk" 0\nRW 100 FLAT "b.vmdk" 0\n')
    assert split.flat_extent() is None
    with pytest.raises(VmxError):
        parse_descriptor("just text\n")


# ---------------------------------------------------------------- local


def open_vmx(svc, workroot, location, **options):
    wd = WorkDir.create("vmx", workroot)
    req = input_pb2.OpenRequest(workdir=wd.name, guest="vmx", input=input_pb2.InputSpec(
        vmx=input_pb2.VmxInput(location=str(location), **options)))
    return wd, svc.open(req)


def read_at(sock, offsets, length=4096):
    h = nbd.NBD()
    h.connect_uri(f"nbd+unix:///?socket={sock}")
    try:
        return h.get_size(), [h.pread(length, off) for off in offsets]
    finally:
        h.shutdown()


def raw_at(path, offsets, length=4096):
    with open(path, "rb") as f:
        out = []
        for off in offsets:
            f.seek(off)
            out.append(f.read(length))
        return out


@pytest.fixture(scope="module")
def vmx_file(real_guest):
    return real_guest.parent / "vmx" / "debian12-vmware.vmx"


def check_real_source(source):
    assert source.name == "debian12-vmware" and source.hypervisor == pb.HYPERVISOR_VMWARE
    assert source.memory == GiB and source.vcpus == 1 and source.firmware == pb.FIRMWARE_BIOS
    assert (source.cpu_topology.sockets, source.cpu_topology.cores) == (1, 1)
    assert [(n.mac, n.model, n.network) for n in source.nics] == [
        ("00:50:56:a1:b2:c3", pb.NIC_MODEL_VMXNET3, "VM Network")]
    assert [(r.type, r.controller) for r in source.removables] == [(pb.REMOVABLE_TYPE_CDROM, pb.CONTROLLER_SATA)]
    assert len(source.disks) == 1
    disk = source.disks[0]
    assert disk.index == 0 and disk.controller == pb.CONTROLLER_SCSI and disk.virtual_size == 4 * GiB


def test_local_vmx_serves_the_guest_and_never_writes_it(real_guest, vmx_file, workroot):
    flat = vmx_file.parent / "debian12-vmware-flat.vmdk"
    before = sha256(flat)
    svc = InputService()
    wd, resp = open_vmx(svc, workroot, vmx_file)
    try:
        check_real_source(resp.source)
        assert resp.source.disks[0].format == "vmdk"
        assert resp.source.disks[0].location == str(vmx_file.parent / "debian12-vmware.vmdk")
        assert wd.read(WorkDir.SOURCE, pb.Source()) == resp.source
        size, got = read_at(resp.sockets[0], OFFSETS)
        assert size == real_guest.stat().st_size and got == raw_at(real_guest, OFFSETS)
        write_reads_back(resp.sockets[0])  # lands in the overlay, never in the source
    finally:
        svc.close(wd.name)
    assert sha256(flat) == before
    assert not list(wd.path.glob("*.sock"))


def test_missing_disk_is_one_line_naming_vmx_and_disk(vmx_file, workroot, tmp_path):
    vmx = tmp_path / "lonely.vmx"
    vmx.write_text(vmx_file.read_text())  # its disk is not next to it here
    with pytest.raises(V2VError) as info:
        open_vmx(InputService(), workroot, vmx)
    err = info.value
    assert err.code == pb.ERROR_CODE_BAD_INPUT and err.step == "open"
    assert str(vmx) in err.message and "debian12-vmware.vmdk" in err.message and "no such file" in err.message
    assert "\n" not in err.one_line()


@pytest.mark.parametrize("text, expect", [
    (None, "no such file"),
    ("garbage without equals\n", "not a .vmx file"),
    ('displayName = "diskless"\n', "names no hard disk"),
])
def test_bad_vmx_is_one_line(workroot, tmp_path, text, expect):
    vmx = tmp_path / "bad.vmx"
    if text is not None:
        vmx.write_text(text)
    with pytest.raises(V2VError) as info:
        open_vmx(InputService(), workroot, vmx)
    assert info.value.code == pb.ERROR_CODE_BAD_INPUT and expect in info.value.message
    assert str(vmx) in info.value.message and "\n" not in info.value.one_line()


def make_chain(d: Path) -> Path:
    """base.vmdk (0xaa in the first MiB) <- child.vmdk (0xbb in the second), child named by a
    relative parentFileNameHint, and a .vmx naming the child."""
    d.mkdir(parents=True, exist_ok=True)
    subprocess.run(["qemu-img", "create", "-q", "-f", "vmdk", "base.vmdk", "64M"], cwd=d, check=True)
    subprocess.run(["qemu-io", "-f", "vmdk", "-c", "write -P 0xaa 0 1M", "base.vmdk"], cwd=d, check=True,
                   stdout=subprocess.DEVNULL)
    subprocess.run(["qemu-img", "create", "-q", "-f", "vmdk", "-b", "base.vmdk", "-F", "vmdk", "child.vmdk"], cwd=d,
                   check=True)
    subprocess.run(["qemu-io", "-f", "vmdk", "-c", "write -P 0xbb 1M 1M", "child.vmdk"], cwd=d, check=True,
                   stdout=subprocess.DEVNULL)
    vmx = d / "chain.vmx"
    vmx.write_text('displayName = "chain"\nscsi0.present = "TRUE"\nscsi0.virtualDev = "lsilogic"\n'
                   'scsi0:0.present = "TRUE"\nscsi0:0.fileName = "child.vmdk"\n')
    return vmx


def test_snapshot_chain_opens_relative_to_the_vmx(workroot, tmp_path, monkeypatch):
    vmx = make_chain(tmp_path / "chain")
    monkeypatch.chdir(tmp_path)  # the parent is found next to the child, not in the working directory
    files = [vmx.parent / "base.vmdk", vmx.parent / "child.vmdk"]
    before = [sha256(f) for f in files]
    svc = InputService()
    wd, resp = open_vmx(svc, workroot, vmx.relative_to(tmp_path))
    try:
        assert resp.source.name == "chain" and resp.source.disks[0].virtual_size == 64 * MiB
        size, (first, second, rest) = read_at(resp.sockets[0], [0, MiB, 2 * MiB], MiB)
        assert (first, second, rest) == (b"\xaa" * MiB, b"\xbb" * MiB, b"\0" * MiB)
        h = nbd.NBD()
        h.connect_uri(f"nbd+unix:///?socket={resp.sockets[0]}")
        h.pwrite(b"\x11" * 4096, 0)
        h.shutdown()
    finally:
        svc.close(wd.name)
    assert [sha256(f) for f in files] == before


def test_snapshot_chain_with_missing_parent_names_the_vmx(workroot, tmp_path):
    vmx = make_chain(tmp_path / "chain")
    (vmx.parent / "base.vmdk").unlink()
    with pytest.raises(V2VError) as info:
        open_vmx(InputService(), workroot, vmx)
    assert info.value.code == pb.ERROR_CODE_BAD_INPUT
    assert str(vmx) in info.value.message and "base.vmdk" in info.value.message


# ---------------------------------------------------------------- over ssh


@pytest.fixture(scope="module")
def sshd(tmp_path_factory):
    why = usable()
    if why:
        pytest.skip(why)
    with running_sshd(tmp_path_factory.mktemp("sshd")) as server:
        yield server


def ssh_uri(sshd, path):
    return f"ssh://root@127.0.0.1:{sshd.port}{path}"


def test_ssh_serves_the_flat_extent(real_guest, vmx_file, sshd, workroot):
    svc = InputService()
    wd, resp = open_vmx(svc, workroot, ssh_uri(sshd, vmx_file), identity_file=str(sshd.key),
                        insecure_host_key=True)
    try:
        check_real_source(resp.source)
        disk = resp.source.disks[0]
        assert disk.format == "raw" and disk.location == ssh_uri(sshd, vmx_file.parent / "debian12-vmware-flat.vmdk")
        size, got = read_at(resp.sockets[0], OFFSETS)
        assert size == 4 * GiB and got == raw_at(real_guest, OFFSETS)
        write_reads_back(resp.sockets[0])  # lands in the overlay, never in the source
    finally:
        svc.close(wd.name)
    flat = vmx_file.parent / "debian12-vmware-flat.vmdk"
    assert raw_at(flat, [0]) == raw_at(real_guest, [0])
    assert child_servers() == []


def ssh_sessions(sshd) -> list[int]:
    """The processes sshd forked for its connections (each serves one login), by their parent."""
    config = str(sshd.log.parent / "sshd_config").encode()
    pids = {int(p): Path(f"/proc/{p}") for p in os.listdir("/proc") if p.isdigit()}
    daemons = [pid for pid, proc in pids.items() if config in proc.joinpath("cmdline").read_bytes()]
    return [pid for pid, proc in pids.items()
            if int(proc.joinpath("stat").read_text().rsplit(")", 1)[1].split()[1]) in daemons]


def test_ssh_session_killed_mid_read_is_retried(real_guest, vmx_file, sshd, workroot):
    """The host drops the ssh connection under an open NBD connection (a network blip, an sshd
    restart): nbdkit's retry filter opens a new session and the read returns the right data, where
    the ssh plugin alone failed every later read (virt-v2v stacks retry on its ssh inputs too)."""
    svc = InputService()
    wd, resp = open_vmx(svc, workroot, ssh_uri(sshd, vmx_file), identity_file=str(sshd.key),
                        insecure_host_key=True)
    try:
        h = nbd.NBD()
        h.connect_uri(f"nbd+unix:///?socket={resp.sockets[0]}")
        assert h.pread(4096, OFFSETS[0]) == raw_at(real_guest, OFFSETS[:1])[0]
        sessions = ssh_sessions(sshd)
        assert sessions, "no ssh session to drop"
        for pid in sessions:
            os.kill(pid, signal.SIGKILL)
        assert [h.pread(4096, off) for off in OFFSETS[1:]] == raw_at(real_guest, OFFSETS[1:])
        h.shutdown()
        # "disconnected" or "Connection reset by peer", as the kill lands
        assert "read failed: Socket error: " in (wd.path / "logs" / "input-disk0.log").read_text()
    finally:
        svc.close(wd.name)
    assert child_servers() == []


def test_ssh_wrong_key_is_an_authentication_error(vmx_file, sshd, workroot):
    with pytest.raises(V2VError) as info:
        open_vmx(InputService(), workroot, ssh_uri(sshd, vmx_file), identity_file=str(sshd.wrong_key),
                 insecure_host_key=True)
    err = info.value
    assert err.code == pb.ERROR_CODE_BAD_INPUT
    assert err.message == f"{ssh_uri(sshd, vmx_file)}: authentication failed"
    assert child_servers() == []


def test_ssh_wrong_password_is_an_authentication_error(vmx_file, sshd, workroot, tmp_path):
    pw = tmp_path / "password"
    pw.write_text("certainly-not-the-root-password\n")
    with pytest.raises(V2VError) as info:
        open_vmx(InputService(), workroot, ssh_uri(sshd, vmx_file), password_file=str(pw), insecure_host_key=True)
    assert info.value.code == pb.ERROR_CODE_BAD_INPUT and "authentication failed" in info.value.message
    assert child_servers() == []


def test_ssh_unknown_host_key_is_refused_unless_told(vmx_file, sshd, workroot):
    with pytest.raises(V2VError) as info:
        open_vmx(InputService(), workroot, ssh_uri(sshd, vmx_file), identity_file=str(sshd.key))
    assert info.value.code == pb.ERROR_CODE_BAD_INPUT and "host key verification failed" in info.value.message


def test_ssh_unreachable_host(vmx_file, sshd, workroot):
    import socket

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(V2VError) as info:
        open_vmx(InputService(), workroot, f"ssh://root@127.0.0.1:{port}{vmx_file}", identity_file=str(sshd.key),
                 insecure_host_key=True)
    err = info.value
    assert err.code == pb.ERROR_CODE_BAD_INPUT and "cannot connect to 127.0.0.1" in err.message
    assert "Connection refused" in err.message and "\n" not in err.one_line()
    assert child_servers() == []


@pytest.mark.parametrize("location, expect", [
    ("ssh://", "no host"),
    ("ssh://host", "no .vmx path"),
    ("ssh://host:notaport/x.vmx", "not an ssh://"),
    ("ssh://root:secret@host/x.vmx", "carries a password"),
])
def test_ssh_bad_uri(workroot, location, expect):
    with pytest.raises(V2VError) as info:
        open_vmx(InputService(), workroot, location)
    assert info.value.code == pb.ERROR_CODE_BAD_INPUT and expect in info.value.message
    assert "secret" not in info.value.message


def test_ssh_missing_vmx_and_missing_extent(vmx_file, sshd, workroot, tmp_path):
    opts = {"identity_file": str(sshd.key), "insecure_host_key": True}
    with pytest.raises(V2VError, match="cannot read it: .*No such file") as info:
        open_vmx(InputService(), workroot, ssh_uri(sshd, tmp_path / "nowhere.vmx"), **opts)
    assert info.value.code == pb.ERROR_CODE_BAD_INPUT
    d = tmp_path / "noflat"
    d.mkdir()
    (d / "g.vmx").write_text(vmx_file.read_text())
    (d / "debian12-vmware.vmdk").write_text((vmx_file.parent / "debian12-vmware.vmdk").read_text())
    with pytest.raises(V2VError, match="debian12-vmware-flat.vmdk does not exist") as info:
        open_vmx(InputService(), workroot, ssh_uri(sshd, d / "g.vmx"), **opts)
    assert info.value.code == pb.ERROR_CODE_BAD_INPUT


def test_ssh_sparse_and_snapshot_disks_are_unsupported(sshd, workroot, tmp_path):
    opts = {"identity_file": str(sshd.key), "insecure_host_key": True}
    vmx = make_chain(tmp_path / "chain")  # qemu's VMDKs are hosted sparse ones
    with pytest.raises(V2VError, match="child.vmdk: a sparse VMDK") as info:
        open_vmx(InputService(), workroot, ssh_uri(sshd, vmx), **opts)
    assert info.value.code == pb.ERROR_CODE_UNSUPPORTED
    (vmx.parent / "child.vmdk").write_text(  # what ESXi writes for a snapshot
        '# Disk DescriptorFile\nversion=1\nCID=fffffffe\nparentCID=ffffffff\ncreateType="vmfsSparse"\n'
        'parentFileNameHint="base.vmdk"\nRW 131072 VMFSSPARSE "child-delta.vmdk"\n')
    with pytest.raises(V2VError, match="a snapshot") as info:
        open_vmx(InputService(), workroot, ssh_uri(sshd, vmx), **opts)
    assert info.value.code == pb.ERROR_CODE_UNSUPPORTED
    assert child_servers() == []


def test_nbdkit_refused_login_fails_fast(vmx_file, sshd, workroot):
    """If nbdkit's libssh is refused where ssh was let in, the start fails at once, naming it."""
    ssh = SshSource.from_options(input_pb2.VmxInput(location=ssh_uri(sshd, vmx_file),
                                                    identity_file=str(sshd.wrong_key), insecure_host_key=True))
    wd = WorkDir.create("vmx", workroot)
    flat = str(vmx_file.parent / "debian12-vmware-flat.vmdk")
    server = SshNbdkit(ssh, wd.in_sock(0), wd.log("in0.log"), "disk 0", ssh.nbdkit_args(flat))
    with pytest.raises(V2VError, match="authentication failed") as info:
        server.start(timeout=25)
    assert info.value.code == pb.ERROR_CODE_BAD_INPUT
    assert not server.process.running() and child_servers() == []
