"""The old hypervisor's tools in a Windows guest: their drivers disabled offline (they would
fail or fight virtio at boot) and their uninstallers run at first boot (they need Windows)."""

from __future__ import annotations

import re
from dataclasses import dataclass

from v2v.services.convert.registry import REG_DWORD, REG_MULTI_SZ, Hive

UNINSTALL = "Microsoft\\Windows\\CurrentVersion\\Uninstall"
XEN_PV_KEY = "Red Hat Paravirtualized Xen Drivers for Windows(R)"
PRL_DRIVERS = ("prl_boot", "prl_dd", "prl_eth5", "prl_fs", "prl_memdev", "prl_mouf", "prl_pv32", "prl_pv64",
               "prl_scsi", "prl_sound", "prl_strg", "prl_tg", "prl_time", "prl_uprof", "prl_va")
DISK_CLASS = "{4d36e967-e325-11ce-bfc1-08002be10318}"
_MSI_QUIET = ' /quiet /norestart /l*v+ "%~dpn0.log" REBOOT=ReallySuppress REMOVE=ALL'
# The installer's "reboot required" is success here: firstboot reboots after every script.
_REBOOT_OK = "if errorlevel 3010 exit /b 0\n"


@dataclass
class Uninstall:
    name: str  # first-boot script name
    batch: str


def uninstallers(software: Hive) -> list[Uninstall]:
    """The first-boot scripts that remove Red Hat's Xen PV drivers, Parallels/Virtuozzo Tools and
    VMware Tools, from their Uninstall entries (found by DisplayName, as virt-v2v does)."""
    found: list[Uninstall] = []
    xen = software.string(f"{UNINSTALL}\\{XEN_PV_KEY}", "UninstallString")
    if xen:
        # The uninstaller refuses to run from its own name: virt-v2v runs the copy it makes.
        command = re.sub(r"uninst\.exe$", "_uninst.exe", xen)
        found.append(Uninstall("uninstall Xen PV", f'"{command}"\n'))
    for key in software.children(UNINSTALL):
        display = software.string(f"{UNINSTALL}\\{key}", "DisplayName") or ""
        command = software.string(f"{UNINSTALL}\\{key}", "UninstallString") or ""
        if not command:
            continue
        if "Parallels Tools" in display or "Virtuozzo Tools" in display:
            found.append(Uninstall("uninstall Parallels tools",
                                   "REG DELETE HKLM\\System\\CurrentControlSet\\Services\\prl_strg\\DriverInfo "
                                   "/v RefCount /f\n" + command + _MSI_QUIET +
                                   " PREVENT_REBOOT=Yes LAUNCHED_BY_SETUP_EXE=Yes\n" + _REBOOT_OK))
        elif "VMware Tools" in display:
            if re.search("msiexec", command, re.I):  # install -> remove (RHBZ#1917760)
                command = re.sub("/i", "/x", command, count=1, flags=re.I)
            found.append(Uninstall("uninstall VMware Tools", command + _MSI_QUIET + "\n" + _REBOOT_OK))
    return found


def disable_drivers(system: Hive, ccs: str) -> None:
    """Red Hat's Xen SCSI driver and Parallels' drivers stop loading (their keys stay: the
    uninstallers need them); Parallels' storage filter leaves the disk class; a crash stays on
    screen instead of rebooting, so a 0x7B can be read."""
    services = f"{ccs}\\Services"
    for name in ("rhelscsi", *PRL_DRIVERS):
        if system.node(f"{services}\\{name}") is not None:
            system.set(f"{services}\\{name}", "Start", REG_DWORD, 4, "disabled: the old hypervisor's driver")
    disk_class = f"{ccs}\\Control\\Class\\{DISK_CLASS}"
    filters = system.strings(disk_class, "LowerFilters")
    if "prl_strg" in filters:
        system.set(disk_class, "LowerFilters", REG_MULTI_SZ, [f for f in filters if f != "prl_strg"],
                   "Parallels' storage filter removed")
    crash = f"{ccs}\\Control\\CrashControl"
    if system.node(crash) is not None:
        system.set(crash, "AutoReboot", REG_DWORD, 0, "a boot failure stays on screen")
