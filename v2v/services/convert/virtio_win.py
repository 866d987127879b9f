"""The virtio-win drivers: where they are (a directory on the convert service's host, or a
filesystem image such as virtio-win.iso read through the appliance, never mounted on the host),
and which of their files fit a guest (virt-v2v's matching on the path's OS and arch elements,
with every layout virtio-win has shipped: the ISO's Driver/os/arch, the RPM's by-os and by-driver
trees, and the legacy Win2022-style names)."""

from __future__ import annotations

import os
import posixpath
import tarfile
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import guestfs

from v2v.errors import V2VError
from v2v.v1 import types_pb2 as pb

DATADIR = Path("/usr/share/virtio-win")
IMAGE_LABEL = "virtiowin"  # the image's drive in the appliance: /dev/disk/guestfs/virtiowin

# Path element -> the osinfo short ids it holds drivers for. Old names (2.2's winNNNN, the RPM's
# legacy Win2022 directories) are kept: upstream dropped them, and then the legacy tree stopped
# matching at all.
_OS_ELEMENTS = {
    "xp": {"winxp"}, "winxp": {"winxp"},
    "2k3": {"win2k3", "win2k3r2"}, "win2003": {"win2k3", "win2k3r2"},
    "vista": {"winvista"}, "2k8": {"win2k8", "winvista"}, "win2008": {"win2k8", "winvista"},
    "w7": {"win7"}, "win7": {"win7"},
    "2k8r2": {"win2k8r2"}, "win2008r2": {"win2k8r2"},
    "w8": {"win8"}, "win8": {"win8"}, "2k12": {"win2k12"}, "win2012": {"win2k12"},
    "w8.1": {"win8.1"}, "win8.1": {"win8.1"}, "2k12r2": {"win2k12r2"}, "win2012r2": {"win2k12r2"},
    "w10": {"win10"}, "win10": {"win10"}, "w11": {"win11"}, "win11": {"win11"},
    "2k16": {"win2k16"}, "win2016": {"win2k16"}, "2k19": {"win2k19"}, "win2019": {"win2k19"},
    "2k22": {"win2k22"}, "win2022": {"win2k22"}, "2k25": {"win2k25"}, "win2025": {"win2k25"},
}
_ARCH_ELEMENTS = {"x86": "i386", "i386": "i386", "amd64": "x86_64"}
_DRIVER_SUFFIXES = (".sys", ".inf", ".cat", ".dll", ".exe")
_QEMU_GA = {"i386": ("qemu-ga-x86.msi", "qemu-ga-i386.msi", "rhev-qga.msi"),
            "x86_64": ("qemu-ga-x64.msi", "qemu-ga-x86_64.msi", "rhev-qga64.msi")}


def guest_arch(arch: str) -> str:
    return "i386" if arch in ("i386", "i486", "i586", "i686") else arch


def fits(path: str, osinfo: str, arch: str) -> bool:
    """Whether a driver file of the tree is for this guest: one element of its directory names the
    guest's Windows and one its architecture. Debug symbols and the SR-IOV protocol driver (which
    conflicts with netkvm, RHEL-56383) never are."""
    lower = path.lower()
    name = posixpath.basename(lower)
    elements = lower.split("/")[:-1]
    if not name.endswith(_DRIVER_SUFFIXES) or name.startswith("vioprot.") or "sriov" in elements:
        return False
    return any(osinfo in _OS_ELEMENTS.get(e, ()) for e in elements) and \
        any(_ARCH_ELEMENTS.get(e) == guest_arch(arch) for e in elements)


def qemu_ga_msi(paths: list[str], arch: str) -> str | None:
    names = _QEMU_GA.get(guest_arch(arch), ())
    return next((p for p in sorted(paths) if posixpath.basename(p.lower()) in names), None)


@dataclass
class Selection:
    """The files of the tree for one guest: lower-cased target name -> path in the tree."""

    drivers: dict[str, str]
    qemu_ga: str | None

    def has(self, name: str) -> bool:
        return name in self.drivers


