"""virtio drivers into a Windows guest: the matching virtio-win files into
C:\\Windows\\Drivers\\VirtIO, and the boot driver installed offline so that the first boot on virtio
does not stop with 0x7B (INACCESSIBLE_BOOT_DEVICE). Everything else is installed at first boot by
PnP (DevicePath) and pnputil."""

from __future__ import annotations

import posixpath

import guestfs

from v2v.events import StepReporter
from v2v.services.convert.guestpath import guest_path
from v2v.services.convert.registry import REG_BINARY, REG_DWORD, REG_EXPAND_SZ, REG_MULTI_SZ, REG_SZ, Hive
from v2v.services.convert.virtio_win import DriverTree, Selection
from v2v.v1 import types_pb2 as pb

# Without SUBSYS: other hypervisors' virtio devices carry their own subsystem vendor id
# (libguestfs-common 71d5870). Legacy and modern (virtio 1.0) device ids of each.
PCI_IDS = {
    "viostor": ("VEN_1AF4&DEV_1001&REV_00", "VEN_1AF4&DEV_1042&REV_01"),
    "vioscsi": ("VEN_1AF4&DEV_1004&REV_00", "VEN_1AF4&DEV_1048&REV_01"),
}
SCSI_ADAPTER_CLASS = "{4D36E97B-E325-11CE-BFC1-08002BE10318}"
# The SCSIAdapter class GUID in binary, as DriverPackages' Version value holds it, padded as
# Windows-Kernel-Pnp on Windows 10 / 2016 wants (virt-v2v's ddb_regedits).
_DDB_VERSION = bytes.fromhex("00ff090000000000" "7be9364d25e3ce11bfc108002be10318") + bytes(24)
_BLOCK_PRIORITY = ("virtio_blk", "vrtioblk", "viostor")
_VIRTIO_DIR = "Drivers/VirtIO"


def block_driver(sel: Selection, wanted: int) -> str:
    """The first boot driver the tree has, virtio-scsi first when --block-driver virtio-scsi."""
    order = (("vioscsi",) if wanted == pb.BLOCK_BUS_VIRTIO_SCSI else ()) + _BLOCK_PRIORITY
    return next((name for name in order if sel.has(f"{name}.sys")), "")


def ddb_label(arch: str) -> str:
    """DriverPackages' label: virt-v2v 2.2's `guestor.inf_tmp` makes pnputil /enum-drivers fail
    with ERROR_INVALID_PARAMETER and blocks in-place upgrades (RHEL-112517)."""
    return f"guestor.inf_{'amd64' if arch == 'x86_64' else 'x86'}_0000000000000000"


def copy_drivers(g: guestfs.GuestFS, tree: DriverTree, sel: Selection, systemroot: str, report: StepReporter) -> str:
    """Copies the guest's drivers, flattened and lower-cased, into <systemroot>/Drivers/VirtIO;
    returns that directory's guest path."""
    target = guest_path(g, f"{systemroot}/{_VIRTIO_DIR}")
    g.mkdir_p(target)
    tree.copy_into(sel.drivers, target)
    shown = "C:" + systemroot.replace("/", "\\")
    report.note(f"copied {len(sel.drivers)} virtio-win files into {shown}\\Drivers\\VirtIO", step="drivers")
    return target


