"""-o qemu: the disks plus NAME.sh, a bash script that boots the converted guest in
qemu-system-x86_64 with the devices convert chose, like virt-v2v's -o qemu. -oo qemu-boot also
starts it once the guest is written."""

from __future__ import annotations

import shlex
import subprocess
from contextlib import ExitStack
from pathlib import Path

from v2v.drives import block_bus
from v2v.errors import V2VError
from v2v.plugins import OutputArgs, OutputCli
from v2v.services.output.base import OUTPUTS
from v2v.services.output.files import FileOutput, os_error, output_directory
from v2v.v1 import output_pb2
from v2v.v1 import types_pb2 as pb
from v2v.workdir import WorkDir

MiB = 1024**2
# A source that does not say gets what -i disk assumes: qemu's own 128 MiB boots no current OS.
DEFAULT_MEMORY_MIB = 2048

# Unset (convert did not say) is qemu-system-x86_64's own default machine.
_MACHINE = {pb.MACHINE_Q35: "q35", pb.MACHINE_I440FX: "pc", pb.MACHINE_UNSPECIFIED: "pc"}
# A guest convert did not describe gets virtio, like its disks (as in libvirtxml).
_NIC_DEVICE = {pb.NET_BUS_E1000: "e1000", pb.NET_BUS_RTL8139: "rtl8139"}
_X86_ARCHES = {"", "x86_64", "i386", "i486", "i586", "i686"}
# q35's built-in AHCI controller has six ports, ide.0 .. ide.5; an added `ahci` has as many.
_AHCI_PORTS = 6
# i440fx's PIIX IDE: two buses (ide.0, ide.1) of two units each.
_PIIX_IDE_DISKS = 4

# The Hyper-V enlightenments of the libvirt XML (libvirtxml.HYPERV_FEATURES), as qemu CPU flags, and
# hv_time (libvirt's hypervclock timer), which hv_stimer needs. KVM has them all. TCG refuses
# hv_vpindex, which synic, stimer, tlbflush and ipi need, and emulates none of the MSRs behind them:
# under TCG the guest gets only the flags that are hints alone, not interfaces it would call into.
HYPERV_KVM_FLAGS = ("hv_relaxed,hv_vapic,hv_spinlocks=0x1fff,hv_vpindex,hv_runtime,hv_synic,hv_stimer,"
                    "hv_reset,hv_frequencies,hv_tlbflush,hv_ipi,hv_time")
HYPERV_TCG_FLAGS = "hv_relaxed,hv_spinlocks=0x1fff"
# The accelerators to try, the user's choice at each run (see the script's header).
ACCEL = '"${V2V_QEMU_ACCEL:-kvm:tcg}"'

# (code, variables template) of OVMF, the first pair installed wins: Debian's 4 MiB build, its
# older 2 MiB one, Fedora's. Code and template must come from the same build (same layout).
OVMF = [
    ("/usr/share/OVMF/OVMF_CODE_4M.fd", "/usr/share/OVMF/OVMF_VARS_4M.fd"),
    ("/usr/share/OVMF/OVMF_CODE.fd", "/usr/share/OVMF/OVMF_VARS.fd"),
    ("/usr/share/edk2/ovmf/OVMF_CODE.fd", "/usr/share/edk2/ovmf/OVMF_VARS.fd"),
]
# The same for secure boot: the SMM build, its variables with Microsoft's keys enrolled (shim is
# signed with them), so secure boot is enforced from the first boot.
OVMF_SECURE_BOOT = [
    ("/usr/share/OVMF/OVMF_CODE_4M.secboot.fd", "/usr/share/OVMF/OVMF_VARS_4M.ms.fd"),
    ("/usr/share/OVMF/OVMF_CODE.secboot.fd", "/usr/share/OVMF/OVMF_VARS.ms.fd"),
    ("/usr/share/edk2/ovmf/OVMF_CODE.secboot.fd", "/usr/share/edk2/ovmf/OVMF_VARS.secboot.fd"),
]


def ovmf(secure_boot: bool = False) -> tuple[str, str]:
    """The OVMF pair to boot UEFI guests with. With none installed here, the first: the script
    runs where the guest will, which may have it, and qemu names the missing file otherwise."""
    pairs = OVMF_SECURE_BOOT if secure_boot else OVMF
    return next(((code, tpl) for code, tpl in pairs if Path(code).exists() and Path(tpl).exists()), pairs[0])