def select(paths: list[str], osinfo: str, arch: str) -> Selection:
    drivers: dict[str, str] = {}
    for path in sorted(paths):  # by-os and by-driver hold the same files: the first path wins
        if fits(path, osinfo, arch):
            drivers.setdefault(posixpath.basename(path).lower(), path)
    if "fwcfg.inf" in drivers:  # the two firmware-config drivers conflict (RHBZ#2151752)
        for name in [n for n in drivers if n.startswith("qemufwcfg.")]:
            del drivers[name]
    return Selection(drivers, qemu_ga_msi(paths, arch))


def location(option: str) -> tuple[str, bool] | None:
    """(path, is_image) of the drivers: the option, else $VIRTIO_WIN (or the older $VIRTIO_WIN_DIR),
    else /usr/share/virtio-win/virtio-win.iso, else that directory; None when there are none. A
    location the user named that does not exist is an error, not a silent slow guest."""
    named = option or os.environ.get("VIRTIO_WIN") or os.environ.get("VIRTIO_WIN_DIR")
    if named:
        if os.path.isdir(named):
            return named, False
        if os.path.exists(named):
            return named, True
        raise V2VError(f"VIRTIO_WIN={named}: no such file or directory (give the virtio-win directory or ISO)",
                       pb.ERROR_CODE_BAD_INPUT)
    if (DATADIR / "virtio-win.iso").is_file():
        return str(DATADIR / "virtio-win.iso"), True
    if DATADIR.is_dir():
        return str(DATADIR), False
    return None


class DriverTree:
    """The drivers' files and how to copy one into the guest. A directory is read on this host;
    an image is the appliance's extra read-only drive, mounted inside the appliance only."""

    def __init__(self, g: guestfs.GuestFS, path: str, image: bool, mountpoint: str = "") -> None:
        self.g = g
        self.path = path
        self.image = image
        self.mountpoint = mountpoint

    def files(self) -> list[str]:
        if self.image:
            return [p for p in self.g.find(self.mountpoint) if self.g.is_file(f"{self.mountpoint}/{p}")]
        root = Path(self.path)
        return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())

    def copy(self, rel: str, dest: str) -> None:
        if self.image:
            self.g.cp(f"{self.mountpoint}/{rel}", dest)
        else:
            self.g.upload(str(Path(self.path) / rel), dest)

    def copy_into(self, files: dict[str, str], target: str) -> None:
        """Copies each tree file `files[name]` to `target/name`. From a directory on this host in one
        tar_in: an upload costs ~0.35 s under TCG and a driver set is some 25 files. dereference: the
        RPM's by-os tree is symlinks into by-driver, and the guest gets the files."""
        if self.image:
            for name, rel in sorted(files.items()):
                self.copy(rel, f"{target}/{name}")
            return
        with tempfile.NamedTemporaryFile(suffix=".tar") as tar:
            with tarfile.open(fileobj=tar, mode="w", dereference=True) as archive:
                for name, rel in sorted(files.items()):
                    archive.add(Path(self.path) / rel, arcname=name, recursive=False)
            tar.flush()
            self.g.tar_in(tar.name, target)


@contextmanager
def opened(g: guestfs.GuestFS, path: str, image: bool, scratch_dir: str) -> Iterator[DriverTree]:
    """The tree, ready to read. An image is mounted on `scratch_dir` (a fresh directory in the
    guest's own temp directory, as virt-v2v mounts the ESP) and unmounted and removed after."""
    if not image:
        yield DriverTree(g, path, False)
        return
    g.mkdir(scratch_dir)
    try:
        try:
            g.mount_ro(f"/dev/disk/guestfs/{IMAGE_LABEL}", scratch_dir)
        except RuntimeError as exc:
            raise V2VError(f"{path}: cannot read the virtio-win image (an ISO or a filesystem image with no "
                           f"partition table): {exc}", pb.ERROR_CODE_BAD_INPUT) from None
        try:
            yield DriverTree(g, path, True, scratch_dir)
        finally:
            g.umount(scratch_dir)
    finally:
        g.rmdir(scratch_dir)
