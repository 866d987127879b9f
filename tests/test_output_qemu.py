"""-o qemu: the script's text, qemu accepting its command line (real qemu-system-x86_64, stopped
before the guest runs), -oo qemu-boot, and the real converted Debian guest booted by its script."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import write_target
from tests.windows_targets import (
    server2022_bios,
    server2022_emulated_q35,
    win7_32bit,
    win11_uefi_secure_boot,
    xp_emulated,
)
from v2v.drives import drive_letters
from v2v.errors import V2VError
from v2v.services.convert.netconfig import generated_mac
from v2v.services.output.qemu import QemuOutput, check_target, ovmf, qemu_script
from v2v.v1 import output_pb2
from v2v.v1 import types_pb2 as pb

MiB = 1024**2
MAC = "52:54:00:12:34:56"
# What boot-test.sh takes for a failed boot: stop at once rather than wait for the timeout.
BOOT_FAILED = re.compile(r"Dropping to a shell|Kernel panic - not syncing|You are in emergency mode")


def make_target(directory: Path, *, bus: int, machine: int, net: int = pb.NET_BUS_VIRTIO_NET,
                firmware: int = pb.FIRMWARE_BIOS, ndisks: int = 2, name: str = "guest") -> pb.TargetMeta:
    """A target as convert and setup would leave it, its disks in `directory` (not created)."""
    source = pb.Source(name=name, memory=1536 * MiB, vcpus=4,
                       cpu_topology=pb.CpuTopology(sockets=2, cores=2, threads=1),
                       disks=[pb.SourceDisk(index=i, virtual_size=16 * MiB) for i in range(ndisks)],
                       nics=[pb.Nic(mac=MAC, network="VM Network")])
    caps = pb.GuestCaps(block_bus=bus, net_bus=net, machine=machine, arch="x86_64", virtio_rng=True,
                        virtio_balloon=True, pvpanic=True, rtc_utc=True)
    disks = [pb.TargetDisk(index=i, path=str(directory / f"{name}-sd{drive_letters(i)}"),
                           format="qcow2" if i else "raw", virtual_size=16 * MiB, bus=bus) for i in range(ndisks)]
    return pb.TargetMeta(name=name, source=source, caps=caps, firmware=firmware, disks=disks,
                         nics=[pb.Nic(mac=MAC, model=pb.NIC_MODEL_VIRTIO)])


def bios_virtio(directory: Path) -> pb.TargetMeta:
    return make_target(directory, bus=pb.BLOCK_BUS_VIRTIO_BLK, machine=pb.MACHINE_Q35)


def uefi_sata_e1000(directory: Path) -> pb.TargetMeta:
    return make_target(directory, bus=pb.BLOCK_BUS_SATA, machine=pb.MACHINE_Q35, net=pb.NET_BUS_E1000,
                       firmware=pb.FIRMWARE_UEFI)


def spec(directory: Path, boot: bool = False, overwrite: bool = False) -> output_pb2.OutputSpec:
    return output_pb2.OutputSpec(overwrite=overwrite, qemu=output_pb2.QemuOutput(directory=str(directory), boot=boot))


def assert_bash_syntax(text: str, tmp_path: Path) -> None:
    script = tmp_path / "syntax.sh"
    script.write_text(text)
    res = subprocess.run(["bash", "-n", script], capture_output=True, text=True, check=False)
    assert res.returncode == 0, res.stderr


def test_script_bios_q35_virtio(tmp_path):
    text = qemu_script(bios_virtio(Path("/srv/v2v")), Path("/srv/v2v"))
    assert text.startswith("#!/bin/bash\n")
    assert "exec qemu-system-x86_64 -no-user-config -nodefaults" in text
    for line in ['-machine q35,accel="${V2V_QEMU_ACCEL:-kvm:tcg}"', "-m 1536",
                 "-smp cpus=4,sockets=2,cores=2,threads=1", "-rtc base=utc",
                 "-drive file=/srv/v2v/guest-sda,format=raw,if=none,id=drive-0,cache=none",
                 "-device virtio-blk-pci,drive=drive-0,bootindex=0",
                 "-drive file=/srv/v2v/guest-sdb,format=qcow2,if=none,id=drive-1,cache=none",
                 "-device virtio-blk-pci,drive=drive-1,bootindex=1",
                 "-netdev user,id=net0", f"-device virtio-net-pci,netdev=net0,mac={MAC}",
                 "-device virtio-rng-pci", "-device virtio-balloon-pci", "-device pvpanic", "-serial stdio",
                 '-display "${V2V_QEMU_DISPLAY:-none}"']:
        assert f"    {line} \\\n" in text, line
    assert text.endswith('    "$@"\n')
    assert "pflash" not in text and "VARS" not in text
    assert_bash_syntax(text, tmp_path)


def test_script_uefi_sata_e1000(tmp_path):
    directory = Path("/srv/my guests,v2")  # the shell quotes it, and qemu needs its comma doubled
    target = uefi_sata_e1000(directory)
    target.caps.rtc_utc = False
    target.source.ClearField("cpu_topology")
    text = qemu_script(target, directory)
    code, template = ovmf()
    assert f"cp {template} '/srv/my guests,v2/guest-VARS.fd'" in text
    for line in [f"-drive if=pflash,format=raw,readonly=on,file={code}",
                 "-drive 'if=pflash,format=raw,file=/srv/my guests,,v2/guest-VARS.fd'",
                 "-smp 4", "-rtc base=localtime",
                 "-drive 'file=/srv/my guests,,v2/guest-sda,format=raw,if=none,id=drive-0,cache=none'",
                 "-device ide-hd,drive=drive-0,bus=ide.0,bootindex=0",
                 "-device ide-hd,drive=drive-1,bus=ide.1,bootindex=1",
                 f"-device e1000,netdev=net0,mac={MAC}"]:
        assert f"    {line} \\\n" in text, line
    # The variables are made before qemu runs, and only when missing: they persist across runs.
    assert text.index("[[ ! -e '/srv/my guests,v2/guest-VARS.fd' ]]") < text.index("exec qemu-system-x86_64")
    assert_bash_syntax(text, tmp_path)


def test_script_buses():
    d = Path("/d")
    scsi = qemu_script(make_target(d, bus=pb.BLOCK_BUS_VIRTIO_SCSI, machine=pb.MACHINE_I440FX,
                                   net=pb.NET_BUS_RTL8139), d)
    assert scsi.count("-device virtio-scsi-pci,id=scsi0") == 1
    assert "-device scsi-hd,drive=drive-1,bus=scsi0.0,channel=0,scsi-id=1,lun=0,bootindex=1" in scsi
    assert "-machine pc,accel=" in scsi and "-device rtl8139,netdev=net0" in scsi
    ide = qemu_script(make_target(d, bus=pb.BLOCK_BUS_IDE, machine=pb.MACHINE_I440FX, ndisks=3), d)
    assert "-device ide-hd,drive=drive-2,bus=ide.1,unit=0,bootindex=2" in ide
    # pc has no AHCI: one is added per six SATA disks; q35's own comes first.
    pc_sata = qemu_script(make_target(d, bus=pb.BLOCK_BUS_SATA, machine=pb.MACHINE_I440FX, ndisks=1), d)
    assert "-device ahci,id=sata0" in pc_sata and "bus=sata0.0,bootindex=0" in pc_sata
    eight = make_target(d, bus=pb.BLOCK_BUS_SATA, machine=pb.MACHINE_Q35, ndisks=2)
    for i in range(2, 8):
        eight.disks.append(pb.TargetDisk(index=i, path=f"/d/x{i}", format="raw", bus=pb.BLOCK_BUS_SATA))
    text = qemu_script(eight, d)
    assert "bus=ide.5,bootindex=5" in text and "bus=sata0.1,bootindex=7" in text
    assert text.count("-device ahci,id=sata0") == 1
    # A guest whose NIC has no MAC gets qemu's.
    nomac = bios_virtio(d)
    nomac.nics[0].mac = ""
    assert "-device virtio-net-pci,netdev=net0 \\\n" in qemu_script(nomac, d)


def hyperv_flags(script: str, accel: str) -> str:
    """The -cpu flags the script's prologue chooses with V2V_QEMU_ACCEL=`accel`."""
    prologue = script.split("exec qemu-system-x86_64")[0]
    res = subprocess.run(["bash", "-c", prologue + 'echo "$hyperv"'], capture_output=True, text=True, check=True,
                         env=dict(os.environ, V2V_QEMU_ACCEL=accel))
    return res.stdout.strip()