def vars_path(target: pb.TargetMeta, directory: Path) -> Path:
    """The guest's own UEFI variables, next to its disks."""
    return directory / f"{target.name}-VARS.fd"


def qemu_value(text: str) -> str:
    # qemu splits option values on commas; a doubled comma is a literal one (a path may have one).
    return text.replace(",", ",,")


def check_target(target: pb.TargetMeta) -> None:
    """Refuses a guest the script could not boot: known as soon as convert has chosen the
    devices, so setup refuses it before any data is copied."""
    arch = target.caps.arch or target.inspection.arch
    if arch not in _X86_ARCHES or target.caps.machine == pb.MACHINE_VIRT:
        raise V2VError(f"-o qemu boots x86 guests only, not {arch or 'this machine type'}",
                       pb.ERROR_CODE_UNSUPPORTED)
    if (block_bus(target.caps) == pb.BLOCK_BUS_IDE and target.caps.machine != pb.MACHINE_Q35
            and len(target.source.disks) > _PIIX_IDE_DISKS):
        raise V2VError(f"-o qemu: the guest has {len(target.source.disks)} disks on IDE, which takes "
                       f"{_PIIX_IDE_DISKS}", pb.ERROR_CODE_UNSUPPORTED)


def _smp(source: pb.Source) -> str:
    vcpus = max(source.vcpus, 1)
    topo = source.cpu_topology
    if source.HasField("cpu_topology"):
        sockets, cores, threads = max(topo.sockets, 1), max(topo.cores, 1), max(topo.threads, 1)
        # qemu refuses fewer slots than vCPUs, and more would be hot-pluggable CPUs the source
        # never had: a topology that does not hold exactly the vCPUs is dropped, the count kept.
        if sockets * cores * threads == vcpus:
            return f"cpus={vcpus},sockets={sockets},cores={cores},threads={threads}"
    return str(vcpus)


def _disks(target: pb.TargetMeta) -> list[tuple[str, str]]:
    """-drive and -device options for the disks, in order, with the controllers they need."""
    q35 = target.caps.machine == pb.MACHINE_Q35
    args: list[tuple[str, str]] = []
    controllers: set[str] = set()

    def controller(ident: str, device: str) -> None:
        if ident not in controllers:
            controllers.add(ident)
            args.append(("-device", f"{device},id={ident}"))

    ahci_ports = 0

    def ahci_port() -> str:
        # q35's own controller first; then (and on pc, which has none) added ones, six ports each.
        nonlocal ahci_ports
        port, ahci_ports = ahci_ports, ahci_ports + 1
        if q35:
            if port < _AHCI_PORTS:
                return f"ide.{port}"
            port -= _AHCI_PORTS
        ident = f"sata{port // _AHCI_PORTS}"
        controller(ident, "ahci")
        return f"{ident}.{port % _AHCI_PORTS}"

    for order, disk in enumerate(target.disks):
        drive = f"drive-{disk.index}"
        args.append(("-drive", f"file={qemu_value(disk.path)},format={disk.format},if=none,id={drive},cache=none"))
        bus = disk.bus or block_bus(target.caps)
        # bootindex: the firmware boots the first disk, whatever order it probes controllers in.
        if bus == pb.BLOCK_BUS_VIRTIO_SCSI:
            controller("scsi0", "virtio-scsi-pci")
            device = f"scsi-hd,drive={drive},bus=scsi0.0,channel=0,scsi-id={order},lun=0"
        elif bus == pb.BLOCK_BUS_IDE and not q35:
            device = f"ide-hd,drive={drive},bus=ide.{order // 2},unit={order % 2}"
        elif bus in (pb.BLOCK_BUS_IDE, pb.BLOCK_BUS_SATA):
            # IDE on q35 too: it has no IDE controller, and its AHCI is what qemu's if=ide gives.
            device = f"ide-hd,drive={drive},bus={ahci_port()}"
        else:
            device = f"virtio-blk-pci,drive={drive}"
        args.append(("-device", f"{device},bootindex={order}"))
    return args


