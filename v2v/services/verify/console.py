"""What a guest's serial console says about its boot: a login prompt means userspace, the rest are
the ways a Linux boot stops. Also the console log read live, as qemu writes it."""

from __future__ import annotations

import re
from collections import deque
from pathlib import Path
from typing import TypeAlias

from v2v.v1 import verify_pb2

TAIL_LINES = 50
# The probe's fallback channel when the guest has no virtio-serial port: one line on the console.
PROBE_PREFIX = "V2V-PROBE "
LOGIN = "login"

# First match wins; checked line by line. Patterns from initramfs-tools, dracut, systemd and the kernel.
Sign: TypeAlias = "verify_pb2.VerifyCause | str"  # a cause, or LOGIN
_SIGNS: list[tuple[re.Pattern[str], Sign]] = [
    (re.compile(r"Kernel panic - not syncing"), verify_pb2.VERIFY_CAUSE_PANIC),
    (re.compile(r"Dropping to a shell|^\(initramfs\)|dracut:/#|Entering emergency mode\. Exit the shell to continue"
                r"|dracut-initqueue.*timeout.*starting timeout scripts"), verify_pb2.VERIFY_CAUSE_INITRAMFS_SHELL),
    (re.compile(r"You are in (emergency|rescue) mode|Give root password for maintenance"),
     verify_pb2.VERIFY_CAUSE_EMERGENCY_MODE),
    (re.compile(r"No bootable device|Boot failed: not a bootable disk|No boot device"),
     verify_pb2.VERIFY_CAUSE_NO_BOOT_DEVICE),
    (re.compile(r"\S login: ?$"), LOGIN),
]


def classify(line: str) -> Sign | None:
    """A VerifyCause for a line that shows the boot stopped, LOGIN for a login prompt, else None."""
    line = line.rstrip("\r\n")
    for pattern, sign in _SIGNS:
        if pattern.search(line):
            return sign
    return None


class ConsoleLog:
    """The serial console file qemu writes, read as it grows: complete lines go to `lines()`, the
    last TAIL_LINES are kept for the result."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._offset = 0
        self._partial = ""
        self.tail: deque[str] = deque(maxlen=TAIL_LINES)

    def lines(self) -> list[str]:
        """The lines written since the last call. A prompt has no newline after it: a partial line
        that ends the file is returned too once it looks like one (and not again)."""
        try:
            with open(self.path, "rb") as f:
                f.seek(self._offset)
                data = f.read()
        except FileNotFoundError:
            return []
        self._offset += len(data)
        text = self._partial + data.decode(errors="replace").replace("\r", "")
        *complete, self._partial = text.split("\n")
        if self._partial and classify(self._partial) == LOGIN:
            complete.append(self._partial)
            self._partial = ""
        self.tail.extend(line for line in complete if line.strip())
        return complete

    def last_lines(self) -> list[str]:
        return [*self.tail, *([self._partial] if self._partial.strip() else [])][-TAIL_LINES:]
