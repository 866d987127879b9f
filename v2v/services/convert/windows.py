"""Windows conversion: a Windows guest from another hypervisor boots on virtio.

Offline, only what the first boot on KVM needs: the virtio boot driver (so no 0x7B), the old
hypervisor's drivers disabled, the ESP's fallback loader. The rest runs at first boot from scripts
(drivers into the driver store, the guest agent, the old tools' uninstallers, the static IPs
kept). Every check runs before the first write, and the hives are written once at the end, so a
refused or failed conversion leaves the guest's files as they were (and the source is an overlay
in any case). The sub-steps: windows-checks, drivers, tools, network, firstboot, bootloader,
registry (the hives written)."""

from __future__ import annotations

import tempfile
from contextlib import ExitStack
from pathlib import Path

import guestfs

from v2v.errors import V2VError
from v2v.events import StepReporter
from v2v.services.convert.checks import check_free_space
from v2v.services.convert.guest_os import Converted, register
from v2v.services.convert.guestpath import guest_path
from v2v.services.convert.inspection import dynamic_disks
from v2v.services.convert.netconfig import generated_mac
from v2v.services.convert.registry import REG_DWORD, REG_NONE, REG_QWORD, Hive
from v2v.services.convert.virtio_win import Selection, location, opened, select
from v2v.services.convert.windows_boot import fix_esp, fix_ntfs_heads
from v2v.services.convert.windows_drivers import (
    block_driver,
    copy_drivers,
    extend_device_path,
    install_boot_driver,
    msi_name,
    online_disks_script,
    pnputil_script,
    qemu_ga_script,
)
from v2v.services.convert.windows_firstboot import WIN_DIR, Firstboot, guest_dir, missing_service, service_binary
from v2v.services.convert.windows_network import found_addresses, powershell
from v2v.services.convert.windows_tools import Uninstall, disable_drivers, uninstallers
from v2v.v1 import convert_pb2
from v2v.v1 import types_pb2 as pb

_GPO = "Microsoft\\Windows\\CurrentVersion\\Group Policy\\History"
_AV_WORDS = ("virus", "kaspersky", "mcafee", "norton", "sophos", "defender for endpoint", "symantec",
             "trend micro", "eset", "bitdefender", "crowdstrike", "sentinelone")
_AV_PUBLISHERS = ("avg technologies", "kaspersky", "mcafee", "sophos", "symantec", "eset", "bitdefender",
                  "trend micro", "crowdstrike", "sentinelone")


def antivirus(apps: list[pb.Application]) -> list[str]:
    """Antivirus products by DisplayName and publisher (virt-v2v 2.2 checks the Uninstall key's
    name, which is often a product code: Kaspersky's KES went unnoticed)."""
    return [a.display_name or a.key for a in apps
            if any(w in (a.display_name or a.key).lower() for w in _AV_WORDS)
            or any(p in a.publisher.lower() for p in _AV_PUBLISHERS)]


def rtc_utc(system: Hive, ccs: str, report: StepReporter) -> bool:
    """RealTimeIsUniversal: 1 (DWORD or QWORD) keeps the hardware clock in UTC; absent or REG_NONE
    means local time, Windows' default."""
    val = system.value(f"{ccs}\\Control\\TimeZoneInformation", "RealTimeIsUniversal")
    if val is None or val[0] == REG_NONE:
        return False
    kind, raw = val
    if kind in (REG_DWORD, REG_QWORD) and len(raw) in (4, 8):
        return int.from_bytes(raw, "little") == 1
    report.warn(f"RealTimeIsUniversal has registry type {kind}: assuming the clock is in UTC", step="windows-checks")
    return True