def _nics(target: pb.TargetMeta) -> list[tuple[str, str]]:
    # User-mode networking: the guest reaches out through qemu with no host setup nor privilege.
    # The source's networks and bridges cannot be known here; docs/outputs.md says how to edit.
    model = _NIC_DEVICE.get(target.caps.net_bus, "virtio-net-pci")
    args: list[tuple[str, str]] = []
    for i, nic in enumerate(target.nics or target.source.nics):
        args.append(("-netdev", f"user,id=net{i}"))
        args.append(("-device", f"{model},netdev=net{i}" + (f",mac={nic.mac}" if nic.mac else "")))
    return args


def qemu_script(target: pb.TargetMeta, directory: Path) -> str:
    """NAME.sh: boots `target` (its disks at their paths) in qemu; the UEFI variables go in `directory`."""
    check_target(target)
    caps, source = target.caps, target.source
    q = shlex.quote
    secure_boot = caps.secure_boot and target.firmware == pb.FIRMWARE_UEFI
    machine = _MACHINE[caps.machine]
    if secure_boot:
        machine += ",smm=on"  # the secure-boot firmware guards its variables in SMM
    if caps.hyperv:
        machine += ",hpet=off"  # as libvirt's Windows timers: Hyper-V's clock instead of an emulated one
    lines = [f"-name {q(qemu_value(target.name))}",
             # The accelerators are the user's choice at each run: kvm:tcg falls back to emulation
             # where there is no KVM, but where KVM is present and broken only tcg boots.
             f'-machine {q(machine + ",accel=")}{ACCEL}',
             # Every feature the accelerator has: qemu's default qemu64 model lacks x86-64-v2,
             # which RHEL 9 and others require.
             '-cpu "max$hyperv"' if caps.hyperv else "-cpu max",
             f"-m {source.memory // MiB or DEFAULT_MEMORY_MIB}",
             f"-smp {_smp(source)}"]
    prologue = ""
    if caps.hyperv:
        # Decided as qemu picks the accelerator: the first of the list, KVM only where it can open it.
        prologue = ("# Hyper-V enlightenments for Windows: all of them under KVM, hints alone under TCG.\n"
                    f"hyperv=,{HYPERV_TCG_FLAGS}\n"
                    f"if [[ {ACCEL} == kvm* && -w /dev/kvm ]]; then\n"
                    f"    hyperv=,{HYPERV_KVM_FLAGS}\n"
                    "fi\n\n")
    if target.firmware == pb.FIRMWARE_UEFI:
        code, template = ovmf(secure_boot)
        nvram = vars_path(target, directory)
        # The variables (boot entries the guest writes) must outlive a run, so they are a copy of
        # the template made on the first run and kept, not a temporary one as virt-v2v makes.
        prologue += (f"# The guest's UEFI variables: a copy of OVMF's template, made on the first run.\n"
                    f"if [[ ! -e {q(str(nvram))} ]]; then\n"
                    f"    cp {q(template)} {q(str(nvram))}\n"
                    f"fi\n\n")
        if secure_boot:  # only SMM code may write the variables: what makes them trustworthy
            lines.append("-global driver=cfi.pflash01,property=secure,value=on")
        lines += [f"-drive {q('if=pflash,format=raw,readonly=on,file=' + qemu_value(code))}",
                  f"-drive {q('if=pflash,format=raw,file=' + qemu_value(str(nvram)))}"]
    rtc = f"-rtc base={'utc' if caps.rtc_utc else 'localtime'}"
    if caps.hyperv:
        # libvirt's rtc catchup and pit delay: ticks lost while descheduled are replayed, not dropped,
        # so Windows' clock does not drift (the global applies to KVM's in-kernel PIT only).
        lines += [rtc + ",driftfix=slew", "-global kvm-pit.lost_tick_policy=delay"]
    else:
        lines.append(rtc)
    lines += [f"{opt} {q(value)}" for opt, value in [*_disks(target), *_nics(target)]]
    # A VGA card whether or not it is displayed, so the guest's hardware does not change with
    # V2V_QEMU_DISPLAY.
    lines.append("-device VGA")
    if caps.virtio_rng:
        lines.append("-device virtio-rng-pci")
    if caps.virtio_balloon:
        lines.append("-device virtio-balloon-pci")
    if caps.pvpanic:
        lines.append("-device pvpanic")  # ISA, at 0x505: Windows' pvpanic driver's port
    if caps.hyperv:
        # An absolute pointer, as in the libvirt XML: the machine's own USB (UHCI, which every
        # Windows since 98 drives) and a tablet on it.
        lines += ["-usb", "-device usb-tablet"]
    lines += ["-serial stdio", '-display "${V2V_QEMU_DISPLAY:-none}"', '"$@"']
    # The name is left out of the comments: a newline in it would end the comment.
    header = ("#!/bin/bash\n"
              "# Boots a guest converted by v2v (-o qemu) in qemu, its serial console on this terminal.\n"
              "# Arguments are added to qemu's. Environment: V2V_QEMU_ACCEL, the accelerators to try\n"
              "# (default kvm:tcg; tcg where KVM cannot boot guests), V2V_QEMU_DISPLAY, a qemu -display\n"
              "# (gtk, vnc=:1, ...; default none). The network is qemu's user mode: edit -netdev to use\n"
              "# a bridge.\n"
              "set -eu\n\n")
    return header + prologue + "exec qemu-system-x86_64 -no-user-config -nodefaults \\\n    " + \
        " \\\n    ".join(lines) + "\n"


