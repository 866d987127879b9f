"""Which Linux family a guest belongs to: decides its package manager, initramfs tool and
bootloader conventions (virt-v2v's RHEL, SUSE and Debian families)."""

from __future__ import annotations

from enum import Enum

from v2v.errors import V2VError
from v2v.v1 import types_pb2 as pb


class Family(Enum):
    DEBIAN = "debian"
    RHEL = "rhel"
    SUSE = "suse"


_DISTROS = {
    Family.DEBIAN: {"debian", "ubuntu", "linuxmint", "kalilinux"},
    Family.RHEL: {"rhel", "centos", "fedora", "rocky", "almalinux", "oraclelinux", "scientificlinux",
                  "circle", "redhat-based"},
    Family.SUSE: {"sles", "suse-based", "opensuse"},
}


def family_of(insp: pb.Inspection) -> Family:
    for family, distros in _DISTROS.items():
        if insp.distro in distros:
            return family
    raise V2VError(f"converting {insp.product_name or insp.distro} is not supported (distro "
                   f"{insp.distro or 'unknown'}, package format {insp.package_format or 'unknown'}); the "
                   "Debian, RHEL/Fedora and SUSE families are", pb.ERROR_CODE_UNSUPPORTED)
