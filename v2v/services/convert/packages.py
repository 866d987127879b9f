"""The guest's own package manager, run inside the appliance: what is installed, how to remove
packages, how to install a package file offline, and how to install by name at first boot."""

from __future__ import annotations

import shlex
from dataclasses import dataclass

import guestfs

from v2v.v1 import types_pb2 as pb


@dataclass(frozen=True)
class PackageManager:
    name: str  # what inspection calls it: apt, dnf, yum, zypper
    remove: str  # command prefix; package names follow
    install_files: str  # offline install of package files
    install_names: str  # online install by name (first boot)
    cache_globs: tuple[str, ...]  # where downloaded package files stay behind

    def remove_command(self, packages: list[str]) -> str:
        return f"{self.remove} {' '.join(shlex.quote(p) for p in packages)} 2>&1"

    def install_files_command(self, paths: list[str]) -> str:
        return f"{self.install_files} {' '.join(shlex.quote(p) for p in paths)} 2>&1"

    def install_names_command(self, packages: list[str]) -> str:
        return f"{self.install_names} {' '.join(shlex.quote(p) for p in packages)}"


# Removal never needs the network: dpkg and rpm work on the local database, and dnf/yum/zypper are
# told not to refresh repositories (the appliance has no network; a refresh would only time out).
_DEB_CACHE = ("/var/cache/apt/archives/{name}_*.deb",)
_RPM_CACHE = ("/var/cache/dnf/*/packages/{name}-[0-9]*.rpm", "/var/cache/yum/*/*/*/packages/{name}-[0-9]*.rpm",
              "/var/cache/yum/*/packages/{name}-[0-9]*.rpm", "/var/cache/zypp/packages/*/*/{name}-[0-9]*.rpm")
_MANAGERS = {
    "apt": PackageManager("apt", "DEBIAN_FRONTEND=noninteractive dpkg --purge",
                          "DEBIAN_FRONTEND=noninteractive dpkg -i",
                          "DEBIAN_FRONTEND=noninteractive apt-get -y install", _DEB_CACHE),
    "dnf": PackageManager("dnf", "dnf -y --disablerepo='*' --noplugins remove", "rpm -Uvh",
                          "dnf -y install", _RPM_CACHE),
    "yum": PackageManager("yum", "yum -y --disablerepo='*' --noplugins remove", "rpm -Uvh",
                          "yum -y install", _RPM_CACHE),
    "zypper": PackageManager("zypper", "zypper -n --no-refresh rm", "rpm -Uvh",
                             "zypper -n install", _RPM_CACHE),
}
# Guests whose inspection names no front end (old or minimal systems): the package format decides.
_BY_FORMAT = {"deb": "apt", "rpm": "yum"}


def package_manager(insp: pb.Inspection) -> PackageManager | None:
    name = insp.package_management if insp.package_management in _MANAGERS else \
        _BY_FORMAT.get(insp.package_format, "")
    return _MANAGERS.get(name)


def installed_packages(g: guestfs.GuestFS, root: str) -> set[str]:
    """Names of the installed packages, from the guest's package database: libguestfs reads
    dpkg's status file and the rpm database itself. Where the appliance's librpm cannot open the
    guest's database (a librpm built with another default database path, as on Debian hosts), the
    guest's own rpm lists it."""
    try:
        return {app["app2_name"] for app in g.inspect_list_applications2(root)}
    except RuntimeError:
        if not g.is_file("/usr/bin/rpm", followsymlinks=True) and not g.is_file("/bin/rpm", followsymlinks=True):
            raise
        return set(g.sh("rpm -qa --qf '%{NAME}\\n'").split())


def cached_package_files(g: guestfs.GuestFS, manager: PackageManager, name: str) -> list[str]:
    """Package files of `name` left in the guest's download caches, newest name last."""
    found: list[str] = []
    for pattern in manager.cache_globs:
        found += g.glob_expand(pattern.format(name=name))
    return sorted(found)