def install_boot_driver(g: guestfs.GuestFS, system: Hive, ccs: str, driver: str, virtio_dir: str, systemroot: str,
                        arch: str) -> None:
    """The driver's .sys in system32\\drivers and a Services key that starts it at boot, bound to
    the virtio disk's PCI ids: through CriticalDeviceDatabase before Windows 8 / 2012, through the
    DriverDatabase after (whose presence tells which)."""
    drivers_dir = guest_path(g, f"{systemroot}/system32/drivers")
    g.mkdir_p(drivers_dir)
    g.cp(f"{virtio_dir}/{driver}.sys", f"{drivers_dir}/{driver}.sys")
    why = f"boot driver {driver}"
    svc = f"{ccs}\\Services\\{driver}"
    system.set(svc, "Type", REG_DWORD, 1, why)
    system.set(svc, "Start", REG_DWORD, 0, why)
    system.set(svc, "Group", REG_SZ, "SCSI miniport", why)
    system.set(svc, "ErrorControl", REG_DWORD, 1, why)
    system.set(svc, "ImagePath", REG_EXPAND_SZ, f"system32\\drivers\\{driver}.sys", why)
    pci_ids = PCI_IDS.get(driver, PCI_IDS["viostor"])
    if system.node("DriverDatabase") is None:
        for pci in pci_ids:
            key = f"{ccs}\\Control\\CriticalDeviceDatabase\\PCI#{pci}"
            system.set(key, "Service", REG_SZ, driver, why)
            system.set(key, "ClassGUID", REG_SZ, SCSI_ADAPTER_CLASS, why)
        return
    label = ddb_label(arch)
    inf = "guestor.inf"
    conf = "guestor_conf"
    system.set(f"DriverDatabase\\DriverInfFiles\\{inf}", "", REG_MULTI_SZ, [label], why)
    system.set(f"DriverDatabase\\DriverInfFiles\\{inf}", "Active", REG_SZ, label, why)
    system.set(f"DriverDatabase\\DriverInfFiles\\{inf}", "Configurations", REG_MULTI_SZ, [conf], why)
    package = f"DriverDatabase\\DriverPackages\\{label}"
    system.set(package, "Version", REG_BINARY, _DDB_VERSION, why)
    system.set(f"{package}\\Configurations\\{conf}", "ConfigFlags", REG_DWORD, 0, why)
    system.set(f"{package}\\Configurations\\{conf}", "Service", REG_SZ, driver, why)
    for pci in pci_ids:
        system.set(f"DriverDatabase\\DeviceIds\\PCI\\{pci}", inf, REG_BINARY, bytes.fromhex("01ff0000"), why)
        system.set(f"{package}\\Descriptors\\PCI\\{pci}", "Configuration", REG_SZ, conf, why)


def extend_device_path(software: Hive, report: StepReporter) -> None:
    """PnP looks for drivers of new devices in DevicePath: the VirtIO directory joins it, with
    the value's own type kept."""
    key = "Microsoft\\Windows\\CurrentVersion"
    if software.node(key) is None:
        report.warn(f"could not find registry key HKLM\\SOFTWARE\\{key}: PnP will not find the virtio drivers "
                    "by itself (pnputil at first boot still installs them)", step="drivers")
        return
    val = software.value(key, "DevicePath")
    if val is None:
        return
    current = software.string(key, "DevicePath") or ""
    entry = "%SystemRoot%\\Drivers\\VirtIO"
    if entry.lower() not in current.lower().split(";"):
        software.set(key, "DevicePath", val[0], f"{current};{entry}" if current else entry, "PnP finds the drivers")


def pnputil_script() -> str:
    """Puts the copied drivers into the driver store at first boot; a pending reboot (Windows
    Update, servicing, file renames) makes it wait for the next boot, as installs would fail."""
    return r"""@echo off
set "cv=HKLM\SOFTWARE\Microsoft\Windows\CurrentVersion"
reg query "%cv%\WindowsUpdate\Auto Update\RebootRequired" >nul 2>&1 && exit /b 249
reg query "%cv%\Component Based Servicing\RebootPending" >nul 2>&1 && exit /b 249
set "sm=HKLM\SYSTEM\CurrentControlSet\Control\Session Manager"
reg query "%sm%" /v PendingFileRenameOperations >nul 2>&1 && exit /b 249
setlocal EnableDelayedExpansion
set "pnputil=%SystemRoot%\Sysnative\PnPutil.exe"
if not exist "%pnputil%" set "pnputil=%SystemRoot%\System32\PnPutil.exe"
for %%f in ("%SystemRoot%\Drivers\VirtIO\*.inf") do (
  "%pnputil%" -i -a "%%f"
  set rc=!errorlevel!
  if !rc! neq 0 if !rc! neq 259 exit /b 249
)
exit /b 0
"""


def qemu_ga_script(msi: str) -> str:
    """Installs the guest agent, retried while Windows Installer is busy at first boot."""
    return f"""$msi = '{msi}'
for ($try = 1; $try -le 10; $try++) {{
  $args = '/i', "`"$msi`"", '/norestart', '/qn', '/l+*vx', "`"$msi.log`""
  $p = Start-Process -Wait -PassThru msiexec.exe -ArgumentList $args
  if ($p.ExitCode -eq 0 -or $p.ExitCode -eq 3010) {{ exit 0 }}
  Write-Output "qemu-ga install try $try exited $($p.ExitCode)"
  Start-Sleep -Seconds 60
}}
exit 249
"""


def online_disks_script() -> str:
    """Windows 2019/2022 put disks offline whose bus changed (RHEL-55837)."""
    return """Get-Disk | Where-Object FriendlyName -like '*VirtIO*' | ForEach-Object {
  Set-Disk -Number $_.Number -IsOffline $false
  Set-Disk -Number $_.Number -IsReadOnly $false
}
"""


def msi_name(path: str) -> str:
    return posixpath.basename(path).lower()