class WindowsConversion:
    def __init__(self, g: guestfs.GuestFS, insp: pb.Inspection, request: convert_pb2.ConvertRequest,
                 report: StepReporter, mounted: list[str], macs: list[str]) -> None:
        self.g = g
        self.insp = insp
        self.win = insp.windows
        self.request = request
        self.opts = request.options
        self.report = report
        self.mounted = mounted
        self.macs = macs
        self.ccs = self.win.current_control_set
        self.systemroot = self.win.systemroot

    def run(self) -> Converted:
        with ExitStack() as stack:
            scratch = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="v2v-hives.")))
            with self.report.step("windows-checks"):
                system = Hive(self.g, self.g.inspect_get_windows_system_hive(self.insp.root), "SYSTEM", scratch,
                              self.report)
                software = Hive(self.g, self.g.inspect_get_windows_software_hive(self.insp.root), "SOFTWARE",
                                scratch, self.report)
                self.checks(software)
                utc = rtc_utc(system, self.ccs, self.report)
                where = location(self.opts.virtio_win)
                firstboot = Firstboot()
            with self.report.step("network"):
                ips = found_addresses(system, self.ccs, self.macs, list(self.request.networks.static_ips),
                                      self.report)
            temp = f"{guest_path(self.g, self.systemroot)}/Temp"
            self.g.mkdir_p(temp)
            tree = stack.enter_context(opened(self.g, where[0], where[1], f"{temp}/v2v-virtio-win")) if where else None
            sel = select(tree.files(), self.win.osinfo, self.insp.arch) if tree else Selection({}, None)
            block = block_driver(sel, self.opts.block_driver)
            net = sel.has("netkvm.inf") or sel.has("virtio_net.inf")
            tools = uninstallers(software)
            self.plan_firstboot(firstboot, sel, bool(block), net, ips, tools)
            binary = service_binary(self.opts.virt_tools_dir)
            if firstboot.scripts and binary is None:
                raise missing_service(self.opts.virt_tools_dir).fill(step="convert")
            self.no_driver_warnings(where, sel, block, net)
            with self.report.step("drivers"):
                if sel.drivers and tree:
                    virtio_dir = copy_drivers(self.g, tree, sel, self.systemroot, self.report)
                    if block:
                        install_boot_driver(self.g, system, self.ccs, block, virtio_dir, self.systemroot,
                                            self.insp.arch)
                    extend_device_path(software, self.report)
            with self.report.step("tools"):
                disable_drivers(system, self.ccs)
            with self.report.step("firstboot"):
                if binary is not None and firstboot.scripts:
                    names = firstboot.install(self.g, system, self.ccs, binary)
                    if sel.qemu_ga and tree and self.insp.major_version >= 6:
                        tree.copy(sel.qemu_ga, f"{guest_dir(self.g)}/Temp/{msi_name(sel.qemu_ga)}")
                    self.report.note(f"first-boot scripts: {', '.join(names)}", step="firstboot")
            with self.report.step("bootloader"):
                if self.insp.firmware == pb.FIRMWARE_UEFI or self.request.source.firmware == pb.FIRMWARE_UEFI:
                    fix_esp(self.g, self.systemroot, scratch, self.report)
                if self.insp.major_version < 6:
                    fix_ntfs_heads(self.g, self.insp.root, self.report)
            with self.report.step("registry"):
                system.commit()
                software.commit()
            caps = self.caps(sel, block, net, utc)
        return Converted(caps, self.macs, ips)

    def checks(self, software: Hive) -> None:
        """Refusals and warnings, all before the first write (opening the hives writes nothing)."""
        check_free_space(self.g, self.mounted, self.report)
        for part in dynamic_disks(self.g):
            if self.g.part_to_dev(part) == self.g.part_to_dev(self.insp.root):
                raise V2VError(f"the system disk is a Windows dynamic disk ({part}): convert it to a basic disk "
                               "in Windows first", pb.ERROR_CODE_UNSUPPORTED)
            self.report.warn(f"{part} is on a Windows dynamic disk: copied as is, Windows reads it as before",
                             step="windows-checks")
        found = antivirus(list(self.insp.applications))
        if found:
            self.report.warn(f"antivirus installed ({', '.join(found)}): it may stop the new virtio boot driver from "
                             "loading (a 0x7B at boot); if the guest does not boot, disable it in the source and "
                             "convert again", step="windows-checks")
        gpo = [k for k in software.children(_GPO) if len(k) > 3 and k.startswith("{") and k.endswith("}")]
        if gpo:
            self.report.warn("the guest has Group Policy Objects: a device-installation policy can stop the new "
                             "virtio boot driver (a 0x7B at boot)", step="windows-checks")

    def plan_firstboot(self, firstboot: Firstboot, sel: Selection, block: bool, net: bool, ips: list[pb.StaticIp],
                       tools: list[Uninstall]) -> None:
        # XP and 2003 have no PowerShell: what needs it is said, not left to fail at every boot.
        powershell_ok = self.insp.major_version >= 6
        if ips and powershell_ok:
            firstboot.add_powershell("network-configure", powershell(ips, net), prio=2500)
        elif ips:
            self.report.warn(f"Windows {self.insp.major_version}.{self.insp.minor_version} has no PowerShell: the "
                             f"static addresses ({', '.join(s.address for s in ips)}) must be set by hand after "
                             "conversion", step="network")
        if sel.drivers:
            firstboot.add("pnputil install drivers", pnputil_script(), prio=2000)
        if sel.qemu_ga and powershell_ok:
            msi = f"{WIN_DIR}\\Temp\\{msi_name(sel.qemu_ga)}"
            firstboot.add_powershell("install-qemu-ga", qemu_ga_script(msi))
        if "blnsvr.exe" in sel.drivers:
            firstboot.add("install-blnsvr", '"%SystemRoot%\\Drivers\\VirtIO\\blnsvr.exe" -i\n')
        if block and len(self.request.source.disks) > 1 and powershell_ok:
            firstboot.add_powershell("online-disks", online_disks_script())
        for tool in tools:
            firstboot.add(tool.name, tool.batch)

    def no_driver_warnings(self, where: tuple[str, bool] | None, sel: Selection, block: str, net: bool) -> None:
        version = f"{self.insp.major_version}.{self.insp.minor_version} {self.insp.arch} {self.win.product_variant} " \
                  f"{self.win.osinfo}"
        looked = where[0] if where else "VIRTIO_WIN (unset) and /usr/share/virtio-win"
        if not sel.drivers:
            self.report.warn(f"there are no virtio drivers for this version of Windows ({version}) in {looked}: the "
                             "guest will use slower emulated devices (IDE disks, an rtl8139 NIC)", step="drivers")
            return
        if not block:
            self.report.warn(f"no virtio block driver for this version of Windows ({version}) in {looked}: the disks "
                             "stay on emulated IDE", step="drivers")
        if not net:
            self.report.warn(f"no virtio network driver for this version of Windows ({version}) in {looked}: the NIC "
                             "is an emulated rtl8139", step="drivers")
        if not sel.qemu_ga:
            self.report.warn(f"no QEMU guest agent MSI in {looked}: install the agent in the guest after conversion",
                             step="drivers")

    def caps(self, sel: Selection, block: str, net: bool, utc: bool) -> pb.GuestCaps:
        if block == "vioscsi":
            block_bus = pb.BLOCK_BUS_VIRTIO_SCSI
        elif block:
            block_bus = pb.BLOCK_BUS_VIRTIO_BLK
        else:
            block_bus = pb.BLOCK_BUS_IDE
        x86 = self.insp.arch in ("x86_64", "i386", "i686")
        legacy = self.insp.major_version < 6
        return pb.GuestCaps(
            block_bus=block_bus,
            net_bus=pb.NET_BUS_VIRTIO_NET if net else pb.NET_BUS_RTL8139,
            machine=(pb.MACHINE_I440FX if legacy else pb.MACHINE_Q35) if x86 else pb.MACHINE_VIRT,
            arch=self.insp.arch,
            virtio_1_0=True,
            virtio_rng=sel.has("viorng.inf"),
            virtio_balloon=sel.has("balloon.inf"),
            pvpanic=sel.has("pvpanic.inf"),
            virtio_socket=sel.has("viosock.inf"),
            rtc_utc=utc,
            secure_boot=self.request.source.secure_boot,
            hyperv=True,
            emulated_devices=not (block and net),
        )


@register("windows")
def convert_windows(g: guestfs.GuestFS, insp: pb.Inspection, request: convert_pb2.ConvertRequest,
                    report: StepReporter, mounted: list[str]) -> Converted:
    """Windows keeps no NIC names to pin: each target NIC has the source's MAC (or a stable one)."""
    name = request.target_name or request.source.name
    macs = [nic.mac.lower() or generated_mac(name, i) for i, nic in enumerate(request.source.nics)]
    return WindowsConversion(g, insp, request, report, mounted, macs).run()

