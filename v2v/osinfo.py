"""The guest's libosinfo identity, the one mapping every output names the OS with: the short id
(win2k22) for labels, the id URL (http://microsoft.com/win/2k22) for libvirt's metadata."""

from __future__ import annotations

from v2v.v1 import types_pb2 as pb

# Every Microsoft entry of osinfo-db (checked against osinfo-db 20221203) is its family's prefix
# and version: winxp is http://microsoft.com/win/xp, win2k22 .../win/2k22, winnt4.0 .../winnt/4.0.
# Longest prefix first, so that winnt is not read as win + "nt".
_FAMILIES = ("winnt", "win")
_MICROSOFT = "http://microsoft.com/"


def short_id(inspection: pb.Inspection) -> str:
    """libosinfo's short id of the guest, "" when no phase named one. Only Windows has one today:
    convert derives it by upstream's rules (WindowsInfo.osinfo), which is what fixes virt-v2v 2.2
    writing Server 2022 as 2016."""
    if inspection.type == "windows":
        return inspection.windows.osinfo
    return ""


def os_id(inspection: pb.Inspection) -> str:
    """The libosinfo id URL of the guest, "" when it has no short id or one of an unknown shape
    (a wrong id is worse than none: management tools would apply that OS's defaults)."""
    short = short_id(inspection)
    for family in _FAMILIES:
        version = short.removeprefix(family)
        if version != short and version:
            return f"{_MICROSOFT}{family}/{version}"
    return ""