def boot(script: Path, log: Path) -> None:
    """Starts `script` detached: in its own session (the signals of v2v's terminal do not reach
    it), stdin /dev/null, stdout and stderr to `log`. Not waited for: the guest runs as long as
    it runs. setsid --fork returns at once and leaves the script to init, so a long-lived output
    service neither keeps a zombie when the guest stops nor takes the guest down when it exits."""
    try:
        with open(log, "wb") as out:
            res = subprocess.run(["setsid", "--fork", str(script)], stdin=subprocess.DEVNULL, stdout=out,
                                 stderr=subprocess.STDOUT, check=False)
    except OSError as exc:
        raise os_error(f"-oo qemu-boot: cannot run {script}", exc) from exc
    if res.returncode != 0:
        raise V2VError(f"-oo qemu-boot: cannot start {script} (see {log})", pb.ERROR_CODE_PROCESS_FAILED)


def _from_cli(a: OutputArgs) -> output_pb2.QemuOutput:
    return output_pb2.QemuOutput(directory=a.directory(), boot=a.oo.flag("qemu-boot"))


@OUTPUTS.register("qemu")
class QemuOutput(FileOutput):
    cli = OutputCli(["qemu"], _from_cli, directory=True,
                    oo=[("qemu-boot", "run the script once the guest is written")])

    extension = "sh"

    def description_names(self, target: pb.TargetMeta) -> list[str]:
        # The log and the UEFI variables belong to the guest of that name too: an old guest's
        # variables would hand this one its boot entries.
        return [f"{target.name}.sh", f"{target.name}.log", f"{target.name}-VARS.fd"]

    def setup(self, spec: output_pb2.OutputSpec, target: pb.TargetMeta, workdir: WorkDir,
              stack: ExitStack) -> None:
        check_target(target)
        super().setup(spec, target, workdir, stack)

    def descriptions(self, spec: output_pb2.OutputSpec, target: pb.TargetMeta, directory: Path) -> dict[str, str]:
        return {f"{target.name}.sh": qemu_script(target, directory)}

    def finalize(self, spec: output_pb2.OutputSpec, target: pb.TargetMeta, workdir: WorkDir) -> list[str]:
        directory = output_directory(spec)
        if spec.overwrite:
            # The variables are the replaced guest's (without --overwrite check refused them).
            nvram = vars_path(target, directory)
            try:
                nvram.unlink(missing_ok=True)
            except OSError as exc:
                raise os_error(f"cannot remove {nvram}", exc) from exc
        files = super().finalize(spec, target, workdir)
        script = directory / f"{target.name}.sh"
        try:
            script.chmod(0o755)
        except OSError as exc:
            raise os_error(f"cannot make {script} executable", exc) from exc
        if spec.qemu.boot:
            # -oo qemu-boot: the guest is started, not waited for; its console goes to NAME.log.
            log = directory / f"{target.name}.log"
            boot(script, log)
            files.append(str(log))
        return files
