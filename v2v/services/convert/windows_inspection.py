"""What inspection knows of a Windows guest beyond the common fields: variant, build, osinfo id by
upstream's current rules, system root, control set, drive letters, installed applications."""

from __future__ import annotations

import guestfs

from v2v.v1 import types_pb2 as pb

_CURRENT_VERSION = "Microsoft\\Windows NT\\CurrentVersion"


def osinfo_id(major: int, minor: int, variant: str, product_name: str, build: int) -> str:
    """libosinfo's short id (lib/inspect-osinfo.c at libguestfs 1.55): Debian's 1.48 predates the
    build >= 22000 rule for Windows 11 and the 2025 server, and says win10 / win2k16 for them."""
    server = "Server" in variant
    if (major, minor) == (5, 1):
        return "winxp"
    if (major, minor) == (5, 2):
        return "winxp" if "XP" in product_name else "win2k3r2" if "R2" in product_name else "win2k3"
    old = {(6, 0): ("winvista", "win2k8"), (6, 1): ("win7", "win2k8r2"), (6, 2): ("win8", "win2k12"),
           (6, 3): ("win8.1", "win2k12r2")}
    if (major, minor) in old:
        return old[major, minor][server]
    if (major, minor) == (10, 0):
        if server:
            for year, short in (("2025", "win2k25"), ("2022", "win2k22"), ("2019", "win2k19")):
                if year in product_name:
                    return short
            return "win2k16"
        return "win11" if build >= 22000 else "win10"
    return ""


def _build(g: guestfs.GuestFS, software_hive: str) -> str:
    """CurrentBuildNumber, read in the appliance (read-only) without mounting anything new."""
    try:
        g.hivex_open(software_hive, unsafe=True)
    except RuntimeError:
        return ""
    try:
        node = g.hivex_root()
        for part in _CURRENT_VERSION.split("\\"):
            node = g.hivex_node_get_child(node, part)
            if not node:
                return ""
        for key in ("CurrentBuildNumber", "CurrentBuild"):
            val = g.hivex_node_get_value(node, key)
            if val:
                return str(g.hivex_value_utf8(val)).rstrip("\0")
        return ""
    finally:
        g.hivex_close()


def windows_info(g: guestfs.GuestFS, root: str, product_name: str, major: int, minor: int) -> pb.WindowsInfo:
    """Needs the guest's filesystems mounted (the hives are read through them)."""
    variant = g.inspect_get_product_variant(root)
    build = _build(g, g.inspect_get_windows_software_hive(root))
    info = pb.WindowsInfo(
        product_variant=variant,
        build=build,
        osinfo=osinfo_id(major, minor, variant, product_name, int(build) if build.isdigit() else 0),
        systemroot=g.inspect_get_windows_systemroot(root),
        current_control_set=g.inspect_get_windows_current_control_set(root),
    )
    info.drive_mappings.update(g.inspect_get_drive_mappings(root))
    return info


def applications(g: guestfs.GuestFS, root: str) -> list[pb.Application]:
    return [pb.Application(key=app["app2_name"], display_name=app["app2_display_name"],
                           version=app["app2_version"], publisher=app["app2_publisher"])
            for app in g.inspect_list_applications2(root)]