def test_script_windows_server_2022(tmp_path):
    text = qemu_script(server2022_bios(), Path("/var/tmp/out"))
    for line in ['-machine q35,hpet=off,accel="${V2V_QEMU_ACCEL:-kvm:tcg}"', '-cpu "max$hyperv"',
                 "-rtc base=localtime,driftfix=slew", "-global kvm-pit.lost_tick_policy=delay",
                 "-device virtio-blk-pci,drive=drive-0,bootindex=0", f"-device virtio-net-pci,netdev=net0,mac={MAC}",
                 "-device pvpanic", "-usb", "-device usb-tablet"]:
        assert f"    {line} \\\n" in text, line
    assert text.index("hyperv=") < text.index("exec qemu-system-x86_64")
    assert hyperv_flags(text, "tcg") == ",hv_relaxed,hv_spinlocks=0x1fff"
    # KVM where the script can open it (this host's may be unusable: the test reads the choice only).
    kvm = ",hv_relaxed,hv_vapic,hv_spinlocks=0x1fff,hv_vpindex,hv_runtime,hv_synic,hv_stimer,hv_reset," \
          "hv_frequencies,hv_tlbflush,hv_ipi,hv_time"
    assert hyperv_flags(text, "kvm:tcg") == (kvm if os.access("/dev/kvm", os.W_OK) else hyperv_flags(text, "tcg"))
    assert_bash_syntax(text, tmp_path)


