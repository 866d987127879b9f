"""Paths in a guest mounted through ntfs-3g, which is case-sensitive where Windows is not."""

from __future__ import annotations

import guestfs


def guest_path(g: guestfs.GuestFS, path: str) -> str:
    """`path` with the guest's case for each part that exists, the rest as given (libguestfs'
    case_sensitive_path fails on a missing part that is not the last)."""
    resolved = ""
    for part in filter(None, path.split("/")):
        candidate = f"{resolved}/{part}"
        resolved = str(g.case_sensitive_path(candidate)) if g.exists(resolved or "/") else candidate
    return resolved or "/"
