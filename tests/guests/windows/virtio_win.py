"""A fake virtio-win: the directory layouts virt-v2v and the real virtio-win media use, with small
text files that name themselves instead of drivers, and a fake rhsrvany.exe (firstboot's service
wrapper, which a conversion only uploads).

- tree (what the virtio-win RPM installs under /usr/share/virtio-win): `drivers/by-os/<arch>/<os>/*`
  (all of one OS's files, flat) and `drivers/by-driver/<Driver>/<os>/<arch>/*`, plus `guest-agent/`.
- ISO (what virtio-win.iso holds): `<Driver>/<os>/<arch>/*` at the root, plus `guest-agent/`; built
  with `genisoimage -J -r` as upstream builds its fake one, so it is a filesystem with no partition
  table, which is what a conversion opens a virtio-win image as.

Windows XP has nothing: its conversion takes the no-drivers path."""

from __future__ import annotations

import subprocess
from pathlib import Path

# Driver directory name -> the files of one <os>/<arch> directory of it.
DRIVERS: dict[str, tuple[str, ...]] = {
    "viostor": ("viostor.sys", "viostor.inf", "viostor.cat", "viostor.pdb"),
    "vioscsi": ("vioscsi.sys", "vioscsi.inf", "vioscsi.cat", "vioscsi.pdb"),
    "NetKVM": ("netkvm.sys", "netkvm.inf", "netkvm.cat", "netkvm.pdb", "netkvmco.exe"),
    "Balloon": ("balloon.sys", "balloon.inf", "balloon.cat", "balloon.pdb", "blnsvr.exe"),
    "viorng": ("viorng.sys", "viorng.inf", "viorng.cat", "viorng.pdb"),
    "pvpanic": ("pvpanic.sys", "pvpanic.inf", "pvpanic.cat", "pvpanic.pdb"),
    "fwcfg": ("fwcfg.inf", "fwcfg.cat"),
    "qemufwcfg": ("qemufwcfg.inf", "qemufwcfg.cat"),
    "sriov": ("vioprot.sys", "vioprot.inf", "vioprot.cat"),
}
# (os dir, ISO/by-driver arch dir, by-os arch dir). w10 is there because Debian's libguestfs 1.48
# inspects a Windows 11 as osinfo win10, so its conversion picks the w10 files.
OSES = (("2k22", "amd64", "amd64"), ("w11", "amd64", "amd64"), ("w10", "amd64", "amd64"), ("w7", "x86", "i386"))
GUEST_AGENTS = ("qemu-ga-x86_64.msi", "qemu-ga-i386.msi")
RHSRVANY = "fake rhsrvany.exe for tests\n"


def _write_fake(path: Path, rel: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"fake virtio-win file {rel}\n")


def _driver_files(root: Path, prefix: str) -> None:
    for driver, files in DRIVERS.items():
        for os_dir, arch, _ in OSES:
            for name in files:
                rel = f"{prefix}{driver}/{os_dir}/{arch}/{name}"
                _write_fake(root / rel, rel)


def _guest_agents(root: Path) -> None:
    for msi in GUEST_AGENTS:
        _write_fake(root / "guest-agent" / msi, f"guest-agent/{msi}")


def make_tree(root: Path) -> Path:
    """The RPM layout under `root`."""
    for os_dir, _, arch in OSES:
        for files in DRIVERS.values():
            for name in files:
                rel = f"drivers/by-os/{arch}/{os_dir}/{name}"
                _write_fake(root / rel, rel)
    _driver_files(root, "drivers/by-driver/")
    _guest_agents(root)
    return root


def make_iso(path: Path, staging: Path) -> Path:
    """The ISO layout, staged in `staging`, as an ISO 9660 image at `path`."""
    _driver_files(staging, "")
    _guest_agents(staging)
    (staging / "virtio-win_license.txt").write_text("fake virtio-win licence for tests\n")
    subprocess.run(["genisoimage", "-quiet", "-J", "-r", "-V", "virtio-win", "-o", str(path), str(staging)],
                   check=True)
    return path


def make_virt_tools(root: Path) -> Path:
    """A VIRT_TOOLS_DATA_DIR holding the fake rhsrvany.exe."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "rhsrvany.exe").write_text(RHSRVANY)
    return root