def test_script_windows_emulated():
    xp = qemu_script(xp_emulated(), Path("/var/tmp/out"))
    assert "-machine pc,hpet=off,accel=" in xp and "-device rtl8139,netdev=net0" in xp
    assert "-device ide-hd,drive=drive-1,bus=ide.0,unit=1,bootindex=1" in xp
    assert "pvpanic" not in xp and "virtio" not in xp
    q35 = qemu_script(server2022_emulated_q35(), Path("/var/tmp/out"))
    assert "-device ide-hd,drive=drive-0,bus=ide.0,bootindex=0" in q35  # q35's AHCI
    assert "-device rtl8139,netdev=net0" in q35


def test_linux_script_has_no_windows_preset():
    text = qemu_script(bios_virtio(Path("/d")), Path("/d"))
    assert "hv_" not in text and "hpet" not in text and "usb-tablet" not in text and "driftfix" not in text


def test_refused():
    d = Path("/d")
    with pytest.raises(V2VError, match="IDE") as exc:
        check_target(make_target(d, bus=pb.BLOCK_BUS_IDE, machine=pb.MACHINE_I440FX, ndisks=5))
    assert exc.value.code == pb.ERROR_CODE_UNSUPPORTED
    check_target(make_target(d, bus=pb.BLOCK_BUS_SATA, machine=pb.MACHINE_I440FX, ndisks=5))
    arm = bios_virtio(d)
    arm.caps.arch = "aarch64"
    with pytest.raises(V2VError, match="x86"):
        qemu_script(arm, d)


def test_check_refuses_the_old_guests_variables(tmp_path):
    target = uefi_sata_e1000(tmp_path)
    (tmp_path / "guest-VARS.fd").write_bytes(b"old")
    with pytest.raises(V2VError) as exc:
        QemuOutput().check(spec(tmp_path), target)
    assert exc.value.code == pb.ERROR_CODE_TARGET_EXISTS and "guest-VARS.fd" in str(exc.value)


def create_disks(target: pb.TargetMeta) -> None:
    for disk in target.disks:
        subprocess.run(["qemu-img", "create", "-q", "-f", disk.format, disk.path, str(disk.virtual_size)], check=True)


@pytest.fixture
def outdir(tmp_path) -> Path:
    d = tmp_path / "out dir, with comma"
    d.mkdir()
    return d


@pytest.fixture
def qmp_dir() -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix="v2v-qmp.", dir="/tmp"))  # a socket path has 107 bytes
    yield d
    shutil.rmtree(d)


