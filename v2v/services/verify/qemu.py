"""The throw-away qemu of a boot check: each target disk behind a qcow2 overlay (qemu opens the
target read-only as its backing file), the target's firmware with a fresh copy of the UEFI
variables, machine, buses and MACs, a user-mode network that reaches nothing, the serial console to
a file, a virtio-serial port for the probe and one for qemu-guest-agent. Leaving the context kills
qemu and removes the overlays with the rest of its directory."""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

from v2v.process import Process, run
from v2v.services.verify import agent, probe
from v2v.v1 import types_pb2 as pb

OVMF = Path("/usr/share/OVMF")
# (code, vars template) per secure boot: the .ms variables have Microsoft's keys enrolled.
OVMF_FILES = {False: ("OVMF_CODE_4M.fd", "OVMF_VARS_4M.fd"), True: ("OVMF_CODE_4M.ms.fd", "OVMF_VARS_4M.ms.fd")}
NIC_DEVICES = {pb.NIC_MODEL_VIRTIO: "virtio-net-pci", pb.NIC_MODEL_E1000: "e1000", pb.NIC_MODEL_RTL8139: "rtl8139",
               pb.NIC_MODEL_VMXNET3: "vmxnet3", pb.NIC_MODEL_UNSPECIFIED: "virtio-net-pci"}


@dataclass
class BootDisk:
    path: str  # file or NBD URI
    format: str  # "" = ask qemu-img (NBD: raw)
    bus: pb.BlockBus = pb.BLOCK_BUS_VIRTIO_BLK


@dataclass
class BootSpec:
    disks: list[BootDisk]
    firmware: pb.Firmware = pb.FIRMWARE_BIOS
    secure_boot: bool = False
    machine: pb.Machine = pb.MACHINE_I440FX
    nics: list[pb.Nic] = field(default_factory=list)
    accel: str = "tcg"  # kvm or tcg
    memory_mb: int = 1024


def disk_format(disk: BootDisk) -> str:
    if disk.format:
        return disk.format
    if "://" in disk.path:
        return "raw"
    info = json.loads(run(["qemu-img", "info", "--output=json", disk.path], f"cannot read {disk.path}"))
    return str(info["format"])


def _disk_args(spec: BootSpec, overlays: list[Path]) -> list[str]:
    args: list[str] = []
    buses = {d.bus for d in spec.disks}
    if pb.BLOCK_BUS_VIRTIO_SCSI in buses:
        args += ["-device", "virtio-scsi-pci,id=scsi"]
    if pb.BLOCK_BUS_SATA in buses and spec.machine != pb.MACHINE_Q35:
        args += ["-device", "ahci,id=ahci"]
    sata = "ide" if spec.machine == pb.MACHINE_Q35 else "ahci"  # q35's own AHCI is named ide
    for i, (disk, ov) in enumerate(zip(spec.disks, overlays, strict=True)):
        args += ["-drive", f"file={ov},format=qcow2,if=none,id=d{i},cache=unsafe"]
        if disk.bus == pb.BLOCK_BUS_VIRTIO_SCSI:
            args += ["-device", f"scsi-hd,drive=d{i},bus=scsi.0,scsi-id={i},bootindex={i}"]
        elif disk.bus == pb.BLOCK_BUS_SATA:
            args += ["-device", f"ide-hd,drive=d{i},bus={sata}.{i},bootindex={i}"]
        elif disk.bus == pb.BLOCK_BUS_IDE:
            where = f"ide.{i}" if spec.machine == pb.MACHINE_Q35 else f"ide.{i // 2},unit={i % 2}"
            args += ["-device", f"ide-hd,drive=d{i},bus={where},bootindex={i}"]
        else:
            args += ["-device", f"virtio-blk-pci,drive=d{i},bootindex={i}"]
    return args


class QemuBoot:
    """One boot of `spec` in a private directory. Attributes once entered: console (serial log),
    probe_log (what the probe wrote), agent_socket, overlays."""

    def __init__(self, spec: BootSpec, scratch_parent: Path | None = None) -> None:
        self.spec = spec
        self.dir = Path(tempfile.mkdtemp(prefix="v2v-verify.", dir=scratch_parent))
        self.console = self.dir / "console.log"
        self.probe_log = self.dir / "probe.log"
        self.agent_socket = self.dir / "qga.sock"
        self.overlays = [self.dir / f"overlay{i}.qcow2" for i in range(len(spec.disks))]
        self.qemu: Process | None = None

    def make_overlays(self) -> None:
        """The copy-on-write layers every write of the boot (and the probe) goes to."""
        for disk, ov in zip(self.spec.disks, self.overlays, strict=True):
            run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", disk.path, "-F", disk_format(disk), str(ov)],
                f"cannot make an overlay over {disk.path}")

    def command(self) -> list[str]:
        s = self.spec
        machine = "q35" if s.machine == pb.MACHINE_Q35 else "pc"
        if s.secure_boot:
            machine = "q35,smm=on"  # secure boot needs SMM, which only q35 has
        cmd = ["qemu-system-x86_64", "-machine", f"{machine},accel={s.accel}", "-m", str(s.memory_mb), "-smp", "2",
               "-display", "none", "-vga", "none", "-nodefaults", "-no-user-config", "-no-reboot", "-monitor", "none",
               "-serial", f"file:{self.console}"]
        if s.firmware == pb.FIRMWARE_UEFI:
            code, template = OVMF_FILES[s.secure_boot]
            nvram = self.dir / "VARS.fd"
            shutil.copyfile(OVMF / template, nvram)  # fresh variables: no boot entry of another boot
            if s.secure_boot:
                cmd += ["-global", "driver=cfi.pflash01,property=secure,value=on"]
            cmd += ["-drive", f"if=pflash,format=raw,unit=0,readonly=on,file={OVMF / code}",
                    "-drive", f"if=pflash,format=raw,unit=1,file={nvram}"]
        cmd += _disk_args(s, self.overlays)
        for i, nic in enumerate(s.nics):
            # restrict=on: nothing leaves qemu; the source guest may still be up with the same addresses
            cmd += ["-netdev", f"user,id=n{i},restrict=on",
                    "-device", f"{NIC_DEVICES.get(nic.model, 'virtio-net-pci')},netdev=n{i}"
                    + (f",mac={nic.mac}" if nic.mac else "")]
        cmd += ["-device", "virtio-serial-pci,id=vser",
                "-chardev", f"file,id=probe,path={self.probe_log}",
                "-device", f"virtserialport,bus=vser.0,chardev=probe,name={probe.PORT}",
                "-chardev", f"socket,id=qga,path={self.agent_socket},server=on,wait=off",
                "-device", f"virtserialport,bus=vser.0,chardev=qga,name={agent.PORT}"]
        return cmd

    def start(self) -> Process:
        self.console.write_bytes(b"")
        self.qemu = Process(self.command(), self.dir / "qemu.log", "qemu").start()
        return self.qemu

    def stop(self) -> None:
        if self.qemu is not None:
            self.qemu.stop(timeout=2)

    def __enter__(self) -> QemuBoot:
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        try:
            self.stop()
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)