class Qmp:
    def __init__(self, path: Path, proc: subprocess.Popen) -> None:
        deadline = time.monotonic() + 30
        self.sock = socket.socket(socket.AF_UNIX)
        while True:
            try:
                self.sock.connect(str(path))
                break
            except (FileNotFoundError, ConnectionRefusedError):
                assert proc.poll() is None, f"qemu refused the command line: {proc.communicate()[1]}"
                assert time.monotonic() < deadline, "qemu's QMP socket never appeared"
                time.sleep(0.1)
        self.file = self.sock.makefile("rw")
        greeting = self.file.readline()  # sent once the machine is built: qemu accepted every device
        assert greeting, f"qemu refused the command line: {proc.communicate()[1]}"
        self("qmp_capabilities")

    def __call__(self, command: str, **arguments: object) -> object:
        self.file.write(json.dumps({"execute": command, "arguments": arguments}) + "\n")
        self.file.flush()
        while True:
            reply = json.loads(self.file.readline())
            if "return" in reply:
                return reply["return"]
            assert "error" not in reply, reply

    def hmp(self, command: str) -> str:
        out = self("human-monitor-command", **{"command-line": command})
        assert isinstance(out, str)
        return out


@pytest.mark.parametrize("make, devices", [
    (bios_virtio, ["virtio-blk-pci", "virtio-net-pci", "virtio-rng-pci", "virtio-balloon-pci", "pvpanic"]),
    (uefi_sata_e1000, ["ich9-ahci", "ide-hd", "e1000", "cfi.pflash01"]),
    (lambda d: make_target(d, bus=pb.BLOCK_BUS_VIRTIO_SCSI, machine=pb.MACHINE_I440FX, net=pb.NET_BUS_RTL8139,
                           firmware=pb.FIRMWARE_UEFI), ["virtio-scsi-pci", "scsi-hd", "rtl8139", "cfi.pflash01"]),
    (lambda d: make_target(d, bus=pb.BLOCK_BUS_IDE, machine=pb.MACHINE_I440FX, ndisks=3), ["piix3-ide", "ide-hd"]),
    (lambda d: make_target(d, bus=pb.BLOCK_BUS_SATA, machine=pb.MACHINE_I440FX), ["ich9-ahci", "ide-hd"]),
    (lambda d: server2022_bios(str(d)), ["virtio-blk-pci", "virtio-net-pci", "pvpanic", "usb-tablet"]),
    (lambda d: win11_uefi_secure_boot(str(d)), ["virtio-blk-pci", "cfi.pflash01", "usb-tablet"]),
    (lambda d: xp_emulated(str(d)), ["piix3-ide", "ide-hd", "rtl8139", "usb-tablet"]),
    (lambda d: server2022_emulated_q35(str(d)), ["ich9-ahci", "ide-hd", "rtl8139"]),
    (lambda d: win7_32bit(str(d)), ["virtio-blk-pci", "usb-tablet"]),
], ids=["bios-q35-virtio", "uefi-q35-sata-e1000", "uefi-pc-scsi-rtl8139", "bios-pc-ide", "bios-pc-sata",
        "windows-2022", "windows-11-secure-boot", "windows-xp-emulated", "windows-2022-emulated", "windows-7-32bit"])
def test_qemu_accepts_the_script(make, devices, outdir, qmp_dir, workdir):
    """Writes the script through finalize and runs it with -S (the guest never starts): qemu built
    the machine with these devices, from these files."""
    target = make(outdir)
    create_disks(target)
    files = QemuOutput().finalize(spec(outdir), target, workdir)
    script = outdir / "guest.sh"
    assert files == [d.path for d in target.disks] + [str(script)]
    assert script.stat().st_mode & 0o777 == 0o755
    sock = qmp_dir / "qmp.sock"
    env = dict(os.environ, V2V_QEMU_ACCEL="tcg")
    proc = subprocess.Popen([script, "-S", "-qmp", f"unix:{sock},server=on,wait=off"], stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        qmp = Qmp(sock, proc)
        qtree = qmp.hmp("info qtree")
        for device in devices:
            assert f'dev: {device},' in qtree, device
        block = qmp.hmp("info block")
        for disk in target.disks:
            assert disk.path in block
        assert qmp("query-name") == {"name": "guest"}
        qmp("quit")
        _, err = proc.communicate(timeout=30)
        assert proc.returncode == 0, err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    nvram = outdir / "guest-VARS.fd"
    if target.firmware == pb.FIRMWARE_UEFI:
        assert nvram.read_bytes() == Path(ovmf(target.caps.secure_boot)[1]).read_bytes()
    else:
        assert not nvram.exists()


def qemu_processes(path: str) -> list[int]:
    """qemu-system processes whose command line has the file `path` (its commas doubled, as qemu takes it)."""
    text = path.replace(",", ",,")
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if os.path.basename(args[0]).startswith(b"qemu-system") and text.encode() in b" ".join(args):
            found.append(int(pid))
    return found


def test_qemu_boot_starts_the_guest_detached(outdir, workdir, monkeypatch):
    """-oo qemu-boot: finalize returns at once with NAME.log listed, the guest running in its own
    session, not a child of v2v. The blank disks boot nothing: the test stops it."""
    monkeypatch.setenv("V2V_QEMU_ACCEL", "tcg")
    target = bios_virtio(outdir)
    create_disks(target)
    files = QemuOutput().finalize(spec(outdir, boot=True), target, workdir)
    log = outdir / "guest.log"
    assert files[-2:] == [str(outdir / "guest.sh"), str(log)] and log.exists()
    pids: list[int] = []
    try:
        deadline = time.monotonic() + 30
        while not (pids := qemu_processes(target.disks[0].path)):
            assert time.monotonic() < deadline, f"no qemu started; log: {log.read_text()}"
            time.sleep(0.1)
        (pid,) = pids
        assert os.getsid(pid) == pid != os.getsid(0)
        assert int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1]) != os.getpid()
        assert Path(f"/proc/{pid}/fd/0").resolve() == Path("/dev/null")
        assert Path(f"/proc/{pid}/fd/1").resolve() == Path(f"/proc/{pid}/fd/2").resolve() == log
    finally:
        for pid in pids:
            os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while qemu_processes(target.disks[0].path) and time.monotonic() < deadline:
            time.sleep(0.1)


def test_overwrite_replaces_the_variables(outdir, workdir):
    target = uefi_sata_e1000(outdir)
    (outdir / "guest-VARS.fd").write_bytes(b"the replaced guest's")
    QemuOutput().finalize(spec(outdir, overwrite=True), target, workdir)
    assert not (outdir / "guest-VARS.fd").exists()


@pytest.mark.e2e
def test_converted_guest_boots_with_its_script(converted, tmp_path, workroot):
    target, disk = converted
    out = tmp_path / "out"
    out.mkdir()
    files = write_target(target, [disk], output_pb2.OutputSpec(format="qcow2", qemu=output_pb2.QemuOutput(
        directory=str(out))), workroot)
    script = out / f"{target.name}.sh"
    assert files == [str(out / f"{target.name}-sda"), str(script)]
    # Only the disks are needed: the script runs as well from anywhere with the rest gone.
    for name in os.listdir(out):
        if name not in (script.name, f"{target.name}-sda"):
            os.unlink(out / name)

    lines: list[str] = []
    proc = subprocess.Popen([script], cwd=tmp_path, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, errors="replace",
                            env=dict(os.environ, V2V_QEMU_ACCEL="tcg"))

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line.strip("\r\n"))
            if BOOT_FAILED.search(line):
                proc.kill()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        proc.wait(timeout=400)  # the guest powers itself off after printing its marker
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    reader.join(10)
    output = "\n".join(lines[-30:])
    # The marker is found anywhere in a line, as boot-test.sh does: kernel messages on the same
    # serial console can land in front of it.
    markers = [line[line.index("GUEST-BOOTED-OK"):] for line in lines if "GUEST-BOOTED-OK" in line]
    assert markers, f"no boot marker (qemu exited {proc.returncode}):\n{output}"
    assert proc.returncode == 0, output
    assert "root=/dev/vda3" in markers[0] and "disks=vda" in markers[0], markers[0]
    # Network identity: the OVA gave no MAC, so the target got a generated one, which the script
    # passes to qemu; the guest's NIC keeps the name its ifupdown config uses (virt-v2v's comes up ens2).
    assert [n.mac for n in target.nics] == [generated_mac(target.name, 0)]
    assert " nics=ens192 " in markers[0] and "failed-units=none" in markers[0], markers[0]
